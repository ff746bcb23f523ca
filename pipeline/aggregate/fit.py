"""The EM fits of aggregation: Dawid–Skene or one-coin over the integer-coded votes with
the run's priors, the class-prior likelihood-ratio test, and the test (and split) of
annotators that copy the dataset's label (:func:`label_correlated`)."""

from __future__ import annotations

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
    # Long on purpose: the soft-vote expansion, the class-prior test and the label-
    # correlation split each refit on the same expanded arrays and keyword set.
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

    def run(
        kw: dict, sel: Any = slice(None), codes: np.ndarray | None = None, n_extra: int = 0
    ) -> em.EMResult:
        """One EM fit over the votes ``sel`` (all by default: a view, no copy), with other
        annotator ``codes`` and ``n_extra`` virtual annotators if given."""
        a = annot if codes is None else codes
        return fit(
            item[sel],
            a[sel],
            label[sel],
            weight=None if weight is None else weight[sel],
            n_items=k,
            n_annotators=used.size + n_extra,
            n_classes=2,
            n_labels=n_labels,
            **kw,
        )

    res = run(kw)
    test_info = None
    if class_prior == "tested" and method != "one_coin":
        # the likelihood-ratio test of π = ½ against a fitted π (one degree of freedom)
        free_kw = {key: val for key, val in kw.items() if key != "class_prior"}
        free = run(free_kw)
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
        jres = run(kw, sel=jv)
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
            res = run(kw2, codes=annot2, n_extra=2 * len(flagged))
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
