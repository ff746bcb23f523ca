"""What every verifier kind returns (:class:`Verdict`) and the text limit they share."""

from __future__ import annotations

from typing import NamedTuple

MAX_TEXT_CHARS = 200_000  # longer texts are checked on their first MAX_TEXT_CHARS chars


class Verdict(NamedTuple):
    """``passed``: True / False, or None when the check could not run (not the
    candidate's fault: the score is null); ``reason``: a short text."""

    passed: bool | None
    reason: str
