"""Length bias: what each annotator's verdicts owe to response length, and the two
controls (DESIGN.md §5; issue 14).

LLM judges and human raters prefer the longer answer. Three pieces:

- :func:`length_effects` (the report): per annotator, the longer-win rate and
  LC-AlpacaEval's GLM on its decisive verdicts,
  logit P(says a) = β₀ + β_q·logit(q) + β_len·tanh(Δ / sd(Δ)),
  with Δ = len(a) − len(b) in characters and q the aggregation's posterior P(a ≻ b) (the
  pair's quality as every annotator together sees it). β_len is the annotator's length
  coefficient; the *length-controlled* longer-win rate is the mean predicted probability
  of picking the longer response with β_len set to 0 (what its verdicts would say on
  quality alone). The posterior includes the annotator's own vote, so β_q is optimistic;
  β_len is still the length effect beyond what the pooled verdicts explain.
- :func:`length_sides` (``aggregate.length_control``): the side each comparison's length
  difference falls on (a longer, b longer, or within ``min_diff`` of each other). With
  length control, Dawid–Skene gives every annotator one confusion matrix per side (a
  discretised covariate: P(verdict | truth, side)), so "says the longer one" is learnt as
  that annotator's bias on that side and a vote carries only the evidence beyond it: a
  length-debiased posterior. ``on`` splits every annotator: length is then no evidence
  at all (LC-AlpacaEval's assumption), which removes a bias the whole panel shares but
  also discards length where it really is a sign of quality — from votes alone the two
  cannot be told apart. ``tested`` splits only the annotators :func:`length_flags` finds
  (a length preference beyond what the posterior explains, i.e. beyond the panel's):
  identifiable, like Dawid–Skene itself, when annotators err independently given the
  truth.
- :func:`balance_drops` (``pairs.length_balance``): which pairs to drop so the share of
  pairs whose chosen is the longer one falls inside a target band, lowest weight first.

>>> import numpy as np
>>> import polars as pl
>>> length_sides(np.array([100, 100, 100, np.nan]), np.array([50, 95, 200, 10]), 0.1).tolist()
[1, 0, 2, 0]
>>> lookup(pl.Series([], dtype=pl.Null), pl.DataFrame({"candidate_id": ["x"], "length": [1.0]}))
array([], dtype=float64)
>>> balance_drops(np.array([True, True, True, False]), np.array([0.9, 0.2, 0.5, 1.0]),
...               (0.0, 0.5)).tolist()
[1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

STAGE_VERSION = 1
SIDES = ("similar", "a_longer", "b_longer")  # side codes 0, 1, 2
MIN_GLM_VOTES = 20  # fewer decisive votes on unequal pairs: no length coefficient
MAX_ROUNDS = 5  # tested: rounds of flag → refit
MAX_ANNOTATORS = 100  # annotators in the table (most votes first; the rest counted)
HIST_EDGES = tuple(round(-1.0 + 0.1 * i, 1) for i in range(21))


def candidate_lengths(candidates: pa.Table) -> pl.DataFrame:
    """``candidate_id`` → ``length`` (characters of the response text; null text is 0)."""
    df = pl.from_arrow(candidates.select(["candidate_id", "text"]))
    return df.select(
        "candidate_id", length=pl.col("text").fill_null("").str.len_chars().cast(pl.Float64)
    )


def lookup(ids: pl.Series, lengths: pl.DataFrame | None) -> np.ndarray:
    """The length of each id in ``ids`` (NaN where unknown), in order."""
    if lengths is None:
        return np.full(ids.len(), np.nan)
    out = pl.DataFrame({"candidate_id": ids.cast(pl.Utf8)}).join(
        lengths.with_columns(pl.col("candidate_id").cast(pl.Utf8)),
        on="candidate_id",
        how="left",
        maintain_order="left",
    )
    return out["length"].fill_null(np.nan).to_numpy()


def length_sides(len_a: np.ndarray, len_b: np.ndarray, min_diff: float) -> np.ndarray:
    """Per comparison: 1 when a is longer by at least ``min_diff`` of the longer length,
    2 when b is, else 0 (similar lengths, or a length unknown)."""
    la, lb = np.asarray(len_a, dtype=np.float64), np.asarray(len_b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (la - lb) / np.maximum(np.maximum(la, lb), 1.0)
    side = np.zeros(la.size, dtype=np.int8)
    side[rel >= min_diff] = 1
    side[rel <= -min_diff] = 2
    return side


def length_flags(
    post_a: np.ndarray,
    code: np.ndarray,
    acode: np.ndarray,
    vcode: np.ndarray,
    use: np.ndarray,
    side: np.ndarray,
    n_annotators: int,
) -> np.ndarray:
    """Per annotator, the z-score of its verdicts' dependence on the length side, given a
    fit without length: with its confusion c re-estimated from the posterior (an M-step),
    each decisive vote's expected P(says a) is p = q·c[a→a] + (1 − q)·c[b→a]; the residuals
    r = [says a] − p summed on the pairs where a is longer (R₁) and where b is (R₂) have
    mean 0 when the annotator ignores length, and z = (R₁ − R₂) / √(Σ p(1 − p)) over both
    sides is large (positive: favours the longer one) when it does not.

    ``post_a`` per comparison, ``code`` / ``acode`` / ``vcode`` per vote (comparison,
    annotator, label 0 a / 1 b), ``use`` the votes to count, ``side`` per comparison."""
    m = use & ((vcode == 0) | (vcode == 1)) & np.isfinite(post_a[code])
    q = post_a[code[m]]
    y = (vcode[m] == 0).astype(np.float64)
    w = acode[m]
    s = side[code[m]]
    z = np.zeros(n_annotators)
    # confusion from the posterior: P(says a | truth a), P(says a | truth b)
    ta = np.bincount(w, weights=q, minlength=n_annotators)
    tb = np.bincount(w, weights=1.0 - q, minlength=n_annotators)
    aa = np.bincount(w, weights=q * y, minlength=n_annotators)
    ba = np.bincount(w, weights=(1.0 - q) * y, minlength=n_annotators)
    with np.errstate(invalid="ignore", divide="ignore"):
        c_aa, c_ba = aa / ta, ba / tb
    p = q * np.nan_to_num(c_aa[w], nan=0.5) + (1.0 - q) * np.nan_to_num(c_ba[w], nan=0.5)
    r = y - p
    sign = np.where(s == 1, 1.0, np.where(s == 2, -1.0, 0.0))
    num = np.bincount(w, weights=sign * r, minlength=n_annotators)
    var = np.bincount(w, weights=np.abs(sign) * p * (1.0 - p), minlength=n_annotators)
    ok = var > 1e-9
    z[ok] = num[ok] / np.sqrt(var[ok])
    return z


def controlled_fit(
    fit: Callable[[np.ndarray, list[str]], tuple[np.ndarray, dict]],
    side: np.ndarray,
    code: np.ndarray,
    acode: np.ndarray,
    names: list[str],
    vcode: np.ndarray,
    decisive: np.ndarray,
    *,
    mode: str,
    min_diff: float,
    z_threshold: float,
) -> tuple[np.ndarray, dict, np.ndarray, list[str]]:
    """The length-controlled EM (``mode`` ``on`` | ``tested``; module docstring): the
    posterior, the fit's info with a ``length_control`` entry, and the annotator codes and
    names it was fitted with. ``fit(acode, names)`` is the aggregation's EM; ``side`` is
    per comparison, ``code`` / ``acode`` / ``vcode`` / ``decisive`` per vote.

    ``tested`` flags against the current posterior, refits with the flagged split, and
    tests again until the set is stable (at most :data:`MAX_ROUNDS` rounds): a bias
    annotators share hides in the first posterior (only the strongest show, and an unbiased
    annotator looks biased the other way) and shows once they are split."""
    split: list[int] | None = None  # None: every annotator but verifiers
    flags: dict[str, float] = {}
    fit_acode, fit_names = acode, names
    if mode == "tested":
        post, info = fit(acode, names)
        split = []
        for _ in range(MAX_ROUNDS):
            z = length_flags(post, code, acode, vcode, decisive, side, len(names))
            now = [
                int(i)
                for i in np.flatnonzero(np.abs(z) > z_threshold)
                if not names[i].startswith("verifier:")
            ]
            if now == split:
                break
            split = now
            flags = {names[i]: float(z[i]) for i in split}
            fit_acode, fit_names = (
                virtual_annotators(acode, names, side[code], split) if split else (acode, names)
            )
            post, info = fit(fit_acode, fit_names)
    else:
        fit_acode, fit_names = virtual_annotators(acode, names, side[code], None)
        post, info = fit(fit_acode, fit_names)
    block = {
        "mode": mode,
        "min_diff": min_diff,
        "comparisons": {s: int(c) for s, c in zip(SIDES, np.bincount(side, minlength=len(SIDES)))},
        "z_threshold": z_threshold,
        "split": flags,
    }
    if split is None or split:
        info = collapse_info(info, fit_acode, fit_names, acode, names, block)
    else:
        info = {**info, "length_control": {**block, "reliability_by_side": {}}}
    return post, info, fit_acode, fit_names


def virtual_annotators(
    acode: np.ndarray, names: list[str], vote_side: np.ndarray, split: list[int] | None
) -> tuple[np.ndarray, list[str]]:
    """Virtual annotators ``name@<side>`` (the sides of :mod:`pipeline.aggregate.length`):
    each annotator in ``split`` (None: every one but verifiers) gets one per side, the
    others keep one under their own name (so reports of the fit, e.g. the label-correlated
    annotators, name them as given)."""
    n_side = len(SIDES)
    if split is None:
        split = [i for i, a in enumerate(names) if not a.startswith("verifier:")]
    on = np.zeros(len(names), dtype=bool)
    on[split] = True
    fit_acode = acode.astype(np.int32) * n_side + np.where(on[acode], vote_side, 0)
    fit_names = [
        f"{a}@{s}" if on[i] or j else a for i, a in enumerate(names) for j, s in enumerate(SIDES)
    ]
    return fit_acode.astype(np.int32), fit_names


def collapse_info(
    info: dict,
    fit_acode: np.ndarray,
    fit_names: list[str],
    acode: np.ndarray,
    names: list[str],
    length_info: dict,
) -> dict:
    """The fit's info in the real annotators' names: reliability = the vote-weighted mean
    of an annotator's per-side reliabilities (those of the split annotators in
    ``length_control.reliability_by_side``)."""
    rel = info["annotator_reliability"]
    n_fit = np.bincount(fit_acode, minlength=len(fit_names))
    n_side = len(fit_names) // max(len(names), 1)
    by_side: dict[str, dict] = {}
    collapsed: dict[str, float | None] = {}
    for i, a in enumerate(names):
        parts = {
            side: (rel.get(fit_names[i * n_side + j]), int(n_fit[i * n_side + j]))
            for j, side in enumerate(SIDES)
        }
        if fit_names[i * n_side] != a:  # a split annotator
            by_side[a] = {s: r for s, (r, c) in parts.items() if c}
        got = [(r, c) for r, c in parts.values() if r is not None and c]
        collapsed[a] = (sum(r * c for r, c in got) / sum(c for _, c in got)) if got else None
    return {
        **info,
        "annotator_reliability": collapsed,
        "length_control": {**length_info, "reliability_by_side": by_side},
    }


def _logit(p: np.ndarray, eps: float = 0.02) -> np.ndarray:
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, n_iter: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression by Newton's method (IRLS): coefficients and their standard
    errors (from the inverse Fisher information); a tiny ridge keeps separable data
    finite."""
    beta = np.zeros(x.shape[1])
    for _ in range(n_iter):
        p = _sigmoid(x @ beta)
        w = p * (1.0 - p)
        hess = (x * w[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, x.T @ (y - p) - ridge * beta)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    p = _sigmoid(x @ beta)
    hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
    se = np.sqrt(np.clip(np.diag(np.linalg.inv(hess)), 0.0, None))
    return beta, se


def length_effects(
    votes: pa.Table | pl.DataFrame, comparisons: pa.Table, lengths: pl.DataFrame
) -> dict:
    """:func:`effects` of a VOTES table against its COMPARISONS (``p_a``) and the
    candidates' ``lengths`` (votes of a comparison not in ``comparisons`` are left out)."""
    key = ["source_id", "prompt_id", "candidate_a", "candidate_b"]
    v = votes if isinstance(votes, pl.DataFrame) else pl.from_arrow(votes)
    comp = pl.from_arrow(comparisons.select(key + ["p_a"])).with_row_index("_c")
    v = v.select(key + ["annotator", "verdict"]).join(comp, on=key, how="inner")
    names = v["annotator"].unique(maintain_order=True).to_list()
    acode = v["annotator"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64)
    vcode = np.select(
        [v["verdict"].to_numpy() == "a", v["verdict"].to_numpy() == "b"], [0, 1], default=2
    )
    return effects(
        comp["p_a"].fill_null(np.nan).to_numpy(),
        lookup(comp["candidate_a"], lengths),
        lookup(comp["candidate_b"], lengths),
        v["_c"].to_numpy(),
        acode,
        names,
        vcode,
        np.ones(v.height, dtype=bool),
    )


def effects(
    p_a: np.ndarray,
    len_a: np.ndarray,
    len_b: np.ndarray,
    code: np.ndarray,
    acode: np.ndarray,
    names: list[str],
    vcode: np.ndarray,
    use: np.ndarray,
) -> dict:
    """Per annotator: decisive votes on pairs of unequal length, longer-win rate, the
    GLM's length coefficient (± standard error) and the length-controlled longer-win rate
    (module docstring; none for fewer than :data:`MIN_GLM_VOTES` votes or verdicts that
    never change, which have no finite fit); plus ``sd_chars``, the length-difference
    scale. ``p_a``, ``len_a``, ``len_b`` per comparison; ``code`` (comparison), ``acode``
    (index into ``names``), ``vcode`` (0 a, 1 b, else not decisive) and ``use`` per vote."""
    la, lb, q = len_a[code], len_b[code], p_a[code]
    ok = use & ((vcode == 0) | (vcode == 1)) & np.isfinite(la) & np.isfinite(lb) & (la != lb)
    ok &= np.isfinite(q)
    if not ok.any():
        return {"sd_chars": None, "annotators": {}, "annotators_left_out": 0}
    d = (la - lb)[ok]
    sd = float(np.std(d)) or 1.0
    x_len = np.tanh(d / sd)
    x_q = _logit(q[ok])
    says_a = (vcode[ok] == 0).astype(np.float64)
    a_longer = d > 0
    w = acode[ok]
    n_of = np.bincount(w, minlength=len(names))
    present = np.flatnonzero(n_of)
    top = sorted(present.tolist(), key=lambda i: (-n_of[i], names[i]))[:MAX_ANNOTATORS]
    order = np.argsort(w, kind="stable")  # one pass: each annotator's votes are a slice
    starts = np.concatenate([[0], np.cumsum(n_of)])
    out: dict[str, dict] = {}
    for i in sorted(top, key=lambda i: names[i]):
        m = order[starts[i] : starts[i + 1]]
        y = says_a[m]
        picked_longer = np.where(a_longer[m], y, 1.0 - y)
        row: dict = {
            "votes": int(m.size),
            "longer_win_rate": float(picked_longer.mean()),
            "length_coef": None,
            "length_coef_se": None,
            "lc_longer_win_rate": None,
        }
        if y.min() == y.max():  # always "a" (or "b"): the GLM has no finite fit
            row["note"] = f"always says {'a' if y[0] else 'b'}"
        elif m.size >= MIN_GLM_VOTES:
            x = np.column_stack([np.ones(m.size), x_q[m], x_len[m]])
            beta, se = fit_logistic(x, y)
            p0 = _sigmoid(x[:, :2] @ beta[:2])  # β_len set to 0
            row.update(
                length_coef=float(beta[2]),
                length_coef_se=float(se[2]),
                lc_longer_win_rate=float(np.where(a_longer[m], p0, 1.0 - p0).mean()),
            )
        out[names[i]] = row
    return {
        "sd_chars": sd,
        "annotators": out,
        "annotators_left_out": max(0, present.size - len(top)),
    }


def length_shift(len_chosen: np.ndarray, len_rejected: np.ndarray) -> dict:
    """The chosen − rejected length distribution of a set of pairs: count, share whose
    chosen is longer, median difference in characters, and a histogram of the normalised
    difference (len_c − len_r) / (len_c + len_r) over ``HIST_EDGES``."""
    lc, lr = np.asarray(len_chosen, np.float64), np.asarray(len_rejected, np.float64)
    ok = np.isfinite(lc) & np.isfinite(lr)
    lc, lr = lc[ok], lr[ok]
    if not lc.size:
        return {
            "pairs": 0,
            "chosen_longer_share": None,
            "median_diff_chars": None,
            "edges": list(HIST_EDGES),
            "counts": [0] * (len(HIST_EDGES) - 1),
        }
    norm = (lc - lr) / np.maximum(lc + lr, 1.0)
    counts, _ = np.histogram(norm, bins=np.array(HIST_EDGES))
    return {
        "pairs": int(lc.size),
        "chosen_longer_share": float(np.mean(lc > lr)),
        "median_diff_chars": float(np.median(lc - lr)),
        "edges": list(HIST_EDGES),
        "counts": counts.astype(int).tolist(),
    }


def balance_drops(
    chosen_longer: np.ndarray, weight: np.ndarray, band: Sequence[float]
) -> np.ndarray:
    """Indices of the pairs to drop (lowest weight first, ties by index) so that the
    share of ``chosen_longer`` pairs lies in ``band`` = (low, high): the fewest drops that
    reach it, all from the side in excess; none when only dropping every pair would."""
    longer = np.asarray(chosen_longer, dtype=bool)
    w = np.nan_to_num(np.asarray(weight, dtype=np.float64), nan=0.0)
    n, n_long = longer.size, int(longer.sum())
    low, high = float(band[0]), float(band[1])
    if not n:
        return np.zeros(0, dtype=np.int64)
    if n_long / n > high:  # (n_long − k) / (n − k) ≤ high
        k, side = math.ceil((n_long - high * n) / (1.0 - high) - 1e-9), True
    elif n_long / n < low:  # n_long / (n − k) ≥ low
        k, side = math.ceil(n - n_long / low - 1e-9), False
    else:
        return np.zeros(0, dtype=np.int64)
    if k >= n:  # only an empty dataset is inside the band: drop nothing (the caller says so)
        return np.zeros(0, dtype=np.int64)
    idx = np.flatnonzero(longer == side)
    order = idx[np.lexsort((idx, w[idx]))]
    return np.sort(order[: max(0, min(k, idx.size))])
