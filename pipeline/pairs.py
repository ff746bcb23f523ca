"""Pair building and the published table.

``build_pairs``: input PAIRS (denoised), output PAIRS selected by a strategy. Row unit:
one pair. Pairs are grouped by ``source_id`` (one input prompt, or one input pair).

- ``best_worst``: the pair whose chosen has the highest aggregated score and whose
  rejected has the lowest, among the pairs denoise kept; the others are dropped
  ``not_selected``. When the scores do not separate the two the source's pairs are
  dropped ``tie``; a pair with a null score is dropped ``null_score`` — never paired
  silently.
- ``all_pairs``: every kept pair with ``margin ≥ min_margin`` (else ``below_min_margin``).
- ``curriculum`` (Curry-DPO, arXiv 2403.07230): the pairs whose chosen is the source's
  best candidate, ordered by score gap (largest = easiest) into ``curriculum_stages``
  stages; other pairs ``not_selected``.

Then optionally ``split = easy_hard`` (MPO, arXiv 2403.19443): ``split`` is ``hard`` for
pairs whose margin is below the ``hard_quantile`` of kept margins, else ``easy``; and
``reward_augmented`` twins (arXiv 2410.08067): each kept pair gets a twin conditioned on
the rejected response's score with chosen and rejected exchanged; the original is
conditioned on the chosen score (flags ``ra_target=<score>``, ``ra_twin``).

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
>>> from schemas.config import PairsConfig
>>> res = build_pairs(t, PairsConfig(strategy="curriculum", curriculum_stages=2))
>>> res.outputs["pairs"].select(["pair_id", "curriculum_stage"]).to_pylist()
[{'pair_id': '2', 'curriculum_stage': 1}, {'pair_id': '1', 'curriculum_stage': 2}]
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa

from pipeline.hashing import stable_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import PairsConfig
from schemas.tables import PAIRS, PUBLISHED, from_rows

STAGE = "pairs"
STAGE_VERSION = 2
BELOW_MIN_MARGIN = "below_min_margin"
RA_TARGET = "ra_target="
RA_TWIN = "ra_twin"


def _drop(sid: str, r: dict, reason: str, detail: str) -> dict:
    return {"source_id": sid, "row_id": r["pair_id"], "reason": reason, "detail": detail}


def _select_best_worst(sid: str, rows: list[dict], drops: list[dict]) -> list[dict]:
    scored = [r for r in rows if r["score_chosen"] is not None
              and r["score_rejected"] is not None]
    if not scored:
        return []
    best = max(scored, key=lambda r: (r["score_chosen"] - r["score_rejected"],
                                      r["margin"] or 0.0, r["pair_id"]))
    gap = best["score_chosen"] - best["score_rejected"]
    kept = []
    for r in scored:
        if r is best and gap > 0:
            kept.append(r)
        elif gap <= 0:
            drops.append(_drop(sid, r, Reason.TIE, f"scores do not separate chosen from "
                                                   f"rejected (best gap {gap:.3f})"))
        else:
            drops.append(_drop(sid, r, Reason.NOT_SELECTED,
                               f"best_worst: pair {best['pair_id']} was selected"))
    return kept


def _select_curriculum(sid: str, rows: list[dict], drops: list[dict],
                       n_stages: int) -> list[dict]:
    scored = [r for r in rows if r["score_chosen"] is not None
              and r["score_rejected"] is not None]
    if not scored:
        return []
    best_id = max(scored, key=lambda r: (r["score_chosen"], r["chosen_id"]))["chosen_id"]
    mine = [r for r in scored if r["chosen_id"] == best_id
            and r["score_chosen"] - r["score_rejected"] > 0]
    mine.sort(key=lambda r: (-(r["score_chosen"] - r["score_rejected"]), r["pair_id"]))
    kept = []
    for rank, r in enumerate(mine):
        stage = 1 + (rank * n_stages) // max(len(mine), 1)
        kept.append({**r, "curriculum_stage": min(stage, n_stages)})
    chosen = {r["pair_id"] for r in mine}
    for r in scored:
        if r["pair_id"] in chosen:
            continue
        if r["chosen_id"] == best_id:
            drops.append(_drop(sid, r, Reason.TIE, "scores do not separate chosen from "
                                                   "rejected"))
        else:
            drops.append(_drop(sid, r, Reason.NOT_SELECTED,
                               "curriculum: chosen is not the best candidate"))
    return kept


def _twins(rows: list[dict]) -> list[dict]:
    """Reward-augmented twins: condition on the target score; the twin is reversed."""
    out = []
    for r in rows:
        out.append({**r, "flags": list(r["flags"]) + [f"{RA_TARGET}{r['score_chosen']:.2f}"]})
        twin = {**r, "chosen_id": r["rejected_id"], "rejected_id": r["chosen_id"],
                "score_chosen": r["score_rejected"], "score_rejected": r["score_chosen"],
                "pair_id": stable_hash(r["pair_id"], RA_TWIN),
                "flags": list(r["flags"]) + [f"{RA_TARGET}{r['score_rejected']:.2f}", RA_TWIN]}
        out.append(twin)
    return out


def build_pairs(pairs: pa.Table, cfg: PairsConfig | str = "best_worst") -> StageResult:
    """Select pairs per source by ``cfg.strategy``, then split / augment."""
    if isinstance(cfg, str):
        cfg = PairsConfig(strategy=cfg)
    groups: dict[str, list[dict]] = {}
    for r in pairs.to_pylist():
        groups.setdefault(r["source_id"], []).append(r)
    kept: list[dict] = []
    drops: list[dict] = []
    for sid, rows in groups.items():
        for r in rows:
            if r["score_chosen"] is None or r["score_rejected"] is None:
                if cfg.strategy != "all_pairs":
                    drops.append(_drop(sid, r, Reason.NULL_SCORE,
                                       "a candidate of this pair has no aggregated score"))
        if cfg.strategy == "best_worst":
            kept += _select_best_worst(sid, rows, drops)
        elif cfg.strategy == "curriculum":
            kept += _select_curriculum(sid, rows, drops, cfg.curriculum_stages)
        else:
            for r in rows:
                if r["margin"] is None:
                    drops.append(_drop(sid, r, Reason.NULL_SCORE, "no margin"))
                elif r["margin"] < cfg.min_margin:
                    drops.append(_drop(sid, r, BELOW_MIN_MARGIN,
                                       f"margin {r['margin']:.3f} < {cfg.min_margin}"))
                else:
                    kept.append(r)
    n_kept = len(kept)
    info: dict = {"strategy": cfg.strategy}
    if cfg.split == "easy_hard" and kept:
        margins = np.array([r["margin"] or 0.0 for r in kept])
        thr = float(np.quantile(margins, cfg.hard_quantile))
        kept = [{**r, "split": "hard" if (r["margin"] or 0.0) < thr else "easy"} for r in kept]
        info["hard_below_margin"] = thr
        info["split_counts"] = dict(Counter(r["split"] for r in kept))
    if cfg.reward_augmented:
        kept = _twins(kept)
        info["reward_augmented_twins"] = n_kept
    out = from_rows(kept, PAIRS, "pairs")
    counts = StageCounts(rows_in=pairs.num_rows, kept=n_kept,
                         dropped=dict(Counter(str(d["reason"]) for d in drops)),
                         rows_out=len(kept))
    return StageResult(STAGE, {"pairs": out}, counts, dropped_table(STAGE, drops), info=info)


def _conditioned(prompt: list[dict], flags: list[str]) -> list[dict]:
    target = next((f[len(RA_TARGET):] for f in flags if f.startswith(RA_TARGET)), None)
    if target is None:
        return prompt
    note = (f"Write a response whose quality score (0 to 1) is {target}.")
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": prompt[0]["content"] + "\n" + note}] + prompt[1:]
    return [{"role": "system", "content": note}] + prompt


def published_table(pairs: pa.Table, prompts: pa.Table, candidates: pa.Table) -> pa.Table:
    """Join the selected pairs with their prompt and texts into the PUBLISHED schema."""
    prompt_of = dict(zip(prompts.column("prompt_id").to_pylist(),
                         prompts.column("prompt").to_pylist()))
    cand = {r["candidate_id"]: r for r in
            candidates.select(["candidate_id", "text", "policy"]).to_pylist()}
    rows = []
    for p in pairs.to_pylist():
        ch, rj = cand[p["chosen_id"]], cand[p["rejected_id"]]
        margin = p["margin"]
        rows.append({
            "prompt": _conditioned(prompt_of[p["prompt_id"]], p["flags"]),
            "chosen": [{"role": "assistant", "content": ch["text"]}],
            "rejected": [{"role": "assistant", "content": rj["text"]}],
            "margin": 0.0 if margin is None or math.isnan(margin) else margin,
            "weight": p["weight"], "p_hat": p["p_hat"],
            "disagreement": p["disagreement"], "n_votes": p["n_votes"],
            "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"],
            "source_id": p["source_id"], "prompt_id": p["prompt_id"], "pair_id": p["pair_id"],
            "chosen_id": p["chosen_id"], "rejected_id": p["rejected_id"],
            "chosen_policy": ch["policy"], "rejected_policy": rj["policy"],
            "label_status": p["label_status"], "decision": p["decision"],
            "flipped": p["decision"] == "flip", "flags": p["flags"],
            "curriculum_stage": p["curriculum_stage"], "split": p["split"],
        })
    return from_rows(rows, PUBLISHED, "published")
