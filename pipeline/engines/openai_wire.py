"""What an OpenAI-compatible server is sent and answers: the chat-completions request
body (:func:`build_body`), the answer's parsing (:func:`parse_completion`), and the reading
of its error texts and headers (:func:`context_error`, :func:`parse_retry_after`)."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from pipeline.engines.protocol import TOP_LOGPROB_STEPS, ChatRequest, Completion

# the logger of pipeline.engines.openai, where this code was: log lines read as before
log = logging.getLogger("prefcurate.pipeline.engines.openai")

SCHEMA_NAME = "verdict"
_CONTEXT_RE = re.compile(
    r"context[ _]length|context window|prompt is too long|"
    r"maximum context|too many tokens|exceeds .{0,40}context",
    re.IGNORECASE,
)
_CONTEXT_N_RE = re.compile(
    r"maximum context length (?:is|of) (\d+)|"
    r"maximum context length \((\d+)\)",
    re.IGNORECASE,
)
# the prompt's own size, as vLLM and OpenAI word it
_PROMPT_N_RE = re.compile(
    r"contains (?:at least )?(\d+) input tokens|"
    r"\((\d+) in the messages|"
    r"messages resulted in (\d+) tokens|"
    r"Input length \((\d+)\)|"
    r"request has (\d+) input tokens",
    re.IGNORECASE,
)


def _first_group(m: re.Match[str] | None) -> int | None:
    if m is None:
        return None
    for g in m.groups():
        if g is not None:
            return int(g)
    return None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    >>> parse_retry_after({"retry-after": "2"}), parse_retry_after({"retry-after-ms": "250"})
    (2.0, 0.25)
    >>> parse_retry_after({"retry-after": "soon"}) is None
    True
    """
    h = {k.lower(): v for k, v in headers.items()}
    raw = h.get("retry-after-ms")
    if raw is not None:
        try:
            v = float(raw) / 1000
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    raw = h.get("retry-after")
    if raw is None:
        return None
    try:
        v = float(raw)
        return v if math.isfinite(v) and v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_text(resp: httpx.Response) -> str:
    """The server's error message: ``{"error": {"message"}}``, ``{"message"}`` or the body."""
    try:
        data = resp.json()
    except ValueError:
        return (resp.text or resp.reason_phrase or "").strip()[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            code = err.get("code")
            extra = f" ({code})" if isinstance(code, str) and code not in err["message"] else ""
            return str(err["message"])[:500] + extra
        if isinstance(err, str):
            return err[:500]
        if data.get("message"):
            return str(data["message"])[:500]
    return json.dumps(data)[:300]


def context_error(message: str) -> tuple[bool, int | None, int | None]:
    """Classify a 400 message: (is it about the context?, prompt tokens, context size).

    >>> context_error("This model's maximum context length is 2048 tokens. However, your "
    ...               "prompt contains 3001 input tokens, which exceeds this limit")
    (True, 3001, 2048)
    >>> context_error("temperature must be >= 0")
    (False, None, None)
    """
    if not _CONTEXT_RE.search(message):
        return False, None, None
    return (
        True,
        _first_group(_PROMPT_N_RE.search(message)),
        _first_group(_CONTEXT_N_RE.search(message)),
    )


def build_body(
    model: str, extra_body: Mapping[str, Any], req: ChatRequest, max_tokens: int | None = None
) -> dict[str, Any]:
    """The JSON body of one chat-completions request for the served ``model``, with
    ``extra_body`` merged in (its fields first) and ``max_tokens`` instead of the
    request's when given."""
    body: dict[str, Any] = {
        **extra_body,
        "model": model,
        "messages": req.as_messages(),
        "n": req.n,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_tokens": req.max_tokens if max_tokens is None else max_tokens,
    }
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = list(req.stop)
    if req.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = req.logprobs
    if req.tools:
        body["tools"] = req.tool_list()
    if req.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": json.loads(req.json_schema)},
        }
    return body


def parse_completion(req: ChatRequest, data: Any) -> Completion:
    """The Completion in a 200 body; raises (ValueError, KeyError, TypeError, IndexError,
    AttributeError) on a body it cannot read."""
    if not isinstance(data, dict):
        raise TypeError("the body is not a JSON object")
    if "choices" not in data and data.get("error"):
        raise ValueError(f"error in a 200 body: {str(data['error'])[:200]}")
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    if not choices:
        raise IndexError("no choices")
    if len(choices) != req.n:
        log.warning(
            "openai engine: asked for n=%d samples, the server returned %d (does it support n?)",
            req.n,
            len(choices),
        )
    texts: list[str | None] = []
    finish: list[str | None] = []
    tops: list[list[dict[str, float]] | None] = []
    lengths: list[int | None] = []
    for c in choices:
        msg = c.get("message") or {}
        content = msg.get("content")
        texts.append(content if isinstance(content, str) else None)
        finish.append(c.get("finish_reason"))
        steps = ((c.get("logprobs") or {}).get("content") or None) if req.logprobs else None
        lengths.append(len(steps) if steps is not None else None)
        if steps is None:
            tops.append(None)
            continue
        mapped = []
        for step in steps[:TOP_LOGPROB_STEPS]:
            d = {
                t["token"]: float(t["logprob"])
                for t in step.get("top_logprobs") or []
                if t.get("token") is not None and t.get("logprob") is not None
            }
            if step.get("token") is not None and step.get("logprob") is not None:
                d.setdefault(step["token"], float(step["logprob"]))
            mapped.append(d)
        tops.append(mapped)
    usage = data.get("usage") or {}
    n_prompt = usage.get("prompt_tokens")
    if any(x is None for x in lengths):
        total = usage.get("completion_tokens")
        if isinstance(total, int):
            q, r = divmod(total, len(choices))
            lengths = [q + (i < r) for i in range(len(choices))]
        else:
            lengths = [None] * len(choices)
    return Completion(
        texts=texts,
        finish_reasons=finish,
        n_prompt_tokens=n_prompt if isinstance(n_prompt, int) else None,
        n_output_tokens=lengths,
        top_logprobs=tops,
    )
