"""Checks the command line makes before a run starts: the Prefect environment (its
logger tree, orphaned API servers of killed runs stopped), a writable data root, and
models that can be loaded — so a config that cannot work fails before any model call."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flows.console import err
from schemas.errors import ConfigError

SERVER_MARKER = "prefect.server.api.server:create_app"  # the ephemeral API server's argv


def reap_orphan_servers() -> list[int]:
    """Stop the Prefect API servers that a killed prefcurate CLI left behind.

    The CLI marks its environment with ``PREFCURATE_CLI_PID``; Prefect's ephemeral server
    (a uvicorn subprocess) inherits it. A server whose CLI is gone (kill -9 skips Prefect's
    own clean-up; one held 290 MB and a port minutes later) is sent SIGTERM, then SIGKILL.
    Returns the pids stopped. Linux /proc only; elsewhere nothing happens."""
    import signal

    from pipeline.store.datasets import pid_alive as _alive

    stopped = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes()
            if SERVER_MARKER.encode() not in cmd:
                continue
            env = dict(
                x.split(b"=", 1) for x in (d / "environ").read_bytes().split(b"\0") if b"=" in x
            )
        except OSError:
            continue
        owner = env.get(b"PREFCURATE_CLI_PID")
        if owner is None or not owner.isdigit() or _alive(int(owner)):
            continue
        pid = int(d.name)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                if not _alive(pid):
                    break
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stopped.append(pid)
    return stopped


def _prefect_env(verbose: bool = False) -> None:
    """Ephemeral Prefect with a project-local home and no telemetry, unless set by the user.

    Without ``-v`` Prefect's own logging is kept to critical messages: the CLI prints a
    one-line error itself (Prefect would add a traceback for every failed task)."""
    os.environ["PREFCURATE_CLI_PID"] = str(os.getpid())  # marks our Prefect server
    for pid in reap_orphan_servers():
        err.print(f"stopped an orphaned Prefect API server (pid {pid}) of a killed run")
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # vLLM logs to stdout by default, and its worker processes inherit that: stdout is
    # the --json document's alone
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # every project logger is under "prefcurate": attached to Prefect's API handler, its
    # records show in the Prefect UI with the run's own logs (outside a run: not sent)
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "prefcurate")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def check_data_root(root: str) -> None:
    """Fail before any work when ``data_root`` cannot hold the run: a file, a folder that
    cannot be created or written (read-only, no permission), named in one line."""
    p = Path(root)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"data_root {root}: is a file, not a folder; pass another --set data_root=..."
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"data_root {root}: cannot write there ({exc.strerror or exc}); "
            f"pass another --set data_root=..."
        ) from None


def _model_problem(name: str) -> str | None:
    """Why a model name can be neither a local folder nor a usable hub id, or None."""
    if name.startswith("embedded:") or Path(name).expanduser().exists():
        return None
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return "no such folder"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return (
                "no such folder, and not in the local Hugging Face cache (the CLI runs "
                "offline: HF_HUB_OFFLINE=1)"
            )
    return None


def check_models(cfg: Any) -> None:
    """Fail before any work when a model the run will load locally is missing: a path
    that does not exist, or (offline) a hub id that is not in the cache."""
    specs: list[tuple[str, str]] = []
    if cfg.input.kind == "prompts":
        specs += [
            (f"generate.policies.{i}", p.model.model)
            for i, p in enumerate(cfg.generate.policies)
            if p.model.engine == "vllm"
        ]
    specs += [
        (f"judge.judges.{i}", j.model.model)
        for i, j in enumerate(cfg.judge.judges)
        if j.model.engine == "vllm"
    ]
    specs += [
        (f"rubrics ({r.name})", r.model.model)
        for r in cfg.rubric_judges()
        if r.model.engine == "vllm"
    ]
    specs += [(f"rewards.models.{i}", m.model) for i, m in enumerate(cfg.rewards.models)]
    if cfg.embeddings_on():
        specs.append(("embed", cfg.embed.model))
    for where, name in specs:
        problem = _model_problem(name)
        if problem:
            raise ConfigError(f"{where}: model '{name}': {problem}")
