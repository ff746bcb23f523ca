"""Durable stage outputs keyed by content, with completion markers (resume).

A stage's key is a hash of (stage name, its ``STAGE_VERSION``, its config, the content
hashes of its inputs). Outputs go to ``<run_root>/stages/<stage>-<key>/``: one Parquet
file per output table plus ``dropped.parquet`` / ``quarantine.parquet``, ``stage.json``
(counts, info, key, output hash) and finally ``_COMPLETE``, written only after every
file is fsynced. A rerun finds the marker and reuses the stage without running it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import file_hash, stable_hash
from pipeline.stage import StageResult
from pipeline.store.datasets import fsync_file
from schemas.tables import DROPPED, QUARANTINE, check_table, conform, schema_for

COMPLETE = "_COMPLETE"


@dataclass
class StageOutput:
    """A finished stage on disk."""

    stage: str
    key: str
    path: Path
    meta: dict[str, Any]
    reused: bool = False

    @property
    def output_hash(self) -> str:
        return self.meta["output_hash"]

    @property
    def counts(self) -> dict[str, Any]:
        return self.meta["counts"]

    def read(self, name: str) -> pa.Table:
        """Read one table and check it against its declared schema."""
        table = pq.read_table(self.path / f"{name}.parquet")
        return conform(table, schema_for(name, table), f"{self.stage}/{name}")

    def tables(self) -> list[str]:
        return list(self.meta["tables"])


class StageStore:
    """Stage outputs of one run configuration under ``run_root``."""

    def __init__(self, run_root: str | Path):
        self.root = Path(run_root) / "stages"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(stage: str, version: int | list[int], cfg: Any, inputs: list[str]) -> str:
        return stable_hash(stage, version, cfg, inputs, length=20)

    def load(self, stage: str, key: str) -> StageOutput | None:
        d = self.root / f"{stage}-{key}"
        if not (d / COMPLETE).exists():
            return None
        meta = json.loads((d / "stage.json").read_text())
        return StageOutput(stage, key, d, meta, reused=True)

    def save(
        self,
        result: StageResult,
        key: str,
        *,
        complete: bool = True,
        inputs: list[str] | None = None,
    ) -> StageOutput:
        """Write a StageResult durably; mark it complete unless ``complete`` is False."""
        final = self.root / f"{result.stage}-{key}"
        tmp = self.root / f".tmp-{os.getpid()}-{result.stage}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            hashes = {}
            tables = dict(result.outputs)
            tables["dropped"] = check_table(result.dropped, DROPPED, "dropped")
            tables["quarantine"] = check_table(result.quarantine, QUARANTINE, "quarantine")
            for name, table in tables.items():
                check_table(table, schema_for(name, table), f"{result.stage}/{name}")
                p = tmp / f"{name}.parquet"
                pq.write_table(table, p)
                fsync_file(p)
                hashes[name] = file_hash(p)
            meta = {
                "stage": result.stage,
                "key": key,
                "tables": list(result.outputs),
                "inputs": list(inputs or []),
                "counts": result.counts.to_dict(),
                "info": result.info,
                "files": hashes,
                "output_hash": stable_hash([hashes[n] for n in result.outputs], length=32),
            }
            (tmp / "stage.json").write_text(json.dumps(meta, indent=2, default=str))
            fsync_file(tmp / "stage.json")
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            if complete:
                (final / COMPLETE).write_text("ok\n")
                fsync_file(final / COMPLETE)
            dfd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return StageOutput(result.stage, key, final, meta, reused=False)
