"""Label correlation: annotators that agree with the dataset's label more often than
their estimated accuracy allows (a judge that copies the label, or shares its bias), found
by a z-test on the judges-only fit and, with ``label_correlation: split``, refit with
their confusion conditioned on the label's side (two virtual annotators each)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.aggregate import em


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


def label_correlation(
    x: Any,
    res: em.EMResult,
    kw: dict,
    info: dict,
    label_side: np.ndarray,
    correlation: str,
    correlation_z: float,
) -> em.EMResult:
    """Test every annotator for copying the label (into ``info``); with ``split`` refit
    with each such annotator's confusion conditioned on the label's side → the fit kept."""
    names, used, annot, item = x.names, x.used, x.annot, x.item
    jv = ~x.label_vote  # the judges-only fit: who agrees with the label beyond the truth
    jres = x.run(kw, sel=jv)
    found = label_correlated(
        jres.posterior[:, 0],
        jres.confusion,
        item,
        annot,
        x.label,
        x.hard & jv,
        label_side,
        correlation_z,
    )
    info["label_correlation"] = correlation
    info["label_correlated"] = {names[used[w]]: st for w, st in found.items()}
    if correlation != "split" or not found:
        return res
    flagged = sorted(found)
    annot2 = annot.copy()
    side = label_side[item]
    for i, w in enumerate(flagged):
        m = (annot == w) & (side >= 0)
        annot2[m] = used.size + 2 * i + side[m]
    kw2 = dict(kw)
    if kw.get("prior") is not None:  # each virtual annotator keeps its prior
        kw2["prior"] = np.concatenate([kw["prior"], np.repeat(kw["prior"][flagged], 2, axis=0)])
    res = x.run(kw2, codes=annot2, n_extra=2 * len(flagged))
    # the reliabilities that decided: the refit's (the first fit's are inflated for the
    # label and its copiers, which looked like two independent voters)
    r2 = res.reliability()
    for i, w in enumerate(flagged):
        given = r2[used.size + 2 * i : used.size + 2 * i + 2]
        r2[w] = float(np.nanmean(given)) if np.isfinite(given).any() else np.nan
        info["label_correlated"][names[used[w]]]["reliability_given_label"] = {
            s_: None if np.isnan(g) else float(g) for s_, g in zip("ab", given)
        }
    info.update(
        x.summary(res, r2), n_iter=info["n_iter"] + res.n_iter, converged=bool(res.converged)
    )
    return res
