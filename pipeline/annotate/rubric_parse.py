"""Reading a rubric judge's answer: scores per aspect from strict or lenient parsing
(:func:`parse_rubric`, never raises) and P(Yes) of a Yes/No judge (:func:`parse_yesno`)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple


class RubricParse(NamedTuple):
    """Per aspect ``(score | None, parse_error | None)``, and the rationale if any."""

    scores: dict[str, tuple[float | None, str | None]]
    rationale: str | None


def parse_yesno(
    text: str | None, steps: list[dict[str, float]] | None
) -> tuple[float | None, str | None]:
    """P(Yes) from the first step of the top logprobs that names Yes or No, else 1/0 from
    the text's first word; ``(None, reason)`` when neither says.

    >>> import math
    >>> round(parse_yesno("Yes", [{"Yes": math.log(0.6), "No": math.log(0.2)}])[0], 3)
    0.75
    >>> parse_yesno("No, it is wrong", None), parse_yesno("maybe", None)[0]
    ((0.0, None), None)
    """
    for step in steps or []:
        yes = sum(math.exp(lp) for t, lp in step.items() if t.strip().lower() == "yes")
        no = sum(math.exp(lp) for t, lp in step.items() if t.strip().lower() == "no")
        if yes + no > 0:
            return yes / (yes + no), None
    if text is None:
        return None, "no output"
    m = re.match(r"\W*(yes|no)\b", text.strip(), re.I)
    if not m:
        return None, f"answer is neither Yes nor No: {text.strip()[:60]!r}"
    return (1.0 if m.group(1).lower() == "yes" else 0.0), None


def _norm_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _load_object(text: str) -> dict | None:
    """The JSON object in ``text``: all of it, or the outermost ``{...}`` span."""
    for cand in (text, text[text.find("{") : text.rfind("}") + 1] if "{" in text else ""):
        if not cand:
            continue
        try:
            obj = json.loads(cand)
        except (json.JSONDecodeError, ValueError):
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _check_score(value: Any, aspect: str, lo: int, hi: int) -> tuple[float | None, str | None]:
    if isinstance(value, bool) or value is None:
        return None, f"score for '{aspect}' is not a number: {value!r}"
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?\s*", value)
        if not m:
            return None, f"score for '{aspect}' is not a number: {value!r}"
        if m.group(2) and int(m.group(2)) != hi:
            return None, f"score {value!r} for '{aspect}' is not on the {lo}..{hi} scale"
        value = float(m.group(1))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"score for '{aspect}' is not a number: {value!r}"
    if not lo <= value <= hi:
        shown = int(value) if float(value).is_integer() else value
        return None, f"score {shown} for '{aspect}' is outside {lo}..{hi}"
    return float(value), None


def _find_lenient(text: str, aspect: str, lo: int, hi: int) -> tuple[float | None, str | None]:
    label = r"[\s_\-]*".join(re.escape(w) for w in aspect.split("_"))
    pat = re.compile(
        rf"(?<![A-Za-z]){label}(?![A-Za-z])[\"'*\s]*(?:score|rating)?"
        rf"[\"'*\s]*[:=(\[\-–]?[\"'*\s]*(-?\d+(?:\.\d+)?)"
        rf"(?:\s*(?:/|out\s+of)\s*(\d+))?",
        re.IGNORECASE,
    )
    found = {(m.group(1), m.group(2)) for m in pat.finditer(text)}
    if not found:
        return None, f"no score for '{aspect}' in the output"
    values = {float(v) for v, _ in found}
    if len(values) > 1:
        return None, (f"ambiguous score for '{aspect}': found {sorted(v for v, _ in found)}")
    v, denom = sorted(found)[0]
    if denom is not None and int(denom) != hi:
        return None, f"score {v}/{denom} for '{aspect}' is not on the {lo}..{hi} scale"
    return _check_score(float(v), aspect, lo, hi)


def _find_rationale(text: str) -> str | None:
    m = re.search(r'"rationale"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    if m:
        try:
            return json.loads(f'"{m.group(1)}"')
        except json.JSONDecodeError:
            return m.group(1)
    m = re.search(r"(?im)^\W*rationale\W*[:\-]\s*(.+)$", text)
    return m.group(1).strip() if m else None


def parse_rubric(
    text: str | None,
    aspects: tuple[str, ...] | list[str],
    *,
    min_score: int = 1,
    max_score: int = 5,
) -> RubricParse:
    """Scores per aspect and the rationale from a rubric judge's raw output; never raises.

    Strict JSON first (the whole text, or the outermost ``{...}`` span, e.g. inside a
    code fence); keys match case-insensitively with spaces/hyphens as underscores. If no
    JSON object parses, each aspect is looked up in the plain text (``Helpfulness: 4/5``).
    A score for an aspect that was not asked is ignored; an asked aspect without a valid
    score gets ``(None, reason)``.
    """
    aspects = list(aspects)
    if text is None:
        return RubricParse({a: (None, "no output") for a in aspects}, None)
    s = text.strip()
    if not s:
        return RubricParse({a: (None, "empty output") for a in aspects}, None)
    obj = _load_object(s)
    if obj is not None:
        keys = {_norm_key(str(k)): v for k, v in obj.items()}
        scores = {}
        for a in aspects:
            scores[a] = (
                _check_score(keys[a], a, min_score, max_score)
                if a in keys
                else (None, f"missing aspect '{a}' in the JSON answer")
            )
        rat = keys.get("rationale")
        return RubricParse(scores, rat if isinstance(rat, str) else None)
    return RubricParse(
        {a: _find_lenient(s, a, min_score, max_score) for a in aspects}, _find_rationale(s)
    )
