"""Noise filtering: decide keep / flip / drop for every pair, always with a reason.

Input: PAIRS (from margins). Output: PAIRS whose ``decision`` is ``keep`` or ``flip``
(flipped pairs are re-oriented: chosen ↔ rejected, p̂ → 1 − p̂, margin recomputed).
Row unit: one pair. Dropped reasons: ``null_score`` (no valid vote), ``tie`` (as many
votes each way), ``contradicted`` (votes go against the dataset's label, when
``on_contradicted = drop``), ``contested`` (when ``drop_contested``),
``high_disagreement`` (d > ``max_disagreement``).

>>> import pyarrow as pa
>>> from schemas.config import DenoiseConfig, MarginConfig
>>> from pipeline.margins import oriented_row
>>> c = dict(prompt_id="p", source_id="s", candidate_a="x", candidate_b="y", n_votes=4,
...          n_a=1.0, n_b=3.0, n_tie=0.0, n_null=0, p_a=0.25, label="a")
>>> pairs = from_rows([oriented_row(c, True, MarginConfig(), {})], PAIRS, "pairs")
>>> res = denoise_pairs(pairs, DenoiseConfig(on_contradicted="flip"), MarginConfig())
>>> row = res.outputs["pairs"].to_pylist()[0]
>>> row["decision"], row["chosen_id"], row["reason"]
('flip', 'y', 'contradicted')
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.hashing import stable_hash
from pipeline.margins import disagreement, margin_from_p
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import DenoiseConfig, MarginConfig
from schemas.tables import PAIRS, from_rows

STAGE = "denoise"
STAGE_VERSION = 1


def _flip(row: dict, mcfg: MarginConfig) -> dict:
    p = 1.0 - row["p_hat"]
    out = dict(row)
    out.update(chosen_id=row["rejected_id"], rejected_id=row["chosen_id"],
               pair_id=stable_hash(row["source_id"], row["rejected_id"], row["chosen_id"]),
               p_hat=p, disagreement=disagreement(p), margin=margin_from_p(p, mcfg.lam, mcfg.cap),
               weight=p, score_chosen=row["score_rejected"], score_rejected=row["score_chosen"],
               decision="flip", reason=str(Reason.CONTRADICTED))
    out["label_status"] = "contradicted"  # the original label was contradicted
    return out


def decide(row: dict, cfg: DenoiseConfig) -> tuple[str, Reason | None]:
    """The decision for one pair and its reason (None for a plain keep)."""
    if row["p_hat"] is None or row["n_votes"] == 0:
        return "drop", Reason.NULL_SCORE
    if "tie" in row["flags"]:
        return "drop", Reason.TIE
    if row["disagreement"] is not None and row["disagreement"] > cfg.max_disagreement:
        return "drop", Reason.HIGH_DISAGREEMENT
    status = row["label_status"]
    if status == "contradicted":
        if cfg.on_contradicted == "drop":
            return "drop", Reason.CONTRADICTED
        if cfg.on_contradicted == "flip":
            return "flip", Reason.CONTRADICTED
    if status == "contested" and cfg.drop_contested:
        return "drop", Reason.CONTESTED
    return "keep", None


def denoise_pairs(pairs: pa.Table, cfg: DenoiseConfig, mcfg: MarginConfig) -> StageResult:
    """Apply :func:`decide` to every pair; dropped pairs go to the dropped table."""
    kept, drops = [], []
    for row in pairs.to_pylist():
        decision, reason = decide(row, cfg)
        if decision == "drop":
            drops.append({"source_id": row["source_id"], "row_id": row["pair_id"],
                          "reason": reason,
                          "detail": f"p_hat={row['p_hat']} n_votes={row['n_votes']} "
                                    f"status={row['label_status']}"})
        elif decision == "flip":
            kept.append(_flip(row, mcfg))
        else:
            kept.append({**row, "decision": "keep", "reason": None})
    out = from_rows(kept, PAIRS, "pairs")
    counts = StageCounts(rows_in=pairs.num_rows, kept=len(kept),
                         dropped=dict(Counter(str(d["reason"]) for d in drops)))
    n_flip = sum(r["decision"] == "flip" for r in kept)
    return StageResult(STAGE, {"pairs": out}, counts, dropped_table(STAGE, drops),
                       info={"flipped": n_flip})
