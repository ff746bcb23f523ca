"""The EM fits of aggregation: Dawid–Skene or one-coin over the integer-coded votes with
the run's priors, the class-prior likelihood-ratio test, and the test (and split) of
annotators that copy the dataset's label (:func:`label_correlated`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from pipeline.aggregate import em
from pipeline.aggregate.codes import first_rows
from pipeline.aggregate.votes import VoteArrays
from schemas.errors import SchemaError

LABELS = ("a", "b", "tie")  # label codes 0, 1, 2; classes are a (0) and b (1)


def priors(
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


def fit_em(
    v: VoteArrays,
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
    x = _Observations.of(v, code, k, acode, names, use, is_label, method)
    kw: dict = {} if gold is None else {"gold": gold}
    if method != "one_coin":
        kw["prior"] = None if prior is None else prior[x.used]
        if class_prior in ("symmetric", "tested"):
            kw["class_prior"] = np.array([0.5, 0.5])
    res = x.run(kw)
    test_info = None
    if class_prior == "tested" and method != "one_coin":
        res, kw, test_info = _class_prior_test(x, res, kw, class_prior_lr)
    info = {
        **x.summary(res, res.reliability()),
        "n_iter": res.n_iter,
        "converged": bool(res.converged),
    }
    if test_info is not None:
        info["class_prior_test"] = test_info
    if correlation != "off" and label_side is not None and method != "one_coin":
        from pipeline.aggregate.correlation import label_correlation

        res = label_correlation(x, res, kw, info, label_side, correlation, correlation_z)
    return res.posterior[:, 0], info


@dataclass
class _Observations:
    """The EM's observations from the votes of one fit: item, annotator (renumbered: the
    ``used`` ones, in first-seen order), label and weight per observation (a soft vote is
    two weighted ones: a with prob_a, b with 1 − prob_a), which are hard votes and which
    the label's."""

    item: np.ndarray
    annot: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None
    hard: np.ndarray
    label_vote: np.ndarray
    used: np.ndarray
    names: list[str]
    k: int
    n_labels: int
    fit: Any

    @classmethod
    def of(
        cls,
        v: VoteArrays,
        code: np.ndarray,
        k: int,
        acode: np.ndarray,
        names: list[str],
        use: np.ndarray,
        is_label: np.ndarray | None,
        method: str,
    ) -> _Observations:
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
            ns, nh = int(soft.sum()), int((~soft).sum())
            weight = np.concatenate([np.ones(nh), p, 1.0 - p])
            item = np.concatenate([item[~soft], item[soft], item[soft]])
            annot = np.concatenate([annot[~soft], annot[soft], annot[soft]])
            label = np.concatenate(
                [label[~soft], np.zeros(ns, label.dtype), np.ones(ns, label.dtype)]
            )
            hard = np.concatenate([np.ones(nh, bool), np.zeros(2 * ns, bool)])
            label_vote = np.concatenate([label_vote[~soft], label_vote[soft], label_vote[soft]])
        return cls(
            item=item,
            annot=annot,
            label=label,
            weight=weight,
            hard=hard,
            label_vote=label_vote,
            used=used,
            names=names,
            k=k,
            n_labels=3 if (label == 2).any() else 2,
            fit=em.fit_one_coin if method == "one_coin" else em.fit_dawid_skene,
        )

    def run(
        self, kw: dict, sel: Any = slice(None), codes: np.ndarray | None = None, n_extra: int = 0
    ) -> em.EMResult:
        """One EM fit over the observations ``sel`` (all by default: a view, no copy), with
        other annotator ``codes`` and ``n_extra`` virtual annotators if given."""
        a = self.annot if codes is None else codes
        return self.fit(
            self.item[sel],
            a[sel],
            self.label[sel],
            weight=None if self.weight is None else self.weight[sel],
            n_items=self.k,
            n_annotators=self.used.size + n_extra,
            n_classes=2,
            n_labels=self.n_labels,
            **kw,
        )

    def summary(self, res: em.EMResult, reliability: np.ndarray) -> dict:
        """The fit's part of the stage info (``reliability`` of the ``used`` annotators)."""
        names, used = self.names, self.used
        rel = dict(zip((names[i] for i in used), reliability[: used.size].tolist()))
        return {
            "annotator_reliability": {
                n: None if n not in rel or np.isnan(rel[n]) else rel[n] for n in names
            },
            "priors": {"a": float(res.priors[0]), "b": float(res.priors[1])},
            "elbo_per_vote": res.elbo[-1] if res.elbo else None,
        }


def _class_prior_test(
    x: _Observations, res: em.EMResult, kw: dict, lr: float
) -> tuple[em.EMResult, dict, dict]:
    """The likelihood-ratio test of π = ½ (``res``) against a fitted π (one degree of
    freedom) → the fit kept, its keywords, and the test for the info."""
    free_kw = {key: val for key, val in kw.items() if key != "class_prior"}
    free = x.run(free_kw)
    total = float(x.item.size if x.weight is None else x.weight.sum())
    stat = (
        2.0 * total * ((free.elbo[-1] if free.elbo else 0.0) - (res.elbo[-1] if res.elbo else 0.0))
    )
    chosen = "estimated" if stat > lr else "symmetric"
    test_info = {
        "statistic": stat,
        "threshold": lr,
        "chosen": chosen,
        "estimated": {"a": float(free.priors[0]), "b": float(free.priors[1])},
    }
    return (free, free_kw, test_info) if chosen == "estimated" else (res, kw, test_info)


class EMFits:
    """The EM fits of one aggregation: the coded votes and the settings every fit shares."""

    def __init__(
        self,
        v: VoteArrays,
        code: np.ndarray,
        k: int,
        prior: tuple[float, float] | None,
        verifier_prior: tuple[float, float] | None,
        class_prior: str,
        class_prior_lr: float,
        gold: np.ndarray | None,
    ) -> None:
        self.v, self.code, self.k, self.gold = v, code, k, gold
        self.prior, self.verifier_prior = prior, verifier_prior
        self.class_prior, self.class_prior_lr = class_prior, class_prior_lr

    def fit(self, acode: np.ndarray, names: list[str], mask: np.ndarray, method: str, **kw: Any):
        """:func:`pipeline.aggregate.fit.fit_em` on the votes of ``mask``."""
        return fit_em(
            self.v,
            self.code,
            self.k,
            acode,
            names,
            mask,
            method,
            prior=priors(names, self.prior, self.verifier_prior),
            class_prior=self.class_prior,
            class_prior_lr=self.class_prior_lr,
            gold=self.gold,
            **kw,
        )

    def fit_all(
        self,
        acode: np.ndarray,
        names: list[str],
        method: str,
        is_label: np.ndarray,
        side: np.ndarray,
        correlation: str,
        correlation_z: float,
        length_control: tuple[str, float, float] | None,
        comp_len: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict, np.ndarray, list[str]]:
        """The fit over every vote (with the label's side and the correlation test), under
        length control when it is on → (posterior, info, the fit's annotator codes and
        names: length control splits annotators)."""
        v = self.v

        def fit(ac: np.ndarray, nm: list[str]) -> tuple[np.ndarray, dict]:
            return self.fit(
                ac,
                nm,
                v.valid,
                method,
                label_side=side if is_label.any() else None,
                is_label=is_label,
                correlation=correlation,
                correlation_z=correlation_z,
            )

        if length_control is None or length_control[0] == "off":
            post, info = fit(acode, names)
            return post, info, acode, names
        from pipeline.aggregate import length

        mode, min_diff, z = length_control
        lside = length.length_sides(*comp_len, min_diff)
        return length.controlled_fit(
            fit,
            lside,
            self.code,
            acode,
            names,
            v.vcode,
            v.valid & ~v.soft,
            mode=mode,
            min_diff=min_diff,
            z_threshold=z,
        )

    def judges_only(
        self, acode: np.ndarray, names: list[str], judged: np.ndarray, method: str
    ) -> np.ndarray:
        """The posterior of the votes without the label's (NaN where none is left)."""
        if not judged.any():
            return np.full(self.k, np.nan)
        post, _ = self.fit(acode, names, judged, method)
        return np.where(np.bincount(self.code[judged], minlength=self.k) > 0, post, np.nan)
