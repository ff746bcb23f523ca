"""Verifier annotators: check each candidate against its prompt's targets → scores + votes.

Input: PROMPTS (the targets are fields of ``meta``, below) and CANDIDATES. Output:
``scores`` (SCORES: one row per (candidate, verifier kind that applies to its prompt),
annotator ``verifier:<kind>``, aspect ``correct``, score 1.0 pass / 0.0 fail / null when
the check itself could not run, ``raw_output`` the reason, ``parse_error`` that null
score's reason) and ``votes`` (VOTES: per prompt and kind, every pair of candidates where
one passes and the other fails, verdict for the passing one, ``prob_a`` 1.0 / 0.0,
``order`` null; both pass or both fail: no vote). Row unit: one candidate. Kept: a
candidate with text (checked by each kind its prompt has a target for; a prompt without
targets is counted in ``info``). Dropped: ``request_failed`` (the candidate has an
``error``), ``empty_output`` (no text).

Format → check → parse like the other annotators: :func:`build_verify_jobs` pairs
candidates with targets, :func:`run_verify_jobs` checks them (``exact_answer`` and
``constraints`` in process, pure; ``python_tests`` in a sandboxed subprocess, see
:mod:`pipeline.annotate.sandbox`), :func:`make_verifier_outputs` builds the tables.

**Targets** (optional fields of a prompt row; ingest keeps them in ``meta`` and checks
them with :func:`validate_targets`):

- ``answer``: the expected final answer, a string or a number. The final answer of a
  response is found by :func:`extract_final_answer`: the last ``\\boxed{...}``, else the
  text after the last "answer:" / "answer is" / "final answer:", else the right-hand side
  of a last line ending in ``= X``, else (numeric answers) the last number that is not
  one of the prompt's own numbers (a response that restates the question, "There are
  300 cm in 3 m", ends on one), or (text answers) the last non-empty line. Numbers
  compare numerically (relative tolerance 1e-6): thousands separators (``1,234``),
  fractions (``3/4``, ``\\frac{3}{4}``), a leading currency sign and, when the expected
  answer has none, a unit (``42 apples``, ``50%``) are understood; when both give a
  unit, the units must match (no unit conversion: ``5 km`` is not ``5000 m``; ``50%``
  is not ``0.5``). Text compares after normalisation: case, punctuation, articles (a,
  an, the), LaTeX ``\\text{}`` and extra whitespace are ignored.
- ``tests``: Python test code run after the response's code (its ```` ```python ````
  blocks, else its untagged fenced blocks, else the whole text when it has no fence);
  top-level ``assert`` statements and ``test*`` functions (called in order). A pass is
  a run that ends without an exception within the time and memory limits.
- ``constraints``: a list of objects ``{"type": ..., "value": ...}`` (IFEval style), all
  of which must hold; see :data:`CONSTRAINTS`. Text matching is case-insensitive unless
  ``"case_sensitive": true``; words are whitespace-separated.

>>> extract_final_answer("6 x 7 is... so the answer is **42**.")
('42', 'answer_marker')
>>> check_exact_answer("So we get \\\\boxed{\\\\frac{3}{4}}", "0.75").passed
True
>>> check_constraints("hello world", [{"type": "max_words", "value": 1}])
Verdict(passed=False, reason='0/1 constraints met; failed: max_words: 2 words > 1')
>>> validate_targets({"constraints": [{"type": "max_word", "value": 5}]})[0][:50]
"constraints[0].type: unknown constraint 'max_word'"
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Sequence

import pyarrow as pa

from pipeline.annotate.sandbox import SandboxLimits, run_many, sandbox_layers
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import VERIFIER_KINDS as KINDS
from schemas.config import VerifyConfig
from schemas.errors import PrefcurateError
from schemas.tables import SCORES, VOTES, from_rows

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "verify"
STAGE_VERSION = 1
ASPECT = "correct"
TARGET_FIELD = {"exact_answer": "answer", "python_tests": "tests", "constraints": "constraints"}
MAX_TEXT_CHARS = 200_000  # longer texts are checked on their first MAX_TEXT_CHARS chars
REGEX_TIMEOUT_S = 1.0

Kind = Literal["exact_answer", "python_tests", "constraints"]


def sandbox_limits(cfg: VerifyConfig) -> SandboxLimits:
    """The sandbox limits of ``python_tests`` from the verify config."""
    return SandboxLimits(time_s=cfg.time_limit_s, memory_mb=cfg.memory_limit_mb)


class Verdict(NamedTuple):
    """``passed``: True / False, or None when the check could not run (not the
    candidate's fault: the score is null); ``reason``: a short text."""

    passed: bool | None
    reason: str


def verifier_annotator(kind: str) -> str:
    """The annotator name of a verifier kind: ``verifier:<kind>``."""
    return f"verifier:{kind}"


# --------------------------------------------------------------------------- constraints

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
_MIN_MAX = (("min_words", "max_words"), ("min_chars", "max_chars"))


try:  # the ``regex`` module (a dependency of transformers) can time a search out, so a
    # pathological pattern cannot hang the stage; ``re`` is the fallback
    import regex as _regex
except ImportError:  # pragma: no cover
    _regex = None


def _compile_regex(pattern: str, case_sensitive: bool) -> Any:
    if _regex is not None:
        return _regex.compile(pattern, (0 if case_sensitive else _regex.IGNORECASE) | _regex.V0)
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


def _validate_constraint(i: int, c: Any) -> list[str]:
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


# --------------------------------------------------------------------------- answers

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_SNUM = rf"[-+]?(?:{_NUM})"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_SNUM}(?:\s*/\s*{_SNUM})?")
# the last number keeps a word right after it as its unit ("5 miles", "50 %")
_LAST_NUMBER_RE = re.compile(
    rf"(?<![\w.]){_SNUM}(?:\s*/\s*{_SNUM})?"
    rf"(?:\s?(?:%|[A-Za-zµ°][A-Za-z°/^²³]{{0,11}}\b))?"
)
_FULL_NUM = re.compile(
    rf"(?P<cur>[$€£¥])?\s*(?P<num>{_SNUM})(?:\s*/\s*(?P<den>{_SNUM}))?\s*(?P<unit>.*)", re.S
)
_UNIT = re.compile(r"[%°‰]|[A-Za-zµ°][\w°/^²³.\- ]{0,19}")
_MARKER = re.compile(
    r"(?i)\b(?:final\s+answer|answer)\b\s*(?:[:=]|\bis\b)"
    r"(?:\s*(?:[:=]|\bis\b))?"
)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _clean_latex(s: str) -> str:
    s = s.replace("\u2212", "-")
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle)\b", "", s)
    s = re.sub(r"\\[,;:! ]", " ", s).replace("\\%", "%").replace("\\$", "$")
    s = s.replace("^\\circ", "°").replace("^{\\circ}", "°")
    s = re.sub(r"\$([^$]*)\$", r" \1 ", s)  # $...$ math
    s = re.sub(r"(?<=\d)[\u00a0\u2009\u202f](?=\d{3}\b)", "", s)
    # "(3)/(4)" from \frac → "3/4"
    s = re.sub(rf"\(\s*({_SNUM})\s*\)\s*/\s*\(\s*({_SNUM})\s*\)", r"\1/\2", s)
    return s


def _balanced(text: str, start: int) -> str | None:
    """The content of the ``{...}`` that opens at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def extract_final_answer(
    text: str, numeric: bool = True, avoid: Sequence[float] = ()
) -> tuple[str, str] | None:
    """The final answer in a free-text response, and how it was found.

    In this order: the last ``\\boxed{...}`` / ``\\fbox{...}`` (``boxed``); the rest of
    the line after the last "answer:", "answer is", "final answer:" (``answer_marker``;
    the next line when that is empty); the right-hand side of a last line ending in
    ``= X`` (``equals``); then, when ``numeric``, the last number with the word right
    after it as its unit (``last_number``) — skipping numbers in ``avoid`` (the
    prompt's own numbers: "There are 300 cm in 3 m" restates the question) unless all
    are — else the last non-empty line (``last_line``). Markdown emphasis is ignored.
    None when nothing is found.

    >>> extract_final_answer("First 2+2=4, then 4*3 = 12. The total is 12 apples.")
    ('12 apples', 'last_number')
    >>> extract_final_answer("x = 3\\ny = 4\\nSo x + y = 7")
    ('7', 'equals')
    >>> extract_final_answer("There are 300 centimeters in 3 meters.", avoid=[3])
    ('300 centimeters', 'last_number')
    >>> extract_final_answer("Answer: Paris.", numeric=False)
    ('Paris', 'answer_marker')
    """
    if not text or not text.strip():
        return None
    t = text[:MAX_TEXT_CHARS].replace("**", "").replace("__", "")
    boxes = [m.end() - 1 for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", t)]
    for pos in reversed(boxes):
        inner = _balanced(t, pos)
        if inner is not None and inner.strip():
            return inner.strip(), "boxed"
    marks = list(_MARKER.finditer(t))
    if marks:
        m = marks[-1]
        rest = t[m.end() :]
        line, _, after = rest.partition("\n")
        if not line.strip():
            line = next((ln for ln in after.splitlines() if ln.strip()), "")
        seg = line.strip().strip("`").strip().rstrip(".!;,").strip()
        if seg and (not numeric or _NUMBER_RE.search(_clean_latex(seg))):
            return seg, "answer_marker"
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    if lines:
        m = re.search(r"=\s*([^=]{1,40}?)\s*[.!]?\s*$", lines[-1])
        if m and m.group(1).strip() and (not numeric or parse_number(m.group(1))):
            return m.group(1).strip(), "equals"
    if numeric:
        nums = [m.group(0).strip() for m in _LAST_NUMBER_RE.finditer(_clean_latex(t))]
        for n in reversed(nums):
            got = _answer_number(n)
            if got is None or not any(
                math.isclose(got[0], a, rel_tol=1e-9, abs_tol=1e-12) for a in avoid
            ):
                return n, "last_number"
        return (nums[-1], "last_number") if nums else None
    return (lines[-1].rstrip(".!;,").strip() or lines[-1], "last_line") if lines else None


def _to_float(num: str, den: str | None) -> float | None:
    try:
        x = float(num.replace(",", ""))
        if den is not None:
            d = float(den.replace(",", ""))
            if d == 0:
                return None
            x /= d
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _norm_unit(u: str) -> str:
    u = re.sub(r"\s+", "", u.strip().rstrip(".").lower())
    return u[:-1] if len(u) > 2 and u.endswith("s") else u


def parse_number(s: str) -> tuple[float, str | None] | None:
    """``(value, unit | None)`` when ``s`` is a number with an optional currency sign and
    unit, else None.

    >>> parse_number("1,234.5 km"), parse_number("3/4"), parse_number("$5"), parse_number("x")
    ((1234.5, 'km'), (0.75, None), (5.0, '$'), None)
    """
    s = _clean_latex(s).strip().rstrip(".;,:!").strip()
    m = _FULL_NUM.fullmatch(s)
    if not m:
        return None
    x = _to_float(m.group("num"), m.group("den"))
    if x is None:
        return None
    unit = m.group("unit").strip().rstrip(".").strip() or None
    if unit is not None and not _UNIT.fullmatch(unit):
        return None
    if m.group("cur"):
        if unit is not None:
            return None
        unit = m.group("cur")
    return x, unit


def normalize_text(s: str) -> str:
    """Lowercase, no punctuation, no articles, single spaces (SQuAD-style).

    >>> normalize_text("  The **Eiffel** tower! ")
    'eiffel tower'
    """
    s = _clean_latex(s).casefold()
    s = re.sub(r"[^\w\s]", " ", s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _expected_number(expected: str | int | float) -> tuple[float, str | None] | None:
    if isinstance(expected, bool):
        return None
    if isinstance(expected, (int, float)):
        return (float(expected), None) if math.isfinite(expected) else None
    return parse_number(expected)


def check_exact_answer(
    text: str,
    expected: str | int | float,
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    prompt_numbers: Sequence[float] = (),
) -> Verdict:
    """Pass iff the response's final answer equals ``expected`` (module docstring);
    ``prompt_numbers`` are the numbers of the request (see :func:`extract_final_answer`).

    >>> check_exact_answer("The answer is 1,000 meters.", 1000)
    Verdict(passed=True, reason='1000 == 1000 (answer_marker: 1,000 meters)')
    >>> check_exact_answer("I get 41.", "42").reason
    'expected 42, got 41 (last_number: 41)'
    """
    want = _expected_number(expected)
    found = extract_final_answer(text, numeric=want is not None, avoid=prompt_numbers)
    shown_exp = (
        _fmt(want[0]) + (f" {want[1]}" if want and want[1] else "") if want else str(expected)
    )
    if found is None:
        return Verdict(False, f"no final answer found (expected {shown_exp})")
    seg, how = found
    src = f"{how}: {seg[:80]}"
    if want is None:
        ok = normalize_text(seg) == normalize_text(str(expected))
        if ok:
            return Verdict(True, f"matches {str(expected)[:80]!r} ({src})")
        return Verdict(False, f"expected {str(expected)[:80]!r}, got {seg[:80]!r} ({how})")
    got = _answer_number(seg)
    if got is None:
        return Verdict(False, f"expected {shown_exp}, no number in the final answer ({src})")
    value, unit = got
    if want[1] is not None and unit is not None and _norm_unit(unit) != _norm_unit(want[1]):
        return Verdict(
            False, f"expected {shown_exp}, got {_fmt(value)} {unit} (unit differs; {src})"
        )
    if math.isclose(value, want[0], rel_tol=rel_tol, abs_tol=abs_tol):
        return Verdict(True, f"{_fmt(value)} == {_fmt(want[0])} ({src})")
    return Verdict(False, f"expected {shown_exp}, got {_fmt(value)} ({src})")


def _answer_number(seg: str) -> tuple[float, str | None] | None:
    """A number from an extracted answer: all of it, or after its last ``=``, else its
    first number (``42 apples, since 6 x 7`` → 42)."""
    seg = _clean_latex(seg)
    for cand in (seg, seg.rsplit("=", 1)[-1] if "=" in seg else None):
        if cand is not None:
            got = parse_number(cand)
            if got is not None:
                return got
    tail = seg.rsplit("=", 1)[-1]
    m = _NUMBER_RE.search(tail) or _NUMBER_RE.search(seg)
    if not m:
        return None
    got = parse_number(m.group(0))
    return (got[0], None) if got else None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


# --------------------------------------------------------------------------- code


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


# --------------------------------------------------------------------------- targets


def validate_targets(meta: dict[str, Any]) -> list[str]:
    """The problems of a prompt row's targets (``answer``, ``tests``, ``constraints``),
    each naming its field; [] when they are fine or absent. Ingest quarantines a row
    with problems.

    >>> validate_targets({"answer": 42, "tests": "assert f(1) == 2"})
    []
    >>> for p in validate_targets({"answer": True, "tests": "assert f(1 == 2"}): print(p)
    answer: expected a string or a number, got bool
    tests: does not compile: '(' was never closed (line 1)
    """
    if not isinstance(meta, dict):
        return [f"meta: expected an object, got {type(meta).__name__}"]
    problems: list[str] = []
    if "answer" in meta and meta["answer"] is not None:
        a = meta["answer"]
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            problems.append(f"answer: expected a string or a number, got {type(a).__name__}")
        elif isinstance(a, float) and not math.isfinite(a):
            problems.append(f"answer: {a} is not a finite number")
        elif isinstance(a, str) and not a.strip():
            problems.append("answer: empty string (give the expected final answer)")
        elif isinstance(a, str) and _expected_number(a) is None and not normalize_text(a):
            problems.append(
                f"answer: {a!r} has nothing left to compare after normalisation "
                f"(punctuation and articles are ignored)"
            )
    if "tests" in meta and meta["tests"] is not None:
        t = meta["tests"]
        if not isinstance(t, str) or not t.strip():
            problems.append(f"tests: expected non-empty Python test code, got {t!r:.40}")
        else:
            try:
                compile(t, "<tests>", "exec")  # compiled only: nothing runs here
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                line = getattr(exc, "lineno", None)
                msg = getattr(exc, "msg", str(exc))
                problems.append(
                    f"tests: does not compile: {msg}" + (f" (line {line})" if line else "")
                )
    if "constraints" in meta and meta["constraints"] is not None:
        cs = meta["constraints"]
        if not isinstance(cs, list) or not cs:
            problems.append(
                "constraints: expected a non-empty list of objects like "
                '{"type": "max_words", "value": 50}, got '
                f"{type(cs).__name__}"
            )
        else:
            for i, c in enumerate(cs):
                problems.extend(_validate_constraint(i, c))
            if not problems:
                vals = {c["type"]: c.get("value") for c in cs}
                for lo, hi in _MIN_MAX:
                    if lo in vals and hi in vals and vals[lo] > vals[hi]:
                        problems.append(
                            f"constraints: {lo}={vals[lo]} > {hi}={vals[hi]} cannot both hold"
                        )
    return problems


def prompt_targets(meta: str | dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """``({kind: target}, problems)`` of a prompt's ``meta`` (JSON text or a dict); a
    kind whose target has a problem is left out."""
    if meta is None:
        return {}, []
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            return {}, [f"meta: not valid JSON ({exc.msg})"]
    if not isinstance(meta, dict):
        return {}, [f"meta: expected an object, got {type(meta).__name__}"]
    problems = validate_targets(meta)
    bad = {p.split(":")[0].split("[")[0].split(".")[0] for p in problems}
    out = {
        kind: meta[field]
        for kind, field in TARGET_FIELD.items()
        if meta.get(field) is not None and field not in bad
    }
    return out, problems


# --------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class VerifyJob:
    prompt_id: str
    source_id: str
    candidate_id: str
    kind: str
    text: str
    target: Any
    prompt_numbers: tuple[float, ...] = ()  # numbers in the request (exact_answer)


def prompt_numbers(messages: Sequence[dict[str, str]] | None) -> tuple[float, ...]:
    """The numbers in a prompt's user messages (distinct, in order of appearance).

    >>> prompt_numbers([{"role": "user", "content": "How many cm are in 3.5 m? (1,000)"}])
    (3.5, 1000.0)
    """
    out: list[float] = []
    for m in messages or ():
        if m.get("role") != "user":
            continue
        for hit in _NUMBER_RE.finditer(_clean_latex(m.get("content") or "")):
            got = parse_number(hit.group(0))
            if got is not None and got[0] not in out:
                out.append(got[0])
    return tuple(out)


def build_verify_jobs(
    prompts: pa.Table, candidates: pa.Table, cfg: VerifyConfig
) -> tuple[list[VerifyJob], list[dict], dict[str, Any]]:
    """One job per (candidate, enabled kind with a valid target on its prompt).

    Returns (jobs sorted by prompt, candidate, kind; dropped rows; info). Candidates with
    an ``error`` are dropped ``request_failed``, those without text ``empty_output``.
    """
    targets: dict[str, dict[str, Any]] = {}
    invalid: dict[str, list[str]] = {}
    numbers: dict[str, tuple[float, ...]] = {}
    pids = prompts.column("prompt_id").to_pylist()
    convs = (
        prompts.column("prompt").to_pylist()
        if "prompt" in prompts.column_names
        else [None] * len(pids)
    )
    for pid, meta, conv in zip(pids, prompts.column("meta").to_pylist(), convs):
        t, problems = prompt_targets(meta)
        targets[pid] = t
        if "exact_answer" in t:
            numbers[pid] = prompt_numbers(conv)
        if problems:
            invalid[pid] = problems
    if invalid:
        log.warning(
            "verify: %d prompt(s) have invalid targets (ingest should have "
            "quarantined them); those targets are skipped: %s",
            len(invalid),
            dict(itertools.islice(invalid.items(), 3)),
        )
    jobs, drops = [], []
    no_target = 0
    kind_order = {k: i for i, k in enumerate(cfg.kinds)}
    rows = candidates.select(
        ["prompt_id", "source_id", "candidate_id", "text", "error"]
    ).to_pylist()
    for r in rows:
        if r["prompt_id"] not in targets:
            raise PrefcurateError(
                f"verify: candidate {r['candidate_id']} belongs to prompt {r['prompt_id']}, "
                f"which is not in the prompts table; pass the prompts the candidates were "
                f"generated from"
            )
        if r["error"] is not None:
            drops.append(
                {
                    "source_id": r["source_id"],
                    "row_id": r["candidate_id"],
                    "reason": Reason.REQUEST_FAILED,
                    "detail": f"verify: candidate has an error: {r['error'][:200]}",
                }
            )
            continue
        if r["text"] is None or not r["text"].strip():
            drops.append(
                {
                    "source_id": r["source_id"],
                    "row_id": r["candidate_id"],
                    "reason": Reason.EMPTY_OUTPUT,
                    "detail": "verify: candidate has no text",
                }
            )
            continue
        kinds = [k for k in cfg.kinds if k in targets[r["prompt_id"]]]
        if not kinds:
            no_target += 1
        for k in kinds:
            jobs.append(
                VerifyJob(
                    r["prompt_id"],
                    r["source_id"],
                    r["candidate_id"],
                    k,
                    r["text"],
                    targets[r["prompt_id"]][k],
                    numbers.get(r["prompt_id"], ()) if k == "exact_answer" else (),
                )
            )
    jobs.sort(key=lambda j: (j.prompt_id, j.candidate_id, kind_order[j.kind]))
    info = {
        "candidates_without_target": no_target,
        "prompts_with_targets": sum(1 for t in targets.values() if any(k in t for k in cfg.kinds)),
        "invalid_targets": invalid,
    }
    return jobs, drops, info


def run_verify_jobs(
    jobs: Sequence[VerifyJob],
    cfg: VerifyConfig,
    *,
    sandbox: Callable[[list[tuple[str, str]]], list[Any]] | None = None,
) -> list[Verdict]:
    """A verdict per job, in order. ``python_tests`` jobs run in the sandbox, identical
    (code, tests) once; ``sandbox`` replaces :func:`sandbox.run_many` (tests)."""
    out: list[Verdict | None] = [None] * len(jobs)
    code_jobs: dict[tuple[str, str], list[int]] = {}
    for i, j in enumerate(jobs):
        if j.kind == "exact_answer":
            out[i] = check_exact_answer(
                j.text,
                j.target,
                rel_tol=cfg.answer_rel_tol,
                abs_tol=cfg.answer_abs_tol,
                prompt_numbers=j.prompt_numbers,
            )
        elif j.kind == "constraints":
            out[i] = check_constraints(j.text, j.target)
        elif j.kind == "python_tests":
            code = extract_code(j.text)
            if not code.strip():
                out[i] = Verdict(False, "no Python code in the response")
            else:
                code_jobs.setdefault((code, j.target), []).append(i)
        else:
            raise PrefcurateError(
                f"verify: unknown verifier kind {j.kind!r} (known: {', '.join(KINDS)})"
            )
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


def build_votes(scored: Sequence[tuple[VerifyJob, Verdict]]) -> list[dict[str, Any]]:
    """VOTES rows: per (prompt, kind), pass ≻ fail for each pair with one pass and one
    fail, in the canonical orientation ``candidate_a < candidate_b``; no vote when both
    pass, both fail, or either could not be checked.

    >>> j = lambda c: VerifyJob("p", "s", c, "exact_answer", "", 1)
    >>> [(v["candidate_a"], v["candidate_b"], v["verdict"]) for v in build_votes(
    ...     [(j("y"), Verdict(True, "")), (j("x"), Verdict(False, "")),
    ...      (j("z"), Verdict(False, ""))])]
    [('x', 'y', 'b'), ('y', 'z', 'a')]
    """
    groups: dict[tuple[str, str, str], list[tuple[str, Verdict]]] = {}
    for job, v in scored:
        groups.setdefault((job.prompt_id, job.source_id, job.kind), []).append(
            (job.candidate_id, v)
        )
    rows = []
    for (pid, sid, kind), members in groups.items():
        best: dict[str, Verdict] = {}
        for cid, v in members:
            best[cid] = v
        for a, b in itertools.combinations(sorted(best), 2):
            va, vb = best[a], best[b]
            if va.passed is None or vb.passed is None or va.passed == vb.passed:
                continue
            loser, lv = (b, vb) if va.passed else (a, va)
            rows.append(
                {
                    "prompt_id": pid,
                    "source_id": sid,
                    "candidate_a": a,
                    "candidate_b": b,
                    "annotator": verifier_annotator(kind),
                    "order": None,
                    "verdict": "a" if va.passed else "b",
                    "prob_a": 1.0 if va.passed else 0.0,
                    "raw_output": f"{'a' if va.passed else 'b'} passes, {loser} fails: {lv.reason}"[
                        :500
                    ],
                    "parse_error": None,
                }
            )
    kind_rank = {verifier_annotator(k): i for i, k in enumerate(KINDS)}
    rows.sort(
        key=lambda r: (
            r["prompt_id"],
            kind_rank.get(r["annotator"], 99),
            r["annotator"],
            r["candidate_a"],
            r["candidate_b"],
        )
    )
    return rows


def make_verifier_outputs(
    jobs: Sequence[VerifyJob],
    verdicts: Sequence[Verdict],
    drops: list[dict],
    info: dict[str, Any],
    n_candidates: int,
) -> StageResult:
    """SCORES and VOTES rows from the verdicts; counts and ``info``.

    ``info``: ``checks`` per kind (``pass``/``fail``/``unchecked``), ``votes`` per kind,
    and the job-building info (``candidates_without_target``, ``prompts_with_targets``,
    ``invalid_targets``).
    """
    scored = list(zip(jobs, verdicts, strict=True))
    score_rows = [
        {
            "candidate_id": j.candidate_id,
            "annotator": verifier_annotator(j.kind),
            "aspect": ASPECT,
            "score": None if v.passed is None else float(v.passed),
            "raw_output": v.reason,
            "parse_error": v.reason if v.passed is None else None,
        }
        for j, v in scored
    ]
    vote_rows = build_votes(scored)
    checks: dict[str, dict[str, int]] = {}
    for j, v in scored:
        c = checks.setdefault(j.kind, {"pass": 0, "fail": 0, "unchecked": 0})
        c["pass" if v.passed else "unchecked" if v.passed is None else "fail"] += 1
    n_votes = Counter(r["annotator"].split(":", 1)[1] for r in vote_rows)
    counts = StageCounts(
        rows_in=n_candidates,
        kept=n_candidates - len(drops),
        dropped=dict(Counter(str(d["reason"]) for d in drops)),
        rows_out=len(score_rows),
    )
    return StageResult(
        STAGE,
        {
            "scores": from_rows(score_rows, SCORES, "scores"),
            "votes": from_rows(vote_rows, VOTES, "votes"),
        },
        counts,
        dropped_table(STAGE, drops),
        info={**info, "checks": checks, "votes": dict(sorted(n_votes.items()))},
    )


def verify_candidates(
    prompts: pa.Table,
    candidates: pa.Table,
    cfg: VerifyConfig | None = None,
    *,
    sandbox: Callable[[list[tuple[str, str]]], list[Any]] | None = None,
) -> StageResult:
    """The verify stage: build jobs, check them, build SCORES and VOTES (module docstring).

    >>> p = pa.table({"prompt_id": ["p"], "meta": ['{"answer": 4}']})
    >>> c = pa.table({"prompt_id": ["p"] * 3, "source_id": ["s"] * 3,
    ...               "candidate_id": ["c1", "c2", "c3"], "text": ["2+2 = 4", "5", None],
    ...               "error": [None, None, None]})
    >>> res = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    >>> res.outputs["scores"].column("score").to_pylist(), res.counts.dropped
    ([1.0, 0.0], {'empty_output': 1})
    >>> res.outputs["votes"].select(["candidate_a", "candidate_b", "verdict"]).to_pylist()
    [{'candidate_a': 'c1', 'candidate_b': 'c2', 'verdict': 'a'}]
    """
    cfg = cfg or VerifyConfig()
    jobs, drops, info = build_verify_jobs(prompts, candidates, cfg)
    verdicts = run_verify_jobs(jobs, cfg, sandbox=sandbox)
    if sandbox is None and any(j.kind == "python_tests" for j in jobs):
        info = {**info, "sandbox": sandbox_layers(sandbox_limits(cfg))}
    return make_verifier_outputs(jobs, verdicts, drops, info, candidates.num_rows)
