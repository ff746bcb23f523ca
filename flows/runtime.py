"""The run's runtime: the :class:`Runtime` a process lends its runs (engine pools,
progress bars, secrets; owned by the CLI, a worker or a test session and passed in
explicitly — no module-level registries), the per-run :class:`RunContext` (config, stage
store, request cache, engines, progress) every task receives, the stage machinery every
task goes through (key, reuse, compute, write), and the task runner (the retry rule is
:mod:`flows.retry`).
``flows.tasks`` and ``flows.curate`` hold the tasks and the flow."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prefect.artifacts import create_table_artifact

from pipeline.engines.base import (
    CallStats,
    Engine,
    FakeEngine,
    RequestCache,
    VLLMEngine,
    request_cache_path,
    run_cached,
)
from pipeline.engines.embedded import default_cache_dir, resolve_model_path
from pipeline.engines.usage import Budget, reused_stage, stage_totals
from pipeline.stage import Reason, StageResult
from pipeline.store import datasets as store
from pipeline.store.stages import StageOutput, StageStore
from schemas.config import ModelSpec, RunConfig
from schemas.errors import ConfigError

log = logging.getLogger("prefcurate")


class EnginePool:
    """One engine per model spec, started on first need and shared by every run given the
    same :class:`Runtime` (tests and long-lived workers pay the engine start once)."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self.started: list[str] = []

    def get(self, spec: ModelSpec) -> Engine:
        key = spec.engine_key()
        with self._lock:
            if key not in self._engines:
                self._engines[key] = self._build(spec)
            return self._engines[key]

    def close(self) -> None:
        """Stop every engine of this pool."""
        with self._lock:
            for eng in self._engines.values():
                close = getattr(eng, "close", None)
                if close:
                    close()
            self._engines.clear()

    def _build(self, spec: ModelSpec) -> Engine:
        if spec.engine == "fake":
            return FakeEngine(model=spec.model, context=spec.max_model_len)
        if spec.engine == "vllm":
            log.info("starting vLLM engine for %s (first start on CPU takes 1-2 min)", spec.model)
            path = resolve_model_path(spec.model, self.cache_dir)
            return VLLMEngine(
                spec.model,
                path,
                dtype=spec.dtype,
                max_model_len=spec.max_model_len,
                engine_args=spec.engine_args,
                structured_backend=spec.structured_backend,
                cache_dir=self.cache_dir,
            )
        if spec.engine == "openai":
            from pipeline.engines.openai import OpenAIEngine

            if not spec.base_url:
                raise ConfigError(
                    f"model '{spec.model}': engine 'openai' needs base_url, e.g. "
                    f"--set ...model.base_url=http://127.0.0.1:8000/v1"
                )
            return OpenAIEngine(
                spec.model,
                spec.base_url,
                api_key_env=spec.api_key_env,
                max_concurrency=spec.max_concurrency,
                timeout_s=spec.timeout_s,
                max_retries=spec.max_retries,
                context=spec.max_model_len,
            )
        raise ConfigError(f"unknown engine '{spec.engine}'")


class Progress(Protocol):
    """Progress display of a run (the CLI's rich bars; tests and library users may give
    none)."""

    def bar(self, label: str, total: int) -> Callable[[int], None]:
        """A bar of ``total`` items (a model stage's requests); returns ``advance(n)``."""

    def stage(self, label: str) -> Callable[[int], None]:
        """A stage that starts now; returns ``done(rows)``, called when it has finished
        with ``rows`` rows in (the display shows them and rows/s)."""


class Runtime:
    """What one process lends the runs it starts, passed to them explicitly: the engine
    pools (one per model cache folder; an engine starts on first need and serves every
    later run given this runtime), the progress display, and the secrets of the runs
    it starts (kept out of Prefect, which stores a flow's parameters in clear).

    Owned by whoever starts runs — the CLI command, a deployment's flow run, a test
    session — and closed by it (:meth:`close` stops the engines). It has no ``__dict__``
    (``__slots__``), so Prefect records it as the placeholder ``<Runtime>`` instead of
    walking into engines and handles."""

    __slots__ = ("progress", "_pools", "_secrets", "_lock")

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self._pools: dict[str, EnginePool] = {}
        self._secrets: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type, tuple]:
        """A runtime does not travel: Prefect pickles the flow run's context (its
        parameters included) for process-based task runners (Dask, Ray), and what arrives
        there is an empty runtime, not engines, locks or secrets."""
        return (Runtime, ())

    def pool(self, cache_dir: Path) -> EnginePool:
        """The engine pool of the model cache folder ``cache_dir``."""
        key = str(Path(cache_dir).resolve())
        with self._lock:
            if key not in self._pools:
                self._pools[key] = EnginePool(Path(cache_dir))
            return self._pools[key]

    def keep_secrets(self, secrets: dict[str, Any]) -> str:
        """Hold a run's secrets until its flow takes them; the reference to pass it."""
        ref = uuid.uuid4().hex
        with self._lock:
            self._secrets[ref] = secrets
        return ref

    def take_secrets(self, ref: str) -> dict[str, Any]:
        """The secrets kept under ``ref`` (once: they are forgotten here)."""
        with self._lock:
            return self._secrets.pop(ref, {})

    def close(self) -> None:
        """Stop every engine this runtime started."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            self._secrets.clear()
        for pool in pools:
            pool.close()


@dataclass
class RunContext:
    cfg: RunConfig
    stages: StageStore
    cache: RequestCache
    engines: EnginePool
    progress: Progress | None = None
    # the model calls of this run by stage and model (a stage reused whole: all saved)
    usage: dict[str, dict[str, CallStats]] = field(default_factory=dict)
    budget: Budget | None = None
    models_used: list[str] = field(default_factory=list)  # engines this run asked for

    def record(self, stage: str, model: str, stats: CallStats) -> None:
        self.usage.setdefault(stage, {}).setdefault(model, CallStats()).add(stats)

    def engine(self, spec: ModelSpec) -> Engine:
        if spec.model not in self.models_used:
            self.models_used.append(spec.model)
        return self.engines.get(spec)


def new_context(cfg: RunConfig, runtime: Runtime) -> RunContext:
    """The context of one run of ``cfg``: its stage store and request cache, and the
    engines and progress bars of ``runtime``."""
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    for folder in (
        Path(cfg.data_root) / "runs" / cfg.dataset_name / "stages",
        Path(cfg.data_root) / "datasets" / cfg.dataset_name,
    ):
        store.sweep_stale_tmp(folder)  # what killed runs left half-written
    return RunContext(
        cfg=cfg,
        stages=StageStore(Path(cfg.data_root) / "runs" / cfg.dataset_name),
        cache=RequestCache(request_cache_path(cfg.data_root)),
        engines=runtime.pool(cache_dir),
        progress=runtime.progress,
        budget=Budget(cfg.budget, dict(cfg.cost.prices)) if cfg.budget.on() else None,
    )


def run_stage(
    ctx: RunContext,
    mod_stage: str,
    version: int | list[int],
    cfg: Any,
    sources: list[StageOutput | str],
    compute: Callable[[], StageResult],
    *,
    complete: Callable[[StageResult], bool] = lambda r: True,
) -> StageOutput:
    """Reuse the finished output of ``mod_stage`` under its key (module version(s), config,
    the hashes of its ``sources``: stage outputs or hashes of other inputs), or compute,
    restage the reject rows and write it durably."""
    inputs = [s.output_hash if isinstance(s, StageOutput) else s for s in sources]
    key = StageStore.key(mod_stage, version, cfg, inputs)
    done = ctx.stages.load(mod_stage, key)
    if done is not None:
        log.info("stage %s: reusing finished output %s", mod_stage, done.path.name)
        for model, st in reused_stage((done.meta.get("info") or {}).get("usage") or {}).items():
            ctx.record(mod_stage, model, st)
        _artifact(done)
        return done
    finished = ctx.progress.stage(mod_stage) if ctx.progress else None
    result = compute()
    result.stage = mod_stage  # the stage's name in this flow (e.g. a second aggregation)
    if mod_stage in ctx.usage:  # its model calls, kept with the output for later reuse
        result.info["usage"] = {m: st.to_dict() for m, st in ctx.usage[mod_stage].items()}
        result.info["calls"] = stage_totals({mod_stage: ctx.usage[mod_stage]})[mod_stage]
    # ... and in its reject rows (the module's name differs: rewards → reward, judge →
    # judge_gpm), so dropped.parquet and quarantine.parquet say what the manifest says
    result.dropped = _restaged(result.dropped, mod_stage)
    result.quarantine = _restaged(result.quarantine, mod_stage)
    out = ctx.stages.save(result, key, complete=complete(result), inputs=inputs)
    if finished is not None:  # computed and written: its rows and rows/s on the display
        finished(result.counts.rows_in)
    _artifact(out)
    return out


def _restaged(table: Any, stage: str) -> Any:
    import pyarrow as pa

    if table is None or not table.num_rows or "stage" not in table.column_names:
        return table
    i = table.schema.get_field_index("stage")
    return table.set_column(
        i, table.schema.field(i), pa.array([stage] * table.num_rows, table.schema.field(i).type)
    )


def call_models(
    ctx: RunContext, stage: str, groups: list[tuple[str, ModelSpec, list[Any]]], batch_size: int
) -> tuple[list[Any], list[Any], CallStats]:
    """Answer each group's requests (objects with a ``.request``) with its model, through the
    request cache and within the run's budget; returns (requests in group order, their
    completions, call counts), and records the counts per model under ``stage``."""
    ordered: list[Any] = []
    comps: list[Any] = []
    total = CallStats()
    for name, spec, mine in groups:
        out, stats = run_cached(
            [r.request for r in mine],
            engine_kind=spec.engine,
            model=spec.cache_identity(),
            get_engine=lambda spec=spec: ctx.engine(spec),
            cache=ctx.cache,
            batch_size=batch_size,
            progress=_progress(ctx, f"{stage} [{name}]", len(mine)),
            gate=ctx.budget.gate(stage, spec.model) if ctx.budget else None,
        )
        ordered += mine
        comps += out
        total.add(stats)
        ctx.record(stage, spec.model, stats)
    return ordered, comps, total


def calls_complete(result: StageResult) -> bool:
    """A model stage is complete only when every call it needed was answered: none failed
    and none was left out by the budget (the next run makes exactly those)."""
    failed = result.counts.quarantined.get(str(Reason.REQUEST_FAILED), 0)
    return not failed and not (result.info.get("calls") or {}).get("over_budget", 0)


def _artifact(out: StageOutput) -> None:
    """Attach the stage's counts to the Prefect run as a table artifact."""
    c = out.counts
    rows = [
        {
            "stage": out.stage,
            "in": c["in"],
            "kept": c["kept"],
            "out": c.get("out"),
            **{f"dropped:{k}": v for k, v in c["dropped"].items()},
            **{f"quarantined:{k}": v for k, v in c["quarantined"].items()},
            "reused": out.reused,
        }
    ]
    try:
        create_table_artifact(
            table=rows, key=f"prefcurate-{out.stage}", description=f"rows of stage {out.stage}"
        )
    except Exception as exc:  # artifacts are a convenience, never a failure
        log.debug("no artifact for %s: %s", out.stage, exc)


def usage_artifact(summary: dict[str, Any]) -> None:
    """The run's model calls, tokens and cost per stage and model as a Prefect table
    artifact (``prefcurate-usage``)."""
    from pipeline.report.sections import usage_table

    t = usage_table(summary)
    if t is None:
        return
    try:
        create_table_artifact(
            table=[dict(zip(t["columns"], r)) for r in t["rows"]],
            key="prefcurate-usage",
            description=t["title"],
        )
    except Exception as exc:  # artifacts are a convenience, never a failure
        log.debug("no usage artifact: %s", exc)


def _progress(ctx: RunContext, label: str, total: int) -> Callable[[int], None] | None:
    return ctx.progress.bar(label, total) if ctx.progress else None


def task_runner_for(kind: str, workers: int) -> Any:
    """The Prefect task runner for ``runner.kind`` (prefect-dask / prefect-ray)."""
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ConfigError("runner 'dask' needs prefect-dask: pip install prefect-dask") from exc
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise ConfigError("runner 'ray' needs prefect-ray: pip install prefect-ray") from exc
        return RayTaskRunner()
    raise ConfigError(f"unknown runner '{kind}' (thread, dask, ray)")
