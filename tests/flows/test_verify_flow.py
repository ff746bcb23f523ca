"""Verifiers through the product path: a pairs file with answer / tests / constraints
fields (data/examples/verifiable_pairs.yaml) curated by `curate` with no model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from flows.curate import curate
from pipeline.store import datasets as store
from schemas.config import load_config

REPO = Path(__file__).resolve().parents[2]
EX = REPO / "data" / "examples"


def test_verifiers_overrule_a_wrong_label(tmp_path: Path) -> None:
    cfg = load_config(
        EX / "verifiable_pairs.yaml",
        [f"data_root={tmp_path}", f"input.path={EX / 'verifiable_pairs.jsonl'}"],
    )
    out = curate(cfg.model_dump(mode="json"))
    df = pl.read_parquet(Path(out["path"]) / "data.parquet")
    decision = dict(zip(df["source_id"], df["decision"]))
    assert decision == {
        "vp-01": "keep",
        "vp-02": "flip",
        "vp-03": "keep",
        "vp-04": "flip",
        "vp-05": "keep",
        "vp-06": "flip",
    }
    manifest = store.read_manifest(Path(out["path"]))
    info = manifest["stage_info"]
    assert info["verify"]["votes"] == {"exact_answer": 3, "python_tests": 1, "constraints": 2}
    rel = info["aggregate"]["annotator_reliability"]
    assert rel["verifier:exact_answer"] > 0.9 and rel["verifiable_pairs"] < 0.7
    assert manifest["stages"]["denoise"]["dropped"] == {"low_confidence": 1}  # vp-07
    # every flipped pair now has the verified response as chosen
    flipped = df.filter(pl.col("decision") == "flip")
    texts = [m[-1]["content"] for m in flipped["chosen"].to_list()]
    assert any("42" in t for t in texts) and any("x * x" in t for t in texts)
