"""Duplicate and contradictory pairs are one pair (the reliability probe's D2): identical
rows without ids, the same content under two ids, and the same pair with chosen and
rejected swapped used to be published as three pairs at weight 0.9-1.0."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.chain import run_core_chain
from pipeline.ingest.stage import ingest_pairs
from schemas.config import load_config


def write(tmp: Path, rows: list[dict]) -> Path:
    p = tmp / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_duplicates_and_swaps_become_one_pair_with_pooled_votes(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        [
            {"prompt": "P?", "chosen": "X", "rejected": "Y"},
            {"prompt": "P?", "chosen": "X", "rejected": "Y"},
            {
                "id": "b",
                "prompt": "P?",
                "chosen": "X",
                "rejected": "Y",
                "votes": [{"annotator": "ann", "preferred": "chosen"}],
            },
            {"prompt": "P?", "chosen": "Y", "rejected": "X"},
            {"prompt": "Q?", "chosen": "X", "rejected": "Y"},
        ],
    )
    res = ingest_pairs(f)
    assert res.counts.kept == 2 and res.counts.dropped == {"duplicate_pair": 3}
    details = res.dropped.column("detail").to_pylist()
    assert sum("swapped" in d for d in details) == 1
    first = res.outputs["prompts"].column("source_id").to_pylist()[0]
    assert all(f"source_id {first}" in d for d in details)
    votes = res.outputs["votes"].to_pylist()
    on_p = [v for v in votes if v["source_id"] == first]
    assert len(on_p) == 5  # four label votes (one against) and ann's vote, on one pair
    assert len({(v["candidate_a"], v["candidate_b"]) for v in on_p}) == 1
    verdicts = sorted(v["verdict"] for v in on_p if v["annotator"] == "d")
    assert verdicts.count(verdicts[0]) in (1, 3)  # 3 one way, the swapped row the other


def test_one_published_pair_per_distinct_pair(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        [{"prompt": "P?", "chosen": "X", "rejected": "Y"}] * 2
        + [{"prompt": "P?", "chosen": "Y", "rejected": "X"}],
    )
    ing = ingest_pairs(f)
    cfg = load_config(None, ["input.kind=pairs", "judge.judges=[]"])
    chain = run_core_chain(ing.outputs["votes"], cfg, label_annotators={"d"}, label_source="d")
    assert chain.margins.outputs["pairs"].num_rows == 1
    # 2 votes for X, 1 for Y from the same file: kept or dropped, never trained both ways
    assert chain.denoise.outputs["pairs"].num_rows <= 1
