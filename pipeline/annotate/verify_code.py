"""The ``python_tests`` verifier: the code of a response, run with the prompt's tests in
the sandbox (:mod:`pipeline.annotate.sandbox`), never in this process.
"""

from __future__ import annotations

import re

from pipeline.annotate.sandbox import SandboxLimits
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
