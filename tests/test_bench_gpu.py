"""bench/gpu.py (vLLM vs transformers on a CUDA GPU) never runs here: without CUDA it
exits with status 2 and one line before loading any model; ``--help`` works anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_help() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--json", "--prompts", "--max-new-tokens", "--hf-batch-size"):
        assert flag in out.stdout


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_exits_2_without_cuda(args: tuple[str, ...]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the script would run the benchmark")
    out = _run(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    lines = [ln for ln in out.stderr.splitlines() if "needs a CUDA GPU" in ln]
    assert lines == [
        "bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is false here); "
        "it is not run in CI"
    ], out.stderr
    assert "Loading" not in out.stderr and "vLLM" not in out.stderr  # no model touched
