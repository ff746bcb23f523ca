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

The pieces: :mod:`pipeline.annotate.sandbox_limits` (the limits, the probes of what
this machine allows, :func:`sandbox_layers`) and :mod:`pipeline.annotate.sandbox_child`
(the program the child runs, the reading of its verdict, :class:`SandboxResult`); this
module starts the child, feeds it its job and collects its result.

>>> run_python("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5").status
'passed'
>>> r = run_python("def add(a, b):\\n    return a - b", "assert add(2, 3) == 5")
>>> r.status, r.reason
('failed', 'AssertionError (tests line 1: assert add(2, 3) == 5)')
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from pipeline.annotate.sandbox_child import (
    MAX_REASON_CHARS,
    RUNNER,
    SandboxResult,
    explain_exit,
    read_report,
    short,
)
from pipeline.annotate.sandbox_limits import (
    SandboxLimits,
    can_drop_to,
    child_env,
    interpreter,
    netns_prefix,
    nobody,
    rlimits,
    sandbox_layers,
)
from schemas.errors import PrefcurateError

__all__ = [
    "MAX_REASON_CHARS",
    "SandboxLimits",
    "SandboxResult",
    "run_many",
    "run_python",
    "sandbox_layers",
]

log = logging.getLogger(f"prefcurate.{__name__}")


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
    python = interpreter(limits)
    netns = netns_prefix() if limits.network else None
    uid, gid = nobody()
    drop = limits.drop_privileges and can_drop_to(python, uid, gid)
    tmp = tempfile.mkdtemp(prefix="prefcurate-sbx-")
    rfd, wfd = os.pipe()
    out = tempfile.TemporaryFile()
    token = secrets.token_hex(16)
    proc = None
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
            "limits": rlimits(limits),
            "memory_mb": limits.memory_mb,
            "uid": uid if drop else None,
            "gid": gid if drop else None,
            "audit": limits.audit_hook,
        }
        argv = [*(netns or ()), python, "-I", "-B", "-c", RUNNER]
        try:
            proc = _spawn(argv, tmp, wfd, out)
        except OSError as exc:
            return SandboxResult(
                "error", short(f"could not start the sandbox: {exc}"), time.monotonic() - t0
            )
        os.close(wfd)
        wfd = -1
        timed_out = _feed_and_wait(proc, job, limits.time_s)
        verdict = read_report(rfd, token)
        dt = time.monotonic() - t0
        if timed_out:
            return SandboxResult("failed", f"timeout after {limits.time_s:.1f} s", dt)
        if verdict is not None:
            return SandboxResult(verdict[0], short(verdict[1]), dt)
        return SandboxResult(*explain_exit(proc.returncode, _tail(out), limits), dt)
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)
        out.close()
        if proc is not None and proc.returncode is None:
            _killpg(proc.pid)
            proc.wait()
        _rmtree(tmp)


def _spawn(argv: list[str], tmp: str, wfd: int, out) -> subprocess.Popen:
    """Start the child in its own session in ``tmp``, with the report pipe's write end
    ``wfd`` and stdout/stderr into ``out``; raises OSError when it cannot start."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=child_env(tmp),
        pass_fds=(wfd,),
        start_new_session=True,
        close_fds=True,
    )


def _feed_and_wait(proc: subprocess.Popen, job: dict, time_s: float) -> bool:
    """Send the child its job, wait for it up to ``time_s``, then kill its process
    group; True when the wall-clock limit ran out."""
    timed_out = False
    try:
        proc.communicate(json.dumps(job).encode("utf-8"), timeout=time_s)
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
    return timed_out


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
