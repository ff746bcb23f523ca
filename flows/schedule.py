"""Scheduled curation: serve the ``curate`` flow as a Prefect deployment with a cron schedule.

``serve_curation(config, cron, name)`` registers the deployment ``curate/<name>`` against
the Prefect API in ``PREFECT_API_URL`` (a server started with
``prefect server start --host 127.0.0.1``; its UI is at http://127.0.0.1:4200) and then
polls it for scheduled or manually triggered runs, executing each one in a fresh
``python -m prefect.engine`` subprocess (which imports ``flows.curate``), until stopped
(Ctrl-C / SIGTERM) or, with ``limit_runs``, until that many runs have finished.
Trigger a run by hand with ``prefect deployment run 'curate/<name>'``.

``start_local_server`` / ``stop_local_server`` (or the ``local_server`` context manager)
start and stop a throw-away local server for tests and demos: its own process group,
``PREFECT_HOME`` and SQLite database in a given directory, analytics off.

>>> env = server_env("/tmp/ph")
>>> env["PREFECT_SERVER_ANALYTICS_ENABLED"], env["PREFECT_HOME"]
('false', '/tmp/ph')
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate")

FLOW_NAME = "curate"


class ScheduleError(PrefcurateError):
    """A deployment could not be registered or a local Prefect server could not start."""


def _check_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ScheduleError(
            "no Prefect server configured: serving a schedule needs one. Start it with "
            "`prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (env or `prefect config set`)"
        )
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=10)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise ScheduleError(
            f"the Prefect server at {url} does not answer ({exc}); start it "
            f"with `prefect server start --host 127.0.0.1` or fix "
            f"PREFECT_API_URL"
        ) from exc
    return url


def validate_cron(cron: str) -> str:
    """Return ``cron`` if Prefect accepts it, else raise ScheduleError with an example."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except Exception as exc:  # pydantic.ValidationError, ValueError
        raise ScheduleError(
            f"invalid cron expression {cron!r}: use five fields "
            f"'minute hour day-of-month month day-of-week', e.g. "
            f"'0 3 * * *' for 03:00 every day"
        ) from exc
    return cron


async def _count_finished(deployment_id: Any, since: Any) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[
                            StateType.COMPLETED,
                            StateType.FAILED,
                            StateType.CRASHED,
                            StateType.CANCELLED,
                        ]
                    )
                ),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            ),
        )
    return len(runs)


async def _serve(
    config: dict[str, Any], cron: str, name: str, limit_runs: int | None, poll_s: float
) -> None:
    from datetime import datetime, timedelta, timezone

    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner

    from flows.curate import curate

    runner = Runner(name=f"prefcurate-{name}", pause_on_shutdown=True)
    deployment = await curate.ato_deployment(
        name=name,
        cron=cron,
        parameters={"config": config},
        description=f"prefcurate curation of dataset {config.get('name')!r}",
        tags=["prefcurate"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # Runs execute locally (no work pool). Registered as a deployment, not with add_flow: the
    # runner then starts each run as `python -m prefect.engine`, which imports
    # flows.curate normally. With add_flow it would cloudpickle the flow object by value
    # into a spawned process, and curate's tasks would not see the run context the flow
    # registered in the module (KeyError in ingest_task).
    deployment.work_pool_name = None
    deployment.work_queue_name = None
    deployment_id = await runner.aadd_deployment(deployment)
    log.info("serving deployment %s/%s (id %s) with cron %r", FLOW_NAME, name, deployment_id, cron)
    print(
        f"serving deployment '{FLOW_NAME}/{name}' (cron {cron!r}); trigger a run with "
        f"`prefect deployment run '{FLOW_NAME}/{name}'`",
        flush=True,
    )
    if limit_runs is None:
        await runner.start()
        return
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    task = asyncio.create_task(runner.start())
    try:
        while not task.done():
            await asyncio.sleep(poll_s)
            if await _count_finished(deployment_id, since) >= limit_runs:
                log.info("%d run(s) finished; stopping the runner", limit_runs)
                await runner.astop()
                break
        await task
    except asyncio.CancelledError:
        pass
    finally:
        if not task.done():
            task.cancel()


def serve_curation(
    config: dict[str, Any],
    cron: str,
    name: str,
    *,
    limit_runs: int | None = None,
    poll_s: float = 2.0,
) -> None:
    """Register deployment ``curate/<name>`` (cron schedule, ``config`` as its default
    parameter) against ``PREFECT_API_URL`` and execute its runs until stopped.

    ``config`` is a RunConfig as a JSON dict (``load_config(...).model_dump(mode="json")``);
    relative paths in it resolve against this process's working directory, where the runs'
    subprocesses start. ``limit_runs``: return after that many runs of the deployment (started
    after serving began) have finished, whatever their state; None serves forever. Blocks.
    """
    from schemas.config import RunConfig

    RunConfig.model_validate(config)  # fail here, not in the first scheduled run
    from schemas.config import split_secrets

    _, secrets = split_secrets(config)
    if secrets:  # a deployment's parameters live in Prefect's database, in clear
        where = ", ".join(".".join(str(p) for p in json.loads(k)) for k in sorted(secrets))
        raise ScheduleError(
            f"a scheduled config cannot hold inline secrets (found at "
            f"{where}); name an environment variable with api_key_env "
            f"instead of an api_key, and keep credentials out of URLs"
        )
    validate_cron(cron)
    if not name or "/" in name:
        raise ScheduleError(f"invalid deployment name {name!r}: a non-empty name without '/'")
    _check_api()
    try:
        asyncio.run(_serve(config, cron, name, limit_runs, poll_s))
    except KeyboardInterrupt:
        log.info("stopped serving %s/%s", FLOW_NAME, name)


# ---------------------------------------------------------------------------- local server


@dataclass
class LocalServer:
    """A ``prefect server start`` subprocess in its own process group."""

    proc: subprocess.Popen
    port: int
    home: Path
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: str | Path, api_url: str | None = None) -> dict[str, str]:
    """The environment for a local server (or a client of it): home, SQLite, no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///"
            + str(Path(home) / "prefect.db"),
        }
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def start_local_server(
    home: str | Path, *, port: int | None = None, ui: bool = False, timeout_s: float = 90.0
) -> LocalServer:
    """Start ``prefect server start --host 127.0.0.1`` and wait (bounded) for /api/health.

    The server runs in a new process group with ``PREFECT_HOME`` and its SQLite database under
    ``home`` and its output in ``home/server.log``. Raises ScheduleError (after stopping it)
    if it is not healthy within ``timeout_s``.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = server_env(home)
    env["PREFECT_UI_ENABLED"] = "true" if ui else "false"
    log_path = home / "server.log"
    prefect_bin = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect_bin)] if prefect_bin.exists() else [sys.executable, "-m", "prefect"]
    cmd += ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LocalServer(proc, port, home, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(server.api_url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-2000:]
    stop_local_server(server)
    raise ScheduleError(
        f"the Prefect server on port {port} was not healthy after "
        f"{timeout_s:.0f} s (exit code {proc.returncode}); its log:\n{tail}"
    )


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with a new session), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # children of the group may outlive its leader
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        log.warning("process %d did not exit after SIGKILL", proc.pid)


def stop_local_server(server: LocalServer) -> None:
    """Stop the server's whole process group."""
    stop_process_group(server.proc)


@contextmanager
def local_server(home: str | Path, **kwargs: Any) -> Iterator[LocalServer]:
    """``start_local_server`` … ``stop_local_server`` as a context manager."""
    server = start_local_server(home, **kwargs)
    try:
        yield server
    finally:
        stop_local_server(server)
