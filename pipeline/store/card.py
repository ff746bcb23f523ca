"""The dataset card (the version's README.md): what was curated, from what, by which
models, and how many rows each stage kept."""

from __future__ import annotations

from typing import Any

import pipeline
from pipeline.stage import stage_count_rows
from schemas.config import RunConfig


def dataset_card(
    name: str, version_hint: str, cfg: RunConfig, stages: dict[str, Any], n_rows: int
) -> str:
    policies = (
        ", ".join(f"{p.name} ({p.model.model})" for p in cfg.generate.policies)
        if cfg.input.kind == "prompts"
        else "given pairs"
    )
    judges = (
        ", ".join(f"{j.name} ({j.model.model})" for j in cfg.judge.judges)
        or "none (given votes only)"
    )
    lines = [
        f"# {name}",
        "",
        "Preference pairs curated by prefcurate "
        f"{pipeline.__version__}: TRL conversational `prompt` / `chosen` / `rejected` "
        "plus `margin`, `weight`, `p_hat`, `disagreement` and lineage ids.",
        "",
        f"- input: `{cfg.input.kind}` from `{cfg.input.path}`",
        f"- policies: {policies}",
        f"- judges: {judges}",
        f"- pairs published: {n_rows}",
        "",
        "## Rows per stage",
        "",
        "| stage | in | kept | dropped | quarantined |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r[:5]) + " |" for r in stage_count_rows(stages)]
    lines += [
        "",
        "Load it with `datasets.load_from_disk('<this folder>/data')` or "
        "`polars.read_parquet('<this folder>/data.parquet')`.",
        "",
    ]
    return "\n".join(lines)
