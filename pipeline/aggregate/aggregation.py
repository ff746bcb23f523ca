"""Vote aggregation: votes → comparisons (one row per judged pair) and candidate scores.

Input: VOTES. Outputs: COMPARISONS (per ``source_id`` × canonical pair: vote counts,
aggregated ``p_a`` = P(a ≻ b), the original dataset label if any) and SCORES (per
candidate: win rate over its comparisons, annotator ``aggregate``, aspect ``winrate``).
Row unit: one vote. Kept: votes with a verdict. Dropped: ``null_verdict`` (unparseable
judge output; the raw text stays in the votes table).

Method ``majority``: p_a = (n_a + ½·n_tie) / n_valid (null without valid votes).
With ``use_logprobs`` a vote that carries ``prob_a`` (the judge's probability of "a" from
its logprobs, tie mass counted half) counts as a soft vote: ``prob_a`` to a and
``1 − prob_a`` to b. Averaged over both presentation orders, this cancels a judge's
position bias: a judge that always answers "A" still prefers, on average, the response
it gives more probability to in both orders (measured: SmolLM2-135M answers "A" in 96/96
calls, yet its probabilities separate the candidates).
The dataset's own label is a vote like any other (annotators in ``label_annotators``) and
is also reported in ``label``.

Methods ``dawid_skene`` / ``one_coin`` (:mod:`pipeline.aggregate.em`, DESIGN.md §5): p_a is the EM
posterior P(a ≻ b) of each comparison, learnt jointly over all comparisons, with one
annotator per distinct ``annotator`` value as given (judge|template|persona|order, and the
dataset's label annotator like any other). Observed labels are a, b and tie (a tie is an
observation with its own confusion row, not a class; one-coin counts K = 3 responses when
any tie occurs, else 2). With ``use_logprobs`` a vote carrying ``prob_a`` is a soft
observation: weight ``prob_a`` on label a and ``1 − prob_a`` on b. ``n_a``/``n_b``/``n_tie``
stay the raw counts, null verdicts are dropped (``null_verdict``) as for majority, and
p_a is null for a comparison without a valid vote. ``info["annotator_reliability"]`` gives
per annotator the balanced accuracy (mean over a, b of P(says c | truth c); 0.5 = no
better than chance) for Dawid–Skene, the skill s_w for one-coin, None for an annotator
with no valid vote; ``info["n_iter"]``, ``info["converged"]``, ``info["priors"]`` too.

>>> import pyarrow as pa
>>> from schemas.tables import VOTES
>>> v = pa.Table.from_pylist([
...   dict(prompt_id="p", source_id="s", candidate_a="x", candidate_b="y", annotator=n,
...        order=None, verdict=d, prob_a=None, raw_output=None, parse_error=None)
...   for n, d in [("src", "a"), ("j1", "b"), ("j2", "a"), ("j3", None)]], schema=VOTES)
>>> res = aggregate_votes(v, label_annotators={"src"})
>>> c = res.outputs["comparisons"].to_pylist()[0]
>>> c["n_votes"], round(c["p_a"], 3), c["label"]
(3, 0.667, 'a')
>>> res.counts.to_dict()["dropped"]
{'null_verdict': 1}
>>> ds = aggregate_votes(v, label_annotators={"src"}, method="dawid_skene")
>>> ds.outputs["comparisons"].column("n_a").to_pylist(), ds.info["converged"]
([2.0], True)
>>> sorted(ds.info["annotator_reliability"])
['j1', 'j2', 'j3', 'src']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.aggregate.codes import factorize, first_rows
from pipeline.aggregate.correlation import label_correlated
from pipeline.aggregate.fit import LABELS, EMFits
from pipeline.aggregate.outputs import (
    annotator_counts,
    comparisons_frame,
    gold_info,
    null_drops,
    winrate_scores,
)
from pipeline.aggregate.position import position_consistency, position_consistency_codes
from pipeline.aggregate.votes import (
    KEY,
    VoteArrays,
    annotator_codes,
    gold_classes,
    judge_name,
    votes_frame,
)
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.tables import COMPARISONS, SCORES, conform

STAGE = "aggregate"
STAGE_VERSION = 5  # 5: length control; 4: class prior tested, reliabilities of the refit
METHODS = ("auto", "majority", "dawid_skene", "one_coin")
EM_METHODS = ("auto", "dawid_skene", "one_coin")
MIN_EM_JUDGES = 3  # Dawid–Skene needs 3 conditionally independent annotators to identify
_NEEDED = KEY + ["annotator", "order", "verdict", "prob_a"]
__all__ = ["LABELS", "aggregate_votes", "label_correlated", "position_consistency"]


def _resolve_methods(
    method: str, judges_method: str | None, names: list[str], label_annotators: Any
) -> tuple[str, str | None]:
    """The methods asked, checked, with ``auto`` decided by the annotators present: EM
    with at least ``MIN_EM_JUDGES`` independent judges (or a verifier), else majority."""
    if method not in METHODS:
        raise ValueError(
            f"unknown aggregation method {method!r}; use one of "
            f"{', '.join(METHODS)} (aggregate.method in the run config)"
        )
    if judges_method is not None and judges_method not in EM_METHODS:
        raise ValueError(
            f"unknown judges_method {judges_method!r}; use one of {', '.join(EM_METHODS)} or none"
        )
    if "auto" in (method, judges_method):
        judges = {judge_name(a) for a in names if a not in label_annotators}
        n_label = len(set(label_annotators) & set(names))
        if method == "auto":  # with a verifier, its strong prior makes the fit meaningful
            verifier = any(a.startswith("verifier:") for a in names)
            method = (
                "dawid_skene" if len(judges) + n_label >= MIN_EM_JUDGES or verifier else "majority"
            )
        if judges_method == "auto":
            judges_method = "dawid_skene" if len(judges) >= MIN_EM_JUDGES else None
    return method, judges_method


def aggregate_votes(
    votes: pa.Table | pl.DataFrame,
    *,
    label_annotators: set[str] | frozenset[str] = frozenset(),
    method: str = "majority",
    use_logprobs: bool = False,
    judges_method: str | None = None,
    prior: tuple[float, float] | None = None,
    verifier_prior: tuple[float, float] | None = None,
    class_prior: str = "estimated",
    class_prior_lr: float = 10.83,
    label_correlation: str = "off",
    correlation_z: float = 4.0,
    length_control: str = "off",
    length_min_diff: float = 0.1,
    length_z: float = 4.0,
    lengths: pl.DataFrame | None = None,
    gold_prefix: str | None = None,
) -> StageResult:
    """Aggregate votes per pair (integer-coded once, numpy sums, EM with numpy/scipy).

    Over 60 lines on purpose: the stage's steps in order over one set of coded arrays
    (counts, the fits of :class:`pipeline.aggregate.fit.EMFits`, the outputs, the info);
    each step is a call or two.

    ``gold_prefix`` (e.g. ``"human:"``): the annotators whose names start with it are gold
    anchors. A comparison where their hard a/b votes have a strict majority gets that side
    as its known class: EM keeps its posterior fixed (1 or 0) and estimates every other
    annotator's reliability against those comparisons first (``gold`` of
    :func:`pipeline.aggregate.em.fit_dawid_skene`); with ``majority`` its p_a is the gold
    side. Their votes still count as votes; ``info["gold"]`` says how many comparisons were
    anchored and on which side.

    ``judges_method`` (``dawid_skene`` | ``one_coin``): also fit that EM on the votes
    without the label annotators' and write its posterior P(a ≻ b) to ``p_a_judges``
    (null for a comparison without a valid judge vote): the judges' view of the pair
    that does not count the dataset's label, for the confidence weights of denoise.

    ``prior``: the EM's Dirichlet pseudo-counts (see :mod:`pipeline.aggregate.em`);
    ``verifier_prior`` replaces it for ``verifier:*`` annotators. ``class_prior``
    ``symmetric`` fixes π = (½, ½) (the pipeline orders candidate_a/b by content hash),
    ``estimated`` fits it; ``tested`` fits both and keeps the fitted π only where the
    likelihood-ratio statistic 2·(log L(π̂) − log L(½)) exceeds ``class_prior_lr``
    (χ²₁; 10.83 is p = 0.001), the test in ``info["class_prior_test"]``.
    ``label_correlation`` (``off`` | ``report`` | ``split``): test every annotator for
    agreeing with the dataset's label more often than its estimated accuracy allows
    (:func:`label_correlated`, z > ``correlation_z``), report them in
    ``info["label_correlated"]``, and with ``split`` refit with each such annotator's
    confusion conditioned on the label's side (two virtual annotators): a vote that copies
    the label then carries only the evidence it has.
    ``length_control`` ``on`` (EM methods; ``lengths``: :func:`pipeline.aggregate.length.
    candidate_lengths`): every annotator but verifiers gets one confusion per length side
    of the pair (a longer / b longer by ``length_min_diff`` of the longer, or similar),
    a length-debiased posterior (:mod:`pipeline.aggregate.length`); the per-side
    reliabilities are in ``info["length_control"]``, and ``annotator_reliability`` is their
    vote-weighted mean. ``tested`` (skipped without ``lengths``) splits only the
    annotators whose verdicts depend on the length side beyond what the plain fit's
    posterior explains (:func:`pipeline.aggregate.length.length_flags`, |z| >
    ``length_z``), so an annotator that ignores length keeps one confusion.
    """
    # Long on purpose (its docstring is a third of it): one pass over the integer codes
    # and vote masks computed once here, shared by the sums, the EM fits, the judges-only
    # fit and the statistics; split further, a dozen arrays would travel between helpers.
    df = votes_frame(votes)
    n = df.height
    acode, names = annotator_codes(df)
    asked = method, judges_method
    method, judges_method = _resolve_methods(method, judges_method, names, label_annotators)
    use_em = method != "majority"
    if not n:
        return _empty(method, asked[0], use_logprobs, use_em)
    v = VoteArrays(df, use_logprobs)
    code, first = factorize(df, KEY)
    k = first.size
    n_a, n_b, n_tie = v.sums(code, k)
    n_votes = np.bincount(code[v.valid], minlength=k)
    n_null = np.bincount(code[~v.valid], minlength=k)
    is_label = np.isin(acode, [i for i, a in enumerate(names) if a in label_annotators])
    label_row = first_rows(code, k, is_label & (v.is_a | v.is_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_a = np.where(n_votes > 0, (n_a + 0.5 * n_tie) / np.maximum(n_votes, 1), np.nan)
    gold = gold_classes(v, code, k, acode, names, gold_prefix)
    comp_len = _comparison_lengths(df, first, length_control, lengths)
    em = EMFits(v, code, k, prior, verifier_prior, class_prior, class_prior_lr, gold)
    fit_acode, fit_names, em_info = acode, names, {}
    if use_em:
        side = np.where(label_row >= 0, v.vcode[np.maximum(label_row, 0)], -1)
        lc = (length_control, length_min_diff, length_z) if comp_len is not None else None
        post, em_info, fit_acode, fit_names = em.fit_all(
            acode, names, method, is_label, side, label_correlation, correlation_z, lc, comp_len
        )
        p_a = np.where(n_votes > 0, post, np.nan)
    if gold is not None and not use_em:  # majority: the gold side decides
        p_a = np.where(~np.isnan(gold[:, 0]), gold[:, 0], p_a)
    p_judges = np.full(k, np.nan)
    if judges_method is not None:  # without label votes: the fit above
        reuse = judges_method == method and not is_label.any()
        judged = v.valid & ~is_label
        p_judges = p_a if reuse else em.judges_only(fit_acode, fit_names, judged, judges_method)
    comp = comparisons_frame(df, first, n_votes, n_a, n_b, n_tie, n_null, p_a, label_row, p_judges)
    comparisons = conform(comp.to_arrow(), COMPARISONS, "comparisons")
    scores = winrate_scores(comp, p_a)
    drops = null_drops(df, v)
    counts = StageCounts(
        rows_in=n,
        kept=n - len(drops),
        dropped={str(Reason.NULL_VERDICT): len(drops)} if drops else {},
        rows_out=comparisons.num_rows,
    )
    info = {
        "method": method,
        "method_asked": asked[0],
        "judges_method": judges_method,
        "use_logprobs": use_logprobs,
        "annotators": annotator_counts(acode, names, v),
        "position_consistency": position_consistency_codes(df, v, code, k, acode, names),
        **em_info,
    }
    if judges_method is not None:
        info["judges_posterior_pairs"] = int(np.isfinite(p_judges).sum())
    if gold_prefix is not None:
        info["gold"] = gold_info(gold, gold_prefix, names)
    if comp_len is not None:  # the report's per-annotator length table
        from pipeline.aggregate import length

        info["length_effects"] = length.effects(
            p_a, *comp_len, code, acode, names, v.vcode, v.valid
        )
    return StageResult(
        STAGE,
        {"comparisons": comparisons, "scores": scores},
        counts,
        dropped_table(STAGE, drops),
        info=info,
    )


_EMPTY_EM = {
    "annotator_reliability": {},
    "n_iter": 0,
    "converged": True,
    "priors": None,
    "elbo_per_vote": None,
}


def _empty(method: str, asked: str, use_logprobs: bool, use_em: bool) -> StageResult:
    """The result for no votes."""
    info = {
        "method": method,
        "method_asked": asked,
        "use_logprobs": use_logprobs,
        "annotators": {},
        "position_consistency": {},
        **(dict(_EMPTY_EM) if use_em else {}),
    }
    return StageResult(
        STAGE,
        {"comparisons": COMPARISONS.empty_table(), "scores": SCORES.empty_table()},
        StageCounts(0, 0),
        dropped_table(STAGE, []),
        info=info,
    )


def _comparison_lengths(
    df: pl.DataFrame, first: np.ndarray, length_control: str, lengths: pl.DataFrame | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(len_a, len_b) per comparison, looked up once (None without ``lengths``)."""
    if length_control not in ("off", "on", "tested"):
        raise ValueError(f"unknown length_control {length_control!r}; use off, on or tested")
    if length_control == "on" and lengths is None:
        raise ValueError("aggregate.length_control 'on' needs the candidates' lengths")
    if lengths is None:
        return None
    from pipeline.aggregate import length

    ends = df.select("candidate_a", "candidate_b").gather(first)
    return length.lookup(ends["candidate_a"], lengths), length.lookup(ends["candidate_b"], lengths)
