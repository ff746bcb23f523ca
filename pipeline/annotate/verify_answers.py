"""The ``exact_answer`` verifier: the final answer of a free-text response against the
expected one.

:func:`extract_final_answer` finds the answer (boxed, after an "answer" marker, after a
last ``=``, the last number, the last line), :func:`parse_number` and
:func:`normalize_text` make numbers and texts comparable, :func:`check_exact_answer`
compares; :func:`prompt_numbers` are the request's own numbers, which a final number
that restates the question is not taken from. In process and pure.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from pipeline.annotate.verify_common import MAX_TEXT_CHARS, Verdict

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


def expected_number(expected: str | int | float) -> tuple[float, str | None] | None:
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
    """Pass iff the response's final answer equals ``expected`` (the rules:
    :mod:`pipeline.annotate.verify`);
    ``prompt_numbers`` are the numbers of the request (see :func:`extract_final_answer`).

    >>> check_exact_answer("The answer is 1,000 meters.", 1000)
    Verdict(passed=True, reason='1000 == 1000 (answer_marker: 1,000 meters)')
    >>> check_exact_answer("I get 41.", "42").reason
    'expected 42, got 41 (last_number: 41)'
    """
    want = expected_number(expected)
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
