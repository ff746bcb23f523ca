"""Tests for budgeted selection (quality × coverage greedy, reason ``budget``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.selection import (
    BUDGET,
    SelectConfig,
    mean_max_similarity,
    resolve_budget,
    select_pairs_budget,
)
from schemas.errors import PrefcurateError
from schemas.tables import DROPPED, PAIRS, check_table

PROPS = settings(max_examples=40, deadline=None)


def pairs_table(
    prompts: list[str], weight: list[float | None], margin: list[float | None]
) -> pa.Table:
    n = len(prompts)
    rows = [
        dict(
            pair_id=f"q{i:03d}",
            prompt_id=p,
            source_id="s",
            chosen_id=f"c{i}",
            rejected_id=f"r{i}",
            p_hat=0.8,
            disagreement=0.4,
            n_votes=3,
            margin=m,
            weight=w,
            label_status="agree",
            similarity=None,
            flags=[],
            decision="keep",
            reason=None,
            score_chosen=None,
            score_rejected=None,
            curriculum_stage=None,
            split=None,
        )
        for i, (p, w, m) in enumerate(zip(prompts, weight, margin))
    ]
    return pa.Table.from_pylist(rows, schema=PAIRS) if n else PAIRS.empty_table()


def emb_table(emb: dict[str, np.ndarray]) -> pa.Table:
    ids = list(emb)
    mat = np.stack([emb[i] for i in ids]).astype(np.float32)
    return pa.table(
        {
            "prompt_id": ids,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(mat.reshape(-1), pa.float32()), mat.shape[1]
            ),
        }
    )


def accounted(res, pairs: pa.Table):
    c = res.counts
    kept = res.outputs["pairs"]
    check_table(kept, PAIRS, "pairs")
    check_table(res.dropped, DROPPED, "dropped")
    assert c.rows_in == pairs.num_rows == c.kept + sum(c.dropped.values())
    assert kept.num_rows == c.kept and res.dropped.num_rows == sum(c.dropped.values())
    assert set(res.dropped.column("reason").to_pylist()) <= {BUDGET}
    kept_ids = kept.column("pair_id").to_pylist()
    drop_ids = res.dropped.column("row_id").to_pylist()
    ids = pairs.column("pair_id").to_pylist()
    assert sorted(kept_ids + drop_ids) == sorted(ids) and not set(kept_ids) & set(drop_ids)
    assert kept_ids == [i for i in ids if i in set(kept_ids)]  # input order kept
    return kept_ids


def clustered(seed: int = 0, per_cluster: int = 6, dim: int = 8):
    """Three far-apart prompt clusters; cluster A has all the high-quality pairs."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3] * 10
    prompts, emb, weight, margin = [], {}, [], []
    for c, name in enumerate("ABC"):
        for j in range(per_cluster):
            pid = f"{name}{j}"
            emb[pid] = centres[c] + 0.05 * rng.normal(size=dim)
            prompts.append(pid)
            weight.append(0.9)
            margin.append((3.0 if name == "A" else 0.3) + 0.01 * j)
    return prompts, emb, weight, margin


# ------------------------------------------------------------------------------ budget


@pytest.mark.parametrize(
    "budget, expected",
    [(None, 10), (0, 0), (3, 3), (10, 10), (25, 10), (0.3, 3), (1.0, 10), (0.04, 0), (0.06, 1)],
)
def test_resolve_budget(budget, expected):
    assert resolve_budget(budget, 10) == expected


@pytest.mark.parametrize("bad", [1.5, -1, True, 0.0])
def test_bad_budgets(bad):
    with pytest.raises((ValidationError, PrefcurateError)):
        SelectConfig(budget=bad)
    with pytest.raises(PrefcurateError):
        resolve_budget(bad, 10)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        SelectConfig(budgte=3)
    assert SelectConfig(budget=3).budget == 3 and isinstance(SelectConfig(budget=3).budget, int)
    assert isinstance(SelectConfig(budget=0.3).budget, float)


@pytest.mark.parametrize("budget", [4, 0.5, 0, None, 100])
def test_respects_budget_and_drops_with_reason(budget):
    prompts, emb, w, m = clustered()
    pairs = pairs_table(prompts, w, m)
    res = select_pairs_budget(pairs, emb, SelectConfig(budget=budget))
    kept = accounted(res, pairs)
    assert len(kept) == resolve_budget(budget, pairs.num_rows)
    assert res.counts.dropped == ({BUDGET: 18 - len(kept)} if len(kept) < 18 else {})
    if len(kept) < 18:
        d = res.dropped.to_pylist()[0]
        assert d["stage"] == "select" and d["detail"].startswith("weight*margin=")


def test_budget_argument_overrides_config():
    prompts, emb, w, m = clustered()
    res = select_pairs_budget(pairs_table(prompts, w, m), emb, SelectConfig(budget=2), budget=5)
    assert res.counts.kept == 5 and res.info["budget"] == 5


def test_prefers_weight_times_margin_within_a_cluster():
    rng = np.random.default_rng(1)
    centre = rng.normal(size=8)
    prompts = [f"p{i}" for i in range(12)]
    emb = {p: centre + 1e-3 * rng.normal(size=8) for p in prompts}
    w = rng.uniform(0.3, 1.0, 12).tolist()
    m = rng.uniform(0.0, 4.0, 12).tolist()
    pairs = pairs_table(prompts, w, m)
    res = select_pairs_budget(pairs, emb, SelectConfig(budget=4))
    kept = accounted(res, pairs)
    top = np.argsort(-np.array(w) * np.array(m))[:4]
    assert sorted(kept) == sorted(f"q{i:03d}" for i in top)
    assert res.info["quality_after"] > res.info["quality_before"]


def test_covers_distinct_clusters():
    prompts, emb, w, m = clustered()
    pairs = pairs_table(prompts, w, m)
    cov = select_pairs_budget(pairs, emb, SelectConfig(budget=3, coverage_tradeoff=0.5))
    kept = accounted(cov, pairs)
    names = [prompts[int(k[1:])] for k in kept]
    assert sorted(n[0] for n in names) == ["A", "B", "C"]  # one per cluster
    assert "A5" in names and "B5" in names and "C5" in names  # the best pair of each
    qual = select_pairs_budget(pairs, emb, SelectConfig(budget=3, coverage_tradeoff=0.0))
    qnames = [prompts[int(k[1:])] for k in accounted(qual, pairs)]
    assert sorted(qnames) == ["A3", "A4", "A5"]
    assert cov.info["coverage_after"] > qual.info["coverage_after"] + 0.3
    assert qual.info["quality_after"] > cov.info["quality_after"]
    assert cov.info["coverage_before"] == pytest.approx(1.0)
    assert cov.info["prompts_after"] == 3 and cov.info["prompts_before"] == 18


def test_pairs_of_one_prompt_share_its_coverage():
    # prompt X has 3 great pairs, Y one weak pair far away: with coverage on, Y gets in
    emb = {"X": np.array([1.0, 0.0]), "Y": np.array([0.0, 1.0])}
    pairs = pairs_table(["X", "X", "X", "Y"], [1.0, 1.0, 1.0, 0.9], [3.0, 2.9, 2.8, 0.2])
    kept = accounted(select_pairs_budget(pairs, emb, SelectConfig(budget=2)), pairs)
    assert kept == ["q000", "q003"]
    kept = accounted(select_pairs_budget(pairs, emb, SelectConfig(budget=3)), pairs)
    assert kept == ["q000", "q001", "q003"]


def test_null_quality_missing_embeddings_and_empty_input():
    emb = {"X": np.array([1.0, 0.0])}
    pairs = pairs_table(["X", "X", "Z"], [None, 0.9, 0.9], [2.0, None, 1.0])
    res = select_pairs_budget(pairs, emb, SelectConfig(budget=1, coverage_tradeoff=0.0))
    assert accounted(res, pairs) == ["q002"]  # null weight / margin count as 0
    assert res.info["prompts_without_embedding"] == 1
    empty = select_pairs_budget(pairs_table([], [], []), emb, SelectConfig(budget=0.5))
    assert empty.counts.rows_in == 0 and empty.outputs["pairs"].num_rows == 0
    none = select_pairs_budget(pairs, {}, SelectConfig(budget=2))
    assert none.counts.kept == 2 and none.info["method"] == "quality"


def test_accepts_an_embedding_table():
    prompts, emb, w, m = clustered()
    pairs = pairs_table(prompts, w, m)
    a = select_pairs_budget(pairs, emb, SelectConfig(budget=4))
    b = select_pairs_budget(pairs, emb_table(emb), SelectConfig(budget=4))
    assert a.outputs["pairs"].equals(b.outputs["pairs"])


# ------------------------------------------------------------------------------ exactness


def naive_greedy(q, prompt_of, u, budget, alpha):
    """Plain greedy on (1 − α)·q̃ + α·B/|U|·Σ_u Δ max sim⁺ (clients = all prompts)."""
    qt = q / q.max() if q.max() > 0 else q
    sims = np.maximum(u @ u.T, 0.0).astype(np.float64)  # prompt × client (float32 as in use)
    cur = np.zeros(len(u))
    coef = alpha * budget / len(u)
    chosen: list[int] = []
    for _ in range(budget):
        best, best_g = None, -np.inf
        for i in range(len(q)):
            if i in chosen:
                continue
            g = (1 - alpha) * qt[i] + coef * np.maximum(sims[prompt_of[i]] - cur, 0).sum()
            if g > best_g:
                best, best_g = i, g
        chosen.append(best)
        cur = np.maximum(cur, sims[prompt_of[best]])
    return sorted(chosen)


@PROPS
@given(
    seed=st.integers(0, 10_000),
    n_prompts=st.integers(1, 8),
    n_pairs=st.integers(1, 25),
    budget=st.integers(0, 25),
    alpha=st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]),
)
@example(seed=0, n_prompts=1, n_pairs=1, budget=1, alpha=0.5)
def test_lazy_greedy_matches_plain_greedy(seed, n_prompts, n_pairs, budget, alpha):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n_prompts, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    prompt_of = np.sort(rng.integers(0, n_prompts, n_pairs))
    w, m = rng.uniform(0.2, 1, n_pairs), rng.uniform(0, 4, n_pairs)
    pids = [f"p{i}" for i in range(n_prompts)]
    pairs = pairs_table([pids[i] for i in prompt_of], w.tolist(), m.tolist())
    res = select_pairs_budget(
        pairs,
        {p: u[i] for i, p in enumerate(pids)},
        SelectConfig(budget=budget, coverage_tradeoff=alpha),
    )
    kept = accounted(res, pairs)
    b = min(budget, n_pairs)
    assert len(kept) == b
    if 0 < b < n_pairs and alpha < 1:  # alpha = 1: ties on coverage, broken by quality
        u32 = u.astype(np.float32)
        u32 /= np.linalg.norm(u32, axis=1, keepdims=True)
        assert sorted(int(k[1:]) for k in kept) == naive_greedy(w * m, prompt_of, u32, b, alpha)


# ------------------------------------------------------------------------------ scale


def test_large_input_uses_centroids_and_reports():
    rng = np.random.default_rng(0)
    n_p, dim = 3000, 16
    centres = rng.normal(size=(20, dim)) * 3
    e = centres[rng.integers(0, 20, n_p)] + rng.normal(size=(n_p, dim))
    pids = [f"p{i}" for i in range(n_p)]
    prompts = [pids[i] for i in rng.integers(0, n_p, 6000)]
    pairs = pairs_table(
        prompts, rng.uniform(0.3, 1, 6000).tolist(), rng.uniform(0, 4, 6000).tolist()
    )
    res = select_pairs_budget(
        pairs,
        dict(zip(pids, e)),
        SelectConfig(budget=0.3, clusters=32, neighbours=8, coverage_sample=500),
    )
    accounted(res, pairs)
    i = res.info
    assert res.counts.kept == 1800 and i["clients"] == {"kind": "kmeans", "n": 32}
    assert i["quality_after"] > i["quality_before"]
    assert 0 < i["coverage_after"] <= i["coverage_before"] <= 1 + 1e-6
    assert i["coverage_sample"] == 500 and i["method"] == "greedy"


def test_mean_max_similarity():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert mean_max_similarity(q, q[:1]) == pytest.approx(0.5)
    assert mean_max_similarity(q, q[:1], self_hit=np.array([True, False])) == pytest.approx(0.5)
    assert mean_max_similarity(q, q[:0]) == 0.0
