"""Security: safe YAML, dataset names inside the data root, secrets never written,
nothing from user input unpickled or evaluated."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.curate import curate
from pipeline.store import datasets as store
from schemas.config import load_config
from schemas.errors import ConfigError, StoreError

REPO = Path(__file__).resolve().parents[1]


def test_yaml_python_tags_are_rejected(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "..", "", "x" * 200])
def test_dataset_names_cannot_escape_the_root(tmp_path, name):
    with pytest.raises(StoreError):
        store.validate_name(name)
    with pytest.raises((StoreError, ConfigError)):
        curate(
            load_config(
                None,
                [
                    f"data_root={tmp_path}",
                    f"name={name}",
                    "input.kind=pairs",
                    f"input.path={REPO / 'data/examples/pairs_votes.jsonl'}",
                    "judge.judges=[]",
                ],
            ).model_dump(mode="json")
        )
    assert not (tmp_path.parent / "escape").exists()


def test_planted_api_key_never_written(tmp_path):
    """A key given through the environment reaches no file, log line or summary."""
    secret = "sk-planted-0123456789abcdef"
    sets = [
        f"data_root={tmp_path}",
        "name=secrets",
        "input.limit=2",
        f"input.path={REPO / 'data/examples/prompts.jsonl'}",
        "generate.policies.0.model.engine=fake",
        "generate.policies.0.model.api_key_env=PREFCURATE_TEST_API_KEY",
        "judge.judges.0.model.engine=fake",
        "judge.judges.0.model.api_key_env=PREFCURATE_TEST_API_KEY",
    ]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "-v",
            "--json",
            *[a for s in sets for a in ("--set", s)],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFCURATE_TEST_API_KEY": secret},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert secret not in res.stdout and secret not in res.stderr
    hits = [
        str(f) for f in tmp_path.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()
    ]
    assert hits == []
    manifest = store.read_manifest(store.resolve(tmp_path, "secrets").path)
    # the manifest names the variable, never its value
    assert (
        manifest["config"]["generate"]["policies"][0]["model"]["api_key_env"]
        == "PREFCURATE_TEST_API_KEY"
    )


def test_no_unsafe_deserialisation_or_eval_in_the_code():
    bad = re.compile(
        r"\b(pickle\.loads?|cloudpickle\.loads?|yaml\.load\(|yaml\.unsafe_load|"
        r"(?<![\w.])eval\(|(?<![\w.])exec\(|torch\.load\()"
    )
    offenders = []
    for d in ("pipeline", "flows", "schemas"):
        for f in (REPO / d).rglob("*.py"):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if bad.search(line):
                    offenders.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert offenders == []


def test_request_cache_names_a_served_model_by_its_server_without_credentials() -> None:
    """Two servers serving the same model name are different models to the request cache;
    credentials in the URL never reach the cache (keys and the stored model column)."""
    from pipeline.engines.base import ChatRequest
    from schemas.config import ModelSpec

    a = ModelSpec(model="m", engine="openai", base_url="http://alice:s3cret@10.0.0.1:8000/v1")
    b = ModelSpec(model="m", engine="openai", base_url="http://10.0.0.2:8000/v1")
    r = ChatRequest(messages=(("user", "hi"),))
    assert r.key("openai", a.cache_identity()) != r.key("openai", b.cache_identity())
    assert "s3cret" not in a.cache_identity() and "alice" not in a.cache_identity()
    # the local engine's identity is unchanged: caches from earlier runs stay valid
    assert ModelSpec(model="m").cache_identity() == "m"


def test_secrets_in_urls_and_engine_args_reach_no_file_nor_prefect(tmp_path):
    """Credentials in a base_url and secret-named engine_args keys: redacted in the
    manifest and the card, and Prefect's database (the flow's parameters) never holds them
    (the reliability probe's D3: both were there in clear)."""
    planted = ["sk-url-secret-456", "sk-engine-arg-789", "sk-nested-token-012"]
    m = "generate.policies.0.model"
    sets = [
        f"data_root={tmp_path / 'data'}",
        "name=secrets2",
        "input.kind=pairs",
        f"input.path={REPO / 'data/examples/pairs_votes.jsonl'}",
        "judge.judges=[]",
        f"{m}.engine=openai",
        f"{m}.base_url=http://alice:{planted[0]}@127.0.0.1:9/v1",
        f"{m}.engine_args={{api_key: {planted[1]}, extra: {{token: {planted[2]}}}}}",
    ]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--json",
            *[a for s in sets for a in ("--set", s)],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert any(f.suffix == ".db" or ".db-" in f.name for f in files)  # Prefect's database
    assert any(f.name == "manifest.json" for f in files)
    for secret in planted:
        assert secret not in res.stdout and secret not in res.stderr
        assert [str(f) for f in files if secret.encode() in f.read_bytes()] == []
    manifest = store.read_manifest(store.resolve(tmp_path / "data", "secrets2").path)
    model = manifest["config"]["generate"]["policies"][0]["model"]
    assert model["base_url"] == "http://***@127.0.0.1:9/v1"
    assert model["engine_args"] == {"api_key": "***", "extra": {"token": "***"}}


def test_a_schedule_refuses_inline_secrets():
    from flows.schedule import ScheduleError, serve_curation

    cfg = load_config(None, ["judge.judges.0.model.base_url=http://u:pw@h/v1"])
    with pytest.raises(ScheduleError, match="inline secrets.*judge.judges.0.model.base_url"):
        serve_curation(cfg.model_dump(mode="json"), "0 3 * * *", "x")
