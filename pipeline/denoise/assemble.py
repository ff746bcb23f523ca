"""The denoise stage's output from its decisions: kept pairs (flipped ones re-oriented,
with new ids, weights and margins), the dropped rows with their reasons, and the counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.hashing import stable_hash_rows
from pipeline.margins import margin_array
from pipeline.stage import StageCounts, StageResult, dropped_table
from schemas.config import DenoiseConfig, MarginConfig
from schemas.tables import PAIRS, conform

STAGE = "denoise"
FLIPPED = "flipped"  # flag on every flipped pair
KEEP, FLIP, DROP = 0, 1, 2  # the decision codes


def assemble(
    pairs: pa.Table,
    df: pl.DataFrame,
    decision: np.ndarray,
    reason: np.ndarray,
    weight: np.ndarray | None,
    cfg: DenoiseConfig,
    mcfg: MarginConfig,
    info: dict[str, Any],
) -> StageResult:
    """The stage result of ``decision`` (KEEP, FLIP, DROP per pair of ``df``, the pairs
    as polars) with its ``reason`` and, when the stage weighs, ``weight``."""
    n = pairs.num_rows
    keep_m, flip_m, drop_m = decision == KEEP, decision == FLIP, decision == DROP
    drop_idx = np.flatnonzero(drop_m)
    why = reason[drop_idx]
    drops = _drop_rows(df, drop_idx, why, weight)
    flip_idx = np.flatnonzero(flip_m)
    flipped = df.select("source_id", "rejected_id", "chosen_id").gather(flip_idx)
    new_ids = (
        pl.Series("_new", [None] * n, dtype=pl.Utf8).scatter(
            flip_idx, stable_hash_rows(*flipped.get_columns(), as_series=True)
        )
        if flip_idx.size
        else pl.repeat(None, n, dtype=pl.Utf8, eager=True).alias("_new")
    )
    out = df.with_columns(
        _dec=pl.Series(decision.astype(np.int8)),
        _why=pl.Series(reason.tolist(), dtype=pl.Utf8),
        _new=new_ids,
    )
    if weight is not None:
        out = out.with_columns(_w=pl.Series(weight))
    out = out.filter(pl.col("_dec") != DROP)
    out = out.with_columns(_flipped_columns(weight is not None))
    if flip_idx.size:  # margins of flipped pairs, with the formula of margins.py
        fl = out["_dec"].to_numpy() == FLIP
        m = out["margin"].cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
        m[fl] = margin_array(out["p_hat"].to_numpy()[fl], mcfg.lam, mcfg.cap)
        out = out.with_columns(margin=pl.Series(m))
    kept_table = (
        conform(
            out.drop(["_dec", "_why", "_new"] + (["_w"] if weight is not None else [])).to_arrow(),
            PAIRS,
            "pairs",
        )
        if out.height
        else PAIRS.empty_table()
    )
    counts = StageCounts(
        rows_in=n, kept=int(keep_m.sum() + flip_m.sum()), dropped=dict(Counter(str(r) for r in why))
    )
    return StageResult(
        STAGE,
        {"pairs": kept_table},
        counts,
        dropped_table(STAGE, drops),
        info={"flipped": int(flip_m.sum()), **info},
    )


def _drop_rows(
    df: pl.DataFrame, drop_idx: np.ndarray, why: np.ndarray, weight: np.ndarray | None
) -> list[dict[str, Any]]:
    """The dropped pairs' reject rows: reason, and the posterior, votes, status and weight
    that led to it."""
    gone = df.select("source_id", "pair_id", "p_hat", "n_votes", "label_status").gather(drop_idx)
    w_drop = weight[drop_idx] if weight is not None else np.full(drop_idx.size, np.nan)
    drops = []
    for (sid, pid, p, nv, st), w, r in zip(gone.iter_rows(), w_drop.tolist(), why):
        detail = f"p_hat={p} n_votes={nv} status={st}"
        if np.isfinite(w):
            detail += f" weight={w:.4f}"
        drops.append({"source_id": sid, "row_id": pid, "reason": r, "detail": detail})
    return drops


def _flipped_columns(with_weight: bool) -> list[pl.Expr]:
    """The columns a flip changes (``_dec`` FLIP): chosen and rejected (ids and scores)
    swapped, p_hat → 1 − p_hat, its disagreement, status ``contradicted``, the flag, the
    new pair id (``_new``) and the weight (``_w`` → 1 − ``_w`` when the stage weighs,
    else the new p_hat); every row gets its decision and reason (``_why``)."""
    flip = pl.col("_dec") == FLIP
    p_new = 1.0 - pl.col("p_hat")
    cols = [
        pl.when(flip).then(pl.col("rejected_id")).otherwise(pl.col("chosen_id")).alias("chosen_id"),
        pl.when(flip)
        .then(pl.col("chosen_id"))
        .otherwise(pl.col("rejected_id"))
        .alias("rejected_id"),
        pl.when(flip)
        .then(pl.col("score_rejected"))
        .otherwise(pl.col("score_chosen"))
        .alias("score_chosen"),
        pl.when(flip)
        .then(pl.col("score_chosen"))
        .otherwise(pl.col("score_rejected"))
        .alias("score_rejected"),
        pl.when(flip).then(p_new).otherwise(pl.col("p_hat")).alias("p_hat"),
        pl.when(flip)
        .then(1.0 - (2.0 * p_new - 1.0).abs())
        .otherwise(pl.col("disagreement"))
        .alias("disagreement"),
        pl.when(flip)
        .then(pl.lit("contradicted"))
        .otherwise(pl.col("label_status"))
        .alias("label_status"),
        pl.when(flip).then(pl.lit("flip")).otherwise(pl.lit("keep")).alias("decision"),
        pl.col("_why").alias("reason"),
        pl.when(flip & ~pl.col("flags").list.contains(FLIPPED))
        .then(pl.col("flags").list.concat(pl.lit([FLIPPED])))
        .otherwise(pl.col("flags"))
        .alias("flags"),
        pl.when(flip).then(pl.col("_new")).otherwise(pl.col("pair_id")).alias("pair_id"),
    ]
    if with_weight:
        cols.append(pl.when(flip).then(1.0 - pl.col("_w")).otherwise(pl.col("_w")).alias("weight"))
    else:
        cols.append(pl.when(flip).then(p_new).otherwise(pl.col("weight")).alias("weight"))
    return cols
