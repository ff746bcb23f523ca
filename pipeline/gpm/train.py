"""Training the GPM and Bradley–Terry heads (see :mod:`pipeline.gpm.model`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pipeline.gpm.model import MIN_STEPS, BTConfig, BTModel, GPMModel, Standardizer, as_vector
from pipeline.stage import as_matrix
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate.gpm")

# ------------------------------------------------------------------------------ training


def _prepare(
    prompt_emb: np.ndarray | None,
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    p_a: np.ndarray,
    input_dims: int | None,
    seed: int,
) -> tuple[
    Standardizer, Standardizer | None, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray
]:
    a = as_matrix(emb_a, "emb_a", "gpm")
    b = as_matrix(emb_b, "emb_b", "gpm", rows=len(a))
    if a.shape[1] != b.shape[1]:
        raise PrefcurateError(f"gpm: emb_a {a.shape} and emb_b {b.shape} differ in width")
    if len(a) == 0:
        raise PrefcurateError(
            "gpm: no pair to train on; the head needs at least one pair with a label (p_a)"
        )
    p = as_vector(p_a, "p_a", len(a), 0.0, 1.0)
    resp = Standardizer.fit(np.concatenate([a, b]), input_dims, seed)
    prompt, x = None, None
    if prompt_emb is not None:
        xp = as_matrix(prompt_emb, "prompt_emb", "gpm", rows=len(a))
        prompt = Standardizer.fit(xp, input_dims, seed + 1)
        x = prompt(xp).astype(np.float32)
    return resp, prompt, resp(a).astype(np.float32), resp(b).astype(np.float32), x, p


def _batches(n: int, batch_size: int) -> int:
    return min(batch_size, max(16, math.ceil(n / MIN_STEPS)))


def _train_epochs(
    opt: Any, pair_loss: Any, weight: Any, n: int, batch_size: int, epochs: int, seed: int
) -> list[float]:
    """Mini-batch training shared by the GPM and BT heads: each epoch a seeded permutation,
    per batch the weight-averaged ``pair_loss(idx)``; returns the mean loss per epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
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


@contextmanager
def _torch_scope(threads: int, seed: int) -> Iterator[None]:
    """Train with ``threads`` torch threads and torch's RNG seeded, both restored after
    (so a head's training neither sees nor moves the caller's random state)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(prev)


def _trained(model: Any, p: np.ndarray, scores: np.ndarray, t0: float, **info: Any) -> Any:
    """The trained ``model`` with its ``info``: the figures given, its accuracy on the
    decided training pairs and the seconds since ``t0``."""
    acc = _train_accuracy(scores, p)
    model.info.update(**info, train_accuracy=acc, seconds=round(time.perf_counter() - t0, 3))
    return model


def train_gpm(
    prompt_emb: np.ndarray | None,
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    p_a: np.ndarray,
    cfg: GPMConfig | None = None,
    *,
    margin: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> GPMModel:
    """Train a GPM head on pairs (a, b) with soft labels p_a = P(a ≻ b).

    ``prompt_emb`` (n × d_x, or None: λ is one learnt vector), ``emb_a`` / ``emb_b``
    (n × d) frozen embeddings; ``margin`` (n, ≥ 0, in the chosen response's favour) is used
    by ``loss = margin``; ``weight`` (n, ≥ 0) scales each pair's loss.

    Over 60 lines on purpose: the layers are made in the order the seed fixes, and the
    embedding, the score and the loss are closures over them and the tensors, in one
    torch scope; split apart they would pass a dozen tensors each way.
    """
    import torch
    from torch import nn

    cfg = cfg or GPMConfig()
    t0 = time.perf_counter()
    resp, prompt, ya, yb, x, p = _prepare(prompt_emb, emb_a, emb_b, p_a, cfg.input_dims, cfg.seed)
    n = len(p)
    m = np.zeros(n) if margin is None else as_vector(margin, "margin", n, 0.0)
    w = np.ones(n) if weight is None else as_vector(weight, "weight", n, 0.0)
    two_k = 2 * cfg.k
    width = cfg.hidden or two_k
    joint = cfg.joint and x is not None
    with _torch_scope(cfg.threads, cfg.seed):
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
            g = gate(xx) + gate_bias if gate is not None else gate_bias.expand(len(idx), cfg.k)
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
    model = GPMModel(
        resp=resp,
        prompt=prompt,
        w_y=_np(lin_y.weight),
        b_y=_np(lin_y.bias),
        w_x=_np(lin_x.weight) if lin_x is not None else None,
        w_out=_np(out.weight) if out is not None else None,
        b_out=_np(out.bias) if out is not None else None,
        w_gate=_np(gate.weight) if gate is not None else None,
        b_gate=_np(gate_bias) + (_np(gate.bias) if gate is not None else 0.0),
        tau=cfg.tau,
        info={},
    )
    scores = model.score_pairs(prompt_emb, emb_a, emb_b)
    info = {"pairs": n, "k": cfg.k, "loss": cfg.loss, "epochs": cfg.epochs, "batch_size": bs}
    return _trained(model, p, scores, t0, **info, loss_by_epoch=losses)


def train_bt(
    prompt_emb: np.ndarray | None,
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    p_a: np.ndarray,
    cfg: BTConfig | None = None,
    *,
    weight: np.ndarray | None = None,
) -> BTModel:
    """Train a Bradley–Terry head (BCE of σ(r_a − r_b) against p_a) on the same inputs."""
    import torch
    from torch import nn

    cfg = cfg or BTConfig()
    t0 = time.perf_counter()
    resp, prompt, ya, yb, x, p = _prepare(prompt_emb, emb_a, emb_b, p_a, cfg.input_dims, cfg.seed)
    n = len(p)
    w = np.ones(n) if weight is None else as_vector(weight, "weight", n, 0.0)
    with _torch_scope(cfg.threads, cfg.seed):
        if cfg.hidden:
            lin_y = nn.Linear(ya.shape[1], cfg.hidden)
            lin_x = nn.Linear(x.shape[1], cfg.hidden, bias=False) if x is not None else None
            out = nn.Linear(cfg.hidden, 1, bias=False)
            mods = [mm for mm in (lin_y, lin_x, out) if mm is not None]
        else:  # linear: the prompt cancels in r_a − r_b
            lin_y, lin_x = None, None
            out = nn.Linear(ya.shape[1], 1, bias=False)
            mods = [out]
        opt = torch.optim.AdamW(
            [q for mm in mods for q in mm.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
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
    hidden = lin_y is not None
    model = BTModel(
        resp=resp,
        prompt=prompt,
        w_y=_np(lin_y.weight) if hidden else np.zeros((0, 0)),
        b_y=_np(lin_y.bias) if hidden else np.zeros(0),
        w_x=_np(lin_x.weight) if lin_x is not None else None,
        w_out=_np(out.weight),
        hidden=hidden,
        info={},
    )
    scores = model.score_pairs(prompt_emb, emb_a, emb_b)
    info = {"pairs": n, "epochs": cfg.epochs, "batch_size": bs}
    return _trained(model, p, scores, t0, **info, loss_by_epoch=losses)
