"""Scheduling against a real local Prefect server: register a cron deployment with
``serve_curation``, trigger a run through the Prefect client, wait for it, check the
published version; everything torn down by process group in ``finally``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.schedule import (
    ScheduleError,
    serve_curation,
    server_env,
    start_local_server,
    stop_local_server,
    stop_process_group,
    validate_cron,
)
from pipeline.store import datasets as store
from schemas.config import load_config

REPO = Path(__file__).resolve().parents[2]
CRON = "0 3 * * *"
NAME = "nightly-test"


def test_validate_cron_says_how_to_fix():
    assert validate_cron(CRON) == CRON
    with pytest.raises(ScheduleError, match="e.g. '0 3"):
        validate_cron("every night")


def test_serve_without_server_is_a_clear_error(tmp_path, examples):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg = load_config(examples / "pairs_votes.yaml", [f"data_root={tmp_path}"])
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_closed_port()}/api"}):
        with pytest.raises(ScheduleError, match="prefect server start"):
            serve_curation(cfg.model_dump(mode="json"), CRON, NAME)


def _closed_port() -> int:
    from flows.schedule import free_port

    return free_port()


def _wait_deployment(api_url: str, serve: subprocess.Popen, log: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            pytest.fail(
                f"serve_curation exited with {serve.returncode}:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        r = httpx.get(f"{api_url}/deployments/name/curate/{NAME}", timeout=5)
        if r.status_code == 200:
            return r.json()
        time.sleep(1)
    pytest.fail(
        f"deployment not registered after {timeout_s} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


@pytest.mark.timeout(180)
def test_cron_deployment_runs_on_a_local_server(tmp_path, examples):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    data_root = tmp_path / "data"
    cfg = load_config(
        examples / "pairs_votes.yaml",
        [f"data_root={data_root}", f"input.path={examples / 'pairs_votes.jsonl'}"],
    ).model_dump(mode="json")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg))
    home = tmp_path / "prefect-home"
    server = start_local_server(home, timeout_s=90)
    serve = None
    serve_log = tmp_path / "serve.log"
    try:
        print(f"server healthy at {server.api_url} after {time.monotonic() - t0:.1f} s")
        code = (
            "import json, sys; from flows.schedule import serve_curation; "
            "serve_curation(json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], "
            "limit_runs=1)"
        )
        env = server_env(home, server.api_url)
        env["PREFECT_LOGGING_LEVEL"] = "INFO"
        with open(serve_log, "wb") as fh:
            serve = subprocess.Popen(
                [sys.executable, "-c", code, str(cfg_file), CRON, NAME],
                cwd=REPO,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        dep = _wait_deployment(server.api_url, serve, serve_log, timeout_s=60)
        crons = [s["schedule"].get("cron") for s in dep.get("schedules", [])]
        assert crons == [CRON]
        assert dep["parameters"]["config"]["name"] == "example-pairs"
        print(f"deployment registered after {time.monotonic() - t0:.1f} s")

        with temporary_settings({PREFECT_API_URL: server.api_url}):
            run = run_deployment(f"curate/{NAME}", timeout=120, poll_interval=2, as_subflow=False)
        assert run.state is not None and run.state.is_completed(), (
            run.state,
            serve_log.read_text(errors="replace")[-3000:],
        )
        print(f"triggered run {run.name} completed after {time.monotonic() - t0:.1f} s")
        assert store.list_versions(data_root, "example-pairs") == [1]
        v = store.resolve(data_root, "example-pairs")
        assert store.verify_version(v.path) == []
        # limit_runs=1: the runner stops by itself once the run has finished
        assert serve.wait(timeout=60) == 0, serve_log.read_text(errors="replace")[-3000:]
    finally:
        if serve is not None:
            stop_process_group(serve)
        stop_local_server(server)
    assert server.proc.poll() is not None
    print(f"whole scheduling test {time.monotonic() - t0:.1f} s")
