"""The votes as aggregation reads them: the polars frame of the columns it needs, integer
codes per annotator and per verdict, the soft-vote weights, the gold classes, and an
annotator's judge (its name without the presentation order)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pyarrow as pa

from schemas.errors import SchemaError
from schemas.tables import VOTES, check_table

KEY = ["source_id", "prompt_id", "candidate_a", "candidate_b"]
NEEDED = KEY + ["annotator", "order", "verdict", "prob_a"]


def votes_frame(votes: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """The columns aggregation reads, as polars (an Arrow table is checked first)."""
    if isinstance(votes, pl.DataFrame):
        missing = [c for c in NEEDED if c not in votes.columns]
        if missing:
            raise SchemaError(
                f"table 'votes': missing column '{missing[0]}' (expected columns {VOTES.names})",
                table="votes",
                column=missing[0],
            )
        return votes.select(NEEDED)
    check_table(votes, votes.schema, "votes")
    if not votes.num_rows:
        return pl.DataFrame(schema={**{c: pl.Utf8 for c in NEEDED}, "prob_a": pl.Float64})
    # rechunk=False: no copy of the string columns (measured 2-10× faster on 1M votes)
    return pl.from_arrow(votes.select(NEEDED), rechunk=False)


def annotator_codes(df: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per vote the code of its annotator, and the names in first-seen order (few distinct
    values: an Enum cast is exact and cheaper than hashing)."""
    if not df.height:
        return np.zeros(0, dtype=np.int64), []
    names = df["annotator"].unique(maintain_order=True).to_list()
    return df["annotator"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64), names


def gold_classes(
    v: "VoteArrays",
    code: np.ndarray,
    k: int,
    acode: np.ndarray,
    names: list[str],
    prefix: str | None,
) -> np.ndarray | None:
    """(k × 2) known classes from the ``prefix`` annotators' hard a/b votes: [1, 0] where
    they say a by a strict majority, [0, 1] for b, NaN elsewhere (ties, none); None
    without any such comparison."""
    if prefix is None:
        return None
    is_gold = np.isin(acode, [i for i, a in enumerate(names) if a.startswith(prefix)])
    hard = is_gold & v.valid & ~v.soft
    n_a = np.bincount(code[hard & v.is_a], minlength=k)
    n_b = np.bincount(code[hard & v.is_b], minlength=k)
    if not (n_a != n_b).any():
        return None
    gold = np.full((k, 2), np.nan)
    gold[n_a > n_b] = [1.0, 0.0]
    gold[n_b > n_a] = [0.0, 1.0]
    return gold


ORDER_SUFFIX = r"\|(ab|ba)$"  # an annotator's presentation order (polars or re)


def judge_name(annotator: str) -> str:
    """The judge of an annotator: without its ``|ab``/``|ba`` order (both orders of one
    judge are not independent annotators)."""
    return re.sub(ORDER_SUFFIX, "", annotator)


class VoteArrays:
    """Per vote: validity, verdict indicators and the (soft) weights on a / b / tie."""

    def __init__(self, df: pl.DataFrame, use_logprobs: bool) -> None:
        verdict = df["verdict"]
        vc = verdict.replace_strict(
            {"a": 0, "b": 1, "tie": 2}, default=3, return_dtype=pl.Int8
        ).to_numpy(writable=True)
        vc[verdict.is_null().to_numpy()] = -1
        self.vcode = vc  # 0 a, 1 b, 2 tie, 3 another string, -1 null
        self.valid = vc >= 0
        self.is_a, self.is_b, self.is_t = vc == 0, vc == 1, vc == 2
        self.soft = np.zeros(df.height, dtype=bool)
        self.prob = np.zeros(0)  # P(a) of the soft votes, in row order (soft rows only)
        if use_logprobs and df["prob_a"].null_count() < df.height:
            prob = df["prob_a"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            self.soft = self.valid & np.isfinite(prob)
            self.prob = np.clip(prob[self.soft], 0.0, 1.0)
        self.bad = vc == 3  # a valid verdict that is not a, b or tie
        self.verdict = verdict

    def sums(self, code: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per code: the (soft) vote mass on a, on b and on tie. A soft vote puts prob_a on
        a and 1 − prob_a on b; one array at a time (10M votes: 80 MB each)."""
        hard = ~self.soft
        out = []
        for mask, soft_w in (
            (self.is_a, self.prob),
            (self.is_b, 1.0 - self.prob),
            (self.is_t, None),
        ):
            n = np.bincount(code[mask & hard], minlength=k).astype(np.float64)
            if soft_w is not None and soft_w.size:
                n += np.bincount(code[self.soft], weights=soft_w, minlength=k)
            out.append(n)
        return out[0], out[1], out[2]


def null_negative(idx: np.ndarray) -> pl.Series:
    """Row indices with −1 as null (gathering a null index gives null)."""
    s = pl.Series(idx)
    return pl.select(pl.when(s >= 0).then(s)).to_series()
