"""Which pairs the judges see and what they are asked (stage logic of the judge stage):
the cheap first signal from pointwise scores, the pair selection with its cap and call
budget, and the judge requests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.annotate import judging
from pipeline.stage import Reason


def first_signal(scores: list[pa.Table]) -> dict[str, float] | None:
    """Mean pointwise score per candidate over SCORES tables (rubric judges, reward
    models), each (annotator, aspect) z-scored first; None without scores."""
    if not scores:
        return None
    import polars as pl

    frames = [
        pl.from_arrow(t).select("candidate_id", "annotator", "aspect", "score") for t in scores
    ]
    df = pl.concat(frames).drop_nulls("score")
    if not df.height:
        return None
    # z-score each (annotator, aspect) so that scales (1-5 rubrics, RM logits) mix fairly
    df = df.with_columns(
        z=(
            (pl.col("score") - pl.col("score").mean().over("annotator", "aspect"))
            / pl.col("score").std().over("annotator", "aspect")
        )
        .fill_nan(0.0)
        .fill_null(0.0)
    )
    agg = df.group_by("candidate_id").agg(pl.col("z").mean())
    return dict(zip(agg["candidate_id"].to_list(), agg["z"].to_list()))


GPM_ROUND = "gpm_round"  # judge round 1 of pair_selection gpm: left for round 2 to choose


def plan_judging(
    jcfg: Any,
    prompts: Any,
    candidates: Any,
    signal: dict[str, float] | None = None,
    chosen: tuple[list, list, dict] | None = None,
) -> tuple[list, list, dict, list]:
    """Pairs to judge (first signal, cap and call budget applied) and their judge requests.

    ``chosen``: the (pairs, drops, info) of GPM-guided round 2, instead of selecting here.
    With ``pair_selection: gpm`` (round 1) each prompt's first ``seed_pairs_per_prompt``
    pairs are judged and the rest are left for round 2 (reason ``gpm_round``).
    """
    if chosen is not None:
        pairs_, drops, info = chosen
    elif jcfg.pair_selection == "gpm":
        pairs_, drops, info = judging.select_pairs(candidates, jcfg.seed_pairs_per_prompt)
        for d in drops:
            d.update(
                reason=GPM_ROUND,
                detail="left for round 2: the GPM head trained on "
                "round 1 chooses which pairs the judges see",
            )
    else:
        pairs_, drops, info = judging.select_pairs(
            candidates,
            jcfg.max_pairs_per_prompt,
            signal if jcfg.pair_selection == "best_worst" else None,
        )
    calls_per_pair = 2 * len(jcfg.judges)
    if jcfg.budget is not None and len(pairs_) * calls_per_pair > jcfg.budget:
        keep = jcfg.budget // calls_per_pair
        for pid, sid, a, b in pairs_[keep:]:
            drops.append(
                {
                    "source_id": sid,
                    "row_id": f"{a}|{b}",
                    "reason": Reason.OVER_BUDGET,
                    "detail": f"judge budget {jcfg.budget} calls",
                }
            )
        pairs_ = pairs_[:keep]
    reqs = judging.build_judge_requests(pairs_, candidates, prompts, list(jcfg.judges))
    return pairs_, drops, info, reqs
