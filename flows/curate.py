"""The ``curate`` Prefect flow: ingest → generate → judge → aggregate → margins → denoise
→ pairs → publish → report.

Each task is thin: it reuses a finished stage if one is on disk under its key (the
versions of every pipeline module its body calls, the config it reads, its sources'
hashes), else reads its inputs, calls one stage body in ``pipeline/``, writes the result
durably and returns a reference (the stage directory), never a big table. Model calls
go through the per-request cache, and engines are only started when a request is
missing from it, so a rerun after a crash repeats no finished call. The machinery the
tasks share (run context, stage keying and reuse, the retry rule, the task runner) is
:mod:`flows.runtime`; the scale-out of model calls :mod:`flows.shards`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import (
    RunContext,
    Runtime,
    call_models,
    calls_complete,
    model_task,
    new_context,
    run_stage,
    task_runner_for,
    usage_artifact,
)
from flows.shards import warm_generation, warm_judging
from pipeline import generation, pairs, run_stages
from pipeline.annotate import judging
from pipeline.annotate import stages as model_stages
from pipeline.annotate.stages import check_outage
from pipeline.hashing import file_hash, stable_hash, tree_hash
from pipeline.ingest.stage import ingest_pairs, ingest_prompts
from pipeline.review import votes as review_votes
from pipeline.stage import StageResult
from pipeline.store import datasets as store
from pipeline.store.card import dataset_card
from pipeline.store.manifest import build_manifest, content_key, run_summary, summary_markdown
from pipeline.store.publish import publish_version
from pipeline.store.stages import StageOutput
from schemas.config import RunConfig, merge_secrets, split_secrets

__all__ = ["Runtime", "curate", "run_curation"]

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
            ctx.cfg, seed.read("comparisons"), candidates, _embeddings(emb), round1.read("votes")
        )
        scores = [t.read("scores") for t in signal]
        prompts = ing.read("prompts")
        return model_stages.judge_stage(prompts, candidates, ctx.cfg, _caller(ctx), scores, chosen)

    params = [ctx.cfg.judge.model_dump(mode="json"), ctx.cfg.gpm.model_dump(mode="json")]
    sources = [ing, cands, *signal, seed, emb, round1]
    v = judging.STAGE_VERSION
    return run_stage(ctx, "judge_gpm", v, params, sources, compute, complete=calls_complete)


def _embeddings(emb: StageOutput) -> tuple[Any, Any]:
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


@task(name="gpm", cache_policy=NO_CACHE)
def gpm_task(
    ctx: RunContext, agg: StageOutput, cands: StageOutput, emb: StageOutput
) -> StageOutput:
    from pipeline.gpm.annotate import annotate_gpm
    from pipeline.gpm.model import STAGE_VERSION

    params = ctx.cfg.gpm.model_dump(mode="json")

    def compute() -> StageResult:
        return annotate_gpm(
            agg.read("comparisons"), cands.read("candidates"), *_embeddings(emb), ctx.cfg.gpm
        )

    return run_stage(ctx, "gpm", STAGE_VERSION, params, [agg, cands, emb], compute)


@task(name="select", cache_policy=NO_CACHE)
def select_task(ctx: RunContext, sel: StageOutput, emb: StageOutput) -> StageOutput:
    from pipeline.selection import STAGE_VERSION, select_pairs_budget

    s = ctx.cfg.select

    def compute() -> StageResult:
        return select_pairs_budget(sel.read("pairs"), emb.read("prompt_embeddings"), s)

    return run_stage(ctx, "select", STAGE_VERSION, s.model_dump(mode="json"), [sel, emb], compute)


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


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(
    ctx: RunContext,
    vote_srcs: list[StageOutput],
    labels: list[str],
    cands: StageOutput,
    stage: str = "aggregate",
) -> StageOutput:
    """Every annotator's votes → comparisons and scores (``labels``: the label annotators);
    length control reads the candidates' lengths."""
    lengths_on = ctx.cfg.aggregate.length_control != "off"

    def compute() -> StageResult:
        return run_stages.aggregate_stage(
            [s.read("votes") for s in vote_srcs],
            cands.read("candidates") if lengths_on else None,
            ctx.cfg,
            labels,
        )

    sources = vote_srcs + ([cands] if lengths_on else [])
    return run_stage(ctx, stage, *run_stages.aggregate_key(ctx.cfg, labels), sources, compute)


@task(name="margins", cache_policy=NO_CACHE)
def margins_task(
    ctx: RunContext,
    agg: StageOutput,
    emb: StageOutput | None,
    cands: StageOutput,
    gpm: StageOutput | None = None,
) -> StageOutput:
    def compute() -> StageResult:
        return run_stages.margins_stage(
            agg.read("comparisons"),
            agg.read("scores"),
            cands.read("candidates"),
            ctx.cfg,
            cycles=gpm.read("cycles") if gpm is not None else None,
            candidate_embeddings=emb.read("candidate_embeddings") if emb is not None else None,
        )

    sources = [agg, cands] + [o for o in (emb, gpm) if o is not None]
    key = run_stages.margins_key(ctx.cfg, gpm is not None)
    return run_stage(ctx, "margins", *key, sources, compute)


@task(name="denoise", cache_policy=NO_CACHE)
def denoise_task(
    ctx: RunContext,
    mar: StageOutput,
    emb: StageOutput | None,
    label_source: str | None,
    agg: StageOutput | None = None,
) -> StageOutput:
    peer_review, use_agg = run_stages.denoise_uses(ctx.cfg, agg is not None)
    use_emb = emb is not None and peer_review

    def compute() -> StageResult:
        return run_stages.denoise_stage(
            mar.read("pairs"),
            ctx.cfg,
            label_source,
            comparisons=agg.read("comparisons") if use_agg else None,
            embeddings=_embeddings(emb) if use_emb else None,
        )

    sources = [mar] + ([emb] if use_emb else []) + ([agg] if use_agg else [])
    key = run_stages.denoise_key(ctx.cfg, label_source)
    return run_stage(ctx, "denoise", *key, sources, compute)


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(ctx: RunContext, den: StageOutput, cands: StageOutput) -> StageOutput:
    from pipeline.aggregate import length

    p = ctx.cfg.pairs
    balance = p.length_balance is not None

    def compute() -> StageResult:
        return pairs.build_pairs(
            den.read("pairs"),
            p,
            length.candidate_lengths(cands.read("candidates")) if balance else None,
        )

    v = [pairs.STAGE_VERSION, length.STAGE_VERSION] if balance else pairs.STAGE_VERSION
    sources = [den] + ([cands] if balance else [])
    return run_stage(ctx, "pairs", v, p.model_dump(mode="json"), sources, compute)


@model_task(name="publish", retries=1, delay=5)
def publish_task(
    ctx: RunContext,
    ing: StageOutput,
    cands: StageOutput,
    sel: StageOutput,
    outs: list[StageOutput],
    partial: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The selected pairs with their prompts and responses, every stage's reject rows,
    the manifest, card and report → a new immutable version (none if identical)."""
    import pyarrow as pa

    from pipeline.report.build import stored_report

    cfg = ctx.cfg
    finished = ctx.progress.stage("publish") if ctx.progress else None
    data = pairs.published_table(sel.read("pairs"), ing.read("prompts"), cands.read("candidates"))
    dropped, quarantine = (
        pa.concat_tables([o.read(n) for o in outs]) for n in ("dropped", "quarantine")
    )
    manifest = build_manifest(cfg, outs, ctx.usage, ctx.models_used, partial)
    usage_artifact(manifest["usage"])
    ref = publish_version(
        cfg.data_root,
        cfg.dataset_name,
        data=data,
        dropped=dropped,
        quarantine=quarantine,
        manifest=manifest,
        card=dataset_card(cfg.dataset_name, "", cfg, manifest["stages"], data.num_rows),
        content_key=content_key(manifest, outs),
        extra_files={
            "report.html": stored_report(cfg.data_root, cfg.dataset_name, data, dropped, quarantine)
        },
    )
    if finished is not None:
        finished(data.num_rows)
    return run_summary(ref, data.num_rows, manifest)


@task(name="report", cache_policy=NO_CACHE)
def report_task(summary: dict[str, Any]) -> str:
    md = summary_markdown(summary)
    try:
        create_markdown_artifact(
            markdown=md, key="prefcurate-summary", description="rows per stage"
        )
        if summary.get("report_html"):
            create_link_artifact(
                link=Path(summary["report_html"]).as_uri(),
                link_text=f"{summary['name']}@v{summary['version']} report",
                key="prefcurate-report",
            )
    except Exception as exc:  # artifacts need an API; never fail a curation over it
        log.debug("no artifact: %s", exc)
    return md


@flow(name="curate", log_prints=True)
def curate(
    config: dict[str, Any], secrets_ref: str | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Run one curation from a RunConfig (as a dict) and publish a dataset version.

    ``config`` is what Prefect stores in its database and shows: :func:`run_curation`
    passes it redacted (:func:`schemas.config.split_secrets`) and keeps the secrets in
    ``runtime``, under ``secrets_ref`` (Prefect stores even a pydantic ``SecretDict``
    parameter in clear). ``runtime`` lends the engines and progress bars; without one
    (a deployment's flow run) the run owns a fresh one and closes it."""
    owned = runtime is None
    rt = Runtime() if runtime is None else runtime
    try:
        if secrets_ref is not None:
            config = merge_secrets(config, rt.take_secrets(secrets_ref))
        cfg = RunConfig.model_validate(config)
        store.validate_name(cfg.dataset_name)
        for path in cfg.review.votes:  # a review that cannot be read fails before any call
            review_votes.read_votes_file(path)
        ctx = new_context(cfg, rt)
        try:
            return _curate(ctx)
        finally:
            ctx.cache.close()
    finally:
        if owned:
            rt.close()


def _curate(ctx: RunContext) -> dict[str, Any]:
    """The flow's DAG: which stages run, in what order, on what inputs (annotation in
    :func:`_annotate`). ``outs``: every stage run, in order (the manifest's stages, the
    published reject rows); ``partial``: model stages with failed calls."""
    cfg = ctx.cfg
    outs: list[StageOutput] = []
    partial: dict[str, int] = {}
    ing = _ran(outs, ingest_task(ctx))
    if cfg.dedup.enabled:  # before any model call: no call is spent on a duplicate
        ing = _ran(outs, dedup_task(ctx, ing))
    if cfg.decontaminate.enabled:  # ... nor on a benchmark's own question
        ing = _ran(outs, decontaminate_task(ctx, ing))
    cands = ing
    if cfg.input.kind == "prompts":
        warm_generation(ctx, ing)  # with Dask or Ray: in shards first
        cands = _ran(outs, generate_task(ctx, ing), partial, cfg)
    vote_srcs, signal, jud = _annotate(ctx, ing, cands, outs, partial)
    emb = _ran(outs, embed_task(ctx, ing, cands)) if cfg.embeddings_on() else None
    labels = []
    if cfg.input.kind == "pairs":
        labels = sorted(set(ing.read("prompts").column("source").to_pylist()))
    if jud is not None and cfg.judge.pair_selection == "gpm":
        # round 2: a GPM head trained on round 1 chooses the pairs the judges see
        seed = _ran(outs, aggregate_task(ctx, vote_srcs, labels, cands, stage="aggregate_seed"))
        vote_srcs.append(_ran(outs, judge_gpm_task(ctx, ing, cands, signal, seed, emb, jud)))
    agg = _ran(outs, aggregate_task(ctx, vote_srcs, labels, cands))
    gp = None
    if cfg.gpm.enabled:  # the GPM is one more annotator: aggregate again with its votes
        gp = _ran(outs, gpm_task(ctx, agg, cands, emb))
        agg = _ran(outs, aggregate_task(ctx, [*vote_srcs, gp], labels, cands, "aggregate_gpm"))
    mar = _ran(outs, margins_task(ctx, agg, emb, cands, gp))
    den = _ran(outs, denoise_task(ctx, mar, emb, labels[0] if len(labels) == 1 else None, agg))
    sel = _ran(outs, pairs_task(ctx, den, cands))
    if cfg.select.budget is not None:
        sel = _ran(outs, select_task(ctx, sel, emb))
    summary = publish_task(ctx, ing, cands, sel, outs, partial)
    summary["report"] = report_task(summary)
    return summary


def _annotate(
    ctx: RunContext,
    ing: StageOutput,
    cands: StageOutput,
    outs: list[StageOutput],
    partial: dict[str, int],
) -> tuple[list[StageOutput], list[StageOutput], StageOutput | None]:
    """The annotators of round 1 → (the vote stages, the first signal's score stages for
    ``best_worst``, the judge stage or None)."""
    cfg = ctx.cfg
    vote_srcs = [] if cfg.input.kind == "prompts" else [ing]  # a pairs file's own votes
    if cfg.verify.enabled is not False:
        vote_srcs.append(_ran(outs, verify_task(ctx, ing, cands)))
    # pointwise annotation first: it is also the cheap first signal for pair selection
    scores = []
    if cfg.rubric_judges():
        scores.append(_ran(outs, rubric_task(ctx, ing, cands), partial, cfg))
        vote_srcs.append(scores[-1])  # Yes/No judges' pairwise votes
    if cfg.rewards.models:
        scores.append(_ran(outs, reward_task(ctx, ing, cands), partial, cfg))
    signal = scores if cfg.judge.pair_selection == "best_worst" else []
    jud = None
    if cfg.judge.judges:
        warm_judging(ctx, ing, cands, signal)  # with Dask or Ray: in shards first
        jud = _ran(outs, judge_task(ctx, ing, cands, signal), partial, cfg)
        vote_srcs.append(jud)
    if cfg.review.votes:  # reviewers' answers (prefcurate review import)
        vote_srcs.append(_ran(outs, review_task(ctx, cands)))
    return vote_srcs, signal, jud


def _ran(
    outs: list[StageOutput],
    out: StageOutput,
    partial: dict[str, int] | None = None,
    cfg: RunConfig | None = None,
) -> StageOutput:
    """Record a stage run in ``outs``; a model stage's (with ``partial``) failed calls are
    checked (:func:`pipeline.annotate.stages.check_outage`)."""
    outs.append(out)
    if partial is not None and cfg is not None:
        check_outage(out, cfg.allow_partial, partial)
    return out


def run_curation(config: dict[str, Any], runtime: Runtime | None = None) -> dict[str, Any]:
    """Run ``curate`` with the task runner its config asks for; ``runtime`` as for
    :func:`curate` (without one, a fresh one for this run, closed after it)."""
    cfg = RunConfig.model_validate(config)
    flow_ = (
        curate
        if cfg.runner.kind == "thread"
        else curate.with_options(task_runner=task_runner_for(cfg.runner.kind, cfg.runner.workers))
    )
    public, secrets = split_secrets(cfg.model_dump(mode="json"))
    rt = Runtime() if runtime is None else runtime
    ref = rt.keep_secrets(secrets) if secrets else None
    try:
        return flow_(public, ref, rt)
    finally:
        if ref is not None:
            rt.take_secrets(ref)  # a flow that failed before taking them
        if runtime is None:
            rt.close()
