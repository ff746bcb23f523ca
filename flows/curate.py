"""The ``curate`` Prefect flow: ingest → generate → judge → aggregate → margins → denoise
→ pairs → publish → report.

Each task is thin: it computes its stage key, reuses a finished stage if one is on disk,
else reads its inputs, calls the pure stage function in ``pipeline/``, writes the result
durably and returns a reference (the stage directory), never a big table. Model calls
go through the per-request cache, and engines are only started when a request is
missing from it, so a rerun after a crash repeats no finished call. The machinery the
tasks share (run context, engine pool, stage keying and reuse, the retry rule, the task
runner) is :mod:`flows.runtime`; which pairs the judges see is
:mod:`pipeline.annotate.planning`, the dataset card :mod:`pipeline.store.card`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import (
    EnginePool,
    RunContext,
    Runtime,
    call_models,
    calls_complete,
    is_transient,
    model_task,
    new_context,
    retry_transient,
    run_stage,
    task_runner_for,
    usage_artifact,
)
from flows.shards import warm_in_shards
from pipeline import generation, pairs, run_stages
from pipeline.annotate import judging
from pipeline.annotate import stages as model_stages
from pipeline.annotate.planning import GPM_ROUND, first_signal, plan_judging
from pipeline.hashing import file_hash, stable_hash, tree_hash
from pipeline.ingest.stage import ingest_pairs, ingest_prompts
from pipeline.review import votes as review_votes
from pipeline.stage import Reason, StageResult, stage_count_rows
from pipeline.store import datasets as store
from pipeline.store.card import dataset_card
from pipeline.store.manifest import build_manifest, content_key, run_summary
from pipeline.store.publish import publish_version
from pipeline.store.stages import StageOutput
from schemas.config import RunConfig, merge_secrets, split_secrets
from schemas.errors import EngineError

__all__ = [
    "EnginePool",
    "Runtime",
    "curate",
    "first_signal",
    "is_transient",
    "plan_judging",
    "run_curation",
    "GPM_ROUND",
]

log = logging.getLogger("prefcurate")

INGEST_VERSION = 1


@task(
    name="ingest",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
def ingest_task(ctx: RunContext) -> StageOutput:
    inp = ctx.cfg.input
    from pipeline.ingest import verifiable

    in_hash = (
        tree_hash(inp.path)
        if Path(inp.path).exists()
        else f"builtin:{inp.path}:v{verifiable.VERSION}"
    )
    fn = ingest_prompts if inp.kind == "prompts" else ingest_pairs
    return run_stage(
        ctx,
        "ingest",
        INGEST_VERSION,
        inp.model_dump(mode="json"),
        [in_hash],
        lambda: fn(inp.path, source=inp.source, limit=inp.limit),
    )


def _hygiene_inputs(ing: StageOutput, pairs_input: bool) -> tuple[Any, Any, Any]:
    """PROMPTS, and a pairs file's CANDIDATES and VOTES (None for a prompts file)."""
    return (
        ing.read("prompts"),
        ing.read("candidates") if pairs_input else None,
        ing.read("votes") if pairs_input else None,
    )


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(ctx: RunContext, ing: StageOutput) -> StageOutput:
    """Prompts (and a pairs file's pairs) without duplicate and near-duplicate prompts;
    the same output names as ingest, so the stages after it read it in ingest's place."""
    from pipeline.hygiene import dedup

    dcfg = ctx.cfg.dedup

    def compute() -> StageResult:
        return dedup.dedup_prompts(
            *_hygiene_inputs(ing, ctx.cfg.input.kind == "pairs"),
            threshold=dcfg.threshold,
            ngram=dcfg.ngram,
            num_perm=dcfg.num_perm,
            min_words=dcfg.min_words,
            near=ctx.cfg.dedup_near_on(),
        )

    return run_stage(
        ctx, "dedup", dedup.STAGE_VERSION, dcfg.model_dump(mode="json"), [ing.output_hash], compute
    )


@task(name="decontaminate", cache_policy=NO_CACHE)
def decontaminate_task(ctx: RunContext, ing: StageOutput) -> StageOutput:
    """Prompts (and a pairs file's pairs) without those that share a word n-gram with a
    benchmark item; the same output names as ingest."""
    from pipeline.hygiene import decontam

    dcfg = ctx.cfg.decontaminate
    items, notes = decontam.resolve_benchmarks(dcfg.benchmarks, ctx.cfg.input.path)
    bench_hash = stable_hash([[i.benchmark, i.item_id, i.text] for i in items])

    def compute() -> StageResult:
        res = decontam.decontaminate(
            *_hygiene_inputs(ing, ctx.cfg.input.kind == "pairs"),
            benchmarks=items,
            ngram=dcfg.ngram,
            skipped=notes["skipped"],
        )
        res.info["unavailable"] = notes["unavailable"]
        return res

    return run_stage(
        ctx,
        "decontaminate",
        decontam.STAGE_VERSION,
        dcfg.model_dump(mode="json"),
        [ing.output_hash, bench_hash],
        compute,
    )


@model_task(name="generate")
def generate_task(ctx: RunContext, ingest: StageOutput) -> StageOutput:
    return run_stage(
        ctx,
        "generate",
        generation.STAGE_VERSION,
        ctx.cfg.generate.model_dump(mode="json"),
        [ingest.output_hash],
        # (served from the cache when scale-out shards already answered them)
        lambda: model_stages.generate_stage(ingest.read("prompts"), ctx.cfg, _caller(ctx)),
        complete=calls_complete,
    )


def _caller(ctx: RunContext) -> model_stages.CallModels:
    """The run's model calls (cache, budget, progress, usage) for a model stage body."""
    return lambda stage, groups, batch: call_models(ctx, stage, groups, batch)[:2]


def check_outage(out: StageOutput, cfg: RunConfig, partial: dict[str, int]) -> None:
    """After a model stage: failed calls are recorded in ``partial``; when every row of
    the stage failed the run stops (unless ``allow_partial``), naming the first error."""
    failed = out.counts.get("quarantined", {}).get(str(Reason.REQUEST_FAILED), 0)
    if not failed:
        return
    partial[out.stage] = failed
    q = out.read("quarantine")
    first = next(
        (
            d
            for d, r in zip(q.column("detail").to_pylist(), q.column("reason").to_pylist())
            if r == str(Reason.REQUEST_FAILED)
        ),
        "",
    )
    log.warning(
        "%s: %d rows have failed model calls (quarantined; the next run makes "
        "exactly those calls again): %s",
        out.stage,
        failed,
        first,
    )
    if out.counts.get("kept", 0) == 0 and not cfg.allow_partial:
        raise EngineError(
            f"{out.stage}: every call failed ({failed} rows quarantined), e.g. "
            f"{first}; nothing published. Rerun when the model server is back "
            f"(only the failed calls are made again), or pass --allow-partial "
            f"to publish without them"
        )


@model_task(name="judge")
def judge_task(
    ctx: RunContext,
    prompts_src: StageOutput,
    cands_src: StageOutput,
    signal_srcs: list[StageOutput] | None = None,
    seed_agg: StageOutput | None = None,
    emb: StageOutput | None = None,
    round1: StageOutput | None = None,
) -> StageOutput:
    """Judge the selected pairs; with ``seed_agg`` (round 1's aggregation), ``emb`` and
    ``round1`` (round 1's judge stage: its votes are the pairs judged already) this is round
    2 of ``pair_selection: gpm`` (stage ``judge_gpm``)."""
    jcfg = ctx.cfg.judge
    signal_srcs = signal_srcs or []

    def compute() -> StageResult:
        prompts, candidates = prompts_src.read("prompts"), cands_src.read("candidates")
        chosen = None
        if seed_agg is not None and emb is not None:
            from pipeline.gpm.annotate import select_uncertain_pairs

            chosen = select_uncertain_pairs(
                seed_agg.read("comparisons"),
                candidates,
                emb.read("candidate_embeddings"),
                emb.read("prompt_embeddings"),
                ctx.cfg.gpm,
                jcfg.max_pairs_per_prompt - jcfg.seed_pairs_per_prompt,
                judged=round1.read("votes") if round1 is not None else None,
            )
        signal = [t.read("scores") for t in signal_srcs]
        return model_stages.judge_stage(prompts, candidates, ctx.cfg, _caller(ctx), signal, chosen)

    second = seed_agg is not None and emb is not None
    return run_stage(
        ctx,
        "judge_gpm" if second else "judge",
        judging.STAGE_VERSION,
        [jcfg.model_dump(mode="json")] + ([ctx.cfg.gpm.model_dump(mode="json")] if second else []),
        [prompts_src.output_hash, cands_src.output_hash]
        + [s.output_hash for s in signal_srcs]
        + ([seed_agg.output_hash, emb.output_hash] if second else [])
        + ([round1.output_hash] if second and round1 is not None else []),
        compute,
        complete=calls_complete,
    )


def embeddings_enabled(cfg: RunConfig) -> bool:
    """Whether the flow embeds (:meth:`schemas.config.RunConfig.embeddings_on`)."""
    return cfg.embeddings_on()


@task(
    name="embed",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_transient,
)
def embed_task(ctx: RunContext, prompts_src: StageOutput, cands_src: StageOutput) -> StageOutput:
    from pipeline.embeddings import STAGE_VERSION, compute_embeddings

    return run_stage(
        ctx,
        "embed",
        STAGE_VERSION,
        ctx.cfg.embed.model_dump(mode="json", exclude={"enabled"}),
        [prompts_src.output_hash, cands_src.output_hash],
        lambda: compute_embeddings(
            prompts_src.read("prompts"),
            cands_src.read("candidates"),
            ctx.cfg.embed,
            cache_dir=ctx.engines.cache_dir,
        ),
    )


@model_task(name="rubric")
def rubric_task(ctx: RunContext, prompts_src: StageOutput, cands_src: StageOutput) -> StageOutput:
    from pipeline.annotate import rubrics

    judges = ctx.cfg.rubric_judges()
    return run_stage(
        ctx,
        "rubric",
        rubrics.STAGE_VERSION,
        [ctx.cfg.rubrics.model_dump(mode="json"), [j.model_dump(mode="json") for j in judges]],
        [prompts_src.output_hash, cands_src.output_hash],
        lambda: model_stages.rubric_stage(
            prompts_src.read("prompts"), cands_src.read("candidates"), ctx.cfg, _caller(ctx)
        ),
        complete=calls_complete,
    )


@model_task(name="reward")
def reward_task(ctx: RunContext, prompts_src: StageOutput, cands_src: StageOutput) -> StageOutput:
    from pipeline.annotate import rewards

    return run_stage(
        ctx,
        "reward",
        rewards.STAGE_VERSION,
        ctx.cfg.rewards.model_dump(mode="json"),
        [prompts_src.output_hash, cands_src.output_hash],
        lambda: model_stages.reward_stage(
            prompts_src.read("prompts"),
            cands_src.read("candidates"),
            ctx.cfg,
            ctx.cache,
            ctx.engines.cache_dir,
        ),
        complete=calls_complete,
    )


@task(name="gpm", cache_policy=NO_CACHE)
def gpm_task(
    ctx: RunContext, agg: StageOutput, cands_src: StageOutput, emb: StageOutput
) -> StageOutput:
    from pipeline.gpm.annotate import annotate_gpm
    from pipeline.gpm.model import STAGE_VERSION

    return run_stage(
        ctx,
        "gpm",
        STAGE_VERSION,
        ctx.cfg.gpm.model_dump(mode="json"),
        [agg.output_hash, cands_src.output_hash, emb.output_hash],
        lambda: annotate_gpm(
            agg.read("comparisons"),
            cands_src.read("candidates"),
            emb.read("candidate_embeddings"),
            emb.read("prompt_embeddings"),
            ctx.cfg.gpm,
        ),
    )


@task(name="select", cache_policy=NO_CACHE)
def select_task(ctx: RunContext, sel: StageOutput, emb: StageOutput) -> StageOutput:
    from pipeline.selection import STAGE_VERSION, select_pairs_budget

    return run_stage(
        ctx,
        "select",
        STAGE_VERSION,
        ctx.cfg.select.model_dump(mode="json"),
        [sel.output_hash, emb.output_hash],
        lambda: select_pairs_budget(
            sel.read("pairs"), emb.read("prompt_embeddings"), ctx.cfg.select
        ),
    )


@task(name="review", cache_policy=NO_CACHE)
def review_task(ctx: RunContext, cands: StageOutput) -> StageOutput:
    """The reviewers' votes of ``review.votes``, checked against this run's candidates."""
    files = list(ctx.cfg.review.votes)

    def compute() -> StageResult:
        tables = [(f, review_votes.read_votes_file(f)) for f in files]
        return review_votes.review_votes(tables, cands.read("candidates"))

    inputs = [file_hash(Path(f)) for f in files] + [cands.output_hash]
    return run_stage(ctx, "review", review_votes.STAGE_VERSION, [], inputs, compute)


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(
    ctx: RunContext,
    vote_srcs: list[StageOutput],
    label_annotators: list[str],
    cands: StageOutput,
    stage: str = "aggregate",
) -> StageOutput:
    lengths_on = ctx.cfg.aggregate.length_control != "off"  # the candidates' lengths
    versions, part = run_stages.aggregate_key(ctx.cfg, label_annotators)
    return run_stage(
        ctx,
        stage,
        versions,
        part,
        [s.output_hash for s in vote_srcs] + ([cands.output_hash] if lengths_on else []),
        lambda: run_stages.aggregate_stage(
            [s.read("votes") for s in vote_srcs],
            cands.read("candidates") if lengths_on else None,
            ctx.cfg,
            label_annotators,
        ),
    )


@task(name="verify", cache_policy=NO_CACHE)
def verify_task(ctx: RunContext, prompts_src: StageOutput, cands_src: StageOutput) -> StageOutput:
    """Verifier annotators (answers, unit tests in a sandbox, format constraints)."""
    from pipeline.annotate import verify

    return run_stage(
        ctx,
        "verify",
        verify.STAGE_VERSION,
        ctx.cfg.verify.model_dump(mode="json"),
        [prompts_src.output_hash, cands_src.output_hash],
        lambda: verify.verify_candidates(
            prompts_src.read("prompts"), cands_src.read("candidates"), ctx.cfg.verify
        ),
    )


@task(name="margins", cache_policy=NO_CACHE)
def margins_task(
    ctx: RunContext,
    agg: StageOutput,
    emb: StageOutput | None,
    cands: StageOutput,
    gpm: StageOutput | None = None,
) -> StageOutput:
    versions, part = run_stages.margins_key(ctx.cfg, gpm is not None)
    extra = [o for o in (emb, gpm) if o is not None]
    return run_stage(
        ctx,
        "margins",
        versions,
        part,
        [agg.output_hash, cands.output_hash] + [o.output_hash for o in extra],
        lambda: run_stages.margins_stage(
            agg.read("comparisons"),
            agg.read("scores"),
            cands.read("candidates"),
            ctx.cfg,
            cycles=gpm.read("cycles") if gpm is not None else None,
            candidate_embeddings=emb.read("candidate_embeddings") if emb is not None else None,
        ),
    )


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
    versions, part = run_stages.denoise_key(ctx.cfg, label_source)
    return run_stage(
        ctx,
        "denoise",
        versions,
        part,
        [mar.output_hash]
        + ([emb.output_hash] if use_emb else [])
        + ([agg.output_hash] if use_agg else []),
        lambda: run_stages.denoise_stage(
            mar.read("pairs"),
            ctx.cfg,
            label_source,
            comparisons=agg.read("comparisons") if use_agg else None,
            embeddings=(emb.read("candidate_embeddings"), emb.read("prompt_embeddings"))
            if use_emb
            else None,
        ),
    )


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(ctx: RunContext, den: StageOutput, cands: StageOutput) -> StageOutput:
    from pipeline.aggregate import length

    balance = ctx.cfg.pairs.length_balance is not None
    return run_stage(
        ctx,
        "pairs",
        [pairs.STAGE_VERSION, length.STAGE_VERSION] if balance else pairs.STAGE_VERSION,
        ctx.cfg.pairs.model_dump(mode="json"),
        [den.output_hash] + ([cands.output_hash] if balance else []),
        lambda: pairs.build_pairs(
            den.read("pairs"),
            ctx.cfg.pairs,
            length.candidate_lengths(cands.read("candidates")) if balance else None,
        ),
    )


@task(
    name="publish",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
def publish_task(
    ctx: RunContext,
    ing: StageOutput,
    cands: StageOutput,
    sel: StageOutput,
    all_stages: list[StageOutput],
    partial: dict[str, int] | None = None,
) -> dict[str, Any]:
    import pyarrow as pa

    cfg = ctx.cfg
    finished = ctx.progress.stage("publish") if ctx.progress else None
    data = pairs.published_table(sel.read("pairs"), ing.read("prompts"), cands.read("candidates"))
    dropped = pa.concat_tables([o.read("dropped") for o in all_stages])
    quarantine = pa.concat_tables([o.read("quarantine") for o in all_stages])
    manifest = build_manifest(cfg, all_stages, ctx.usage, ctx.models_used, partial)
    usage_artifact(manifest["usage"])
    ref = publish_version(
        cfg.data_root,
        cfg.dataset_name,
        data=data,
        dropped=dropped,
        quarantine=quarantine,
        manifest=manifest,
        card=dataset_card(cfg.dataset_name, "", cfg, manifest["stages"], data.num_rows),
        content_key=content_key(manifest, all_stages),
        extra_files={"report.html": _report_html(cfg, data, dropped, quarantine)},
    )
    if finished is not None:
        finished(data.num_rows)
    return run_summary(ref, data.num_rows, manifest)


def _report_html(cfg: RunConfig, data: Any, dropped: Any, quarantine: Any) -> Any:
    """The stored report, rendered once publish knows the version, path and manifest."""

    def html(full: dict[str, Any], path: Path) -> str:
        try:
            from pipeline.report.build import render_html, report_from_tables

            return render_html(
                report_from_tables(
                    full,
                    data,
                    dropped,
                    quarantine,
                    version_path=path,
                    run_root=Path(cfg.data_root) / "runs" / cfg.dataset_name,
                )
            )
        except Exception as exc:  # a report must never cost the user their dataset
            log.warning("quality report not rendered: %s: %s", type(exc).__name__, exc)
            return (
                f"<!doctype html><p>quality report not rendered: "
                f"{type(exc).__name__}; run prefcurate report {cfg.dataset_name}</p>"
            )

    return html


@task(name="report", cache_policy=NO_CACHE)
def report_task(summary: dict[str, Any]) -> str:
    lines = [
        f"## prefcurate: {summary['name']}@v{summary['version']}",
        f"{'published' if summary['created'] else 'already published (identical run)'}: "
        f"`{summary['path']}` with {summary['rows']} pairs",
        "",
        "| stage | in | kept | dropped | quarantined | reused |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in stage_count_rows(summary["stages"])]
    if summary.get("report_html"):
        lines += ["", f"HTML quality report: `{summary['report_html']}`"]
    md = "\n".join(lines)
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
    """The flow's DAG: which stages run, in what order, on what inputs.

    Longer than 60 lines on purpose: the flow function is the DAG (STYLE.md), and reading
    every stage's condition and inputs in one place is the point of it."""
    cfg = ctx.cfg
    ing = ingest_task(ctx)
    outs = [ing]
    if cfg.dedup.enabled:  # before any model call: no call is spent on a duplicate
        ing = dedup_task(ctx, ing)
        outs.append(ing)
    if cfg.decontaminate.enabled:  # ... nor on a benchmark's own question
        ing = decontaminate_task(ctx, ing)
        outs.append(ing)
    partial: dict[str, int] = {}  # model stages with failed calls: rows quarantined
    if cfg.input.kind == "prompts":
        if cfg.runner.kind != "thread":
            reqs = generation.build_generation_requests(
                ing.read("prompts"), list(cfg.generate.policies)
            )
            warm_in_shards(
                ctx,
                "generate",
                [
                    (p.model, [r.request for r in reqs if r.policy == p.name])
                    for p in cfg.generate.policies
                ],
                cfg.generate.batch_size,
            )
        cands = generate_task(ctx, ing)
        outs.append(cands)
        check_outage(cands, cfg, partial)
    else:
        cands = ing
    vote_srcs = [] if cfg.input.kind == "prompts" else [ing]
    if cfg.verify.enabled is not False:
        ver = verify_task(ctx, ing, cands)
        outs.append(ver)
        vote_srcs.append(ver)
    # pointwise annotation first: it is also the cheap first signal for pair selection
    score_srcs = []
    if cfg.rubric_judges():
        score_srcs.append(rubric_task(ctx, ing, cands))
        check_outage(score_srcs[-1], cfg, partial)
        vote_srcs.append(score_srcs[-1])  # Yes/No judges' pairwise votes
    if cfg.rewards.models:
        score_srcs.append(reward_task(ctx, ing, cands))
        check_outage(score_srcs[-1], cfg, partial)
    outs += score_srcs
    signal = score_srcs if cfg.judge.pair_selection == "best_worst" else []
    if cfg.judge.judges:
        if cfg.runner.kind != "thread":
            _, _, _, jreqs = plan_judging(
                cfg.judge,
                ing.read("prompts"),
                cands.read("candidates"),
                first_signal([t.read("scores") for t in signal]),
            )
            warm_in_shards(
                ctx,
                "judge",
                [
                    (j.model, [r.request for r in jreqs if r.annotator.startswith(j.name + "|")])
                    for j in cfg.judge.judges
                ],
                cfg.judge.batch_size,
            )
        jud = judge_task(ctx, ing, cands, signal)
        outs.append(jud)
        check_outage(jud, cfg, partial)
        vote_srcs.append(jud)
    if cfg.review.votes:  # reviewers' answers (prefcurate review import)
        rev = review_task(ctx, cands)
        outs.append(rev)
        vote_srcs.append(rev)
    emb = None
    if embeddings_enabled(cfg):
        emb = embed_task(ctx, ing, cands)
        outs.append(emb)
    labels = []
    if cfg.input.kind == "pairs":
        labels = sorted(set(ing.read("prompts").column("source").to_pylist()))
    if cfg.judge.judges and cfg.judge.pair_selection == "gpm":
        # round 2: a GPM head trained on round 1 chooses the pairs the judges see
        seed = aggregate_task(ctx, vote_srcs, labels, cands, stage="aggregate_seed")
        jud2 = judge_task(ctx, ing, cands, signal, seed, emb, jud)
        outs += [seed, jud2]
        vote_srcs.append(jud2)
    agg = aggregate_task(ctx, vote_srcs, labels, cands)
    outs.append(agg)
    gp = None
    if cfg.gpm.enabled:
        gp = gpm_task(ctx, agg, cands, emb)
        # the GPM is one more annotator: aggregate again with its votes
        agg = aggregate_task(ctx, vote_srcs + [gp], labels, cands, stage="aggregate_gpm")
        outs += [gp, agg]
    mar = margins_task(ctx, agg, emb, cands, gp)
    den = denoise_task(ctx, mar, emb, labels[0] if len(labels) == 1 else None, agg)
    sel = pairs_task(ctx, den, cands)
    outs += [mar, den, sel]
    if cfg.select.budget is not None:
        sel = select_task(ctx, sel, emb)
        outs.append(sel)
    summary = publish_task(ctx, ing, cands, sel, outs, partial)
    summary["report"] = report_task(summary)
    return summary


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
