"""Shared fixtures. Prefect runs in ephemeral mode with a per-session home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before Prefect is imported anywhere in the test session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefcurate-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A loaded 2-core CI machine can take longer than Prefect's default 20 s to start it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data" / "examples"


# Markers from what a test needs (pyproject.toml declares them): ``-m "not slow"`` runs
# the suite without the real engine, the servers and the whole runs in a subprocess.
_ENGINE_FIXTURES = {"smollm2_engine"}
_SERVER_FIXTURES = {"label_studio", "vllm_server", "served"}
_SLOW_MODULES = {"test_kill_resume.py", "test_runners.py", "test_scenarios.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        engine = bool(used & _ENGINE_FIXTURES) or item.get_closest_marker("engine") is not None
        server = bool(used & _SERVER_FIXTURES)
        if engine:
            item.add_marker(pytest.mark.engine)
        if server:
            item.add_marker(pytest.mark.server)
        if engine or server or item.path.name in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def runtime():
    """One runtime for the whole test session: the flow runs given it share its engines
    (one engine start for every test that needs the real one); closed at the end."""
    from flows.runtime import Runtime

    rt = Runtime()
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def smollm2_engine(runtime):
    """The embedded SmolLM2 vLLM engine, started once for the whole test session (flow runs
    given the session's ``runtime`` reuse the same instance)."""
    from pipeline.engines.embedded import default_cache_dir
    from schemas.config import ModelSpec

    return runtime.pool(default_cache_dir()).get(ModelSpec())
