"""What a run publishes beside its data: the manifest (config, input, models, per-stage
counts and info, calls and cost, schema fingerprints), the content key that makes an
identical rerun publish nothing new, and the summary the flow returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pipeline
from pipeline.engines import usage
from pipeline.engines.cache import CallStats
from pipeline.hashing import stable_hash
from pipeline.stage import stage_count_rows
from pipeline.store.stages import StageOutput
from schemas.config import RunConfig, config_hash, resolved_dict
from schemas.tables import SCHEMAS, schema_fingerprint

PUBLISH_VERSION = 1


def stage_rows(outs: list[StageOutput]) -> dict[str, Any]:
    """Per stage: its counts, whether it was reused, and its key."""
    return {o.stage: {**o.counts, "reused": o.reused, "key": o.key} for o in outs}


def content_key(manifest: dict[str, Any], outs: list[StageOutput]) -> str:
    """The key of what a publish would write: code, config (the ``manifest``'s hash) and
    every stage's output."""
    hashes = [o.output_hash for o in outs]
    return stable_hash(
        PUBLISH_VERSION, pipeline.__version__, manifest["config_hash"], hashes, length=32
    )


def build_manifest(
    cfg: RunConfig,
    outs: list[StageOutput],
    calls: dict[str, dict[str, CallStats]],
    models_called: list[str],
    partial: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The manifest of a version published from the stage outputs ``outs`` (ingest first)
    and the run's model ``calls`` by stage and model."""
    resolved = resolved_dict(cfg)
    models = sorted(
        ({p.model.model for p in cfg.generate.policies} if cfg.input.kind == "prompts" else set())
        | {j.model.model for j in cfg.judge.judges}
    )
    manifest = {
        "code_version": pipeline.__version__,
        "config": resolved,
        "config_hash": config_hash(resolved),
        "input": {
            "kind": cfg.input.kind,
            "path": cfg.input.path,
            "hash": (outs[0].meta.get("inputs") or [None])[0],
        },
        "models": models,
        "stage_order": [o.stage for o in outs],
        "stages": stage_rows(outs),
        "stage_info": {o.stage: o.meta.get("info", {}) for o in outs},
        "calls": usage.stage_totals(calls),
        "usage": usage.summary(calls, cfg.cost),
        "models_called": list(models_called),
        "schema_fingerprint": {n: schema_fingerprint(s) for n, s in SCHEMAS.items()},
    }
    if partial:  # rows whose model calls failed: quarantined, retried by the next run
        manifest["partial"] = dict(partial)
    return manifest


def run_summary(ref: Any, rows: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the flow returns for the published (or found identical) version ``ref``."""
    path = Path(ref.path).resolve()
    return {
        "name": ref.name,
        "version": ref.version,
        "path": str(path),
        "created": ref.created,
        "rows": rows,
        "stages": manifest["stages"],
        "calls": manifest["calls"],
        "usage": manifest["usage"],
        "models_called": manifest["models_called"],
        "partial": manifest.get("partial", {}),
        "report_html": str(path / "report.html") if (path / "report.html").exists() else None,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run summary (:func:`run_summary`) as the Markdown of the flow's artifact."""
    created = "published" if summary["created"] else "already published (identical run)"
    lines = [
        f"## prefcurate: {summary['name']}@v{summary['version']}",
        f"{created}: `{summary['path']}` with {summary['rows']} pairs",
        "",
        "| stage | in | kept | dropped | quarantined | reused |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in stage_count_rows(summary["stages"])]
    if summary.get("report_html"):
        lines += ["", f"HTML quality report: `{summary['report_html']}`"]
    return "\n".join(lines)
