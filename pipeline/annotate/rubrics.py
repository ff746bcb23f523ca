"""Pointwise rubric judges (UltraFeedback style): format → call → parse, per candidate.

Input: CANDIDATES (+ PROMPTS for the request text). Output: SCORES, one row per
(candidate, rubric judge, aspect) with ``annotator = judge|template|persona``. Row unit
of the stage: one (candidate, rubric judge) request. Kept: every request that was asked
(its scores may be null). Dropped: ``empty_output`` (a candidate without text: nothing
to rate).

The judge sees the request and one response, fenced with a nonce derived from their
content exactly as the pairwise judge fences them (a response cannot close its fence),
and answers JSON ``{aspect: integer min..max, ..., "rationale": short string}``, asked
through structured output where the engine supports it. The scores come first and the
rationale last, so an answer cut by ``max_tokens`` still yields its scores through the
lenient parser. Parsing never raises: a strict JSON parse, then a lenient one for plain
text (``Helpfulness: 4/5``, ``**Honesty**: 3``, truncated JSON); a missing, non-numeric,
ambiguous or out-of-range score becomes a null score with the raw text and a
``parse_error``.

The requests' format is in :mod:`pipeline.annotate.rubric_format`, the parsing in
:mod:`pipeline.annotate.rubric_parse`; this module builds the requests and the SCORES.

>>> parse_rubric('{"helpfulness": 4, "honesty": 9, "rationale": "ok"}',
...              ["helpfulness", "honesty"])  # doctest: +NORMALIZE_WHITESPACE
RubricParse(scores={'helpfulness': (4.0, None),
                    'honesty': (None, "score 9 for 'honesty' is outside 1..5")},
            rationale='ok')
>>> parse_rubric("Helpfulness: 4/5. Honesty - 5", ["helpfulness", "honesty"]).scores
{'helpfulness': (4.0, None), 'honesty': (5.0, None)}
>>> parse_rubric("", ["helpfulness"]).scores
{'helpfulness': (None, 'empty output')}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import conversation
from pipeline.annotate.judging import annotator_base
from pipeline.annotate.rubric_format import (  # noqa: F401 - re-exported
    ASPECT_GUIDE,
    FENCED,
    SYSTEM_V1,
    SYSTEM_YESNO,
    TEMPLATE_V1,
    TEMPLATE_YESNO,
    YESNO_ASPECT,
    aspects_of,
    format_rubric,
    format_yesno,
    rubric_schema,
)
from pipeline.annotate.rubric_parse import RubricParse, parse_rubric, parse_yesno  # noqa: F401
from pipeline.engines.base import ChatRequest, Completion, failure_reason, fake_json
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.config import DEFAULT_ASPECTS, RubricConfig
from schemas.tables import SCORES, VOTES, from_rows

STAGE = "rubric"
STAGE_VERSION = 2


@dataclass(frozen=True)
class RubricRequest:
    prompt_id: str
    source_id: str
    candidate_id: str
    annotator: str
    aspects: tuple[str, ...]
    min_score: int
    max_score: int
    engine_kind: str
    model: str
    request: ChatRequest


def rubric_annotator(cfg: RubricConfig) -> str:
    """``name|template|persona-hash`` (the pairwise judges add ``|order``)."""
    return annotator_base(cfg)


def build_rubric_requests(
    candidates: pa.Table, prompts: pa.Table, judges: list[RubricConfig]
) -> tuple[list[RubricRequest], list[dict]]:
    """One request per (candidate, judge); candidates without text are dropped.

    Returns (requests, dropped rows with reason ``empty_output``), requests grouped by
    judge in the order of ``judges``.
    """
    prompt_of = dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist())
    )
    rows = candidates.select(["prompt_id", "source_id", "candidate_id", "text"]).to_pylist()
    for r, h in zip(rows, conversation.histories(candidates)):
        # a multi-turn candidate: the transcript of its side, its last answer judged
        r["shown"] = conversation.shown(h, r["text"])
    out, drops = [], []
    for cfg in judges:
        ann = rubric_annotator(cfg)
        for r in rows:
            if r["text"] is None or not r["text"].strip():
                drops.append(
                    {
                        "source_id": r["source_id"],
                        "row_id": r["candidate_id"],
                        "reason": Reason.EMPTY_OUTPUT,
                        "detail": f"rubric {cfg.name}: candidate has no text",
                    }
                )
                continue
            if cfg.template == "yesno_v1":
                req = format_yesno(cfg, prompt_of[r["prompt_id"]], r["shown"])
                lo, hi = 0, 1
            else:
                req = format_rubric(cfg, prompt_of[r["prompt_id"]], r["shown"])
                lo, hi = cfg.min_score, cfg.max_score
            out.append(
                RubricRequest(
                    r["prompt_id"],
                    r["source_id"],
                    r["candidate_id"],
                    ann,
                    aspects_of(cfg),
                    lo,
                    hi,
                    cfg.model.engine,
                    cfg.model.model,
                    req,
                )
            )
    return out, drops


def make_scores(
    requests: list[RubricRequest], completions: list[Completion], drops: list[dict] | None = None
) -> StageResult:
    """Parse completions into SCORES rows; unparseable output is a null score, kept.

    ``info`` counts ``rubric_calls``, ``parse_errors`` (null-score rows),
    ``requests_with_parse_errors`` and ``null_scores`` per ``annotator/aspect``.

    >>> cfg = RubricConfig(aspects=("helpfulness",))
    >>> rr = RubricRequest("p", "s", "c1", rubric_annotator(cfg), cfg.aspects, 1, 5, "fake",
    ...                    "m", format_rubric(cfg, [{"role": "user", "content": "q"}], "a"))
    >>> res = make_scores([rr], [Completion(texts=['{"helpfulness": 7}'],
    ...                                     finish_reasons=["stop"])])
    >>> res.outputs["scores"].column("score").to_pylist(), res.info["parse_errors"]
    ([None], 1)
    """
    drops = list(drops or [])
    rows = []
    bad_requests = 0
    cut = 0
    nulls: Counter[str] = Counter()
    failed = []
    for rr, comp in zip(requests, completions, strict=True):
        if comp.error is not None:  # no score row: made again by the next run
            row = _failure_row(rr, comp.error)
            if row["reason"] == Reason.OVER_BUDGET:  # dropped: the budget did not allow it
                drops.append(row)
                cut += 1
            else:  # quarantined
                failed.append(row)
            continue
        new = _score_rows(rr, comp)
        nulls.update(f"{rr.annotator}/{r['aspect']}" for r in new if r["score"] is None)
        bad_requests += any(r["score"] is None for r in new)
        rows += new
    scores = from_rows(rows, SCORES, "scores")
    counts = StageCounts(
        rows_in=len(requests) + len(drops) - cut,
        kept=len(requests) - len(failed) - cut,
        dropped=dict(Counter(str(d["reason"]) for d in drops)),
        quarantined=dict(Counter(str(q["reason"]) for q in failed)),
        rows_out=len(rows),
    )
    return StageResult(
        STAGE,
        {"scores": scores},
        counts,
        dropped_table(STAGE, drops),
        quarantine_table(STAGE, failed),
        info={
            "rubric_calls": len(requests),
            "parse_errors": sum(r["parse_error"] is not None for r in rows),
            "requests_with_parse_errors": bad_requests,
            "null_scores": dict(sorted(nulls.items())),
        },
    )


def _failure_row(rr: RubricRequest, error: str) -> dict[str, Any]:
    """The dropped (``over_budget``) or quarantine row of a request whose call failed."""
    return {
        "source_id": rr.source_id,
        "row": None,
        "row_id": rr.candidate_id,
        "reason": failure_reason(error),
        "detail": f"{rr.annotator} on {rr.candidate_id}: {error}"[:1000],
    }


def _score_rows(rr: RubricRequest, comp: Completion) -> list[dict[str, Any]]:
    """The SCORES rows (one per aspect) of a request's answer: P(Yes) for a ``yesno_v1``
    judge, else the rubric's scores; a score that does not parse is null with its error."""
    raw = comp.texts[0] if comp.texts else None
    if rr.aspects == (YESNO_ASPECT,) and rr.annotator.split("|")[1] == "yesno_v1":
        tops = comp.top_logprobs[0] if comp.top_logprobs else None
        parsed = {YESNO_ASPECT: parse_yesno(raw, tops)}
    else:
        parsed = parse_rubric(
            raw, rr.aspects, min_score=rr.min_score, max_score=rr.max_score
        ).scores
    return [
        {
            "candidate_id": rr.candidate_id,
            "annotator": rr.annotator,
            "aspect": a,
            "score": parsed[a][0],
            "raw_output": raw,
            "parse_error": parsed[a][1],
        }
        for a in rr.aspects
    ]


def yesno_votes(scores: pa.Table, candidates: pa.Table) -> pa.Table:
    """Pairwise VOTES from ``yesno_v1`` scores: for every two candidates of a prompt that
    both have a P(Yes), ``prob_a`` = s_a(1 − s_b) / (s_a(1 − s_b) + s_b(1 − s_a)) (the
    chance that a is right and b wrong, given exactly one is), verdict a / b (tie when
    equal), ``order`` null, annotator the rubric judge's. So a pointwise judge enters the
    aggregation, and the judge qualification, like a pairwise one.

    >>> sc = pa.table({"candidate_id": ["c1", "c2"], "annotator": ["j|yesno_v1|none"] * 2,
    ...                "aspect": ["correct"] * 2, "score": [0.8, 0.2]})
    >>> ca = pa.table({"prompt_id": ["p", "p"], "source_id": ["s", "s"],
    ...                "candidate_id": ["c1", "c2"]})
    >>> v = yesno_votes(sc, ca).to_pylist()[0]
    >>> v["candidate_a"], v["verdict"], round(v["prob_a"], 3)
    ('c1', 'a', 0.941)
    """
    import itertools

    rows = []
    where = {
        c: (p, s)
        for p, s, c in zip(
            candidates.column("prompt_id").to_pylist(),
            candidates.column("source_id").to_pylist(),
            candidates.column("candidate_id").to_pylist(),
        )
    }
    by: dict[tuple[str, str, str], dict[str, float]] = {}
    for cid, ann, asp, sc in zip(
        scores.column("candidate_id").to_pylist(),
        scores.column("annotator").to_pylist(),
        scores.column("aspect").to_pylist(),
        scores.column("score").to_pylist(),
    ):
        if sc is None or asp != YESNO_ASPECT or "|yesno_v1|" not in ann or cid not in where:
            continue
        p, s = where[cid]
        by.setdefault((ann, p, s), {})[cid] = min(max(float(sc), 1e-6), 1 - 1e-6)
    for (ann, p, s), sc in sorted(by.items()):
        for a, b in itertools.combinations(sorted(sc), 2):
            x, y = sc[a], sc[b]
            pa_ = x * (1 - y) / (x * (1 - y) + y * (1 - x))
            verdict = "a" if pa_ > 0.5 else "b" if pa_ < 0.5 else "tie"
            rows.append(
                {
                    "prompt_id": p,
                    "source_id": s,
                    "candidate_a": a,
                    "candidate_b": b,
                    "annotator": ann,
                    "order": None,
                    "verdict": verdict,
                    "prob_a": pa_,
                    "raw_output": None,
                    "parse_error": None,
                }
            )
    return from_rows(rows, VOTES, "votes")


def fake_rubric_responder(request: ChatRequest, sample_index: int) -> str:
    """A FakeEngine responder that answers rubric requests with schema-valid JSON.

    The scores are a deterministic function of the request; use it as
    ``FakeEngine(responder=fake_rubric_responder)`` in tests and fake-engine runs.
    """
    schema = request.json_schema or rubric_schema(DEFAULT_ASPECTS)
    return fake_json(json.loads(schema), request.messages, sample_index)
