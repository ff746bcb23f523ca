"""The curate flow end to end with the fake engine: accounting, resume, pairs without models,
and the CLI. The real-engine run is in test_engine_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest
from fake_run import FAKE_RUN

from flows.curate import curate
from pipeline.store import datasets as store
from schemas.config import load_config
from schemas.errors import ConfigError


def _fake_cfg(tmp_path: Path, examples: Path, *extra: str):
    return load_config(
        None,
        [
            *FAKE_RUN,
            f"data_root={tmp_path}",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=4",
            *extra,
        ],
    )


def _check_accounting(manifest: dict) -> None:
    for stage, c in manifest["stages"].items():
        assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values()), (
            stage
        )


def test_fake_run_publishes_and_accounts(tmp_path, examples):
    summary = curate(_fake_cfg(tmp_path, examples).model_dump(mode="json"))
    assert summary["created"] and summary["version"] == 1
    vpath = Path(summary["path"])
    manifest = store.read_manifest(vpath)
    _check_accounting(manifest)
    assert manifest["stage_order"] == [
        "ingest",
        "dedup",
        "decontaminate",
        "generate",
        "verify",
        "judge",
        "embed",
        "aggregate",
        "margins",
        "denoise",
        "pairs",
    ]
    assert manifest["stages"]["generate"]["in"] == 4 * 4
    # judge: 4 prompts x C(4,2)=6 pairs, x2 orders
    assert manifest["stages"]["judge"]["out"] == 4 * 6 * 2
    assert store.verify_version(vpath) == []
    ds = datasets.load_from_disk(str(vpath / "data"))
    assert ds.num_rows == summary["rows"] == manifest["rows"]["data"]
    dropped = pl.read_parquet(vpath / "dropped.parquet")
    # every dropped row names its stage and reason
    assert dropped["reason"].null_count() == 0 and dropped["stage"].null_count() == 0
    # ... by the name the manifest uses for it
    assert set(dropped["stage"].to_list()) <= set(manifest["stage_order"])
    for row in ds:
        assert row["chosen"] != row["rejected"]
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == "assistant"
        assert 0.5 < row["p_hat"] <= 1 and row["margin"] >= 0


def test_rerun_reuses_everything_and_publishes_nothing(tmp_path, examples):
    cfg = _fake_cfg(tmp_path, examples).model_dump(mode="json")
    first = curate(cfg)
    second = curate(cfg)
    assert second["created"] is False
    assert second["version"] == first["version"] == 1
    assert all(c["reused"] for c in second["stages"].values())
    assert store.list_versions(tmp_path, "fake-run") == [1]
    # a config change downstream of generation reuses generate and judge, not margins
    third = curate({**cfg, "margins": {**cfg["margins"], "lam": 2.0}})
    assert third["created"] and third["version"] == 2
    assert third["stages"]["generate"]["reused"] and third["stages"]["judge"]["reused"]
    assert not third["stages"]["margins"]["reused"]


@pytest.mark.parametrize(
    "module, stage",
    [
        ("pipeline.aggregate.aggregation", "aggregate"),
        ("pipeline.annotate.injection", "margins"),  # a function the margins task also calls
    ],
)
def test_bumping_a_stage_version_reruns_it_and_what_depends_on_it(
    tmp_path, examples, monkeypatch, module, stage
):
    import importlib

    cfg = _fake_cfg(tmp_path, examples).model_dump(mode="json")
    first = curate(cfg)
    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, "STAGE_VERSION", mod.STAGE_VERSION + 1)
    again = curate(cfg)
    order = list(again["stages"])
    i = order.index(stage)
    assert all(again["stages"][s]["reused"] for s in order[:i]), again["stages"]
    assert not again["stages"][stage]["reused"]
    assert again["stages"][stage]["key"] != first["stages"][stage]["key"]
    # a stage after it runs again unless its inputs are byte-identical to last time
    # (a content hash): then the same key, and its finished output is the right one
    for s in order[i + 1 :]:
        same_key = again["stages"][s]["key"] == first["stages"][s]["key"]
        assert again["stages"][s]["reused"] == same_key, s


def test_model_calls_resume_after_lost_stage_outputs(tmp_path, examples):
    """Stage folders deleted (as after a crash before the marker): calls come from cache."""
    cfg = _fake_cfg(tmp_path, examples).model_dump(mode="json")
    first = curate(cfg)
    assert first["calls"]["generate"]["made"] == 4
    import shutil

    shutil.rmtree(tmp_path / "runs")
    second = curate(cfg)
    g = second["calls"]["generate"]
    assert (g["requests"], g["reused"], g["made"], g["failed"]) == (4, 4, 0, 0)
    # every token of the first run's generation is a token the cache saved
    g1 = first["calls"]["generate"]
    assert (g["prompt_tokens"], g["output_tokens"]) == (0, 0)
    assert (g["saved_prompt_tokens"], g["saved_output_tokens"]) == (
        g1["prompt_tokens"],
        g1["output_tokens"],
    )
    assert g1["output_tokens"] > 0
    assert second["calls"]["judge"]["made"] == 0
    assert second["version"] == 1 and second["created"] is False


def test_pairs_with_votes_loads_no_model(tmp_path, examples):
    cfg = load_config(examples / "pairs_votes.yaml", [f"data_root={tmp_path}"])
    summary = curate(cfg.model_dump(mode="json"))
    assert summary["models_called"] == []
    assert summary["calls"] == {}
    assert summary["rows"] >= 1
    manifest = store.read_manifest(summary["path"])
    _check_accounting(manifest)
    assert "generate" not in manifest["stages"] and "judge" not in manifest["stages"]
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    assert {"prompt", "chosen", "rejected", "margin", "weight", "p_hat", "source_id"} <= set(
        ds.column_names
    )


def test_cli_run_json_and_datasets(tmp_path, examples):
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--config",
        str(examples / "pairs_votes.yaml"),
        "--set",
        f"data_root={tmp_path}",
        "--json",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert Path(summary["path"]).is_dir() and summary["version"] == 1
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "datasets",
            "show",
            "example-pairs@v1",
            "--root",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    assert info["integrity_problems"] == [] and info["version"] == 1
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "datasets", "list", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(res.stdout) == [{"name": "example-pairs", "versions": [1], "latest": 1}]


def test_cli_rejects_unknown_key_with_hint(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--set", "input.limt=2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "did you mean 'input.limit'" in res.stderr


def test_bad_input_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--set",
            f"input.path={bad}",
            "--set",
            f"data_root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 2
    assert "bad.jsonl" in res.stderr and "Traceback" not in res.stderr


def test_gpm_annotator_and_budgeted_selection(tmp_path, examples):
    cfg = _fake_cfg(tmp_path, examples, "gpm.enabled=true", "select.budget=0.5")
    summary = curate(cfg.model_dump(mode="json"))
    manifest = store.read_manifest(summary["path"])
    _check_accounting(manifest)
    order = manifest["stage_order"]
    assert order.index("gpm") < order.index("aggregate_gpm") < order.index("margins")
    assert order[-1] == "select"
    # the GPM votes on every pair of every prompt's candidates: 4 prompts x C(4,2)
    assert manifest["stage_info"]["aggregate_gpm"]["annotators"]["gpm"]["votes"] == 4 * 6
    assert "cyclic" in manifest["stage_info"]["margins"]
    sel = manifest["stages"]["select"]
    assert (
        sel["kept"] == summary["rows"]
        and sel["dropped"].get("budget", 0) == sel["in"] - sel["kept"]
    )
    dropped = pl.read_parquet(Path(summary["path"]) / "dropped.parquet")
    assert (dropped["reason"] == "budget").sum() == sel["dropped"].get("budget", 0)


def test_best_worst_pair_selection_by_rubric_first_signal(tmp_path, examples):
    cfg = _fake_cfg(
        tmp_path,
        examples,
        "judge.pair_selection=best_worst",
        "rubrics.judges=[{name: r, model: {engine: fake, model: fake-r}}]",
    )
    summary = curate(cfg.model_dump(mode="json"))
    manifest = store.read_manifest(summary["path"])
    _check_accounting(manifest)
    order = manifest["stage_order"]
    assert order.index("rubric") < order.index("judge")  # the signal comes first
    judge = manifest["stages"]["judge"]
    # 4 prompts x C(4,2)=6 pairs: at most one judged per prompt, the rest dropped with reason
    assert (
        judge["kept"] <= 4
        and judge["kept"]
        + judge["dropped"].get("first_signal", 0)
        + judge["dropped"].get("over_budget", 0)
        == 24
    )
    assert judge["out"] == judge["kept"] * 2  # both orders
    assert summary["calls"]["judge"]["made"] == judge["kept"] * 2


def test_best_worst_without_signal_is_a_config_error(tmp_path, examples):

    # refused when the config is loaded, before Prefect starts or a model is called
    with pytest.raises(ConfigError, match="first signal"):
        _fake_cfg(tmp_path, examples, "judge.pair_selection=best_worst")
    assert not (tmp_path / "runs").exists()


def test_judge_samples_give_one_vote_each(tmp_path, examples):
    cfg = _fake_cfg(
        tmp_path, examples, "judge.judges.0.samples=3", "judge.judges.0.temperature=0.7"
    )
    summary = curate(cfg.model_dump(mode="json"))
    manifest = store.read_manifest(summary["path"])
    judge = manifest["stages"]["judge"]
    assert judge["out"] == judge["kept"] * 2 * 3  # pairs x orders x samples
    assert summary["calls"]["judge"]["made"] == judge["kept"] * 2  # one call per order


def test_reward_model_stage_in_the_flow(tmp_path, examples):
    """A (tiny, locally built) reward model scores every candidate through the transformers
    path and serves as the first signal for best/worst judging."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_reward_model

    rm = build_tiny_reward_model(tmp_path / "rm", num_labels=1)
    cfg = _fake_cfg(
        tmp_path,
        examples,
        "judge.pair_selection=best_worst",
        f"rewards.models=[{{model: '{rm}', engine: transformers, name: tiny-rm}}]",
    )
    summary = curate(cfg.model_dump(mode="json"))
    manifest = store.read_manifest(summary["path"])
    _check_accounting(manifest)
    reward = manifest["stages"]["reward"]
    assert reward["in"] == 16 and reward["out"] == 16  # 4 prompts x 4 candidates, one head
    assert manifest["stage_order"].index("reward") < manifest["stage_order"].index("judge")
    assert manifest["stages"]["judge"]["kept"] <= 4
    again = curate(cfg.model_dump(mode="json"))
    assert again["created"] is False and again["stages"]["reward"]["reused"]


def _gpm_cfg(tmp_path: Path, examples: Path, *extra: str) -> dict:
    """Active judging in two rounds: 2 of each prompt's 6 pairs, then 2 more chosen by GPM."""
    return _fake_cfg(
        tmp_path,
        examples,
        *extra,
        "judge.pair_selection=gpm",
        "judge.max_pairs_per_prompt=4",
        "judge.seed_pairs_per_prompt=2",
        "gpm.epochs=3",
    ).model_dump(mode="json")


def test_gpm_guided_judging_in_two_rounds(tmp_path, examples):
    """pair_selection gpm: round 1 judges 2 of each prompt's 6 pairs, a GPM head trained on
    them picks 2 more for round 2; the other 2 are dropped first_signal. Every pair is
    accounted for, the rerun makes no call."""
    cfg = _gpm_cfg(tmp_path, examples)
    summary = curate(cfg)
    manifest = store.read_manifest(Path(summary["path"]))
    _check_accounting(manifest)
    order = manifest["stage_order"]
    assert (
        order.index("judge")
        < order.index("aggregate_seed")
        < order.index("judge_gpm")
        < order.index("aggregate")
    )
    r1, r2 = manifest["stages"]["judge"], manifest["stages"]["judge_gpm"]
    assert (r1["in"], r1["kept"], r1["dropped"]) == (24, 8, {"gpm_round": 16})
    # round 2 sees the 16 unjudged pairs, judges 2 per prompt, skips the confident rest
    assert (r2["in"], r2["kept"], r2["dropped"]) == (16, 8, {"first_signal": 8})
    assert r1["out"] == r2["out"] == 8 * 2  # two orders per pair, one judge
    assert manifest["stages"]["aggregate"]["in"] == 32  # both rounds' votes
    dropped = pl.read_parquet(Path(summary["path"]) / "dropped.parquet")
    assert "judge_gpm" in set(dropped["stage"].to_list()) <= set(manifest["stage_order"])
    info = manifest["stage_info"]["judge_gpm"]
    assert (
        info["selected"] == 8 and info["mean_certainty_selected"] <= info["mean_certainty_skipped"]
    )
    assert summary["calls"]["judge"]["made"] == summary["calls"]["judge_gpm"]["made"] == 16
    again = curate(cfg)
    assert not again["created"] and all(c["reused"] for c in again["stages"].values())
    with pytest.raises(ConfigError, match="needs embeddings"):
        _fake_cfg(tmp_path, examples, "judge.pair_selection=gpm", "embed.enabled=false")
    for extra in ("gpm.enabled=true", "select.budget=0.5"):
        with pytest.raises(ConfigError, match="needs embeddings"):
            _fake_cfg(tmp_path, examples, extra, "embed.enabled=false")
        assert _fake_cfg(tmp_path, examples, extra, "input.kind=pairs").embeddings_on()


def test_gpm_round_two_judges_beside_the_default_yesno_rubric(tmp_path, examples):
    """The default (auto) Yes/No rubric judge votes on every pair of a prompt, and its votes
    train round 2's head; they are not pairwise judgements, so round 2 still judges the pairs
    round 1's pairwise judge did not (a bug made it judge none)."""
    cfg = _gpm_cfg(tmp_path, examples, "rubrics.judges=null")
    summary = curate(cfg)
    manifest = store.read_manifest(Path(summary["path"]))
    _check_accounting(manifest)
    assert manifest["stages"]["rubric"]["out"] > 0  # the Yes/No judge ran
    r2 = manifest["stages"]["judge_gpm"]
    assert (r2["in"], r2["kept"], r2["dropped"]) == (16, 8, {"first_signal": 8})
    assert summary["calls"]["judge_gpm"]["made"] == 16
    assert manifest["stage_info"]["judge_gpm"]["already_judged"] == 8
