"""The golden runs: two curations on shipped fixtures, compared row for row with the rows
the previous code path published.

The pins in ``tests/golden/`` were written (``tests/golden/pin.py``) from the CLI runs of
commit 4f80063, the code before issue 19: the row-by-row ingest, the per-row published
table, the stage store and publish as they were. Everything issue 19 changed for speed
(the columnar ingest, the vectorised hygiene, margins and pair building, the streaming
publish) must leave these rows unchanged: same kept rows in the same order, same dropped
and quarantine rows with their reasons, same per-stage counts, floats bit for bit.

- ``pairs``: ``data/examples/pairs_votes.yaml`` on ``tests/golden/pairs.jsonl`` (400
  pairs × 5 votes with repeats, swapped twins, message rows and five broken rows; made
  by ``tests/golden/make_pairs.py``), no model;
- ``fake``: the prompts path with the fake engine (generation, judging both orders,
  aggregation, margins, denoising, pairs) on ``data/examples/prompts.jsonl``.

A change that is meant to change the output re-pins (run the CLI, then ``pin.py``) and
says so in its commit.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fake_run import FAKE_RUN

from flows.curate import curate
from schemas.config import load_config

GOLDEN = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_pin", GOLDEN / "pin.py")
pin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pin)


def _pinned(name: str, table: str) -> list[dict]:
    text = (GOLDEN / f"{name}.{table}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _normal(row: dict) -> dict:
    """A row as the pin holds it: JSON types (tuples as lists), keys sorted."""
    return json.loads(json.dumps(row, sort_keys=True))


@pytest.mark.parametrize("name", ["pairs", "fake"])
def test_golden_run_publishes_the_previous_paths_rows(tmp_path, examples, name):
    if name == "pairs":
        config = examples / "pairs_votes.yaml"
        sets = [f"input.path={GOLDEN / 'pairs.jsonl'}"]
    else:
        config = None
        sets = [*FAKE_RUN, f"input.path={examples / 'prompts.jsonl'}"]
    cfg = load_config(config, [*sets, f"data_root={tmp_path}"])
    version = Path(curate(cfg.model_dump(mode="json"))["path"])
    assert pin.counts(version) == json.loads((GOLDEN / f"{name}.counts.json").read_text())
    for table in pin.TABLES:
        got = [_normal(r) for r in pin.rows(version, table)]
        want = _pinned(name, table)
        assert len(got) == len(want), table
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"{name} {table} row {i}: " + str(
                {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
            )
