"""The tasks that bring a run its inputs and its votes: ingest, the hygiene stages
(dedup, decontaminate), generation, the annotators (verifiers, rubric judges, reward
models, pairwise judges in one or two rounds, reviewers) and the embeddings. The tasks
after them (aggregate → publish) and the flow are :mod:`flows.curate`.

Each task is thin: it reuses a finished stage if one is on disk under its key (the
versions of every pipeline module its body calls, the config it reads, its sources'
hashes), else reads its inputs, calls one stage body in ``pipeline/`` and writes the
result durably (:func:`flows.runtime.run_stage`); it returns the reference (the stage
directory), never a big table. Model calls go through the per-request cache
(:func:`flows.runtime.call_models`), so a rerun after a crash repeats no finished call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.retry import model_task
from flows.runtime import RunContext, call_models, calls_complete, run_stage
from pipeline import generation
from pipeline.annotate import judging
from pipeline.annotate import stages as model_stages
from pipeline.hashing import file_hash, stable_hash, tree_hash
from pipeline.ingest.stage import ingest_pairs, ingest_prompts
from pipeline.review import votes as review_votes
from pipeline.stage import StageResult
from pipeline.store.stages import StageOutput

log = logging.getLogger("prefcurate")

INGEST_VERSION = 1


@model_task(name="ingest", retries=1, delay=5)
def ingest_task(ctx: RunContext) -> StageOutput:
    from pipeline.ingest.verifiable import VERSION

    inp = ctx.cfg.input
    src = tree_hash(inp.path) if Path(inp.path).exists() else f"builtin:{inp.path}:v{VERSION}"
    fn = ingest_prompts if inp.kind == "prompts" else ingest_pairs
    params = inp.model_dump(mode="json")

    def compute() -> StageResult:
        return fn(inp.path, source=inp.source, limit=inp.limit)

    return run_stage(ctx, "ingest", INGEST_VERSION, params, [src], compute)


def _hygiene_inputs(ctx: RunContext, ing: StageOutput) -> list[Any]:
    """PROMPTS, and a pairs file's CANDIDATES and VOTES (None for a prompts file)."""
    pairs_input = ctx.cfg.input.kind == "pairs"
    names = ("prompts", "candidates", "votes")
    return [ing.read(n) if pairs_input or n == "prompts" else None for n in names]


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(ctx: RunContext, ing: StageOutput) -> StageOutput:
    """Prompts (and a pairs file's pairs) without duplicate and near-duplicate prompts;
    the same output names as ingest, so the stages after it read it in ingest's place."""
    from pipeline.hygiene import dedup

    d = ctx.cfg.dedup
    kw = {"threshold": d.threshold, "ngram": d.ngram, "num_perm": d.num_perm}
    kw |= {"min_words": d.min_words, "near": ctx.cfg.dedup_near_on()}

    def compute() -> StageResult:
        return dedup.dedup_prompts(*_hygiene_inputs(ctx, ing), **kw)

    return run_stage(ctx, "dedup", dedup.STAGE_VERSION, d.model_dump(mode="json"), [ing], compute)


@task(name="decontaminate", cache_policy=NO_CACHE)
def decontaminate_task(ctx: RunContext, ing: StageOutput) -> StageOutput:
    """Prompts (and a pairs file's pairs) without those that share a word n-gram with a
    benchmark item; the same output names as ingest."""
    from pipeline.hygiene import decontam

    d = ctx.cfg.decontaminate
    items, notes = decontam.resolve_benchmarks(d.benchmarks, ctx.cfg.input.path)
    bench_hash = stable_hash([[i.benchmark, i.item_id, i.text] for i in items])

    def compute() -> StageResult:
        tables = _hygiene_inputs(ctx, ing)
        res = decontam.decontaminate(
            *tables, benchmarks=items, ngram=d.ngram, skipped=notes["skipped"]
        )
        res.info["unavailable"] = notes["unavailable"]
        return res

    params = d.model_dump(mode="json")
    return run_stage(
        ctx, "decontaminate", decontam.STAGE_VERSION, params, [ing, bench_hash], compute
    )


def _caller(ctx: RunContext) -> model_stages.CallModels:
    """The run's model calls (cache, budget, progress, usage) for a model stage body."""
    return lambda stage, groups, batch: call_models(ctx, stage, groups, batch)[:2]


@model_task(name="generate")
def generate_task(ctx: RunContext, ing: StageOutput) -> StageOutput:
    params = ctx.cfg.generate.model_dump(mode="json")

    # (served from the cache when scale-out shards already answered them)
    def compute() -> StageResult:
        return model_stages.generate_stage(ing.read("prompts"), ctx.cfg, _caller(ctx))

    v = generation.STAGE_VERSION
    return run_stage(ctx, "generate", v, params, [ing], compute, complete=calls_complete)


@model_task(name="judge")
def judge_task(
    ctx: RunContext, ing: StageOutput, cands: StageOutput, signal: list[StageOutput] | None = None
) -> StageOutput:
    """Round 1 (or the only round): judge the pairs ``pair_selection`` picks; ``signal``:
    the first signal's score stages (``best_worst``)."""
    signal = signal or []

    def compute() -> StageResult:
        prompts, candidates = ing.read("prompts"), cands.read("candidates")
        scores = [t.read("scores") for t in signal]
        return model_stages.judge_stage(prompts, candidates, ctx.cfg, _caller(ctx), scores)

    params = [ctx.cfg.judge.model_dump(mode="json")]  # (a list: the key of earlier runs)
    v, sources = judging.STAGE_VERSION, [ing, cands, *signal]
    return run_stage(ctx, "judge", v, params, sources, compute, complete=calls_complete)


@model_task(name="judge_gpm")
def judge_gpm_task(
    ctx: RunContext,
    ing: StageOutput,
    cands: StageOutput,
    signal: list[StageOutput],
    seed: StageOutput,
    emb: StageOutput,
    round1: StageOutput,
) -> StageOutput:
    """Round 2 of ``pair_selection: gpm``: judge the pairs a GPM head trained on round 1's
    aggregation (``seed``) is least sure of; ``round1``'s votes are the pairs judged."""

    def compute() -> StageResult:
        candidates = cands.read("candidates")
        chosen = model_stages.gpm_round_pairs(
            ctx.cfg,
            seed.read("comparisons"),
            candidates,
            read_embeddings(emb),
            round1.read("votes"),
        )
        scores = [t.read("scores") for t in signal]
        prompts = ing.read("prompts")
        return model_stages.judge_stage(prompts, candidates, ctx.cfg, _caller(ctx), scores, chosen)

    params = [ctx.cfg.judge.model_dump(mode="json"), ctx.cfg.gpm.model_dump(mode="json")]
    sources = [ing, cands, *signal, seed, emb, round1]
    v = judging.STAGE_VERSION
    return run_stage(ctx, "judge_gpm", v, params, sources, compute, complete=calls_complete)


def read_embeddings(emb: StageOutput) -> tuple[Any, Any]:
    """The embed stage's (candidate, prompt) embeddings."""
    return emb.read("candidate_embeddings"), emb.read("prompt_embeddings")


@model_task(name="embed", retries=1, delay=10)
def embed_task(ctx: RunContext, ing: StageOutput, cands: StageOutput) -> StageOutput:
    from pipeline.embeddings import STAGE_VERSION, compute_embeddings

    e = ctx.cfg.embed
    params = e.model_dump(mode="json", exclude={"enabled"})

    def compute() -> StageResult:
        prompts, candidates = ing.read("prompts"), cands.read("candidates")
        return compute_embeddings(prompts, candidates, e, cache_dir=ctx.engines.cache_dir)

    return run_stage(ctx, "embed", STAGE_VERSION, params, [ing, cands], compute)


@model_task(name="rubric")
def rubric_task(ctx: RunContext, ing: StageOutput, cands: StageOutput) -> StageOutput:
    from pipeline.annotate import rubrics

    judges = [j.model_dump(mode="json") for j in ctx.cfg.rubric_judges()]
    params = [ctx.cfg.rubrics.model_dump(mode="json"), judges]

    def compute() -> StageResult:
        return model_stages.rubric_stage(
            ing.read("prompts"), cands.read("candidates"), ctx.cfg, _caller(ctx)
        )

    v = rubrics.STAGE_VERSION
    return run_stage(ctx, "rubric", v, params, [ing, cands], compute, complete=calls_complete)


@model_task(name="reward")
def reward_task(ctx: RunContext, ing: StageOutput, cands: StageOutput) -> StageOutput:
    from pipeline.annotate import rewards

    params = ctx.cfg.rewards.model_dump(mode="json")

    def compute() -> StageResult:
        return model_stages.reward_stage(
            ing.read("prompts"), cands.read("candidates"), ctx.cfg, ctx.cache, ctx.engines.cache_dir
        )

    v = rewards.STAGE_VERSION
    return run_stage(ctx, "reward", v, params, [ing, cands], compute, complete=calls_complete)


@task(name="review", cache_policy=NO_CACHE)
def review_task(ctx: RunContext, cands: StageOutput) -> StageOutput:
    """The reviewers' votes of ``review.votes``, checked against this run's candidates."""
    files = list(ctx.cfg.review.votes)

    def compute() -> StageResult:
        tables = [(f, review_votes.read_votes_file(f)) for f in files]
        return review_votes.review_votes(tables, cands.read("candidates"))

    sources = [file_hash(Path(f)) for f in files] + [cands]
    return run_stage(ctx, "review", review_votes.STAGE_VERSION, [], sources, compute)


@task(name="verify", cache_policy=NO_CACHE)
def verify_task(ctx: RunContext, ing: StageOutput, cands: StageOutput) -> StageOutput:
    """Verifier annotators (answers, unit tests in a sandbox, format constraints)."""
    from pipeline.annotate import verify

    v = ctx.cfg.verify

    def compute() -> StageResult:
        return verify.verify_candidates(ing.read("prompts"), cands.read("candidates"), v)

    params = v.model_dump(mode="json")
    return run_stage(ctx, "verify", verify.STAGE_VERSION, params, [ing, cands], compute)
