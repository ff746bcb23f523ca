"""`prefcurate review export` / `import` end to end against a real Label Studio server:
two people answer in Label Studio, the answers come back as votes and a new version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from ls_server import label_studio  # noqa: F401  (the session fixture)
from test_review import _fake_cfg

from flows.curate import curate
from pipeline.store import datasets as store

REPO = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # --json: one JSON document and nothing else


def test_review_round_trip_through_label_studio(tmp_path, examples, label_studio):  # noqa: F811
    cfg = _fake_cfg(tmp_path, examples, "name=ls-review")  # test_review's fake run
    first = curate(cfg.model_dump(mode="json"))
    ref = f"ls-review@v{first['version']}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.admin_token,
    }
    root = ["--root", str(tmp_path)]
    sent = _cli(["review", "export", ref, *root, "--budget", "3", "--overlap", "2"], env)
    assert sent["project_created"] and 0 < sent["sent"] <= 3
    again = _cli(["review", "export", ref, *root, "--budget", "3"], env)
    assert again["project_id"] == sent["project_id"] and again["sent"] == 0
    # the admin and the reviewer both prefer the version's rejected response
    admin, reviewer = label_studio.client(), label_studio.client(label_studio.reviewer_token)
    tasks = admin.export_tasks(sent["project_id"])
    assert len(tasks) == sent["sent"]
    for t in tasks:
        d = t["data"]
        assert d["version"] == ref and d["order"] in ("ab", "ba")
        pick = "B" if d["order"] == "ab" else "A"
        result = [
            {
                "from_name": "verdict",
                "to_name": "a",
                "type": "choices",
                "value": {"choices": [pick]},
            }
        ]
        admin.add_annotation(t["id"], result)
        reviewer.add_annotation(t["id"], result)
    res = _cli(["review", "import", ref, *root, "--anchor"], env)
    assert res["votes"] == 2 * sent["sent"] and res["humans"] == 2
    assert res["unanswered_pairs"] == 0
    humans = {f"human:{label_studio.admin_id}", f"human:{label_studio.reviewer_id}"}
    votes = pl.read_parquet(res["votes_path"])
    assert set(votes["annotator"]) == humans
    cur = res["curation"]
    assert cur["created"] and cur["version"] == first["version"] + 1
    m = store.read_manifest(cur["path"])
    assert m["stage_info"]["aggregate"]["gold"]["comparisons"] == sent["sent"]
    assert m["stages"]["review"]["kept"] == 2 * sent["sent"]
    # importing again doubles nothing and publishes nothing new
    twice = _cli(["review", "import", ref, *root, "--anchor"], env)
    assert twice["votes"] == res["votes"] and not twice["curation"]["created"]
    # the token is in no file the pipeline wrote
    token = label_studio.admin_token
    for f in Path(tmp_path).rglob("*"):
        if f.is_file() and "prefect" not in f.parts:
            assert token.encode() not in f.read_bytes(), f
