"""The deterministic fake engine (unit tests and fake-engine runs) and its JSON answers."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.engines.protocol import ChatRequest, Completion, too_long
from pipeline.hashing import stable_hash


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
