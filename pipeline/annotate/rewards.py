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
logits, :func:`make_reward_scores` builds the rows. Two scorers:

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
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from pipeline import conversation
from pipeline.engines.base import Completion, RequestCache, shutdown_vllm, start_vllm
from pipeline.hashing import stable_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import RewardModelSpec
from schemas.errors import ConfigError, EngineError
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


class RewardScorer(Protocol):
    """What the reward stage needs from a model: raw logits for token-id sequences."""

    kind: str
    model: str

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]: ...


# --------------------------------------------------------------------------- format


def aspect_names(
    num_labels: int, id2label: dict[Any, str] | None, override: Sequence[str] | None = None
) -> list[str]:
    """Aspect names of a model's heads: ``reward``, id2label names, or ``head_<i>``."""
    if override is not None:
        if len(override) != num_labels:
            raise ConfigError(
                f"reward model has {num_labels} head(s) but {len(override)} "
                f"aspect name(s) were given ({list(override)}); give one name "
                f"per head or leave 'aspects' unset"
            )
        return list(override)
    if num_labels == 1:
        return ["reward"]
    labels = {int(k): v for k, v in (id2label or {}).items()}
    names = [
        re.sub(r"[^a-z0-9]+", "_", str(labels.get(i, "")).lower()).strip("_")
        for i in range(num_labels)
    ]
    if (
        all(names)
        and len(set(names)) == num_labels
        and not any(re.fullmatch(r"label_\d+", n) for n in names)
    ):
        return names
    return [f"head_{i}" for i in range(num_labels)]


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


class VLLMRewardScorer:
    """vLLM's pooling runner; ``classify`` with the activation switched off (raw logits)."""

    kind = "vllm"

    def __init__(
        self,
        model: str,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 2048,
        engine_args: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
    ):
        self.model = model
        self.llm, self.start_seconds = start_vllm(
            model,
            model_path,
            dtype,
            max_model_len,
            engine_args,
            cache_dir,
            what="reward model (runner='pooling')",
            hint=", or use engine 'transformers'",
            runner="pooling",
        )

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm.pooling_params import PoolingParams

        if not token_ids:
            return []
        outs = self.llm.classify(
            [{"prompt_token_ids": list(ids)} for ids in token_ids],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [[float(x) for x in o.outputs.probs] for o in outs]

    def close(self) -> None:
        shutdown_vllm(self.llm)


class HFRewardScorer:
    """transformers ``AutoModelForSequenceClassification``, batched, last-token logits."""

    kind = "transformers"

    def __init__(
        self,
        model: str,
        model_path: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = model
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype: Any = "auto"
        if dtype == "auto" and self.device == "cpu":
            torch_dtype = torch.float32
        elif dtype != "auto":
            torch_dtype = getattr(torch, dtype)
        try:
            self.net = (
                AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch_dtype)
                .to(self.device)
                .eval()
            )
        except Exception as exc:
            raise EngineError(
                f"transformers could not load reward model '{model}' "
                f"({model_path}): {type(exc).__name__}: {exc}"
            ) from exc
        head = getattr(self.net, "score", None)
        self._head = head if isinstance(head, torch.nn.Module) else None
        cfg = (
            self.net.config.get_text_config()
            if hasattr(self.net.config, "get_text_config")
            else self.net.config
        )
        if cfg.pad_token_id is None:  # only transformers' own pooling reads it; we don't
            cfg.pad_token_id = 0
            self.net.config.pad_token_id = 0
        self._pad = int(cfg.pad_token_id)

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        import torch

        out: list[list[float] | None] = [None] * len(token_ids)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        bs = self.batch_size if self._head is not None else 1
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                width = max(len(token_ids[i]) for i in idx)
                ids = torch.full((len(idx), width), self._pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(token_ids[i])
                    ids[row, :n] = torch.tensor(list(token_ids[i]), dtype=torch.long)
                    mask[row, :n] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                if self._head is None:
                    logits = self.net(input_ids=ids, attention_mask=mask).logits
                else:
                    captured: dict[str, torch.Tensor] = {}
                    hook = self._head.register_forward_hook(
                        lambda _m, _i, o: captured.__setitem__("x", o)
                    )
                    try:
                        self.net(input_ids=ids, attention_mask=mask)
                    finally:
                        hook.remove()
                    per_token = captured["x"]  # [batch, seq, num_labels]
                    last = mask.sum(dim=1) - 1
                    logits = per_token[torch.arange(len(idx), device=per_token.device), last]
                for row, i in enumerate(idx):
                    out[i] = [float(x) for x in logits[row].float().cpu()]
        return out  # type: ignore[return-value]


def load_reward_model(
    spec: RewardModelSpec, model_path: str | None = None, cache_dir: Path | None = None
) -> RewardScorer:
    """Start the scorer ``spec`` asks for (vLLM pooling runner or transformers)."""
    path = model_path or spec.model
    if spec.engine == "vllm":
        return VLLMRewardScorer(
            spec.model,
            path,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            engine_args=spec.engine_args,
            cache_dir=cache_dir,
        )
    return HFRewardScorer(spec.model, path, dtype=spec.dtype, batch_size=spec.batch_size)


def model_heads(model_path: str) -> tuple[int, dict[Any, str]]:
    """(num_labels, id2label) from a model folder's config, without loading weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    return int(cfg.num_labels), dict(getattr(cfg, "id2label", None) or {})


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
        try:
            outs: list[list[float] | None] = list(
                scorer.score([inputs[i].token_ids for i in chunk])
            )
        except EngineError:
            raise
        except Exception as exc:  # retry one by one, so one bad input fails alone
            log.warning(
                "reward batch failed (%s: %s); scoring its %d inputs one by one",
                type(exc).__name__,
                exc,
                len(chunk),
            )
            outs = []
            for i in chunk:
                try:
                    outs.append(scorer.score([inputs[i].token_ids])[0])
                except EngineError:
                    raise
                except Exception as one:  # an error row, not cached: retried next run
                    errors[i] = f"{FAILED}{type(one).__name__}: {one}"[:500]
                    outs.append(None)
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
