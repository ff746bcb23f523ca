"""The sandbox's limits, and which protection layers this machine can give a child.

:class:`SandboxLimits` (time, memory, file size, open files; which layers are on), the
probes run once per process (an empty network namespace through ``unshare``, the
``nobody`` user the interpreter can still run as), the child's environment and resource
limits, and :func:`sandbox_layers`, the summary the verify stage records in its ``info``.
The layers themselves are described in :mod:`pipeline.annotate.sandbox`.
"""

from __future__ import annotations

import functools
import math
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass

from schemas.errors import PrefcurateError


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


def interpreter(limits: SandboxLimits) -> str:
    return limits.python or sys.executable


@functools.lru_cache(maxsize=None)
def netns_prefix() -> tuple[str, ...] | None:
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


def nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


@functools.lru_cache(maxsize=None)
def can_drop_to(python: str, uid: int, gid: int) -> bool:
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
            env=child_env("/"),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"ok"


def child_env(tmp: str) -> dict[str, str]:
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
    netns = netns_prefix() if limits.network else None
    uid, gid = nobody()
    drop = limits.drop_privileges and can_drop_to(interpreter(limits), uid, gid)
    return {
        "subprocess": f"{interpreter(limits)} -I -B",
        "wall_timeout_kills_group": True,
        "rlimits": rl,
        "network_namespace": " ".join(netns[:2]) if netns else None,
        "audit_hook": limits.audit_hook,
        "drop_privileges": "nobody" if drop else None,
    }


def rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
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
