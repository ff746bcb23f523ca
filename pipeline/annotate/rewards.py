"""Reward models: score each candidate with a Hugging Face sequence-classification model.

Input: CANDIDATES (+ PROMPTS). Output: SCORES, one row per (candidate, head) with
``annotator`` = the reward model's name (default: its id) and ``aspect`` = ``reward``
for a single-head model, else the model's ``id2label`` names (when they are real names,
not ``LABEL_<i>``) or ``head_<i>``. ``score`` is the head's **raw logit**, whatever the
path; ``raw_output`` holds the JSON list of all heads' logits. Row unit of the stage:
one candidate. Kept: every candidate with text (a conversation of ``max_model_len``
tokens or more is kept with null scores and ``parse_error = "prompt_too_long: ..."``).
Dropped: ``empty_output``.

Format → call → parse, as for the judges: :func:`encode_conversation` turns (prompt,
response) into token ids with the model's own chat template (pure given the
tokenizer; both paths score the very same ids), a :class:`RewardScorer` returns the
logits, :func:`make_reward_scores` builds the rows. Two scorers (in
:mod:`pipeline.annotate.reward_scorers`):

- :class:`VLLMRewardScorer`: ``vllm.LLM(model, runner="pooling")`` and ``classify()``
  (vLLM 0.32 has no ``reward()``). ``classify`` applies the pooler's activation by
  default: **sigmoid** for ``num_labels == 1`` and **softmax** for ``num_labels > 1``
  (unless ``config.problem_type`` says otherwise). We pass
  ``PoolingParams(use_activation=False)`` so it returns raw logits.
- :class:`HFRewardScorer`: ``AutoModelForSequenceClassification`` in batches (right
  padding, length-sorted); the per-token head output is read with a forward hook on
  the model's ``score`` layer and taken at each sequence's last real token, which is
  what vLLM's ``LAST`` pooling does. (transformers' own pooling looks for the last
  token that is not ``pad_token_id``, which is wrong when a chat template ends with
  the pad token, e.g. pad = eos.) Models without a ``score`` layer (encoder
  classifiers) are run one sequence at a time, unpadded, with their own pooling.

Scores are cached per (engine, model, token ids) in the :class:`RequestCache` when one
is given, so a rerun recomputes nothing.

>>> aspect_names(1, {0: "LABEL_0"})
['reward']
>>> aspect_names(3, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
['head_0', 'head_1', 'head_2']
>>> aspect_names(2, {0: "Helpfulness", 1: "Verbosity score"})
['helpfulness', 'verbosity_score']
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import conversation
from pipeline.annotate.reward_scorers import (  # noqa: F401 - re-exported
    HFRewardScorer,
    RewardScorer,
    VLLMRewardScorer,
    aspect_names,
    load_reward_model,
    model_heads,
)
from pipeline.engines.base import Completion, RequestCache
from pipeline.hashing import stable_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import RewardModelSpec
from schemas.errors import EngineError
from schemas.tables import SCORES, from_rows

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "rewards"
STAGE_VERSION = 2  # 2: failed calls are quarantined (request_failed), not kept
TOO_LONG = "prompt_too_long"
FAILED = "request failed: "


@dataclass(frozen=True)
class RewardInput:
    candidate_id: str
    source_id: str
    token_ids: tuple[int, ...]
    error: str | None = None  # set when the input cannot be scored (too long)

    def key(self, engine_kind: str, model: str) -> str:
        return stable_hash("reward", engine_kind, model, list(self.token_ids), length=32)


# --------------------------------------------------------------------------- format


def encode_conversation(tokenizer: Any, prompt: list[dict[str, str]], response: str) -> list[int]:
    """Token ids of the conversation ``prompt + [assistant: response]``.

    Uses the tokenizer's chat template (no generation prompt: the response is the last
    turn), or ``role: content`` lines with the tokenizer's special tokens when the model
    has no chat template. Both scorers get these exact ids.
    """
    conv = [{"role": m["role"], "content": m["content"]} for m in prompt] + [
        {"role": "assistant", "content": response}
    ]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(conversation.render(conv))["input_ids"]]


def build_reward_inputs(
    candidates: pa.Table, prompts: pa.Table, tokenizer: Any, max_len: int
) -> tuple[list[RewardInput], list[dict]]:
    """One input per candidate with text; (inputs, dropped rows ``empty_output``)."""
    prompt_of = dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist())
    )
    out, drops = [], []
    rows = candidates.select(["prompt_id", "source_id", "candidate_id", "text"]).to_pylist()
    for r, hist in zip(rows, conversation.histories(candidates)):
        if r["text"] is None or not r["text"].strip():
            drops.append(
                {
                    "source_id": r["source_id"],
                    "row_id": r["candidate_id"],
                    "reason": Reason.EMPTY_OUTPUT,
                    "detail": "candidate has no text",
                }
            )
            continue
        # multi-turn: the candidate's own earlier turns are the context of its last answer
        ids = encode_conversation(tokenizer, prompt_of[r["prompt_id"]] + (hist or []), r["text"])
        err = (
            None
            if len(ids) < max_len
            else f"{TOO_LONG}: {len(ids)} tokens >= max_model_len {max_len}"
        )
        out.append(RewardInput(r["candidate_id"], r["source_id"], tuple(ids), err))
    return out, drops


# --------------------------------------------------------------------------- call


def run_rewards(
    inputs: Sequence[RewardInput],
    *,
    engine_kind: str,
    model: str,
    get_scorer: Callable[[], RewardScorer],
    cache: RequestCache | None = None,
    chunk_size: int = 256,
) -> tuple[list[list[float] | None], list[str | None], dict[str, int]]:
    """Logits per input, from the cache where possible; (logits, errors, call stats).

    The scorer is only built when an input is missing from the cache. Inputs with an
    ``error`` (too long) are not scored. A chunk that fails is retried one input at a
    time, so only the inputs that fail alone become error rows (not cached: retried on
    the next run); an :class:`EngineError` (cannot start) is raised.
    """
    keys = [x.key(engine_kind, model) for x in inputs]
    logits: list[list[float] | None] = [None] * len(inputs)
    errors: list[str | None] = [x.error for x in inputs]
    stats = {"inputs": len(inputs), "reused": 0, "made": 0, "failed": 0}
    cached = cache.get_many(set(keys)) if cache is not None else {}
    todo = []
    for i, (x, k) in enumerate(zip(inputs, keys)):
        if x.error is not None:
            continue
        if k in cached and cached[k].texts:
            logits[i] = json.loads(cached[k].texts[0])
            stats["reused"] += 1
        else:
            todo.append(i)
    if not todo:
        return logits, errors, stats
    scorer = get_scorer()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        outs = _score_chunk(scorer, inputs, chunk, errors)
        done = []
        for i, lg in zip(chunk, outs, strict=True):
            if lg is None:
                stats["failed"] += 1
                continue
            logits[i] = lg
            stats["made"] += 1
            done.append(i)
        if cache is not None and done:
            cache.put_many(
                [
                    (
                        keys[i],
                        engine_kind,
                        model,
                        Completion(texts=[json.dumps(logits[i])], finish_reasons=["stop"]),
                    )
                    for i in done
                ]
            )
    return logits, errors, stats


def _score_chunk(
    scorer: RewardScorer, inputs: Sequence[RewardInput], chunk: list[int], errors: list[str | None]
) -> list[list[float] | None]:
    """Logits of the inputs ``chunk`` indexes, in one call; when that call fails, one call
    per input, so only an input that fails alone gets None (and its error in ``errors``)."""
    try:
        return list(scorer.score([inputs[i].token_ids for i in chunk]))
    except EngineError:
        raise
    except Exception as exc:  # retry one by one, so one bad input fails alone
        log.warning(
            "reward batch failed (%s: %s); scoring its %d inputs one by one",
            type(exc).__name__,
            exc,
            len(chunk),
        )
    outs: list[list[float] | None] = []
    for i in chunk:
        try:
            outs.append(scorer.score([inputs[i].token_ids])[0])
        except EngineError:
            raise
        except Exception as one:  # an error row, not cached: retried next run
            errors[i] = f"{FAILED}{type(one).__name__}: {one}"[:500]
            outs.append(None)
    return outs


# --------------------------------------------------------------------------- parse


def make_reward_scores(
    inputs: Sequence[RewardInput],
    logits: Sequence[list[float] | None],
    errors: Sequence[str | None],
    *,
    annotator: str,
    aspects: list[str],
    drops: list[dict] | None = None,
) -> StageResult:
    """SCORES rows (one per candidate and head); failures are null scores with the error.

    A candidate whose scoring call failed (``request failed: …``, not cached: the next run
    scores it again) is also a quarantine row (``request_failed``) and not counted as
    kept, so the flow does not mark the stage complete; other null scores (a wrong number
    of logits) are kept.

    >>> res = make_reward_scores([RewardInput("c1", "s", (1, 2)), RewardInput("c2", "s", (3,))],
    ...                          [[0.5], None], [None, "request failed: boom"],
    ...                          annotator="rm", aspects=["reward"])
    >>> res.outputs["scores"].column("score").to_pylist(), res.info["null_scores"]
    ([0.5, None], 1)
    >>> res.counts.kept, res.counts.quarantined, res.quarantine.column("detail").to_pylist()
    (1, {'request_failed': 1}, ['candidate c2 (rm): request failed: boom'])
    """
    drops = drops or []
    rows, n_null = _reward_rows(inputs, logits, errors, annotator, aspects)
    scores = from_rows(rows, SCORES, "scores")
    failed = [
        {
            "source_id": x.source_id,
            "row": None,
            "reason": Reason.REQUEST_FAILED,
            "detail": f"candidate {x.candidate_id} ({annotator}): {err}"[:1000],
        }
        for x, lg, err in zip(inputs, logits, errors)
        if lg is None and err is not None and err.startswith(FAILED)
    ]
    counts = StageCounts(
        rows_in=len(inputs) + len(drops),
        kept=len(inputs) - len(failed),
        dropped=dict(Counter(str(d["reason"]) for d in drops)),
        quarantined={str(Reason.REQUEST_FAILED): len(failed)} if failed else {},
        rows_out=len(rows),
    )
    return StageResult(
        STAGE,
        {"scores": scores},
        counts,
        dropped_table(STAGE, drops),
        quarantine_table(STAGE, failed),
        info={
            "annotator": annotator,
            "aspects": aspects,
            "candidates_scored": len(inputs) - n_null,
            "null_scores": n_null,
            "too_long": sum(bool(e and e.startswith(TOO_LONG)) for e in errors),
        },
    )


def _reward_rows(
    inputs: Sequence[RewardInput],
    logits: Sequence[list[float] | None],
    errors: Sequence[str | None],
    annotator: str,
    aspects: list[str],
) -> tuple[list[dict[str, Any]], int]:
    """(SCORES rows, one per candidate and head; how many candidates have null scores):
    a candidate without logits, or with a wrong number of them, gets null scores."""
    rows = []
    n_null = 0
    for x, lg, err in zip(inputs, logits, errors, strict=True):
        if lg is not None and len(lg) != len(aspects):
            lg, err = (
                None,
                (f"model returned {len(lg)} logit(s) for {len(aspects)} aspect(s) {aspects}"),
            )
        n_null += lg is None
        raw = json.dumps(lg) if lg is not None else None
        for h, a in enumerate(aspects):
            rows.append(
                {
                    "candidate_id": x.candidate_id,
                    "annotator": annotator,
                    "aspect": a,
                    "score": None if lg is None else float(lg[h]),
                    "raw_output": raw,
                    "parse_error": None if lg is not None else (err or "no score"),
                }
            )
    return rows, n_null


def score_with_reward_model(
    candidates: pa.Table,
    prompts: pa.Table,
    spec: RewardModelSpec,
    *,
    model_path: str | None = None,
    get_scorer: Callable[[], RewardScorer] | None = None,
    cache: RequestCache | None = None,
    chunk_size: int = 256,
    cache_dir: Path | None = None,
) -> StageResult:
    """The whole reward stage for one model: tokenize, score (cached), build SCORES.

    ``model_path`` is the local folder (default ``spec.model``); ``get_scorer`` builds
    the scorer lazily (default :func:`load_reward_model`, stopped again at the end), so a
    fully cached rerun loads only the tokenizer and config.
    """
    from transformers import AutoTokenizer

    path = model_path or spec.model
    tokenizer = AutoTokenizer.from_pretrained(path)
    num_labels, id2label = model_heads(path)
    aspects = aspect_names(num_labels, id2label, spec.aspects)
    inputs, drops = build_reward_inputs(candidates, prompts, tokenizer, spec.max_model_len)
    owned: list[RewardScorer] = []

    def factory() -> RewardScorer:
        scorer = load_reward_model(spec, path, cache_dir)
        owned.append(scorer)
        return scorer

    try:
        logits, errors, stats = run_rewards(
            inputs,
            engine_kind=spec.engine,
            model=spec.model,
            get_scorer=get_scorer or factory,
            cache=cache,
            chunk_size=chunk_size,
        )
    finally:
        for scorer in owned:  # a scorer we started is stopped here; a given one is not
            close = getattr(scorer, "close", None)
            if close:
                close()
    res = make_reward_scores(
        inputs, logits, errors, annotator=spec.annotator, aspects=aspects, drops=drops
    )
    res.info["calls"] = stats
    return res
