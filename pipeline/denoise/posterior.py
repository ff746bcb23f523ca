"""The probabilities denoise decides on: the judges' share without the dataset's own
label vote, the model probability p_i of the label being right (judges, reward scores, or
an external posterior), and the aggregation's posterior aligned with the pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.denoise.weights import sigmoid
from schemas.config import DenoiseConfig
from schemas.errors import PrefcurateError


def _label_sources(label_source: str | Sequence[str | None] | None, n: int) -> pl.Series | None:
    if label_source is None:
        return None
    if isinstance(label_source, str):
        return pl.repeat(label_source, n, dtype=pl.Utf8, eager=True)
    out = pl.Series(list(label_source), dtype=pl.Utf8)
    if len(out) != n:
        raise PrefcurateError(
            f"denoise: label_source has {len(out)} entries for {n} pairs; "
            f"pass one name per pair (None where the votes oriented it) "
            f"or one name for all"
        )
    return out


def judge_probability(
    p_hat: np.ndarray, n_votes: np.ndarray, has_label: np.ndarray, prior: float
) -> tuple[np.ndarray, np.ndarray]:
    """p̂ without the label's own vote where ``has_label``; and the remaining vote count.

    p̂ = (n_c + ½ n_t + a)/(S + 2a) counts the label as one vote for chosen; without it
    p' = (p̂ (S + 2a) − 1)/(S − 1 + 2a) on S − 1 votes (½ when no other vote is left).

    >>> p, s = judge_probability(np.array([0.875, 0.75]), np.array([3, 1]),
    ...                          np.array([True, True]), 0.5)
    >>> [round(float(x), 4) for x in p], s.tolist()
    ([0.8333, 0.5], [2, 0])
    """
    p = np.where(np.isfinite(p_hat), p_hat, 0.5)
    s = n_votes.astype(np.float64)
    s_wo = np.where(has_label, s - 1.0, s)
    num = np.where(has_label, p * (s + 2 * prior) - 1.0, p * (s + 2 * prior))
    out = np.where(s_wo > 0, num / np.maximum(s_wo + 2 * prior, 1e-12), 0.5)
    return np.clip(out, 0.0, 1.0), np.maximum(s_wo, 0.0).astype(np.int64)


def p_model_values(p_model: Any, n: int) -> np.ndarray:
    """``p_model`` as n float64 values, or a clear error when it does not have one per pair."""
    pm = np.asarray(p_model, dtype=np.float64).reshape(-1)
    if pm.size != n:
        raise PrefcurateError(
            f"denoise: p_model has {pm.size} values for {n} pairs; "
            f"pass one probability per input pair (NaN: use the votes)"
        )
    return pm


def _model_probability(
    p_judge: np.ndarray,
    s_c: np.ndarray,
    s_r: np.ndarray,
    p_model: np.ndarray | None,
    cfg: DenoiseConfig,
    n: int,
) -> tuple[np.ndarray, str]:
    """p_i: the judges' p̂, σ(s_c − s_r) (``weight_source = scores``), or ``p_model``."""
    p_i, source = p_judge.copy(), "p_hat"
    if cfg.weight_source == "scores":
        both = np.isfinite(s_c) & np.isfinite(s_r)
        p_i = np.where(both, sigmoid(s_c - s_r), p_i)
        source = f"scores ({int(both.sum())} pairs; p_hat for the rest)"
    if p_model is not None:
        pm = p_model_values(p_model, n)
        ok = np.isfinite(pm)
        p_i = np.where(ok, np.clip(pm, 0.0, 1.0), p_i)
        source = f"p_model ({int(ok.sum())} pairs; {source} for the rest)"
    return p_i, source


def judges_posterior(
    pairs: pa.Table, comparisons: pa.Table, column: str = "p_a_judges"
) -> np.ndarray:
    """P(chosen ≻ rejected) per pair from the comparisons' ``column`` (P(a ≻ b)), oriented
    by the pair (NaN where the comparison or its value is missing): the ``p_model`` that
    aggregation's judges-only EM gives denoise.

    >>> c = pa.table({"source_id": ["s", "s"], "candidate_a": ["x", "x"],
    ...               "candidate_b": ["y", "z"], "p_a_judges": [0.8, None]})
    >>> p = pa.table({"source_id": ["s", "s", "t"], "chosen_id": ["y", "x", "x"],
    ...               "rejected_id": ["x", "z", "y"]})
    >>> judges_posterior(p, c).round(3).tolist()
    [0.2, nan, nan]
    """
    n = pairs.num_rows
    if not n or not comparisons.num_rows or column not in comparisons.schema.names:
        return np.full(n, np.nan)
    c = (
        pl.from_arrow(comparisons.select(["source_id", "candidate_a", "candidate_b", column]))
        .rename({column: "_p"})
        .unique(["source_id", "candidate_a", "candidate_b"], keep="first")
    )
    df = pl.from_arrow(pairs.select(["source_id", "chosen_id", "rejected_id"]))
    fwd = df.join(
        c,
        left_on=["source_id", "chosen_id", "rejected_id"],
        right_on=["source_id", "candidate_a", "candidate_b"],
        how="left",
        maintain_order="left",
    )["_p"]
    rev = df.join(
        c,
        left_on=["source_id", "rejected_id", "chosen_id"],
        right_on=["source_id", "candidate_a", "candidate_b"],
        how="left",
        maintain_order="left",
    )["_p"]
    out = fwd.cast(pl.Float64).fill_null(float("nan")).to_numpy().copy()
    r = rev.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    use_rev = np.isnan(out) & np.isfinite(r)
    out[use_rev] = 1.0 - r[use_rev]
    return out
