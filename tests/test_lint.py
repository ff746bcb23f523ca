"""The code passes ``ruff check`` and ``ruff format --check`` with the project's
configuration (pyproject.toml), so the README's test command (and so .ci/run) fails on a
lint or formatting error."""

from __future__ import annotations

import os
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


_PROBE = """
def pytest_collection_finish(session):
    for item in session.items:
        names = sorted({m.name for m in item.iter_markers()} & {"engine", "server", "slow"})
        print("MARKERS", item.nodeid.split("::")[0], ",".join(names))
"""


def _markers(tmp_path: Path, *paths: str) -> dict[str, set[str]]:
    """Per test file among ``paths``: the markers its tests carry after collection (one
    ``pytest --collect-only`` in a subprocess, with a probe plugin that prints them)."""
    (tmp_path / "marker_probe.py").write_text(_PROBE)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["-p", "marker_probe", *paths],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found: dict[str, set[str]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("MARKERS "):
            _, path, *names = line.split(" ")
            found.setdefault(path, set()).update(n for n in ",".join(names).split(",") if n)
    return found


def test_markers_follow_what_a_test_needs(tmp_path: Path) -> None:
    """``server``: a test that starts vllm serve or Label Studio; ``slow``: those, the real
    engine and the subprocess runs; the rest carry none (``-m 'not slow'`` keeps them)."""
    found = _markers(
        tmp_path,
        "tests/review/test_review_ls.py",
        "tests/engines/test_engine_e2e.py",
        "tests/flows/test_kill_resume.py",
        "tests/test_hashing.py",
    )
    assert found == {
        "tests/review/test_review_ls.py": {"server", "slow"},
        "tests/engines/test_engine_e2e.py": {"engine", "slow"},
        "tests/flows/test_kill_resume.py": {"slow"},
        "tests/test_hashing.py": set(),
    }
