"""Prompt dedup: exact duplicates after normalisation, and near-duplicates by MinHash LSH.

In: the ingest outputs — PROMPTS, and for a pairs input its CANDIDATES and VOTES.
Out: the same three tables without the prompts that duplicate an earlier one (table
order: the first occurrence is kept) and, for a pairs input, without those prompts' pairs.
The unit of the counts is the **source row** (a prompt of a prompts file, a pair of a
pairs file): a dropped prompt drops every source row that asked it, each a DROPPED row
naming the prompt it duplicates.

- ``duplicate_prompt``: the same text after normalisation (Unicode NFKC, case folded,
  punctuation removed, whitespace collapsed); the detail names the kept twin.
- ``near_duplicate``: Jaccard similarity of the word ``ngram``-shingle sets (exact, on
  the candidates that MinHash LSH proposes; rensa's R-MinHash, ``num_perm``
  permutations) at or above ``threshold``; the detail names the kept twin and the
  similarity. Only prompts of at least ``min_words`` words are compared: a short
  templated question differs from another by its one key word ("Can you walk me through
  the basics of inflation?" / "… of volcanoes?" share 6 of 8 3-grams, 0.75) and is a
  different question.

The text of a prompt is every message's content (roles left out), so two conversations
that differ only in a system prompt's wording are compared on all of it.

>>> import pyarrow as pa
>>> from schemas.tables import PROMPTS, from_rows
>>> def p(i, text):
...     return {"prompt_id": f"p{i}", "source_id": f"s{i}", "source": "f",
...             "prompt": [{"role": "user", "content": text}], "meta": None}
>>> long = "Explain how a refrigerator moves heat from the inside to the room outside"
>>> t = from_rows([p(1, long), p(2, long.upper() + "!"), p(3, long.replace("room", "kitchen")),
...                p(4, "Name three prime numbers.")], PROMPTS, "prompts")
>>> res = dedup_prompts(t, threshold=0.6, ngram=3, min_words=5)
>>> res.outputs["prompts"].column("prompt_id").to_pylist()
['p1', 'p4']
>>> [(d["source_id"], d["reason"]) for d in res.dropped.to_pylist()]
[('s2', 'duplicate_prompt'), ('s3', 'near_duplicate')]
"""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa

from pipeline import conversation
from pipeline.hygiene.filtering import drop_prompts
from pipeline.stage import Reason, StageResult

STAGE = "dedup"
STAGE_VERSION = 1

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Case folded, NFKC, punctuation removed, whitespace collapsed.

    >>> normalise_text("  Héllo,   WORLD!! ")
    'héllo world'
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()


# what normalise_text does to an ASCII text, as column expressions: NFKC changes nothing
# and case folding is lowercasing; Python's \w and \s in ASCII spelt out (its \s also
# holds the separators \x1c-\x1f, which Rust's does not)
_ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def normalise_texts(texts: list[str]) -> list[str]:
    """:func:`normalise_text` of each text: column expressions for the ASCII ones, the
    function itself for the others.

    >>> normalise_texts(["  Hello,   WORLD!! ", "Héllo", "a_b\x1cc"])
    ['hello world', 'héllo', 'a_b c']
    """
    import polars as pl

    s = pl.Series("t", texts, dtype=pl.String)
    ascii_ = s.str.len_bytes() == s.str.len_chars()
    fast = (
        s.str.to_lowercase()
        .str.replace_all(f"[^a-z0-9_{_ASCII_SPACE}]", " ")
        .str.replace_all(f"[{_ASCII_SPACE}]+", " ")
        .str.strip_chars(" ")
    )
    out = fast.to_list()
    for i in (~ascii_).arg_true().to_list():
        out[i] = normalise_text(texts[i])
    return out


def shingles(text: str, n: int) -> set[str]:
    """Word ``n``-grams of the normalised text (one shingle if it has fewer words).

    >>> sorted(shingles("a b c d", 3))
    ['a b c', 'b c d']
    """
    words = text.split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def find_duplicates(
    texts: list[str],
    *,
    threshold: float = 0.7,
    ngram: int = 3,
    num_perm: int = 128,
    seed: int = 0,
    near: bool = True,
    min_words: int = 12,
) -> dict[int, tuple[str, int, float]]:
    """{index: (reason, index of the kept twin, similarity)} for every text that repeats
    an earlier kept one: exactly after :func:`normalise_text`, or (``near``) with word
    ``ngram``-shingle Jaccard ≥ ``threshold`` between texts of ≥ ``min_words`` words
    (candidates from MinHash LSH, the similarity computed exactly on the shingle sets)."""
    norm = normalise_texts(texts)
    out: dict[int, tuple[str, int, float]] = {}
    first: dict[str, int] = {}
    for i, t in enumerate(norm):
        j = first.setdefault(t, i)
        if j != i:
            out[i] = (Reason.DUPLICATE_PROMPT.value, j, 1.0)
    if not near:
        return out
    todo = [i for i in range(len(norm)) if i not in out and len(norm[i].split()) >= min_words]
    if len(todo) < 2:
        return out
    import rensa

    sets = [shingles(norm[i], ngram) for i in todo]
    hashes = rensa.RMinHash.from_token_sets([sorted(s) for s in sets], num_perm, seed)
    bands = _bands(threshold, num_perm)
    lsh = rensa.RMinHashLSH(threshold, num_perm, bands)
    for k, (i, s, m) in enumerate(zip(todo, sets, hashes)):
        best, best_j = 0.0, -1
        for c in lsh.query(m):  # earlier kept texts that share a band with this one
            other = sets[c]
            sim = len(s & other) / len(s | other)
            if sim > best or (sim == best and todo[c] < best_j):
                best, best_j = sim, todo[c]
        if best_j >= 0 and best >= threshold:
            out[i] = (Reason.NEAR_DUPLICATE.value, best_j, best)
        else:
            lsh.insert(k, m)
    return out


def _bands(threshold: float, num_perm: int) -> int:
    """The band count b (b·r = num_perm) whose S-curve midpoint (1/b)^(1/r) is closest
    below ``threshold``, so that pairs at the threshold are found with high probability.

    >>> _bands(0.8, 128), _bands(0.5, 128)
    (16, 32)
    """
    options = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    below = [b for b in options if (1 / b) ** (b / num_perm) <= threshold]
    return min(below, key=lambda b: threshold - (1 / b) ** (b / num_perm)) if below else num_perm


def dedup_prompts(
    prompts: pa.Table,
    candidates: pa.Table | None = None,
    votes: pa.Table | None = None,
    *,
    threshold: float = 0.7,
    ngram: int = 3,
    num_perm: int = 128,
    near: bool = True,
    min_words: int = 12,
) -> StageResult:
    """The dedup stage (module docstring): PROMPTS (+ CANDIDATES, VOTES of a pairs input)
    without the prompts that repeat an earlier one, and without their pairs."""
    pids = prompts.column("prompt_id").to_pylist()
    psids = prompts.column("source_id").to_pylist()
    texts = conversation.contents_column(prompts.column("prompt"))
    dups = find_duplicates(
        texts, threshold=threshold, ngram=ngram, num_perm=num_perm, near=near, min_words=min_words
    )
    dropped_pids = {pids[i]: (reason, j, sim) for i, (reason, j, sim) in dups.items()}
    dropped: dict[str, tuple[str, str]] = {}
    for pid, (reason, j, sim) in dropped_pids.items():
        what = (
            "same text after normalisation as"
            if reason == Reason.DUPLICATE_PROMPT
            else f"word {ngram}-gram Jaccard {sim:.3f} with"
        )
        dropped[pid] = (reason, f"{what} prompt_id {pids[j]} (source_id {psids[j]}), which is kept")
    n_dup = sum(r == Reason.DUPLICATE_PROMPT for r, _, _ in dropped_pids.values())
    info = {
        "prompts": len(pids),
        "duplicate_prompts": n_dup,
        "near_duplicates": len(dropped_pids) - n_dup,
        "threshold": threshold,
        "ngram": ngram,
        "examples": [
            {"prompt_id": p, "twin": pids[j], "similarity": round(s, 3), "reason": r}
            for p, (r, j, s) in list(dropped_pids.items())[:20]
        ],
    }
    return drop_prompts(STAGE, prompts, candidates, votes, dropped, info)
