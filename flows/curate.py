"""The ``curate`` Prefect flow: ingest → generate → judge → aggregate → margins → denoise
→ pairs → publish → report.

The tasks that bring the inputs and the votes (ingest → the annotators) are
:mod:`flows.tasks`; here are the tasks after them (aggregate → report), as thin (key,
reuse or compute, write, return the stage's reference), and the flow, whose DAG is
:func:`_curate`. The machinery every task shares (run context, stage keying and reuse,
the retry rule, the task runner) is :mod:`flows.runtime`; the scale-out of model calls
:mod:`flows.shards`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import model_task
from flows.runtime import (
    RunContext,
    Runtime,
    new_context,
    run_stage,
    task_runner_for,
    usage_artifact,
)
from flows.shards import warm_generation, warm_judging
from flows.tasks import (
    decontaminate_task,
    dedup_task,
    embed_task,
    generate_task,
    ingest_task,
    judge_gpm_task,
    judge_task,
    read_embeddings,
    review_task,
    reward_task,
    rubric_task,
    verify_task,
)
from pipeline import pairs, run_stages
from pipeline.annotate.stages import check_outage
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


@task(name="gpm", cache_policy=NO_CACHE)
def gpm_task(
    ctx: RunContext, agg: StageOutput, cands: StageOutput, emb: StageOutput
) -> StageOutput:
    from pipeline.gpm.annotate import annotate_gpm
    from pipeline.gpm.model import STAGE_VERSION

    params = ctx.cfg.gpm.model_dump(mode="json")

    def compute() -> StageResult:
        return annotate_gpm(
            agg.read("comparisons"), cands.read("candidates"), *read_embeddings(emb), ctx.cfg.gpm
        )

    return run_stage(ctx, "gpm", STAGE_VERSION, params, [agg, cands, emb], compute)


@task(name="select", cache_policy=NO_CACHE)
def select_task(ctx: RunContext, sel: StageOutput, emb: StageOutput) -> StageOutput:
    from pipeline.selection import STAGE_VERSION, select_pairs_budget

    s = ctx.cfg.select

    def compute() -> StageResult:
        return select_pairs_budget(sel.read("pairs"), emb.read("prompt_embeddings"), s)

    return run_stage(ctx, "select", STAGE_VERSION, s.model_dump(mode="json"), [sel, emb], compute)


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
            embeddings=read_embeddings(emb) if use_emb else None,
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
