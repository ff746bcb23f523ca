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

from pipeline.denoise.assemble import DROP, FLIP, FLIPPED, STAGE, assemble
from pipeline.denoise.posterior import (
    _label_sources,
    _model_probability,
    judge_probability,
    judges_posterior,
    p_model_values,
)
from pipeline.denoise.rules import (
    DISAGREEMENT_FILTER,
    FLIPPED_LOW_CONFIDENCE,
    LOW_CONFIDENCE,
    PEER_REVIEW,
    PEER_REVIEW_SKIPPED,
    Decisions,
    Weigher,
    agreement_filter,
    peer_review_rule,
    posterior_rule,
    weight_rule,
)
from pipeline.denoise.weights import AGGREGATE, DEFAULT_ANNOTATOR
from pipeline.stage import Reason, StageCounts, StageResult
from schemas.config import DenoiseConfig, MarginConfig
from schemas.tables import PAIRS, conform, from_rows  # noqa: F401 (from_rows: doctest)

STAGE_VERSION = 5

# The drop reasons of this stage (pipeline.stage.Reason, as plain strings) are those of
# pipeline.denoise.rules: LOW_CONFIDENCE, FLIPPED_LOW_CONFIDENCE, PEER_REVIEW,
# DISAGREEMENT_FILTER (imported above; the flip flag is FLIPPED).


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

    Over 60 lines on purpose: the rules run in their documented order on one
    :class:`pipeline.denoise.rules.Decisions` (a pair's first deciding rule wins), so the
    body reads as the list of rules above; the rules that need more than a mask are
    functions of :mod:`pipeline.denoise.rules`.

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
    dec = Decisions(n)
    posterior = cfg.method == "posterior"
    q = None
    if posterior:  # q = P(label right): the aggregation's posterior, else the vote share
        q = p_hat.copy()
        if p_model is not None:
            pm = p_model_values(p_model, n)
            q = np.where(np.isfinite(pm), np.clip(pm, 0.0, 1.0), q)
    dec.apply(~np.isfinite(p_hat) | (n_votes == 0), DROP, str(Reason.NULL_SCORE))
    # a tie in the raw counts is dropped only where no posterior decides it
    undecided = (~np.isfinite(q) | (np.abs(q - 0.5) < 1e-9)) if posterior else True
    dec.apply(is_tie & undecided, DROP, str(Reason.TIE))
    dec.apply(np.isfinite(d) & (d > cfg.max_disagreement), DROP, str(Reason.HIGH_DISAGREEMENT))
    if cfg.on_contradicted != "keep":
        on = DROP if cfg.on_contradicted == "drop" else FLIP
        dec.apply(status == "contradicted", on, str(Reason.CONTRADICTED))
    if cfg.drop_contested:
        dec.apply(status == "contested", DROP, str(Reason.CONTESTED))
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
    w = Weigher(p_i, ann, valid, cfg)
    res = w(None) if cfg.confidence_weights and not posterior else None
    mode = (
        cfg.peer_review_mode
        if cfg.peer_review_mode != "auto"
        else ("weights" if cfg.confidence_weights and not posterior else "drop")
    )
    weight = None
    if posterior:
        weight = posterior_rule(dec, q, valid, cfg, p_model is not None, info)
        if cfg.peer_review is None and emb_chosen is not None:
            info["peer_review"] = {"ran": False, "skipped": PEER_REVIEW_SKIPPED}
    head_margin, flagged = None, None
    have_emb = emb_chosen is not None and emb_rejected is not None
    if cfg.peer_review or (cfg.peer_review is None and not posterior and have_emb):
        emb = emb_chosen, emb_rejected, emb_prompt
        head_margin, flagged, res = peer_review_rule(emb, w, res, mode, cfg, info)
    if res is not None:
        weight = weight_rule(dec, res, w.idx, valid, cfg, source_of_p, info)
    if flagged is not None and mode == "drop":
        dec.apply(flagged, DROP, PEER_REVIEW)
    if cfg.agreement_filter:
        agreement_filter(dec, p_judge, s_judge, s_c, s_r, head_margin, info)
    return assemble(pairs, df, dec.decision, dec.reason, weight, cfg, mcfg, info)


__all__ = [
    "DISAGREEMENT_FILTER",
    "FLIPPED",
    "FLIPPED_LOW_CONFIDENCE",
    "LOW_CONFIDENCE",
    "PEER_REVIEW",
    "STAGE",
    "denoise_pairs",
    "judge_probability",
    "judges_posterior",
]
