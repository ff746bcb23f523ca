"""Collaborative peer review, CRM style (arXiv 2505.10597; DESIGN.md §5).

Two Bradley–Terry reward heads — small MLPs (torch, CPU) on frozen embeddings of the
prompt and of each response — review each other's training data:

- the heads start from different seeds and read the pairs in different orders;
- at every step, for each head's batch, the *other* head scores the pairs by its own
  margin r(chosen) − r(rejected) and passes on its top ``keep(t)`` share — the pairs with
  the smallest BT loss −log σ(margin) — and the head learns from those only
  (co-teaching);
- keep(t) = 1 − min(t / T_warm, 1) · ε̂, with t in epochs (fractional within an epoch) and
  ε̂ the estimated noise rate (from η or 1 − mean weight of the confidence weights);
- curriculum easy → hard: when a per-pair ``prior`` is given (larger = the label looks
  more certain, e.g. the log-odds of its confidence weight), the first epochs draw from
  the easiest pairs only, the pool growing linearly from ``curriculum_start`` of the
  pairs to all of them at T_warm;
- after each of the last ``late_epochs`` epochs each head rejects the ε̂ share of its
  training pairs with its lowest margins; a pair that both heads reject in
  ``min_late_rejections`` of those epochs (default: all of them, in every training that
  sees the pair), and whose mean margin is negative (on average the heads prefer the
  rejected response), is flagged noisy.

Cross-fitting (our addition). With ``folds`` = K ≥ 2 the pairs are split into K folds and
a pair of heads is trained on every K − 1 of them; each pair's returned margins come from
the heads that did *not* train on it. A head that learnt a pair's own (possibly wrong)
label scores that label too well: in-sample margins leak the label, and a calibration
that weighs evidence by how well it predicts labels (``pipeline.denoise.weights``) would then
trust the heads far too much (measured with ``bench/noise_eval.py``: 8 epochs in-sample
took F1 from 0.89 to 0.79; out-of-fold margins do not). K = 1 trains once on everything.

Inputs are numpy arrays aligned by pair: ``emb_chosen`` and ``emb_rejected`` (n × d), and
optionally ``emb_prompt`` (n × d_p). They are reduced to ``input_dims`` principal
components (fitted on at most 20,000 rows; responses and prompts separately) and
standardised. The prompt enters each head through its hidden layer (h = act(W_r e + W_p x
+ b)), so a head can learn prompt-dependent preferences. On small inputs the batches
shrink so that every epoch has at least :data:`MIN_STEPS` steps. Cost: 100k pairs with
384-dimensional prompt and response embeddings in well under 2 minutes on 2 cores
(``python bench/noise_eval.py --crm-timing 100000`` measures it).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> q = rng.normal(size=(300, 2)); u = rng.normal(size=8)
>>> emb = q[..., None] * u + 0.3 * rng.normal(size=(300, 2, 8))
>>> good = np.argmax(q, 1); bad = 1 - good
>>> noisy = np.arange(300) < 60  # 20% of the labels point the wrong way
>>> ch = np.where(noisy, bad, good); rj = 1 - ch
>>> idx = np.arange(300)
>>> res = review_pairs(emb[idx, ch], emb[idx, rj], noise_rate=0.2, epochs=6, seed=0)
>>> bool(res.flagged[noisy].mean() > 0.5), bool(res.flagged[~noisy].mean() < 0.1)
(True, True)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.stage import as_matrix
from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate.peer_review")

MIN_STEPS = 16  # batches shrink on small inputs so that an epoch has at least this many steps
PCA_ROWS = 20_000  # rows used to fit the input reduction


@dataclass(frozen=True)
class PeerReview:
    """Result of :func:`review_pairs` (arrays aligned with the input pairs)."""

    flagged: np.ndarray  # bool: both heads reject the pair late in training
    margin_a: np.ndarray  # head A: r(chosen) − r(rejected) (out of fold when folds ≥ 2)
    margin_b: np.ndarray  # head B
    late_rejections: np.ndarray  # late epochs in which both heads rejected the pair
    info: dict[str, Any] = field(default_factory=dict)


def _reduce(
    arrays: list[np.ndarray], dims: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """Centre on the stacked rows, project on the top ``dims`` principal components (when
    fewer than the columns), scale to unit overall standard deviation."""
    stacked = np.concatenate(arrays, axis=0)
    sample = (
        stacked
        if len(stacked) <= PCA_ROWS
        else stacked[rng.choice(len(stacked), PCA_ROWS, replace=False)]
    )
    mu = sample.mean(axis=0, keepdims=True)
    if dims is not None and dims < stacked.shape[1]:
        cov = np.cov((sample - mu).T.astype(np.float64))
        _, vecs = np.linalg.eigh(cov)
        proj = vecs[:, ::-1][:, :dims].astype(np.float32)
        out = [(a - mu) @ proj for a in arrays]
    else:
        out = [a - mu for a in arrays]
    sd = float(np.concatenate(out, axis=0).std()) or 1.0
    return [np.ascontiguousarray(o / sd, dtype=np.float32) for o in out]


def review_pairs(
    emb_chosen: np.ndarray,
    emb_rejected: np.ndarray,
    emb_prompt: np.ndarray | None = None,
    *,
    noise_rate: float,
    prior: np.ndarray | None = None,
    epochs: int = 8,
    warmup_epochs: int = 3,
    late_epochs: int = 3,
    min_late_rejections: int | None = None,
    curriculum_start: float = 0.5,
    hidden: int = 64,
    input_dims: int | None = 64,
    folds: int = 2,
    batch_size: int = 512,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    threads: int = 1,
) -> PeerReview:
    """Train co-teaching BT heads on the pairs; flag those both heads reject late."""
    t0 = time.perf_counter()
    xc, xr, xp, pr = _checked(emb_chosen, emb_rejected, emb_prompt, prior)
    n, d = xc.shape
    if epochs < 1 or not (1 <= late_epochs <= epochs) or warmup_epochs < 0 or folds < 1:
        raise PrefcurateError(
            f"peer review: need epochs >= 1, 1 <= late_epochs <= epochs, "
            f"warmup_epochs >= 0 and folds >= 1 (got {epochs}, "
            f"{late_epochs}, {warmup_epochs}, {folds})"
        )
    eps = float(min(max(noise_rate, 0.0), 0.5))
    folds = min(folds, max(n, 1))
    need = late_epochs if min_late_rejections is None else min_late_rejections
    info: dict[str, Any] = {
        "pairs": n,
        "dims": d,
        "prompt_dims": 0 if xp is None else xp.shape[1],
        "input_dims": input_dims,
        "folds": folds,
        "noise_rate": eps,
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "late_epochs": late_epochs,
        "min_late_rejections": need,
        "hidden": hidden,
        "seed": seed,
    }
    if n == 0:
        empty = np.zeros(0)
        info.update(flagged=0, seconds=0.0)
        return PeerReview(np.zeros(0, bool), empty, empty, np.zeros(0, np.int64), info)
    rng = np.random.default_rng(seed)
    xc, xr = _reduce([xc, xr], input_dims, rng)
    if xp is not None:
        (xp,) = _reduce([xp], input_dims, rng)
    fold = rng.permutation(n) % folds
    train_kw = {
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "late_epochs": late_epochs,
        "curriculum_start": curriculum_start,
        "hidden": hidden,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
    }
    margin_a, margin_b, late, bs, keep_log = _cross_fit(
        xc, xr, xp, pr, fold, folds, eps, seed, threads, train_kw
    )
    flagged = (late >= need * max(folds - 1, 1)) & ((margin_a + margin_b) < 0)
    info.update(
        flagged=int(flagged.sum()),
        batch_size=bs,
        keep_by_epoch=keep_log,
        agree_a=float((margin_a > 0).mean()),
        agree_b=float((margin_b > 0).mean()),
        seconds=round(time.perf_counter() - t0, 3),
    )
    return PeerReview(flagged, margin_a, margin_b, late, info)


def _checked(
    emb_chosen: Any, emb_rejected: Any, emb_prompt: Any, prior: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The inputs as float matrices of matching rows (a prior's non-finite values are
    -inf), or an error naming the one that does not fit."""
    xc = as_matrix(emb_chosen, "emb_chosen", "peer review")
    xr = as_matrix(emb_rejected, "emb_rejected", "peer review")
    if xc.shape != xr.shape:
        raise PrefcurateError(
            f"peer review: emb_chosen {xc.shape} and emb_rejected "
            f"{xr.shape} must have the same shape"
        )
    n = xc.shape[0]
    xp = None
    if emb_prompt is not None:
        xp = as_matrix(emb_prompt, "emb_prompt", "peer review")
        if xp.shape[0] != n:
            raise PrefcurateError(f"peer review: emb_prompt has {xp.shape[0]} rows for {n} pairs")
    pr = None
    if prior is not None:
        pr = np.asarray(prior, dtype=np.float64).reshape(-1)
        if pr.size != n:
            raise PrefcurateError(f"peer review: prior has {pr.size} values for {n} pairs")
        pr = np.where(np.isfinite(pr), pr, -np.inf)
    return xc, xr, xp, pr


def _cross_fit(
    xc: np.ndarray,
    xr: np.ndarray,
    xp: np.ndarray | None,
    pr: np.ndarray | None,
    fold: np.ndarray,
    folds: int,
    eps: float,
    seed: int,
    threads: int,
    train_kw: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Any]:
    """Per fold: train the two heads on the other folds (their late rejections counted
    per pair) and score this fold's pairs → (margins of head a and b, late rejections,
    the batch size and keep log of the last fold)."""
    import torch

    n = xc.shape[0]
    margin_a, margin_b = np.zeros(n), np.zeros(n)
    late = np.zeros(n, dtype=np.int64)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with torch.random.fork_rng(devices=[]):
            tc, tr = torch.from_numpy(xc), torch.from_numpy(xr)
            tp = torch.from_numpy(xp) if xp is not None else None
            for f in range(folds):
                train = np.flatnonzero(fold != f) if folds > 1 else np.arange(n)
                score = np.flatnonzero(fold == f)
                prior = None if pr is None else pr[train]
                heads, rejected, bs, keep_log = _train(
                    tc, tr, tp, train, prior, eps, seed=seed + 1009 * f, **train_kw
                )
                late[train] += rejected
                idx = torch.from_numpy(score)
                with torch.no_grad():
                    margin_a[score] = _margins(heads[0], tc, tr, tp, idx).numpy()
                    margin_b[score] = _margins(heads[1], tc, tr, tp, idx).numpy()
    finally:
        torch.set_num_threads(prev_threads)
    return margin_a, margin_b, late, bs, keep_log


def _make_head(d: int, d_prompt: int, hidden: int) -> Any:
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.resp = nn.Linear(d, hidden)
            self.prompt = nn.Linear(d_prompt, hidden, bias=False) if d_prompt else None
            self.out = nn.Linear(hidden, 1)

        def forward(self, c: Any, r: Any, p: Any) -> Any:
            pre_c, pre_r = self.resp(c), self.resp(r)
            if self.prompt is not None:
                pp = self.prompt(p)
                pre_c, pre_r = pre_c + pp, pre_r + pp
            act = nn.functional.gelu
            return (self.out(act(pre_c)) - self.out(act(pre_r))).squeeze(-1)

    return Head()


def _margins(head: Any, tc: Any, tr: Any, tp: Any, idx: Any) -> Any:
    import torch

    out = [head(tc[i], tr[i], None if tp is None else tp[i]) for i in torch.split(idx, 65536)]
    return torch.cat(out) if out else torch.zeros(0)


def _train(
    tc: Any,
    tr: Any,
    tp: Any,
    train: np.ndarray,
    prior: np.ndarray | None,
    eps: float,
    *,
    epochs: int,
    warmup_epochs: int,
    late_epochs: int,
    curriculum_start: float,
    hidden: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> tuple[tuple[Any, Any], np.ndarray, int, list]:
    """Co-teach two heads on the pairs ``train``; count, per training pair, the late epochs
    in which both heads reject it."""
    import torch
    from torch import nn

    m = len(train)
    torch.manual_seed(seed)
    head_a = _make_head(tc.shape[1], 0 if tp is None else tp.shape[1], hidden)
    torch.manual_seed(seed + 7919)
    head_b = _make_head(tc.shape[1], 0 if tp is None else tp.shape[1], hidden)
    opt = torch.optim.AdamW(
        list(head_a.parameters()) + list(head_b.parameters()), lr=lr, weight_decay=weight_decay
    )
    gen_a = torch.Generator().manual_seed(seed + 1)
    gen_b = torch.Generator().manual_seed(seed + 2)
    order = np.argsort(-prior, kind="stable") if prior is not None else np.arange(m)
    easy_first = torch.from_numpy(train[order].copy())
    all_train = torch.from_numpy(train.copy())
    bs = min(batch_size, max(16, math.ceil(m / MIN_STEPS)))
    late = torch.zeros(m, dtype=torch.int64)
    n_rej = int(round(eps * m))
    softplus = nn.functional.softplus
    keep_log: list[float] = []
    keep = 1.0
    for epoch in range(epochs):
        frac = 1.0
        if prior is not None and warmup_epochs > 0:
            frac = curriculum_start + (1 - curriculum_start) * min(epoch / warmup_epochs, 1.0)
        pool = easy_first[: max(2, math.ceil(frac * m))]
        perm_a = pool[torch.randperm(len(pool), generator=gen_a)]
        perm_b = pool[torch.randperm(len(pool), generator=gen_b)]
        steps = math.ceil(len(pool) / bs)
        for s in range(steps):
            t = epoch + s / steps
            keep = 1.0 - (min(t / warmup_epochs, 1.0) if warmup_epochs else 1.0) * eps
            ia, ib = perm_a[s * bs : (s + 1) * bs], perm_b[s * bs : (s + 1) * bs]
            k = max(1, int(round(keep * len(ia))))
            both = torch.cat([ia, ib])
            c, r = tc[both], tr[both]
            p = None if tp is None else tp[both]
            m_a, m_b = head_a(c, r, p), head_b(c, r, p)
            na = len(ia)
            # each head learns from the pairs of its own batch that its peer finds easiest
            sel_a = torch.topk(m_b[:na].detach(), k).indices
            sel_b = torch.topk(m_a[na:].detach(), min(k, len(ib))).indices
            loss = softplus(-m_a[:na][sel_a]).mean() + softplus(-m_b[na:][sel_b]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        keep_log.append(round(keep, 4))
        if epoch >= epochs - late_epochs and n_rej:
            with torch.no_grad():
                ma = _margins(head_a, tc, tr, tp, all_train)
                mb = _margins(head_b, tc, tr, tp, all_train)
            rej_a = torch.zeros(m, dtype=torch.bool)
            rej_b = torch.zeros(m, dtype=torch.bool)
            rej_a[torch.topk(-ma, n_rej).indices] = True
            rej_b[torch.topk(-mb, n_rej).indices] = True
            late += (rej_a & rej_b).to(torch.int64)
    return (head_a, head_b), late.numpy(), bs, keep_log
