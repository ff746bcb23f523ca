"""Disagreement margins (seed 001, DESIGN.md §5): comparisons → oriented pairs.

Input: COMPARISONS (+ SCORES for ``score_chosen``/``score_rejected``). Output: PAIRS with
``decision = keep`` (denoise decides later). Row unit: one comparison; all are kept.

Orientation: the dataset's label when there is one, else the majority (``p_a ≥ ½`` → a).
With S valid votes, p̂ = (n_chosen + ½·n_tie + a) / (S + 2a) (Jeffreys, a = ``prior``),
disagreement d = 1 − |2p̂ − 1|, margin m = λ·clip(logit p̂, 0, cap).
``label_status``: agree (p̂ ≥ ½ + band), contradicted (p̂ ≤ ½ − band), contested
(between), unknown (no valid vote). ``weight`` is p̂ here: the probability the label is
right under this estimate.

>>> compute_p_hat(3, 0, 0, 0.5)
0.875
>>> round(disagreement(0.875), 3), round(margin_from_p(0.875, 1.0, 4.0), 3)
(0.25, 1.946)
>>> margin_from_p(0.3, 1.0, 4.0)
0.0
"""

from __future__ import annotations

import math

import pyarrow as pa

from pipeline.hashing import stable_hash
from pipeline.stage import StageCounts, StageResult
from schemas.config import MarginConfig
from schemas.tables import PAIRS, from_rows

STAGE = "margins"
STAGE_VERSION = 1


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


def label_status(p: float | None, band: float) -> str:
    if p is None:
        return "unknown"
    if p >= 0.5 + band and p > 0.5:
        return "agree"
    if p <= 0.5 - band and p < 0.5:
        return "contradicted"
    return "contested"


def oriented_row(c: dict, chosen_is_a: bool, cfg: MarginConfig,
                 score: dict[str, float]) -> dict:
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
        "prompt_id": c["prompt_id"], "source_id": c["source_id"],
        "chosen_id": chosen, "rejected_id": rejected,
        "p_hat": p, "disagreement": None if p is None else disagreement(p),
        "n_votes": int(c["n_votes"]),
        "margin": None if p is None else margin_from_p(p, cfg.lam, cfg.cap),
        "weight": p, "label_status": label_status(p, cfg.contested_band),
        "similarity": None, "flags": flags, "decision": "keep", "reason": None,
        "score_chosen": score.get(chosen), "score_rejected": score.get(rejected),
        "curriculum_stage": None, "split": None,
    }


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


def compute_margins(comparisons: pa.Table, scores: pa.Table, cfg: MarginConfig) -> StageResult:
    """Orient every comparison and compute p̂, disagreement, margin, label status."""
    score = {r["candidate_id"]: r["score"] for r in scores.to_pylist()
             if r["score"] is not None}
    rows = []
    for c in comparisons.to_pylist():
        if c["label"] in ("a", "b"):
            chosen_is_a = c["label"] == "a"
        else:
            chosen_is_a = c["p_a"] is None or c["p_a"] >= 0.5
        rows.append(oriented_row(c, chosen_is_a, cfg, score))
    pairs = from_rows(rows, PAIRS, "pairs")
    counts = StageCounts(rows_in=comparisons.num_rows, kept=len(rows))
    return StageResult(STAGE, {"pairs": pairs}, counts, info={"lam": cfg.lam, "cap": cfg.cap,
                                                              "prior": cfg.prior})
