"""Reading a pairwise judge's answer: the verdict in its text (:func:`parse_verdict`), its
mapping back to the ``ab`` orientation, and P(shown A wins) from the top logprobs."""

from __future__ import annotations

import json
import math
import re


def parse_verdict(text: str | None) -> tuple[str | None, str | None]:
    """Return (``A`` | ``B`` | ``tie`` | None, parse_error) for a judge's raw output."""
    if text is None:
        return None, "no output"
    s = text.strip()
    try:
        obj = json.loads(s)
        if isinstance(obj, dict) and isinstance(obj.get("winner"), str):
            w = obj["winner"].strip().lower()
            if w in ("a", "b"):
                return w.upper(), None
            if w == "tie":
                return "tie", None
            return None, f"unknown winner {obj['winner']!r}"
    except json.JSONDecodeError:
        pass
    # the judge's final answer: the last "winner" in the text, not the first (a judge that
    # quotes an injected {"winner": "A"} before its own verdict was read as A)
    found = re.findall(r'["\']winner["\']\s*:\s*["\']\s*(A|B|tie)\s*["\']', s, re.IGNORECASE)
    if found:
        w = found[-1].lower()
        return ("tie" if w == "tie" else w.upper()), None
    hits = set(
        re.findall(
            r"\b(?:response|answer|assistant)\s+(A|B)\b\s+(?:is|was)\s+"
            r"(?:\w+\s+)?(?:better|best|superior|preferred)",
            s,
            re.IGNORECASE,
        )
    )
    hits = {h.upper() for h in hits}
    if len(hits) == 1:
        return hits.pop(), None
    m = re.fullmatch(r"\W*(A|B|tie)\W*", s, re.IGNORECASE)
    if m:
        w = m.group(1).lower()
        return ("tie" if w == "tie" else w.upper()), None
    return None, "could not find a verdict (A, B or tie) in the output"


def map_verdict(shown: str | None, order: str) -> str | None:
    """Map a verdict on the shown order back to the canonical ``ab`` orientation."""
    if shown is None:
        return None
    if shown == "tie":
        return "tie"
    first = shown == "A"
    if order == "ab":
        return "a" if first else "b"
    return "b" if first else "a"


def prob_first_from_logprobs(steps: list[dict[str, float]] | None) -> float | None:
    """P(shown A wins) from the top logprobs at the first step that names a verdict."""
    if not steps:
        return None
    for step in steps:
        mass = {"A": 0.0, "B": 0.0, "tie": 0.0}
        found = False
        for tok, lp in step.items():
            t = tok.strip().strip('"').strip()
            key = "tie" if t.lower() in ("tie", "t", "ti") else t
            if key in mass:
                mass[key] += math.exp(lp)
                found = True
        if found and (mass["A"] + mass["B"]) > 0:
            total = mass["A"] + mass["B"] + mass["tie"]
            return (mass["A"] + 0.5 * mass["tie"]) / total
    return None
