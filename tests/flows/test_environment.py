"""First contact with a bad environment: one-line errors before any work, no retries of
what a retry cannot fix, and what killed runs leave behind swept (probe D7, D8, D9)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.curate import curate
from flows.retry import is_transient
from schemas.config import load_config

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "data" / "examples" / "pairs_votes.jsonl"


def cli(tmp: Path, *sets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", *[a for s in sets for a in ("--set", s)]],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_HOME": str(tmp / ".prefect")},
    )


@pytest.mark.parametrize("case", ["file", "readonly"])
def test_an_unusable_data_root_is_one_line_before_any_work(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    if case == "file":
        root.write_text("x")
    else:
        root.mkdir()
        root.chmod(0o500)
        if os.access(root, os.W_OK):  # root ignores permissions: use a read-only file
            root.chmod(0o700)  # system instead when one is available
            pytest.skip("running as root: permissions do not make a folder read-only")
    res = cli(
        tmp_path, f"data_root={root}", "input.kind=pairs", f"input.path={PAIRS}", "judge.judges=[]"
    )
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) <= 2 and "data_root" in res.stderr and str(root) in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / ".prefect").exists()  # failed before Prefect started


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["input.limit=-5"], "input.limit"),
        (["name=../x"], "invalid dataset name"),
        (["data_root="], "data_root"),
    ],
)
def test_config_errors_come_before_prefect(tmp_path: Path, sets: list[str], needle: str) -> None:
    res = cli(tmp_path, *sets)
    assert res.returncode == 2 and needle in res.stderr
    assert not (tmp_path / ".prefect").exists()


def test_retries_are_for_transient_errors_only() -> None:
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNRESET, "reset"))
    for exc in (
        KeyError("k"),
        ValueError("v"),
        OSError(errno.ENOSPC, "No space left"),
        OSError(errno.EROFS, "Read-only file system"),
        NotADirectoryError(20, "x"),
    ):
        assert not is_transient(exc), exc
    import httpx

    req = httpx.Request("POST", "http://x")
    assert is_transient(
        httpx.HTTPStatusError("", request=req, response=httpx.Response(503, request=req))
    )
    assert not is_transient(
        httpx.HTTPStatusError("", request=req, response=httpx.Response(400, request=req))
    )


def test_killed_writers_temp_folders_are_swept_at_start(tmp_path: Path) -> None:
    stages = tmp_path / "runs" / "example-pairs" / "stages"
    ds = tmp_path / "datasets" / "example-pairs"
    dead = [stages / ".tmp-999999999-ingest-k-1", ds / ".tmp-999999999-abc"]
    alive = ds / f".tmp-{os.getpid()}-mine"
    for d in (*dead, alive):
        d.mkdir(parents=True)
        (d / "data.parquet").write_bytes(b"x" * 1000)
    cfg = load_config(
        REPO / "data/examples/pairs_votes.yaml", [f"data_root={tmp_path}", f"input.path={PAIRS}"]
    )
    out = curate(cfg.model_dump(mode="json"))
    assert out["version"] == 1
    assert not any(d.exists() for d in dead) and alive.exists()


def test_an_orphaned_prefect_server_of_a_killed_cli_is_stopped() -> None:
    """kill -9 of the CLI leaves Prefect's ephemeral server alive (probe D6); the next CLI
    start stops it. A stand-in process carries the server's argv marker and the dead
    CLI's pid; one with a live CLI pid is left alone."""
    import time

    from flows.preflight import SERVER_MARKER, reap_orphan_servers

    code = "import time; time.sleep(120)"
    orphan = subprocess.Popen(
        [sys.executable, "-c", code, SERVER_MARKER],
        env={**os.environ, "PREFCURATE_CLI_PID": "999999999"},
    )
    kept = subprocess.Popen(
        [sys.executable, "-c", code, SERVER_MARKER],
        env={**os.environ, "PREFCURATE_CLI_PID": str(os.getpid())},
    )
    try:
        time.sleep(0.5)
        stopped = reap_orphan_servers()
        assert orphan.pid in stopped and kept.pid not in stopped
        assert orphan.wait(timeout=10) is not None
        assert kept.poll() is None
    finally:
        for p in (orphan, kept):
            p.kill()
            p.wait()
