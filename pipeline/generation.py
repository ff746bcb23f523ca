"""Candidate generation: build requests (pure) and turn completions into candidates (pure).

Input: PROMPTS. Output: CANDIDATES, one row per kept sample. Row unit: one requested
sample (prompts × Σ policy.n). Kept: non-empty, not a duplicate of an earlier sample of
the same prompt. Dropped: ``empty_output``, ``duplicate_output``, ``truncated`` (with
``generate.on_truncated: drop``), ``over_budget`` (the run's budget did not allow the
call; made by a rerun with a higher budget). Quarantined:
``prompt_too_long`` (the engine refused it for its context), ``request_failed`` (retried
on the next run: failed requests are never cached).

>>> import pyarrow as pa
>>> from schemas.config import PolicyConfig
>>> from pipeline.engines.base import Completion
>>> prompts = pa.table({"prompt_id": ["p1"], "source_id": ["s1"],
...     "prompt": [[{"role": "user", "content": "hi"}]], "source": ["t"], "meta": [None]})
>>> reqs = build_generation_requests(prompts, [PolicyConfig(name="pol", n=3)])
>>> len(reqs), reqs[0].request.n
(1, 3)
>>> comp = Completion(texts=["a", "a", " "], finish_reasons=["stop", "stop", "length"])
>>> res = make_candidates(reqs, [comp])
>>> res.counts.to_dict()["dropped"]
{'duplicate_output': 1, 'empty_output': 1}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.conversation import follow_ups, side, tools
from pipeline.engines.base import ChatRequest, Completion, failure_reason
from pipeline.hashing import candidate_id
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import PolicyConfig
from schemas.tables import CANDIDATES, from_rows

STAGE = "generate"
STAGE_VERSION = 2  # 2: multi-turn candidates (history), over_budget drops


@dataclass(frozen=True)
class GenerationRequest:
    prompt_id: str
    source_id: str
    policy: str
    engine_kind: str
    model: str
    request: ChatRequest


def _policy_request(
    pol: PolicyConfig,
    prompt: list[dict[str, str]],
    after: list[dict[str, str]],
    n: int,
    seed: int,
    tool_json: str | None,
) -> ChatRequest:
    """``pol``'s request for ``prompt`` (its system prompt first unless the prompt has
    one) followed by the messages ``after`` (a candidate's earlier turns and a follow-up)."""
    msgs = [(m["role"], m["content"]) for m in prompt]
    if pol.system_prompt and not (msgs and msgs[0][0] == "system"):
        msgs = [("system", pol.system_prompt)] + msgs
    msgs += [(m["role"], m["content"]) for m in after]
    return ChatRequest(
        messages=tuple(msgs),
        n=n,
        temperature=pol.temperature,
        top_p=pol.top_p,
        max_tokens=pol.max_tokens,
        seed=seed,
        stop=tuple(pol.stop),
        tools=tool_json,
    )


def build_generation_requests(
    prompts: pa.Table, policies: list[PolicyConfig]
) -> list[GenerationRequest]:
    """One request per (prompt, policy), asking for ``policy.n`` samples."""
    out = []
    rows = prompts.select(["prompt_id", "source_id", "prompt", "meta"]).to_pylist()
    for pol in policies:
        for row in rows:
            req = _policy_request(pol, row["prompt"], [], pol.n, pol.seed, tools(row["meta"]))
            out.append(
                GenerationRequest(
                    row["prompt_id"],
                    row["source_id"],
                    pol.name,
                    pol.model.engine,
                    pol.model.model,
                    req,
                )
            )
    return out


def make_candidates(
    requests: list[GenerationRequest], completions: list[Completion], on_truncated: str = "keep"
) -> StageResult:
    """Turn completions into candidate rows with hygiene; account every requested sample.

    ``on_truncated`` (``generate.on_truncated``): a sample the engine cut at its token
    limit (finish reason ``length``) is dropped (``drop``, reason ``truncated``: half an
    answer poisons a pair as the better or the worse side) or kept (``keep``, ``flag``;
    ``candidates.truncated`` says so either way)."""
    if on_truncated not in ("drop", "keep", "flag"):
        raise ValueError(f"on_truncated must be drop, keep or flag, got {on_truncated!r}")
    rows, drops, quar = [], [], []
    seen_text: dict[str, set[str]] = {}
    rows_in = 0
    for gr, comp in zip(requests, completions, strict=True):
        n = gr.request.n
        rows_in += n
        rhash = gr.request.key(gr.engine_kind, gr.model)
        if comp.error is not None:  # every sample of the request: over budget, or failed
            reason = failure_reason(comp.error)
            (drops if reason == Reason.OVER_BUDGET else quar).extend(
                {
                    "source_id": gr.source_id,
                    "reason": reason,
                    "detail": f"policy {gr.policy} sample {i}: {comp.error}",
                    "raw": rhash,
                }
                for i in range(n)
            )
            continue
        texts = list(comp.texts) + [None] * (n - len(comp.texts))
        bucket = seen_text.setdefault(gr.prompt_id, set())
        for i in range(n):
            text = texts[i]
            finish = comp.finish_reasons[i] if i < len(comp.finish_reasons) else None
            cid = candidate_id(gr.prompt_id, gr.policy, i, text)
            why = _sample_drop(gr, i, text, finish, bucket, on_truncated)
            if why is not None:
                drops.append({"source_id": gr.source_id, "row_id": cid, **why})
                continue
            bucket.add(" ".join((text or "").split()))
            ntok = comp.n_output_tokens[i] if i < len(comp.n_output_tokens) else None
            rows.append(
                {
                    "prompt_id": gr.prompt_id,
                    "source_id": gr.source_id,
                    "candidate_id": cid,
                    "policy": gr.policy,
                    "sample_index": i,
                    "text": text,
                    "finish_reason": finish,
                    "n_prompt_tokens": comp.n_prompt_tokens,
                    "n_output_tokens": ntok,
                    "request_hash": rhash,
                    "truncated": finish == "length",
                    "error": None,
                }
            )
    dropped = dropped_table(STAGE, drops)
    quarantine = quarantine_table(STAGE, quar)
    counts = StageCounts(
        rows_in=rows_in,
        kept=len(rows),
        dropped=dict(sorted(Counter(str(d["reason"]) for d in drops).items())),
        quarantined=dict(Counter(str(q["reason"]) for q in quar)),
    )
    table = from_rows(rows, CANDIDATES, "candidates")
    info = {"tokens_per_policy": _tokens_per_policy(rows)}
    return StageResult(STAGE, {"candidates": table}, counts, dropped, quarantine, info=info)


def _sample_drop(
    gr: GenerationRequest,
    i: int,
    text: str | None,
    finish: str | None,
    seen: set[str],
    on_truncated: str,
) -> dict[str, Any] | None:
    """Why sample ``i`` of a request is dropped (reason and detail), or None: empty, the
    same text (whitespace aside) as an earlier candidate of the prompt (``seen``), or cut
    at the token limit with ``on_truncated: drop``."""
    at = f"policy {gr.policy} sample {i}"
    if text is None or not text.strip():
        return {"reason": Reason.EMPTY_OUTPUT, "detail": at}
    if " ".join(text.split()) in seen:
        return {
            "reason": Reason.DUPLICATE_OUTPUT,
            "detail": f"{at} repeats an earlier candidate of this prompt",
        }
    if finish == "length" and on_truncated == "drop":
        return {
            "reason": Reason.TRUNCATED,
            "detail": f"{at} stopped at max_tokens {gr.request.max_tokens}",
        }
    return None


def _tokens_per_policy(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per policy: prompt and output tokens, candidates and truncated candidates."""
    tokens: dict[str, dict[str, int]] = {}
    for r in rows:
        t = tokens.setdefault(
            r["policy"], {"prompt_tokens": 0, "output_tokens": 0, "candidates": 0, "truncated": 0}
        )
        t["prompt_tokens"] += r["n_prompt_tokens"] or 0
        t["output_tokens"] += r["n_output_tokens"] or 0
        t["candidates"] += 1
        t["truncated"] += int(r["truncated"])
    return tokens


@dataclass(frozen=True)
class TurnRequest:
    """The next turn of one candidate: its prompt, its own earlier turns and answer, then
    the prompt's next follow-up user turn."""

    candidate_id: str
    turn: int  # 2 for the first follow-up
    follow_up: str
    policy: str
    engine_kind: str
    model: str
    request: ChatRequest


def follow_up_requests(
    prompts: pa.Table, candidates: pa.Table, policies: list[PolicyConfig]
) -> list[TurnRequest]:
    """One request per candidate whose prompt has a follow-up it has not answered yet (one
    sample: the candidate's own answers are its context, so each candidate stays one
    conversation); empty when every candidate is done."""
    fu = {
        pid: follow_ups(meta)
        for pid, meta in zip(
            prompts.column("prompt_id").to_pylist(), prompts.column("meta").to_pylist()
        )
    }
    if not any(fu.values()):
        return []
    prompt_of = dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist())
    )
    tools_of = {
        pid: tools(meta)
        for pid, meta in zip(
            prompts.column("prompt_id").to_pylist(), prompts.column("meta").to_pylist()
        )
    }
    pols = {p.name: p for p in policies}
    out = []
    cols = ["prompt_id", "candidate_id", "policy", "sample_index", "text", "history"]
    for row in candidates.select(cols).to_pylist():
        todo, pol = fu.get(row["prompt_id"]) or [], pols.get(row["policy"])
        done = len(row["history"] or []) // 2  # follow-ups answered so far
        if pol is None or done >= len(todo):
            continue
        after = side(row["history"], row["text"]) + [{"role": "user", "content": todo[done]}]
        req = _policy_request(
            pol,
            prompt_of[row["prompt_id"]],
            after,
            1,
            pol.seed + row["sample_index"],
            tools_of[row["prompt_id"]],
        )
        out.append(
            TurnRequest(
                row["candidate_id"],
                done + 2,
                todo[done],
                pol.name,
                pol.model.engine,
                pol.model.model,
                req,
            )
        )
    return out


def add_turn(
    result: StageResult,
    requests: list[TurnRequest],
    completions: list[Completion],
    on_truncated: str = "keep",
) -> StageResult:
    """The candidates of ``result`` with their answers to the next follow-up: history
    grown by the last answer and the follow-up, ``text`` the new answer, a new
    ``candidate_id`` (of the whole side). A candidate whose turn fails leaves the kept rows
    with the reason (empty, truncated with ``drop``, over budget, failed call) and its turn.

    >>> import pyarrow as pa, json
    >>> from schemas.config import PolicyConfig
    >>> prompts = pa.table({"prompt_id": ["p1"], "source_id": ["s1"],
    ...     "prompt": [[{"role": "user", "content": "hi"}]], "source": ["t"],
    ...     "meta": [json.dumps({"follow_ups": ["and?"]})]})
    >>> pol = PolicyConfig(name="pol", n=2)
    >>> reqs = build_generation_requests(prompts, [pol])
    >>> res = make_candidates(reqs, [Completion(texts=["a", "b"], finish_reasons=["stop"] * 2)])
    >>> turn = follow_up_requests(prompts, res.outputs["candidates"], [pol])
    >>> [r.request.messages[-2:] for r in turn][0]
    (('assistant', 'a'), ('user', 'and?'))
    >>> res = add_turn(res, turn, [Completion(texts=["a2"], finish_reasons=["stop"]),
    ...                            Completion(texts=[""], finish_reasons=["stop"])])
    >>> c = res.outputs["candidates"].to_pylist()
    >>> [(r["text"], [m["content"] for m in r["history"]]) for r in c], res.counts.dropped
    ([('a2', ['a', 'and?'])], {'empty_output': 1})
    >>> follow_up_requests(prompts, res.outputs["candidates"], [pol])
    []
    """
    table = result.outputs["candidates"]
    rows = {r["candidate_id"]: r for r in table.to_pylist()}
    order = list(rows)
    drops: list[dict] = []
    quar: list[dict] = []
    tokens = result.info.setdefault("tokens_per_policy", {})
    for tr, comp in zip(requests, completions, strict=True):
        row = rows[tr.candidate_id]
        where = f"policy {row['policy']} sample {row['sample_index']} turn {tr.turn}"
        text = comp.texts[0] if comp.texts else None
        finish = comp.finish_reasons[0] if comp.finish_reasons else None
        reason = None
        if comp.error is not None:
            reason, detail = failure_reason(comp.error), f"{where}: {comp.error}"
        elif text is None or not text.strip():
            reason, detail = Reason.EMPTY_OUTPUT, where
        elif finish == "length" and on_truncated == "drop":
            reason, detail = Reason.TRUNCATED, f"{where} stopped at max_tokens"
        if reason is not None:
            del rows[tr.candidate_id]
            entry = {"source_id": row["source_id"], "row_id": tr.candidate_id,
                     "reason": reason, "detail": detail}  # fmt: skip
            quarantined = reason not in (Reason.OVER_BUDGET, Reason.EMPTY_OUTPUT, Reason.TRUNCATED)
            (quar if quarantined else drops).append(entry)
            continue
        history = side(row["history"], row["text"]) + [{"role": "user", "content": tr.follow_up}]
        out_tok = comp.n_output_tokens[0] if comp.n_output_tokens else None
        row.update(
            history=history,
            text=text,
            finish_reason=finish,
            n_prompt_tokens=comp.n_prompt_tokens,
            n_output_tokens=out_tok,
            request_hash=tr.request.key(tr.engine_kind, tr.model),
            truncated=bool(row["truncated"]) or finish == "length",
            candidate_id=candidate_id(
                row["prompt_id"],
                row["policy"],
                row["sample_index"],
                json.dumps(side(history, text)),
            ),
        )
        t = tokens.setdefault(row["policy"], {"prompt_tokens": 0, "output_tokens": 0,
                                              "candidates": 0, "truncated": 0})  # fmt: skip
        t["prompt_tokens"] += comp.n_prompt_tokens or 0
        t["output_tokens"] += out_tok or 0
    c = result.counts
    for what, extra in (("dropped", drops), ("quarantined", quar)):
        counts = getattr(c, what)
        for e in extra:
            counts[str(e["reason"])] = counts.get(str(e["reason"]), 0) + 1
    c.kept -= len(drops) + len(quar)
    result.outputs["candidates"] = from_rows(
        [rows[k] for k in order if k in rows], CANDIDATES, "candidates"
    )
    result.dropped = pa.concat_tables([result.dropped, dropped_table(STAGE, drops)])
    result.quarantine = pa.concat_tables([result.quarantine, quarantine_table(STAGE, quar)])
    result.info["turns"] = max(
        result.info.get("turns", 1), max((r.turn for r in requests), default=1)
    )
    return result


def flag_truncated_pairs(pairs: pa.Table, candidates: pa.Table) -> tuple[pa.Table, int]:
    """``generate.on_truncated: flag``: the flag ``truncated`` on every pair whose chosen
    or rejected response was cut at max_tokens; and how many pairs got it.

    >>> from schemas.tables import PAIRS
    >>> pairs = pa.table({"chosen_id": ["a", "c"], "rejected_id": ["b", "d"],
    ...                   "flags": pa.array([[], []], PAIRS.field("flags").type)})
    >>> cands = pa.table({"candidate_id": ["a", "b", "c", "d"],
    ...                   "truncated": [False, True, False, False]})
    >>> out, n = flag_truncated_pairs(pairs, cands)
    >>> out.column("flags").to_pylist(), n
    ([['truncated'], []], 1)
    """
    from pipeline.margins import add_flag

    cut = {
        c
        for c, t in zip(
            candidates.column("candidate_id").to_pylist(),
            candidates.column("truncated").to_pylist(),
        )
        if t
    }
    mask = [
        c in cut or r in cut
        for c, r in zip(
            pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist()
        )
    ]
    return add_flag(pairs, mask, "truncated")
