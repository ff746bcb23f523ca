"""Budgeted selection: cut a pair set to a budget, keeping confident, high-margin pairs
while covering the prompt space (issue 8; in the spirit of Align2LLaVA's 158k → 14k).

Input: PAIRS (after denoise / build pairs) and the embed stage's ``prompt_embeddings``
(``prompt_id``, ``embedding``). Output: PAIRS, the selected rows in input order. Row unit:
one pair; ``in = kept + dropped``; every cut pair is dropped with reason ``budget``.

Objective, over sets S of B pairs (B = ``budget`` pairs, or a fraction of them), with
q_i = weight_i · margin_i (null → 0), q̃ = q / max q, U the prompt space (every prompt of
``prompt_embeddings``) and sim the cosine similarity of prompt embeddings:

    F(S) = (1 − α) · Σ_{i∈S} q̃_i / B  +  α · (1/|U|) Σ_{u∈U} max_{i∈S} sim(u, prompt_i)⁺

a modular quality term plus a facility-location coverage term, both on a [0, 1] scale;
α = ``coverage_tradeoff`` (0: the top-B pairs by weight × margin; 1: coverage first,
quality breaking ties). F is monotone submodular, so the greedy (run lazily, with a heap)
is within 1 − 1/e of the best set. Pairs of one prompt share its coverage: once one of a
prompt's pairs is in, its other pairs add quality only, best first.

Scale: when |U| > ``clusters`` the coverage term runs on ``clusters`` spherical k-means
centroids of U weighted by their sizes (a coreset), and each prompt keeps only its
``neighbours`` most similar centroids. 100k pairs at a fraction of 0.3 take a few seconds
on 2 cores (``python bench/gpm_eval.py --select-timing 100000`` measures it).

``info``: the budget, ``quality_before`` / ``quality_after`` (mean weight × margin of the
input / the kept pairs), ``coverage_before`` / ``coverage_after`` (mean over U — over a
seeded sample of ``coverage_sample`` prompts when U is larger — of the best cosine
similarity to a prompt with a pair in the input / in the selection), prompts with a pair
before / after, and timings.

>>> import pyarrow as pa
>>> from schemas.tables import PAIRS
>>> rows = [dict(pair_id=f"q{i}", prompt_id=p, source_id="s", chosen_id=f"c{i}",
...              rejected_id=f"r{i}", p_hat=0.9, disagreement=0.2, n_votes=4, margin=m,
...              weight=0.9, label_status="agree", similarity=None, flags=[],
...              decision="keep", reason=None, score_chosen=None, score_rejected=None,
...              curriculum_stage=None, split=None)
...         for i, (p, m) in enumerate([("x", 2.0), ("x", 0.5), ("y", 0.1)])]
>>> pairs = pa.Table.from_pylist(rows, schema=PAIRS)
>>> emb = {"x": np.array([1.0, 0.0]), "y": np.array([0.0, 1.0])}
>>> res = select_pairs_budget(pairs, emb, SelectConfig(budget=2))
>>> res.outputs["pairs"].column("pair_id").to_pylist(), res.counts.dropped
(['q0', 'q2'], {'budget': 1})
>>> select_pairs_budget(pairs, emb, SelectConfig(budget=2, coverage_tradeoff=0.0)
...                     ).outputs["pairs"].column("pair_id").to_pylist()
['q0', 'q1']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.coverage import greedy_select, kmeans, mean_max_similarity, prompt_space, sparse_sims
from pipeline.stage import Reason, StageCounts, StageResult
from schemas.config import SelectConfig
from schemas.errors import PrefcurateError
from schemas.tables import DROPPED, PAIRS, check_table

log = logging.getLogger("prefcurate.selection")

STAGE = "select"
STAGE_VERSION = 1
BUDGET = Reason.BUDGET.value  # drop reason: cut to meet the budget
#: The ``info`` figures that say what a selection did (the report and the benchmark show
#: these): quality, coverage and prompts with a pair, before and after.
SUMMARY_KEYS = (
    "quality_before",
    "quality_after",
    "coverage_before",
    "coverage_after",
    "prompts_before",
    "prompts_after",
)


def resolve_budget(budget: int | float | None, n: int) -> int:
    """Number of pairs to keep: all (None), min(budget, n) (int), round(budget·n) (float)."""
    if budget is None:
        return n
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise PrefcurateError(
            f"select: budget must be an int (pairs) or a float (fraction), got {budget!r}"
        )
    if isinstance(budget, (float, np.floating)):
        if not (0.0 < budget <= 1.0):
            raise PrefcurateError(
                f"select: a fractional budget must lie in (0, 1], got "
                f"{budget}; give an int for a number of pairs"
            )
        return min(n, int(round(float(budget) * n)))
    if budget < 0:
        raise PrefcurateError(f"select: budget must be >= 0 pairs, got {budget}")
    return min(n, int(budget))


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    """A float64 numpy copy of an Arrow column, nulls as NaN."""
    arr = col.combine_chunks().cast(pa.float64())
    return np.asarray(arr.fill_null(float("nan")).to_numpy(zero_copy_only=False), dtype=np.float64)


def select_pairs_budget(
    pairs: pa.Table,
    prompt_embeddings: pa.Table | Mapping[str, Any],
    cfg: SelectConfig | None = None,
    *,
    budget: int | float | None = None,
) -> StageResult:
    """Keep ``budget`` pairs maximising quality (weight × margin) plus prompt coverage.

    ``budget`` overrides ``cfg.budget`` (int: pairs, float in (0, 1]: fraction, None: all).
    See the module docstring for the objective, outputs and info.
    """
    cfg = cfg or SelectConfig()
    t0 = time.perf_counter()
    check_table(pairs, PAIRS, "pairs")
    n = pairs.num_rows
    b = resolve_budget(cfg.budget if budget is None else budget, n)
    weight = _floats(pairs.column("weight"))
    margin = _floats(pairs.column("margin"))
    q = np.nan_to_num(np.clip(weight, 0, None) * np.clip(margin, 0, None), nan=0.0)
    u_ids, u_emb, uniq, prompt_of, u_of, e, missing = _space(pairs, prompt_embeddings)
    alpha = float(cfg.coverage_tradeoff)
    info: dict[str, Any] = {
        "budget": b,
        "budget_config": cfg.budget if budget is None else budget,
        "coverage_tradeoff": alpha,
        "pairs_in": n,
        "prompts_in": len(uniq),
        "prompt_space": len(u_ids),
        "prompts_without_embedding": missing,
    }
    rng = np.random.default_rng(cfg.seed)
    t_sel = time.perf_counter()
    keep_idx = _choose(q, b, alpha, u_emb, e, prompt_of, len(uniq), cfg, rng, info)
    info["select_seconds"] = round(time.perf_counter() - t_sel, 3)
    keep = np.zeros(n, dtype=bool)
    keep[keep_idx] = True
    info.update(_before_after(q, keep, u_emb, u_of, prompt_of, len(uniq), cfg, rng))
    kept = pairs.filter(pa.array(keep))
    drop_idx = np.flatnonzero(~keep)
    dropped = _dropped(pairs, drop_idx, q)
    counts = StageCounts(
        rows_in=n, kept=int(keep.sum()), dropped={BUDGET: len(drop_idx)} if len(drop_idx) else {}
    )
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return StageResult(STAGE, {"pairs": kept}, counts, dropped, info=info)


def _dropped(pairs: pa.Table, idx: np.ndarray, q: np.ndarray) -> pa.Table:
    if not len(idx):
        return DROPPED.empty_table()
    take = pa.array(idx)
    m = len(idx)
    detail = pc.binary_join_element_wise(
        "weight*margin=", pc.cast(pa.array(np.round(q[idx], 4)), pa.string()), ""
    )
    return pa.Table.from_arrays(
        [
            pa.array([STAGE] * m, pa.string()),
            pairs.column("source_id").take(take).combine_chunks().cast(pa.string()),
            pairs.column("pair_id").take(take).combine_chunks().cast(pa.string()),
            pa.array([BUDGET] * m, pa.string()),
            detail,
        ],
        schema=DROPPED,
    )


def _space(pairs: pa.Table, prompt_embeddings: Any) -> tuple[Any, ...]:
    """The prompt space and the pairs' prompts in it: (space ids, space rows, the pairs'
    distinct prompts, each pair's prompt index, each prompt's space row or -1, each
    prompt's embedding (zeros without one), prompts without an embedding)."""
    n = pairs.num_rows
    u_ids, u_emb = prompt_space(prompt_embeddings)
    enc = pc.dictionary_encode(pairs.column("prompt_id").combine_chunks()) if n else None
    uniq = enc.dictionary.to_pylist() if n else []
    prompt_of = (
        enc.indices.to_numpy(zero_copy_only=False).astype(np.int64) if n else np.zeros(0, np.int64)
    )
    u_of = pc.index_in(
        pa.array(uniq, pa.string()), value_set=pa.array(u_ids, pa.string())
    ).to_numpy(zero_copy_only=False)
    u_of = np.nan_to_num(np.asarray(u_of, dtype=np.float64), nan=-1).astype(np.int64)
    have = u_of >= 0
    dim = u_emb.shape[1] if u_emb.size else 1
    e = np.zeros((len(uniq), dim), dtype=np.float32)
    e[have] = u_emb[u_of[have]]
    missing = int((~have).sum())
    if missing:
        log.warning(
            "select: %d prompt(s) of the pairs have no embedding; they count for quality only",
            missing,
        )
    return u_ids, u_emb, uniq, prompt_of, u_of, e, missing


def _choose(
    q: np.ndarray,
    b: int,
    alpha: float,
    u_emb: np.ndarray,
    e: np.ndarray,
    prompt_of: np.ndarray,
    n_prompts: int,
    cfg: SelectConfig,
    rng: np.random.Generator,
    info: dict[str, Any],
) -> np.ndarray:
    """The indices of the ``b`` pairs kept (all, none, the top by quality, or the greedy
    over quality and coverage); ``info`` gets the method and the greedy's figures."""
    n = len(q)
    if b >= n:
        keep_idx = np.arange(n)
        info["method"] = "all"
    elif b == 0:
        keep_idx = np.zeros(0, dtype=np.int64)
        info["method"] = "none"
    elif alpha == 0.0 or not len(u_emb):
        keep_idx = np.lexsort((np.arange(n), -q))[:b]
        info["method"] = "quality"
    else:
        qt = q / q.max() if q.max() > 0 else q
        if len(u_emb) <= cfg.clusters:
            clients, w_c = u_emb, np.ones(len(u_emb))
            info["clients"] = {"kind": "prompts", "n": len(u_emb)}
        else:
            clients = kmeans(u_emb, cfg.clusters, cfg.kmeans_iters, cfg.kmeans_sample, rng)
            assign = np.concatenate(
                [
                    np.argmax(u_emb[s : s + 8192] @ clients.T, axis=1)
                    for s in range(0, len(u_emb), 8192)
                ]
            )
            w_c = np.bincount(assign, minlength=len(clients)).astype(np.float64)
            info["clients"] = {"kind": "kmeans", "n": len(clients)}
        nbr, val = sparse_sims(e, clients, cfg.neighbours)
        coef = alpha * b / len(u_emb)
        keep_idx, info["greedy"] = greedy_select(
            qt, prompt_of, n_prompts, nbr, val, w_c, b, alpha, coef
        )
        info["method"] = "greedy"
    return keep_idx


def _before_after(
    q: np.ndarray,
    keep: np.ndarray,
    u_emb: np.ndarray,
    u_of: np.ndarray,
    prompt_of: np.ndarray,
    n_prompts: int,
    cfg: SelectConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Quality, coverage and prompts with a pair, of the input and of the selection."""
    n, n_space = len(q), len(u_emb)
    q_rows = (
        np.arange(n_space)
        if n_space <= cfg.coverage_sample
        else np.sort(rng.choice(n_space, cfg.coverage_sample, replace=False))
    )
    queries = u_emb[q_rows]
    sel_prompts = np.unique(prompt_of[keep])
    sel_u = np.zeros(n_space, dtype=bool)
    sel_u[u_of[sel_prompts][u_of[sel_prompts] >= 0]] = True
    all_u = np.zeros(n_space, dtype=bool)
    all_u[u_of[u_of >= 0]] = True
    return dict(
        quality_before=float(q.mean()) if n else None,
        quality_after=float(q[keep].mean()) if keep.any() else None,
        coverage_before=mean_max_similarity(queries, u_emb[all_u], self_hit=all_u[q_rows])
        if n_space
        else None,
        coverage_after=mean_max_similarity(queries, u_emb[sel_u], self_hit=sel_u[q_rows])
        if n_space
        else None,
        coverage_sample=len(queries),
        prompts_before=n_prompts,
        prompts_after=int(len(sel_prompts)),
    )
