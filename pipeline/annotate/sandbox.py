"""Run untrusted Python (a candidate's code and a prompt's tests) outside the pipeline.

Input: the code to test and the test code (strings). Output: a :class:`SandboxResult`
(``status`` ``passed`` | ``failed`` | ``error``, a short ``reason``). Row unit: one
(code, tests) job; :func:`run_many` runs a list of them on a small thread pool, each in
its own process, and returns the results in the order of the jobs.

The code never runs in the pipeline's own process. Each job gets, in layers:

1. **A fresh interpreter**: ``python -I -B`` (isolated: no ``PYTHON*`` variables, no user
   site, no current directory on ``sys.path``; no bytecode written) in a new session
   (its own process group), its working directory a fresh temporary folder that is
   deleted afterwards, stdin closed, stdout/stderr into an unnamed temporary file.
2. **A minimal environment**: ``PATH``, ``HOME``/``TMPDIR`` (the temporary folder) and a
   UTF-8 locale, nothing inherited: no secrets from the parent.
3. **No network**: the interpreter starts inside a new, empty network namespace
   (``unshare -n``, or ``unshare -rn`` for a non-root user) when that works on the
   machine (probed once); there even 127.0.0.1 is unreachable.
4. **Resource limits** set before the untrusted code runs: ``RLIMIT_AS`` (memory),
   ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (largest file it may write), ``RLIMIT_NOFILE``,
   ``RLIMIT_CORE`` 0 and, for a non-root user, ``RLIMIT_NPROC`` 0 (no new process or
   thread). A wall-clock timeout kills the whole process group.
5. **An audit hook** (:pep:`578`) installed before the untrusted code runs refuses:
   sockets (``socket.*``), new processes (``subprocess.Popen``, ``os.system``,
   ``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``os.fork``, ``os.forkpty``),
   importing ``ctypes`` and the modules that bypass those events (``_posixsubprocess``
   — so ``subprocess`` and ``asyncio`` cannot be imported —, ``_xxsubinterpreters``,
   ``_testcapi``, …: an ``ImportError``), opening a file for writing or changing the
   file system (remove, rename, mkdir, chmod, …) outside the temporary folder, reading
   another process's ``/proc/<pid>`` entries, raising resource limits, ``fcntl.ioctl``,
   ``sys.settrace`` / ``sys.setprofile``, signals to other processes and the object
   walkers of ``gc``. Any refused operation but an import fails the job with
   ``blocked: <event>``, even when the code catches the error. The hook is a filter,
   not a wall (CPython cannot be sandboxed from inside); layers 3, 4 and 6 are the
   kernel's.
6. **Another user** when the pipeline runs as root and the interpreter can be read by
   ``nobody`` (probed once): the code then runs as ``nobody``, so the kernel itself
   refuses writes outside the temporary folder.

The verdict travels over a private pipe, tagged with a random token that the code under
test never receives in its namespace, and the runner binds the builtins it needs before
the code runs: ``sys.exit(0)``, ``os._exit(0)``, printing a fake "passed" line or
monkeypatching ``builtins.exec`` / ``callable`` / ``json`` is a fail, not a pass, and
``sys.settrace`` (which could jump over asserts) is refused. This protects the host, not
the verdict against code written to defeat this runner (it could find the token by
walking the runner's frames, and an object whose ``__eq__`` always returns True passes
``assert f() == 3``); candidates are model outputs, not attackers.

>>> run_python("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5").status
'passed'
>>> r = run_python("def add(a, b):\\n    return a - b", "assert add(2, 3) == 5")
>>> r.status, r.reason
('failed', 'AssertionError (tests line 1: assert add(2, 3) == 5)')
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Sequence

from schemas.errors import PrefcurateError

log = logging.getLogger(f"prefcurate.{__name__}")

MAX_REASON_CHARS = 300

# The runner executed by ``python -I -B -c``. It reads its job (JSON) from stdin, sets
# the limits, drops privileges if asked, installs the audit hook, runs the code and the
# tests, and writes ``<token> <status> <reason as UTF-8 hex>`` to the report pipe. The
# builtins and functions it needs after the untrusted code has run are bound first, so
# code that monkeypatches ``builtins.exec``, ``json`` or ``os`` cannot turn a fail into
# a pass.
_RUNNER = r"""
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
class SandboxLimits:
    """Limits of one sandboxed run; defaults suit small functions with unit tests.

    ``time_s`` is wall-clock time (the interpreter's start, ~0.05 s, included) and the
    CPU-time limit is ``ceil(time_s) + 1`` s. ``network``, ``audit_hook`` and
    ``drop_privileges`` switch layers 3, 5 and 6 (tests turn one off to check another);
    ``python`` is the interpreter (default: the pipeline's own).
    """

    time_s: float = 5.0
    memory_mb: int = 512
    file_size_mb: int = 16
    open_files: int = 64
    network: bool = True
    audit_hook: bool = True
    drop_privileges: bool = True
    python: str | None = None

    def __post_init__(self) -> None:
        if not (self.time_s > 0 and math.isfinite(self.time_s)):
            raise PrefcurateError(
                f"sandbox: time_s must be a positive number of seconds, got {self.time_s!r}"
            )
        if self.memory_mb < 64:
            raise PrefcurateError(
                f"sandbox: memory_mb={self.memory_mb} is too small for a "
                f"Python interpreter; give at least 64 (default 512)"
            )
        if self.file_size_mb < 0 or self.open_files < 16:
            raise PrefcurateError("sandbox: file_size_mb must be >= 0 and open_files >= 16")


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


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _python(limits: SandboxLimits) -> str:
    return limits.python or sys.executable


@functools.lru_cache(maxsize=None)
def _netns_prefix() -> tuple[str, ...] | None:
    """The ``unshare`` command line that gives a child an empty network namespace here,
    or None where none works (probed once per process)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for flags in ("-n", "-rn"):
        try:
            r = subprocess.run(
                [exe, flags, "--", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                env={"PATH": "/usr/bin:/bin"},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return (exe, flags, "--")
    return None


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


@functools.lru_cache(maxsize=None)
def _can_drop_to(python: str, uid: int, gid: int) -> bool:
    """Whether ``python`` still imports its standard library after dropping to
    ``uid``/``gid`` (e.g. not when it lives under a root-only ``/root``)."""
    if os.geteuid() != 0:
        return False
    probe = (
        "import os\nos.setgroups([]); os.setgid(%d); os.setuid(%d)\n"
        "import json, re, collections, fractions, decimal, itertools, typing\n"
        "print('ok')" % (gid, uid)
    )
    try:
        r = subprocess.run(
            [python, "-I", "-B", "-c", probe],
            capture_output=True,
            timeout=20,
            cwd="/",
            env=_child_env("/"),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"ok"


def _child_env(tmp: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": tmp,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def sandbox_layers(limits: SandboxLimits | None = None) -> dict[str, object]:
    """Which protection layers a run with ``limits`` gets on this machine.

    >>> sorted(sandbox_layers())  # doctest: +NORMALIZE_WHITESPACE
    ['audit_hook', 'drop_privileges', 'network_namespace', 'rlimits', 'subprocess',
     'wall_timeout_kills_group']
    """
    limits = limits or SandboxLimits()
    rl = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"]
    if os.geteuid() != 0:
        rl.append("RLIMIT_NPROC")
    netns = _netns_prefix() if limits.network else None
    uid, gid = _nobody()
    drop = limits.drop_privileges and _can_drop_to(_python(limits), uid, gid)
    return {
        "subprocess": f"{_python(limits)} -I -B",
        "wall_timeout_kills_group": True,
        "rlimits": rl,
        "network_namespace": " ".join(netns[:2]) if netns else None,
        "audit_hook": limits.audit_hook,
        "drop_privileges": "nobody" if drop else None,
    }


def _rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    cpu = int(math.ceil(limits.time_s)) + 1
    out = [
        ("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_FSIZE", limits.file_size_mb << 20, limits.file_size_mb << 20),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_CORE", 0, 0),
    ]
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; for others: no fork, no thread
        out.append(("RLIMIT_NPROC", 0, 0))
    return out


def _rmtree(path: str) -> None:
    def onerror(func, p, _exc):  # a folder the code made unreadable: open it, retry
        try:
            os.chmod(p if os.path.isdir(p) else os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _tail(f, n: int = 4000) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", "replace")


def run_python(code: str, tests: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` then ``tests`` (top-level asserts and/or ``test*`` functions, which
    are called in order) in one sandboxed interpreter; never raises for anything the
    code does. The namespace is a module named ``solution`` (so an
    ``if __name__ == "__main__":`` demo block does not run)."""
    limits = limits or SandboxLimits()
    t0 = time.monotonic()
    python = _python(limits)
    netns = _netns_prefix() if limits.network else None
    uid, gid = _nobody()
    drop = limits.drop_privileges and _can_drop_to(python, uid, gid)
    tmp = tempfile.mkdtemp(prefix="prefcurate-sbx-")
    rfd, wfd = os.pipe()
    out = tempfile.TemporaryFile()
    token = secrets.token_hex(16)
    proc = None
    timed_out = False
    try:
        if drop:
            os.chown(tmp, uid, gid)
        os.chmod(tmp, 0o700)
        job = {
            "token": token,
            "report_fd": wfd,
            "code": code,
            "tests": tests,
            "tmp": tmp,
            "limits": _rlimits(limits),
            "memory_mb": limits.memory_mb,
            "uid": uid if drop else None,
            "gid": gid if drop else None,
            "audit": limits.audit_hook,
        }
        argv = [*(netns or ()), python, "-I", "-B", "-c", _RUNNER]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=_child_env(tmp),
                pass_fds=(wfd,),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return SandboxResult(
                "error", _short(f"could not start the sandbox: {exc}"), time.monotonic() - t0
            )
        os.close(wfd)
        wfd = -1
        try:
            proc.communicate(json.dumps(job).encode("utf-8"), timeout=limits.time_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        except (BrokenPipeError, OSError):
            pass  # the child died before reading its job; its exit status says why
        _killpg(proc.pid)
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if proc.returncode is None:
            proc.wait()
        verdict = _read_report(rfd, token)
        dt = time.monotonic() - t0
        if timed_out:
            return SandboxResult("failed", f"timeout after {limits.time_s:.1f} s", dt)
        if verdict is not None:
            return SandboxResult(verdict[0], _short(verdict[1]), dt)
        return SandboxResult(*_explain_exit(proc.returncode, _tail(out), limits), dt)
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)
        out.close()
        if proc is not None and proc.returncode is None:
            _killpg(proc.pid)
            proc.wait()
        _rmtree(tmp)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(fd: int, token: str) -> tuple[str, str] | None:
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


def _explain_exit(rc: int, tail: str, limits: SandboxLimits) -> tuple[str, str]:
    """Why a run ended without a verdict, from its exit status and last output."""
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    if rc is not None and rc < 0:
        sig = -rc
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "failed", f"cpu time limit ({int(math.ceil(limits.time_s)) + 1} s)"
        if sig == signal.SIGXFSZ:
            return "failed", f"file size limit ({limits.file_size_mb} MB)"
        return "failed", _short(
            f"crashed: killed by {signal.Signals(sig).name}" + (f" ({last})" if last else "")
        )
    if "MemoryError" in tail:
        return "failed", f"memory limit ({limits.memory_mb} MB): MemoryError"
    if rc == 0:
        return "failed", "exited before the tests finished (exit status 0, no verdict)"
    return "failed", _short(
        f"exited before the tests finished (exit status {rc})" + (f": {last}" if last else "")
    )


def run_many(
    jobs: Sequence[tuple[str, str]], limits: SandboxLimits | None = None, workers: int = 2
) -> list[SandboxResult]:
    """Run each ``(code, tests)`` job in its own sandbox, ``workers`` at a time; the
    results come back in the order of ``jobs``.

    >>> [r.status for r in run_many([("x = 1", "assert x == 1"), ("x = 2", "assert x == 1")])]
    ['passed', 'failed']
    """
    limits = limits or SandboxLimits()
    if workers < 1:
        raise PrefcurateError(f"sandbox: workers must be >= 1, got {workers}")
    if not jobs:
        return []
    if workers == 1 or len(jobs) == 1:
        return [run_python(c, t, limits) for c, t in jobs]
    with ThreadPoolExecutor(
        max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox"
    ) as pool:
        return list(pool.map(lambda job: run_python(job[0], job[1], limits), jobs))
