"""Diffs between published versions: pairs added / removed / changed decision, counts by
reason and the margin distribution shift, on versions that differ by one config change."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from fake_run import FAKE_RUN
from rich.console import Console
from scipy.stats import ks_2samp

from flows.curate import curate
from pipeline.store import datasets as store
from pipeline.store.diff import diff_versions, render_diff_terminal
from schemas.config import load_config
from schemas.errors import StoreError

EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "examples"


def _fake_cfg(root: Path) -> dict:
    return load_config(
        None,
        [
            *FAKE_RUN,
            f"data_root={root}",
            f"input.path={EXAMPLES / 'prompts.jsonl'}",
            "input.limit=4",
            # the vote rules: many pairs to diff (the posterior default publishes few
            # of a fake judge's pairs)
            "denoise.method=weights",
            "denoise.drop_below=0.5",
            "margins.p_source=votes",
        ],
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """fake-run@v1 (defaults) and @v2 (margins.lam 1 → 2, denoise.max_disagreement 1 → 0.6)."""
    root = tmp_path_factory.mktemp("diff-fake")
    cfg = _fake_cfg(root)
    assert curate(cfg)["version"] == 1
    v2 = curate(
        {
            **cfg,
            "margins": {**cfg["margins"], "lam": 2.0},
            "denoise": {**cfg["denoise"], "max_disagreement": 0.6},
        }
    )
    assert v2["version"] == 2 and v2["stages"]["generate"]["reused"]
    return root


@pytest.fixture(scope="module")
def example_root(tmp_path_factory) -> Path:
    """example-pairs@v1 flips contradicted pairs, @v2 keeps them as labelled (all_pairs, so
    that best_worst does not drop the kept ones as ties)."""
    root = tmp_path_factory.mktemp("diff-example")
    base = [
        f"data_root={root}",
        f"input.path={EXAMPLES / 'pairs_votes.jsonl'}",
        "pairs.strategy=all_pairs",
        "denoise.confidence_weights=false",
        "denoise.method=weights",
    ]  # the raw-vote rules decide (method posterior ignores them)
    for value in ("flip", "keep"):
        cfg = load_config(
            EXAMPLES / "pairs_votes.yaml", [*base, f"denoise.on_contradicted={value}"]
        )
        curate(cfg.model_dump(mode="json"))
    assert store.list_versions(root, "example-pairs") == [1, 2]
    return root


def _margins(root: Path, ref: str) -> list[float]:
    return pl.read_parquet(store.resolve(root, ref).path / "data.parquet")["margin"].to_list()


def test_config_change_diff(fake_root):
    d = diff_versions(fake_root, "fake-run@v1", "fake-run@v2")
    json.dumps(d, allow_nan=False)
    ma = store.read_manifest(store.resolve(fake_root, "fake-run@v1").path)
    mb = store.read_manifest(store.resolve(fake_root, "fake-run@v2").path)
    p = d["pairs"]
    # every pair of A and of B is accounted for exactly once
    same = p["unchanged"] + p["changed_decision"] + p["reoriented"]
    assert p["removed"] + same == ma["rows"]["data"] == d["a"]["rows"]
    assert p["added"] + same == mb["rows"]["data"] == d["b"]["rows"]
    # pairs B no longer has are explained by B's dropped table
    assert p["removed"] > 0
    assert "not in B (no drop record)" not in p["removed_reasons"]
    assert all(r["reason_in_b"] for r in p["removed_examples"])
    # counts by stage/reason: A, B and the delta, straight from the manifests
    rows = {r["reason"]: r for r in d["reasons"]["dropped"]}
    hd = mb["stages"]["denoise"]["dropped"]["high_disagreement"]
    assert rows["denoise/high_disagreement"] == {
        "reason": "denoise/high_disagreement",
        "a": 0,
        "b": hd,
        "delta": hd,
    }
    for r in rows.values():
        assert r["delta"] == r["b"] - r["a"]
    # margin shift against an independent computation
    a, b = _margins(fake_root, "fake-run@v1"), _margins(fake_root, "fake-run@v2")
    m = d["distributions"]["margin"]
    assert m["a"]["mean"] == pytest.approx(sum(a) / len(a))
    assert m["delta_mean"] == pytest.approx(sum(b) / len(b) - sum(a) / len(a))
    assert m["delta_median"] == pytest.approx(pl.Series(b).median() - pl.Series(a).median())
    ks = ks_2samp(a, b)
    assert m["ks_statistic"] == pytest.approx(ks.statistic)
    assert m["ks_pvalue"] == pytest.approx(ks.pvalue)
    assert m["delta_mean"] > 0  # λ doubled
    changed = {c["key"]: (c["a"], c["b"]) for c in d["config"]}
    assert changed == {"margins.lam": (1.0, 2.0), "denoise.max_disagreement": (1.0, 0.6)}


def test_identical_versions_have_an_empty_diff(fake_root):
    d = diff_versions(fake_root, "fake-run@v2", "fake-run@2")
    p = d["pairs"]
    assert (p["added"], p["removed"], p["changed_decision"], p["reoriented"]) == (0, 0, 0, 0)
    assert p["unchanged"] == d["a"]["rows"]
    assert all(r["delta"] == 0 for r in d["reasons"]["dropped"])
    assert d["distributions"]["margin"]["ks_statistic"] == 0.0 and d["config"] == []


def test_flip_vs_keep_changes_decisions_not_pairs(example_root):
    d = diff_versions(example_root, "example-pairs@v1", "example-pairs@v2")
    p = d["pairs"]
    # a flipped pair has a new pair_id but is the same comparison: changed, not removed+added
    assert (p["added"], p["removed"], p["changed_decision"]) == (0, 0, 3)
    assert p["decision_transitions"] == {"flip→keep": 3}
    assert {c["source_id"] for c in p["changed_examples"]} == {"pv-04", "pv-07", "pv-10"}
    assert all(c["pair_id_a"] != c["pair_id_b"] for c in p["changed_examples"])
    # kept as labelled, the contradicted pairs have p̂ < ½ and margin 0: the margin shifts down
    assert d["distributions"]["margin"]["delta_mean"] < 0
    assert d["config"] == [{"key": "denoise.on_contradicted", "a": "flip", "b": "keep"}]


def test_terminal_rendering_and_errors(fake_root):
    console = Console(record=True, width=160, file=io.StringIO())
    render_diff_terminal(diff_versions(fake_root, "fake-run@v1", "fake-run@v2"), console)
    text = console.export_text()
    for part in (
        "fake-run@v1",
        "fake-run@v2",
        "added",
        "removed",
        "changed decision",
        "denoise/high_disagreement",
        "margin quantiles",
        "KS D",
        "margins.lam",
    ):
        assert part in text
    with pytest.raises(StoreError, match="no version v9"):
        diff_versions(fake_root, "fake-run@v1", "fake-run@v9")
