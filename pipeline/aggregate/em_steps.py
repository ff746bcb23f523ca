"""The steps of the EM of :mod:`pipeline.aggregate.em`: the votes checked and coded, the
sparse vote matrix (items × annotator-label cells), the gold items, the M-step (class
prior, confusions or skills, with the reliability prior's pseudo-counts) and the E-step
(posterior and its entropy)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

EPS = 1e-10


def gold_items(
    gold: np.ndarray | None, n_items: int, C: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rows, class-major posterior) of the gold items of ``gold`` (NaN rows are free).

    >>> rows, t = gold_items(np.array([[np.nan, np.nan], [1.0, 0.0]]), 2, 2)
    >>> rows.tolist(), t.tolist()
    ([1], [[1.0], [0.0]])
    """
    if gold is None:
        return None, None
    g = np.asarray(gold, dtype=np.float64)
    if g.shape != (n_items, C):
        raise ValueError(f"gold must have shape ({n_items}, {C}), got {g.shape}")
    rows = np.flatnonzero(~np.isnan(g).any(axis=1))
    t = g[rows]
    if np.any(t < 0) or not np.allclose(t.sum(axis=1), 1.0):
        raise ValueError("gold rows must be probabilities over the classes, summing to 1")
    return rows, np.ascontiguousarray(t.T)


def codes(name: str, x: np.ndarray, n: int | None) -> tuple[np.ndarray, int]:
    x = np.asarray(x)
    if x.dtype == np.uint64:  # np.bincount and index arithmetic want signed integers
        x = x.astype(np.int64)
    if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
        raise ValueError(
            f"{name} must be a 1-d array of integer codes, got dtype {x.dtype} "
            f"and shape {x.shape}; encode names first (e.g. np.unique(..., "
            f"return_inverse=True))"
        )
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, -1)
    if n is None:
        n = hi + 1
    if lo < 0 or hi >= n:
        raise ValueError(f"{name} codes must lie in [0, {n}), got [{lo}, {hi}]")
    return x, n


def checked(
    item: np.ndarray,
    annotator: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray | None,
    n_items: int | None,
    n_annotators: int | None,
    n_classes: int,
    n_labels: int | None,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int, int, int]:
    """The votes as codes, checked, without zero-weight rows → (item, annotator, label,
    weight, items, annotators, labels)."""
    item, n_items = codes("item", item, n_items)
    annotator, n_annot = codes("annotator", annotator, n_annotators)
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    label, n_seen = codes("label", label, n_labels)
    n_votes = item.size
    if not (annotator.size == label.size == n_votes):
        raise ValueError(
            f"item, annotator and label must have the same length, got "
            f"{n_votes}, {annotator.size}, {label.size}"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (n_votes,) or not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise ValueError("weight must be finite, non-negative, one per vote")
        keep = weight > 0  # a zero-weight row is no observation at all
        if not keep.all():
            item, annotator, label, weight = item[keep], annotator[keep], label[keep], weight[keep]
    return item, annotator, label, weight, n_items, n_annot, max(n_seen, n_classes)


class MStep:
    """The M-step of one fit, with what every iteration shares: the vote matrix's cells
    (annotator × label), the class prior (fixed or fitted), the pseudo-counts of the
    reliability prior, and the items with votes."""

    def __init__(self, M: sp.csr_matrix, n_items: int, C: int, K: int, W: int, one_coin: bool):
        self.M, self.C, self.K, self.W, self.one_coin = M, C, K, W, one_coin
        self.n_g = np.asarray(M.sum(axis=0)).ravel()  # vote weight per (annotator, label) cell
        self.observed = self.n_g > 0
        self.total = float(self.n_g.sum())
        self.k_of_g = np.tile(np.arange(K), W)
        self.w_of_g = np.repeat(np.arange(W), K)
        self.has_votes = np.diff(M.indptr) > 0
        self.n_with = int(self.has_votes.sum())
        self.mean_rows = (
            None if self.n_with == n_items else self.has_votes.astype(np.float64) / self.n_with
        )
        self.fixed_pri: np.ndarray | None = None
        self.pseudo: np.ndarray | None = None

    def set_class_prior(self, class_prior: np.ndarray | None) -> None:
        if class_prior is None:
            return
        C = self.C
        fixed = np.asarray(class_prior, dtype=np.float64)
        if fixed.shape != (C,) or np.any(fixed <= 0) or abs(fixed.sum() - 1.0) > 1e-9:
            raise ValueError(f"class_prior must be {C} positive probabilities summing to 1")
        self.fixed_pri = fixed

    def set_prior(self, prior: tuple[float, float] | np.ndarray) -> None:
        """Dirichlet pseudo-counts (right, wrong) per annotator on its confusion rows."""
        W, C, k_of_g, w_of_g = self.W, self.C, self.k_of_g, self.w_of_g
        pr = np.asarray(prior, dtype=np.float64)
        if pr.shape == (2,):
            pr = np.broadcast_to(pr, (W, 2))
        if pr.shape != (W, 2) or np.any(pr < 0) or not np.all(np.isfinite(pr)):
            raise ValueError(
                f"prior must be non-negative pseudo-counts (right, wrong), one "
                f"pair or one per annotator, got shape {pr.shape}"
            )
        diag, off = pr[w_of_g, 0][:, None], pr[w_of_g, 1][:, None]
        pseudo = np.where(k_of_g[:, None] == np.arange(C)[None, :], diag, off)
        pseudo[(k_of_g >= C) & ~self.observed] = 0.0  # a non-class label never given stays 0
        has_any = np.bincount(w_of_g, self.n_g, W) > 0  # annotators with votes here
        pseudo[~has_any[w_of_g]] = 0.0
        self.observed = self.observed | (pseudo.sum(axis=1) > 0)
        self.pseudo = pseudo

    def initial_posterior(self) -> np.ndarray:
        """The soft majority: a class label votes for its class, any other label 1/C to
        each class. Posteriors are kept class-major, T[c] a contiguous vector over items,
        so each step is a handful of 1-d passes (reductions over a length-C axis are slow
        in numpy)."""
        C = self.C
        vote_for = (self.k_of_g[:, None] == np.arange(C)[None, :]).astype(np.float64)
        vote_for[self.k_of_g >= C] = 1.0 / C
        T = np.stack([self.M @ vote_for[:, c] for c in range(C)])
        rs = T.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rs > 0, T / rs, 1.0 / C)

    def __call__(
        self, T: np.ndarray, M: sp.csr_matrix | None = None, n_g: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(π, counts per cell and class, log e, skills (one-coin), confusion) from T."""
        M = self.M if M is None else M
        n_g = self.n_g if n_g is None else n_g
        C, K, W, k_of_g, w_of_g = self.C, self.K, self.W, self.k_of_g, self.w_of_g
        if self.fixed_pri is not None:
            pri = self.fixed_pri
        else:
            mean_rows = self.mean_rows
            pri = T.mean(axis=1) if mean_rows is None else np.einsum("ci,i->c", T, mean_rows)
            if self.pseudo is not None:  # Dirichlet(1 + 1) on π: one pseudo-item per class
                pri = (pri * self.n_with + 1.0) / (self.n_with + C)
        # (W·K, C): Σ over the votes in cell g = (annotator, label) of T_jc. The last class
        # needs no sparse product: its column is the cell's vote weight minus the others.
        counts = np.empty((W * K, C))
        for c in range(C - 1):
            counts[:, c] = M.T @ T[c]
        counts[:, C - 1] = n_g - counts[:, : C - 1].sum(axis=1)
        observed = self.observed
        if self.one_coin:
            correct = np.where(k_of_g < C, counts[np.arange(W * K), np.minimum(k_of_g, C - 1)], 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                skills = np.bincount(w_of_g, correct, W) / np.bincount(w_of_g, n_g, W)
            s = skills[w_of_g][:, None]
            e = np.where(k_of_g[:, None] == np.arange(C)[None, :], s, (1.0 - s) / (K - 1))
            e = np.clip(e, EPS, 1.0 - EPS)
            conf = e.reshape(W, K, C)
        else:
            skills = None
            cm = counts if self.pseudo is None else counts + self.pseudo
            e = np.where(observed[:, None], np.maximum(cm, EPS), 0.0).reshape(W, K, C)
            with np.errstate(invalid="ignore", divide="ignore"):
                conf = e / e.sum(axis=1, keepdims=True)
            e = conf.reshape(W * K, C)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_e = np.where(observed[:, None], np.log(e), 0.0)
        return pri, counts, log_e, skills, conf


def e_step(
    M: sp.csr_matrix,
    log_e: np.ndarray,
    pri: np.ndarray,
    C: int,
    n_items: int,
    gold_rows: np.ndarray | None,
    gold_T: np.ndarray | None,
    empty: np.ndarray,
    n_with: int,
) -> tuple[np.ndarray, float]:
    """The posterior T (class-major, gold items fixed) and its entropy over the items with
    votes. L[c] = log π_c + Σ_votes log e[g, c], taken relative to the last class (one
    sparse product fewer; the shift cancels in the normalisation), then shifted by the
    max over c and normalised."""
    log_pri = np.log(np.maximum(pri, EPS))
    L = np.zeros((C, n_items))
    for c in range(C - 1):
        L[c] = M @ (log_e[:, c] - log_e[:, C - 1])
        L[c] += log_pri[c] - log_pri[C - 1]
    top = L[0].copy()
    for c in range(1, C):
        np.maximum(top, L[c], out=top)
    L -= top
    T = np.exp(L)
    z = T.sum(axis=0)
    T /= z
    if gold_rows is not None:
        T[:, gold_rows] = gold_T
    # H(T) per item = log z − Σ_c T_c L_c (L shifted); no log of T needed. Items without
    # votes are not part of the model (their T is just π): leave them out.
    log_z = np.log(z)
    # (einsum, not BLAS: threaded BLAS dots stall on a busy 2-core machine)
    ent = float(log_z.sum()) - float(np.einsum("ci,ci->", T, L))
    if empty.size:
        i = empty[0]
        ent -= (n_items - n_with) * (log_z[i] - float(T[:, i] @ L[:, i]))
    return T, ent


def vote_matrix(
    item: np.ndarray,
    annotator: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray | None,
    n_items: int,
    n_labels: int,
    n_annotators: int,
) -> sp.csr_matrix:
    """CSR (n_items × n_annotators·K) matrix of vote weight per item and (annotator, label).

    Built directly from rows sorted by item (no COO round trip); repeated votes stay as
    duplicate entries, which sparse products add up like any other.
    """
    n_cells = n_annotators * n_labels
    idx = np.int32 if max(n_cells, item.size) < 2**31 - 1 else np.int64
    cols = annotator.astype(idx) * idx(n_labels)
    cols += label.astype(idx, copy=False)
    data = np.ones(item.size) if weight is None else weight
    if item.size > 1 and np.any(item[1:] < item[:-1]):
        order = np.argsort(item, kind="stable")
        item, cols, data = item[order], cols[order], data[order]
    indptr = np.zeros(n_items + 1, dtype=idx)
    np.cumsum(np.bincount(item, minlength=n_items), out=indptr[1:])
    return sp.csr_matrix((data, cols, indptr), shape=(n_items, n_cells))
