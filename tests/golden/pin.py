"""Pins a published version's rows as the golden run's expected output.

    python tests/golden/pin.py VERSION_DIR NAME

writes ``NAME.data.jsonl``, ``NAME.dropped.jsonl``, ``NAME.quarantine.jsonl`` (one JSON
object per row, in the published order; floats as Python's shortest round-trip repr, so
the comparison is exact) and ``NAME.counts.json`` (each stage's in / kept / dropped /
quarantined from the manifest) next to this file. A file path in a row is reduced to its
name, so the pins do not depend on where the checkout lies.

Re-pin only for an output change that is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TABLES = ("data", "dropped", "quarantine")


def rows(version: Path, table: str) -> list[dict]:
    out = pq.read_table(version / f"{table}.parquet").to_pylist()
    for r in out:
        if isinstance(r.get("file"), str):
            r["file"] = Path(r["file"]).name
    return out


def counts(version: Path) -> dict:
    stages = json.loads((version / "manifest.json").read_text())["stages"]
    keys = ("in", "kept", "dropped", "quarantined")
    return {s: {k: c[k] for k in keys} for s, c in stages.items()}


def main(version: Path, name: str) -> None:
    for t in TABLES:
        lines = [json.dumps(r, sort_keys=True) for r in rows(version, t)]
        (HERE / f"{name}.{t}.jsonl").write_text("".join(x + "\n" for x in lines))
    (HERE / f"{name}.counts.json").write_text(json.dumps(counts(version), indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
