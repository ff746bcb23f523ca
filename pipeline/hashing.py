"""Stable content hashes used for ids, request keys and cache keys.

>>> stable_hash("a", 1) == stable_hash("a", 1)
True
>>> len(prompt_id([{"role": "user", "content": "hi"}]))
16
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_ENCODE_STR = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _canonical(parts: tuple) -> str:
    """The canonical JSON of ``parts``: ``json.dumps(parts, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False, default=str)``, built directly when every
    part is a string, an int or None (ids and request keys: 3× faster than constructing
    an encoder per call); any other part goes through json.dumps.

    >>> _canonical(("a b", 3, None, "é")), _canonical((1.5,))
    ('["a b",3,null,"é"]', '[1.5]')
    """
    out = []
    for x in parts:
        t = type(x)
        if t is str:
            out.append(_ENCODE_STR(x))
        elif t is int:
            out.append(int.__repr__(x))
        elif x is None:
            out.append("null")
        else:
            return json.dumps(
                parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
            )
    return "[" + ",".join(out) + "]"


def stable_hash(*parts: Any, length: int = 16) -> str:
    """SHA-256 over the canonical JSON of ``parts`` (sorted keys), hex, truncated."""
    text = _canonical(parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def stable_hash_rows(*columns: Any, length: int = 16, as_series: bool = False) -> Any:
    """:func:`stable_hash` of each row of equal-length string columns (polars Series or
    sequences): the same ids, ~4× faster on 1M rows; a list, or with ``as_series`` a polars
    String Series (no Python strings: 0.1 s less on 1M rows). The canonical JSON of rows whose
    strings need no escaping is built by concatenation (vectorised); the rest (quotes,
    backslashes, control characters, nulls) go through :func:`stable_hash` itself.

    >>> want = [stable_hash("s", "a"), stable_hash('q"x', "b")]
    >>> stable_hash_rows(["s", 'q"x'], ["a", "b"]) == want
    True
    """
    import polars as pl

    cols = [c if isinstance(c, pl.Series) else pl.Series(list(c), dtype=pl.Utf8) for c in columns]
    df = pl.DataFrame({f"c{i}": c.cast(pl.Utf8) for i, c in enumerate(cols)})
    names = df.columns
    plain = pl.all_horizontal(
        [pl.col(c).is_not_null() & ~pl.col(c).str.contains(r'["\\\x00-\x1f]') for c in names]
    )
    text = pl.concat_str(
        [pl.lit('["'), pl.concat_str([pl.col(c) for c in names], separator='","'), pl.lit('"]')]
    )
    out = hash_canonical(
        df, text, plain, lambda row: stable_hash(*row.values(), length=length), length
    )
    return out if as_series else out.to_list()


def hash_canonical(df: Any, text: Any, ok: Any, fallback: Any, length: int = 16) -> Any:
    """:func:`stable_hash` by columns: SHA-256 (truncated hex) of the polars expression
    ``text`` over ``df``, which must be the canonical JSON of the parts where ``ok`` is
    true; ``fallback(row)`` (the row as a dict) gives the id of the others (strings that
    JSON escapes). A polars String Series."""
    import polars as pl
    import polars_hash as plh  # the same SHA-256 in Rust: 1M ids in 0.2 s instead of 1 s

    tmp = df.select(ok=ok, text=text)
    hexd = tmp.select(plh.col("text").chash.sha2_256().str.slice(0, length))["text"]
    out = pl.select(pl.when(tmp["ok"]).then(hexd)).to_series()
    if not tmp["ok"].all():
        vals = out.to_list()
        for i in (~tmp["ok"]).arg_true().to_list():
            vals[i] = fallback(df.row(i, named=True))
        out = pl.Series(vals, dtype=pl.String)
    return out


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable id of a conversation: hash of its (role, content) messages."""
    return stable_hash([[m["role"], m["content"]] for m in messages])


def candidate_id(prompt_id_: str, policy: str, sample_index: int, text: str | None) -> str:
    """Stable id of a candidate response."""
    return stable_hash(prompt_id_, policy, sample_index, text)


def pair_id(prompt_id_: str, chosen_id: str, rejected_id: str) -> str:
    return stable_hash(prompt_id_, chosen_id, rejected_id)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (full hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tree_hash(path: str | Path) -> str:
    """Hash of a file, or of every file under a directory (relative names + contents)."""
    p = Path(path)
    if p.is_file():
        return file_hash(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()
