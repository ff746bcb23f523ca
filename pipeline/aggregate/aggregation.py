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

import re

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.aggregate import em
from pipeline.aggregate.codes import factorize, first_rows
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.errors import SchemaError
from schemas.tables import COMPARISONS, SCORES, VOTES, check_table, conform

STAGE = "aggregate"
STAGE_VERSION = 5  # 5: length control; 4: class prior tested, reliabilities of the refit
KEY = ["source_id", "prompt_id", "candidate_a", "candidate_b"]
METHODS = ("auto", "majority", "dawid_skene", "one_coin")
EM_METHODS = ("auto", "dawid_skene", "one_coin")
MIN_EM_JUDGES = 3  # Dawid–Skene needs 3 conditionally independent annotators to identify
LABELS = ("a", "b", "tie")  # label codes 0, 1, 2; classes are a (0) and b (1)
_NEEDED = KEY + ["annotator", "order", "verdict", "prob_a"]


def _votes_frame(votes: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """The columns aggregation reads, as polars (an Arrow table is checked first)."""
    if isinstance(votes, pl.DataFrame):
        missing = [c for c in _NEEDED if c not in votes.columns]
        if missing:
            raise SchemaError(
                f"table 'votes': missing column '{missing[0]}' (expected columns {VOTES.names})",
                table="votes",
                column=missing[0],
            )
        return votes.select(_NEEDED)
    check_table(votes, votes.schema, "votes")
    if not votes.num_rows:
        return pl.DataFrame(schema={**{c: pl.Utf8 for c in _NEEDED}, "prob_a": pl.Float64})
    # rechunk=False: no copy of the string columns (measured 2-10× faster on 1M votes)
    return pl.from_arrow(votes.select(_NEEDED), rechunk=False)


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
    if method not in METHODS:
        raise ValueError(
            f"unknown aggregation method {method!r}; use one of "
            f"{', '.join(METHODS)} (aggregate.method in the run config)"
        )
    if judges_method is not None and judges_method not in EM_METHODS:
        raise ValueError(
            f"unknown judges_method {judges_method!r}; use one of {', '.join(EM_METHODS)} or none"
        )
    df = _votes_frame(votes)
    n = df.height
    acode, names = _annotator_codes(df)
    asked = method, judges_method
    if "auto" in asked:
        judges = {_judge_name(a) for a in names if a not in label_annotators}
        n_label = len(set(label_annotators) & set(names))
        if method == "auto":  # with a verifier, its strong prior makes the fit meaningful
            verifier = any(a.startswith("verifier:") for a in names)
            method = (
                "dawid_skene" if len(judges) + n_label >= MIN_EM_JUDGES or verifier else "majority"
            )
        if judges_method == "auto":
            judges_method = "dawid_skene" if len(judges) >= MIN_EM_JUDGES else None
    use_em = method != "majority"
    em_info: dict = (
        {
            "annotator_reliability": {},
            "n_iter": 0,
            "converged": True,
            "priors": None,
            "elbo_per_vote": None,
        }
        if use_em
        else {}
    )
    if not n:
        return StageResult(
            STAGE,
            {"comparisons": COMPARISONS.empty_table(), "scores": SCORES.empty_table()},
            StageCounts(0, 0),
            dropped_table(STAGE, []),
            info={
                "method": method,
                "method_asked": asked[0],
                "use_logprobs": use_logprobs,
                "annotators": {},
                "position_consistency": {},
                **em_info,
            },
        )
    v = _VoteArrays(df, use_logprobs)
    code, first = factorize(df, KEY)
    k = first.size
    n_a, n_b, n_tie = v.sums(code, k)
    n_votes = np.bincount(code[v.valid], minlength=k)
    n_null = np.bincount(code[~v.valid], minlength=k)
    is_label = np.isin(acode, [i for i, a in enumerate(names) if a in label_annotators])
    label_row = first_rows(code, k, is_label & (v.is_a | v.is_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_a = np.where(n_votes > 0, (n_a + 0.5 * n_tie) / np.maximum(n_votes, 1), np.nan)
    gold = _gold_classes(v, code, k, acode, names, gold_prefix)
    fit_acode, fit_names = acode, names
    if length_control not in ("off", "on", "tested"):
        raise ValueError(f"unknown length_control {length_control!r}; use off, on or tested")
    if length_control == "on" and lengths is None:
        raise ValueError("aggregate.length_control 'on' needs the candidates' lengths")
    length_on = use_em and length_control != "off" and lengths is not None
    comp_len = None  # (len_a, len_b) per comparison, looked up once
    if lengths is not None:
        from pipeline.aggregate import length

        ends = df.select("candidate_a", "candidate_b").gather(first)
        comp_len = (
            length.lookup(ends["candidate_a"], lengths),
            length.lookup(ends["candidate_b"], lengths),
        )
    if use_em:
        side = np.where(label_row >= 0, v.vcode[np.maximum(label_row, 0)], -1)

        def fit(ac: np.ndarray, nm: list[str]) -> tuple[np.ndarray, dict]:
            return _fit_em(
                v,
                code,
                k,
                ac,
                nm,
                v.valid,
                method,
                prior=_priors(nm, prior, verifier_prior),
                class_prior=class_prior,
                class_prior_lr=class_prior_lr,
                label_side=side if is_label.any() else None,
                is_label=is_label,
                correlation=label_correlation,
                correlation_z=correlation_z,
                gold=gold,
            )

        if not length_on:
            post, em_info = fit(acode, names)
        else:
            lside = length.length_sides(*comp_len, length_min_diff)
            post, em_info, fit_acode, fit_names = length.controlled_fit(
                fit,
                lside,
                code,
                acode,
                names,
                v.vcode,
                v.valid & ~v.soft,
                mode=length_control,
                min_diff=length_min_diff,
                z_threshold=length_z,
            )
        p_a = np.where(n_votes > 0, post, np.nan)
    if gold is not None and not use_em:  # majority: the gold side decides
        anchored = ~np.isnan(gold[:, 0])
        p_a = np.where(anchored, gold[:, 0], p_a)
    p_judges = np.full(k, np.nan)
    if judges_method is not None and judges_method == method and not is_label.any():
        p_judges = p_a  # no label votes: the judges-only fit is the fit above
    elif judges_method is not None:
        judged = v.valid & ~is_label
        if judged.any():
            post, _ = _fit_em(
                v,
                code,
                k,
                fit_acode,
                fit_names,
                judged,
                judges_method,
                prior=_priors(fit_names, prior, verifier_prior),
                class_prior=class_prior,
                class_prior_lr=class_prior_lr,
                gold=gold,
            )
            p_judges = np.where(np.bincount(code[judged], minlength=k) > 0, post, np.nan)
    verdicts = df["verdict"]
    comp = (
        df.select(KEY)
        .gather(first)
        .with_columns(
            n_votes=pl.Series(n_votes.astype(np.int32)),
            n_a=pl.Series(n_a),
            n_b=pl.Series(n_b),
            n_tie=pl.Series(n_tie),
            n_null=pl.Series(n_null.astype(np.int32)),
            p_a=pl.Series(p_a).fill_nan(None),
            label=verdicts.gather(_null_negative(label_row)),
            p_a_judges=pl.Series(p_judges).fill_nan(None),
        )
    )
    comparisons = conform(comp.to_arrow(), COMPARISONS, "comparisons")
    scores = _winrate_scores(comp, p_a)

    null_idx = np.flatnonzero(~v.valid)
    null = df.select("source_id", "candidate_a", "candidate_b", "annotator").gather(null_idx)
    drops = [
        {
            "source_id": s,
            "row_id": f"{a}|{b}|{w}",
            "reason": Reason.NULL_VERDICT,
            "detail": "judge output did not parse",
        }
        for s, a, b, w in null.iter_rows()
    ]
    counts = StageCounts(
        rows_in=n,
        kept=n - len(drops),
        dropped={str(Reason.NULL_VERDICT): len(drops)} if drops else {},
        rows_out=comparisons.num_rows,
    )
    n_by = np.bincount(acode, minlength=len(names))
    null_by = np.bincount(acode[~v.valid], minlength=len(names))
    annot = {a: {"votes": int(n_by[i]), "null": int(null_by[i])} for i, a in enumerate(names)}
    info = {
        "method": method,
        "method_asked": asked[0],
        "judges_method": judges_method,
        "use_logprobs": use_logprobs,
        "annotators": annot,
        "position_consistency": _position_consistency(df, v, code, k, acode, names),
        **em_info,
    }
    if judges_method is not None:
        info["judges_posterior_pairs"] = int(np.isfinite(p_judges).sum())
    if gold_prefix is not None:
        g = gold[:, 0] if gold is not None else np.zeros(0)
        info["gold"] = {
            "prefix": gold_prefix,
            "annotators": sum(a.startswith(gold_prefix) for a in names),
            "comparisons": int(np.isfinite(g).sum()),
            "a": int((g == 1.0).sum()),
            "b": int((g == 0.0).sum()),
        }
    if comp_len is not None:  # the report's per-annotator length table
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


def _gold_classes(
    v: "_VoteArrays",
    code: np.ndarray,
    k: int,
    acode: np.ndarray,
    names: list[str],
    prefix: str | None,
) -> np.ndarray | None:
    """(k × 2) known classes from the ``prefix`` annotators' hard a/b votes: [1, 0] where
    they say a by a strict majority, [0, 1] for b, NaN elsewhere (ties, none); None
    without any such comparison."""
    if prefix is None:
        return None
    is_gold = np.isin(acode, [i for i, a in enumerate(names) if a.startswith(prefix)])
    hard = is_gold & v.valid & ~v.soft
    n_a = np.bincount(code[hard & v.is_a], minlength=k)
    n_b = np.bincount(code[hard & v.is_b], minlength=k)
    if not (n_a != n_b).any():
        return None
    gold = np.full((k, 2), np.nan)
    gold[n_a > n_b] = [1.0, 0.0]
    gold[n_b > n_a] = [0.0, 1.0]
    return gold


ORDER_SUFFIX = r"\|(ab|ba)$"  # an annotator's presentation order (polars or re)


def _judge_name(annotator: str) -> str:
    """The judge of an annotator: without its ``|ab``/``|ba`` order (both orders of one
    judge are not independent annotators)."""
    return re.sub(ORDER_SUFFIX, "", annotator)


class _VoteArrays:
    """Per vote: validity, verdict indicators and the (soft) weights on a / b / tie."""

    def __init__(self, df: pl.DataFrame, use_logprobs: bool) -> None:
        verdict = df["verdict"]
        vc = verdict.replace_strict(
            {"a": 0, "b": 1, "tie": 2}, default=3, return_dtype=pl.Int8
        ).to_numpy(writable=True)
        vc[verdict.is_null().to_numpy()] = -1
        self.vcode = vc  # 0 a, 1 b, 2 tie, 3 another string, -1 null
        self.valid = vc >= 0
        self.is_a, self.is_b, self.is_t = vc == 0, vc == 1, vc == 2
        self.soft = np.zeros(df.height, dtype=bool)
        self.prob = np.zeros(0)  # P(a) of the soft votes, in row order (soft rows only)
        if use_logprobs and df["prob_a"].null_count() < df.height:
            prob = df["prob_a"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            self.soft = self.valid & np.isfinite(prob)
            self.prob = np.clip(prob[self.soft], 0.0, 1.0)
        self.bad = vc == 3  # a valid verdict that is not a, b or tie
        self.verdict = verdict

    def sums(self, code: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per code: the (soft) vote mass on a, on b and on tie. A soft vote puts prob_a on
        a and 1 − prob_a on b; one array at a time (10M votes: 80 MB each)."""
        hard = ~self.soft
        out = []
        for mask, soft_w in (
            (self.is_a, self.prob),
            (self.is_b, 1.0 - self.prob),
            (self.is_t, None),
        ):
            n = np.bincount(code[mask & hard], minlength=k).astype(np.float64)
            if soft_w is not None and soft_w.size:
                n += np.bincount(code[self.soft], weights=soft_w, minlength=k)
            out.append(n)
        return out[0], out[1], out[2]


def _null_negative(idx: np.ndarray) -> pl.Series:
    """Row indices with −1 as null (gathering a null index gives null)."""
    s = pl.Series(idx)
    return pl.select(pl.when(s >= 0).then(s)).to_series()


def _winrate_scores(comp: pl.DataFrame, p_a: np.ndarray) -> pa.Table:
    """Per candidate: mean of P(it wins) over its comparisons with a p_a (annotator
    ``aggregate``; null for a candidate without one), in first-seen order."""
    cand = pl.concat([comp.select(c="candidate_a"), comp.select(c="candidate_b")])
    w = np.concatenate([p_a, 1.0 - p_a])
    code, first = factorize(cand, ["c"])
    ok = np.isfinite(w)
    total = np.bincount(code[ok], weights=w[ok], minlength=first.size)
    n = np.bincount(code[ok], minlength=first.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    sc = cand.gather(first).select(
        candidate_id="c",
        score=pl.Series(score).fill_nan(None),
        annotator=pl.lit("aggregate"),
        aspect=pl.lit("winrate"),
        raw_output=pl.lit(None, pl.Utf8),
        parse_error=pl.lit(None, pl.Utf8),
    )
    return conform(sc.to_arrow(), SCORES, "scores")


def _priors(
    names: list[str], prior: tuple[float, float] | None, verifier_prior: tuple[float, float] | None
) -> np.ndarray | None:
    """Per annotator (in ``names`` order) its (right, wrong) pseudo-counts, or None."""
    if prior is None and verifier_prior is None:
        return None
    base = np.asarray(prior if prior is not None else (0.0, 0.0), dtype=np.float64)
    out = np.tile(base, (len(names), 1))
    if verifier_prior is not None:
        ver = np.array([n.startswith("verifier:") for n in names], dtype=bool)
        out[ver] = verifier_prior
    return out


def _fit_em(
    v: _VoteArrays,
    code: np.ndarray,
    k: int,
    acode: np.ndarray,
    names: list[str],
    use: np.ndarray,
    method: str,
    *,
    prior: np.ndarray | None = None,
    class_prior: str = "estimated",
    class_prior_lr: float = 10.83,
    label_side: np.ndarray | None = None,
    is_label: np.ndarray | None = None,
    correlation: str = "off",
    correlation_z: float = 4.0,
    gold: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Dawid–Skene / one-coin EM over the votes ``use`` (valid ones), items = ``code``;
    ``gold`` (k × 2, NaN rows free): the anchored comparisons, fixed in every fit.

    Returns P(a) per comparison (the prior where it has no vote in ``use``; the caller
    nulls those) and the stage info (reliability per annotator, iterations, and the
    label-correlated annotators when ``correlation`` is not ``off``).
    """
    if (v.bad & use).any():
        bad = v.verdict.filter(pl.Series(v.bad & use)).unique().sort().to_list()
        raise SchemaError(
            f"votes.verdict must be one of {', '.join(LABELS)} or null for "
            f"method {method!r}, found {bad[:5]}; fix the judge's "
            f"verdict mapping or use method 'majority'",
            table="votes",
            column="verdict",
        )
    rows = np.flatnonzero(use)
    first = first_rows(acode, len(names), use)  # annotators with a vote here,
    used = np.flatnonzero(first >= 0)
    used = used[np.argsort(first[used], kind="stable")]  # in first-seen order
    remap = np.zeros(len(names), dtype=np.int32)
    remap[used] = np.arange(used.size, dtype=np.int32)
    annot = remap[acode[rows]]
    item = code[rows].astype(np.int32)
    label = v.vcode[rows]
    weight = None
    soft = v.soft[rows]
    hard = np.ones(item.size, dtype=bool)
    label_vote = is_label[rows] if is_label is not None else np.zeros(item.size, bool)
    if soft.any():  # a soft vote: two weighted observations, a with prob_a, b with 1-prob_a
        p = v.prob[np.searchsorted(np.flatnonzero(v.soft), rows[soft])]
        ns = int(soft.sum())
        weight = np.concatenate([np.ones(int((~soft).sum())), p, 1.0 - p])
        item = np.concatenate([item[~soft], item[soft], item[soft]])
        annot = np.concatenate([annot[~soft], annot[soft], annot[soft]])
        label = np.concatenate([label[~soft], np.zeros(ns, label.dtype), np.ones(ns, label.dtype)])
        hard = np.concatenate([np.ones(int((~soft).sum()), bool), np.zeros(2 * ns, bool)])
        label_vote = np.concatenate([label_vote[~soft], label_vote[soft], label_vote[soft]])
    n_labels = 3 if (label == 2).any() else 2
    fit = em.fit_one_coin if method == "one_coin" else em.fit_dawid_skene
    kw: dict = {} if gold is None else {"gold": gold}
    if method != "one_coin":
        kw["prior"] = None if prior is None else prior[used]
        if class_prior in ("symmetric", "tested"):
            kw["class_prior"] = np.array([0.5, 0.5])
    res = fit(
        item,
        annot,
        label,
        weight=weight,
        n_items=k,
        n_annotators=used.size,
        n_classes=2,
        n_labels=n_labels,
        **kw,
    )
    test_info = None
    if class_prior == "tested" and method != "one_coin":
        # the likelihood-ratio test of π = ½ against a fitted π (one degree of freedom)
        free_kw = {key: val for key, val in kw.items() if key != "class_prior"}
        free = fit(
            item,
            annot,
            label,
            weight=weight,
            n_items=k,
            n_annotators=used.size,
            n_classes=2,
            n_labels=n_labels,
            **free_kw,
        )
        total = float(item.size if weight is None else weight.sum())
        stat = (
            2.0
            * total
            * ((free.elbo[-1] if free.elbo else 0.0) - (res.elbo[-1] if res.elbo else 0.0))
        )
        chosen = "estimated" if stat > class_prior_lr else "symmetric"
        test_info = {
            "statistic": stat,
            "threshold": class_prior_lr,
            "chosen": chosen,
            "estimated": {"a": float(free.priors[0]), "b": float(free.priors[1])},
        }
        if chosen == "estimated":
            res, kw = free, free_kw

    def summary(res: em.EMResult, reliability: np.ndarray) -> dict:
        """The fit's part of the stage info (``reliability`` of the ``used`` annotators)."""
        rel = dict(zip((names[i] for i in used), reliability[: used.size].tolist()))
        return {
            "annotator_reliability": {
                n: None if n not in rel or np.isnan(rel[n]) else rel[n] for n in names
            },
            "priors": {"a": float(res.priors[0]), "b": float(res.priors[1])},
            "elbo_per_vote": res.elbo[-1] if res.elbo else None,
        }

    info = {
        **summary(res, res.reliability()),
        "n_iter": res.n_iter,
        "converged": bool(res.converged),
    }
    if test_info is not None:
        info["class_prior_test"] = test_info
    if correlation != "off" and label_side is not None and method != "one_coin":
        jv = ~label_vote  # the judges-only fit: who agrees with the label beyond the truth
        jres = fit(
            item[jv],
            annot[jv],
            label[jv],
            weight=None if weight is None else weight[jv],
            n_items=k,
            n_annotators=used.size,
            n_classes=2,
            n_labels=n_labels,
            **kw,
        )
        found = label_correlated(
            jres.posterior[:, 0],
            jres.confusion,
            item,
            annot,
            label,
            hard & jv,
            label_side,
            correlation_z,
        )
        info["label_correlation"] = correlation
        info["label_correlated"] = {names[used[w]]: st for w, st in found.items()}
        if correlation == "split" and found:
            flagged = sorted(found)
            annot2 = annot.copy()
            side = label_side[item]
            for i, w in enumerate(flagged):
                m = (annot == w) & (side >= 0)
                annot2[m] = used.size + 2 * i + side[m]
            kw2 = dict(kw)
            if kw.get("prior") is not None:  # each virtual annotator keeps its prior
                kw2["prior"] = np.concatenate(
                    [kw["prior"], np.repeat(kw["prior"][flagged], 2, axis=0)]
                )
            res = fit(
                item,
                annot2,
                label,
                weight=weight,
                n_items=k,
                n_annotators=used.size + 2 * len(flagged),
                n_classes=2,
                n_labels=n_labels,
                **kw2,
            )
            # the reliabilities that decided: the refit's (the first fit's are inflated
            # for the label and its copiers, which looked like two independent voters)
            r2 = res.reliability()
            for i, w in enumerate(flagged):
                given = r2[used.size + 2 * i : used.size + 2 * i + 2]
                r2[w] = float(np.nanmean(given)) if np.isfinite(given).any() else np.nan
                info["label_correlated"][names[used[w]]]["reliability_given_label"] = {
                    s_: None if np.isnan(g) else float(g) for s_, g in zip("ab", given)
                }
            info.update(
                summary(res, r2), n_iter=info["n_iter"] + res.n_iter, converged=bool(res.converged)
            )
    return res.posterior[:, 0], info


def label_correlated(
    post_a: np.ndarray,
    confusion: np.ndarray,
    item: np.ndarray,
    annot: np.ndarray,
    label: np.ndarray,
    test: np.ndarray,
    side: np.ndarray,
    z_min: float,
    *,
    min_votes: int = 20,
    min_excess: float = 0.05,
) -> dict[int, dict]:
    """Annotators that agree with the dataset's label more often than independence allows.

    Dawid–Skene assumes annotators independent given the truth; one that copies the
    file's label part of the time forms a coalition with it that a fit over all annotators
    takes for two reliable voters. So the test uses a fit **without the label**
    (``post_a``, P(a) per comparison, and its ``confusion``): the label's own confusion is
    estimated against that posterior; for each vote of an annotator w (rows ``test``: hard
    a/b votes, not the label's) on a comparison whose label side is ``side`` (0 a, 1 b,
    −1 none), the posterior without w's own term and with the label's, and w's fitted
    confusion, give the probability p that w says the label's side were it independent of
    the label. Observed agreements A, expected E = Σ p and variance V = Σ p(1 − p) give
    z = (A − E)/√V. Flagged: z > ``z_min``, ≥ ``min_votes`` votes and an excess
    (A − E)/n ≥ ``min_excess``. Returns {annotator code: {z, agreement, expected, votes}}.

    >>> rng = np.random.default_rng(0)
    >>> n = 400; truth = rng.integers(0, 2, n)
    >>> lab = np.where(rng.random(n) < 0.3, 1 - truth, truth)
    >>> honest = [np.where(rng.random(n) < 0.8, truth, 1 - truth) for _ in range(3)]
    >>> own = np.where(rng.random(n) < 0.8, truth, 1 - truth)
    >>> copier = np.where(rng.random(n) < 0.7, lab, own)
    >>> item = np.tile(np.arange(n), 4); annot = np.repeat(np.arange(1, 5), n)
    >>> label = np.concatenate(honest + [copier])
    >>> res = em.fit_dawid_skene(item, annot, label, n_annotators=5, prior=(2.0, 1.0))
    >>> found = label_correlated(res.posterior[:, 0], res.confusion, item, annot, label,
    ...                          annot > 0, lab, 4.0)
    >>> sorted(found)
    [4]
    """
    sel = test & (label < 2) & (side[item] >= 0)
    if not sel.any():
        return {}
    it, w, y = item[sel], annot[sel], label[sel]
    s = side[it]
    # the label's confusion P(label side k | class c) against the judges-only posterior
    has = side >= 0
    pj = np.clip(np.nan_to_num(post_a, nan=0.5), 1e-12, 1 - 1e-12)
    e_lab = np.empty((2, 2))
    for c, pc in ((0, pj), (1, 1.0 - pj)):
        tot = pc[has].sum() + 3.0
        e_lab[0, c] = (pc[has & (side == 0)].sum() + (2.0 if c == 0 else 1.0)) / tot
        e_lab[1, c] = 1.0 - e_lab[0, c]
    lab_lo = np.log(e_lab[s, 0]) - np.log(e_lab[s, 1])
    pa_ = pj[it]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_e = np.log(np.maximum(confusion[:, :2, :], 1e-300))
        own = log_e[w, y, 0] - log_e[w, y, 1]
        loo = np.log(pa_) - np.log1p(-pa_) - own + lab_lo
        p0 = 1.0 / (1.0 + np.exp(-np.clip(loo, -50, 50)))
        e = confusion[:, :2, :] / confusion[:, :2, :].sum(axis=1, keepdims=True)
        ws = w * 2 + s  # one flat gather per class instead of a 3-D fancy index
        e0, e1 = e[:, :, 0].ravel()[ws], e[:, :, 1].ravel()[ws]
        p = e1 + p0 * (e0 - e1)
    p = np.nan_to_num(p, nan=0.5)
    n_w = confusion.shape[0]
    agree = np.bincount(w, (y == s).astype(np.float64), n_w)
    exp_ = np.bincount(w, p, n_w)
    var = np.bincount(w, p * (1.0 - p), n_w)
    cnt = np.bincount(w, minlength=n_w)
    out = {}
    for a in np.flatnonzero(cnt >= min_votes):
        z = (agree[a] - exp_[a]) / np.sqrt(max(var[a], 1e-12))
        if z > z_min and (agree[a] - exp_[a]) / cnt[a] >= min_excess:
            out[int(a)] = {
                "z": round(float(z), 2),
                "agreement": float(agree[a] / cnt[a]),
                "expected": float(exp_[a] / cnt[a]),
                "votes": int(cnt[a]),
            }
    return out


def position_consistency(votes: pa.Table) -> dict[str, dict[str, float | int]]:
    """Per judge (annotator without its order): share of pairs whose ab and ba verdicts agree.

    Only pairs with a parsed verdict in both orders count.
    """
    if not votes.num_rows:
        return {}
    df = _votes_frame(votes)
    code, first = factorize(df, KEY)
    acode, names = _annotator_codes(df)
    return _position_consistency(df, _VoteArrays(df, False), code, first.size, acode, names)


def _annotator_codes(df: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per vote the code of its annotator, and the names in first-seen order (few distinct
    values: an Enum cast is exact and cheaper than hashing)."""
    if not df.height:
        return np.zeros(0, dtype=np.int64), []
    names = df["annotator"].unique(maintain_order=True).to_list()
    return df["annotator"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64), names


_DENSE_CELLS = 1 << 25  # judge × pair cells per chunk of the dense first-verdict arrays


def _position_consistency(
    df: pl.DataFrame, v: _VoteArrays, code: np.ndarray, k: int, acode: np.ndarray, names: list[str]
) -> dict[str, dict]:
    """Per judge: pairs with a verdict in both orders, the share that agree, and the share
    answered "the first response" both times. The first vote of a judge × order × pair
    counts; everything runs on the integer codes (string-keyed grouping of 10M votes took
    ~9 s and 2.7 GB)."""
    order = df["order"]
    is_ab = (order == "ab").fill_null(False).to_numpy() & v.valid
    is_ba = (order == "ba").fill_null(False).to_numpy() & v.valid
    if not (is_ab.any() and is_ba.any()):
        return {}
    judge_of = [_judge_name(a) for a in names]
    judges = sorted(set(judge_of))
    jmap = np.array([judges.index(j) for j in judge_of], dtype=np.int64)
    jcode = jmap[acode]
    vcode = v.vcode
    out: dict[str, dict] = {}
    step = max(1, _DENSE_CELLS // max(k, 1))
    for j0 in range(0, len(judges), step):
        js = min(step, len(judges) - j0)
        cells = js * k
        sel = (jcode >= j0) & (jcode < j0 + js)
        firsts = []
        for mask in (is_ab & sel, is_ba & sel):
            idx = np.flatnonzero(mask)
            cell = (jcode[idx] - j0) * k + code[idx]
            first = np.full(cells, -1, dtype=np.int8)
            first[cell[::-1]] = vcode[idx][::-1]
            firsts.append(first.reshape(js, k))
        ab, ba = firsts
        both = (ab >= 0) & (ba >= 0)
        n_pairs = both.sum(axis=1)
        agree = (both & (ab == ba)).sum(axis=1)
        first_pos = (both & (ab == 0) & (ba == 1)).sum(axis=1)
        for i in range(js):
            if n_pairs[i]:
                out[judges[j0 + i]] = {
                    "pairs": int(n_pairs[i]),
                    "consistency": int(agree[i]) / int(n_pairs[i]),
                    "always_first_share": int(first_pos[i]) / int(n_pairs[i]),
                }
    return out
