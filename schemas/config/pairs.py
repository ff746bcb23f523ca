"""From votes to training pairs: the aggregate, margins, denoise and pairs sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.config.base import _Frozen


class AggregateConfig(_Frozen):
    # p_a of each comparison: vote share, or the EM posterior over all annotators; auto:
    # dawid_skene with >= 3 distinct judges (label annotators counted), else majority
    # (with fewer, Dawid-Skene is not identifiable: it rates a lone judge's two orders 0.5)
    method: Literal["auto", "majority", "dawid_skene", "one_coin"] = "auto"
    use_logprobs: bool = True  # votes with prob_a count as soft votes (cancels position bias)
    # also fit this EM without the dataset's label votes: comparisons.p_a_judges, the
    # judges' own view of each pair, which denoise's confidence weights use (null: skip;
    # auto: dawid_skene with >= 3 distinct judges besides the labels, else skip)
    judges_method: Literal["auto", "dawid_skene", "one_coin"] | None = "auto"
    # Dawid-Skene MAP prior: Dirichlet pseudo-counts (right, wrong) added to every
    # annotator's confusion (keeps reliabilities off 0/1 on small or sparse files; an
    # annotator with a handful of votes counts for little); null: maximum likelihood
    em_prior: tuple[float, float] | None = (2.0, 1.0)
    # the same for verifier annotators (verifier:*): a checked answer is rarely wrong,
    # but its reliability is still estimated (a broken test or extractor shows up)
    verifier_prior: tuple[float, float] = (18.0, 1.0)
    # symmetric: P(a better) = 1/2 a priori (candidate_a/b are ordered by content hash,
    # so neither side is favoured). estimated: fit it (Dawid-Skene's pi); on a small run
    # it soaks up chance-level judges (the embedded default: pi_a 0.69 from 33 verified
    # pairs, 25 more pairs "decided" by the prior alone). tested: fit both, keep the
    # fitted pi only where the likelihood-ratio test rejects 1/2 (bench/noise_matrix.py:
    # recovers the imbalance scenarios, identical elsewhere)
    class_prior: Literal["symmetric", "estimated", "tested"] = "tested"
    # tested: the likelihood-ratio statistic 2(log L(pi fitted) - log L(1/2)) a fitted pi
    # must exceed (chi-square, 1 degree of freedom; 10.83 is p = 0.001)
    class_prior_lr: float = Field(10.83, gt=0)
    # annotators agreeing with the file's label beyond what their accuracy explains
    # (they copy it): report them, and with split refit their confusion conditioned on
    # the label's side, so a copied vote carries only the evidence it has
    label_correlation: Literal["off", "report", "split"] = "split"
    correlation_z: float = Field(4.0, gt=0)  # z-score of the excess agreement to flag
    # length control: annotators get one confusion per length side of the pair (a longer
    # / b longer by length_min_diff of the longer text, or similar), so answering "the
    # longer one" is learnt as their bias and their votes count only beyond it (a
    # length-debiased posterior; pipeline/aggregate/length.py, EM methods only).
    # tested: only the annotators whose verdicts depend on the length side beyond the
    # posterior (|z| > length_z, re-tested until stable): a length preference that differs
    # from the panel's. on: every annotator, i.e. length is assumed to say nothing about
    # quality (LC-AlpacaEval's assumption): a bias all annotators share is only removed
    # this way, since from votes alone it looks exactly like "longer is better"
    length_control: Literal["off", "on", "tested"] = "tested"
    length_min_diff: float = Field(0.1, ge=0, lt=1)
    length_z: float = Field(4.0, gt=0)

    @field_validator("length_control", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare off / on as a boolean
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v


class MarginConfig(_Frozen):
    lam: float = Field(1.0, ge=0)  # margin = lam * clip(logit(p_hat), 0, cap)
    cap: float = Field(4.0, gt=0)
    prior: float = Field(0.5, gt=0)  # Jeffreys: p_hat = (n_chosen + tie/2 + a) / (S + 2a)
    # p_hat, the estimated share of people preferring chosen: votes (the Jeffreys vote
    # share above), posterior (the aggregation's P(chosen better), Dawid-Skene when it
    # ran), or shrink: the vote share shrunk towards the posterior,
    # (n_chosen + tie/2 + 2 s q) / (S + 2 s) with s = shrink_strength
    p_source: Literal["votes", "posterior", "shrink"] = "votes"
    shrink_strength: float = Field(2.0, gt=0)
    contested_band: float = Field(0.1, ge=0, lt=0.5)  # |p_hat - 0.5| < band -> contested
    indistinguishable_tau: float = Field(0.95, gt=0, le=1)  # embedding cosine >= tau: flag
    # flag plurality: disagreement >= this and both candidates' win rates >= min_score
    plurality_disagreement: float = Field(0.8, ge=0, le=1)
    plurality_min_score: float = Field(0.5, ge=0, le=1)


class DenoiseConfig(_Frozen):
    # The defaults are the configuration measured best by bench/noise_eval.py: keep the
    # label's vote out of the rules, decide by LCPO confidence weights on the judges-only
    # EM posterior, with CRM peer review as evidence whenever embeddings exist.
    # posterior: decide by the aggregation's posterior q = P(label right) (Dawid-Skene
    # over every annotator, the file's label included): q < flip_below -> flip (or drop,
    # on_low_confidence), q < drop_below -> drop, else keep; raw-count ties are resolved
    # by q. weights: LCPO confidence weights on the judges-only posterior (below).
    method: Literal["posterior", "weights"] = "posterior"
    on_contradicted: Literal["drop", "flip", "keep"] = "keep"
    drop_contested: bool = False
    max_disagreement: float = Field(1.0, ge=0, le=1)  # drop pairs above this disagreement
    # LCPO / RE-PO confidence weights (pipeline/denoise/weights.py): weight = w_i; w < flip_below
    # -> on_low_confidence; flip_below <= w < drop_below -> drop (low_confidence)
    confidence_weights: bool = True
    weight_source: Literal["p_hat", "scores"] = "p_hat"  # p_i: votes, or sigma(s_w - s_l)
    # p_i from the aggregation's judges-only EM posterior (comparisons.p_a_judges) where
    # it exists; else from weight_source
    judge_posterior: bool = True
    exclude_label_vote: bool = True  # take the label's own vote out of p_hat for p_i
    weight_calibration: bool = True  # EM also fits the scale of p_i's log-odds (and CRM's)
    eta_init: float = Field(0.9, ge=0.5, le=1)
    # posterior: q < flip_below -> flip, q < drop_below -> drop: the band [0.3, 0.7) is what
    # the posterior cannot decide (bench/noise_matrix.py; for method weights,
    # bench/noise_eval.py measured drop_below 0.5)
    flip_below: float = Field(0.3, ge=0, le=1)
    drop_below: float = Field(0.7, ge=0, le=1)
    on_low_confidence: Literal["flip", "drop"] = "flip"
    # CRM collaborative peer review (pipeline/denoise/peer_review.py); needs embeddings
    peer_review: bool | None = None  # None: whenever embeddings are available
    peer_review_noise_rate: float | None = Field(None, ge=0, le=0.5)  # None: estimated
    peer_review_epochs: int = Field(8, ge=1)
    peer_review_warmup_epochs: int = Field(3, ge=0)
    peer_review_late_epochs: int = Field(3, ge=1)
    peer_review_hidden: int = Field(64, ge=1)
    peer_review_seed: int = 0
    # drop: pairs both heads reject are dropped (peer_review); weights: the heads' mean
    # margin is extra evidence in the confidence weights (needs confidence_weights);
    # auto: weights when confidence_weights is on, else drop
    peer_review_mode: Literal["auto", "drop", "weights"] = "auto"
    # SCIR agreement filter: keep only pairs whose judges, reward models and label agree
    agreement_filter: bool = False

    @model_validator(mode="after")
    def _check_thresholds(self) -> "DenoiseConfig":
        if self.flip_below > self.drop_below:
            raise ValueError(
                f"denoise: flip_below ({self.flip_below}) must not exceed "
                f"drop_below ({self.drop_below}); weights below flip_below are "
                f"flipped, those up to drop_below dropped"
            )
        if self.peer_review_late_epochs > self.peer_review_epochs:
            raise ValueError(
                f"denoise: peer_review_late_epochs "
                f"({self.peer_review_late_epochs}) must not exceed "
                f"peer_review_epochs ({self.peer_review_epochs})"
            )
        if self.peer_review_mode == "weights" and self.method == "posterior":
            raise ValueError(
                "denoise: peer_review_mode 'weights' feeds the reward heads' "
                "margins into the confidence weights of method 'weights'; "
                "use peer_review_mode 'drop' with method 'posterior'"
            )
        if self.peer_review_mode == "weights" and not self.confidence_weights:
            raise ValueError(
                "denoise: peer_review_mode 'weights' feeds the reward heads' "
                "margins into the confidence weights; set "
                "confidence_weights: true, or use peer_review_mode 'drop'"
            )
        return self


class PairsConfig(_Frozen):
    # best_worst: per prompt, best vs worst by aggregated score; all_pairs: every kept pair
    # with margin >= min_margin; curriculum: Curry-DPO, pairs sharing the best response
    # ordered by score gap into `curriculum_stages` stages (1 = easiest)
    strategy: Literal["best_worst", "all_pairs", "curriculum"] = "all_pairs"
    min_margin: float = Field(0.0, ge=0)
    curriculum_stages: int = Field(3, ge=1)
    split: Literal["none", "easy_hard"] = "none"  # MPO: |margin| quantile split
    hard_quantile: float = Field(0.5, gt=0, lt=1)  # margins below this quantile are "hard"
    reward_augmented: bool = False  # add score-conditioned twins (arXiv 2410.08067)
    # [low, high]: target band for the share of kept pairs whose chosen is the longer
    # response; pairs on the side in excess are dropped (reason length_balance), lowest
    # weight first, until the share is inside it. null: no balancing
    length_balance: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _band(self) -> "PairsConfig":
        if self.length_balance is not None:
            low, high = self.length_balance
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"pairs.length_balance must be [low, high] with 0 <= low "
                    f"<= high <= 1, got [{low}, {high}]"
                )
        return self
