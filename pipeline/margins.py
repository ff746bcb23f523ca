"""Disagreement margins (seed 001, DESIGN.md §5): comparisons → oriented pairs.

Input: COMPARISONS (+ SCORES for ``score_chosen``/``score_rejected``). Output: PAIRS with
``decision = keep`` (denoise decides later). Row unit: one comparison; all are kept.

Orientation: the dataset's label when there is one, else the majority (``p_a ≥ ½`` → a).
With S valid votes, p̂ = (n_chosen + ½·n_tie + a) / (S + 2a) (Jeffreys, a = ``prior``;
``p_source``: ``posterior`` takes the aggregation's P(chosen ≻ rejected) instead, ``shrink``
the vote share shrunk towards it, (n_chosen + ½·n_tie + 2s·q) / (S + 2s)),
disagreement d = 1 − |2p̂ − 1|, margin m = λ·clip(logit p̂, 0, cap).
``label_status``: agree (p̂ ≥ ½ + band), contradicted (p̂ ≤ ½ − band), contested
(between), unknown (no valid vote). Flag ``plurality``: d ≥ ``plurality_disagreement`` and
both candidates' aggregated scores (win rates) ≥ ``plurality_min_score`` — two good
responses the users split on (a difference of taste, not noise; with only two candidates
per source the win rates mirror each other, so it fires only at an even split). ``weight``
is p̂ here: the probability the label is right under this estimate.

>>> compute_p_hat(3, 0, 0, 0.5)
0.875
>>> round(disagreement(0.875), 3), round(margin_from_p(0.875, 1.0, 4.0), 3)
(0.25, 1.946)
>>> margin_from_p(0.3, 1.0, 4.0)
0.0
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.hashing import stable_hash, stable_hash_rows
from pipeline.stage import StageCounts, StageResult
from schemas.config import MarginConfig
from schemas.tables import PAIRS, conform, from_rows

STAGE = "margins"
STAGE_VERSION = 4  # 4: pairs flagged injection_suspect (by the flow's margins task)
PLURALITY = "plurality"  # good candidates, high disagreement


def compute_p_hat(n_chosen: float, n_rejected: float, n_tie: float, prior: float) -> float | None:
    s = n_chosen + n_rejected + n_tie
    if s <= 0:
        return None
    return (n_chosen + 0.5 * n_tie + prior) / (s + 2 * prior)


def disagreement(p: float) -> float:
    return 1.0 - abs(2.0 * p - 1.0)


def margin_from_p(p: float, lam: float, cap: float) -> float:
    if p <= 0.5:
        return 0.0
    if p >= 1.0:
        return lam * cap
    return lam * min(max(math.log(p / (1.0 - p)), 0.0), cap)


def margin_array(p: np.ndarray, lam: float, cap: float) -> np.ndarray:
    """:func:`margin_from_p` of every element (NaN stays NaN).

    >>> margin_array(np.array([0.3, 0.875, 1.0]), 1.0, 4.0).round(3).tolist()
    [0.0, 1.946, 4.0]
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logit = np.log(p / (1.0 - p))
    out = lam * np.clip(logit, 0.0, cap)
    out = np.where(p <= 0.5, 0.0, out)
    return np.where(p >= 1.0, lam * cap, np.where(np.isnan(p), np.nan, out))


def label_status(p: float | None, band: float) -> str:
    if p is None:
        return "unknown"
    if p >= 0.5 + band and p > 0.5:
        return "agree"
    if p <= 0.5 - band and p < 0.5:
        return "contradicted"
    return "contested"


def oriented_row(c: dict, chosen_is_a: bool, cfg: MarginConfig, score: dict[str, float]) -> dict:
    """One PAIRS row for comparison ``c`` with the given orientation."""
    a, b = c["candidate_a"], c["candidate_b"]
    chosen, rejected = (a, b) if chosen_is_a else (b, a)
    n_ch, n_rj = (c["n_a"], c["n_b"]) if chosen_is_a else (c["n_b"], c["n_a"])
    p = compute_p_hat(n_ch, n_rj, c["n_tie"], cfg.prior)
    flags = []
    if c["n_votes"] and n_ch == n_rj:
        flags.append("tie")
    return {
        "pair_id": stable_hash(c["source_id"], chosen, rejected),
        "prompt_id": c["prompt_id"],
        "source_id": c["source_id"],
        "chosen_id": chosen,
        "rejected_id": rejected,
        "p_hat": p,
        "disagreement": None if p is None else disagreement(p),
        "n_votes": int(c["n_votes"]),
        "margin": None if p is None else margin_from_p(p, cfg.lam, cfg.cap),
        "weight": p,
        "label_status": label_status(p, cfg.contested_band),
        "similarity": None,
        "flags": flags,
        "decision": "keep",
        "reason": None,
        "score_chosen": score.get(chosen),
        "score_rejected": score.get(rejected),
        "curriculum_stage": None,
        "split": None,
    }


def add_flag(pairs: pa.Table, mask: list[bool], flag: str) -> tuple[pa.Table, int]:
    """``pairs`` with ``flag`` appended to the flags of the rows where ``mask`` holds (never
    twice); and how many rows gained it. Rows and order unchanged.

    >>> from schemas.tables import PAIRS
    >>> t = pa.table({"flags": [["tie"], None]}, schema=pa.schema([PAIRS.field("flags")]))
    >>> out, n = add_flag(t, [True, True], "tie")
    >>> out.column("flags").to_pylist(), n
    ([['tie'], ['tie']], 1)
    """
    flags = pairs.column("flags").to_pylist()
    n = 0
    for i, on in enumerate(mask):
        if on and flag not in (flags[i] or []):
            flags[i] = list(flags[i] or []) + [flag]
            n += 1
    if not n:
        return pairs, 0
    idx = pairs.schema.get_field_index("flags")
    field = pairs.schema.field(idx)
    return pairs.set_column(idx, field, pa.array(flags, type=field.type)), n


def with_similarity(pairs: pa.Table, similarity: list[float | None], tau: float) -> pa.Table:
    """Fill ``similarity`` and flag ``indistinguishable`` pairs (cosine ≥ ``tau``).

    >>> from schemas.tables import PAIRS
    >>> t = from_rows([{**oriented_row(dict(prompt_id="p", source_id="s", candidate_a="x",
    ...     candidate_b="y", n_votes=1, n_a=1.0, n_b=0.0, n_tie=0.0, n_null=0, p_a=1.0,
    ...     label=None), True, MarginConfig(), {})}], PAIRS, "pairs")
    >>> with_similarity(t, [0.97], 0.95).column("flags").to_pylist()
    [['indistinguishable']]
    """
    rows = pairs.to_pylist()
    for r, s in zip(rows, similarity, strict=True):
        r["similarity"] = s
        if s is not None and s >= tau and "indistinguishable" not in r["flags"]:
            r["flags"] = list(r["flags"]) + ["indistinguishable"]
    return from_rows(rows, PAIRS, "pairs")


def _score_of(ids: pl.Series, scores: pl.DataFrame) -> pl.Series:
    """The score of each id (null where ``scores`` has none); a join of the id column
    alone (joining the whole pairs frame gathers all its columns: 0.15 s more on 1M)."""
    on = ids.name
    right = scores.rename({"candidate_id": on})
    return ids.to_frame().join(right, on=on, how="left", maintain_order="left")["score"]


def compute_margins(comparisons: pa.Table, scores: pa.Table, cfg: MarginConfig) -> StageResult:
    """Orient every comparison and compute p̂, disagreement, margin, label status.

    Vectorised with polars (the same arithmetic as :func:`oriented_row`, which stays as the
    readable one-row reference and is tested against this).
    """
    if not comparisons.num_rows:
        return StageResult(
            STAGE,
            {"pairs": PAIRS.empty_table()},
            StageCounts(0, 0),
            info={"lam": cfg.lam, "cap": cfg.cap, "prior": cfg.prior},
        )
    c = pl.from_arrow(comparisons, rechunk=False)
    sc = (
        pl.from_arrow(scores.select(["candidate_id", "score"]))
        .filter(pl.col("score").is_not_null())
        .unique("candidate_id", keep="first")
    )
    df = _oriented(c, cfg)
    band = cfg.contested_band
    p = pl.col("p_hat")
    p_np = df["p_hat"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    df = df.with_columns(
        disagreement=1.0 - (2.0 * p - 1.0).abs(),
        margin=pl.Series(margin_array(p_np, cfg.lam, cfg.cap)).fill_nan(None),
        weight=p,
        label_status=pl.when(p.is_null())
        .then(pl.lit("unknown"))
        .when((p >= 0.5 + band) & (p > 0.5))
        .then(pl.lit("agree"))
        .when((p <= 0.5 - band) & (p < 0.5))
        .then(pl.lit("contradicted"))
        .otherwise(pl.lit("contested")),
        flags=pl.when((pl.col("n_votes") > 0) & (pl.col("_nc") == pl.col("_nr")))
        .then(pl.lit(["tie"], dtype=pl.List(pl.Utf8)))
        .otherwise(pl.lit([], dtype=pl.List(pl.Utf8))),
        similarity=pl.lit(None, pl.Float64),
        decision=pl.lit("keep"),
        reason=pl.lit(None, pl.Utf8),
        curriculum_stage=pl.lit(None, pl.Int32),
        split=pl.lit(None, pl.Utf8),
    ).with_columns(
        score_chosen=_score_of(df["chosen_id"], sc), score_rejected=_score_of(df["rejected_id"], sc)
    )
    df = df.with_columns(flags=_with_plurality(cfg))
    ids = stable_hash_rows(df["source_id"], df["chosen_id"], df["rejected_id"], as_series=True)
    df = df.with_columns(pair_id=ids)
    pairs = conform(df.select(PAIRS.names).to_arrow(), PAIRS, "pairs")
    counts = StageCounts(rows_in=comparisons.num_rows, kept=pairs.num_rows)
    n_plural = int(df["flags"].list.contains(PLURALITY).sum())
    return StageResult(
        STAGE,
        {"pairs": pairs},
        counts,
        info={"lam": cfg.lam, "cap": cfg.cap, "prior": cfg.prior, "plurality": n_plural},
    )


def _oriented(c: pl.DataFrame, cfg: MarginConfig) -> pl.DataFrame:
    """The comparisons oriented (the label's side, else the posterior's, chosen first) with
    the chosen side's counts (``_nc``, ``_nr``, ``_s``) and ``p_hat``: the share of votes
    for chosen (ties half, ``prior`` pseudo-votes each side), the posterior
    (``p_source: posterior``) or the votes shrunk towards it (``shrink``)."""
    a_first = (
        pl.when(pl.col("label").is_in(["a", "b"]))
        .then(pl.col("label") == "a")
        .otherwise(pl.col("p_a").is_null() | (pl.col("p_a") >= 0.5))
    )
    prior = cfg.prior
    df = (
        c.with_columns(_a=a_first)
        .with_columns(
            chosen_id=pl.when("_a").then("candidate_a").otherwise("candidate_b"),
            rejected_id=pl.when("_a").then("candidate_b").otherwise("candidate_a"),
            _nc=pl.when("_a").then("n_a").otherwise("n_b"),
            _nr=pl.when("_a").then("n_b").otherwise("n_a"),
            _q=pl.when("_a").then(pl.col("p_a")).otherwise(1.0 - pl.col("p_a")),
        )
        .with_columns(_s=pl.col("_nc") + pl.col("_nr") + pl.col("n_tie"))
    )
    share = (pl.col("_nc") + 0.5 * pl.col("n_tie") + prior) / (pl.col("_s") + 2 * prior)
    if cfg.p_source == "posterior":
        share = pl.col("_q").fill_null(share)
    elif cfg.p_source == "shrink":
        st = cfg.shrink_strength
        share = (
            (pl.col("_nc") + 0.5 * pl.col("n_tie") + 2 * st * pl.col("_q"))
            / (pl.col("_s") + 2 * st)
        ).fill_null(share)
    return df.with_columns(p_hat=pl.when(pl.col("_s") > 0).then(share))


def _with_plurality(cfg: MarginConfig) -> pl.Expr:
    """The flags plus ``plurality`` where both responses are good and the users split: a
    legitimate difference of taste (seed 001), not label noise."""
    good = cfg.plurality_min_score
    plural = (
        (pl.col("disagreement") >= cfg.plurality_disagreement)
        & (pl.col("score_chosen") >= good)
        & (pl.col("score_rejected") >= good)
    ).fill_null(False)
    return (
        pl.when(plural)
        .then(pl.col("flags").list.concat(pl.lit([PLURALITY], dtype=pl.List(pl.Utf8))))
        .otherwise(pl.col("flags"))
    )
