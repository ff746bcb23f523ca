"""Tests for pipeline.store.datasets: names, publish/dedup, loading, integrity, atomicity,
concurrency."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.store import datasets as store
from pipeline.store import publish as publisher
from schemas.errors import SchemaError, StoreError
from schemas.tables import DROPPED, PUBLISHED, QUARANTINE, from_rows, schema_fingerprint

REPO = Path(__file__).resolve().parents[2]


def _msgs(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _pair(i: int) -> dict:
    return {
        "prompt": _msgs("user", f"question {i}?"),
        "chosen": _msgs("assistant", f"good answer {i}"),
        "rejected": _msgs("assistant", f"bad answer {i}"),
        "margin": 1.5,
        "weight": 0.9,
        "p_hat": 0.8,
        "disagreement": 0.2,
        "n_votes": 4,
        "score_chosen": 7.0,
        "score_rejected": None,
        "source_id": f"src-{i}",
        "prompt_id": f"p{i}",
        "pair_id": f"pair{i}",
        "chosen_id": f"c{i}",
        "rejected_id": f"r{i}",
        "chosen_policy": "model-a",
        "rejected_policy": "model-b",
        "label_status": "agree",
        "decision": "keep",
        "flipped": False,
        "flags": ["plurality"] if i % 2 else [],
    }


def _tables(n: int = 3) -> dict[str, pa.Table]:
    return {
        "data": from_rows([_pair(i) for i in range(n)], PUBLISHED, "published"),
        "dropped": from_rows(
            [
                {
                    "stage": "pairs",
                    "source_id": "src-9",
                    "row_id": "pair9",
                    "reason": "tie",
                    "detail": None,
                }
            ],
            DROPPED,
            "dropped",
        ),
        "quarantine": from_rows(
            [
                {
                    "source_id": "src-8",
                    "file": "in.jsonl",
                    "row": 8,
                    "stage": "ingest",
                    "reason": "bad_json",
                    "detail": "eof",
                    "raw": "{",
                }
            ],
            QUARANTINE,
            "quarantine",
        ),
    }


def _publish(root: Path, key: str, name: str = "dpo", n: int = 3) -> store.VersionRef:
    return publisher.publish_version(
        root,
        name,
        **_tables(n),
        card=f"# {name}\n\nkey {key}\n",
        manifest={"config_hash": "cfg", "stages": {"pairs": {"in": n}}},
        content_key=key,
    )


def _tmp_dirs(root: Path, name: str = "dpo") -> list[Path]:
    return list((root / "datasets" / name).glob(".tmp-*"))


# ---------------------------------------------------------------------------- names / refs


@pytest.mark.parametrize(
    "bad", ["../x", "/abs", "a/b", "..", "", ".hidden", "-x", "a..b", "a b", "x" * 101, "a@v1", "é"]
)
def test_validate_name_rejects(bad):
    with pytest.raises(StoreError, match=r"\[A-Za-z0-9._-\]"):
        store.validate_name(bad)


@pytest.mark.parametrize("good", ["dpo", "hh-rlhf", "ultra_feedback.v2", "A1", "x" * 100, "7"])
def test_validate_name_accepts(good):
    assert store.validate_name(good) == good


def test_publish_rejects_bad_name_and_writes_nothing(tmp_path):
    with pytest.raises(StoreError):
        _publish(tmp_path, "k", name="../escape")
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "datasets").exists()


# ---------------------------------------------------------------------------- publish


def test_publish_versions_dedup_and_manifest(tmp_path):
    v1 = _publish(tmp_path, "key-1")
    assert (v1.name, v1.version, v1.created) == ("dpo", 1, True)
    assert v1.path == tmp_path / "datasets" / "dpo" / "v1" and v1.ref == "dpo@v1"

    m1 = store.read_manifest(v1.path)
    assert m1["name"] == "dpo" and m1["version"] == 1 and m1["parent_version"] is None
    assert m1["content_key"] == "key-1"
    assert m1["config_hash"] == "cfg" and m1["stages"] == {"pairs": {"in": 3}}
    assert datetime.fromisoformat(m1["created_at"]).utcoffset().total_seconds() == 0
    assert m1["schema_fingerprints"] == {
        "data": schema_fingerprint(PUBLISHED),
        "dropped": schema_fingerprint(DROPPED),
        "quarantine": schema_fingerprint(QUARANTINE),
    }
    assert m1["rows"] == {"data": 3, "dropped": 1, "quarantine": 1}
    listed = set(m1["files"])
    assert {
        "data.parquet",
        "dropped.parquet",
        "quarantine.parquet",
        "README.md",
        "data/dataset_info.json",
        "data/state.json",
    } <= listed
    assert any(f.startswith("data/") and f.endswith(".arrow") for f in listed)
    assert "manifest.json" not in listed
    assert (v1.path / "README.md").read_text() == "# dpo\n\nkey key-1\n"

    v2 = _publish(tmp_path, "key-2", n=2)
    assert (v2.version, v2.created) == (2, True)
    assert store.read_manifest(v2.path)["parent_version"] == 1

    again1 = _publish(tmp_path, "key-1")
    again2 = _publish(tmp_path, "key-2")
    assert (again1.version, again1.created, again1.path) == (1, False, v1.path)
    assert (again2.version, again2.created) == (2, False)
    assert store.list_versions(tmp_path, "dpo") == [1, 2]
    assert sorted(p.name for p in (tmp_path / "datasets" / "dpo").iterdir()) == [
        ".lock",
        "v1",
        "v2",
    ]


def test_published_files_are_read_only(tmp_path):
    v = _publish(tmp_path, "k")
    files = [p for p in v.path.rglob("*") if p.is_file()]
    assert files and all(
        not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) for p in files
    )


def test_published_data_loads_with_datasets_and_polars(tmp_path):
    import datasets
    import polars as pl

    v = _publish(tmp_path, "k", n=3)
    ds = datasets.load_from_disk(str(v.path / "data"))
    assert ds.num_rows == 3
    assert {"prompt", "chosen", "rejected", "margin", "weight"} <= set(ds.column_names)
    assert ds[0]["prompt"] == _msgs("user", "question 0?")
    assert ds[0]["chosen"] == _msgs("assistant", "good answer 0")
    assert ds[1]["flags"] == ["plurality"] and ds[0]["score_rejected"] is None

    df = pl.read_parquet(v.path / "data.parquet")
    assert df.height == 3 and df.columns == PUBLISHED.names
    assert pl.scan_parquet(v.path / "dropped.parquet").collect()["reason"].to_list() == ["tie"]
    assert pl.read_parquet(v.path / "quarantine.parquet")["row"].to_list() == [8]

    hub = datasets.load_dataset(
        "parquet",
        data_files=str(v.path / "data.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert hub.num_rows == 3 and hub[2]["rejected"] == _msgs("assistant", "bad answer 2")


def test_publish_empty_tables(tmp_path):
    import datasets

    v = publisher.publish_version(
        tmp_path,
        "empty",
        data=PUBLISHED.empty_table(),
        dropped=DROPPED.empty_table(),
        quarantine=QUARANTINE.empty_table(),
        manifest={},
        card="",
        content_key="k0",
    )
    assert datasets.load_from_disk(str(v.path / "data")).num_rows == 0
    assert store.verify_version(v.path) == []


def test_publish_checks_schemas_before_writing(tmp_path):
    t = _tables()
    bad = t["data"].drop_columns(["margin"])
    with pytest.raises(SchemaError, match="margin"):
        publisher.publish_version(
            tmp_path,
            "dpo",
            data=bad,
            dropped=t["dropped"],
            quarantine=t["quarantine"],
            manifest={},
            card="",
            content_key="k",
        )
    assert not (tmp_path / "datasets").exists()


@pytest.mark.parametrize("manifest", [{"x": float("nan")}, {"p": Path("/x")}])
def test_publish_rejects_non_json_manifest(tmp_path, manifest):
    with pytest.raises(StoreError, match="manifest is not valid JSON"):
        publisher.publish_version(
            tmp_path, "dpo", **_tables(), manifest=manifest, card="", content_key="k"
        )
    assert store.list_versions(tmp_path, "dpo") == []


def test_store_keys_override_caller_keys(tmp_path):
    v = publisher.publish_version(
        tmp_path,
        "dpo",
        **_tables(),
        card="",
        content_key="k",
        manifest={"version": 99, "name": "other", "keep": True},
    )
    m = store.read_manifest(v.path)
    assert (m["version"], m["name"], m["keep"]) == (1, "dpo", True)


# ---------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("where", ["_write_parquet", "_make_read_only", "rename"])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, where):
    _publish(tmp_path, "k1")

    def boom(*a, **k):
        raise OSError("disk full (injected)")

    if where == "rename":
        monkeypatch.setattr(publisher.os, "rename", boom)
    else:
        monkeypatch.setattr(publisher, where, boom)
    with pytest.raises(OSError, match="injected"):
        _publish(tmp_path, "k2")
    monkeypatch.undo()
    assert store.list_versions(tmp_path, "dpo") == [1]
    assert _tmp_dirs(tmp_path) == []
    # The store is still usable and the failed key was not recorded.
    assert _publish(tmp_path, "k2").version == 2


# ---------------------------------------------------------------------------- integrity


def test_verify_version_detects_tampering(tmp_path):
    v = _publish(tmp_path, "k")
    assert store.verify_version(v.path) == []

    target = v.path / "data.parquet"
    target.chmod(0o644)
    with open(target, "r+b") as fh:
        fh.seek(10)
        byte = fh.read(1)
        fh.seek(10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    problems = store.verify_version(v.path)
    assert len(problems) == 1 and problems[0].startswith("data.parquet: sha256")

    (v.path / "README.md").unlink()
    (v.path / "data" / "extra.bin").write_bytes(b"x")
    problems = store.verify_version(v.path)
    assert "README.md: missing" in problems
    assert "data/extra.bin: not listed in the manifest" in problems


def test_verify_version_without_manifest(tmp_path):
    d = tmp_path / "datasets" / "dpo" / "v1"
    d.mkdir(parents=True)
    (problem,) = store.verify_version(d)
    assert "no manifest" in problem


# ---------------------------------------------------------------------------- listing / resolve


def test_listing_ignores_temp_lock_and_strays(tmp_path):
    assert store.list_datasets(tmp_path) == [] and store.list_versions(tmp_path, "dpo") == []
    _publish(tmp_path, "k1")
    _publish(tmp_path, "k2")
    _publish(tmp_path, "k", name="other")
    base = tmp_path / "datasets" / "dpo"
    for stray in [".tmp-deadbeef", "v0", "v01", "v3x", "notes"]:
        (base / stray).mkdir()
    (base / "v7").write_text("a file, not a version")
    (tmp_path / "datasets" / "only-temp" / ".tmp-1").mkdir(parents=True)
    assert store.list_versions(tmp_path, "dpo") == [1, 2]
    assert store.list_datasets(tmp_path) == ["dpo", "other"]


def test_resolve(tmp_path):
    _publish(tmp_path, "k1")
    _publish(tmp_path, "k2")
    latest = store.resolve(tmp_path, "dpo")
    assert (latest.name, latest.version, latest.created) == ("dpo", 2, False)
    assert latest.path == tmp_path / "datasets" / "dpo" / "v2"
    assert store.resolve(tmp_path, "dpo@v1").version == 1
    assert store.resolve(tmp_path, "dpo@1").path == tmp_path / "datasets" / "dpo" / "v1"

    with pytest.raises(StoreError, match=r"no version v3; existing versions: v1, v2"):
        store.resolve(tmp_path, "dpo@v3")
    with pytest.raises(StoreError, match=r"'nope' not found.*existing datasets: dpo"):
        store.resolve(tmp_path, "nope")
    for bad in ["dpo@", "dpo@vx", "dpo@v0", "../dpo@v1", "@v1"]:
        with pytest.raises(StoreError):
            store.resolve(tmp_path, bad)


# ---------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("workers,each", [(4, 3), (8, 5)])
def test_concurrent_publishers_get_distinct_versions(tmp_path, workers, each):
    root = tmp_path / "store"
    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import datasets  # pay the import before the start signal
        from test_store import _publish
        wid = int(sys.argv[1])
        Path({str(tmp_path)!r}, f"ready-{{wid}}").touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        for j in range({each}):
            ref = _publish(Path({str(root)!r}), f"worker{{wid}}-{{j}}")
            assert ref.created
            print(ref.version, flush=True)
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(w)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    n = workers * each
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < workers and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        go.touch()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    got = sorted(int(v) for out, _ in results for v in out.split())
    assert got == list(range(1, n + 1))
    assert store.list_versions(root, "dpo") == list(range(1, n + 1))
    keys = set()
    for v in range(1, n + 1):
        path = store.version_path(root, "dpo", v)
        assert store.verify_version(path) == []
        m = store.read_manifest(path)
        assert m["parent_version"] == (v - 1 if v > 1 else None)
        keys.add(m["content_key"])
    assert len(keys) == n
    assert _tmp_dirs(root) == []


def test_concurrent_same_content_key_publishes_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    # flock locks belong to the open file, so threads exclude each other like processes.
    with ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(lambda _: _publish(tmp_path, "same"), range(4)))
    assert sum(r.created for r in refs) == 1
    assert {r.version for r in refs} == {1}
    assert store.list_versions(tmp_path, "dpo") == [1] and _tmp_dirs(tmp_path) == []
