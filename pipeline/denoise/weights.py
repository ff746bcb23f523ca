"""Confidence weights, LCPO / RE-PO style (arXiv 2509.24159; DESIGN.md §5).

Each pair i carries a label given by an annotator k (the dataset's source, or the
aggregate of a judge panel when the pair was oriented by its votes) and a model
probability p_i that this label is right (from the votes, a Dawid–Skene posterior or a
reward model: σ(r_w − r_l)). Every annotator has a reliability η_k, the probability that
its labels are right. EM over the pairs, all at once (numpy):

- E-step: w_i = p_i η_k / (p_i η_k + (1 − p_i)(1 − η_k)), the posterior that the label is
  right given the model and the annotator;
- M-step: η_k = mean of w_i over annotator k's pairs, clipped to [η_min, η_max]
  (default [0.5, 1]: an annotator is never trusted less than a coin);

from η_k = η₀ (0.9) until no η moves by more than ``tol``. This is the EM of the
mixture likelihood Π_i (p_i η_k + (1 − p_i)(1 − η_k)) — the truth follows the model, the
label is the truth with probability η_k — so η_k converges to its maximum likelihood value
(within the clip range) and ``w`` is the exported pair ``weight``.

Calibration and extra evidence (our extension). Vote shares are not probabilities of
being right (8 votes at 6–2 give p̂ = 0.72, while a panel of good judges that splits
6–2 is right far more often than that), and a reward model's margins have no fixed
scale. With ``evidence`` (an
n × k matrix of extra log-odds that each label is right, e.g. the CRM heads' mean margin)
the model probability is p_i = σ(β₀·logit p_i + Σ_j β_j·evidence_ij), β = 1 unless
``calibrate``. With ``calibrate`` the scales β ≥ 0 are fitted too, so the data decide how
much each source is worth: (η, β) maximise the same mixture likelihood (plus a weak
ridge pulling β towards 1), found with L-BFGS-B because EM crawls when η and β trade off;
the weights are the E-step at that optimum.

Pairs without a single label source (candidates generated and judged by a panel) are
oriented by the panel's own votes; their annotator is the aggregate itself (name
:data:`AGGREGATE`). That orientation is a function of the same votes p_i comes from, so it
is no independent evidence: its η is fixed at ½ and w_i = p_i (calibrated). (Fitted, η
went to 1 — p_i ≥ ½ by construction — and every such pair got w = 1, coin flips
included.) For the other annotators η ≥ ½, so w_i ≥ p_i.

One iteration by hand, p = (0.9, 0.6, 0.2) and η₀ = 0.9: w = (0.9878, 0.9310, 0.6923),
η₁ = mean w = 0.8704; the returned weights are the E-step at the returned η:

>>> res = estimate_confidence_weights([0.9, 0.6, 0.2], max_iter=1)
>>> round(res.eta["label"], 4), [round(float(w), 4) for w in res.weight]
(0.8704, [0.9837, 0.9097, 0.6267])
>>> res = estimate_confidence_weights([0.9, 0.9, 0.1, 0.1], ["s", "s", "t", "t"])
>>> {k: round(v, 4) for k, v in res.eta.items()}, [round(float(w), 2) for w in res.weight]
({'s': 1.0, 't': 0.5}, [1.0, 1.0, 0.1, 0.1])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate.weights")

AGGREGATE = "aggregate"  # annotator of pairs oriented by the panel's own votes
DEFAULT_ANNOTATOR = "label"  # annotator of every pair when none is named
P_CLIP = 1e-6  # p_i is kept in [P_CLIP, 1 - P_CLIP] so that w is always defined
RIDGE = 1.0  # calibration: pull of the scales β towards 1 (one pseudo-pair's worth)
BETA_MAX = 50.0


@dataclass(frozen=True)
class ConfidenceWeights:
    """Result of :func:`estimate_confidence_weights`."""

    weight: np.ndarray  # w_i in [0, 1], aligned with the input pairs
    eta: dict[str, float]  # reliability per annotator, in [eta_min, eta_max]
    iterations: int
    converged: bool
    n_per_annotator: dict[str, int] = field(default_factory=dict)
    scales: tuple[float, ...] = ()  # β: logit p first, then one per evidence column
    p_model: np.ndarray | None = None  # the (calibrated) model probability per pair

    def noise_rate(self) -> float:
        """Estimated share of wrong labels: 1 − mean weight (0 without pairs)."""
        return float(1.0 - self.weight.mean()) if self.weight.size else 0.0


def posterior_weight(p: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """E-step: w = p η / (p η + (1 − p)(1 − η)), elementwise."""
    num = p * eta
    return num / (num + (1.0 - p) * (1.0 - eta))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, as 0.5·(1 + tanh(z/2)) (no overflow for large |z|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _em(
    p: np.ndarray,
    code: np.ndarray,
    counts: np.ndarray,
    eta: np.ndarray,
    eta_min: np.ndarray,
    eta_max: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """E/M steps from ``eta`` until no η moves by more than ``tol``."""
    w = posterior_weight(p, eta[code])
    for it in range(1, max_iter + 1):
        new_eta = np.clip(
            np.bincount(code, weights=w, minlength=eta.size) / counts, eta_min, eta_max
        )
        delta = float(np.max(np.abs(new_eta - eta)))
        eta = new_eta
        w = posterior_weight(p, eta[code])
        if delta < tol:
            return w, eta, it, True
    return w, eta, max_iter, False


def _fit_calibrated(
    x: np.ndarray,
    code: np.ndarray,
    k: int,
    eta0: np.ndarray,
    eta_min: np.ndarray,
    eta_max: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Maximise Σ_i log(η_k σ(x_i β) + (1 − η_k)(1 − σ(x_i β))) − ½·RIDGE·|β − 1|²
    over η ∈ [eta_min, eta_max]^K and β ∈ [0, BETA_MAX]^J with L-BFGS-B (analytic
    gradient).

    This is the likelihood whose EM is the E/M steps above; EM itself crawls when η and β
    trade off against each other, a quasi-Newton method does not. The ridge keeps tiny or
    separable inputs near face value and is negligible for many pairs.
    """
    from scipy.optimize import minimize

    j = x.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta, beta = theta[:k], theta[k:]
        s = sigmoid(x @ beta)
        e = eta[code]
        dens = np.maximum(e * s + (1.0 - e) * (1.0 - s), 1e-300)
        val = -np.sum(np.log(dens)) + 0.5 * RIDGE * np.sum((beta - 1.0) ** 2)
        g_eta = -np.bincount(code, weights=(2.0 * s - 1.0) / dens, minlength=k)
        g_beta = -x.T @ ((2.0 * e - 1.0) * s * (1.0 - s) / dens) + RIDGE * (beta - 1.0)
        return float(val), np.concatenate([g_eta, g_beta])

    theta0 = np.concatenate([eta0, np.ones(j)])
    bounds = [(float(lo), float(hi)) for lo, hi in zip(eta_min, eta_max)] + [(0.0, BETA_MAX)] * j
    opt = minimize(
        objective,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": tol * 1e-3, "gtol": tol},
    )
    return opt.x[:k], opt.x[k:], int(opt.nit), bool(opt.success)


def estimate_confidence_weights(
    p: Sequence[float] | np.ndarray,
    annotator: Sequence[str | None] | np.ndarray | None = None,
    *,  # or a polars Series
    evidence: np.ndarray | None = None,
    calibrate: bool = False,
    eta_init: float = 0.9,
    eta_min: float = 0.5,
    eta_max: float = 1.0,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> ConfidenceWeights:
    """LCPO / RE-PO EM: per-pair weights and per-annotator reliabilities.

    ``p``: the model probability that each pair's label is right (finite, in [0, 1]).
    ``annotator``: who gave each pair's label (None entries: :data:`AGGREGATE`); omitted,
    every pair belongs to one annotator, :data:`DEFAULT_ANNOTATOR`. ``evidence``: optional
    n × k extra log-odds that each label is right; ``calibrate``: fit the scales of
    logit p and of each evidence column as well (module docstring).
    """
    p_arr = np.asarray(p, dtype=np.float64).reshape(-1)
    n = p_arr.size
    if not (0.5 <= eta_min <= eta_max <= 1.0):
        raise PrefcurateError(
            f"confidence weights: need 0.5 <= eta_min <= eta_max <= 1, got "
            f"eta_min={eta_min}, eta_max={eta_max}"
        )
    if not np.all(np.isfinite(p_arr)) or np.any((p_arr < 0) | (p_arr > 1)):
        raise PrefcurateError(
            "confidence weights: p must be finite probabilities in [0, 1] "
            "(fill missing model probabilities before calling)"
        )
    names, code = _annotator_codes(annotator, n)
    ev = _evidence(evidence, n)
    if n == 0:
        return ConfidenceWeights(np.zeros(0), {}, 0, True, {}, (), np.zeros(0))
    counts = np.bincount(code, minlength=len(names)).astype(np.float64)
    x = _logit(np.clip(p_arr, P_CLIP, 1.0 - P_CLIP))[:, None]
    if ev is not None:
        x = np.concatenate([x, ev], axis=1)
    beta = np.ones(x.shape[1])

    def model_p() -> np.ndarray:
        return np.clip(sigmoid(x @ beta), P_CLIP, 1.0 - P_CLIP)

    lo, hi = np.full(len(names), eta_min), np.full(len(names), eta_max)
    fixed = np.array([str(a) == AGGREGATE for a in names], dtype=bool)
    lo[fixed] = hi[fixed] = 0.5  # vote-oriented pairs: the orientation is no evidence
    eta = np.clip(np.full(len(names), float(eta_init)), lo, hi)
    if calibrate:
        eta, beta, it, converged = _fit_calibrated(x, code, len(names), eta, lo, hi, tol, max_iter)
        pc = model_p()
        w = posterior_weight(pc, eta[code])
    else:
        pc = model_p()
        w, eta, it, converged = _em(pc, code, counts, eta, lo, hi, tol, max_iter)
    if not converged:
        log.info(
            "confidence weights: stopped after %d iterations (max_iter) before converging to %g",
            it,
            tol,
        )
    return ConfidenceWeights(
        np.clip(w, 0.0, 1.0),
        {str(k): float(v) for k, v in zip(names, eta)},
        it,
        converged,
        {str(k): int(c) for k, c in zip(names, counts)},
        tuple(float(b) for b in beta),
        pc,
    )


def _annotator_codes(annotator: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the annotators' names, sorted; each pair's annotator index); no annotators: every
    pair is :data:`DEFAULT_ANNOTATOR`'s, a None one :data:`AGGREGATE`'s."""
    if annotator is None:
        names = np.array([DEFAULT_ANNOTATOR]) if n else np.array([], dtype=object)
        return names, np.zeros(n, dtype=np.int64)
    import polars as pl

    ann = (
        annotator
        if isinstance(annotator, pl.Series)
        else pl.Series([None if a is None else str(a) for a in annotator], dtype=pl.Utf8)
    )
    ann = ann.cast(pl.Utf8).fill_null(AGGREGATE)
    if ann.len() != n:
        raise PrefcurateError(
            f"confidence weights: {n} probabilities but {ann.len()} "
            f"annotators; pass one annotator per pair"
        )
    names = np.array(sorted(ann.unique().to_list()), dtype=object)
    code = (
        ann.cast(pl.Enum(names.tolist())).to_physical().to_numpy().astype(np.int64)
        if n
        else np.zeros(0, dtype=np.int64)
    )
    return names, code


def _evidence(evidence: Any, n: int) -> np.ndarray | None:
    """The extra log-odds as an n × k float matrix (a vector: one column), or None."""
    ev = None
    if evidence is not None:
        ev = np.asarray(evidence, dtype=np.float64)
        ev = ev.reshape(-1, 1) if ev.ndim == 1 else ev
        if ev.shape[0] != n or not np.all(np.isfinite(ev)):
            raise PrefcurateError(
                f"confidence weights: evidence must be finite with one row "
                f"per pair ({n}), got shape {ev.shape}"
            )
    return ev
