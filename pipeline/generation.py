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

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from pipeline.engines.base import ChatRequest, Completion, failure_reason
from pipeline.hashing import candidate_id
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import PolicyConfig
from schemas.tables import CANDIDATES, from_rows

STAGE = "generate"
STAGE_VERSION = 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt_id: str
    source_id: str
    policy: str
    engine_kind: str
    model: str
    request: ChatRequest


def build_generation_requests(
    prompts: pa.Table, policies: list[PolicyConfig]
) -> list[GenerationRequest]:
    """One request per (prompt, policy), asking for ``policy.n`` samples."""
    out = []
    rows = prompts.select(["prompt_id", "source_id", "prompt"]).to_pylist()
    for pol in policies:
        for row in rows:
            msgs = [(m["role"], m["content"]) for m in row["prompt"]]
            if pol.system_prompt and not (msgs and msgs[0][0] == "system"):
                msgs = [("system", pol.system_prompt)] + msgs
            req = ChatRequest(
                messages=tuple(msgs),
                n=pol.n,
                temperature=pol.temperature,
                top_p=pol.top_p,
                max_tokens=pol.max_tokens,
                seed=pol.seed,
                stop=tuple(pol.stop),
            )
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
    kept = 0
    rows_in = 0
    for gr, comp in zip(requests, completions, strict=True):
        n = gr.request.n
        rows_in += n
        rhash = gr.request.key(gr.engine_kind, gr.model)
        if comp.error is not None:
            reason = failure_reason(comp.error)
            for i in range(n):
                (drops if reason == Reason.OVER_BUDGET else quar).append(
                    {
                        "source_id": gr.source_id,
                        "reason": reason,
                        "detail": f"policy {gr.policy} sample {i}: {comp.error}",
                        "raw": rhash,
                    }
                )
            continue
        texts = list(comp.texts) + [None] * (n - len(comp.texts))
        for i in range(n):
            text = texts[i]
            finish = comp.finish_reasons[i] if i < len(comp.finish_reasons) else None
            cid = candidate_id(gr.prompt_id, gr.policy, i, text)
            if text is None or not text.strip():
                drops.append(
                    {
                        "source_id": gr.source_id,
                        "row_id": cid,
                        "reason": Reason.EMPTY_OUTPUT,
                        "detail": f"policy {gr.policy} sample {i}",
                    }
                )
                continue
            norm = " ".join(text.split())
            bucket = seen_text.setdefault(gr.prompt_id, set())
            if norm in bucket:
                drops.append(
                    {
                        "source_id": gr.source_id,
                        "row_id": cid,
                        "reason": Reason.DUPLICATE_OUTPUT,
                        "detail": f"policy {gr.policy} sample {i} repeats an earlier "
                        f"candidate of this prompt",
                    }
                )
                continue
            if finish == "length" and on_truncated == "drop":
                drops.append(
                    {
                        "source_id": gr.source_id,
                        "row_id": cid,
                        "reason": Reason.TRUNCATED,
                        "detail": f"policy {gr.policy} sample {i} stopped at max_tokens "
                        f"{gr.request.max_tokens}",
                    }
                )
                continue
            bucket.add(norm)
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
            kept += 1
    dropped = dropped_table(STAGE, drops)
    quarantine = quarantine_table(STAGE, quar)
    counts = StageCounts(
        rows_in=rows_in,
        kept=kept,
        dropped=dict(sorted(Counter(str(d["reason"]) for d in drops).items())),
        quarantined=dict(Counter(str(q["reason"]) for q in quar)),
    )
    table = from_rows(rows, CANDIDATES, "candidates")
    tokens: dict[str, dict[str, int]] = {}
    for r in rows:
        t = tokens.setdefault(
            r["policy"], {"prompt_tokens": 0, "output_tokens": 0, "candidates": 0, "truncated": 0}
        )
        t["prompt_tokens"] += r["n_prompt_tokens"] or 0
        t["output_tokens"] += r["n_output_tokens"] or 0
        t["candidates"] += 1
        t["truncated"] += int(r["truncated"])
    return StageResult(
        STAGE,
        {"candidates": table},
        counts,
        dropped,
        quarantine,
        info={"tokens_per_policy": tokens},
    )


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
