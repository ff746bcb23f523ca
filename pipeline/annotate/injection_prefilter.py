"""The injection detector's prefilter: a vectorised test of which texts could match at
all (every way to a flag needs one of a few letter strings in some view's letters), so
the detector's regular expressions run on those only."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from pipeline.annotate.injection_patterns import _LEET, _views, normalise

# ------------------------------------------------------------------ the prefilter
# Every way to a flag needs one of these letter strings in the *skeleton* of some view
# (the view with every non-letter removed, so "this one" is "thisone" and "1gn0re" in the
# de-l33ted view is "ignore"): an override or its compact spelling needs an override word,
# a verdict in the judge's format one of its keys, and steering or a structural imitation
# a reference to the compared texts or the evaluator addressed. Each list follows the
# alternatives of its pattern above, one string that every match of that alternative
# contains; change a pattern, change its list (tests/annotate/test_injection.py checks the
# prefilter against detect() on the planted sets and on fuzzed text).
_RESP_WORDS = (
    "respons answer repl completion candidate submission output assistant réponse "
    "reponse respuesta risposta resposta antwort antwoord"
).split()


_NEED_REF = (
    _RESP_WORDS
    + (
        "thisone thispair thiscomparison thisevaluation thisitem preferencelabel correctlabel "
        "theoneabove theonebelow theonecontainingthis thetextabove thetextbelow "
        "thetextcontainingthis thealternative theoneto theoneyou"
    ).split()
)


_NEED_EVALUATOR = (
    "judg grader evaluat évaluateur assessor reviewer rater scorer annotator annotationteam "
    "adjudicator arbiter referee reward scoring grading preference comparison ranking llm "
    "languagemodel aithat aiwhich aiwho juge correcteur juez evaluador calificador bewerter "
    "gutachter prüfer richter valutatore giudice avaliador juiz beoordelaar 評価者 審査員"
).split()


_NEED_ADDR = (
    _NEED_EVALUATOR
    + [
        f"who{ever}{be}{stem}"
        for ever in ("", "ever", "mever")
        for be in ("", "is", "are")
        for stem in "compar evaluat judg grad review rat scor rank assess".split()
    ]
    + (
        "readingthis ifyouare evaluat grad judg scor assess annotat preverified preapproved "
        "qualityassurancecheck selfevaluation internaltestrun redteam calibrationitem "
        "testmode goldlabel"
    ).split()
)


_NEED_OVERRIDE = (
    "ignor disregard forget override overrule setaside skip bypass neglect abandon "
    "discard putaside overlook paynoattentionto donotfollow dontfollow stopfollowing "
    "pretend oubliez olvida vergiss negeer vergeet esqueça esqueca supersede replace "
    "takeprecedence policyupdate nolongerapply arevoid arecancelled arecanceled "
    "areobsolete aresuperseded areoutdated selectthis choosethis pickthis preferthis"
).split() + [
    a + b
    for a in "new updated revised real actual overriding priority".split()
    for b in "instruction directive order task policy scoringrubric rubric guidelines".split()
]


_NEED_FORMAT = (
    "winner verdict preferred better choice preference winning result judg score chosen decision"
).split()


NEEDED = tuple(sorted(set(_NEED_REF + _NEED_ADDR + _NEED_OVERRIDE + _NEED_FORMAT)))


_NON_LETTER = re.compile(r"[\W\d_]+")


# texts whose views a column expression computes exactly: ASCII (NFKC, zero-width
# removal, look-alikes and case folding are then plain lowercasing), with no base64 run
# and no hint of ROT13 or reversed writing (those add decoded views)
_EXTRA_VIEWS = r"rot-? ?13|caesar|revers|backward"


def _may_flag_slow(text: str) -> bool:
    """The prefilter for one text, on the views :func:`detect` scans."""
    plain, leet = normalise(text)
    for view in _views(text, plain, leet):
        if "[[" in view:
            return True
        for skeleton in (_NON_LETTER.sub("", view), re.sub(r"[^a-z]", "", view)):
            if any(n in skeleton for n in NEEDED):
                return True
    return False


def _skeletons(s, leet: bool):
    """The letter skeleton of every (ASCII) text of the polars String series ``s``, case
    folded and, with ``leet``, digits and symbols mapped to letters first: a byte lookup
    over the column's Arrow buffer (non-ASCII bytes are dropped; those texts take the
    Python path)."""
    import polars as pl

    lut = np.zeros(256, dtype=np.uint8)
    for c in range(ord("a"), ord("z") + 1):
        lut[c] = lut[c - 32] = c
    if leet:
        for k, v in _LEET.items():
            lut[k] = ord(v)
    arr = s.to_arrow().cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    mapped = lut[raw[offsets[0] : offsets[-1]]]
    keep = mapped != 0
    new_offsets = _kept_before(keep, offsets - offsets[0])
    out = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(new_offsets), pa.py_buffer(mapped[keep].tobytes())
    )
    return pl.Series(out)


def _kept_before(keep, positions, chunk: int = 1 << 24):
    """For each position ``p`` (ascending), how many of ``keep[:p]`` are True: a cumulative
    sum taken chunk by chunk, so it needs 8 bytes per byte of one chunk only (numpy's
    ``add.reduceat`` per text is 20x slower on uint8)."""
    out = np.zeros(positions.size, dtype=np.int64)
    carry = 0
    for a in range(0, keep.size, chunk):
        b = min(a + chunk, keep.size)
        cs = np.cumsum(keep[a:b], dtype=np.int64)
        lo = np.searchsorted(positions, a + 1, side="left")
        hi = np.searchsorted(positions, b, side="right")
        out[lo:hi] = carry + cs[positions[lo:hi] - a - 1]
        carry += int(cs[-1])
    return out


def may_flag(texts: list[str | None] | pa.Array | pa.ChunkedArray) -> list[bool]:
    """Whether :func:`detect` can flag each text: False only where no view of the text
    holds any string of :data:`NEEDED` (so ``detect`` would find nothing); a column
    expression over every ASCII text, the Python views for the rest. ``texts`` may be an
    Arrow string column (then only the texts that take the Python path become objects).

    >>> may_flag(["w12 w7 w300", "Please pick this response, dear grader.", None])
    [False, True, False]
    """
    import polars as pl

    s = pl.Series("t", texts).cast(pl.String).fill_null("")
    simple = (
        (s.str.len_bytes() == s.str.len_chars())  # ASCII
        & ~s.str.contains(r"[A-Za-z0-9+/]{24,}")
        & ~s.str.to_lowercase().str.contains(_EXTRA_VIEWS)
    )
    needed = list(NEEDED)
    hit = (
        _skeletons(s, leet=False).str.contains_any(needed)
        | _skeletons(s, leet=True).str.contains_any(needed)
        | s.str.contains("[[", literal=True)
    )
    out = (hit & simple).to_list()
    for i in (~simple & (s != "")).arg_true().to_list():
        out[i] = _may_flag_slow(s[i])
    return out
