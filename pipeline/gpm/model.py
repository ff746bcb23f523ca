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

>>> v = np.array([[np.cos(t), np.sin(t)] for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)])
>>> lam = np.ones((3, 1))
>>> s = skew_scores(v, v[[1, 2, 0]], lam)  # s(0≻1), s(1≻2), s(2≻0)
>>> [round(float(x), 3) for x in s]
[0.866, 0.866, 0.866]
>>> bool(np.all(skew_scores(v[[1, 2, 0]], v, lam) == -s))
True
>>> t = pa.table({"prompt_id": ["p"] * 3, "candidate_a": ["x", "x", "y"],
...               "candidate_b": ["y", "z", "z"], "p_a": [0.9, 0.2, 0.8]})
>>> find_cycles(t).select(["candidate_1", "candidate_2", "candidate_3"]).to_pylist()
[{'candidate_1': 'x', 'candidate_2': 'y', 'candidate_3': 'z'}]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.hashing import stable_hash_rows
from pipeline.stage import Reason, StageCounts, StageResult, as_matrix, dropped_table
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError
from schemas.tables import CYCLES, VOTES, check_table

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



def _as_vector(x: Any, name: str, n: int, lo: float | None = None,
               hi: float | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise PrefcurateError(f"gpm: {name} has {arr.size} values for {n} pairs")
    if not np.all(np.isfinite(arr)):
        raise PrefcurateError(f"gpm: {name} holds NaN or infinite values; drop the pairs "
                              f"without a label before training")
    if (lo is not None and arr.min(initial=lo) < lo) or \
            (hi is not None and arr.max(initial=hi) > hi):
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
            raise PrefcurateError("gpm: this head was trained with prompt embeddings; pass "
                                  "prompt_emb (one row per response / pair)")
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

    def logits(self, prompt_emb: np.ndarray | None, emb_i: np.ndarray,
               emb_j: np.ndarray) -> np.ndarray:
        """s(i ≻ j) per row, in [−1, 1]; exactly antisymmetric in (i, j)."""
        ei = as_matrix(emb_i, "emb_i", "gpm")
        ej = as_matrix(emb_j, "emb_j", "gpm", rows=len(emb_i))
        x = self._prompt(prompt_emb, len(ei))
        return skew_scores(self._embed_std(self.resp(ei), x), self._embed_std(self.resp(ej), x),
                           self._gate_std(x, len(ei)))

    def score_pairs(self, prompt_emb: np.ndarray | None, emb_i: np.ndarray,
                    emb_j: np.ndarray) -> np.ndarray:
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
            raise PrefcurateError("bt: this head was trained with prompt embeddings; pass "
                                  "prompt_emb")
        y = self.resp(e)
        x = None if self.prompt is None else self.prompt(
            as_matrix(prompt_emb, "prompt_emb", "gpm", rows=len(e)))
        if not self.hidden:
            return (y @ self.w_out.T)[:, 0]
        pre = y @ self.w_y.T + self.b_y
        if self.w_x is not None and x is not None:
            pre = pre + x @ self.w_x.T
        return (_gelu(pre) @ self.w_out.T)[:, 0]

    def score_pairs(self, prompt_emb: np.ndarray | None, emb_i: np.ndarray,
                    emb_j: np.ndarray) -> np.ndarray:
        return sigmoid_pair(self.reward(prompt_emb, emb_i) - self.reward(prompt_emb, emb_j))


# ------------------------------------------------------------------------------ training

def _prepare(prompt_emb: np.ndarray | None, emb_a: np.ndarray, emb_b: np.ndarray,
             p_a: np.ndarray, input_dims: int | None, seed: int
             ) -> tuple[Standardizer, Standardizer | None, np.ndarray, np.ndarray,
                        np.ndarray | None, np.ndarray]:
    a = as_matrix(emb_a, "emb_a", "gpm")
    b = as_matrix(emb_b, "emb_b", "gpm", rows=len(a))
    if a.shape[1] != b.shape[1]:
        raise PrefcurateError(f"gpm: emb_a {a.shape} and emb_b {b.shape} differ in width")
    if len(a) == 0:
        raise PrefcurateError("gpm: no pair to train on; the head needs at least one pair "
                              "with a label (p_a)")
    p = _as_vector(p_a, "p_a", len(a), 0.0, 1.0)
    resp = Standardizer.fit(np.concatenate([a, b]), input_dims, seed)
    prompt, x = None, None
    if prompt_emb is not None:
        xp = as_matrix(prompt_emb, "prompt_emb", "gpm", rows=len(a))
        prompt = Standardizer.fit(xp, input_dims, seed + 1)
        x = prompt(xp).astype(np.float32)
    return resp, prompt, resp(a).astype(np.float32), resp(b).astype(np.float32), x, p


def _batches(n: int, batch_size: int) -> int:
    return min(batch_size, max(16, math.ceil(n / MIN_STEPS)))


def _train_epochs(opt: Any, pair_loss: Any, weight: Any, n: int, batch_size: int,
                  epochs: int, seed: int) -> list[float]:
    """Mini-batch training shared by the GPM and BT heads: each epoch a seeded permutation,
    per batch the weight-averaged ``pair_loss(idx)``; returns the mean loss per epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            loss = (weight[idx] * pair_loss(idx)).sum() / weight[idx].sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(round(total / n, 5))
    return losses


def _train_accuracy(pred: np.ndarray, p: np.ndarray) -> float | None:
    """Share of the decided training pairs (p ≠ ½) the trained head orients like p."""
    decided = p != 0.5
    return float(((pred > 0.5) == (p > 0.5))[decided].mean()) if decided.any() else None


def _np(t: Any) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def train_gpm(prompt_emb: np.ndarray | None, emb_a: np.ndarray, emb_b: np.ndarray,
              p_a: np.ndarray, cfg: GPMConfig | None = None, *,
              margin: np.ndarray | None = None,
              weight: np.ndarray | None = None) -> GPMModel:
    """Train a GPM head on pairs (a, b) with soft labels p_a = P(a ≻ b).

    ``prompt_emb`` (n × d_x, or None: λ is one learnt vector), ``emb_a`` / ``emb_b``
    (n × d) frozen embeddings; ``margin`` (n, ≥ 0, in the chosen response's favour) is used
    by ``loss = margin``; ``weight`` (n, ≥ 0) scales each pair's loss.
    """
    import torch
    from torch import nn

    cfg = cfg or GPMConfig()
    t0 = time.perf_counter()
    resp, prompt, ya, yb, x, p = _prepare(prompt_emb, emb_a, emb_b, p_a, cfg.input_dims,
                                          cfg.seed)
    n = len(p)
    m = np.zeros(n) if margin is None else _as_vector(margin, "margin", n, 0.0)
    w = np.ones(n) if weight is None else _as_vector(weight, "weight", n, 0.0)
    two_k = 2 * cfg.k
    width = cfg.hidden or two_k
    joint = cfg.joint and x is not None
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            lin_y = nn.Linear(ya.shape[1], width)
            lin_x = nn.Linear(x.shape[1], width, bias=False) if joint else None
            out = nn.Linear(cfg.hidden, two_k) if cfg.hidden else None
            gate = nn.Linear(x.shape[1], cfg.k) if x is not None else None
            gate_bias = nn.Parameter(torch.zeros(cfg.k))
            if gate is not None:  # λ starts uniform
                nn.init.zeros_(gate.weight)
            mods = [mm for mm in (lin_y, lin_x, out, gate) if mm is not None]
            params = [q for mm in mods for q in mm.parameters()] + [gate_bias]
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            ty, tb = torch.from_numpy(ya), torch.from_numpy(yb)
            tx = torch.from_numpy(x) if x is not None else None
            tp = torch.from_numpy(p.astype(np.float32))
            tm = torch.from_numpy((cfg.margin_scale * m).astype(np.float32))
            tw = torch.from_numpy(w.astype(np.float32))
            hard = torch.from_numpy(p != 0.5) if cfg.loss == "margin" else None
            sign = torch.from_numpy(np.where(p > 0.5, 1.0, -1.0).astype(np.float32))

            def embed(y: Any, xx: Any) -> Any:
                pre = lin_y(y)
                if lin_x is not None:
                    pre = pre + lin_x(xx)
                if out is not None:
                    pre = out(nn.functional.gelu(pre))
                return nn.functional.normalize(pre, dim=1, eps=1e-12)

            def scores(idx: Any) -> Any:
                xx = tx[idx] if tx is not None else None
                vi, vj = embed(ty[idx], xx), embed(tb[idx], xx)
                g = gate(xx) + gate_bias if gate is not None else \
                    gate_bias.expand(len(idx), cfg.k)
                lam = torch.softmax(g, dim=1)
                d = vi[:, 0::2] * vj[:, 1::2] - vi[:, 1::2] * vj[:, 0::2]
                return (lam * d).sum(1)

            softplus = nn.functional.softplus

            def pair_loss(idx: Any) -> Any:
                z = scores(idx) / cfg.tau
                pp = tp[idx]
                loss = pp * softplus(-z) + (1 - pp) * softplus(z)
                if hard is not None:
                    zc = sign[idx] * z - tm[idx] / cfg.tau
                    loss = torch.where(hard[idx], softplus(-zc), loss)
                return loss

            bs = _batches(n, cfg.batch_size)
            losses = _train_epochs(opt, pair_loss, tw, n, bs, cfg.epochs, cfg.seed)
    finally:
        torch.set_num_threads(prev)
    model = GPMModel(
        resp=resp, prompt=prompt, w_y=_np(lin_y.weight), b_y=_np(lin_y.bias),
        w_x=_np(lin_x.weight) if lin_x is not None else None,
        w_out=_np(out.weight) if out is not None else None,
        b_out=_np(out.bias) if out is not None else None,
        w_gate=_np(gate.weight) if gate is not None else None,
        b_gate=_np(gate_bias) + (_np(gate.bias) if gate is not None else 0.0),
        tau=cfg.tau, info={})
    acc = _train_accuracy(model.score_pairs(prompt_emb, emb_a, emb_b), p)
    model.info.update(pairs=n, k=cfg.k, loss=cfg.loss, epochs=cfg.epochs, batch_size=bs,
                      loss_by_epoch=losses, train_accuracy=acc,
                      seconds=round(time.perf_counter() - t0, 3))
    return model


def train_bt(prompt_emb: np.ndarray | None, emb_a: np.ndarray, emb_b: np.ndarray,
             p_a: np.ndarray, cfg: BTConfig | None = None, *,
             weight: np.ndarray | None = None) -> BTModel:
    """Train a Bradley–Terry head (BCE of σ(r_a − r_b) against p_a) on the same inputs."""
    import torch
    from torch import nn

    cfg = cfg or BTConfig()
    t0 = time.perf_counter()
    resp, prompt, ya, yb, x, p = _prepare(prompt_emb, emb_a, emb_b, p_a, cfg.input_dims,
                                          cfg.seed)
    n = len(p)
    w = np.ones(n) if weight is None else _as_vector(weight, "weight", n, 0.0)
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.hidden:
                lin_y = nn.Linear(ya.shape[1], cfg.hidden)
                lin_x = nn.Linear(x.shape[1], cfg.hidden, bias=False) if x is not None \
                    else None
                out = nn.Linear(cfg.hidden, 1, bias=False)
                mods = [mm for mm in (lin_y, lin_x, out) if mm is not None]
            else:  # linear: the prompt cancels in r_a − r_b
                lin_y, lin_x = None, None
                out = nn.Linear(ya.shape[1], 1, bias=False)
                mods = [out]
            opt = torch.optim.AdamW([q for mm in mods for q in mm.parameters()], lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
            ty, tb = torch.from_numpy(ya), torch.from_numpy(yb)
            tx = torch.from_numpy(x) if x is not None else None
            tp = torch.from_numpy(p.astype(np.float32))
            tw = torch.from_numpy(w.astype(np.float32))

            def reward(y: Any, xx: Any) -> Any:
                if lin_y is None:
                    return out(y).squeeze(-1)
                pre = lin_y(y)
                if lin_x is not None:
                    pre = pre + lin_x(xx)
                return out(nn.functional.gelu(pre)).squeeze(-1)

            softplus = nn.functional.softplus

            def pair_loss(idx: Any) -> Any:
                xx = tx[idx] if tx is not None else None
                z = reward(ty[idx], xx) - reward(tb[idx], xx)
                pp = tp[idx]
                return pp * softplus(-z) + (1 - pp) * softplus(z)

            bs = _batches(n, cfg.batch_size)
            losses = _train_epochs(opt, pair_loss, tw, n, bs, cfg.epochs, cfg.seed)
    finally:
        torch.set_num_threads(prev)
    if lin_y is None:
        model = BTModel(resp=resp, prompt=prompt, w_y=np.zeros((0, 0)), b_y=np.zeros(0),
                        w_x=None, w_out=_np(out.weight), hidden=False, info={})
    else:
        model = BTModel(resp=resp, prompt=prompt, w_y=_np(lin_y.weight), b_y=_np(lin_y.bias),
                        w_x=_np(lin_x.weight) if lin_x is not None else None,
                        w_out=_np(out.weight), hidden=True, info={})
    acc = _train_accuracy(model.score_pairs(prompt_emb, emb_a, emb_b), p)
    model.info.update(pairs=n, epochs=cfg.epochs, batch_size=bs, loss_by_epoch=losses,
                      train_accuracy=acc, seconds=round(time.perf_counter() - t0, 3))
    return model


# ------------------------------------------------------------------------------ annotator

def _lookup(table: pa.Table, id_column: str) -> tuple[dict[str, int], np.ndarray]:
    """(id → row, float32 matrix) of an embedding table ``(id_column, embedding)``."""
    from pipeline.embeddings import embeddings_matrix

    ids, mat = embeddings_matrix(table, id_column, stage="gpm")
    return {c: i for i, c in enumerate(ids)}, mat.astype(np.float32, copy=False)


def _score_groups(model: GPMModel, cand: pl.DataFrame, c_mat: np.ndarray,
                  p_mat: np.ndarray | None) -> pl.DataFrame:
    """All canonical pairs (a < b) within each (source_id, prompt_id) of ``cand``.

    ``cand`` holds ``source_id, prompt_id, candidate_id, _c`` (row of ``c_mat``) and
    ``_p`` (row of ``p_mat``). Each candidate is embedded once; pairs are scored from the
    stored embeddings.
    """
    cand = cand.with_row_index("_i")
    x = None
    if model.prompt is not None:
        x = model.prompt(p_mat[cand["_p"].to_numpy()])
    v = model._embed_std(model.resp(c_mat[cand["_c"].to_numpy()]), x)
    lam = model._gate_std(x, cand.height)
    keys = ["source_id", "prompt_id"]
    left = cand.select(*keys, pl.col("candidate_id").alias("candidate_a"),
                       pl.col("_i").alias("_ia"))
    right = cand.select(*keys, pl.col("candidate_id").alias("candidate_b"),
                        pl.col("_i").alias("_ib"))
    pairs = left.join(right, on=keys, how="inner", nulls_equal=True) \
        .filter(pl.col("candidate_a") < pl.col("candidate_b"))
    ia, ib = pairs["_ia"].to_numpy(), pairs["_ib"].to_numpy()
    s = skew_scores(v[ia], v[ib], lam[ia])
    return pairs.with_columns(s=pl.Series(s, dtype=pl.Float64),
                              prob_a=pl.Series(sigmoid_pair(s / model.tau), dtype=pl.Float64))


def _candidate_frame(candidates: pa.Table) -> pl.DataFrame:
    """``source_id, prompt_id, candidate_id`` of CANDIDATES, each candidate once, in input
    order (source_id null when the table has none)."""
    for col in ("prompt_id", "candidate_id"):
        if col not in candidates.schema.names:
            raise PrefcurateError(f"gpm: candidates table needs column '{col}'")
    df = pl.from_arrow(candidates.select(
        [c for c in ("source_id", "prompt_id", "candidate_id") if c in candidates.schema.names]))
    if "source_id" not in df.columns:
        df = df.with_columns(source_id=pl.lit(None, pl.Utf8))
    return df.select("source_id", "prompt_id", "candidate_id").unique(maintain_order=True)


def _usable(candidates: pa.Table, c_idx: dict[str, int], p_idx: dict[str, int] | None
            ) -> tuple[pl.DataFrame, list[dict]]:
    """Candidates that can be scored (with ``_c`` / ``_p`` rows) and the drop rows."""
    df = _candidate_frame(candidates).with_columns(
        _c=pl.col("candidate_id").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _p=(pl.col("prompt_id").replace_strict(p_idx, default=None, return_dtype=pl.Int64)
            if p_idx is not None else pl.lit(0, pl.Int64)))
    missing = df.filter(pl.col("_c").is_null() | pl.col("_p").is_null())
    drops = [{"source_id": r["source_id"], "row_id": r["candidate_id"], "reason": NO_EMBEDDING,
              "detail": "no candidate embedding" if r["_c"] is None else
              "no prompt embedding"} for r in missing.iter_rows(named=True)]
    ok = df.filter(pl.col("_c").is_not_null() & pl.col("_p").is_not_null())
    size = ok.group_by(["source_id", "prompt_id"]).agg(n=pl.len())
    ok = ok.join(size, on=["source_id", "prompt_id"], how="left", nulls_equal=True)
    single = ok.filter(pl.col("n") < 2)
    drops += [{"source_id": r["source_id"], "row_id": r["candidate_id"],
               "reason": Reason.SINGLE_CANDIDATE, "detail": "no other candidate to compare"}
              for r in single.iter_rows(named=True)]
    return ok.filter(pl.col("n") >= 2).drop("n"), drops


def gpm_votes(model: GPMModel, candidates: pa.Table, candidate_embeddings: pa.Table,
              prompt_embeddings: pa.Table | None = None, *, tie_band: float = 0.05,
              annotator: str = ANNOTATOR) -> pa.Table:
    """VOTES for every pair of each prompt's candidates, scored by ``model``.

    Input: candidates (``prompt_id``, ``candidate_id``, optionally ``source_id``), the
    embed stage's ``candidate_embeddings`` (``candidate_id``, ``embedding``) and
    ``prompt_embeddings`` (``prompt_id``, ``embedding``; needed when the head was trained
    with prompts). Output: VOTES, one row per canonical pair (candidate_a < candidate_b):
    annotator ``gpm``, order null, prob_a = P(a ≻ b), verdict a / b, or tie when
    |prob_a − ½| < ``tie_band``; raw_output ``s=<score>``. Candidates without an
    embedding, and prompts left with a single candidate, get no vote.
    """
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = (None, None)
    if model.prompt is not None:
        if prompt_embeddings is None:
            raise PrefcurateError("gpm: the head was trained with prompt embeddings; pass "
                                  "prompt_embeddings to gpm_votes")
        p_idx, p_mat = _lookup(prompt_embeddings, "prompt_id")
    ok, _ = _usable(candidates, c_idx, p_idx)
    if not ok.height:
        return VOTES.empty_table()
    scored = _score_groups(model, ok, c_mat, p_mat)
    return _votes_table(scored, tie_band, annotator)


def _votes_table(scored: pl.DataFrame, tie_band: float, annotator: str) -> pa.Table:
    p = pl.col("prob_a")
    out = scored.select(
        pl.col("prompt_id"), pl.col("source_id").fill_null(""),
        pl.col("candidate_a"), pl.col("candidate_b"),
        annotator=pl.lit(annotator), order=pl.lit(None, pl.Utf8),
        verdict=pl.when((p - 0.5).abs() < tie_band).then(pl.lit("tie"))
        .when(p > 0.5).then(pl.lit("a")).otherwise(pl.lit("b")),
        prob_a=p,
        raw_output=pl.format("s={}", pl.col("s").round(6)),
        parse_error=pl.lit(None, pl.Utf8))
    t = out.to_arrow()
    return check_table(pa.Table.from_arrays([t.column(c).cast(f.type) for c, f in
                                             zip(VOTES.names, VOTES)], schema=VOTES),
                       VOTES, "votes")


def comparisons_p_hat(comparisons: pa.Table, prior: float = 0.5) -> np.ndarray:
    """P̂(a ≻ b) per comparison from its counts, Jeffreys-smoothed as in the margins
    stage: (n_a + ½·n_tie + a) / (S + 2a); NaN without a valid vote."""
    n_a = np.asarray(comparisons.column("n_a").to_pylist(), dtype=np.float64)
    n_b = np.asarray(comparisons.column("n_b").to_pylist(), dtype=np.float64)
    n_t = np.asarray(comparisons.column("n_tie").to_pylist(), dtype=np.float64)
    s = n_a + n_b + n_t
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (n_a + 0.5 * n_t + prior) / (s + 2 * prior)
    return np.where(s > 0, p, np.nan)


def _training_pairs(comparisons: pa.Table, c_idx: dict[str, int],
                    p_idx: dict[str, int] | None, prior: float) -> pl.DataFrame:
    """Training pairs: the comparisons with a valid vote whose candidates (and prompt, when
    ``p_idx`` is given) are embedded; columns ``source_id, prompt_id, candidate_a,
    candidate_b``, the soft label ``p`` (:func:`comparisons_p_hat`) and the rows ``_a``,
    ``_b`` (of the candidate matrix) and ``_p`` (of the prompt matrix; 0 without one)."""
    comp = pl.from_arrow(comparisons.select(["source_id", "prompt_id", "candidate_a",
                                             "candidate_b"])) if comparisons.num_rows else \
        pl.DataFrame(schema={c: pl.Utf8 for c in ("source_id", "prompt_id", "candidate_a",
                                                  "candidate_b")})
    p_hat = comparisons_p_hat(comparisons, prior) if comparisons.num_rows else np.zeros(0)
    return comp.with_columns(
        p=pl.Series(p_hat, dtype=pl.Float64),
        _a=pl.col("candidate_a").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _b=pl.col("candidate_b").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _p=(pl.col("prompt_id").replace_strict(p_idx, default=None, return_dtype=pl.Int64)
            if p_idx is not None else pl.lit(0, pl.Int64)),
    ).filter(pl.col("p").is_not_nan() & pl.col("_a").is_not_null() & pl.col("_b").is_not_null()
             & pl.col("_p").is_not_null())


def _fit(train: pl.DataFrame, c_mat: np.ndarray, p_mat: np.ndarray | None,
         cfg: GPMConfig) -> GPMModel:
    """:func:`train_gpm` on :func:`_training_pairs` rows (without prompts when ``p_mat`` is
    None)."""
    x = p_mat[train["_p"].to_numpy()] if p_mat is not None else None
    return train_gpm(x, c_mat[train["_a"].to_numpy()], c_mat[train["_b"].to_numpy()],
                     train["p"].to_numpy(), cfg)


def annotate_gpm(comparisons: pa.Table, candidates: pa.Table, candidate_embeddings: pa.Table,
                 prompt_embeddings: pa.Table, cfg: GPMConfig) -> StageResult:
    """Stage: train GPM heads on the panel's comparisons, vote on every candidate pair,
    find cyclic prompts (from the panel and from the GPM).

    Inputs: COMPARISONS (the panel's aggregation), CANDIDATES, the embed stage's
    ``candidate_embeddings`` and ``prompt_embeddings``. Outputs: ``votes`` (VOTES,
    annotator ``cfg.annotator``; add them to the judges' votes and aggregate again) and
    ``cycles`` (CYCLES, origins ``panel`` and ``gpm``). Row unit: one candidate; kept: the
    candidates that were scored; dropped: ``no_embedding``, ``single_candidate``.
    ``info``: training (pairs, folds, train / out-of-fold accuracy against the panel),
    vote counts, and ``cyclic`` (:func:`flag_cyclic_prompts` counts).
    """
    t0 = time.perf_counter()
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = _lookup(prompt_embeddings, "prompt_id")
    ok, drops = _usable(candidates, c_idx, p_idx)
    counts = StageCounts(rows_in=ok.height + len(drops), kept=ok.height,
                         dropped=dict(_count(d["reason"] for d in drops)))
    panel_cycles = find_cycles(comparisons, band=cfg.cycle_band, p_column="p_a",
                               origin="panel")
    info: dict[str, Any] = {"annotator": cfg.annotator, "folds": cfg.folds}
    comp = _training_pairs(comparisons, c_idx, p_idx, cfg.prior)
    info["training_pairs"] = comp.height
    if comp.height == 0 or ok.height == 0:
        info.update(votes=0, skipped="no comparison with a valid vote between embedded "
                    "candidates" if comp.height == 0 else "no prompt with two embedded "
                    "candidates", cyclic=flag_cyclic_prompts(panel_cycles).counts,
                    seconds=round(time.perf_counter() - t0, 3))
        return StageResult(STAGE, {"votes": VOTES.empty_table(), "cycles": panel_cycles},
                           counts, dropped_table(STAGE, drops), info=info)
    # cross-fitting by prompt: prompts dealt into folds by a seeded permutation
    prompts = ok.select("source_id", "prompt_id").unique(maintain_order=True)
    folds = max(1, min(cfg.folds, prompts.height))
    rng = np.random.default_rng(cfg.seed)
    prompts = prompts.with_columns(_fold=pl.Series(rng.permutation(prompts.height) % folds,
                                                   dtype=pl.Int64))
    ok = ok.join(prompts, on=["source_id", "prompt_id"], how="left", nulls_equal=True)
    comp = comp.join(prompts, on=["source_id", "prompt_id"], how="left", nulls_equal=True) \
        .with_columns(pl.col("_fold").fill_null(-1))
    scored_parts, fold_info = [], []
    for f in range(folds):
        train = comp.filter(pl.col("_fold") != f) if folds > 1 else comp
        target = ok.filter(pl.col("_fold") == f) if folds > 1 else ok
        if not target.height:
            continue
        if not train.height:  # nothing to learn from outside this fold: train on it all
            train = comp
        model = _fit(train, c_mat, p_mat, cfg)
        scored = _score_groups(model, target.drop("_fold"), c_mat, p_mat)
        scored_parts.append(scored)
        fold_info.append({k: model.info[k] for k in ("pairs", "train_accuracy", "seconds")})
    scored = pl.concat(scored_parts) if scored_parts else None
    votes = _votes_table(scored, cfg.tie_band, cfg.annotator) if scored is not None else \
        VOTES.empty_table()
    # agreement with the panel where both exist (out of fold when folds >= 2)
    agree = None
    if scored is not None:
        j = scored.join(comp.select("source_id", "prompt_id", "candidate_a", "candidate_b", "p"),
                        on=["source_id", "prompt_id", "candidate_a", "candidate_b"],
                        nulls_equal=True).filter(pl.col("p") != 0.5)
        if j.height:
            agree = float(((j["prob_a"] > 0.5) == (j["p"] > 0.5)).mean())
    gpm_cycles = find_cycles(votes, band=cfg.cycle_band, p_column="prob_a", origin="gpm")
    cycles = pa.concat_tables([panel_cycles, gpm_cycles])
    verdicts = dict(_count(votes.column("verdict").to_pylist()))
    info.update(folds=folds, heads=fold_info, votes=votes.num_rows, verdicts=verdicts,
                agreement_with_panel=agree, cyclic=flag_cyclic_prompts(cycles).counts,
                seconds=round(time.perf_counter() - t0, 3))
    log.info("gpm: %d votes from %d head(s), %d cyclic prompt(s) (panel %d, gpm %d)",
             votes.num_rows, len(fold_info), info["cyclic"]["prompts"],
             info["cyclic"]["prompts_panel"], info["cyclic"]["prompts_gpm"])
    return StageResult(STAGE, {"votes": votes, "cycles": cycles}, counts,
                       dropped_table(STAGE, drops), info=info)


def select_uncertain_pairs(comparisons: pa.Table, candidates: pa.Table,
                           candidate_embeddings: pa.Table, prompt_embeddings: pa.Table | None,
                           cfg: GPMConfig, per_prompt: int,
                           ) -> tuple[list[tuple[str, str, str, str]], list[dict], dict]:
    """Round 2 of active judging: per prompt, the unjudged pairs the GPM is least sure of.

    Inputs: round 1's COMPARISONS (the pairs already judged, aggregated), CANDIDATES
    (``prompt_id``, ``candidate_id``, optionally ``source_id``), the embed stage's
    ``candidate_embeddings`` and ``prompt_embeddings`` (None: a head without prompts). One
    head is trained, in sample (it only ranks), on the comparisons with a non-null ``p_a``
    (label p̂ from the counts, as :func:`annotate_gpm`); it scores every canonical pair
    (candidate_a < candidate_b) of each (prompt_id, source_id) group of ``candidates`` —
    the grouping of :func:`pipeline.annotate.judging.select_pairs`. Pairs present in
    ``comparisons`` are not returned and not dropped (they are judged already).

    Returns (pairs, dropped rows, info), like ``select_pairs``. Pairs: (prompt_id,
    source_id, a, b) to judge — per group the ``per_prompt`` unjudged pairs with the
    smallest |P(a ≻ b) − ½| (ties by :func:`pipeline.hashing.stable_hash` of (prompt_id,
    a, b)), plus every unjudged pair with a candidate (or prompt) that has no embedding:
    the head cannot rank it, so it is judged, on top of ``per_prompt``, and counted in
    ``info["unscored_pairs"]``. Dropped: every other unjudged pair, reason
    ``first_signal``, row_id ``a|b``. With fewer than 2 comparisons to train on (a p_a,
    both candidates embedded) there is no head: ``info["fallback"]`` says so and the
    ``per_prompt`` pairs are taken in stable-hash order, the rest dropped ``over_budget``
    (as ``select_pairs`` does beyond its cap). Every unjudged pair is returned or dropped.
    ``info``: pairs (canonical pairs of the groups), already_judged, unjudged,
    pairs_scored, selected, skipped, unscored_candidates, unscored_pairs, training
    (pairs, final loss, accuracy, seconds), mean |P − ½| of the selected and skipped
    pairs, fallback, prompts_with_single_candidate, seconds.

    >>> from schemas.tables import COMPARISONS
    >>> c = pa.table({"prompt_id": ["p"] * 3, "source_id": ["s"] * 3,
    ...               "candidate_id": ["x", "y", "z"]})
    >>> e = pa.table({"candidate_id": ["x", "y", "z"],
    ...               "embedding": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]})
    >>> pairs, drops, info = select_uncertain_pairs(COMPARISONS.empty_table(), c, e, None,
    ...                                             GPMConfig(), per_prompt=1)
    >>> len(pairs), [str(d["reason"]) for d in drops], info["fallback"] is not None
    (1, ['over_budget', 'over_budget'], True)
    """
    if per_prompt < 0:
        raise PrefcurateError(f"gpm: per_prompt must be >= 0 (got {per_prompt}): the number "
                              f"of unjudged pairs to judge per prompt")
    t0 = time.perf_counter()
    keys = ["source_id", "prompt_id"]
    pair_key = [*keys, "candidate_a", "candidate_b"]
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = _lookup(prompt_embeddings, "prompt_id") if prompt_embeddings is not None \
        else (None, None)
    cand = _candidate_frame(candidates)
    ok, missing = _usable(candidates, c_idx, p_idx)
    cand = cand.join(ok.select(*keys, "candidate_id", _ok=pl.lit(True)),
                     on=[*keys, "candidate_id"], how="left", nulls_equal=True)
    groups = cand.select(keys).unique(maintain_order=True).with_row_index("_g")
    size = cand.group_by(keys).agg(n=pl.len())
    # every canonical pair of each group, with its group's position and rankability
    left = cand.select(*keys, pl.col("candidate_id").alias("candidate_a"),
                       pl.col("_ok").fill_null(False).alias("_oa"))
    right = cand.select(*keys, pl.col("candidate_id").alias("candidate_b"),
                        pl.col("_ok").fill_null(False).alias("_ob"))
    pairs = left.join(right, on=keys, nulls_equal=True) \
        .filter(pl.col("candidate_a") < pl.col("candidate_b")) \
        .join(groups, on=keys, how="left", nulls_equal=True) \
        .with_columns(_rank=pl.col("_oa") & pl.col("_ob")).drop("_oa", "_ob")
    # already judged: the comparisons' pairs (either orientation)
    if comparisons.num_rows:
        judged = pl.from_arrow(comparisons.select(pair_key)).select(
            *keys, pl.min_horizontal("candidate_a", "candidate_b").alias("candidate_a"),
            pl.max_horizontal("candidate_a", "candidate_b").alias("candidate_b"),
        ).unique().with_columns(_judged=pl.lit(True))
        pairs = pairs.join(judged, on=pair_key, how="left", nulls_equal=True)
    else:
        pairs = pairs.with_columns(_judged=pl.lit(None, pl.Boolean))
    todo = pairs.filter(pl.col("_judged").is_null()).drop("_judged")
    info: dict[str, Any] = {
        "per_prompt": per_prompt, "prompts": groups.height, "pairs": pairs.height,
        "already_judged": pairs.height - todo.height, "unjudged": todo.height,
        "unscored_candidates": sum(d["reason"] == NO_EMBEDDING for d in missing),
        "prompts_with_single_candidate": size.filter(pl.col("n") < 2).height,
        "training_pairs": 0, "train_loss": None, "train_accuracy": None,
        "train_seconds": None, "fallback": None}
    # the head: trained on round 1 when something is left to rank
    labelled = comparisons.filter(comparisons.column("p_a").is_valid()) \
        if comparisons.num_rows else comparisons
    train = _training_pairs(labelled, c_idx, p_idx, cfg.prior)
    info["training_pairs"] = train.height
    prob = pl.lit(None, pl.Float64)
    if train.height < 2:
        info["fallback"] = (f"{train.height} comparison(s) with a p_a between embedded "
                            f"candidates (need 2): no GPM head; up to per_prompt="
                            f"{per_prompt} unjudged pairs per prompt in stable-hash order")
    elif todo.filter(pl.col("_rank")).height:
        model = _fit(train, c_mat, p_mat, cfg)
        scored = _score_groups(model, ok, c_mat, p_mat).select(*pair_key, "prob_a")
        todo = todo.join(scored, on=pair_key, how="left", nulls_equal=True)
        prob = pl.col("prob_a")
        info.update(train_loss=model.info["loss_by_epoch"][-1],
                    train_accuracy=model.info["train_accuracy"],
                    train_seconds=model.info["seconds"])
    hashes = stable_hash_rows(*todo.select("prompt_id", "candidate_a", "candidate_b")
                              .get_columns())
    todo = todo.with_columns(prob_a=prob, _h=pl.Series(hashes, dtype=pl.Utf8)) \
        .with_columns(_u=(pl.col("prob_a") - 0.5).abs().fill_null(0.0)) \
        .sort(["_g", "_rank", "_u", "_h"]) \
        .with_columns(_k=pl.int_range(pl.len()).over(["_g", "_rank"]))
    take = todo.with_columns(_take=~pl.col("_rank") | (pl.col("_k") < per_prompt))
    chosen = take.filter(pl.col("_take"))
    skipped = take.filter(~pl.col("_take"))
    out = list(chosen.select("prompt_id", "source_id", "candidate_a", "candidate_b").iter_rows())
    if info["fallback"] is None:
        drops = [{"source_id": sid, "row_id": f"{a}|{b}", "reason": Reason.FIRST_SIGNAL,
                  "detail": f"gpm P(a≻b)={p:.3f}: confident, not judged"}
                 for sid, a, b, p in skipped.select("source_id", "candidate_a", "candidate_b",
                                                    "prob_a").iter_rows()]
    else:
        drops = [{"source_id": sid, "row_id": f"{a}|{b}", "reason": Reason.OVER_BUDGET,
                  "detail": f"no GPM head to rank by: beyond per_prompt={per_prompt} in "
                            f"stable-hash order"}
                 for sid, a, b in skipped.select("source_id", "candidate_a",
                                                 "candidate_b").iter_rows()]

    def certainty(df: pl.DataFrame) -> float | None:
        u = df.filter(pl.col("prob_a").is_not_null())["_u"]
        return round(float(u.mean()), 4) if len(u) else None

    info.update(pairs_scored=int(todo["prob_a"].is_not_null().sum()), selected=len(out),
                skipped=len(drops), unscored_pairs=int((~todo["_rank"]).sum()),
                mean_certainty_selected=certainty(chosen),
                mean_certainty_skipped=certainty(skipped),
                seconds=round(time.perf_counter() - t0, 3))
    log.info("gpm: %d of %d unjudged pair(s) chosen to judge (%d unscored), %d skipped%s",
             len(out), todo.height, info["unscored_pairs"], len(drops),
             "" if info["fallback"] is None else " (fallback: no head)")
    return out, drops, info


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[str(it)] = out.get(str(it), 0) + 1
    return out


# ------------------------------------------------------------------------------ cycles

def find_cycles(table: pa.Table | pl.DataFrame, *, band: float = 0.05, p_column: str = "p_a",
                origin: str = "panel") -> pa.Table:
    """Intransitive triples per prompt from pairwise probabilities.

    Input: rows ``prompt_id, candidate_a, candidate_b, <p_column>`` (= P(a ≻ b)),
    ``source_id`` optional: a COMPARISONS table (``p_a``), GPM votes (``prob_a``) or any
    table like them. Several rows for one pair are averaged; null p is no edge. An edge
    x → y needs P(x ≻ y) > ½ + ``band``. Output: CYCLES, one row per triple x ≻ y ≻ z ≻ x
    (candidate_1 = the smallest id of the three), with the three probabilities.
    """
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    if not isinstance(df, pl.DataFrame) or df.height == 0:
        return CYCLES.empty_table()
    for col in ("prompt_id", "candidate_a", "candidate_b", p_column):
        if col not in df.columns:
            raise PrefcurateError(f"find_cycles: column '{col}' is missing (need prompt_id, "
                                  f"candidate_a, candidate_b and the probability column "
                                  f"'{p_column}')")
    if "source_id" not in df.columns:
        df = df.with_columns(source_id=pl.lit(None, pl.Utf8))
    key = ["source_id", "prompt_id"]
    p = (df.filter(pl.col(p_column).is_not_null() & pl.col(p_column).is_not_nan())
         .group_by([*key, "candidate_a", "candidate_b"])
         .agg(p=pl.col(p_column).cast(pl.Float64).mean()))
    edges = pl.concat([
        p.filter(pl.col("p") > 0.5 + band).select(*key, pl.col("candidate_a").alias("w"),
                                                  pl.col("candidate_b").alias("l"), "p"),
        p.filter(pl.col("p") < 0.5 - band).select(*key, pl.col("candidate_b").alias("w"),
                                                  pl.col("candidate_a").alias("l"),
                                                  (1.0 - pl.col("p")).alias("p")),
    ])
    if edges.height < 3:
        return CYCLES.empty_table()
    e1 = edges.rename({"w": "c1", "l": "c2", "p": "p_12"})
    e2 = edges.rename({"w": "c2", "l": "c3", "p": "p_23"})
    e3 = edges.rename({"w": "c3", "l": "c1", "p": "p_31"})
    tri = (e1.filter(pl.col("c1") < pl.col("c2"))
           .join(e2, on=[*key, "c2"], nulls_equal=True)
           .filter(pl.col("c1") < pl.col("c3"))
           .join(e3, on=[*key, "c3", "c1"], nulls_equal=True)
           .sort([*key, "c1", "c2", "c3"], nulls_last=True))
    out = tri.select("source_id", "prompt_id", pl.col("c1").alias("candidate_1"),
                     pl.col("c2").alias("candidate_2"), pl.col("c3").alias("candidate_3"),
                     "p_12", "p_23", "p_31", origin=pl.lit(origin)).to_arrow()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in CYCLES],
                                schema=CYCLES)


@dataclass(frozen=True)
class CyclicPrompts:
    """Prompts with at least one intransitive triple (flag ``cyclic``)."""

    keys: list[tuple[str | None, str]]  # (source_id, prompt_id), sorted
    counts: dict[str, int]  # prompts, triples, and prompts per origin


def flag_cyclic_prompts(cycles: pa.Table, origins: Sequence[str] | None = None
                        ) -> CyclicPrompts:
    """The prompts with a cycle (from the given origins; default all) and the counts:
    ``prompts`` (cyclic prompts), ``triples``, ``prompts_<origin>`` per origin and
    ``prompts_both`` (cyclic for the panel and the GPM alike)."""
    df = pl.from_arrow(cycles) if cycles.num_rows else pl.DataFrame(
        schema={"source_id": pl.Utf8, "prompt_id": pl.Utf8, "origin": pl.Utf8})
    if origins is not None:
        df = df.filter(pl.col("origin").is_in(list(origins)))
    keys_df = df.select("source_id", "prompt_id").unique().sort(
        ["source_id", "prompt_id"], nulls_last=True)
    keys = list(keys_df.iter_rows())
    counts = {"prompts": len(keys), "triples": df.height}
    per: dict[str, set] = {}
    for o in sorted(set(df["origin"].to_list()) | set(ORIGINS)):
        sub = df.filter(pl.col("origin") == o).select("source_id", "prompt_id").unique()
        per[o] = set(sub.iter_rows())
        counts[f"prompts_{o}"] = len(per[o])
    counts["prompts_both"] = len(per.get("panel", set()) & per.get("gpm", set()))
    return CyclicPrompts(keys, counts)


def flag_cyclic_pairs(pairs: pa.Table, cyclic: CyclicPrompts) -> pa.Table:
    """``pairs`` (PAIRS) with the flag ``cyclic`` added to every pair of a cyclic prompt
    (matched on source_id and prompt_id; no duplicate flag). Rows and order unchanged."""
    if not pairs.num_rows or not cyclic.keys:
        return pairs
    from pipeline.margins import add_flag

    keys = set(cyclic.keys)
    mask = [(s, p) in keys for s, p in zip(pairs.column("source_id").to_pylist(),
                                            pairs.column("prompt_id").to_pylist())]
    return add_flag(pairs, mask, FLAG_CYCLIC)[0]
