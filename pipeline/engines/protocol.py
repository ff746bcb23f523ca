"""The Engine protocol and the types every engine and stage share.

:class:`ChatRequest` (one chat completion request, and its content hash: the request
cache's key), :class:`Completion` (its answer), :class:`Engine` (what a stage needs from a
model), and the error answers a call can end with: :func:`too_long`, :func:`over_budget`
and their classification, :func:`failure_reason`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from pipeline.hashing import stable_hash
from pipeline.stage import Reason

TOP_LOGPROB_STEPS = 8  # output steps whose top logprobs a completion keeps (both engines)


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


def too_long(n_tokens: int, context: int) -> Completion:
    """The answer for a prompt that does not fit the model's context."""
    return Completion(
        texts=[],
        finish_reasons=[],
        n_prompt_tokens=n_tokens,
        error=f"prompt_too_long: {n_tokens} prompt tokens >= context {context}",
        retryable=False,
    )


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
