"""The ``python_tests`` verifier: the code of a response, run with the prompt's tests in
the sandbox (:mod:`pipeline.annotate.sandbox`), never in this process.

:func:`extract_code` finds the code, :func:`check_python_tests` runs a batch of (response,
tests) in the sandbox, :func:`sandbox_limits` are its limits from the verify config.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from pipeline.annotate.sandbox import SandboxLimits, run_many
from pipeline.annotate.verify_common import Verdict
from schemas.config import VerifyConfig


def sandbox_limits(cfg: VerifyConfig) -> SandboxLimits:
    """The sandbox limits of ``python_tests`` from the verify config."""
    return SandboxLimits(time_s=cfg.time_limit_s, memory_mb=cfg.memory_limit_mb)


def extract_code(text: str) -> str:
    """The Python code of a response: its ```` ```python ```` (``py``, ``python3``)
    fenced blocks joined, else its untagged fenced blocks, else the whole text when it
    has no fence at all ("" when it only has blocks in other languages). An unclosed
    fence (a cut-off response) runs to the end of the text.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("def f(): return 1")
    'def f(): return 1'
    """
    blocks = re.findall(
        r"(?m)^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", text, re.S
    )
    if not blocks:
        return text
    tagged = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3", "py3")]
    if tagged:
        return "\n".join(tagged)
    untagged = [b for lang, b in blocks if not lang]
    return "\n".join(untagged)


def check_python_tests(
    jobs: Sequence[tuple[str, str]],
    cfg: VerifyConfig,
    sandbox: Callable[[list[tuple[str, str]]], list[Any]] | None = None,
) -> list[Verdict]:
    """A verdict per ``(response text, tests)``, in order: a response without code
    fails, the others run in the sandbox, identical (code, tests) once; ``sandbox``
    replaces :func:`sandbox.run_many` (tests). A sandbox ``error`` is a null verdict.
    """
    out: list[Verdict | None] = [None] * len(jobs)
    code_jobs: dict[tuple[str, str], list[int]] = {}
    for i, (text, tests) in enumerate(jobs):
        code = extract_code(text)
        if not code.strip():
            out[i] = Verdict(False, "no Python code in the response")
        else:
            code_jobs.setdefault((code, tests), []).append(i)
    if code_jobs:
        keys = list(code_jobs)
        if sandbox is None:
            results = run_many(keys, sandbox_limits(cfg), workers=cfg.workers)
        else:
            results = sandbox(keys)
        for key, res in zip(keys, results, strict=True):
            v = Verdict(None if res.status == "error" else res.status == "passed", res.reason)
            for i in code_jobs[key]:
                out[i] = v
    return [v for v in out if v is not None]
