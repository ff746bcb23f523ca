"""Judge qualification as a flow-side run: the config's judges on a qualification set,
with the run's stage reuse and request cache, publishing nothing
(``prefcurate qualify``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flows.runtime import Runtime, new_context
from flows.tasks import generate_task, ingest_task, judge_task, rubric_task, verify_task
from pipeline import run_stages
from pipeline.annotate.qualify import qualify_judges
from pipeline.engines import usage
from schemas.config import RunConfig


def qualify_run(
    config: dict[str, Any], gold: str | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Judge qualification without publishing: the config's judges (pairwise and Yes/No)
    on a qualification set, and the table of :func:`qualify_judges`.

    The set: with ``gold`` (a pairs file whose ``chosen`` is right), its pairs, the file's
    label as the gold annotator; else the config's input, generated and verified, and the
    pairs a verifier decided. Finished stages and model calls are reused like a run's
    (the stages live under ``runs/<name>-qualify``). ``runtime`` as for :func:`curate`."""
    cfg = RunConfig.model_validate(config)
    if gold is not None:
        cfg = cfg.model_copy(
            update={"input": cfg.input.model_copy(update={"kind": "pairs", "path": gold})}
        )
    cfg = cfg.model_copy(update={"name": f"{cfg.dataset_name}-qualify"[:100]})
    rt = Runtime() if runtime is None else runtime
    ctx = new_context(cfg, rt)
    try:
        ing = ingest_task(ctx)
        cands = generate_task(ctx, ing) if cfg.input.kind == "prompts" else ing
        srcs = [verify_task(ctx, ing, cands)]
        labels: list[str] = []
        if cfg.input.kind == "pairs":
            srcs.append(ing)
            labels = sorted(set(ing.read("prompts").column("source").to_pylist()))
        if cfg.rubric_judges():
            srcs.append(rubric_task(ctx, ing, cands))
        if cfg.judge.judges:
            srcs.append(judge_task(ctx, ing, cands, []))
        votes = pa.concat_tables([s.read("votes") for s in srcs])
        out = qualify_judges(votes, gold_annotators=labels, **run_stages.model_maps(cfg))
        out["calls"] = usage.stage_totals(ctx.usage)
        out["usage"] = usage.summary(ctx.usage, ctx.cfg.cost)
        return out
    finally:
        ctx.cache.close()
        if runtime is None:
            rt.close()
