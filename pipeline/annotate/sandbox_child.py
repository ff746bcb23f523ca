"""The sandboxed child: the program it runs, and what comes back from it.

:data:`RUNNER` is the source of the program run by ``python -I -B -c`` in the child
(layers 4 to 6 of :mod:`pipeline.annotate.sandbox` are set up by it). It is kept as a
string and never imported or run in the pipeline's own process. :func:`read_report`
reads the verdict it writes to the report pipe, :func:`explain_exit` says why a child
ended without one, and :class:`SandboxResult` is what a run returns.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from typing import Literal

from pipeline.annotate.sandbox_limits import SandboxLimits

MAX_REASON_CHARS = 300

# The runner executed by ``python -I -B -c``. It reads its job (JSON) from stdin, sets
# the limits, drops privileges if asked, installs the audit hook, runs the code and the
# tests, and writes ``<token> <status> <reason as UTF-8 hex>`` to the report pipe. The
# builtins and functions it needs after the untrusted code has run are bound first, so
# code that monkeypatches ``builtins.exec``, ``json`` or ``os`` cannot turn a fail into
# a pass.
# Its _install_hook stays one long function on purpose: the deny tables and the hook are
# locals of one closure, out of reach of code that patches the runner's module globals.
RUNNER = r"""
import json, os, resource, sys


def _main():
    _write, _exit, _exec, _compile, _set, _callable = (
        os.write, os._exit, exec, compile, set, callable)
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    token = job.pop("token")
    report_fd = job["report_fd"]

    def report(status, reason):
        _write(report_fd, (token + " " + status + " " + reason.encode("utf-8", "replace")
                           .hex() + "\n").encode("ascii"))
        _exit(0)

    for name, soft, hard in job["limits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
        if os.getuid() != job["uid"] or os.geteuid() != job["uid"]:
            report("error", "could not drop privileges")

    blocked = []
    if job["audit"]:
        _install_hook(os.path.realpath(job["tmp"]), blocked)

    code, tests, memory_mb = job["code"], job["tests"], job["memory_mb"]
    try:
        tests_code = _compile(tests, "<tests>", "exec")
    except (SyntaxError, ValueError) as exc:
        report("error", "the tests do not compile: " + _describe(exc, code, tests))
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    status, reason = "passed", "tests passed"
    try:
        try:
            compiled = _compile(code, "<response>", "exec")
        except (SyntaxError, ValueError) as exc:
            status, reason = "failed", "the response does not compile: " + \
                _describe(exc, code, tests)
        else:
            _exec(compiled, ns)
            before = _set(ns)
            _exec(tests_code, ns)
            names = [k for k in ns if k not in before and k.startswith("test")
                     and _callable(ns[k])]
            for k in names:
                ns[k]()
            if names:
                reason = "tests passed (%d test function(s))" % len(names)
    except MemoryError:
        ns.clear()
        status, reason = "failed", "memory limit (%d MB): MemoryError" % memory_mb
    except BaseException as exc:  # SystemExit, KeyboardInterrupt included: a fail
        status, reason = "failed", _describe(exc, code, tests)
    if blocked:
        status, reason = "failed", "blocked: " + blocked[0]
    report(status, reason)


def _describe(exc, code, tests):
    where = {}
    if isinstance(exc, SyntaxError):
        if exc.filename in ("<response>", "<tests>") and exc.lineno:
            where[exc.filename] = exc.lineno
    tb = exc.__traceback__
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if fn in ("<response>", "<tests>"):
            where[fn] = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SystemExit):
        head = "SystemExit(%r) before the tests finished" % (exc.code,)
    elif isinstance(exc, SyntaxError):
        head = "%s: %s" % (type(exc).__name__, exc.msg)
    else:
        msg = str(exc)
        head = type(exc).__name__ + (": " + msg if msg else "")
    parts = []
    for fn, src, label in (("<tests>", tests, "tests"), ("<response>", code, "response")):
        if fn in where:
            n = where[fn]
            lines = src.splitlines()
            text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
            parts.append("%s line %d%s" % (label, n, ": " + text[:120] if text else ""))
    return head[:200] + (" (" + "; ".join(parts) + ")" if parts else "")


def _install_hook(tmp, blocked):
    import posixpath
    pid = os.getpid()
    sep = os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    deny_events = {
        "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "os.killpg", "resource.setrlimit",
        "sys.settrace", "sys.setprofile",
        "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys._current_frames", "fcntl.ioctl", "sqlite3.enable_load_extension",
        "sqlite3.load_extension", "os.add_dll_directory", "sys.remote_exec",
        "webbrowser.open",
    }
    deny_prefixes = ("socket.", "ctypes.", "syslog.", "_ctypes.", "winreg.")
    deny_modules = {"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters",
                    "_xxinterpchannels", "_interpreters", "_interpchannels",
                    "_testcapi", "_testinternalcapi", "_testmultiphase",
                    "_testsinglephase", "_testbuffer", "_testimportmultiple",
                    "_testclinic", "_ctypes_test", "_tkinter"}
    # file-system events: (indices of path arguments, indices of dir_fd arguments)
    path_events = {
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
        "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)),
        "os.symlink": ((1,), (2,)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
        "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),
        "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()),
        "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
        "sqlite3.connect": ((0,), ()),
    }
    busy = []

    def resolve(p):
        if isinstance(p, int):
            return os.readlink("/proc/self/fd/%d" % p)
        p = os.fsdecode(p)
        return posixpath.realpath(posixpath.join(os.getcwd(), p))

    def inside(p):
        if isinstance(p, str) and p in (os.devnull, ":memory:", ""):
            return True
        real = resolve(p)
        return real == tmp or real.startswith(tmp + sep)

    def deny(what):
        blocked.append(what)
        raise PermissionError("[sandbox] %s is not allowed here" % what)

    def check(event, args):
        if event in deny_events or event.startswith(deny_prefixes):
            deny(event)
        if event == "import":
            name = args[0]
            if name in deny_modules or name.split(".")[0] in deny_modules:
                # not a violation by itself: the module is just not available here
                # (libraries that try ``import ctypes`` fall back when it fails)
                raise ImportError("[sandbox] import %s is not allowed here" % name,
                                  name=name)
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = bool((flags or 0) & write_flags) or \
                bool(mode and any(c in mode for c in "wax+"))
            if writing:
                if not inside(path):
                    deny("open for writing outside the sandbox (%s)" % os.fsdecode(path))
                return
            real = resolve(path)
            if real.startswith("/proc/"):
                head = real[6:].split("/", 1)[0]
                if head.isdigit() and int(head) != pid:
                    deny("reading /proc/%s" % head)
            if mode is None and not inside(path) and os.path.isdir(real):
                deny("opening a directory outside the sandbox (%s)" % real)
        elif event in path_events:
            paths, dir_fds = path_events[event]
            for i in dir_fds:
                if i < len(args) and args[i] not in (None, -1):
                    deny(event + " with dir_fd")
            for i in paths:
                if i < len(args) and not inside(args[i]):
                    deny("%s outside the sandbox (%s)" % (event, args[i]))
        elif event in ("os.kill", "signal.pthread_kill"):
            if event == "os.kill" and args[0] not in (pid, 0):
                deny("os.kill of another process")

    def hook(event, args):
        if busy:
            return
        busy.append(1)
        try:
            check(event, args)
        except (PermissionError, ImportError):
            raise
        except Exception as exc:  # fail closed
            blocked.append(event + " (unchecked: %s)" % type(exc).__name__)
            raise PermissionError("[sandbox] %s could not be checked" % event)
        finally:
            busy.pop()

    sys.addaudithook(hook)


_main()
"""


@dataclass(frozen=True)
class SandboxResult:
    """``status``: ``passed`` | ``failed`` (the code's fault: the reason says why) |
    ``error`` (the sandbox could not run it: not the code's fault)."""

    status: Literal["passed", "failed", "error"]
    reason: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def read_report(fd: int, token: str) -> tuple[str, str] | None:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except BlockingIOError:
        pass
    for line in b"".join(chunks).decode("ascii", "replace").splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == token and parts[1] in ("passed", "failed", "error"):
            try:
                return parts[1], bytes.fromhex(parts[2]).decode("utf-8", "replace")
            except ValueError:
                return None
    return None


def explain_exit(rc: int, tail: str, limits: SandboxLimits) -> tuple[str, str]:
    """Why a run ended without a verdict, from its exit status and last output."""
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    if rc is not None and rc < 0:
        sig = -rc
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "failed", f"cpu time limit ({int(math.ceil(limits.time_s)) + 1} s)"
        if sig == signal.SIGXFSZ:
            return "failed", f"file size limit ({limits.file_size_mb} MB)"
        return "failed", short(
            f"crashed: killed by {signal.Signals(sig).name}" + (f" ({last})" if last else "")
        )
    if "MemoryError" in tail:
        return "failed", f"memory limit ({limits.memory_mb} MB): MemoryError"
    if rc == 0:
        return "failed", "exited before the tests finished (exit status 0, no verdict)"
    return "failed", short(
        f"exited before the tests finished (exit status {rc})" + (f": {last}" if last else "")
    )
