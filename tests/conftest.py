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
