"""GPM vs Bradley–Terry on cyclic preferences, budgeted selection and active judging.

Part (a), cyclic set (rock–paper–scissors). Every prompt has three candidates, one of
each kind; the truth is cyclic: paper ≻ rock, scissors ≻ paper, rock ≻ scissors. A
response's embedding encodes its kind: e = kind vector + 0.5·e(prompt) + noise (d = 16),
so half of it is the prompt's topic, as in real sentence embeddings. Labels come from a
simulated panel: 4 votes per pair, each right with probability 0.85, turned into the
pipeline's soft label p̂ = (n_a + ½) / (4 + 1) (Jeffreys). GPM and BT heads are trained on
the training prompts and scored on held-out prompts against the truth. A BT head gives
each candidate one score, so on every prompt at least one of the three pairs is wrong:
≤ 2/3 by construction. The GPM stage is also run end to end (simulated votes →
``aggregate_votes`` → ``annotate_gpm`` with 2-fold cross-fitting): out-of-fold accuracy of
its ``gpm`` votes, and the share of prompts flagged ``cyclic`` from the GPM and from the
panel.

Part (b), noisy simulation and budgeted selection. Synthetic data run through the real
stages — votes → ``aggregate_votes`` (majority) → ``compute_margins`` → ``denoise_pairs``
(LCPO confidence weights, contradicted pairs kept) — so ``weight`` and ``margin`` are
what the pipeline would produce:

- prompts in 16 clusters (embedding = cluster centre + noise, d = 32); each cluster has
  its own quality direction u_c (a shared part plus a cluster-specific part);
- 4 candidates per prompt with latent quality q ~ N(0, 1), embedding
  0.5·e(prompt) + q·u_c + 0.7·noise;
- every pair of a prompt's candidates judged by 3 judges in both orders; a judge is right
  with probability σ(κ·|Δq|), κ calibrated for a mean accuracy of 0.72 (half of the
  clusters are "hard": κ × 0.35), one judge answers by position 20% of the time. The
  panel's majority orients each pair: ~20% of the training labels are wrong (printed);
- 75% of the prompts give the training pairs (the pipeline's PAIRS), 25% are held out:
  all their pairs, oriented by the true quality (clean), are the test set.

A BT head (MLP on response + prompt embeddings, hard labels chosen ≻ rejected) is trained
on all training pairs, on the 30% chosen by ``select_pairs_budget`` (α = 0.5), on a
random 30% and, as an ablation, on the top 30% by weight × margin alone (α = 0); it is
scored on the held-out clean pairs. Several seeds.

Part (c) (``--select-timing N``): ``select_pairs_budget`` on N pairs with 384-d prompt
embeddings (N/4 prompts in 50 clusters), fraction 0.3, timed.

Part (d) (``--active``; also in the default run, ~15 s): active judging with
``select_uncertain_pairs`` at an equal judge budget. Part (b)'s world with K = 5
candidates (10 pairs) per prompt, 400 prompts, no held-out prompts; part (b)'s panel
(3 judges × 2 orders = 6 calls per judged pair, κ calibrated on all pairs for a mean
call accuracy of 0.72, hard clusters κ × 0.35, one judge by position 20% of the time),
each pair's calls drawn once so that every strategy reads the same votes for a pair it
judges; votes go through the real ``aggregate_votes`` (majority). Budget 4 pairs (24
calls) per prompt: (1) ``random``: 4 random pairs; (2) ``active``: the first 2 of the
same random order (round 1), then ``select_uncertain_pairs`` (a GPM head trained on
round 1's comparisons) picks 2 more; ``all``: the 10 pairs (60 calls), for reference.
Final preference on all 10 pairs: the panel's aggregated p_a where judged, else the P of
a GPM head trained on every judged comparison (``annotate_gpm`` with one fold). Reported
per seed: pair accuracy against the true quality, the accuracy of each prompt's
best–worst pair (argmax / argmin of the summed P(c ≻ other)), top-1 (the argmax is the
truly best candidate), the GPM's accuracy on the unjudged pairs, and for the round-2
pairs (judged beyond the 2 shared seed pairs) their true |Δq|, the panel's accuracy and
the round-1 head's accuracy (what leaving them unjudged would have given); then the gain
over the round-1 head alone split into judging round 2 and retraining the head on it.

Result (5 seeds, ``python bench/gpm_eval.py --active``): no measurable gain with this
panel. Pair accuracy 0.738 active vs 0.734 random (+0.005; per-seed sd 0.003 / 0.007;
0.735 with all 10 pairs judged); best–worst accuracy 0.903 vs 0.916 (−0.012, active worse
in 4 of 5 seeds); top-1 0.546 vs 0.555. The selection itself works: round-2 pairs have
true |Δq| 0.92 vs 1.12, and on them the round-1 head is right only 0.549 (0.682 on random
ones), so judging them buys three times as much (+0.031 of pair accuracy vs +0.010). The
gain is given back when the head is retrained: close pairs get the least reliable labels
(a call is right with probability σ(κ|Δq|): panel 0.704 on active's round-2 pairs, 0.732
on random ones) and make a worse training set for the head, whose accuracy on the
unjudged pairs retraining lifts by +0.017 (0.724 → 0.752) after active picks vs +0.034
(0.679 → 0.735) after random ones. Net +0.048 vs +0.043. Best–worst suffers for the same
reason: a prompt's extremes are set by its large-gap pairs, which random sampling puts in
front of the panel (right 0.88–0.92 on pairs with |Δq| ≥ 1.5, seed 0) and active sampling
leaves to the GPM. With a stronger, uniform judge (``--judge-accuracy 0.85 --hard-factor
1``: panel 0.91) active selection pays: pair accuracy 0.863 vs 0.848 (+0.015, 4 of 5
seeds), top-1 0.745 vs 0.728, best–worst 0.994 vs 0.993 (both near 1); judging round 2
gives +0.053 vs +0.028 and retraining +0.013 vs +0.023. Active judging helps as far as
the judges are reliable on close pairs; its cost is a worse training set for the head
that fills in the rest.

Usage::

    python bench/gpm_eval.py [--seeds 0 1 2 3 4] [--prompts 1200]
    python bench/gpm_eval.py --select-timing 100000
    python bench/gpm_eval.py --active [--budget 4] [--seed-pairs 2] [--judge-accuracy 0.72]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.noise_eval import calibrate  # noqa: E402
from pipeline.aggregate.aggregation import aggregate_votes  # noqa: E402
from pipeline.denoise.denoise import denoise_pairs  # noqa: E402
from pipeline.denoise.weights import sigmoid  # noqa: E402
from pipeline.gpm.annotate import annotate_gpm, select_uncertain_pairs  # noqa: E402
from pipeline.gpm.model import BTConfig  # noqa: E402
from pipeline.gpm.train import train_bt, train_gpm  # noqa: E402
from pipeline.margins import compute_margins  # noqa: E402
from pipeline.selection import SUMMARY_KEYS, SelectConfig, select_pairs_budget  # noqa: E402
from schemas.config import (  # noqa: E402
    DenoiseConfig,
    GPMConfig,  # noqa: E402
    MarginConfig,
)
from schemas.tables import PAIRS, VOTES  # noqa: E402

KINDS = ("rock", "paper", "scissors")
# (i, j, P(i ≻ j)) for the three pairs of a prompt's candidates, in kind order
RPS_PAIRS = ((0, 1, 0.0), (1, 2, 0.0), (0, 2, 1.0))  # paper>rock, scissors>paper, rock>scissors


def _emb_table(ids: list[str], mat: np.ndarray, id_column: str) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(mat, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table(
        {
            id_column: pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]),
        }
    )


# ------------------------------------------------------------------------------ (a) cyclic


def make_cyclic_set(
    n_prompts: int,
    *,
    dim: int = 16,
    noise: float = 0.3,
    topic: float = 0.5,
    votes: int = 4,
    judge_accuracy: float = 0.85,
    seed: int = 0,
    kinds_seed: int = 12345,
) -> dict[str, Any]:
    """Rock–paper–scissors prompts: per pair (prompt_emb, emb_a, emb_b, p_true, p_hat).

    The kind vectors come from ``kinds_seed`` (shared by train and test sets); prompts,
    noise and votes from ``seed``. ``emb`` (n_prompts × 3 × dim) holds the candidates in
    kind order.
    """
    kinds = np.random.default_rng(kinds_seed).normal(size=(3, dim))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_prompts, dim))
    emb = kinds[None] + topic * x[:, None, :] + noise * rng.normal(size=(n_prompts, 3, dim))
    ia = np.array([p[0] for p in RPS_PAIRS])
    ib = np.array([p[1] for p in RPS_PAIRS])
    truth = np.tile(np.array([p[2] for p in RPS_PAIRS]), n_prompts)
    right = rng.random((len(truth), votes)) < judge_accuracy
    n_a = np.where(truth[:, None] == 1.0, right, ~right).sum(axis=1)
    p_hat = (n_a + 0.5) / (votes + 1.0)
    return {
        "prompt": np.repeat(x, 3, axis=0).astype(np.float32),
        "a": emb[:, ia].reshape(-1, dim).astype(np.float32),
        "b": emb[:, ib].reshape(-1, dim).astype(np.float32),
        "truth": truth,
        "p_hat": p_hat,
        "x": x.astype(np.float32),
        "emb": emb.astype(np.float32),
    }


def cyclic_accuracy(
    n_train: int = 300,
    n_test: int = 300,
    seed: int = 0,
    gpm_cfg: GPMConfig | None = None,
    bt_cfg: BTConfig | None = None,
) -> dict[str, float]:
    """Held-out pair accuracy (vs the cyclic truth) of a GPM and a BT head."""
    tr = make_cyclic_set(n_train, seed=seed)
    te = make_cyclic_set(n_test, seed=seed + 1000)
    gpm = train_gpm(
        tr["prompt"], tr["a"], tr["b"], tr["p_hat"], gpm_cfg or GPMConfig(epochs=20, seed=seed)
    )
    bt = train_bt(
        tr["prompt"], tr["a"], tr["b"], tr["p_hat"], bt_cfg or BTConfig(epochs=20, seed=seed)
    )
    truth = te["truth"] > 0.5
    acc_g = float(((gpm.score_pairs(te["prompt"], te["a"], te["b"]) > 0.5) == truth).mean())
    acc_b = float(((bt.score_pairs(te["prompt"], te["a"], te["b"]) > 0.5) == truth).mean())
    return {
        "gpm": acc_g,
        "bt": acc_b,
        "gpm_seconds": gpm.info["seconds"],
        "bt_seconds": bt.info["seconds"],
    }


def cyclic_stage(n_prompts: int = 400, seed: int = 0) -> dict[str, float]:
    """End to end: simulated votes → aggregate → annotate_gpm (2 folds); accuracy of the
    out-of-fold gpm votes against the truth and the share of prompts flagged cyclic."""
    s = make_cyclic_set(n_prompts, seed=seed, votes=4)
    rng = np.random.default_rng(seed + 7)
    pids = [f"p{i:05d}" for i in range(n_prompts)]
    cids = [[f"{p}_{k}" for k in KINDS] for p in pids]  # kind order; ids sort in that order
    rows: dict[str, list] = {c: [] for c in VOTES.names}
    truth: dict[tuple[str, str], bool] = {}
    for i, p in enumerate(pids):
        for a, b, pa_true in RPS_PAIRS:
            ca, cb = sorted((cids[i][a], cids[i][b]))
            a_wins = (pa_true == 1.0) == (ca == cids[i][a])
            truth[(ca, cb)] = a_wins
            for j in range(4):
                right = rng.random() < 0.85
                rows["prompt_id"].append(p)
                rows["source_id"].append("sim")
                rows["candidate_a"].append(ca)
                rows["candidate_b"].append(cb)
                rows["annotator"].append(f"judge{j}")
                rows["order"].append(None)
                rows["verdict"].append("a" if right == a_wins else "b")
                rows["prob_a"].append(None)
                rows["raw_output"].append(None)
                rows["parse_error"].append(None)
    votes = pa.Table.from_pydict(rows, schema=VOTES)
    comps = aggregate_votes(votes).outputs["comparisons"]
    cands = pa.table(
        {
            "prompt_id": [p for p in pids for _ in KINDS],
            "source_id": ["sim"] * (3 * n_prompts),
            "candidate_id": [c for row in cids for c in row],
        }
    )
    c_emb = _emb_table(
        [c for row in cids for c in row], s["emb"].reshape(-1, s["emb"].shape[2]), "candidate_id"
    )
    p_emb = _emb_table(pids, s["x"], "prompt_id")
    res = annotate_gpm(comps, cands, c_emb, p_emb, GPMConfig(enabled=True, epochs=20, seed=seed))
    v = res.outputs["votes"].to_pylist()
    acc = float(
        np.mean([(r["prob_a"] > 0.5) == truth[(r["candidate_a"], r["candidate_b"])] for r in v])
    )
    cyc = res.info["cyclic"]
    return {
        "stage_gpm_oof": acc,
        "cyclic_gpm": cyc["prompts_gpm"] / n_prompts,
        "cyclic_panel": cyc["prompts_panel"] / n_prompts,
        "stage_seconds": res.info["seconds"],
    }


# ------------------------------------------------------------------------------ (b) budget


def simulate_world(
    n_prompts: int, rng: np.random.Generator, *, clusters: int = 16, k: int = 4, dim: int = 32
) -> dict[str, Any]:
    """Prompts in clusters, k candidates each with latent quality q ~ N(0, 1) and an
    embedding that carries it along the cluster's quality direction (module docstring,
    part b): ``x`` (prompts × dim), ``q`` (prompts × k), ``emb`` (prompts × k × dim),
    ``cl`` (cluster of each prompt), ``hard`` (per cluster), ids ``pids`` / ``cids``."""
    centres = 2.0 * rng.normal(size=(clusters, dim))
    u0 = rng.normal(size=dim)
    u = u0 + 1.5 * rng.normal(size=(clusters, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    hard = np.zeros(clusters, dtype=bool)
    hard[rng.permutation(clusters)[: clusters // 2]] = True
    cl = rng.integers(0, clusters, n_prompts)
    x = centres[cl] + 0.7 * rng.normal(size=(n_prompts, dim))
    q = rng.normal(size=(n_prompts, k))
    emb = (
        0.5 * x[:, None, :]
        + q[:, :, None] * 1.5 * u[cl][:, None, :]
        + 0.7 * rng.normal(size=(n_prompts, k, dim))
    )
    pids = np.array([f"p{i:05d}" for i in range(n_prompts)])
    cids = np.array([[f"p{i:05d}_{j}" for j in range(k)] for i in range(n_prompts)])
    return {"x": x, "q": q, "emb": emb, "cl": cl, "hard": hard, "pids": pids, "cids": cids}


def panel_votes(
    world: dict[str, Any],
    P: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    kap: np.ndarray,
    rng: np.random.Generator,
    biases: tuple[float, ...] = (0.0, 0.0, 0.2),
) -> pa.Table:
    """VOTES of a simulated panel on the pairs (prompt P, candidates A, B): one judge per
    entry of ``biases``, each in both orders, right with probability σ(kap·|Δq|) and
    answering by position with probability ``bias``."""
    q, pids, cids = world["q"], world["pids"], world["cids"]
    gap = np.abs(q[P, A] - q[P, B])
    a_better = q[P, A] > q[P, B]
    cols: dict[str, list] = {c: [] for c in VOTES.names}
    n = len(P)
    for j, bias in enumerate(biases):
        for order in ("ab", "ba"):
            right = rng.random(n) < sigmoid(kap * gap)
            says_a = right == a_better
            first = rng.random(n) < bias
            says_a = np.where(first, order == "ab", says_a)
            cols["prompt_id"].extend(pids[P])
            cols["source_id"].extend(["sim"] * n)
            cols["candidate_a"].extend(cids[P, A])
            cols["candidate_b"].extend(cids[P, B])
            cols["annotator"].extend([f"judge{j}|{order}"] * n)
            cols["order"].extend([order] * n)
            cols["verdict"].extend(np.where(says_a, "a", "b").tolist())
            cols["prob_a"].extend([None] * n)
            cols["raw_output"].extend([None] * n)
            cols["parse_error"].extend([None] * n)
    return pa.Table.from_pydict(cols, schema=VOTES)


def simulate_pairs(
    n_prompts: int,
    seed: int,
    *,
    clusters: int = 16,
    k: int = 4,
    dim: int = 32,
    judge_accuracy: float = 0.72,
    hard_factor: float = 0.35,
    held_out: float = 0.25,
) -> dict[str, Any]:
    """Noisy pipeline pairs (real stages) + clean held-out pairs; see the module docstring."""
    rng = np.random.default_rng(seed)
    world = simulate_world(n_prompts, rng, clusters=clusters, k=k, dim=dim)
    x, q, emb, cl, hard = (world[c] for c in ("x", "q", "emb", "cl", "hard"))
    pids, cids = world["pids"], world["cids"]
    test = np.zeros(n_prompts, dtype=bool)
    test[rng.permutation(n_prompts)[: int(round(held_out * n_prompts))]] = True
    ii, jj = np.triu_indices(k, 1)
    # training pairs: every pair of every training prompt's candidates, judged by a panel
    tr = np.flatnonzero(~test)
    P, Ix = np.meshgrid(tr, np.arange(len(ii)), indexing="ij")
    P, A, B = P.reshape(-1), ii[Ix.reshape(-1)], jj[Ix.reshape(-1)]
    kappa = calibrate(np.abs(q[P, A] - q[P, B]), judge_accuracy)
    kap = kappa * np.where(hard[cl[P]], hard_factor, 1.0)
    votes = panel_votes(world, P, A, B, kap, rng)
    mcfg = MarginConfig()
    agg = aggregate_votes(votes)
    pairs = compute_margins(agg.outputs["comparisons"], agg.outputs["scores"], mcfg).outputs[
        "pairs"
    ]
    den = denoise_pairs(pairs, DenoiseConfig(confidence_weights=True, on_contradicted="keep"), mcfg)
    pairs = den.outputs["pairs"]
    row = {c: (i, j) for i in range(n_prompts) for j, c in enumerate(cids[i])}
    qual = {c: q[i, j] for c, (i, j) in row.items()}
    ch = pairs.column("chosen_id").to_pylist()
    rj = pairs.column("rejected_id").to_pylist()
    noisy = np.array([qual[a] < qual[b] for a, b in zip(ch, rj)])
    # held-out clean pairs: better first
    te = np.flatnonzero(test)
    Pt, It = np.meshgrid(te, np.arange(len(ii)), indexing="ij")
    Pt, At, Bt = Pt.reshape(-1), ii[It.reshape(-1)], jj[It.reshape(-1)]
    better = np.where(q[Pt, At] > q[Pt, Bt], At, Bt)
    worse = np.where(q[Pt, At] > q[Pt, Bt], Bt, At)
    return {
        "pairs": pairs,
        "prompt_emb": _emb_table(pids.tolist(), x, "prompt_id"),
        "x": x.astype(np.float32),
        "emb": emb.astype(np.float32),
        "row": row,
        "prompt_row": {p: i for i, p in enumerate(pids)},
        "label_noise": float(noisy.mean()),
        "test": (
            x[Pt].astype(np.float32),
            emb[Pt, better].astype(np.float32),
            emb[Pt, worse].astype(np.float32),
        ),
        "denoise": {k: v for k, v in den.counts.to_dict().items() if k != "quarantined"},
    }


def _bt_accuracy(sim: dict[str, Any], pairs: pa.Table, seed: int) -> float:
    row, prow, emb, x = sim["row"], sim["prompt_row"], sim["emb"], sim["x"]
    ch = [row[c] for c in pairs.column("chosen_id").to_pylist()]
    rj = [row[c] for c in pairs.column("rejected_id").to_pylist()]
    pr = [prow[p] for p in pairs.column("prompt_id").to_pylist()]
    ec = emb[tuple(np.array(ch).T)]
    er = emb[tuple(np.array(rj).T)]
    bt = train_bt(
        x[pr], ec, er, np.ones(len(ch)), BTConfig(hidden=64, input_dims=None, epochs=30, seed=seed)
    )
    xp, eb, ew = sim["test"]
    return float((bt.score_pairs(xp, eb, ew) > 0.5).mean())


def budget_eval(seed: int, n_prompts: int, fraction: float = 0.3) -> dict[str, Any]:
    sim = simulate_pairs(n_prompts, seed)
    pairs = sim["pairs"]
    n = pairs.num_rows
    b = int(round(fraction * n))
    sel = select_pairs_budget(pairs, sim["prompt_emb"], SelectConfig(budget=fraction, seed=seed))
    qual = select_pairs_budget(
        pairs, sim["prompt_emb"], SelectConfig(budget=fraction, coverage_tradeoff=0.0, seed=seed)
    )
    rnd = pairs.take(pa.array(np.sort(np.random.default_rng(seed + 99).permutation(n)[:b])))
    out = {
        "seed": seed,
        "pairs": n,
        "label_noise": sim["label_noise"],
        "all": _bt_accuracy(sim, pairs, seed),
        "budget": _bt_accuracy(sim, sel.outputs["pairs"], seed),
        "random": _bt_accuracy(sim, rnd, seed),
        "quality_only": _bt_accuracy(sim, qual.outputs["pairs"], seed),
        "select": {k: sel.info[k] for k in (*SUMMARY_KEYS, "select_seconds")},
        "select_quality_only": {
            k: qual.info[k] for k in ("quality_after", "coverage_after", "prompts_after")
        },
    }
    return out


# ------------------------------------------------------------------------------ (d) active

STRATEGIES = ("random", "active", "all")


def _judged(votes: pa.Table, mask: np.ndarray) -> pa.Table:
    """The votes on the pairs of ``mask`` (prompts × pairs): vote row r is pair r mod N."""
    flat = mask.reshape(-1)
    return votes.filter(pa.array(np.tile(flat, votes.num_rows // len(flat))))


def _by_pair(
    table: pa.Table, column: str, pair_of: dict[tuple[str, str], int], n: int
) -> np.ndarray:
    """``column`` of COMPARISONS / VOTES rows laid out by pair index (NaN: no row / null)."""
    out = np.full(n, np.nan)
    for ca, cb, v in zip(
        *(table.column(c).to_pylist() for c in ("candidate_a", "candidate_b", column))
    ):
        out[pair_of[(ca, cb)]] = np.nan if v is None else v
    return out


def _accuracy(p: np.ndarray, truth: np.ndarray) -> float:
    """Share of pairs where P(a ≻ b) points to the truth; P = ½ counts one half."""
    return float(np.where(p == 0.5, 0.5, (p > 0.5) == truth).mean()) if p.size else float("nan")


def _final_preference(
    world: dict[str, Any],
    mask: np.ndarray,
    votes: pa.Table,
    tables: tuple[pa.Table, pa.Table, pa.Table],
    cfg: GPMConfig,
    pair_of: dict[tuple[str, str], int],
) -> dict[str, Any]:
    """Judge the pairs of ``mask``: judged pairs take the panel's aggregated p_a, the others
    the P of a GPM head trained on every judged comparison (``annotate_gpm``, one fold);
    accuracy against the true quality on all pairs and of each prompt's best–worst pair."""
    q = world["q"]
    n, m = mask.shape
    k = q.shape[1]
    ii, jj = np.triu_indices(k, 1)
    comps = aggregate_votes(_judged(votes, mask)).outputs["comparisons"]
    p = _by_pair(comps, "p_a", pair_of, n * m)
    if not mask.all():
        gpm = annotate_gpm(comps, *tables, cfg).outputs["votes"]
        p = np.where(mask.reshape(-1), p, _by_pair(gpm, "prob_a", pair_of, n * m))
    p = np.where(np.isnan(p), 0.5, p).reshape(n, m)  # no valid vote / no score: a tie
    truth = q[:, ii] > q[:, jj]
    gpm_acc = _accuracy(p[~mask], truth[~mask]) if not mask.all() else None
    win = np.zeros((n, k))  # summed P(c ≻ other): the win rate up to a constant
    np.add.at(win, (slice(None), ii), p)
    np.add.at(win, (slice(None), jj), 1.0 - p)
    rows = np.arange(n)
    best, worst = win.argmax(axis=1), win.argmin(axis=1)
    return {
        "pair_acc": _accuracy(p, truth),
        "judged_acc": _accuracy(p[mask], truth[mask]),
        "gpm_unjudged_acc": gpm_acc,
        "best_worst_acc": float((q[rows, best] > q[rows, worst]).mean()),
        "top1_acc": float((best == q.argmax(axis=1)).mean()),
        "pairs_judged": int(mask.sum()),
    }


def active_eval(
    seed: int,
    n_prompts: int = 400,
    *,
    k: int = 5,
    budget: int = 4,
    seed_pairs: int = 2,
    judge_accuracy: float = 0.72,
    hard_factor: float = 0.35,
    epochs: int = 30,
) -> dict[str, Any]:
    """Part (d): random ``budget`` pairs per prompt vs ``seed_pairs`` random pairs plus
    ``select_uncertain_pairs`` picks, at the same judge budget (module docstring)."""
    rng = np.random.default_rng(seed)
    world = simulate_world(n_prompts, rng, k=k)
    q, pids, cids = world["q"], world["pids"], world["cids"]
    ii, jj = np.triu_indices(k, 1)
    m = len(ii)
    P, A, B = np.repeat(np.arange(n_prompts), m), np.tile(ii, n_prompts), np.tile(jj, n_prompts)
    kappa = calibrate(np.abs(q[P, A] - q[P, B]), judge_accuracy)
    kap = kappa * np.where(world["hard"][world["cl"][P]], hard_factor, 1.0)
    # every pair's judge calls drawn once: a strategy reads the votes of the pairs it judges
    votes = panel_votes(world, P, A, B, kap, rng)
    calls_per_pair = votes.num_rows // len(P)
    pair_of = {
        (cids[i, a], cids[i, b]): i * m + t
        for i in range(n_prompts)
        for t, (a, b) in enumerate(zip(ii, jj))
    }
    cands = pa.table(
        {
            "prompt_id": np.repeat(pids, k).tolist(),
            "source_id": ["sim"] * (n_prompts * k),
            "candidate_id": cids.reshape(-1).tolist(),
        }
    )
    tables = (
        cands,
        _emb_table(
            cids.reshape(-1).tolist(), world["emb"].reshape(n_prompts * k, -1), "candidate_id"
        ),
        _emb_table(pids.tolist(), world["x"], "prompt_id"),
    )
    cfg = GPMConfig(enabled=True, epochs=epochs, seed=seed, folds=1)
    order = np.random.default_rng(seed + 1).permuted(np.tile(np.arange(m), (n_prompts, 1)), axis=1)
    first = np.zeros((n_prompts, m), dtype=bool)
    np.put_along_axis(first, order[:, :seed_pairs], True, axis=1)
    rand = np.zeros((n_prompts, m), dtype=bool)
    np.put_along_axis(rand, order[:, :budget], True, axis=1)
    t0 = time.perf_counter()
    round1 = aggregate_votes(_judged(votes, first)).outputs["comparisons"]
    chosen, _, sel_info = select_uncertain_pairs(
        round1, *tables, cfg, per_prompt=budget - seed_pairs
    )
    select_seconds = time.perf_counter() - t0
    active = first.copy()
    for _, _, a, b in chosen:
        f = pair_of[(a, b)]
        active[f // m, f % m] = True
    masks = {"random": rand, "active": active, "all": np.ones((n_prompts, m), dtype=bool)}
    out: dict[str, Any] = {
        "seed": seed,
        "prompts": n_prompts,
        "pairs_per_prompt": m,
        "kappa": kappa,
        "select_seconds": round(select_seconds, 2),
        "select": {
            key: sel_info[key]
            for key in (
                "selected",
                "skipped",
                "training_pairs",
                "train_accuracy",
                "mean_certainty_selected",
                "mean_certainty_skipped",
            )
        },
    }
    gap = np.abs(q[:, ii] - q[:, jj])
    truth = q[:, ii] > q[:, jj]
    panel_p = _by_pair(
        aggregate_votes(votes).outputs["comparisons"], "p_a", pair_of, n_prompts * m
    ).reshape(n_prompts, m)
    panel_right = np.where(panel_p == 0.5, 0.5, (panel_p > 0.5) == truth)
    # the round-1 head's own P (the head select_uncertain_pairs ranked with): the
    # counterfactual of leaving a round-2 pair unjudged
    head1 = _by_pair(
        annotate_gpm(round1, *tables, cfg).outputs["votes"], "prob_a", pair_of, n_prompts * m
    ).reshape(n_prompts, m)
    head1_right = np.where(np.isnan(head1) | (head1 == 0.5), 0.5, (head1 > 0.5) == truth)
    for name, mask in masks.items():
        r = _final_preference(world, mask, votes, tables, cfg, pair_of)
        r["calls_per_prompt"] = calls_per_pair * mask.sum() / n_prompts
        extra = mask & ~first  # round 2 (for "all": everything beyond the seed pairs)
        r["round2_gap"] = float(gap[extra].mean()) if extra.any() else float("nan")
        r["round2_panel_acc"] = float(panel_right[extra].mean()) if extra.any() else float("nan")
        r["round2_head1_acc"] = float(head1_right[extra].mean()) if extra.any() else float("nan")
        r["unjudged_head1_acc"] = float(head1_right[~mask].mean()) if (~mask).any() else None
        r["round2_pairs"] = float(extra.sum() / n_prompts)
        out[name] = r
    return out


def print_active(res: list[dict[str, Any]], budget: int, seed_pairs: int) -> None:
    r0 = res[0]
    m = r0["pairs_per_prompt"]
    print(
        f"(d) active judging: {r0['prompts']} prompts × {m} pairs, judge budget {budget} "
        f"pairs/prompt ({r0['random']['calls_per_prompt']:.0f} calls) — random {budget} vs "
        f"{seed_pairs} random + {budget - seed_pairs} by select_uncertain_pairs; "
        f"all {m} judged ({r0['all']['calls_per_prompt']:.0f} calls) for reference"
    )
    print(
        "round-2 = the pairs judged beyond the 2 shared seed pairs: their true |Δq|, the "
        "panel's accuracy on them, and the round-1 GPM head's (what leaving them unjudged "
        "would have given)"
    )
    head = (
        f"{'seed':>4} | {'pair acc (all pairs)':^22} | {'best–worst pair acc':^22} | "
        f"{'top-1 acc':^15} | {'GPM acc unjudged':^16} | {'round-2 |Δq|':^13} | "
        f"{'round-2 panel':^13} | {'round-2 head1':^13}"
    )
    sub = (
        f"{'':>4} | {'random':>6} {'active':>6} {'all':>8} | {'random':>6} {'active':>6} "
        f"{'all':>8} | {'random':>7} {'active':>7} | {'random':>7} {'active':>8} | "
        f"{'random':>6} {'active':>6} | {'random':>6} {'active':>6} | "
        f"{'random':>6} {'active':>6}"
    )
    print(head)
    print(sub)
    print("-" * len(sub))
    keys = (
        "pair_acc",
        "best_worst_acc",
        "top1_acc",
        "gpm_unjudged_acc",
        "round2_gap",
        "round2_panel_acc",
        "round2_head1_acc",
    )

    def line(label: str, v: dict[str, dict[str, float]]) -> str:
        return (
            f"{label:>4} | {v['random']['pair_acc']:6.3f} {v['active']['pair_acc']:6.3f} "
            f"{v['all']['pair_acc']:8.3f} | {v['random']['best_worst_acc']:6.3f} "
            f"{v['active']['best_worst_acc']:6.3f} {v['all']['best_worst_acc']:8.3f} | "
            f"{v['random']['top1_acc']:7.3f} {v['active']['top1_acc']:7.3f} | "
            f"{v['random']['gpm_unjudged_acc']:7.3f} {v['active']['gpm_unjudged_acc']:8.3f}"
            f" | {v['random']['round2_gap']:6.3f} {v['active']['round2_gap']:6.3f} | "
            f"{v['random']['round2_panel_acc']:6.3f} {v['active']['round2_panel_acc']:6.3f}"
            f" | {v['random']['round2_head1_acc']:6.3f} "
            f"{v['active']['round2_head1_acc']:6.3f}"
        )

    for r in res:
        print(line(str(r["seed"]), r))
    print("-" * len(sub))
    for label, fn in (("mean", np.mean), ("sd", np.std)):
        agg = {
            s: {
                key: float(fn([r[s][key] for r in res]))
                if s != "all" or key != "gpm_unjudged_acc"
                else 0.0
                for key in keys
            }
            for s in STRATEGIES
        }
        print(line(label, agg))
    for key, name in (
        ("pair_acc", "pair acc"),
        ("best_worst_acc", "best–worst acc"),
        ("top1_acc", "top-1 acc"),
    ):
        d = [r["active"][key] - r["random"][key] for r in res]
        print(
            f"active − random, {name}: {np.mean(d):+.3f} (per seed "
            f"{', '.join(f'{x:+.3f}' for x in d)})"
        )
    print(
        f"pair acc gained over the round-1 head alone on the {m - seed_pairs} non-seed "
        f"pairs (means):"
    )
    for name in ("random", "active"):
        mean = {
            key: float(np.mean([r[name][key] for r in res]))
            for key in (
                "round2_panel_acc",
                "round2_head1_acc",
                "gpm_unjudged_acc",
                "unjudged_head1_acc",
                "round2_pairs",
            )
        }
        n2, n_left = mean["round2_pairs"], m - seed_pairs - mean["round2_pairs"]
        judge = n2 * (mean["round2_panel_acc"] - mean["round2_head1_acc"]) / m
        retrain = n_left * (mean["gpm_unjudged_acc"] - mean["unjudged_head1_acc"]) / m
        print(
            f"  {name:>6}: {judge:+.3f} from judging round 2 (panel "
            f"{mean['round2_panel_acc']:.3f} vs head {mean['round2_head1_acc']:.3f}), "
            f"{retrain:+.3f} from retraining the head on it (unjudged pairs "
            f"{mean['unjudged_head1_acc']:.3f} → {mean['gpm_unjudged_acc']:.3f}) = "
            f"{judge + retrain:+.3f}"
        )
    s0 = r0["select"]
    if s0["mean_certainty_selected"] is None or s0["mean_certainty_skipped"] is None:
        print(
            f"select_uncertain_pairs (seed {r0['seed']}): no ranking ({s0['training_pairs']} "
            f"round-1 comparisons); {r0['select_seconds']:.1f} s"
        )
        return
    print(
        f"select_uncertain_pairs (seed {r0['seed']}): head trained on "
        f"{s0['training_pairs']} round-1 comparisons (train acc {s0['train_accuracy']:.3f}); "
        f"mean |P − ½| selected {s0['mean_certainty_selected']:.3f} vs skipped "
        f"{s0['mean_certainty_skipped']:.3f}; {r0['select_seconds']:.1f} s"
    )


# ------------------------------------------------------------------------------ (c) timing


def synthetic_pairs_table(
    n_pairs: int, per_prompt: int = 4, dim: int = 384, clusters: int = 50, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """A PAIRS table (random weights / margins) and 384-d prompt embeddings, for timing."""
    rng = np.random.default_rng(seed)
    n_p = max(1, n_pairs // per_prompt)
    cent = rng.normal(size=(clusters, dim))
    e = cent[rng.integers(0, clusters, n_p)] + 0.7 * rng.normal(size=(n_p, dim))
    pid = [f"p{i:07d}" for i in range(n_p)]
    prompt = np.repeat(np.array(pid), per_prompt)[:n_pairs]
    n = len(prompt)
    w = rng.uniform(0.3, 1.0, n)
    m = rng.uniform(0.0, 4.0, n)
    nul = {t: pa.nulls(n, t) for t in (pa.float64(), pa.string(), pa.int32())}
    cols = {
        "pair_id": pa.array([f"q{i}" for i in range(n)]),
        "prompt_id": pa.array(prompt),
        "source_id": pa.array(["s"] * n),
        "chosen_id": pa.array([f"c{i}" for i in range(n)]),
        "rejected_id": pa.array([f"r{i}" for i in range(n)]),
        "p_hat": pa.array(w),
        "disagreement": pa.array(1 - w),
        "n_votes": pa.array(np.full(n, 4, np.int32)),
        "margin": pa.array(m),
        "weight": pa.array(w),
        "label_status": pa.array(["agree"] * n),
        "similarity": nul[pa.float64()],
        "flags": pa.array([[]] * n, pa.list_(pa.string())),
        "decision": pa.array(["keep"] * n),
        "reason": nul[pa.string()],
        "score_chosen": nul[pa.float64()],
        "score_rejected": nul[pa.float64()],
        "curriculum_stage": nul[pa.int32()],
        "split": nul[pa.string()],
    }
    pairs = pa.Table.from_arrays([cols[f.name].cast(f.type) for f in PAIRS], schema=PAIRS)
    return pairs, _emb_table(pid, e, "prompt_id")


def select_timing(n: int, fraction: float = 0.3) -> list[dict[str, Any]]:
    out = []
    for per in (4, 1):
        pairs, emb = synthetic_pairs_table(n, per_prompt=per)
        t0 = time.perf_counter()
        res = select_pairs_budget(pairs, emb, SelectConfig(budget=fraction))
        out.append(
            {
                "pairs": n,
                "pairs_per_prompt": per,
                "fraction": fraction,
                "seconds": round(time.perf_counter() - t0, 2),
                "select_seconds": res.info["select_seconds"],
                "kept": res.counts.kept,
                "dropped": res.counts.dropped,
                "quality": [
                    round(res.info["quality_before"], 3),
                    round(res.info["quality_after"], 3),
                ],
                "coverage": [
                    round(res.info["coverage_before"], 3),
                    round(res.info["coverage_after"], 3),
                ],
            }
        )
    return out


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--prompts",
        type=int,
        default=1200,
        help="prompts of the noisy simulation (part b; 4 candidates, 6 pairs each)",
    )
    ap.add_argument(
        "--cyclic-prompts",
        type=int,
        default=300,
        help="training prompts of the cyclic set (part a)",
    )
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument(
        "--select-timing",
        type=int,
        metavar="N",
        default=0,
        help="only time select_pairs_budget on N pairs",
    )
    ap.add_argument(
        "--active",
        action="store_true",
        help="only part (d), active judging (also part of the default run)",
    )
    ap.add_argument(
        "--active-prompts",
        type=int,
        default=400,
        help="prompts of part (d) (5 candidates, 10 pairs each)",
    )
    ap.add_argument("--budget", type=int, default=4, help="part (d): pairs judged per prompt")
    ap.add_argument(
        "--seed-pairs",
        type=int,
        default=2,
        help="part (d): random round-1 pairs per prompt of the active strategy",
    )
    ap.add_argument(
        "--judge-accuracy",
        type=float,
        default=0.72,
        help="part (d): mean accuracy of one judge call (before hard clusters)",
    )
    ap.add_argument(
        "--hard-factor",
        type=float,
        default=0.35,
        help="part (d): κ multiplier in the hard half of the clusters (1: none)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes for python -m bench --quick: seeds 0 1, 600 prompts, "
        "150 cyclic prompts, 200 prompts in part (d)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.prompts = args.seeds[:2], min(args.prompts, 600)
        args.cyclic_prompts = min(args.cyclic_prompts, 150)
        args.active_prompts = min(args.active_prompts, 200)
    import torch

    torch.set_num_threads(1)
    if args.select_timing:
        print(json.dumps(select_timing(args.select_timing, args.fraction), indent=1))
        return 0
    if not 0 <= args.seed_pairs <= args.budget <= 10:
        ap.error("part (d) needs 0 <= --seed-pairs <= --budget <= 10 (pairs per prompt)")

    def active() -> list[dict[str, Any]]:
        return [
            active_eval(
                s,
                args.active_prompts,
                budget=args.budget,
                seed_pairs=args.seed_pairs,
                judge_accuracy=args.judge_accuracy,
                hard_factor=args.hard_factor,
            )
            for s in args.seeds
        ]

    t0 = time.perf_counter()
    if args.active:
        act = active()
        if args.json:
            print(json.dumps({"active": act}, indent=1))
        else:
            print(
                f"GPM evaluation — python bench/gpm_eval.py --active --seeds "
                f"{' '.join(map(str, args.seeds))} --active-prompts {args.active_prompts} "
                f"--budget {args.budget} --seed-pairs {args.seed_pairs} --judge-accuracy "
                f"{args.judge_accuracy} --hard-factor {args.hard_factor}"
            )
            print_active(act, args.budget, args.seed_pairs)
            print(f"total {time.perf_counter() - t0:.0f} s")
        return 0
    cyc = [cyclic_accuracy(args.cyclic_prompts, 300, seed=s) for s in args.seeds]
    stage = cyclic_stage(400, seed=args.seeds[0])
    bud = [budget_eval(s, args.prompts, args.fraction) for s in args.seeds]
    act = active()
    if args.json:
        print(
            json.dumps(
                {"cyclic": cyc, "cyclic_stage": stage, "budget": bud, "active": act}, indent=1
            )
        )
        return 0
    pct = f"{args.fraction:.0%}"
    print(
        f"GPM evaluation — python bench/gpm_eval.py --seeds {' '.join(map(str, args.seeds))}"
        f" --prompts {args.prompts}"
    )
    head = (
        f"{'seed':>4} | {'GPM':>6} {'BT':>6} | {'label':>5} {'pairs':>6} | "
        f"{'all':>6} {'budget' + pct:>10} {'random' + pct:>10} {'quality' + pct:>11} | "
        f"{'cov all':>7} {'cov bud':>7} {'cov qual':>8}"
    )
    print(
        "     | (a) cyclic set: pair acc.| (b) noisy sim.| BT head accuracy on clean held-out "
        "pairs, trained on        | (b) prompt coverage"
    )
    print(head)
    print("-" * len(head))
    for c, b in zip(cyc, bud):
        print(
            f"{b['seed']:>4} | {c['gpm']:6.3f} {c['bt']:6.3f} | {b['label_noise']:5.2f} "
            f"{b['pairs']:>6} | {b['all']:6.3f} {b['budget']:10.3f} {b['random']:10.3f} "
            f"{b['quality_only']:11.3f} | {b['select']['coverage_before']:7.3f} "
            f"{b['select']['coverage_after']:7.3f} "
            f"{b['select_quality_only']['coverage_after']:8.3f}"
        )
    mean = {
        k: float(np.mean([b[k] for b in bud]))
        for k in ("all", "budget", "random", "quality_only", "label_noise")
    }
    sd = {
        k: float(np.std([b[k] for b in bud])) for k in ("all", "budget", "random", "quality_only")
    }
    print("-" * len(head))
    print(
        f"{'mean':>4} | {np.mean([c['gpm'] for c in cyc]):6.3f} "
        f"{np.mean([c['bt'] for c in cyc]):6.3f} | {mean['label_noise']:5.2f} {'':>6} | "
        f"{mean['all']:6.3f} {mean['budget']:10.3f} {mean['random']:10.3f} "
        f"{mean['quality_only']:11.3f} |"
    )
    print(
        f"{'sd':>4} | {np.std([c['gpm'] for c in cyc]):6.3f} "
        f"{np.std([c['bt'] for c in cyc]):6.3f} | {'':>5} {'':>6} | "
        f"{sd['all']:6.3f} {sd['budget']:10.3f} {sd['random']:10.3f} "
        f"{sd['quality_only']:11.3f} |"
    )
    diffs = [b["budget"] - b["all"] for b in bud]
    gaps = [b["budget"] - b["random"] for b in bud]
    print(
        f"budget − all: {np.mean(diffs):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in diffs)});"
        f" budget − random: {np.mean(gaps):+.3f} (per seed "
        f"{', '.join(f'{d:+.3f}' for d in gaps)})"
    )
    q0 = bud[0]["select"]
    print(
        f"selection (seed {bud[0]['seed']}): mean weight×margin {q0['quality_before']:.3f} → "
        f"{q0['quality_after']:.3f}, prompts {q0['prompts_before']} → {q0['prompts_after']}, "
        f"{q0['select_seconds']:.2f} s"
    )
    print(
        f"GPM stage end to end (400 cyclic prompts, 2 folds): out-of-fold gpm-vote accuracy "
        f"{stage['stage_gpm_oof']:.3f}; prompts flagged cyclic: gpm {stage['cyclic_gpm']:.2f}, "
        f"panel {stage['cyclic_panel']:.2f}; {stage['stage_seconds']:.1f} s"
    )
    print()
    print_active(act, args.budget, args.seed_pairs)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
