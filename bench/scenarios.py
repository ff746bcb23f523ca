"""Scenario generators with known truth, and their Bayes-optimal ("oracle") posterior.

Every scenario is one generative model of a binary preference dataset; ``simulate(name, n,
noise, seed)`` draws a :class:`Sim` from it and ``oracle(sim)`` computes, per pair, the
exact posterior of the truth given everything the generator lets a method observe (the
votes with their annotator and call order, the file's label, the response lengths), from
the generator's own parameters, integrating the latent quality gap numerically. It is the
ceiling no method can pass on average (DESIGN.md §5, "Evaluating a denoiser honestly").

Common model (all scenarios)
----------------------------
Per pair i (two responses, at *positions* ``a`` and ``b``):

- qualities q_1, q_2 ~ N(0, 1); the latent gap g = |q_1 − q_2| ≥ 0 (density: half-normal
  with scale √2); the better response B is at position ``a`` with probability π_a
  (½, except ``imbalance``).
- the population's true vote share for B: σ(κ_pop·g), κ_pop such that the population
  agrees with the truth on 80% of the pairs on average (``POP_ACCURACY``).
- the file's label (the response it calls ``chosen``): right with probability
  acc_label(g) = (1 − h_ε)(1 − ε) + h_ε·σ(κ_ε g) (κ_ε calibrated so that its mean is
  1 − ε): h_ε = 0 is constant noise ε, h_ε = 1 instance-dependent noise (close pairs are
  coin flips, far pairs almost never wrong), mean ε either way.
- lengths: the two responses have lengths L_long > L_short (characters; log-normal around
  ~400); the longer one is B with probability ρ (½, except ``length_biased``: 0.6). The
  texts written for the product have exactly these lengths.
- votes: annotator j answers ``tie`` with probability τ_j·exp(−g / TIE_SCALE) (ties are
  likelier on close pairs; τ_j = 0 outside ``ties``), else, as a mixture, it copies the
  file's label (c_j), answers the longer response (b_j), the response shown first in this
  call (β_j; ``|ab`` calls show position ``a`` first, ``|ba`` calls ``b``), position ``a``
  whatever the order (p_j: class-dependent confusion, it "says a" more), or — with the
  remaining probability — answers honestly: right with probability
  ½ + s·[(1 − h_j)·|α_j − ½| + h_j·(σ(κ_j g) − ½)] (s = sign(α_j − ½); κ_j calibrated so
  the mean is α_j; α_j < ½ is an adversarial annotator, α_j = ½ a random one).

Positions are the product's canonical order: the pairs file is written with a prompt
nonce such that ingest's ``candidate_a`` (the smaller candidate id) is position ``a``
(:func:`pairs_rows`; ``run_default`` in ``bench/noise_matrix.py`` checks it), so "shown
first in the ``ab`` call" means what it means on the judge path.

The scenarios (``SCENARIOS``; noise = ε, the mean share of wrong file labels)
-----------------------------------------------------------------------------
1. ``dense``: today's panel (bench/noise_eval.py): judges of accuracy 0.85 / 0.78 / 0.70
   (the last answers by position with β = 0.3) and a spammer, each called in both orders
   on every pair (annotators ``judge-a|pairwise_v1|none|ab`` and ``…|ba``); h = 0.5.
2. ``sparse``: 10–50 annotators with accuracies U(0.55, 0.9), h = 0.3, 2–5 votes a pair
   (annotators drawn without replacement, with log-normal activity).
3. ``adversarial``: ``sparse`` with 10–30 annotators of which 1–2 have accuracy
   U(0.25, 0.4) and one is random (α = ½).
4. ``label_copier``: ``sparse`` with 2–4 annotators that copy the file's label with
   probability c ~ U(0.5, 0.8) (twice as active): Dawid–Skene's conditional independence
   given the truth is broken on purpose.
5. ``instance_dependent``: 15 annotators, 3 votes a pair, accuracies U(0.6, 0.9) with
   h = 0.9 (near chance on close pairs), and the file's label instance-dependent (h_ε = 1).
6. ``imbalance``: the better response is at position ``a`` in 85% of the pairs (π_a =
   0.85), and every annotator says ``a`` more often (p_j ~ U(0.1, 0.3)): a class prior and
   class-dependent confusion in the frame a full-confusion Dawid–Skene fits (the
   product's canonical order). A stress test of the estimator's class prior: in a real
   file the canonical order is a content hash, independent of quality, so its true class
   prior is ½ — ``imbalance_hidden`` is that case.
6b. ``imbalance_hidden``: the same in a presentation order the file does not record
   (``Sim.swap``: the product's canonical a is position b on a random half of the pairs):
   the truth is the first-shown response in 85% of the pairs and the annotators favour it,
   but the product cannot see which response that was.
7. ``length_biased``: the longer response is better in 60% of the pairs (ρ = 0.6); two
   annotators (twice as active) answer the longer response with probability
   b ~ U(0.6, 0.8) whatever its quality.
7b. ``length_confound``: length independent of quality (ρ = ½), and every annotator (15–30,
    accuracies U(0.65, 0.95), 3–5 votes a pair) answers the longer response with
    probability b ~ U(0.1, 0.4): the length bias LLM judges and raters share.
7c. ``length_judges``: the ``judges_only`` panel (no file label) with every judge but the
    spammer answering the longer response with probability b ~ U(0.2, 0.4) (ρ = ½).
8. ``judges_only``: no file label (the prompts path): the ``dense`` panel, with judge
   accuracies 1 − noise·(0.75, 1, 1.25) (so ``noise`` is the mean error of the three
   judges), oriented by votes alone.
9. ``single_annotator``: the file's label and exactly one other annotator (α = 0.8,
   h = 0.3) voting on every pair.
10. ``ties``: 15–30 annotators, 3–5 votes a pair, tie propensity τ_j ~ U(0.3, 0.6)
    (about 10% of votes are ties, most on close pairs).

Embeddings (for the product's CRM heads and the training check): per prompt x ~ N(0, I_d);
per response 0.5·x + q·u(x) + 0.3·z_len·v + 0.5·N(0, I_d), with u(x) a unit quality
direction depending on the prompt (as bench/noise_eval.py) and z_len the standardised log
length along a fixed direction v. The oracle does not see the embeddings.

>>> sim = simulate("sparse", 200, 0.3, seed=0)
>>> sim.n, sim.has_label, 0.1 < float(np.mean(sim.label_a != sim.better_a)) < 0.5
(200, True, True)
>>> post = oracle(sim)
>>> bool(np.all((post.p_a >= 0) & (post.p_a <= 1)))
True
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from pipeline import hashing

POP_ACCURACY = 0.8  # the population agrees with the truth on 80% of pairs on average
TIE_SCALE = 0.5  # P(tie) = τ·exp(−g / TIE_SCALE)
GRID_K = 160  # quadrature points over g
G_MAX = 7.0  # P(g > 7) ≈ 7e-7 for g = |N(0,1) − N(0,1)|
EMB_DIM = 32
EMB_NOISE = 0.5
LEN_LOG_MEAN, LEN_LOG_SD = 6.0, 0.45  # log characters of the longer response (≈ 400)
LEN_WEIGHT = 0.3  # length direction in the embeddings
TEMPLATE = "pairwise_v1|none"  # judge annotators: name|template|persona|order
LABEL_ANNOTATOR = "source"  # the file's label annotator on the pairs path (file stem)
ORDER_NONE, ORDER_AB, ORDER_BA = 0, 1, 2
CODE_A, CODE_B, CODE_TIE = 0, 1, 2


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


# ----------------------------------------------------------------------- g and calibration


def g_grid(k: int = GRID_K, g_max: float = G_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint quadrature over g ∈ (0, g_max): points and weights (summing to 1) of the
    half-normal density with scale √2 (the law of |N(0,1) − N(0,1)|)."""
    edges = np.linspace(0.0, g_max, k + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    dens = np.exp(-(mid**2) / 4.0)  # ∝ φ(g / √2)
    return mid, dens / dens.sum()


_GRID = g_grid()


def calibrate(acc: float, grid: tuple[np.ndarray, np.ndarray] = _GRID) -> float:
    """κ with E_g[σ(κ g)] = acc (acc in (½, 1)); 0 for acc ≤ ½ (bisection on the grid)."""
    if acc <= 0.5:
        return 0.0
    g, w = grid
    mean = lambda k: float(w @ sigmoid(k * g))  # noqa: E731
    lo, hi = 0.0, 1.0
    while mean(hi) < acc and hi < 1e6:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean(mid) < acc else (lo, mid)
    return 0.5 * (lo + hi)


def honest_accuracy(
    alpha: np.ndarray, h: np.ndarray, kappa: np.ndarray, g: np.ndarray
) -> np.ndarray:
    """½ + s·[(1 − h)|α − ½| + h(σ(κ g) − ½)], s = sign(α − ½), broadcast."""
    alpha, h, kappa = (np.asarray(x, dtype=np.float64) for x in (alpha, h, kappa))
    s = np.sign(alpha - 0.5)
    return 0.5 + s * ((1.0 - h) * np.abs(alpha - 0.5) + h * (sigmoid(kappa * g) - 0.5))


# ----------------------------------------------------------------------------- annotators


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator (module docstring: the vote model)."""

    name: str
    alpha: float = 0.5  # mean accuracy of the honest part (< ½ adversarial, ½ random)
    h: float = 0.0  # 0: fixed accuracy; 1: Bradley–Terry on the gap (near chance on close pairs)
    first: float = 0.0  # P(answer the response shown first in this call); needs orders
    prefer_a: float = 0.0  # P(answer position a): class-dependent confusion
    copy: float = 0.0  # P(copy the file's label)
    longer: float = 0.0  # P(answer the longer response)
    tie: float = 0.0  # tie propensity τ at g = 0
    orders: bool = False  # called in both orders: annotators name|ab and name|ba
    activity: float = 1.0  # relative share of the votes (sparse scenarios)

    @property
    def kappa(self) -> float:
        return calibrate(0.5 + abs(self.alpha - 0.5))


@dataclass
class Sim:
    """One simulated dataset (positions a / b; see the module docstring)."""

    scenario: str
    noise: float
    seed: int
    n: int
    ids: list[str]
    g: np.ndarray  # latent gap ≥ 0
    better_a: np.ndarray  # truth: position a is the better response
    has_label: bool
    label_a: np.ndarray  # the file's label (chosen) is position a (no label: all True)
    len_a: np.ndarray
    len_b: np.ndarray
    annotators: list[Annotator]
    v_item: np.ndarray  # per vote: pair index
    v_annot: np.ndarray  # per vote: annotator index
    v_order: np.ndarray  # per vote: ORDER_NONE / AB / BA
    v_code: np.ndarray  # per vote: CODE_A / B / TIE
    kappa_pop: float
    pi_a: float = 0.5
    rho: float = 0.5  # P(longer response is the better one)
    label_alpha: float = 1.0  # 1 − ε
    label_h: float = 0.0
    emb_a: np.ndarray | None = None  # (n, d) response embeddings
    emb_b: np.ndarray | None = None
    emb_prompt: np.ndarray | None = None
    world: dict[str, np.ndarray] = field(default_factory=dict)  # embedding directions
    # per pair: the product's canonical candidate_a is position b (hidden frame); None:
    # canonical order = positions
    swap: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def longer_a(self) -> np.ndarray:
        return self.len_a > self.len_b

    @property
    def label_right(self) -> np.ndarray:
        return self.label_a == self.better_a

    @property
    def share_better(self) -> np.ndarray:
        """The population's true vote share for the better response."""
        return sigmoid(self.kappa_pop * self.g)

    def share_a(self) -> np.ndarray:
        s = self.share_better
        return np.where(self.better_a, s, 1.0 - s)

    @property
    def swapped(self) -> np.ndarray:
        """Per pair: the product's canonical ``candidate_a`` is position ``b``."""
        return self.swap if self.swap is not None else np.zeros(self.n, dtype=bool)

    def vote_names(self) -> list[str]:
        """Per vote: the annotator name the product sees (``name|ab`` for ordered calls)."""
        base = [a.name for a in self.annotators]
        suffix = {ORDER_NONE: "", ORDER_AB: "|ab", ORDER_BA: "|ba"}
        return [base[j] + suffix[o] for j, o in zip(self.v_annot.tolist(), self.v_order.tolist())]

    def vote_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n_a, n_b, n_tie) per pair, the file's label not included."""
        out = [
            np.bincount(self.v_item[self.v_code == c], minlength=self.n).astype(float)
            for c in (CODE_A, CODE_B, CODE_TIE)
        ]
        return out[0], out[1], out[2]


# ------------------------------------------------------------------------- the vote model


def _annot_arrays(annotators: list[Annotator]) -> dict[str, np.ndarray]:
    keys = ("alpha", "h", "first", "prefer_a", "copy", "longer", "tie")
    out = {k: np.array([getattr(a, k) for a in annotators], dtype=np.float64) for k in keys}
    out["kappa"] = np.array([a.kappa for a in annotators], dtype=np.float64)
    mix = out["first"] + out["prefer_a"] + out["copy"] + out["longer"]
    if np.any(mix > 1.0 + 1e-12):
        raise ValueError("an annotator's mechanism probabilities sum above 1")
    out["honest"] = 1.0 - mix
    return out


def vote_probabilities(
    P: dict[str, np.ndarray],
    annot: np.ndarray,
    order: np.ndarray,
    label_a: np.ndarray,
    longer_a: np.ndarray,
    g: np.ndarray,
    better_a: bool | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(vote a), P(vote tie)) per vote given the truth ``better_a`` and gap ``g``.

    ``annot``, ``order``, ``label_a``, ``longer_a`` are per vote (V,); ``g`` is (V,) or
    (V, K) / (V, 1) with a grid axis; ``better_a`` a bool or (V,) array. One formula for
    sampling and for the oracle, so the oracle is exact for the generator.
    """
    col = (lambda x: x[:, None]) if np.ndim(g) == 2 else (lambda x: x)
    a = {k: col(v[annot]) for k, v in P.items()}
    acc = honest_accuracy(a["alpha"], a["h"], a["kappa"], g)
    ba = col(np.asarray(better_a, dtype=bool)) if np.ndim(better_a) else bool(better_a)
    honest_a = np.where(ba, acc, 1.0 - acc)
    first_a = col((order == ORDER_AB).astype(np.float64))
    first_any = col((order != ORDER_NONE).astype(np.float64))
    p_a = (
        a["copy"] * col(label_a.astype(np.float64))
        + a["longer"] * col(longer_a.astype(np.float64))
        + a["first"] * first_any * first_a
        + a["prefer_a"]
        + (a["honest"] + a["first"] * (1.0 - first_any)) * honest_a
    )
    p_tie = a["tie"] * np.exp(-g / TIE_SCALE)
    return (1.0 - p_tie) * p_a, p_tie * np.ones_like(p_a)


# ------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Design:
    """What a scenario builder returns: annotators, who votes on which pair, the label."""

    annotators: list[Annotator]
    assign: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    has_label: bool = True
    label_h: float = 0.0
    pi_a: float = 0.5
    rho: float = 0.5
    noise_of_label: bool = True  # False: ``noise`` parametrises the annotators instead
    hidden_frame: bool = False  # positions are a presentation order the product never sees


def _panel_assign(annotators: list[Annotator]):
    def assign(rng: np.random.Generator, n: int):
        items, annots, orders = [], [], []
        for j, a in enumerate(annotators):
            for o in (ORDER_AB, ORDER_BA) if a.orders else (ORDER_NONE,):
                items.append(np.arange(n))
                annots.append(np.full(n, j))
                orders.append(np.full(n, o))
        return (np.concatenate(items), np.concatenate(annots), np.concatenate(orders))

    return assign


def _sparse_assign(annotators: list[Annotator], kmin: int, kmax: int, sd: float = 0.5):
    """kmin..kmax distinct annotators a pair, drawn with log-normal activity × ``activity``
    (Gumbel top-k: sampling without replacement proportional to the weights)."""

    def assign(rng: np.random.Generator, n: int):
        w = len(annotators)
        act = np.exp(sd * rng.normal(size=w)) * np.array([a.activity for a in annotators])
        k = rng.integers(kmin, kmax + 1, size=n)
        keys = np.log(act)[None, :] + rng.gumbel(size=(n, w))
        order = np.argsort(-keys, axis=1)
        take = np.arange(w)[None, :] < k[:, None]
        item = np.repeat(np.arange(n), w).reshape(n, w)[take]
        ann = order[take]
        return item, ann, np.full(item.size, ORDER_NONE)

    return assign


def _honest(
    rng: np.random.Generator, w: int, lo: float, hi: float, h: float, prefix: str = "ann"
) -> list[Annotator]:
    return [Annotator(f"{prefix}-{j:02d}", alpha=float(rng.uniform(lo, hi)), h=h) for j in range(w)]


def _panel(accs: tuple[float, float, float], h: float = 0.5) -> list[Annotator]:
    return [
        Annotator(f"judge-a|{TEMPLATE}", accs[0], h, orders=True),
        Annotator(f"judge-b|{TEMPLATE}", accs[1], h, orders=True),
        Annotator(f"judge-c|{TEMPLATE}", accs[2], h, first=0.3, orders=True),
        Annotator(f"spammer|{TEMPLATE}", 0.5, 0.0, orders=True),
    ]


def dense(rng: np.random.Generator, noise: float) -> Design:
    """Today's panel: 3 LLM-like judges + a spammer, both orders, on every pair."""
    ann = _panel((0.85, 0.78, 0.70))
    return Design(ann, _panel_assign(ann))


def sparse(rng: np.random.Generator, noise: float) -> Design:
    """2–5 votes a pair from 10–50 annotators of accuracy U(0.55, 0.9)."""
    ann = _honest(rng, int(rng.integers(10, 51)), 0.55, 0.9, 0.3)
    return Design(ann, _sparse_assign(ann, 2, 5))


def adversarial(rng: np.random.Generator, noise: float) -> Design:
    """``sparse`` (10–30 annotators) with 1–2 adversarial (α < ½) and one random one."""
    ann = _honest(rng, int(rng.integers(10, 31)), 0.55, 0.9, 0.3)
    n_adv = int(rng.integers(1, 3))
    for j in range(n_adv):
        ann[j] = replace(ann[j], name=f"adv-{j}", alpha=float(rng.uniform(0.25, 0.4)))
    ann[n_adv] = replace(ann[n_adv], name="random", alpha=0.5, h=0.0)
    return Design(ann, _sparse_assign(ann, 2, 5))


def label_copier(rng: np.random.Generator, noise: float) -> Design:
    """``sparse`` with 2–4 annotators copying the file's label with c ~ U(0.5, 0.8)."""
    ann = _honest(rng, int(rng.integers(10, 51)), 0.55, 0.9, 0.3)
    for j in range(int(rng.integers(2, 5))):
        ann[j] = replace(
            ann[j], name=f"copier-{j}", copy=float(rng.uniform(0.5, 0.8)), activity=2.0
        )
    return Design(ann, _sparse_assign(ann, 2, 5))


def instance_dependent(rng: np.random.Generator, noise: float) -> Design:
    """Close pairs are mislabelled more and every annotator is near chance on them."""
    ann = _honest(rng, 15, 0.6, 0.9, 0.9)
    return Design(ann, _sparse_assign(ann, 3, 3), label_h=1.0)


def imbalance(rng: np.random.Generator, noise: float) -> Design:
    """85% of truths at position a; annotators say "a" more often."""
    ann = [
        replace(a, prefer_a=float(rng.uniform(0.1, 0.3)))
        for a in _honest(rng, int(rng.integers(15, 31)), 0.6, 0.9, 0.3)
    ]
    return Design(ann, _sparse_assign(ann, 3, 5), pi_a=0.85)


def imbalance_hidden(rng: np.random.Generator, noise: float) -> Design:
    """``imbalance`` in a presentation order the file does not record: the product's
    canonical order is independent of it (as for any real file, whose candidate ids are
    content hashes), so its class prior is ½ there and the annotators' "a" bias is an
    error they share."""
    return replace(imbalance(rng, noise), hidden_frame=True)


def length_biased(rng: np.random.Generator, noise: float) -> Design:
    """Two annotators answer the longer response with probability b ~ U(0.6, 0.8)."""
    ann = _honest(rng, int(rng.integers(15, 31)), 0.6, 0.9, 0.3)
    for j in range(2):
        ann[j] = replace(
            ann[j], name=f"lengthy-{j}", longer=float(rng.uniform(0.6, 0.8)), activity=2.0
        )
    return Design(ann, _sparse_assign(ann, 3, 5), rho=0.6)


def length_confound(rng: np.random.Generator, noise: float) -> Design:
    """Every annotator answers the longer response with probability b ~ U(0.1, 0.4);
    length says nothing about quality (ρ = ½)."""
    ann = [
        replace(a, longer=float(rng.uniform(0.1, 0.4)))
        for a in _honest(rng, int(rng.integers(15, 31)), 0.65, 0.95, 0.3)
    ]
    return Design(ann, _sparse_assign(ann, 3, 5))


def length_judges(rng: np.random.Generator, noise: float) -> Design:
    """No file label: the judges_only panel, every judge answering the longer response
    with probability b ~ U(0.2, 0.4) (ρ = ½)."""
    accs = tuple(float(np.clip(1.0 - noise * f, 0.5, 1.0)) for f in (0.75, 1.0, 1.25))
    ann = [
        replace(a, longer=float(rng.uniform(0.2, 0.4))) if a.alpha != 0.5 else a
        for a in _panel(accs)
    ]  # type: ignore[arg-type]
    return Design(ann, _panel_assign(ann), has_label=False, noise_of_label=False)


def judges_only(rng: np.random.Generator, noise: float) -> Design:
    """No file label: the dense panel with mean judge error = noise."""
    accs = tuple(float(np.clip(1.0 - noise * f, 0.5, 1.0)) for f in (0.75, 1.0, 1.25))
    ann = _panel(accs)  # type: ignore[arg-type]
    return Design(ann, _panel_assign(ann), has_label=False, noise_of_label=False)


def single_annotator(rng: np.random.Generator, noise: float) -> Design:
    """The file's label plus exactly one annotator (α = 0.8) on every pair."""
    ann = [Annotator("annotator-1", 0.8, 0.3)]
    return Design(ann, _panel_assign(ann))


def ties(rng: np.random.Generator, noise: float) -> Design:
    """Annotators vote tie, more often on close pairs."""
    ann = [
        replace(a, tie=float(rng.uniform(0.3, 0.6)))
        for a in _honest(rng, int(rng.integers(15, 31)), 0.6, 0.9, 0.3)
    ]
    return Design(ann, _sparse_assign(ann, 3, 5))


SCENARIOS: dict[str, Callable[[np.random.Generator, float], Design]] = {
    "dense": dense,
    "sparse": sparse,
    "adversarial": adversarial,
    "label_copier": label_copier,
    "instance_dependent": instance_dependent,
    "imbalance": imbalance,
    "imbalance_hidden": imbalance_hidden,
    "length_biased": length_biased,
    "length_confound": length_confound,
    "length_judges": length_judges,
    "judges_only": judges_only,
    "single_annotator": single_annotator,
    "ties": ties,
}


def _seed_seq(name: str, noise: float, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(name.encode()), int(round(noise * 1e4))])


def _world(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    v = rng.normal(size=d)
    return {
        "u0": rng.normal(size=d),
        "mix": rng.normal(size=(d, d)) / np.sqrt(d),
        "v_len": v / np.linalg.norm(v),
    }


def _lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    long_ = np.maximum(np.round(np.exp(LEN_LOG_MEAN + LEN_LOG_SD * rng.normal(size=n))), 60)
    short = np.maximum(np.round(long_ * rng.uniform(0.4, 0.95, size=n)), 40)
    short = np.minimum(short, long_ - 1)
    return long_.astype(np.int64), short.astype(np.int64)


def embed_responses(
    world: dict[str, np.ndarray],
    rng: np.random.Generator,
    q_a: np.ndarray,
    q_b: np.ndarray,
    len_a: np.ndarray,
    len_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt x ~ N(0, I); response 0.5 x + q u(x) + LEN_WEIGHT z_len v + noise."""
    n, d = q_a.size, world["u0"].size
    x = rng.normal(size=(n, d))
    u = world["u0"] + 0.7 * x @ world["mix"]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    z = lambda L: (np.log(L) - LEN_LOG_MEAN) / LEN_LOG_SD  # noqa: E731
    e = [
        0.5 * x
        + q[:, None] * u
        + LEN_WEIGHT * z(L)[:, None] * world["v_len"]
        + EMB_NOISE * rng.normal(size=(n, d))
        for q, L in ((q_a, len_a), (q_b, len_b))
    ]
    return e[0], e[1], x


def simulate(name: str, n: int, noise: float, seed: int = 0) -> Sim:
    """Draw one dataset of ``n`` pairs from scenario ``name`` (module docstring)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    rng = np.random.default_rng(_seed_seq(name, noise, seed))
    design = SCENARIOS[name](rng, noise)
    eps = noise if design.has_label and design.noise_of_label else 0.0
    label_alpha = 1.0 - eps if design.has_label else 1.0
    # latent qualities and positions
    q1, q2 = rng.normal(size=n), rng.normal(size=n)
    g = np.abs(q1 - q2)
    q_hi, q_lo = np.maximum(q1, q2), np.minimum(q1, q2)
    better_a = rng.random(n) < design.pi_a
    # the file's label
    acc_l = honest_accuracy(label_alpha, design.label_h, calibrate(label_alpha), g)
    right = rng.random(n) < acc_l
    # (no file label: label_a is a constant placeholder, never the truth)
    label_a = np.where(right, better_a, ~better_a) if design.has_label else np.ones(n, bool)
    # lengths: the longer response is the better one with probability rho
    long_, short = _lengths(rng, n)
    better_longer = rng.random(n) < design.rho
    longer_a = better_a == better_longer
    len_a, len_b = np.where(longer_a, long_, short), np.where(longer_a, short, long_)
    # votes
    P = _annot_arrays(design.annotators)
    item, annot, order = design.assign(rng, n)
    srt = np.lexsort((order, annot, item))
    item, annot, order = item[srt], annot[srt], order[srt]
    p_a, p_tie = vote_probabilities(
        P, annot, order, label_a[item], longer_a[item], g[item], better_a[item]
    )
    u = rng.random(item.size)
    code = np.where(u < p_tie, CODE_TIE, np.where(u < p_tie + p_a, CODE_A, CODE_B))
    # embeddings
    world = _world(np.random.default_rng(_seed_seq(name + "/world", 0.0, seed)), EMB_DIM)
    q_a, q_b = np.where(better_a, q_hi, q_lo), np.where(better_a, q_lo, q_hi)
    e_a, e_b, x = embed_responses(world, rng, q_a, q_b, len_a, len_b)
    swap = rng.random(n) < 0.5 if design.hidden_frame else None
    ids = [f"{name[:4]}{seed}-{i:06d}" for i in range(n)]
    return Sim(
        scenario=name,
        noise=noise,
        seed=seed,
        n=n,
        ids=ids,
        g=g,
        better_a=better_a,
        has_label=design.has_label,
        label_a=label_a,
        len_a=len_a,
        len_b=len_b,
        annotators=list(design.annotators),
        v_item=item.astype(np.int64),
        v_annot=annot.astype(np.int64),
        v_order=order.astype(np.int64),
        v_code=code.astype(np.int64),
        kappa_pop=calibrate(POP_ACCURACY),
        pi_a=design.pi_a,
        rho=design.rho,
        label_alpha=label_alpha,
        label_h=design.label_h,
        emb_a=e_a,
        emb_b=e_b,
        emb_prompt=x,
        world=world,
        swap=swap,
        params={
            "scenario": name,
            "noise": noise,
            "seed": seed,
            "pairs": n,
            "annotators": len(design.annotators),
            "votes": int(item.size),
            "pi_a": design.pi_a,
            "rho": design.rho,
            "label_h": design.label_h,
            "has_label": design.has_label,
            "hidden_frame": design.hidden_frame,
        },
    )


def fresh_clean_pairs(sim: Sim, n: int, seed: int = 12345) -> np.ndarray:
    """``e_better − e_worse`` of n fresh pairs from the same generator (same embedding
    world and length law), for held-out pair accuracy."""
    rng = np.random.default_rng(_seed_seq(sim.scenario + "/test", sim.noise, seed + sim.seed))
    q1, q2 = rng.normal(size=n), rng.normal(size=n)
    hi, lo = np.maximum(q1, q2), np.minimum(q1, q2)
    long_, short = _lengths(rng, n)
    better_longer = rng.random(n) < sim.rho
    e_hi, e_lo, _ = embed_responses(
        sim.world,
        rng,
        hi,
        lo,
        np.where(better_longer, long_, short),
        np.where(better_longer, short, long_),
    )
    return e_hi - e_lo


# --------------------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class Posterior:
    p_a: np.ndarray  # P(position a is better | everything observed)
    share_a: np.ndarray  # E[population share of a | everything observed]

    def label_right(self, sim: Sim) -> np.ndarray:
        """P(the file's label is right | everything observed)."""
        return np.where(sim.label_a, self.p_a, 1.0 - self.p_a)


def _vote_kinds(sim: Sim) -> tuple[np.ndarray, np.ndarray]:
    key = np.stack(
        [
            sim.v_annot,
            sim.v_order,
            sim.label_a[sim.v_item].astype(np.int64),
            sim.longer_a[sim.v_item].astype(np.int64),
            sim.v_code,
        ],
        axis=1,
    )
    kinds, inv = np.unique(key, axis=0, return_inverse=True)
    return kinds, inv.reshape(-1)


def oracle(sim: Sim, grid: tuple[np.ndarray, np.ndarray] | None = None) -> Posterior:
    """The exact Bayes posterior per pair from the generator's parameters, g integrated on
    a quadrature grid: P(B = a | votes, label, lengths) and E[share of a | the same]."""
    g, w = grid if grid is not None else _GRID
    n, K = sim.n, g.size
    P = _annot_arrays(sim.annotators)
    logw = np.log(w)[None, :]
    lp = {}
    for ba in (True, False):
        L = np.repeat(logw, n, axis=0)
        # prior on the position of the better response and on which one is longer
        L += np.log(sim.pi_a if ba else 1.0 - sim.pi_a)
        L += np.where(sim.longer_a == ba, np.log(sim.rho), np.log(1.0 - sim.rho))[:, None]
        if sim.has_label:
            acc = honest_accuracy(sim.label_alpha, sim.label_h, calibrate(sim.label_alpha), g)[
                None, :
            ]
            acc = np.clip(acc, 1e-12, 1 - 1e-12)
            L += np.where((sim.label_a == ba)[:, None], np.log(acc), np.log1p(-acc))
        if sim.v_item.size:
            # a vote's likelihood over the grid depends only on (annotator, order, label
            # side, longer side, verdict): compute each distinct kind once
            kinds, inv = _vote_kinds(sim)
            an, od, la, lo, cd = kinds.T
            p_a, p_t = vote_probabilities(
                P, an, od, la.astype(bool), lo.astype(bool), np.broadcast_to(g, (an.size, K)), ba
            )
            c = cd[:, None]
            p = np.where(c == CODE_A, p_a, np.where(c == CODE_B, 1.0 - p_t - p_a, p_t))
            lv = np.log(np.clip(p, 1e-300, None))
            S = sp.csr_matrix((np.ones(sim.v_item.size), (sim.v_item, inv)), shape=(n, an.size))
            L += S @ lv
        lp[ba] = L
    top = np.maximum(lp[True].max(axis=1), lp[False].max(axis=1))[:, None]
    ea, eb = np.exp(lp[True] - top), np.exp(lp[False] - top)
    za, zb = ea.sum(axis=1), eb.sum(axis=1)
    s = sigmoid(sim.kappa_pop * g)[None, :]
    share = ((ea * s).sum(axis=1) + (eb * (1.0 - s)).sum(axis=1)) / (za + zb)
    return Posterior(p_a=za / (za + zb), share_a=share)


# ------------------------------------------------------------ what the product is given

_FILLER = (
    "the answer explains each step clearly and gives an example so that the reader "
    "can check the result on their own "
)


def _text(tag: str, length: int) -> str:
    body = f"[{tag}] " + _FILLER * (length // len(_FILLER) + 2)
    return body[:length]


def pairs_rows(sim: Sim) -> list[dict[str, Any]]:
    """The scenario as TRL pairs rows with votes (``id``, ``prompt``, ``chosen``,
    ``rejected``, ``votes: [{annotator, preferred}]``), the file's label as chosen.

    Each prompt carries a nonce chosen so that ingest's canonical order (``candidate_a`` =
    the smaller candidate id) puts the response at position ``a`` first (position ``b``
    where ``sim.swapped``: a hidden frame); texts have the simulated lengths exactly.
    """
    if not sim.has_label:
        raise ValueError(
            f"scenario {sim.scenario} has no file label: build the VOTES table "
            f"with votes_table() instead"
        )
    names = sim.vote_names()
    by_item: list[list[tuple[str, int]]] = [[] for _ in range(sim.n)]
    for i, nm, c in zip(sim.v_item.tolist(), names, sim.v_code.tolist()):
        by_item[i].append((nm, c))
    rows = []
    swapped = sim.swapped
    for i, sid in enumerate(sim.ids):
        la = bool(sim.label_a[i])
        want = la != bool(swapped[i])  # chosen is the product's candidate_a
        t_a, t_b = _text(f"{sid} a", int(sim.len_a[i])), _text(f"{sid} b", int(sim.len_b[i]))
        chosen, rejected = (t_a, t_b) if la else (t_b, t_a)
        for nonce in range(10_000):
            prompt = f"Simulated prompt {sid} ({nonce}): explain the answer."
            pid = hashing.prompt_id([{"role": "user", "content": prompt}])
            c_id = hashing.candidate_id(pid, "given:chosen", 0, chosen)
            r_id = hashing.candidate_id(pid, "given:rejected", 0, rejected)
            if (c_id < r_id) == want:
                break
        pref = {
            CODE_A: "chosen" if la else "rejected",
            CODE_B: "rejected" if la else "chosen",
            CODE_TIE: "tie",
        }
        rows.append(
            {
                "id": sid,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "votes": [{"annotator": nm, "preferred": pref[c]} for nm, c in by_item[i]],
            }
        )
    return rows


def write_pairs_jsonl(sim: Sim, path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r in pairs_rows(sim):
            fh.write(json.dumps(r) + "\n")
    return path


def candidate_ids(sim: Sim) -> tuple[list[str], list[str]]:
    """Candidate ids of the canonical a and b in :func:`votes_table` (``<id>-a`` <
    ``<id>-b``): positions a and b, exchanged where ``sim.swapped``."""
    return [f"{s}-a" for s in sim.ids], [f"{s}-b" for s in sim.ids]


def canonical_codes(sim: Sim, item: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Verdict codes in the product's canonical frame (a ↔ b where the pair is swapped)."""
    sw = sim.swapped[item] & (code != CODE_TIE)
    return np.where(sw, CODE_A + CODE_B - code, code)


def votes_table(sim: Sim, include_label: bool = False):
    """The VOTES table (schemas/tables.py) the judge stage would write: annotators
    ``name|template|persona|order`` with ``order`` ab / ba, verdicts in the canonical
    (a, b) orientation; with ``include_label`` the file's label as annotator ``source``."""
    import pyarrow as pa

    from schemas.tables import VOTES

    ca, cb = candidate_ids(sim)  # canonical a / b (positions a / b unless swapped)
    names = sim.vote_names()
    items = sim.v_item.tolist()
    sw = sim.swapped
    orders = {ORDER_NONE: None, ORDER_AB: "ab", ORDER_BA: "ba"}
    verdict = {CODE_A: "a", CODE_B: "b", CODE_TIE: "tie"}
    rows_i = list(items)
    ann = list(names)
    order = [orders[o] for o in sim.v_order.tolist()]
    verd = [verdict[c] for c in canonical_codes(sim, sim.v_item, sim.v_code).tolist()]
    if include_label and sim.has_label:
        rows_i += list(range(sim.n))
        ann += [LABEL_ANNOTATOR] * sim.n
        order += [None] * sim.n
        verd += ["a" if x else "b" for x in (sim.label_a != sw).tolist()]
    ids = sim.ids
    cols = {
        "prompt_id": [f"prompt-{ids[i]}" for i in rows_i],
        "source_id": [ids[i] for i in rows_i],
        "candidate_a": [ca[i] for i in rows_i],
        "candidate_b": [cb[i] for i in rows_i],
        "annotator": ann,
        "order": order,
        "verdict": verd,
        "prob_a": [None] * len(rows_i),
        "raw_output": [None] * len(rows_i),
        "parse_error": [None] * len(rows_i),
    }
    return pa.Table.from_pydict(cols, schema=VOTES)
