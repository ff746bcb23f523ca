"""GPM preference embeddings (arXiv 2410.02197; DESIGN.md §5): an annotator that sees
every pair of a prompt's candidates, and the detection of cyclic (intransitive) prompts.

**The head** (torch to train, numpy to score). Each response is embedded once into
R^{2k} from its frozen sentence embedding e(y) (and, with ``joint``, the prompt's e(x),
standing in for the paper's joint (x, y) encoding):
v = normalise(W_y e(y) + W_x e(x) + b) (``hidden`` > 0 puts one GELU layer in between).
The prompt sets non-negative block weights λ(x) = softmax(W_p e(x) + b_p) ∈ R^k, and

    s(i ≻ j) = ⟨R(x) v_i, v_j⟩,  R(x) = blockdiag(λ_1 J, …, λ_k J),  J = [[0, −1], [1, 0]]
             = Σ_l λ_l (v_i,2l v_j,2l+1 − v_i,2l+1 v_j,2l),      P(i ≻ j) = σ(s / τ).

R is skew-symmetric, so s(i ≻ j) = −s(j ≻ i); scoring computes both with the same
sequence of float operations, so the identity — and P(i ≻ j) + P(j ≻ i) = 1 — holds
*exactly*, not just up to rounding. |s| ≤ 1, so with τ = 0.1 P ∈ [σ(−10), σ(10)]. Three
unit vectors 120° apart in one block form a cycle (each beats the next: s = sin 120°),
which no Bradley–Terry score can: on a rock–paper–scissors set a BT head gets at most 2
of each prompt's 3 pairs right.

Training (:func:`train_gpm`): pairs (a, b) with a soft label p_a = P(a ≻ b) (the panel's
p̂), loss ``soft`` = binary cross-entropy of σ(s/τ) against p_a; loss ``margin`` = the
GPM loss with hard labels, −log σ((s_c − margin_scale·m)/τ) with s_c the score of the
chosen response (a when p_a > ½) and m ≥ 0 the pair's margin (the pipeline's margins are
logit units in [0, cap]; ``margin_scale`` = 0.1 maps them into s units); ties (p_a = ½)
keep the soft loss. Optional per-pair weights (confidence weights) scale the loss. Adam,
a few epochs, seeded; inputs are centred, optionally reduced to ``input_dims`` principal
components and scaled (the transform is part of the model). :func:`train_bt` trains a
Bradley–Terry head (r(x, y) an MLP, P(a ≻ b) = σ(r_a − r_b)) on the same inputs, for
comparison.

**As an annotator** (:func:`gpm_votes`, stage :func:`annotate_gpm`): each candidate is
embedded once, every pair of a prompt's K candidates is scored (K(K−1)/2 votes, canonical
order candidate_a < candidate_b) and written as VOTES rows: annotator ``gpm``, order
null, prob_a = P(a ≻ b), verdict ``tie`` when |P − ½| < ``tie_band`` else a / b. The stage
trains on the panel's COMPARISONS (p̂ from the counts, Jeffreys prior as in the margins)
and, with ``folds`` ≥ 2, cross-fits by prompt: a prompt's votes come from a head that did
not train on its comparisons (an in-sample head repeats the panel's labels back to the EM
and would be trusted far too much; the same reasoning as :mod:`pipeline.denoise.peer_review`).

**Choosing what the judges see** (:func:`select_uncertain_pairs`, active judging in two
rounds): round 1 judges a seed subset of each prompt's pairs; one head, trained in sample
on round 1's COMPARISONS (it only ranks, so cross-fitting buys nothing), scores every
canonical pair, and round 2 judges per prompt the ``per_prompt`` unjudged pairs with the
smallest |P − ½|; the pairs it is confident about are dropped ``first_signal``. Pairs
with an unembedded candidate cannot be ranked and are judged; with fewer than 2 labelled
comparisons there is no head and the pairs are taken in stable-hash order.
``bench/gpm_eval.py --active`` measures what this buys at an equal judge budget.

**Cycles** (:func:`find_cycles`): among a prompt's pairwise probabilities (a COMPARISONS
table's p_a, or the GPM votes' prob_a), an intransitive triple is x ≻ y, y ≻ z, z ≻ x
with each P > ½ + band (ties and missing pairs are no edge). Output: one CYCLES row per
triple, rotated so that candidate_1 is the smallest id. :func:`flag_cyclic_prompts` counts
the prompts with a triple (flag ``cyclic``, a ``plurality`` case: the candidates are not
ordered, so a single chosen / rejected label misstates the preference), and
:func:`flag_cyclic_pairs` adds the flag to those prompts' pairs.

The module holds the head and its math; :mod:`pipeline.gpm.train` trains it (and the BT
head), :mod:`pipeline.gpm.annotate` is the annotator stage, :mod:`pipeline.gpm.active`
the round-2 pair choice (both on :mod:`pipeline.gpm.scoring`), :mod:`pipeline.gpm.cycles`
finds and flags the cycles.

>>> v = np.array([[np.cos(t), np.sin(t)] for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)])
>>> lam = np.ones((3, 1))
>>> s = skew_scores(v, v[[1, 2, 0]], lam)  # s(0≻1), s(1≻2), s(2≻0)
>>> [round(float(x), 3) for x in s]
[0.866, 0.866, 0.866]
>>> bool(np.all(skew_scores(v[[1, 2, 0]], v, lam) == -s))
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.stage import Reason, as_matrix
from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate.gpm")

STAGE = "gpm"
STAGE_VERSION = 1
ANNOTATOR = "gpm"
FLAG_CYCLIC = "cyclic"  # prompt with an intransitive triple (a plurality case)
NO_EMBEDDING = Reason.NO_EMBEDDING.value  # drop: a candidate (or its prompt) has no embedding
MIN_STEPS = 16  # batches shrink on small inputs so that an epoch has at least this many steps
PCA_ROWS = 20_000  # rows used to fit the input reduction
ORIGINS = ("panel", "gpm")


class BTConfig(BaseModel):
    """A Bradley–Terry reward head on the same frozen embeddings (the baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(64, ge=0)  # 0: linear reward
    input_dims: int | None = Field(64, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    threads: int = Field(1, ge=1)


# ------------------------------------------------------------------------------ math


def skew_scores(v_i: np.ndarray, v_j: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """s(i ≻ j) = Σ_l λ_l (v_i,2l v_j,2l+1 − v_i,2l+1 v_j,2l), row by row (n × 2k, n × k).

    Swapping i and j negates every term exactly and the sum runs in the same order, so
    ``skew_scores(b, a, lam) == -skew_scores(a, b, lam)`` holds bit for bit.
    """
    v_i = np.asarray(v_i, dtype=np.float64)
    v_j = np.asarray(v_j, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    d = v_i[:, 0::2] * v_j[:, 1::2] - v_i[:, 1::2] * v_j[:, 0::2]
    s = lam[:, 0] * d[:, 0]
    for col in range(1, d.shape[1]):  # a fixed left-to-right order: exact antisymmetry
        s = s + lam[:, col] * d[:, col]
    return s


def sigmoid_pair(z: np.ndarray) -> np.ndarray:
    """σ(z) with σ(−z) = 1 − σ(z) exactly: σ(|z|) ∈ [½, 1] and 1 − σ(|z|) is exact there."""
    z = np.asarray(z, dtype=np.float64)
    q = 1.0 / (1.0 + np.exp(-np.abs(z)))
    return np.where(z >= 0, q, 1.0 - q)


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


# ------------------------------------------------------------------------------ inputs


def as_vector(
    x: Any, name: str, n: int, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise PrefcurateError(f"gpm: {name} has {arr.size} values for {n} pairs")
    if not np.all(np.isfinite(arr)):
        raise PrefcurateError(
            f"gpm: {name} holds NaN or infinite values; drop the pairs "
            f"without a label before training"
        )
    if (lo is not None and arr.min(initial=lo) < lo) or (
        hi is not None and arr.max(initial=hi) > hi
    ):
        raise PrefcurateError(f"gpm: {name} must lie in [{lo}, {hi}]")
    return arr


@dataclass(frozen=True)
class Standardizer:
    """x → ((x − mu) @ proj) / scale: centring, optional PCA, one overall scale."""

    mu: np.ndarray
    proj: np.ndarray | None
    scale: float

    @classmethod
    def fit(cls, x: np.ndarray, dims: int | None, seed: int) -> "Standardizer":
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= PCA_ROWS else x[rng.choice(len(x), PCA_ROWS, replace=False)]
        mu = sample.mean(axis=0).astype(np.float64)
        proj = None
        c = sample.astype(np.float64) - mu
        if dims is not None and dims < x.shape[1]:
            _, vecs = np.linalg.eigh(c.T @ c / max(len(c) - 1, 1))
            proj = np.ascontiguousarray(vecs[:, ::-1][:, :dims])
            c = c @ proj
        scale = float(c.std()) or 1.0
        return cls(mu, proj, scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64) - self.mu
        if self.proj is not None:
            y = y @ self.proj
        return y / self.scale

    @property
    def dims(self) -> int:
        return len(self.mu) if self.proj is None else self.proj.shape[1]


# ------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class GPMModel:
    """A trained GPM head; scoring is numpy float64 (see :func:`skew_scores`)."""

    resp: Standardizer
    prompt: Standardizer | None
    w_y: np.ndarray  # (h or 2k) × d_y
    b_y: np.ndarray
    w_x: np.ndarray | None  # (h or 2k) × d_x, when joint
    w_out: np.ndarray | None  # 2k × h, when hidden
    b_out: np.ndarray | None
    w_gate: np.ndarray | None  # k × d_x, when prompts are given
    b_gate: np.ndarray  # k
    tau: float
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def k(self) -> int:
        return len(self.b_gate)

    def _prompt(self, prompt_emb: np.ndarray | None, n: int) -> np.ndarray | None:
        if self.prompt is None:
            return None
        if prompt_emb is None:
            raise PrefcurateError(
                "gpm: this head was trained with prompt embeddings; pass "
                "prompt_emb (one row per response / pair)"
            )
        return self.prompt(as_matrix(prompt_emb, "prompt_emb", "gpm", rows=n))

    def embed(self, emb: np.ndarray, prompt_emb: np.ndarray | None = None) -> np.ndarray:
        """Unit preference embeddings v (n × 2k) of responses (rows aligned with prompts)."""
        e = as_matrix(emb, "emb", "gpm")
        x = self._prompt(prompt_emb, len(e))
        return self._embed_std(self.resp(e), x)

    def _embed_std(self, y: np.ndarray, x: np.ndarray | None) -> np.ndarray:
        pre = y @ self.w_y.T + self.b_y
        if self.w_x is not None and x is not None:
            pre = pre + x @ self.w_x.T
        if self.w_out is not None:
            pre = _gelu(pre) @ self.w_out.T + self.b_out
        norm = np.sqrt((pre * pre).sum(axis=1, keepdims=True))
        return pre / np.maximum(norm, 1e-12)

    def prompt_weights(self, prompt_emb: np.ndarray | None, n: int = 1) -> np.ndarray:
        """λ(x) (n × k), non-negative, summing to one."""
        x = self._prompt(prompt_emb, None if prompt_emb is None else len(prompt_emb))
        return self._gate_std(x, n)

    def _gate_std(self, x: np.ndarray | None, n: int) -> np.ndarray:
        if self.w_gate is None or x is None:
            logits = np.broadcast_to(self.b_gate, (n, self.k))
        else:
            logits = x @ self.w_gate.T + self.b_gate
        z = logits - logits.max(axis=1, keepdims=True)
        ez = np.exp(z)
        return ez / ez.sum(axis=1, keepdims=True)

    def logits(
        self, prompt_emb: np.ndarray | None, emb_i: np.ndarray, emb_j: np.ndarray
    ) -> np.ndarray:
        """s(i ≻ j) per row, in [−1, 1]; exactly antisymmetric in (i, j)."""
        ei = as_matrix(emb_i, "emb_i", "gpm")
        ej = as_matrix(emb_j, "emb_j", "gpm", rows=len(emb_i))
        x = self._prompt(prompt_emb, len(ei))
        return skew_scores(
            self._embed_std(self.resp(ei), x),
            self._embed_std(self.resp(ej), x),
            self._gate_std(x, len(ei)),
        )

    def score_pairs(
        self, prompt_emb: np.ndarray | None, emb_i: np.ndarray, emb_j: np.ndarray
    ) -> np.ndarray:
        """P(i ≻ j) = σ(s / τ) per row (float64); P(i ≻ j) + P(j ≻ i) = 1 exactly."""
        return sigmoid_pair(self.logits(prompt_emb, emb_i, emb_j) / self.tau)


@dataclass(frozen=True)
class BTModel:
    """A trained Bradley–Terry head: P(i ≻ j) = σ(r(x, i) − r(x, j))."""

    resp: Standardizer
    prompt: Standardizer | None
    w_y: np.ndarray
    b_y: np.ndarray
    w_x: np.ndarray | None
    w_out: np.ndarray  # 1 × h (or 1 × d when linear)
    hidden: bool
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def reward(self, prompt_emb: np.ndarray | None, emb: np.ndarray) -> np.ndarray:
        e = as_matrix(emb, "emb", "gpm")
        if self.prompt is not None and prompt_emb is None:
            raise PrefcurateError(
                "bt: this head was trained with prompt embeddings; pass prompt_emb"
            )
        y = self.resp(e)
        x = (
            None
            if self.prompt is None
            else self.prompt(as_matrix(prompt_emb, "prompt_emb", "gpm", rows=len(e)))
        )
        if not self.hidden:
            return (y @ self.w_out.T)[:, 0]
        pre = y @ self.w_y.T + self.b_y
        if self.w_x is not None and x is not None:
            pre = pre + x @ self.w_x.T
        return (_gelu(pre) @ self.w_out.T)[:, 0]

    def score_pairs(
        self, prompt_emb: np.ndarray | None, emb_i: np.ndarray, emb_j: np.ndarray
    ) -> np.ndarray:
        return sigmoid_pair(self.reward(prompt_emb, emb_i) - self.reward(prompt_emb, emb_j))
