"""Scale-out of the model calls for process-based task runners (Dask, Ray): a stage's
uncached requests are split into shards, each answered by a self-contained task in a
worker process into the shared request cache; the stage then finds every answer cached.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flows.retry import model_task
from flows.runtime import EnginePool, RunContext
from pipeline import generation
from pipeline.annotate.planning import first_signal, plan_judging
from pipeline.engines.base import (
    CallStats,
    ChatRequest,
    RequestCache,
    request_cache_path,
    run_cached,
)
from pipeline.store.stages import StageOutput
from schemas.config import ModelSpec

log = logging.getLogger("prefcurate")


def answer_shard(
    spec_json: dict[str, Any],
    requests: list[ChatRequest],
    cache_path: str,
    cache_dir: str,
    batch_size: int,
) -> dict[str, int]:
    """Answer one shard of requests into the shared request cache (scale-out workers).

    Self-contained, so it runs in any worker process (Dask, Ray): it opens the cache file
    and starts its own engine, stopped when the shard is done (a worker process has no
    runtime to keep it in). The stage then finds every answer cached.
    """
    spec = ModelSpec.model_validate(spec_json)
    cache = RequestCache(cache_path)
    pool = EnginePool(Path(cache_dir))
    try:
        _, stats = run_cached(
            requests,
            engine_kind=spec.engine,
            model=spec.cache_identity(),
            get_engine=lambda: pool.get(spec),
            cache=cache,
            batch_size=batch_size,
        )
    finally:
        cache.close()
        pool.close()
    return stats.to_dict()


@model_task(name="warm-shard")
def warm_shard_task(
    spec_json: dict[str, Any],
    requests: list[ChatRequest],
    cache_path: str,
    cache_dir: str,
    batch_size: int,
) -> dict[str, int]:
    """Prefect task around :func:`answer_shard` (kept tiny: workers unpickle it)."""
    import flows.shards as here

    return here.answer_shard(spec_json, requests, cache_path, cache_dir, batch_size)


def warm_in_shards(
    ctx: RunContext, label: str, groups: list[tuple[ModelSpec, list[ChatRequest]]], batch_size: int
) -> None:
    """Split uncached requests into shards run by the flow's task runner."""
    n = ctx.cfg.runner.shards or ctx.cfg.runner.workers
    cache_path = str(request_cache_path(ctx.cfg.data_root))
    futures = []
    for spec, reqs in groups:
        keys = [r.key(spec.engine, spec.cache_identity()) for r in reqs]
        have = ctx.cache.get_many(set(keys))
        todo = [r for r, k in zip(reqs, keys) if not (k in have and have[k].final)]
        for i in range(n):
            shard = todo[i::n]
            if shard:
                futures.append(
                    (
                        spec.model,
                        warm_shard_task.submit(
                            spec.model_dump(mode="json"),
                            shard,
                            cache_path,
                            str(ctx.engines.cache_dir),
                            batch_size,
                        ),
                    )
                )
    made = 0
    for model, f in futures:
        st = CallStats.from_dict(f.result())
        made += st.made
        ctx.record(f"{label}_shards", model, st)
    log.info("%s: %d shards answered %d requests", label, len(futures), made)


def warm_generation(ctx: RunContext, ing: StageOutput) -> None:
    """With a process-based runner: answer the generate stage's requests in shards."""
    cfg = ctx.cfg
    if cfg.runner.kind == "thread":
        return
    reqs = generation.build_generation_requests(ing.read("prompts"), list(cfg.generate.policies))
    groups = [
        (p.model, [r.request for r in reqs if r.policy == p.name]) for p in cfg.generate.policies
    ]
    warm_in_shards(ctx, "generate", groups, cfg.generate.batch_size)


def warm_judging(
    ctx: RunContext, ing: StageOutput, cands: StageOutput, signal: list[StageOutput]
) -> None:
    """With a process-based runner: answer round 1's judge requests in shards
    (``signal``: the first signal's score stages, as the judge stage gets them)."""
    cfg = ctx.cfg
    if cfg.runner.kind == "thread":
        return
    first = first_signal([t.read("scores") for t in signal])
    *_, reqs = plan_judging(cfg.judge, ing.read("prompts"), cands.read("candidates"), first)
    groups = [
        (j.model, [r.request for r in reqs if r.annotator.startswith(j.name + "|")])
        for j in cfg.judge.judges
    ]
    warm_in_shards(ctx, "judge", groups, cfg.judge.batch_size)
