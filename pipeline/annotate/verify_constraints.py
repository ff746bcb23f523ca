"""The ``constraints`` verifier: IFEval-style format constraints on a response's text.

:data:`CONSTRAINTS` lists the known types and what their ``value`` must be;
:func:`validate_constraint` checks one constraint object of a prompt's target (ingest
quarantines a row with problems), :func:`check_constraints` checks a response against
all of them, in process and pure (a regex search times out after
:data:`REGEX_TIMEOUT_S`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, NamedTuple, Sequence

from pipeline.annotate.verify_common import MAX_TEXT_CHARS, Verdict

REGEX_TIMEOUT_S = 1.0

_TEXT_KEYS = frozenset({"type", "value", "case_sensitive"})


class _Spec(NamedTuple):
    value: Literal["none", "count", "text", "texts", "regex"]
    doc: str


#: The known constraint types: what ``value`` must be, and what holds.
CONSTRAINTS: dict[str, _Spec] = {
    "max_words": _Spec("count", "at most N whitespace-separated words"),
    "min_words": _Spec("count", "at least N words"),
    "max_chars": _Spec("count", "at most N characters (surrounding whitespace ignored)"),
    "min_chars": _Spec("count", "at least N characters"),
    "must_include": _Spec("texts", "contains the text (or each text of a list)"),
    "must_not_include": _Spec("texts", "contains none of the texts"),
    "starts_with": _Spec("text", "begins with the text (leading whitespace ignored)"),
    "ends_with": _Spec("text", "ends with the text (trailing whitespace ignored)"),
    "json": _Spec("none", "the whole response (or its one ```json fence) is valid JSON"),
    "lowercase": _Spec("none", "no uppercase letter"),
    "uppercase": _Spec("none", "no lowercase letter"),
    "no_commas": _Spec("none", "no comma"),
    "n_bullets": _Spec("count", "exactly N markdown bullet lines (-, *, + or •)"),
    "n_paragraphs": _Spec("count", "exactly N paragraphs separated by blank lines"),
    "regex": _Spec("regex", "the Python regular expression matches somewhere (search)"),
}
MIN_MAX = (("min_words", "max_words"), ("min_chars", "max_chars"))


try:  # the ``regex`` module (a dependency of transformers) can time a search out, so a
    # pathological pattern cannot hang the stage; ``re`` is the fallback
    import regex as _regex
except ImportError:  # pragma: no cover
    _regex = None


def _compile_regex(pattern: str, case_sensitive: bool) -> Any:
    if _regex is not None:
        return _regex.compile(pattern, (0 if case_sensitive else _regex.IGNORECASE) | _regex.V0)
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


def validate_constraint(i: int, c: Any) -> list[str]:
    where = f"constraints[{i}]"
    if not isinstance(c, dict):
        return [
            f'{where}: expected an object like {{"type": "max_words", "value": 50}},'
            f" got {type(c).__name__}"
        ]
    typ = c.get("type")
    if not isinstance(typ, str):
        return [f"{where}.type: missing or not a string (known: {', '.join(CONSTRAINTS)})"]
    if typ not in CONSTRAINTS:
        return [f"{where}.type: unknown constraint {typ!r} (known: {', '.join(CONSTRAINTS)})"]
    spec = CONSTRAINTS[typ]
    allowed = (
        {"type"}
        if spec.value == "none"
        else {"type", "value"}
        if spec.value == "count"
        else _TEXT_KEYS
    )
    problems = [
        f"{where}: unknown key {k!r} for {typ} (allowed: {', '.join(sorted(allowed))})"
        for k in c
        if k not in allowed
    ]
    v = c.get("value")
    cs = c.get("case_sensitive", False)
    if "case_sensitive" in c and "case_sensitive" in allowed and not isinstance(cs, bool):
        problems.append(f"{where}.case_sensitive: expected true or false, got {cs!r}")
    if spec.value == "count":
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(f"{where}.value: {typ} needs an integer >= 0, got {v!r}")
    elif spec.value == "text":
        if not isinstance(v, str) or not v.strip():
            problems.append(f"{where}.value: {typ} needs a non-empty string, got {v!r}")
    elif spec.value == "texts":
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(isinstance(x, str) and x.strip() for x in vals):
            problems.append(
                f"{where}.value: {typ} needs a non-empty string or a list of them, got {v!r}"
            )
    elif spec.value == "regex":
        if not isinstance(v, str) or not v:
            problems.append(f"{where}.value: regex needs a pattern string, got {v!r}")
        else:
            try:
                _compile_regex(v, bool(cs))
            except Exception as exc:  # re.error / regex.error
                problems.append(f"{where}.value: invalid regular expression {v!r}: {exc}")
    return problems


def _words(text: str) -> int:
    return len(text.split())


def _fold(s: str, case_sensitive: bool) -> str:
    return s if case_sensitive else s.casefold()


def _unfence_json(text: str) -> str:
    m = re.fullmatch(r"\s*```[ \t]*(?:json)?[ \t]*\n(.*?)\n?```\s*", text, re.S | re.I)
    return m.group(1) if m else text


def _check_one(text: str, c: dict[str, Any]) -> str | None:
    """None when constraint ``c`` holds for ``text``, else why not."""
    typ, v = c["type"], c.get("value")
    cs = bool(c.get("case_sensitive", False))
    s = text.strip()
    if typ == "max_words":
        n = _words(s)
        return None if n <= v else f"{n} words > {v}"
    if typ == "min_words":
        n = _words(s)
        return None if n >= v else f"{n} words < {v}"
    if typ == "max_chars":
        return None if len(s) <= v else f"{len(s)} characters > {v}"
    if typ == "min_chars":
        return None if len(s) >= v else f"{len(s)} characters < {v}"
    if typ in ("must_include", "must_not_include"):
        vals = v if isinstance(v, list) else [v]
        hay = _fold(s, cs)
        if typ == "must_include":
            missing = [x for x in vals if _fold(x, cs) not in hay]
            return None if not missing else f"missing {missing[0]!r}"
        present = [x for x in vals if _fold(x, cs) in hay]
        return None if not present else f"contains {present[0]!r}"
    if typ == "starts_with":
        return (
            None if _fold(s, cs).startswith(_fold(v.strip(), cs)) else f"does not start with {v!r}"
        )
    if typ == "ends_with":
        return None if _fold(s, cs).endswith(_fold(v.strip(), cs)) else f"does not end with {v!r}"
    if typ == "json":
        try:
            json.loads(_unfence_json(s))
        except ValueError as exc:  # json.JSONDecodeError
            return f"not valid JSON ({getattr(exc, 'msg', exc)})"
        except RecursionError:
            return "not valid JSON (nested too deeply)"
        return None
    if typ == "lowercase":
        return None if s == s.lower() else "has uppercase letters"
    if typ == "uppercase":
        return None if s == s.upper() else "has lowercase letters"
    if typ == "no_commas":
        return None if "," not in s else f"{s.count(',')} comma(s)"
    if typ == "n_bullets":
        n = len(re.findall(r"(?m)^[ \t]*[-*+•][ \t]+\S", s))
        return None if n == v else f"{n} bullet(s), expected {v}"
    if typ == "n_paragraphs":
        n = len([p for p in re.split(r"\n[ \t]*\n", s) if p.strip()])
        return None if n == v else f"{n} paragraph(s), expected {v}"
    if typ == "regex":
        pat = _compile_regex(v, cs)
        try:
            found = pat.search(s, timeout=REGEX_TIMEOUT_S) if _regex is not None else pat.search(s)
        except TimeoutError as exc:
            raise _Unchecked(f"regex {v!r} timed out after {REGEX_TIMEOUT_S} s") from exc
        return None if found else f"no match for {v!r}"
    raise _Unchecked(f"unknown constraint type {typ!r}")


class _Unchecked(Exception):
    """A check that could not run (not the candidate's fault)."""


def check_constraints(text: str, constraints: Sequence[dict[str, Any]]) -> Verdict:
    """Pass iff every constraint holds; the reason lists the first failures.

    >>> check_constraints("- a\\n- b", [{"type": "n_bullets", "value": 2},
    ...                                 {"type": "lowercase"}])
    Verdict(passed=True, reason='all 2 constraints met')
    """
    text = text[:MAX_TEXT_CHARS]
    fails = []
    for c in constraints:
        try:
            why = _check_one(text, c)
        except _Unchecked as exc:
            return Verdict(None, str(exc))
        if why is not None:
            fails.append(f"{c['type']}: {why}")
    n = len(constraints)
    if not fails:
        return Verdict(True, f"all {n} constraint{'s' if n != 1 else ''} met")
    shown = "; ".join(fails[:3]) + ("; …" if len(fails) > 3 else "")
    return Verdict(False, f"{n - len(fails)}/{n} constraints met; failed: {shown}")
