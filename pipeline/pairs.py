"""Pair building and the published table.

``build_pairs``: input PAIRS (denoised), output PAIRS selected by a strategy. Row unit:
one pair. Strategy ``best_worst``: per ``source_id`` (one input prompt or one input
pair), the pair whose chosen has the highest aggregated score and whose rejected has the
lowest, among the pairs denoise kept. Other pairs are dropped ``not_selected``; when the
scores do not separate the two (equal, or a null score) the prompt's pairs are dropped
``tie`` / ``null_score`` — never paired silently.

``published_table``: selected PAIRS + PROMPTS + CANDIDATES → PUBLISHED (TRL
conversational ``prompt`` / ``chosen`` / ``rejected`` plus margin, weight, lineage).

>>> import pyarrow as pa
>>> from schemas.tables import PAIRS
>>> def row(pid, ch, rj, sc, sr):
...     return dict(pair_id=pid, prompt_id="p", source_id="s", chosen_id=ch, rejected_id=rj,
...         p_hat=0.8, disagreement=0.4, n_votes=2, margin=1.0, weight=0.8,
...         label_status="agree", similarity=None, flags=[], decision="keep", reason=None,
...         score_chosen=sc, score_rejected=sr, curriculum_stage=None, split=None)
>>> t = pa.Table.from_pylist([row("1", "x", "y", 0.9, 0.5), row("2", "x", "z", 0.9, 0.1)],
...                          schema=PAIRS)
>>> res = build_pairs(t)
>>> res.outputs["pairs"].column("pair_id").to_pylist(), res.counts.to_dict()["dropped"]
(['2'], {'not_selected': 1})
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.tables import PAIRS, PUBLISHED, from_rows

STAGE = "pairs"
STAGE_VERSION = 1


def build_pairs(pairs: pa.Table, strategy: str = "best_worst") -> StageResult:
    """Select pairs per source by ``strategy`` (``best_worst``)."""
    if strategy != "best_worst":
        raise ValueError(f"unknown pair strategy {strategy!r}")
    groups: dict[str, list[dict]] = {}
    for r in pairs.to_pylist():
        groups.setdefault(r["source_id"], []).append(r)
    kept, drops = [], []
    for sid, rows in groups.items():
        scored = [r for r in rows if r["score_chosen"] is not None
                  and r["score_rejected"] is not None]
        for r in rows:
            if r not in scored:
                drops.append({"source_id": sid, "row_id": r["pair_id"],
                              "reason": Reason.NULL_SCORE,
                              "detail": "a candidate of this pair has no aggregated score"})
        if not scored:
            continue
        best = max(scored, key=lambda r: (r["score_chosen"] - r["score_rejected"],
                                          r["margin"] or 0.0, r["pair_id"]))
        gap = best["score_chosen"] - best["score_rejected"]
        for r in scored:
            if r is best and gap > 0:
                kept.append(r)
            elif gap <= 0:
                drops.append({"source_id": sid, "row_id": r["pair_id"], "reason": Reason.TIE,
                              "detail": f"scores do not separate chosen from rejected "
                                        f"(best gap {gap:.3f})"})
            else:
                drops.append({"source_id": sid, "row_id": r["pair_id"],
                              "reason": Reason.NOT_SELECTED,
                              "detail": f"{strategy}: pair {best['pair_id']} was selected"})
    out = from_rows(kept, PAIRS, "pairs")
    counts = StageCounts(rows_in=pairs.num_rows, kept=len(kept),
                         dropped=dict(Counter(str(d["reason"]) for d in drops)))
    return StageResult(STAGE, {"pairs": out}, counts, dropped_table(STAGE, drops),
                       info={"strategy": strategy})


def published_table(pairs: pa.Table, prompts: pa.Table, candidates: pa.Table) -> pa.Table:
    """Join the selected pairs with their prompt and texts into the PUBLISHED schema."""
    prompt_of = dict(zip(prompts.column("prompt_id").to_pylist(),
                         prompts.column("prompt").to_pylist()))
    cand = {r["candidate_id"]: r for r in
            candidates.select(["candidate_id", "text", "policy"]).to_pylist()}
    rows = []
    for p in pairs.to_pylist():
        ch, rj = cand[p["chosen_id"]], cand[p["rejected_id"]]
        rows.append({
            "prompt": prompt_of[p["prompt_id"]],
            "chosen": [{"role": "assistant", "content": ch["text"]}],
            "rejected": [{"role": "assistant", "content": rj["text"]}],
            "margin": p["margin"], "weight": p["weight"], "p_hat": p["p_hat"],
            "disagreement": p["disagreement"], "n_votes": p["n_votes"],
            "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"],
            "source_id": p["source_id"], "prompt_id": p["prompt_id"], "pair_id": p["pair_id"],
            "chosen_id": p["chosen_id"], "rejected_id": p["rejected_id"],
            "chosen_policy": ch["policy"], "rejected_policy": rj["policy"],
            "label_status": p["label_status"], "decision": p["decision"], "flags": p["flags"],
        })
    return from_rows(rows, PUBLISHED, "published")
