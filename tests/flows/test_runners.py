"""Scale-out: the Dask runner shards model calls over worker processes and publishes the
same dataset as the thread runner."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.curate import run_curation
from schemas.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(root: Path, *extra: str) -> dict:
    return load_config(
        None,
        [
            f"data_root={root}",
            "name=shard",
            "input.limit=5",
            f"input.path={REPO / 'data/examples/prompts.jsonl'}",
            "generate.policies.0.model.engine=fake",
            "judge.judges.0.model.engine=fake",
            *extra,
        ],
    ).model_dump(mode="json")


def _rows(summary: dict) -> pl.DataFrame:
    df = pl.read_parquet(Path(summary["path"]) / "data.parquet")
    return df.sort("pair_id")


def test_dask_runner_publishes_the_same_dataset(tmp_path):
    pytest.importorskip("prefect_dask")
    thread = run_curation(_cfg(tmp_path / "thread"))
    dask = run_curation(_cfg(tmp_path / "dask", "runner.kind=dask", "runner.workers=2"))
    assert dask["calls"]["generate_shards"]["made"] == 5  # the shards made the calls...
    assert dask["calls"]["generate"]["made"] == 0  # ...and the stage found them cached
    assert dask["calls"]["judge_shards"]["made"] == thread["calls"]["judge"]["made"] > 0
    a, b = _rows(thread), _rows(dask)
    assert a.height == b.height > 0
    assert a.drop("weight").equals(b.drop("weight")) and a["weight"].equals(b["weight"])
