"""Exports of a published version (issue 15): trl-dpo, trl-kto, rm-multi and ranked, as
pure functions and through `prefcurate export` (own folder, manifest, idempotent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pytest

from pipeline.hashing import file_hash
from pipeline.store import datasets as store
from pipeline.store import export as ex
from schemas.config import load_config
from schemas.errors import StoreError

REPO = Path(__file__).resolve().parents[2]


def _msg(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _pair(pid, c, r, w, sc=None, sr=None, margin=1.0):
    return dict(
        prompt=_msg("user", f"question {pid}"),
        chosen=_msg("assistant", f"answer {c}"),
        rejected=_msg("assistant", f"answer {r}"),
        margin=margin,
        weight=w,
        prompt_id=pid,
        pair_id=f"{pid}:{c}>{r}",
        chosen_id=c,
        rejected_id=r,
        score_chosen=sc,
        score_rejected=sr,
    )


@pytest.fixture
def data() -> pa.Table:
    # prompt p: g > m, g > b, m > b (all pairs of three); prompt q: one pair
    return pa.Table.from_pylist(
        [
            _pair("p", "g", "m", 0.9, 0.9, 0.5, 0.5),
            _pair("p", "g", "b", 0.7, 0.9, 0.1, 2.0),
            _pair("p", "m", "b", 0.6, 0.5, 0.1, 1.0),
            _pair("q", "c", "r", 1.0, None, None),
        ]
    )


def test_kto_labels_each_response_once_by_its_pairs(data):
    kto, info = ex.convert(data, "trl-kto")
    rows = {(r["prompt_id"], r["candidate_id"]): r for r in kto.to_pylist()}
    # m is chosen once and rejected once: no label it deserves, left out and counted
    assert set(rows) == {("p", "g"), ("p", "b"), ("q", "c"), ("q", "r")}
    assert info == {"ambiguous": 1}
    assert rows[("p", "g")]["label"] is True and rows[("p", "b")]["label"] is False
    assert rows[("p", "g")]["weight"] == pytest.approx((0.9 + 0.7) / 2)
    assert rows[("p", "b")]["weight"] == pytest.approx((0.7 + 0.6) / 2)
    assert (rows[("p", "g")]["n_chosen"], rows[("p", "g")]["n_rejected"]) == (2, 0)
    assert rows[("q", "r")]["completion"] == _msg("assistant", "answer r")
    assert kto.schema.equals(ex.TRL_KTO)


def test_rm_multi_groups_every_rejected_under_its_chosen(data):
    rm = {(r["prompt_id"], r["chosen_id"]): r for r in ex.to_rm_multi(data).to_pylist()}
    assert set(rm) == {("p", "g"), ("p", "m"), ("q", "c")}
    g = rm[("p", "g")]
    assert g["rejected_ids"] == ["m", "b"] and g["margins"] == [0.5, 2.0]
    assert [x[0]["content"] for x in g["rejected"]] == ["answer m", "answer b"]
    assert rm[("p", "m")]["rejected_ids"] == ["b"]


def test_ranked_orders_by_score_and_falls_back_to_wins(data):
    ranked = {r["prompt_id"]: r for r in ex.to_ranked(data).to_pylist()}
    p = ranked["p"]
    assert p["candidate_ids"] == ["g", "m", "b"] and p["scores"] == [0.9, 0.5, 0.1]
    assert p["ranks"] == [1, 2, 3]
    assert [x[0]["content"] for x in p["responses"]] == ["answer g", "answer m", "answer b"]
    # no aggregated scores on q: wins minus losses over its pairs
    assert ranked["q"]["candidate_ids"] == ["c", "r"] and ranked["q"]["scores"] == [1.0, -1.0]


def test_unknown_format_is_refused(data):
    with pytest.raises(StoreError, match="unknown export format 'kto'"):
        ex.convert(data, "kto")


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> tuple[Path, str]:
    from flows.curate import curate

    root = tmp_path_factory.mktemp("export")
    cfg = load_config(REPO / "data/examples/pairs_votes.yaml", [f"data_root={root}"])
    summary = curate(cfg.model_dump(mode="json"))
    return root, f"{summary['name']}@v{summary['version']}"


@pytest.mark.parametrize("fmt", ex.FORMATS)
def test_export_writes_its_own_folder_and_manifest(version, fmt):
    root, ref = version
    v = store.resolve(root, ref)
    before = store.verify_version(v.path)
    res = ex.export_version(root, ref, fmt)
    path = Path(res["path"])
    assert res["created"] and path == v.path.parent / "exports" / f"v{v.version}-{fmt}"
    man = json.loads((path / "manifest.json").read_text())
    assert man["source"]["ref"] == ref and man["format"] == fmt
    assert man["source"]["content_key"] == store.read_manifest(v.path)["content_key"]
    for rel, sha in man["files"].items():
        assert file_hash(path / rel) == sha
    table = pl.read_parquet(path / "data.parquet")
    ds = datasets.load_from_disk(str(path / "data"))
    assert table.height == ds.num_rows == man["rows"] > 0
    assert table.columns == ex.SCHEMAS[fmt].names
    # the source version is untouched and still verifies
    assert store.verify_version(v.path) == before == []
    # idempotent: the same export again writes nothing
    again = ex.export_version(root, ref, fmt)
    assert again["created"] is False and again["path"] == res["path"]
    assert again["created_at"] == man["created_at"]


def test_kto_export_covers_every_published_response(version):
    root, ref = version
    v = store.resolve(root, ref)
    data = pl.read_parquet(v.path / "data.parquet")
    res = ex.export_version(root, ref, "trl-kto")
    kto = pl.read_parquet(Path(res["path"]) / "data.parquet")
    responses = set(zip(data["prompt_id"], data["chosen_id"])) | set(
        zip(data["prompt_id"], data["rejected_id"])
    )
    assert kto.height + res["ambiguous"] == len(responses)
    chosen = set(zip(data["prompt_id"], data["chosen_id"]))
    for r in kto.iter_rows(named=True):
        if r["label"]:
            assert (r["prompt_id"], r["candidate_id"]) in chosen


def test_cli_export_json_is_one_document(version):
    root, ref = version
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "export",
        ref,
        "--format",
        "rm-multi",
        "--root",
        str(root),
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["format"] == "rm-multi" and Path(doc["path"]).is_dir()
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", ref, "--format", "nope", "--root", str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode != 0 and "unknown export format 'nope'" in bad.stderr
