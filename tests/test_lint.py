"""The code passes ``ruff check`` and ``ruff format --check`` with the project's
configuration (pyproject.toml), so the README's test command (and so .ci/run) fails on a
lint or formatting error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is in the test extra (pip install -e '.[test]')"
    out = subprocess.run(
        [ruff, "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is in the test extra (pip install -e '.[test]')"
    out = subprocess.run(
        [ruff, "format", "--check", "--no-cache", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr


def test_every_logger_is_in_the_prefcurate_tree() -> None:
    """One ``prefcurate.*`` logger tree: the CLI sets its levels in one place and Prefect
    attaches its API handler to it (PREFECT_LOGGING_EXTRA_LOGGERS), so the stage modules'
    messages show in the Prefect UI beside the run's."""
    import ast

    bad = []
    files = sorted(p for d in ("pipeline", "flows", "schemas") for p in (REPO / d).rglob("*.py"))
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
            ):
                arg = node.args[0] if node.args else None
                text = (
                    arg.value
                    if isinstance(arg, ast.Constant)
                    else arg.values[0].value
                    if isinstance(arg, ast.JoinedStr)
                    and arg.values
                    and isinstance(arg.values[0], ast.Constant)
                    else None
                )
                if not (isinstance(text, str) and text.startswith("prefcurate")):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert len(files) > 50 and bad == []


def test_cli_sends_the_tree_to_prefect(monkeypatch) -> None:
    import os

    from flows import preflight

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW")
    }
    monkeypatch.setattr(os, "environ", env)  # what _prefect_env sets is undone after
    monkeypatch.setattr(preflight, "reap_orphan_servers", lambda: [])
    preflight._prefect_env()
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "prefcurate"
    assert os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "ignore"


def _collected(marker: str, *paths: str) -> set[str]:
    """The test files ``pytest -m marker`` would run among ``paths``."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["-m", marker, *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: nothing collected
    return {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}


def test_markers_follow_what_a_test_needs() -> None:
    """``server``: a test that starts vllm serve or Label Studio; ``slow``: those, the real
    engine and the subprocess runs; ``-m 'not slow'`` keeps the quick tests."""
    paths = [
        "tests/review/test_review_ls.py",
        "tests/engines/test_engine_e2e.py",
        "tests/flows/test_kill_resume.py",
        "tests/test_hashing.py",
    ]
    assert _collected("server", *paths) == {"tests/review/test_review_ls.py"}
    assert _collected("engine", *paths) == {"tests/engines/test_engine_e2e.py"}
    assert _collected("slow", *paths) == set(paths[:3])
    assert _collected("not slow", *paths) == {"tests/test_hashing.py"}
