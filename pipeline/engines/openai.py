"""An engine for any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve`` first).

:class:`OpenAIEngine` implements the :class:`~pipeline.engines.base.Engine` Protocol over HTTP:
one async ``httpx`` client per :meth:`~OpenAIEngine.complete` call, at most
``max_concurrency`` requests in flight, a per-request timeout, and retries with
exponential backoff and jitter on 408/409/429/5xx, connection errors, timeouts and
unreadable (non-JSON, no ``choices``) bodies. ``Retry-After`` (seconds or an HTTP date) and
``retry-after-ms`` are honoured, up to ``max_backoff_s``. A request never raises: when the
retries are spent it becomes a :class:`~pipeline.engines.base.Completion` with ``error`` and
``retryable=True`` (not cached, so the next run tries again). Other 4xx answers are not
retried within the call (``retryable=True`` as well: a fixed key or server may answer
next time), except a 400 saying that the prompt exceeds the model's context, which
becomes a ``prompt_too_long: ...`` error with ``retryable=False`` (cached: it cannot
change). When the server says that prompt + ``max_tokens`` exceed the context but the
prompt alone fits, the request is sent once more with ``max_tokens`` clamped to what
is left, as vLLM's offline engine does.

Request fields: ``model``, ``messages``, ``n``, ``temperature``, ``top_p``,
``max_tokens``, ``seed`` (when set), ``stop`` (when any), ``logprobs`` /
``top_logprobs`` (when ``ChatRequest.logprobs``) and, for ``ChatRequest.json_schema``,
``response_format = {"type": "json_schema", "json_schema": {"name": "verdict",
"schema": ...}}``, which ``vllm serve`` enforces with its structured-outputs backend
(start it with ``--structured-outputs-config '{"backend": "guidance",
"disable_any_whitespace": true}'`` for the same behaviour as the offline engine).
``extra_body`` is merged into every request (server-specific fields, e.g. ``top_k``).

Answers: choices sorted by ``index``; ``n_prompt_tokens`` from ``usage.prompt_tokens``.
Per-sample ``n_output_tokens`` is the length of the choice's ``logprobs.content`` when
logprobs were asked for; otherwise the server reports only ``usage.completion_tokens``
for the whole request, which is split evenly across the choices (the remainder going to
the first ones), so per-sample counts are exact for ``n=1`` and the per-request total is
always exact. ``top_logprobs`` holds, for the first 8 generated tokens,
``{token: logprob}`` of the top alternatives plus the sampled token.

The API key is read from the environment variable named by ``api_key_env`` at every
:meth:`complete` call; it is never stored on the engine and is scrubbed from every
error text and log message (some servers echo the key they refused).

``count_prompt_tokens`` returns None (the OpenAI API has no tokenizer endpoint);
``max_context`` asks ``GET {base_url}/models`` once (vLLM reports ``max_model_len``).

This module is the client (concurrency, retries, the key); the request body, the
answer's parsing and the reading of error texts are in :mod:`pipeline.engines.openai_wire`.

>>> eng = OpenAIEngine("smollm2", "http://127.0.0.1:8000/v1", api_key_env="MY_KEY")
>>> eng
OpenAIEngine(model='smollm2', base_url='http://127.0.0.1:8000/v1', api_key_env='MY_KEY')
>>> body = eng.request_body(ChatRequest(messages=(("user", "hi"),), n=2, seed=1, logprobs=5))
>>> body["n"], body["seed"], body["logprobs"], body["top_logprobs"]
(2, 1, True, 5)
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.engines.openai_wire import SCHEMA_NAME as SCHEMA_NAME  # re-exported
from pipeline.engines.openai_wire import (
    build_body,
    context_error,
    error_text,
    parse_completion,
    parse_retry_after,
)
from pipeline.engines.protocol import ChatRequest, Completion, too_long
from schemas.errors import ConfigError, EngineError

log = logging.getLogger(f"prefcurate.{__name__}")

RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx


@dataclass
class OpenAIStats:
    """Counters over the life of an engine (all ``complete`` calls)."""

    requests: int = 0  # requests answered (successfully or not)
    attempts: int = 0  # HTTP attempts made
    retries: int = 0  # attempts beyond the first one of a request
    failed: int = 0  # requests answered with an error


class _Retry(Exception):
    """An attempt that failed in a way worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _run_sync(factory):
    """Run the coroutine made by ``factory()`` to completion from synchronous code.

    A fresh event loop (``asyncio.run``) in this thread, or, when this thread already runs
    a loop (a notebook, an async caller), in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-engine") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class OpenAIEngine:
    """Chat completions from an OpenAI-compatible server (``vllm serve``, OpenAI, ...).

    ``base_url`` ends with the API version, as in the OpenAI client:
    ``http://127.0.0.1:8000/v1``. ``model`` is the name the server serves (``--served-model-
    name`` for vLLM); it is also the model part of the request cache key.
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        context: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"openai engine for '{model}': base_url must be an http(s) URL "
                f"such as http://127.0.0.1:8000/v1, got {base_url!r}"
            )
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ConfigError(
                f"openai engine for '{model}': need max_concurrency >= 1, "
                f"max_retries >= 0, timeout_s > 0, backoff_s >= 0"
            )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        self.stats = OpenAIStats()
        self._context = context
        self._context_asked = context is not None
        self._lock = threading.Lock()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    # ------------------------------------------------------------------ Protocol

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer ``requests`` in order; errors become Completions, never exceptions."""
        if not requests:
            return []
        key = self._api_key()
        return _run_sync(lambda: self._complete_all(list(requests), key))

    def max_context(self) -> int | None:
        """The server's context size (``max_model_len`` from ``/models``), asked once."""
        if self._context_asked:
            return self._context
        self._context_asked = True
        key = self._api_key()
        try:
            resp = httpx.get(
                f"{self.base_url}/models",
                headers=self._headers(key),
                timeout=min(self.timeout_s, 10.0),
            )
            resp.raise_for_status()
            for m in resp.json().get("data", []):
                if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):
                    self._context = m["max_model_len"]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.info(
                "openai engine: no context size from %s/models: %s",
                self.base_url,
                _scrub(f"{type(exc).__name__}: {exc}", key),
            )
        return self._context

    def count_prompt_tokens(self, request: ChatRequest) -> int | None:
        return None

    # ------------------------------------------------------------------ requests

    def request_body(self, req: ChatRequest, max_tokens: int | None = None) -> dict[str, Any]:
        """The JSON body of one chat-completions request."""
        return build_body(self.model, self.extra_body, req, max_tokens)

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key or not key.strip():
            raise EngineError(
                f"openai engine for '{self.model}': the environment variable "
                f"{self.api_key_env} (model.api_key_env) is not set; export it "
                f"with the API key of {self.base_url}"
            )
        return key.strip()

    @staticmethod
    def _headers(key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _complete_all(self, requests: list[ChatRequest], key: str | None) -> list[Completion]:
        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        async with httpx.AsyncClient(
            headers=self._headers(key), limits=limits, timeout=httpx.Timeout(self.timeout_s)
        ) as client:

            async def one(req: ChatRequest) -> Completion:
                async with sem:
                    return await self._complete_one(client, req, key)

            out = list(await asyncio.gather(*(one(r) for r in requests)))
        failed = [c.error for c in out if c.error and c.retryable]
        if failed:  # one line per batch, not one per request
            log.warning(
                "openai engine %s: %d of %d requests failed (retried next run); first: %s",
                self.model,
                len(failed),
                len(out),
                failed[0],
            )
        return out

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.backoff_s * (2 ** (retry - 1)), self.max_backoff_s)
        return base / 2 + self._rng.uniform(0, base / 2)  # "equal jitter"

    async def _complete_one(
        self, client: httpx.AsyncClient, req: ChatRequest, key: str | None
    ) -> Completion:
        url = f"{self.base_url}/chat/completions"
        max_tokens: int | None = None  # set when the server asks for a smaller budget
        last = "no attempt made"
        retry_after: float | None = None
        attempt = 0
        while attempt <= self.max_retries:
            if attempt:
                await asyncio.sleep(self._backoff(attempt, retry_after))
                with self._lock:
                    self.stats.retries += 1
            attempt += 1
            retry_after = None
            with self._lock:
                self.stats.attempts += 1
            try:
                comp = await self._attempt(client, url, req, max_tokens)
            except _Retry as exc:
                last, retry_after = _scrub(str(exc), key), exc.retry_after
                log.debug("openai engine %s: attempt %d failed: %s", self.model, attempt, last)
                continue
            except _ClampMaxTokens as exc:
                if max_tokens is not None:  # the server refused the clamped request too
                    return self._done(
                        Completion(texts=[], finish_reasons=[], error=_scrub(exc.message, key))
                    )
                max_tokens = exc.max_tokens  # the same request, resized: send it again now
                with self._lock:
                    self.stats.attempts += 1
                try:
                    comp = await self._attempt(client, url, req, max_tokens)
                except (_Retry, _ClampMaxTokens) as exc2:
                    last, retry_after = _scrub(str(exc2), key), getattr(exc2, "retry_after", None)
                    continue
            if comp.error:
                comp.error = _scrub(comp.error, key)
            return self._done(comp)
        log.debug("openai engine %s: giving up after %d attempts: %s", self.model, attempt, last)
        return self._done(
            Completion(
                texts=[],
                finish_reasons=[],
                error=f"{last} (gave up after {attempt} attempts)"[:600],
            )
        )

    def _done(self, comp: Completion) -> Completion:
        with self._lock:
            self.stats.requests += 1
            self.stats.failed += comp.error is not None
        return comp

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, req: ChatRequest, max_tokens: int | None
    ) -> Completion:
        body = self.request_body(req, max_tokens)
        try:
            # httpx's timeout bounds each read; wait_for bounds the whole request
            resp = await asyncio.wait_for(client.post(url, json=body), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retry(f"timeout after {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}") from None
        status = resp.status_code
        if status == 200:
            try:
                return parse_completion(req, resp.json())
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise _Retry(
                    f"unreadable response body ({type(exc).__name__}): {resp.text[:200]!r}"
                ) from None
        message = error_text(resp)
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(f"http {status}: {message}", parse_retry_after(resp.headers))
        if status in (400, 413, 422):
            is_ctx, n_prompt, ctx = context_error(message)
            if is_ctx:
                if ctx is None:
                    ctx = self._context
                if n_prompt is not None and ctx is not None and n_prompt < ctx:
                    # the prompt fits: only prompt + max_tokens does not
                    raise _ClampMaxTokens(ctx - n_prompt, f"http {status}: {message}")
                if n_prompt is not None and ctx is not None:
                    return too_long(n_prompt, ctx)
                return Completion(
                    texts=[],
                    finish_reasons=[],
                    n_prompt_tokens=n_prompt,
                    error=f"prompt_too_long: server said: {message}",
                    retryable=False,
                )
        return Completion(texts=[], finish_reasons=[], error=f"http {status}: {message}")


class _ClampMaxTokens(Exception):
    def __init__(self, max_tokens: int, message: str):
        super().__init__(message)
        self.max_tokens = max_tokens
        self.message = message
