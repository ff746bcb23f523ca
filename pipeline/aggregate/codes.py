"""Integer codes for string keys, in first-seen order: the grouping behind the core stages.

``factorize(df, cols)`` gives every row the code of its key (the tuple of ``cols``) —
0, 1, 2, … in the order keys first appear — and the first row of every code. Grouping
10M votes by four string columns with polars took 1.4 s and ~1 GB; hashing each column
(polars), mixing the hashes into one 64-bit key (numpy) and factorizing that
(``pandas.factorize``, a hash table, first-seen order) takes a fraction of it, and the
codes then serve every later step (``np.bincount`` sums, the EM's item index, position
consistency) without grouping strings again.

Exactness: a second, independent 64-bit mix of the same columns must be constant within
every code; if it is not (two keys collided in the first mix, odds ~n²/2⁶⁵), the codes
are recomputed exactly by a polars group-by on the strings. A collision of both mixes at
once would go unseen (odds ~2⁻¹²⁸ per pair of keys).

>>> df = pl.DataFrame({"s": ["x", "y", "x", "z", "y"], "t": ["1", "1", "1", "2", "2"]})
>>> codes, first = factorize(df, ["s", "t"])
>>> codes.tolist(), first.tolist()
([0, 1, 0, 2, 3], [0, 1, 3, 4])
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def _mix(df: pl.DataFrame, cols: list[str], seed: int) -> np.ndarray:
    """One 64-bit hash per row of the tuple ``cols``: polars column hashes, mixed in place
    with wrapping u64 arithmetic (xor, multiply, xor-shift) so that column order matters.
    (The same mix as polars expressions measured 10× slower.)"""
    x = np.full(df.height, (seed * _GOLDEN + 1) & _MASK, dtype=np.uint64)
    mult = np.uint64((0xBF58476D1CE4E5B9 + 2 * seed) & _MASK)
    shift = np.uint64(31)
    tmp = np.empty_like(x)
    with np.errstate(over="ignore"):
        for i, c in enumerate(cols):
            x ^= df[c].hash(seed=4 * seed + i).to_numpy()
            x *= mult
            np.right_shift(x, shift, out=tmp)
            x ^= tmp
    return x


def first_rows(codes: np.ndarray, n_codes: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The first row index of every code in 0 … n_codes − 1 (among the rows where ``mask``
    holds, if given); −1 for a code without such a row."""
    idx = np.arange(codes.size, dtype=np.int64) if mask is None else np.flatnonzero(mask)
    first = np.full(n_codes, -1, dtype=np.int64)
    first[codes[idx][::-1]] = idx[::-1]
    return first


def factorize(df: pl.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(codes per row as int64, first row of each code); codes in first-seen order."""
    if df.height == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes, uniques = pd.factorize(_mix(df, cols, 0))
    codes = codes.astype(np.int64, copy=False)
    first = first_rows(codes, len(uniques))
    check = _mix(df, cols, 1)
    if np.array_equal(check, check[first[codes]]):
        return codes, first
    return _factorize_exact(df, cols)


def _factorize_exact(df: pl.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The same result by a polars group-by on the columns themselves (slow, exact)."""
    g = (
        df.select(cols)
        .with_row_index("_r")
        .group_by(cols, maintain_order=True)
        .agg(pl.col("_r"))
        .select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_c"), "_r")
        .explode("_r")
    )
    codes = np.empty(df.height, dtype=np.int64)
    codes[g["_r"].to_numpy()] = g["_c"].to_numpy()
    return codes, first_rows(codes, int(codes.max()) + 1)
