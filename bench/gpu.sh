#!/usr/bin/env bash
# vLLM offline generation vs transformers generate on one CUDA GPU (bench/gpu.py; see its
# docstring). Needs a CUDA GPU and `bash scripts/install.sh gpu`; exits 2 without a GPU.
# Not run in CI. Arguments go to bench/gpu.py (--json, --prompts N, --hf-batch-size N, ...);
# the whole run is stopped after 10 minutes (exit status 124).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 600 "$PY" bench/gpu.py "$@"
