"""The decision rules of :func:`pipeline.denoise.denoise.denoise_pairs` that need more
than a mask: the posterior's and the confidence weights' thresholds, CRM peer review and
the agreement filter, over one :class:`Decisions` record (a pair's first deciding rule
wins)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from pipeline.denoise.assemble import DROP, FLIP, KEEP
from pipeline.denoise.weights import ConfidenceWeights, estimate_confidence_weights
from pipeline.stage import Reason
from schemas.config import DenoiseConfig
from schemas.errors import PrefcurateError

LOW_CONFIDENCE = Reason.LOW_CONFIDENCE.value  # confidence weight in [flip_below, drop_below)
FLIPPED_LOW_CONFIDENCE = Reason.FLIPPED_LOW_CONFIDENCE.value  # weight < flip_below, flipped
PEER_REVIEW = Reason.PEER_REVIEW.value  # both CRM heads reject the pair late in training
DISAGREEMENT_FILTER = Reason.DISAGREEMENT_FILTER.value  # SCIR: judges / RMs / label disagree
PEER_REVIEW_SKIPPED = (
    "denoise.method is posterior; set denoise.peer_review: true to drop the pairs both "
    "reward heads reject"
)


class Decisions:
    """Keep / flip / drop and the reason per pair; a rule decides only the pairs still
    open (the first deciding rule wins)."""

    def __init__(self, n: int) -> None:
        self.decision = np.full(n, KEEP, dtype=np.int8)
        self.reason = np.full(n, None, dtype=object)
        self.open = np.ones(n, dtype=bool)  # not decided yet

    def apply(self, mask: np.ndarray, dec: int, why: str) -> None:
        m = mask & self.open
        self.decision[m] = dec
        self.reason[m] = why
        self.open[m] = False

    def low_confidence(self, ok: np.ndarray, q: np.ndarray, cfg: DenoiseConfig) -> None:
        """Below ``flip_below``: flipped (or dropped); below ``drop_below``: dropped."""
        flip = cfg.on_low_confidence == "flip"
        why = FLIPPED_LOW_CONFIDENCE if flip else LOW_CONFIDENCE
        self.apply(ok & (q < cfg.flip_below), FLIP if flip else DROP, why)
        self.apply(ok & (q < cfg.drop_below), DROP, LOW_CONFIDENCE)


class Weigher:
    """The confidence weights (LCPO / RE-PO EM) of the pairs with votes, with optional
    extra evidence (the reward heads' margins)."""

    def __init__(self, p_i: np.ndarray, ann: pl.Series, valid: np.ndarray, cfg: DenoiseConfig):
        self.p_i, self.valid, self.cfg = p_i, valid, cfg
        self.idx = np.flatnonzero(valid)
        self.ann = ann.gather(self.idx)

    def __call__(self, evidence: np.ndarray | None) -> ConfidenceWeights:
        return estimate_confidence_weights(
            self.p_i[self.idx],
            self.ann,
            eta_init=self.cfg.eta_init,
            calibrate=self.cfg.weight_calibration,
            evidence=None if evidence is None else evidence[self.idx],
        )


def posterior_rule(
    dec: Decisions,
    q: np.ndarray,
    valid: np.ndarray,
    cfg: DenoiseConfig,
    from_model: bool,
    info: dict[str, Any],
) -> np.ndarray:
    """Method ``posterior``: q = P(label right) decides; → the pairs' weights (q)."""
    ok = valid & np.isfinite(q)
    dec.low_confidence(ok, q, cfg)
    info["posterior"] = {
        "p_source": "p_model" if from_model else "p_hat",
        "pairs": int(ok.sum()),
        "flip_below": cfg.flip_below,
        "drop_below": cfg.drop_below,
        "mean_q": float(q[ok].mean()) if ok.any() else None,
    }
    return np.where(ok, q, np.nan)


def weight_rule(
    dec: Decisions,
    res: ConfidenceWeights,
    idx: np.ndarray,
    valid: np.ndarray,
    cfg: DenoiseConfig,
    source_of_p: str,
    info: dict[str, Any],
) -> np.ndarray:
    """The confidence weights decide (method ``weights``); → the pairs' weights."""
    weight = np.full(valid.size, np.nan)
    weight[idx] = res.weight
    dec.low_confidence(valid, weight, cfg)
    info["weights"] = {
        "eta": res.eta,
        "pairs": res.n_per_annotator,
        "iterations": res.iterations,
        "converged": res.converged,
        "p_source": source_of_p,
        "calibrated": cfg.weight_calibration,
        "scales": list(res.scales),
        "evidence": ["p_i"] + (["peer_review_margin"] if len(res.scales) > 1 else []),
        "mean_weight": float(res.weight.mean()) if idx.size else None,
        "noise_rate": res.noise_rate(),
    }
    return weight


def peer_review_rule(
    emb: tuple[Any, Any, Any],
    weigh: Weigher,
    res: ConfidenceWeights | None,
    mode: str,
    cfg: DenoiseConfig,
    info: dict[str, Any],
) -> tuple[np.ndarray | None, np.ndarray | None, ConfidenceWeights | None]:
    """CRM peer review, when the response embeddings are given → (the heads' mean margin,
    the pairs both reject, the confidence weights: refit with the margins as evidence in
    mode ``weights``)."""
    if emb[0] is None or emb[1] is None:
        info["peer_review"] = {
            "ran": False,
            "skipped": "no response embeddings were "
            "given (emb_chosen / emb_rejected); embed the candidates "
            "to run CRM peer review",
        }
        return None, None, res
    # ε̂ and the curriculum come from the confidence weights, computed for them even when
    # the weights do not decide
    base = res if res is not None else weigh(None)
    head_margin, flagged, info["peer_review"] = run_peer_review(*emb, cfg, base, weigh)
    info["peer_review"]["mode"] = mode
    if mode == "weights":
        res = weigh(head_margin)
    return head_margin, flagged, res


def agreement_filter(
    dec: Decisions,
    p_judge: np.ndarray,
    s_judge: np.ndarray,
    s_c: np.ndarray,
    s_r: np.ndarray,
    head_margin: np.ndarray | None,
    info: dict[str, Any],
) -> None:
    """SCIR: of the pairs no earlier rule dropped, drop those where the label, the judges,
    the scores and the reward heads (each where present) do not all agree, and the
    flipped ones."""
    n = dec.decision.size
    reach = dec.open | (dec.decision == FLIP)  # pairs not dropped by an earlier rule
    agree = np.ones(n, dtype=bool)
    signals = ["label"]
    judged = s_judge > 0
    agree &= ~judged | (p_judge > 0.5)
    signals.append("judges")
    both = np.isfinite(s_c) & np.isfinite(s_r)
    if both.any():
        agree &= ~both | (s_c > s_r)
        signals.append("scores")
    if head_margin is not None:
        agree &= head_margin > 0
        signals.append("peer_review")
    bad = reach & (~agree | (dec.decision == FLIP))
    dec.decision[bad] = DROP
    dec.reason[bad] = DISAGREEMENT_FILTER
    dec.open[bad] = False
    considered = int(reach.sum())
    info["agreement_filter"] = {
        "signals": signals,
        "considered": considered,
        "dropped": int(bad.sum()),
        "retention": (considered - int(bad.sum())) / considered if considered else None,
    }


def run_peer_review(
    emb_chosen: np.ndarray,
    emb_rejected: np.ndarray,
    emb_prompt: np.ndarray | None,
    cfg: DenoiseConfig,
    res: ConfidenceWeights,
    weigh: Weigher,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run CRM peer review on every input pair; the noise rate ε̂ = 1 − mean weight and
    the curriculum's easy → hard order come from the confidence weights ``res``."""
    from pipeline.denoise.peer_review import review_pairs

    for name, emb in (
        ("emb_chosen", emb_chosen),
        ("emb_rejected", emb_rejected),
        ("emb_prompt", emb_prompt),
    ):
        if emb is not None and np.shape(emb)[0] != weigh.valid.size:
            raise PrefcurateError(
                f"denoise: {name} has {np.shape(emb)[0]} rows for {weigh.valid.size} "
                f"pairs; align the embeddings with the input pairs"
            )
    confidence = np.where(weigh.valid, weigh.p_i, 0.5)
    confidence[weigh.idx] = res.weight
    if cfg.peer_review_noise_rate is not None:
        eps, eps_from = cfg.peer_review_noise_rate, "config"
    else:
        eps, eps_from = res.noise_rate(), "1 - mean weight"
    c = np.clip(confidence, 1e-6, 1 - 1e-6)
    pr = review_pairs(
        emb_chosen,
        emb_rejected,
        emb_prompt,
        noise_rate=eps,
        prior=np.log(c) - np.log1p(-c),
        epochs=cfg.peer_review_epochs,
        warmup_epochs=cfg.peer_review_warmup_epochs,
        late_epochs=cfg.peer_review_late_epochs,
        hidden=cfg.peer_review_hidden,
        seed=cfg.peer_review_seed,
    )
    margin = 0.5 * (pr.margin_a + pr.margin_b)
    # a pair no head could score out of fold (too few pairs, e.g. a single one) gets
    # margin 0: no evidence either way
    missing = ~np.isfinite(margin)
    return (
        np.where(missing, 0.0, margin),
        pr.flagged,
        {"ran": True, "noise_rate_from": eps_from, "no_margin": int(missing.sum()), **pr.info},
    )
