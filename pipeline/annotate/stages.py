"""The bodies of the flow's model stages — generate, judge, rubric, reward — over tables
and the run config, format → call → parse. The model calls go through ``call`` (the
flow's, which adds the request cache, the budget, progress bars and usage records):
``call(stage, groups, batch_size)`` answers each group ``(name, model spec, requests)``
and returns (the requests in group order, their completions). A unit test passes a
function over a fake engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline import generation
from pipeline.annotate import judging
from pipeline.annotate.planning import first_signal, plan_judging
from pipeline.stage import Reason, StageCounts, StageResult
from pipeline.store.stages import StageOutput
from schemas.config import RunConfig
from schemas.errors import EngineError

log = logging.getLogger("prefcurate")

CallModels = Callable[[str, list[tuple[str, Any, list[Any]]], int], tuple[list[Any], list[Any]]]


def generate_stage(prompts: pa.Table, cfg: RunConfig, call: CallModels) -> StageResult:
    """Prompts → candidates from every policy; a multi-turn prompt's candidates answer
    each follow-up in their own context, one turn at a time."""
    gcfg = cfg.generate
    policies = list(gcfg.policies)

    def groups(reqs: list[Any]) -> list[tuple[str, Any, list[Any]]]:
        return [(p.name, p.model, [r for r in reqs if r.policy == p.name]) for p in policies]

    reqs = generation.build_generation_requests(prompts, policies)
    ordered, comps = call("generate", groups(reqs), gcfg.batch_size)
    res = generation.make_candidates(ordered, comps, gcfg.on_truncated)
    while turn := generation.follow_up_requests(prompts, res.outputs["candidates"], policies):
        ordered, comps = call("generate", groups(turn), gcfg.batch_size)
        res = generation.add_turn(res, ordered, comps, gcfg.on_truncated)
    return res


def judge_stage(
    prompts: pa.Table,
    candidates: pa.Table,
    cfg: RunConfig,
    call: CallModels,
    signal: list[pa.Table],
    chosen: Any = None,
) -> StageResult:
    """The selected pairs → votes of every pairwise judge in both orders. ``signal``: the
    score tables of the first signal (``best_worst``); ``chosen``: round 2's pairs
    (``pair_selection: gpm``, stage ``judge_gpm``), else None."""
    from pipeline.annotate.judge_stats import compute_judge_stats

    jcfg = cfg.judge
    pairs_, drops, info, reqs = plan_judging(
        jcfg, prompts, candidates, first_signal(signal), chosen
    )
    log.info(
        "judge: %d pairs x %d judges x 2 orders = %d judge calls",
        len(pairs_),
        len(jcfg.judges),
        len(reqs),
    )
    ordered, comps = call(
        "judge" if chosen is None else "judge_gpm",
        [
            (j.name, j.model, [r for r in reqs if r.annotator.startswith(j.name + "|")])
            for j in jcfg.judges
        ],
        jcfg.batch_size,
    )
    res = judging.make_votes(ordered, comps, len(pairs_), drops, info)
    res.info["judge_stats"] = compute_judge_stats(res.outputs["votes"], candidates)
    return res


def rubric_stage(
    prompts: pa.Table, candidates: pa.Table, cfg: RunConfig, call: CallModels
) -> StageResult:
    """Candidates → pointwise scores of every rubric judge (within ``rubrics.budget``
    calls: the rest dropped ``over_budget``), and the Yes/No judges' pairwise votes."""
    from pipeline.annotate import rubrics
    from pipeline.annotate.judge_stats import compute_score_stats

    rcfg, judges = cfg.rubrics, cfg.rubric_judges()
    reqs, drops = rubrics.build_rubric_requests(candidates, prompts, judges)
    if rcfg.budget is not None and len(reqs) > rcfg.budget:
        drops += [
            {
                "source_id": r.source_id,
                "row_id": r.candidate_id,
                "reason": Reason.OVER_BUDGET,
                "detail": f"rubric budget {rcfg.budget} calls",
            }
            for r in reqs[rcfg.budget :]
        ]
        reqs = reqs[: rcfg.budget]
    ordered, comps = call(
        "rubric",
        [
            (j.name, j.model, [r for r in reqs if r.annotator == rubrics.rubric_annotator(j)])
            for j in judges
        ],
        rcfg.batch_size,
    )
    res = rubrics.make_scores(ordered, comps, drops)
    res.outputs["votes"] = rubrics.yesno_votes(res.outputs["scores"], candidates)
    res.info["score_stats"] = compute_score_stats(res.outputs["scores"])
    return res


def reward_stage(
    prompts: pa.Table, candidates: pa.Table, cfg: RunConfig, cache: Any, cache_dir: Any
) -> StageResult:
    """Candidates → the scores of every reward model (through the request ``cache``;
    models under ``cache_dir``), as one stage result."""
    from pipeline.annotate import rewards

    wcfg = cfg.rewards
    results = [
        rewards.score_with_reward_model(
            candidates, prompts, spec, cache=cache, chunk_size=wcfg.chunk_size, cache_dir=cache_dir
        )
        for spec in wcfg.models
    ]
    return merge_reward_results(results, [s.annotator for s in wcfg.models])


def merge_reward_results(results: list[StageResult], annotators: list[str]) -> StageResult:
    """One stage result from one per reward model: scores, rejects and counts summed, each
    model's info under its annotator."""
    from pipeline.annotate.judge_stats import compute_score_stats

    counts = StageCounts(
        rows_in=sum(r.counts.rows_in for r in results), kept=sum(r.counts.kept for r in results)
    )
    for r in results:
        for k, v in r.counts.dropped.items():
            counts.dropped[k] = counts.dropped.get(k, 0) + v
        for k, v in r.counts.quarantined.items():
            counts.quarantined[k] = counts.quarantined.get(k, 0) + v
    scores = pa.concat_tables([r.outputs["scores"] for r in results])
    counts.rows_out = scores.num_rows
    return StageResult(
        results[0].stage,
        {"scores": scores},
        counts,
        pa.concat_tables([r.dropped for r in results]),
        pa.concat_tables([r.quarantine for r in results]),
        info={
            "models": dict(zip(annotators, (r.info for r in results))),
            "score_stats": compute_score_stats(scores),
        },
    )


def gpm_round_pairs(
    cfg: RunConfig,
    seed_comparisons: pa.Table,
    candidates: pa.Table,
    embeddings: tuple[pa.Table, pa.Table],
    judged: pa.Table,
) -> Any:
    """Round 2 of ``pair_selection: gpm``: the pairs a GPM head trained on round 1's
    aggregation (``seed_comparisons``) is least sure of, not among the ``judged`` votes;
    ``embeddings``: (candidates, prompts)."""
    from pipeline.gpm.annotate import select_uncertain_pairs

    jcfg = cfg.judge
    return select_uncertain_pairs(
        seed_comparisons,
        candidates,
        *embeddings,
        cfg.gpm,
        jcfg.max_pairs_per_prompt - jcfg.seed_pairs_per_prompt,
        judged=judged,
    )


def check_outage(out: StageOutput, allow_partial: bool, partial: dict[str, int]) -> None:
    """After a model stage: failed calls are recorded in ``partial``; when every row of
    the stage failed the run stops (unless ``allow_partial``), naming the first error."""
    failed = out.counts.get("quarantined", {}).get(str(Reason.REQUEST_FAILED), 0)
    if not failed:
        return
    partial[out.stage] = failed
    q = out.read("quarantine")
    reasons = zip(q.column("detail").to_pylist(), q.column("reason").to_pylist())
    first = next((d for d, r in reasons if r == str(Reason.REQUEST_FAILED)), "")
    log.warning(
        "%s: %d rows have failed model calls (quarantined; the next run makes "
        "exactly those calls again): %s",
        out.stage,
        failed,
        first,
    )
    if out.counts.get("kept", 0) == 0 and not allow_partial:
        raise EngineError(
            f"{out.stage}: every call failed ({failed} rows quarantined), e.g. "
            f"{first}; nothing published. Rerun when the model server is back "
            f"(only the failed calls are made again), or pass --allow-partial "
            f"to publish without them"
        )
