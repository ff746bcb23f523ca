"""Noise filtering: decide keep / flip / drop for every pair, always with a reason.

Input: PAIRS (from margins). Output: PAIRS whose ``decision`` is ``keep`` or ``flip``.
Flipped pairs are re-oriented: chosen ↔ rejected (and their scores), a new ``pair_id``,
p̂ → 1 − p̂, disagreement and margin recomputed, ``label_status`` ``contradicted`` and the
flag ``flipped``. Row unit: one pair; ``in = kept + dropped`` (each drop with a reason).

Method ``posterior`` (the default): q = ``p_model``, the aggregation's posterior that the
label is right (Dawid–Skene over every annotator, the file's label included; the vote
share where there is none). Rules 1, 3–5 as below, rule 2 (``tie``) only where q is
undefined (a tie in the raw counts that the posterior separates is decided by it), then
q < ``flip_below`` → flip (``flipped_low_confidence``, or drop per ``on_low_confidence``),
q < ``drop_below`` → drop ``low_confidence``, else keep; ``weight`` = q (1 − q once
flipped). Peer review runs only when asked (``peer_review: true``, mode ``drop``); the
agreement filter as below. Method ``weights``: the rules below.

The rules, in order — the first that applies decides:

1. ``null_score``: no valid vote. 2. ``tie``: as many votes each way (never kept).
3. ``high_disagreement``: d > ``max_disagreement``.
4. ``contradicted``: votes against the dataset's label (p̂ ≤ ½ − band): drop, flip (reason
   ``contradicted``) or keep, per ``on_contradicted``.
5. ``contested`` (near 50/50) when ``drop_contested``.
6. Confidence weights (``confidence_weights``; LCPO / RE-PO, :mod:`pipeline.denoise.weights`):
   ``weight`` = w_i, the posterior that the label is right; w < ``flip_below`` →
   ``on_low_confidence`` (flip with reason ``flipped_low_confidence``, or drop
   ``low_confidence``); ``flip_below`` ≤ w < ``drop_below`` → drop ``low_confidence``
   (defaults 0.3 / 0.5, chosen with ``bench/noise_eval.py``).
   A flipped pair's weight is 1 − w (the new orientation's probability). With
   ``weight_calibration`` the EM also fits the scale of p_i's log-odds (vote shares are
   not probabilities of being right; see :mod:`pipeline.denoise.weights`).
7. Peer review (``peer_review``; CRM, :mod:`pipeline.denoise.peer_review`), trained on every
   input pair with ε̂ = 1 − mean confidence weight (the weights are estimated for this
   even when ``confidence_weights`` is off) and its margins out of fold.
   Mode ``drop``: a pair both reward heads reject late in training is dropped
   ``peer_review``. Mode ``weights``: the heads' mean margin is one more log-odds column
   of the confidence weights (its scale fitted by the EM), so rule 6 decides with it.
   ``auto`` (default): ``weights`` with confidence weights, else ``drop``. Needs the
   embeddings; without them peer review is skipped and ``info["peer_review"]["skipped"]``
   says why.
8. Agreement filter (``agreement_filter``; SCIR): a pair is kept only when every signal
   present agrees with its label: the judges' consensus (votes without the label's own
   vote), the reward scores (``score_chosen > score_rejected`` when both are set), the
   peer-review heads (mean margin > 0, when they ran) and the original label — so a pair
   that rules 4 or 6 would flip is dropped instead. Reason ``disagreement_filter``;
   ``info["agreement_filter"]["retention"]`` is the share of the pairs reaching the
   filter that it keeps.

p_i, the model probability that a pair's label is right (rule 6): p̂ from the votes, with
the label's own vote taken out when the pair's label source is known (aggregation counts
the label as a vote; it must not count twice, once in p_i and once in η); or σ(s_c − s_r)
from the scores (``weight_source = scores``); or the caller's ``p_model`` (e.g. a
Dawid–Skene posterior without the label, a reward model) where it is finite.

``label_source`` names who labelled each pair (the LCPO annotator k): one name for the
whole table, or one per row (None: the pair was oriented by its votes, annotator
``aggregate``). Omitted, every pair shares one annotator ``label`` and p_i is p̂ as is.
Info keys: ``flipped``, and only for the features switched on: ``weights`` (η per
annotator, scales, iterations, mean weight), ``peer_review``, ``agreement_filter``.

Measured with ``bench/noise_eval.py`` (30% flipped labels, 3 judges of accuracy
0.70–0.85, one position-biased, and a spammer): confidence weights on a judges-only
Dawid–Skene posterior (``p_model``) with peer review as evidence recover 96–97% of the
labels at F1 0.91–0.93 for the flagged pairs, against 90–91% and 0.82–0.84 for majority
vote; see the bench's docstring for the recommended configuration.

>>> import pyarrow as pa
>>> from schemas.config import DenoiseConfig, MarginConfig
>>> from pipeline.margins import oriented_row
>>> c = dict(prompt_id="p", source_id="s", candidate_a="x", candidate_b="y", n_votes=4,
...          n_a=1.0, n_b=3.0, n_tie=0.0, n_null=0, p_a=0.25, label="a")
>>> pairs = from_rows([oriented_row(c, True, MarginConfig(), {})], PAIRS, "pairs")
>>> res = denoise_pairs(pairs, DenoiseConfig(on_contradicted="flip"), MarginConfig())
>>> row = res.outputs["pairs"].to_pylist()[0]
>>> row["decision"], row["chosen_id"], row["reason"], row["flags"]
('flip', 'y', 'contradicted', ['flipped'])
>>> cfg = DenoiseConfig(method="weights", on_contradicted="keep", confidence_weights=True)
>>> res = denoise_pairs(pairs, cfg, MarginConfig(), label_source="src")
>>> row = res.outputs["pairs"].to_pylist()[0]
>>> row["reason"], row["chosen_id"], round(res.info["weights"]["eta"]["src"], 2)
('flipped_low_confidence', 'y', 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.denoise.assemble import DROP as _DROP
from pipeline.denoise.assemble import FLIP as _FLIP
from pipeline.denoise.assemble import FLIPPED, STAGE, assemble
from pipeline.denoise.assemble import KEEP as _KEEP
from pipeline.denoise.posterior import (
    _label_sources,
    _model_probability,
    judge_probability,
    judges_posterior,
    p_model_values,
)
from pipeline.denoise.weights import (
    AGGREGATE,
    DEFAULT_ANNOTATOR,
    ConfidenceWeights,
    estimate_confidence_weights,
)
from pipeline.stage import Reason, StageCounts, StageResult
from schemas.config import DenoiseConfig, MarginConfig
from schemas.errors import PrefcurateError
from schemas.tables import PAIRS, conform, from_rows  # noqa: F401 (from_rows: doctest)

STAGE_VERSION = 5

# Drop reasons of this stage (pipeline.stage.Reason, as plain strings) and the flip flag.
LOW_CONFIDENCE = Reason.LOW_CONFIDENCE.value  # confidence weight in [flip_below, drop_below)
FLIPPED_LOW_CONFIDENCE = Reason.FLIPPED_LOW_CONFIDENCE.value  # weight < flip_below, flipped
PEER_REVIEW = Reason.PEER_REVIEW.value  # both CRM heads reject the pair late in training
DISAGREEMENT_FILTER = Reason.DISAGREEMENT_FILTER.value  # SCIR: judges / RMs / label disagree


def decide(row: dict, cfg: DenoiseConfig) -> tuple[str, Reason | None]:
    """The decision of the vote rules (1–5) for one pair and its reason (None: keep)."""
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


def _peer_review(
    emb_chosen: np.ndarray,
    emb_rejected: np.ndarray,
    emb_prompt: np.ndarray | None,
    n: int,
    cfg: DenoiseConfig,
    res: ConfidenceWeights,
    idx: np.ndarray,
    p_i: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run CRM peer review on every input pair; the noise rate ε̂ = 1 − mean weight and
    the curriculum's easy → hard order come from the confidence weights ``res``."""
    from pipeline.denoise.peer_review import review_pairs

    for name, emb in (
        ("emb_chosen", emb_chosen),
        ("emb_rejected", emb_rejected),
        ("emb_prompt", emb_prompt),
    ):
        if emb is not None and np.shape(emb)[0] != n:
            raise PrefcurateError(
                f"denoise: {name} has {np.shape(emb)[0]} rows for {n} "
                f"pairs; align the embeddings with the input pairs"
            )
    confidence = np.where(valid, p_i, 0.5)
    confidence[idx] = res.weight
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


def denoise_pairs(
    pairs: pa.Table,
    cfg: DenoiseConfig,
    mcfg: MarginConfig,
    *,
    label_source: str | Sequence[str | None] | None = None,
    p_model: np.ndarray | None = None,
    emb_chosen: np.ndarray | None = None,
    emb_rejected: np.ndarray | None = None,
    emb_prompt: np.ndarray | None = None,
) -> StageResult:
    """Decide keep / flip / drop for every pair (rules 1–8 above), vectorised.

    Long on purpose: the rules run in their documented order on shared masks (a pair's
    first deciding rule wins, ``apply``), so the body reads as the list of rules above.

    ``emb_chosen`` / ``emb_rejected`` (n × d) and ``emb_prompt`` (n × d_p) are aligned with
    the input rows in their input orientation; ``p_model`` (n) is an optional external
    probability that each input label is right (NaN: use the votes).
    """
    n = pairs.num_rows
    df = pl.from_arrow(pairs) if n else pl.DataFrame(schema={c: pl.Utf8 for c in PAIRS.names})
    info: dict[str, Any] = {}
    if n == 0:
        return StageResult(
            STAGE, {"pairs": PAIRS.empty_table()}, StageCounts(0, 0), info={"flipped": 0}
        )
    p_hat = df["p_hat"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    n_votes = df["n_votes"].cast(pl.Int64).to_numpy()
    d = df["disagreement"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    status = df["label_status"].to_numpy()
    is_tie = df["flags"].list.contains("tie").fill_null(False).to_numpy()
    s_c = df["score_chosen"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    s_r = df["score_rejected"].cast(pl.Float64).fill_null(float("nan")).to_numpy()

    decision = np.full(n, _KEEP, dtype=np.int8)
    reason = np.full(n, None, dtype=object)
    open_ = np.ones(n, dtype=bool)  # not decided yet

    def apply(mask: np.ndarray, dec: int, why: str) -> None:
        m = mask & open_
        decision[m] = dec
        reason[m] = why
        open_[m] = False

    posterior = cfg.method == "posterior"
    q = None
    if posterior:  # q = P(label right): the aggregation's posterior, else the vote share
        q = p_hat.copy()
        if p_model is not None:
            pm = p_model_values(p_model, n)
            q = np.where(np.isfinite(pm), np.clip(pm, 0.0, 1.0), q)
    apply(~np.isfinite(p_hat) | (n_votes == 0), _DROP, str(Reason.NULL_SCORE))
    # a tie in the raw counts is dropped only where no posterior decides it
    undecided = (~np.isfinite(q) | (np.abs(q - 0.5) < 1e-9)) if posterior else True
    apply(is_tie & undecided, _DROP, str(Reason.TIE))
    apply(np.isfinite(d) & (d > cfg.max_disagreement), _DROP, str(Reason.HIGH_DISAGREEMENT))
    if cfg.on_contradicted != "keep":
        apply(
            status == "contradicted",
            _DROP if cfg.on_contradicted == "drop" else _FLIP,
            str(Reason.CONTRADICTED),
        )
    if cfg.drop_contested:
        apply(status == "contested", _DROP, str(Reason.CONTESTED))

    sources = _label_sources(label_source, n)  # None, or a polars Series (nulls: votes)
    has_label = (
        sources.is_not_null().to_numpy()
        if sources is not None and cfg.exclude_label_vote
        else np.zeros(n, dtype=bool)
    )
    p_judge, s_judge = judge_probability(p_hat, n_votes, has_label, mcfg.prior)

    valid = np.isfinite(p_hat) & (n_votes > 0)
    p_i, source_of_p = _model_probability(p_judge, s_c, s_r, p_model, cfg, n)
    ann = (
        pl.repeat(DEFAULT_ANNOTATOR, n, dtype=pl.Utf8, eager=True)
        if sources is None
        else sources.fill_null(AGGREGATE)
    )
    idx = np.flatnonzero(valid)
    ann_valid = ann.gather(idx)

    def weigh(evidence: np.ndarray | None) -> ConfidenceWeights:
        return estimate_confidence_weights(
            p_i[idx],
            ann_valid,
            eta_init=cfg.eta_init,
            calibrate=cfg.weight_calibration,
            evidence=None if evidence is None else evidence[idx],
        )

    res = weigh(None) if cfg.confidence_weights and not posterior else None
    mode = (
        cfg.peer_review_mode
        if cfg.peer_review_mode != "auto"
        else ("weights" if cfg.confidence_weights and not posterior else "drop")
    )
    head_margin, flagged = None, None
    weight = None
    if posterior:
        ok = valid & np.isfinite(q)
        weight = np.where(ok, q, np.nan)
        apply(
            ok & (q < cfg.flip_below),
            _FLIP if cfg.on_low_confidence == "flip" else _DROP,
            FLIPPED_LOW_CONFIDENCE if cfg.on_low_confidence == "flip" else LOW_CONFIDENCE,
        )
        apply(ok & (q < cfg.drop_below), _DROP, LOW_CONFIDENCE)
        info["posterior"] = {
            "p_source": "p_model" if p_model is not None else "p_hat",
            "pairs": int(ok.sum()),
            "flip_below": cfg.flip_below,
            "drop_below": cfg.drop_below,
            "mean_q": float(q[ok].mean()) if ok.any() else None,
        }
        if cfg.peer_review is None and emb_chosen is not None:
            info["peer_review"] = {
                "ran": False,
                "skipped": "denoise.method is posterior; "
                "set denoise.peer_review: true to drop the pairs both "
                "reward heads reject",
            }
    if cfg.peer_review or (
        cfg.peer_review is None
        and not posterior
        and emb_chosen is not None
        and emb_rejected is not None
    ):
        if emb_chosen is None or emb_rejected is None:
            info["peer_review"] = {
                "ran": False,
                "skipped": "no response embeddings were "
                "given (emb_chosen / emb_rejected); embed the candidates "
                "to run CRM peer review",
            }
        else:
            # ε̂ and the curriculum come from the confidence weights, computed for them
            # even when the weights do not decide
            head_margin, flagged, info["peer_review"] = _peer_review(
                emb_chosen,
                emb_rejected,
                emb_prompt,
                n,
                cfg,
                res if res is not None else weigh(None),
                idx,
                p_i,
                valid,
            )
            info["peer_review"]["mode"] = mode
            if mode == "weights":
                res = weigh(head_margin)

    if res is not None:
        weight = np.full(n, np.nan)
        weight[idx] = res.weight
        apply(
            valid & (weight < cfg.flip_below),
            _FLIP if cfg.on_low_confidence == "flip" else _DROP,
            FLIPPED_LOW_CONFIDENCE if cfg.on_low_confidence == "flip" else LOW_CONFIDENCE,
        )
        apply(valid & (weight < cfg.drop_below), _DROP, LOW_CONFIDENCE)
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
    if flagged is not None and mode == "drop":
        apply(flagged, _DROP, PEER_REVIEW)

    if cfg.agreement_filter:
        reach = open_ | (decision == _FLIP)  # pairs not dropped by an earlier rule
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
        bad = reach & (~agree | (decision == _FLIP))
        decision[bad] = _DROP
        reason[bad] = DISAGREEMENT_FILTER
        open_[bad] = False
        considered = int(reach.sum())
        info["agreement_filter"] = {
            "signals": signals,
            "considered": considered,
            "dropped": int(bad.sum()),
            "retention": (considered - int(bad.sum())) / considered if considered else None,
        }

    return assemble(pairs, df, decision, reason, weight, cfg, mcfg, info)


__all__ = ["FLIPPED", "STAGE", "denoise_pairs", "judge_probability", "judges_posterior"]
