"""Model engines behind one small Protocol, and the durable per-request cache.

Stages never talk to vLLM directly: they build :class:`ChatRequest` objects (pure), hand
them to :func:`run_cached` with an engine *factory*, and parse the :class:`Completion`
objects (pure). ``run_cached`` looks every request up in the :class:`RequestCache` first
and only starts the engine when some request is missing, so a fully cached rerun loads
no model at all; results are committed to SQLite after every batch, so a crash loses at
most the batch in flight.

Engines: :class:`VLLMEngine` (offline ``vllm.LLM``, continuous batching) and
:class:`FakeEngine` (deterministic, for unit tests only).

This module gathers the names; they live in :mod:`pipeline.engines.protocol` (the
request and answer types, the Engine protocol), :mod:`pipeline.engines.cache` (the
request cache, ``run_cached``, ``CallStats``), :mod:`pipeline.engines.vllm_offline` and
:mod:`pipeline.engines.fake`.

>>> eng = FakeEngine()
>>> req = ChatRequest(messages=(("user", "hi"),), n=2, temperature=0.7, max_tokens=8, seed=1)
>>> [len(c.texts) for c in eng.complete([req])]
[2]
"""

from pipeline.engines.cache import CallStats, Gate, RequestCache, request_cache_path, run_cached
from pipeline.engines.fake import FakeEngine, fake_json
from pipeline.engines.protocol import (
    OVER_BUDGET,
    TOP_LOGPROB_STEPS,
    ChatRequest,
    Completion,
    Engine,
    failure_reason,
    over_budget,
    too_long,
)
from pipeline.engines.vllm_offline import VLLMEngine, shutdown_vllm, start_vllm, vllm_defaults

__all__ = [
    "OVER_BUDGET",
    "TOP_LOGPROB_STEPS",
    "CallStats",
    "ChatRequest",
    "Completion",
    "Engine",
    "FakeEngine",
    "Gate",
    "RequestCache",
    "VLLMEngine",
    "failure_reason",
    "fake_json",
    "over_budget",
    "request_cache_path",
    "run_cached",
    "shutdown_vllm",
    "start_vllm",
    "too_long",
    "vllm_defaults",
]
