"""Pairwise LLM judging in both presentation orders: format → call → parse.

Input: CANDIDATES (+ PROMPTS for the request text). Output: VOTES, one row per (pair,
judge, order). Row unit of the stage: one candidate pair of a prompt. Kept: judged.
Dropped: ``over_budget`` (beyond ``max_pairs_per_prompt`` or the call budget). Prompts
with a single candidate have no pair and are counted in ``info``.

Each pair is asked twice, once with ``candidate_a`` shown first (order ``ab``) and once
with ``candidate_b`` first (``ba``); the ``ba`` verdict is mapped back to the ``ab``
orientation. Responses are fenced with a nonce derived from their content, so a
response cannot close its fence, and the judge is told that fenced text is data.
Output that does not parse becomes a null verdict with the raw text and a parse error.
The request's format is in :mod:`pipeline.annotate.judge_format`, the reading of the
answer in :mod:`pipeline.annotate.judge_parse`; this module picks the pairs, builds the
requests and makes the VOTES.

>>> parse_verdict('{"winner": "B"}')
('B', None)
>>> parse_verdict('I think Response A is clearly better.')
('A', None)
>>> parse_verdict('no idea')[0] is None
True
>>> map_verdict("A", "ba")
'b'
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import conversation
from pipeline.annotate.judge_format import (  # noqa: F401 - re-exported
    SYSTEM_V1,
    TEMPLATE_V1,
    VERDICT_SCHEMA,
    _defang,
    format_pairwise,
)
from pipeline.annotate.judge_parse import map_verdict, parse_verdict, prob_first_from_logprobs
from pipeline.engines.base import ChatRequest, Completion, failure_reason
from pipeline.hashing import stable_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import JudgeSpec
from schemas.tables import VOTES, from_rows

STAGE = "judge"
STAGE_VERSION = 2  # 2: an output cut at max_tokens is a parse failure
CUT = "cut at max_tokens"  # parse_error prefix of a judge output the engine cut
_PairKey = tuple[str, str, str]  # (source_id, candidate_a, candidate_b)


@dataclass(frozen=True)
class JudgeRequest:
    prompt_id: str
    source_id: str
    candidate_a: str
    candidate_b: str
    annotator: str
    order: str  # "ab" | "ba"
    engine_kind: str
    model: str
    request: ChatRequest


def annotator_base(spec: Any) -> str:
    """``name|template|persona-hash`` of a judge or rubric judge (pairwise judges add
    ``|order``)."""
    persona = stable_hash(spec.persona, length=6) if spec.persona else "none"
    return f"{spec.name}|{spec.template}|{persona}"


def annotator_name(judge: JudgeSpec, order: str) -> str:
    return f"{annotator_base(judge)}|{order}"


def select_pairs(
    candidates: pa.Table, max_pairs_per_prompt: int, first_signal: dict[str, float] | None = None
) -> tuple[list[tuple[str, str, str, str]], list[dict], dict[str, int]]:
    """All canonical pairs (a < b) of each prompt's candidates, up to the cap.

    Returns (pairs as (prompt_id, source_id, a, b), dropped rows, info).
    Beyond the cap, pairs are chosen by a stable hash so reruns pick the same ones.
    With ``first_signal`` ({candidate_id: score}), only the pair of the best and the worst
    scored candidate of each prompt is judged; the other pairs are dropped ``first_signal``
    (a prompt whose scores are all equal keeps its pairs up to the cap).

    >>> import pyarrow as pa
    >>> c = pa.table({"prompt_id": ["p"] * 3, "source_id": ["s"] * 3,
    ...               "candidate_id": ["x", "y", "z"]})
    >>> pairs, drops, _ = select_pairs(c, 6, {"x": 0.2, "y": 0.9, "z": 0.5})
    >>> pairs, sorted(str(d["reason"]) for d in drops)
    ([('p', 's', 'x', 'y')], ['first_signal', 'first_signal'])
    """
    by_prompt: dict[tuple[str, str], list[str]] = {}
    for r in candidates.select(["prompt_id", "source_id", "candidate_id"]).to_pylist():
        by_prompt.setdefault((r["prompt_id"], r["source_id"]), []).append(r["candidate_id"])
    pairs, drops = [], []
    single = 0
    for (pid, sid), cids in by_prompt.items():
        cids = sorted(set(cids))
        if len(cids) < 2:
            single += 1
            continue
        allp = sorted(itertools.combinations(cids, 2), key=lambda p: stable_hash(pid, *p))
        scored = [c for c in cids if first_signal and first_signal.get(c) is not None]
        if len(scored) >= 2:
            best = max(scored, key=lambda c: (first_signal[c], c))
            worst = min(scored, key=lambda c: (first_signal[c], c))
            if first_signal[best] > first_signal[worst]:
                keep = tuple(sorted((best, worst)))
                for a, b in allp:
                    if (a, b) == keep:
                        pairs.append((pid, sid, a, b))
                    else:
                        drops.append(
                            {
                                "source_id": sid,
                                "row_id": f"{a}|{b}",
                                "reason": Reason.FIRST_SIGNAL,
                                "detail": f"best/worst by first signal: {best} vs {worst}",
                            }
                        )
                continue
        for k, (a, b) in enumerate(allp):
            if k < max_pairs_per_prompt:
                pairs.append((pid, sid, a, b))
            else:
                drops.append(
                    {
                        "source_id": sid,
                        "row_id": f"{a}|{b}",
                        "reason": Reason.OVER_BUDGET,
                        "detail": f"beyond max_pairs_per_prompt={max_pairs_per_prompt}",
                    }
                )
    return pairs, drops, {"prompts_with_single_candidate": single}


def build_judge_requests(
    pairs: list[tuple[str, str, str, str]],
    candidates: pa.Table,
    prompts: pa.Table,
    judges: list[JudgeSpec],
) -> list[JudgeRequest]:
    """Two requests (orders ab and ba) per pair and judge. A multi-turn candidate is shown
    as the transcript of its side, the judged part marked (``judge.multi_turn``)."""
    ids = candidates.column("candidate_id").to_pylist()
    text = dict(zip(ids, candidates.column("text").to_pylist()))
    history = dict(zip(ids, conversation.histories(candidates)))
    prompt_of = dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist())
    )
    out = []
    for judge in judges:
        for pid, sid, a, b in pairs:
            conv = prompt_of[pid]
            multi = history[a] or history[b]
            note = conversation.WHOLE if judge.multi_turn == "whole" else conversation.LAST
            shown = {c: conversation.shown(history[c], text[c], judge.multi_turn) for c in (a, b)}
            for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
                req = format_pairwise(
                    judge, conv, shown[first], shown[second], note if multi else None
                )
                out.append(
                    JudgeRequest(
                        pid,
                        sid,
                        a,
                        b,
                        annotator_name(judge, order),
                        order,
                        judge.model.engine,
                        judge.model.model,
                        req,
                    )
                )
    return out


def make_votes(
    requests: list[JudgeRequest],
    completions: list[Completion],
    n_pairs: int,
    drops: list[dict],
    info: dict,
) -> StageResult:
    """Parse completions into VOTES rows; unparseable output is a null verdict, kept.

    An output the engine cut at ``max_tokens`` is a parse failure too (null verdict,
    ``parse_error`` "cut at max_tokens N", the raw text kept): the half-written answer
    may still match a verdict pattern, which would be a guess.

    A pair with a failed call (``Completion.error``: the engine or server refused, timed
    out, or answered 5xx after its retries) is quarantined (``request_failed``, with the
    error) and none of its votes is written: the stage is then incomplete, and the next run
    makes exactly the failed calls again (the others come from the request cache)."""
    failed, budget_cut = _failed_pairs(requests, completions)
    rows = _vote_rows(requests, completions, failed)
    votes = from_rows(rows, VOTES, "votes")
    n_drop = len(drops)
    cut_rows, quarantine = _failure_rows(failed, budget_cut)
    drops = drops + cut_rows
    counts = StageCounts(
        rows_in=n_pairs + n_drop,
        kept=n_pairs - len(failed),
        dropped=dict(Counter(str(d["reason"]) for d in drops)),
        quarantined={str(Reason.REQUEST_FAILED): len(quarantine)} if quarantine else {},
        rows_out=len(rows),
    )
    parse_errors = sum(r["parse_error"] is not None for r in rows)
    cut = sum((r["parse_error"] or "").startswith(CUT) for r in rows)
    n_failed = sum(c.error is not None for c in completions)
    return StageResult(
        STAGE,
        {"votes": votes},
        counts,
        dropped_table(STAGE, drops),
        quarantine_table(STAGE, quarantine),
        info={
            **info,
            "judge_calls": len(requests),
            "parse_errors": parse_errors,
            "cut_at_max_tokens": cut,
            "failed_calls": n_failed,
        },
    )


def _failed_pairs(
    requests: list[JudgeRequest], completions: list[Completion]
) -> tuple[dict[_PairKey, str], set[_PairKey]]:
    """The pairs with a failed call (each with its first error), and those of them whose
    only failures are calls a budget did not allow."""
    failed: dict[_PairKey, str] = {}
    # a pair whose only failures are calls a budget did not allow is dropped over_budget
    # (made by a rerun with a higher budget), any other failure quarantines it
    budget_cut: set[_PairKey] = set()
    broken: set[_PairKey] = set()
    for jr, comp in zip(requests, completions, strict=True):
        if comp.error is not None:
            k = (jr.source_id, jr.candidate_a, jr.candidate_b)
            failed.setdefault(k, f"{jr.annotator}: {comp.error}")
            cut = failure_reason(comp.error) == Reason.OVER_BUDGET
            (budget_cut if cut else broken).add(k)
    budget_cut -= broken
    return failed, budget_cut


def _vote_rows(
    requests: list[JudgeRequest], completions: list[Completion], failed: dict[_PairKey, str]
) -> list[dict[str, Any]]:
    """The VOTES rows of the pairs without a failed call: one per sample of each request."""
    rows = []
    for jr, comp in zip(requests, completions, strict=True):
        if (jr.source_id, jr.candidate_a, jr.candidate_b) in failed:
            continue
        # one vote per sample (judge.samples > 1 at temperature > 0); a failed call is one
        # null vote per requested sample, so nothing disappears from the counts
        for i in range(max(jr.request.n, 1)):
            raw = comp.texts[i] if i < len(comp.texts) else None
            finish = comp.finish_reasons[i] if i < len(comp.finish_reasons) else None
            if comp.error is not None:
                shown, err = None, f"request failed: {comp.error}"
            elif finish == "length":  # cut mid-answer: a fallback parse would guess
                shown, err = None, f"{CUT} {jr.request.max_tokens}"
            else:
                shown, err = parse_verdict(raw)
            tops = comp.top_logprobs[i] if i < len(comp.top_logprobs) else None
            p_first = prob_first_from_logprobs(tops)
            prob_a = None if p_first is None else (p_first if jr.order == "ab" else 1 - p_first)
            rows.append(
                {
                    "prompt_id": jr.prompt_id,
                    "source_id": jr.source_id,
                    "candidate_a": jr.candidate_a,
                    "candidate_b": jr.candidate_b,
                    "annotator": jr.annotator,
                    "order": jr.order,
                    "verdict": map_verdict(shown, jr.order),
                    "prob_a": prob_a,
                    "raw_output": raw,
                    "parse_error": err,
                }
            )
    return rows


def _failure_rows(
    failed: dict[_PairKey, str], budget_cut: set[_PairKey]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dropped ``over_budget`` rows, quarantine ``request_failed`` rows) of the failed
    pairs."""
    drops = [
        {
            "source_id": sid,
            "row_id": f"{a}|{b}",
            "reason": Reason.OVER_BUDGET,
            "detail": f"pair {a} vs {b}: {err}"[:1000],
        }
        for (sid, a, b), err in failed.items()
        if (sid, a, b) in budget_cut
    ]
    quarantine = [
        {
            "source_id": sid,
            "row": None,
            "reason": Reason.REQUEST_FAILED,
            "detail": f"pair {a} vs {b}: {err}"[:1000],
        }
        for (sid, a, b), err in failed.items()
        if (sid, a, b) not in budget_cut
    ]
    return drops, quarantine
