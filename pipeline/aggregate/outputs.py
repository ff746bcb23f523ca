"""The aggregate stage's outputs from its arrays (:mod:`pipeline.aggregate.aggregation`):
the comparisons, the candidates' win-rate scores, the null-verdict drops and the counts
per annotator and of the gold anchors."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.aggregate.codes import factorize
from pipeline.aggregate.votes import KEY, VoteArrays, null_negative
from pipeline.stage import Reason
from schemas.tables import SCORES, conform


def comparisons_frame(
    df: pl.DataFrame,
    first: np.ndarray,
    n_votes: np.ndarray,
    n_a: np.ndarray,
    n_b: np.ndarray,
    n_tie: np.ndarray,
    n_null: np.ndarray,
    p_a: np.ndarray,
    label_row: np.ndarray,
    p_judges: np.ndarray,
) -> pl.DataFrame:
    """One row per comparison (its first vote's key), with its counts and posteriors."""
    return (
        df.select(KEY)
        .gather(first)
        .with_columns(
            n_votes=pl.Series(n_votes.astype(np.int32)),
            n_a=pl.Series(n_a),
            n_b=pl.Series(n_b),
            n_tie=pl.Series(n_tie),
            n_null=pl.Series(n_null.astype(np.int32)),
            p_a=pl.Series(p_a).fill_nan(None),
            label=df["verdict"].gather(null_negative(label_row)),
            p_a_judges=pl.Series(p_judges).fill_nan(None),
        )
    )


def null_drops(df: pl.DataFrame, v: VoteArrays) -> list[dict[str, Any]]:
    """A ``null_verdict`` drop row per vote without a parsed verdict."""
    null = df.select("source_id", "candidate_a", "candidate_b", "annotator")
    return [
        {
            "source_id": s,
            "row_id": f"{a}|{b}|{w}",
            "reason": Reason.NULL_VERDICT,
            "detail": "judge output did not parse",
        }
        for s, a, b, w in null.gather(np.flatnonzero(~v.valid)).iter_rows()
    ]


def winrate_scores(comp: pl.DataFrame, p_a: np.ndarray) -> pa.Table:
    """Per candidate: mean of P(it wins) over its comparisons with a p_a (annotator
    ``aggregate``; null for a candidate without one), in first-seen order."""
    cand = pl.concat([comp.select(c="candidate_a"), comp.select(c="candidate_b")])
    w = np.concatenate([p_a, 1.0 - p_a])
    code, first = factorize(cand, ["c"])
    ok = np.isfinite(w)
    total = np.bincount(code[ok], weights=w[ok], minlength=first.size)
    n = np.bincount(code[ok], minlength=first.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    sc = cand.gather(first).select(
        candidate_id="c",
        score=pl.Series(score).fill_nan(None),
        annotator=pl.lit("aggregate"),
        aspect=pl.lit("winrate"),
        raw_output=pl.lit(None, pl.Utf8),
        parse_error=pl.lit(None, pl.Utf8),
    )
    return conform(sc.to_arrow(), SCORES, "scores")


def annotator_counts(acode: np.ndarray, names: list[str], v: VoteArrays) -> dict[str, Any]:
    """Per annotator: its votes and its null verdicts."""
    n_by = np.bincount(acode, minlength=len(names))
    null_by = np.bincount(acode[~v.valid], minlength=len(names))
    return {a: {"votes": int(n_by[i]), "null": int(null_by[i])} for i, a in enumerate(names)}


def gold_info(gold: np.ndarray | None, prefix: str, names: list[str]) -> dict[str, Any]:
    """The gold anchors: annotators, comparisons anchored, on which side."""
    g = gold[:, 0] if gold is not None else np.zeros(0)
    return {
        "prefix": prefix,
        "annotators": sum(a.startswith(prefix) for a in names),
        "comparisons": int(np.isfinite(g).sum()),
        "a": int((g == 1.0).sum()),
        "b": int((g == 0.0).sum()),
    }
