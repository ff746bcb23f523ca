"""The coverage machinery of budgeted selection (:mod:`pipeline.selection`): the prompt
space as unit-norm rows, its spherical k-means coreset, each prompt's top similarities
to the coreset, the lazy greedy over quality plus facility-location coverage, and the
coverage figure (mean best similarity) the report shows."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import sparse

from pipeline.stage import as_matrix

STAGE = "select"


def prompt_space(prompt_embeddings: pa.Table | Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """(prompt ids, unit-norm float32 rows) of the prompt embeddings."""
    if isinstance(prompt_embeddings, pa.Table):
        from pipeline.embeddings import embeddings_matrix

        ids, mat = embeddings_matrix(prompt_embeddings, "prompt_id", stage="select")
    else:
        ids = list(prompt_embeddings)
        mat = np.asarray([np.asarray(prompt_embeddings[i], dtype=np.float32) for i in ids])
    mat = (
        np.asarray(mat, dtype=np.float32).reshape(len(ids), -1)
        if ids
        else np.zeros((0, 1), np.float32)
    )
    mat = as_matrix(mat, "prompt_embeddings", STAGE)
    norm = np.linalg.norm(mat, axis=1, keepdims=True)
    return ids, mat / np.maximum(norm, 1e-12)


def kmeans(x: np.ndarray, k: int, iters: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means centroids (k × d, unit norm), fitted on a sample of ``x``."""
    sample = max(sample, k)
    xs = x if len(x) <= sample else x[rng.choice(len(x), sample, replace=False)]
    cent = xs[rng.choice(len(xs), k, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(xs @ cent.T, axis=1)
        cnt = np.bincount(assign, minlength=k)
        onehot = sparse.csr_matrix(
            (np.ones(len(xs), np.float32), (assign, np.arange(len(xs)))), shape=(k, len(xs))
        )
        sums = np.asarray(onehot @ xs, dtype=np.float32)
        empty = cnt == 0
        if empty.any():  # re-seed empty clusters on random points
            sums[empty] = xs[rng.choice(len(xs), int(empty.sum()), replace=False)]
        cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32)


def sparse_sims(
    e: np.ndarray, clients: np.ndarray, t: int, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``t`` non-negative similarities of each row of ``e`` to the clients."""
    n, m = len(e), len(clients)
    t = min(t, m)
    nbr = np.empty((n, t), dtype=np.int64)
    val = np.empty((n, t), dtype=np.float64)
    for s in range(0, n, chunk):
        sims = np.maximum(e[s : s + chunk] @ clients.T, 0.0)
        if t < m:
            idx = np.argpartition(-sims, t - 1, axis=1)[:, :t]
        else:
            idx = np.broadcast_to(np.arange(m), sims.shape)
        nbr[s : s + chunk] = idx
        val[s : s + chunk] = np.take_along_axis(sims, idx, axis=1)
    return nbr, val


def greedy_select(
    q: np.ndarray,
    prompt_of: np.ndarray,
    n_prompts: int,
    nbr: np.ndarray,
    val: np.ndarray,
    weight: np.ndarray,
    budget: int,
    alpha: float,
    coef: float,
) -> tuple[np.ndarray, dict[str, int]]:
    """Lazy greedy on (1 − α)·q̃ + coef·Δcoverage; returns the chosen pair indices.

    Pruning: while fewer than ``budget`` pairs are chosen, one of the top-``budget`` pairs
    by quality is still available, so every accepted gain is at least
    L = (1 − α)·q̃_(budget); gains only fall, so a prompt whose gain is below L is never
    chosen and leaves the heap. When stale bounds pile up, all gains are refreshed at
    once (vectorised) and the heap rebuilt without the pruned prompts.
    """
    order = np.lexsort((np.arange(len(q)), -q, prompt_of))  # per prompt, best first
    starts = np.searchsorted(prompt_of[order], np.arange(n_prompts + 1))
    ptr, end = starts[:-1].copy(), starts[1:]
    cur = np.zeros(len(weight), dtype=np.float64)
    covered = np.zeros(n_prompts, dtype=bool)
    floor = (1 - alpha) * float(np.partition(q, len(q) - budget)[len(q) - budget]) * (1 - 1e-9)
    stats = {"evaluations": 0, "refreshes": 0, "pruned": 0}

    wn = weight[nbr]  # client weights of each prompt's neighbours

    def fresh(ps: np.ndarray) -> np.ndarray:
        nb = nbr[ps]
        cov = coef * (wn[ps] * np.maximum(val[ps] - cur[nb], 0.0)).sum(axis=1)
        cov[covered[ps]] = 0.0
        return (1 - alpha) * q[order[ptr[ps]]] + cov

    def build(ps: np.ndarray) -> list:
        g = fresh(ps)
        keep = g >= floor
        stats["pruned"] += int((~keep).sum())
        h = list(zip((-g[keep]).tolist(), (-q[order[ptr[ps[keep]]]]).tolist(), ps[keep].tolist()))
        heapq.heapify(h)
        return h

    heap = build(np.flatnonzero(end > ptr))
    chosen: list[int] = []
    stale = 0
    while len(chosen) < budget and heap:
        if stale > max(2000, len(heap) // 8):  # refresh every bound at once
            heap = build(np.asarray([h[2] for h in heap], dtype=np.int64))
            stats["refreshes"] += 1
            stale = 0
            continue
        neg, negq, p = heapq.heappop(heap)
        if not covered[p]:
            nb = nbr[p]
            g = (1 - alpha) * -negq + coef * float(np.dot(wn[p], np.maximum(val[p] - cur[nb], 0.0)))
            stats["evaluations"] += 1
            if g < floor:
                stats["pruned"] += 1
                continue
            item = (-g, negq, p)
            if heap and item > heap[0]:  # no longer the best: put back with its fresh gain
                heapq.heappush(heap, item)
                stale += 1
                continue
            cur[nb] = np.maximum(cur[nb], val[p])
            covered[p] = True
        chosen.append(int(order[ptr[p]]))
        ptr[p] += 1
        if ptr[p] < end[p]:
            qn = q[order[ptr[p]]]
            if (1 - alpha) * qn >= floor:
                heapq.heappush(heap, (-(1 - alpha) * qn, -qn, p))
    return np.asarray(chosen, dtype=np.int64), stats


def mean_max_similarity(
    queries: np.ndarray,
    selected: np.ndarray,
    *,
    self_hit: np.ndarray | None = None,
    chunk: int = 4096,
) -> float:
    """Mean over unit-norm ``queries`` of the best cosine similarity to a ``selected`` row
    (0 for an empty selection). ``self_hit`` marks queries that are themselves selected
    (similarity 1, not recomputed)."""
    if len(queries) == 0:
        return float("nan")
    if len(selected) == 0:
        return 0.0
    best = np.ones(len(queries), dtype=np.float64)
    todo = np.arange(len(queries)) if self_hit is None else np.flatnonzero(~self_hit)
    if len(todo):
        sub = np.full(len(todo), -np.inf, dtype=np.float32)
        qs = queries[todo]
        for s in range(0, len(selected), chunk):
            np.maximum(sub, (qs @ selected[s : s + chunk].T).max(axis=1), out=sub)
        best[todo] = np.minimum(sub, 1.0)
    return float(best.mean())
