"""Checks the CLI makes before Prefect starts or a model loads (the reliability probe's
D9): a missing model folder is named as such, in one line, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.preflight import _model_problem, check_models
from schemas.config import load_config
from schemas.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_model_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _model_problem("embedded:smollm2-135m-instruct") is None
    assert _model_problem(str(tmp_path)) is None  # an existing folder
    assert _model_problem(str(tmp_path / "nope")) == "no such folder"
    assert _model_problem("./models/x") == "no such folder"
    assert "not in the local Hugging Face cache" in _model_problem("nobody/no-such-model-x")


def test_check_models_names_the_field(tmp_path):
    cfg = load_config(
        None, [f"judge.judges.0.model.model={tmp_path / 'missing'}", "rubrics.judges=[]"]
    )
    with pytest.raises(ConfigError, match=r"judge\.judges\.0: model .*missing.*no such folder"):
        check_models(cfg)
    ok = load_config(
        None,
        [
            "judge.judges.0.model.engine=openai",
            "judge.judges.0.model.base_url=http://127.0.0.1:9/v1",
            "judge.judges.0.model.model=served-name",
            "rubrics.judges=[]",
        ],
    )
    check_models(ok)  # a served model is the server's business


def test_cli_refuses_a_missing_model_before_prefect_starts(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--set",
            f"data_root={tmp_path / 'd'}",
            "--set",
            f"judge.judges.0.model.model={tmp_path / 'no' / 'model'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-1000:]
    assert "no such folder" in res.stderr and res.stderr.count("\n") <= 3, res.stderr
    assert not (tmp_path / "d" / "runs").exists()  # before the flow: nothing written
