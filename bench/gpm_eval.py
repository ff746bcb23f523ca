"""GPM vs Bradley–Terry on cyclic preferences, and budgeted selection vs random subsets.

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

Usage::

    python bench/gpm_eval.py [--seeds 0 1 2 3 4] [--prompts 1200]
    python bench/gpm_eval.py --select-timing 100000
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

from pipeline.aggregation import aggregate_votes  # noqa: E402
from pipeline.denoise import denoise_pairs  # noqa: E402
from pipeline.gpm import (  # noqa: E402
    BTConfig,
    GPMConfig,
    annotate_gpm,
    train_bt,
    train_gpm,
)
from pipeline.margins import compute_margins  # noqa: E402
from pipeline.selection import SelectConfig, select_pairs_budget  # noqa: E402
from schemas.config import DenoiseConfig, MarginConfig  # noqa: E402
from schemas.tables import PAIRS, VOTES  # noqa: E402

KINDS = ("rock", "paper", "scissors")
# (i, j, P(i ≻ j)) for the three pairs of a prompt's candidates, in kind order
RPS_PAIRS = ((0, 1, 0.0), (1, 2, 0.0), (0, 2, 1.0))  # paper>rock, scissors>paper, rock>scissors


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _emb_table(ids: list[str], mat: np.ndarray, id_column: str) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(mat, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table({id_column: pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, mat.shape[1])})


# ------------------------------------------------------------------------------ (a) cyclic

def make_cyclic_set(n_prompts: int, *, dim: int = 16, noise: float = 0.3,
                    topic: float = 0.5, votes: int = 4, judge_accuracy: float = 0.85,
                    seed: int = 0, kinds_seed: int = 12345) -> dict[str, Any]:
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
    return {"prompt": np.repeat(x, 3, axis=0).astype(np.float32),
            "a": emb[:, ia].reshape(-1, dim).astype(np.float32),
            "b": emb[:, ib].reshape(-1, dim).astype(np.float32),
            "truth": truth, "p_hat": p_hat, "x": x.astype(np.float32),
            "emb": emb.astype(np.float32)}


def cyclic_accuracy(n_train: int = 300, n_test: int = 300, seed: int = 0,
                    gpm_cfg: GPMConfig | None = None, bt_cfg: BTConfig | None = None
                    ) -> dict[str, float]:
    """Held-out pair accuracy (vs the cyclic truth) of a GPM and a BT head."""
    tr = make_cyclic_set(n_train, seed=seed)
    te = make_cyclic_set(n_test, seed=seed + 1000)
    gpm = train_gpm(tr["prompt"], tr["a"], tr["b"], tr["p_hat"],
                    gpm_cfg or GPMConfig(epochs=20, seed=seed))
    bt = train_bt(tr["prompt"], tr["a"], tr["b"], tr["p_hat"],
                  bt_cfg or BTConfig(epochs=20, seed=seed))
    truth = te["truth"] > 0.5
    acc_g = float(((gpm.score_pairs(te["prompt"], te["a"], te["b"]) > 0.5) == truth).mean())
    acc_b = float(((bt.score_pairs(te["prompt"], te["a"], te["b"]) > 0.5) == truth).mean())
    return {"gpm": acc_g, "bt": acc_b, "gpm_seconds": gpm.info["seconds"],
            "bt_seconds": bt.info["seconds"]}


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
    cands = pa.table({"prompt_id": [p for p in pids for _ in KINDS],
                      "source_id": ["sim"] * (3 * n_prompts),
                      "candidate_id": [c for row in cids for c in row]})
    c_emb = _emb_table([c for row in cids for c in row], s["emb"].reshape(-1, s["emb"].shape[2]),
                       "candidate_id")
    p_emb = _emb_table(pids, s["x"], "prompt_id")
    res = annotate_gpm(comps, cands, c_emb, p_emb, GPMConfig(enabled=True, epochs=20, seed=seed))
    v = res.outputs["votes"].to_pylist()
    acc = float(np.mean([(r["prob_a"] > 0.5) == truth[(r["candidate_a"], r["candidate_b"])]
                         for r in v]))
    cyc = res.info["cyclic"]
    return {"stage_gpm_oof": acc, "cyclic_gpm": cyc["prompts_gpm"] / n_prompts,
            "cyclic_panel": cyc["prompts_panel"] / n_prompts,
            "stage_seconds": res.info["seconds"]}


# ------------------------------------------------------------------------------ (b) budget

def _calibrate(gap: np.ndarray, acc: float) -> float:
    lo, hi = 0.0, 1.0
    while _sigmoid(hi * gap).mean() < acc and hi < 1e6:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(mid * gap).mean() < acc else (lo, mid)
    return 0.5 * (lo + hi)


def simulate_pairs(n_prompts: int, seed: int, *, clusters: int = 16, k: int = 4,
                   dim: int = 32, judge_accuracy: float = 0.72, hard_factor: float = 0.35,
                   held_out: float = 0.25) -> dict[str, Any]:
    """Noisy pipeline pairs (real stages) + clean held-out pairs; see the module docstring."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(clusters, dim))
    u0 = rng.normal(size=dim)
    u = u0 + 1.5 * rng.normal(size=(clusters, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    hard = np.zeros(clusters, dtype=bool)
    hard[rng.permutation(clusters)[:clusters // 2]] = True
    cl = rng.integers(0, clusters, n_prompts)
    x = centres[cl] + 0.7 * rng.normal(size=(n_prompts, dim))
    q = rng.normal(size=(n_prompts, k))
    emb = 0.5 * x[:, None, :] + q[:, :, None] * 1.5 * u[cl][:, None, :] \
        + 0.7 * rng.normal(size=(n_prompts, k, dim))
    pids = np.array([f"p{i:05d}" for i in range(n_prompts)])
    cids = np.array([[f"p{i:05d}_{j}" for j in range(k)] for i in range(n_prompts)])
    test = np.zeros(n_prompts, dtype=bool)
    test[rng.permutation(n_prompts)[:int(round(held_out * n_prompts))]] = True
    ii, jj = np.triu_indices(k, 1)
    # training pairs: every pair of every training prompt's candidates, judged by a panel
    tr = np.flatnonzero(~test)
    P, I = np.meshgrid(tr, np.arange(len(ii)), indexing="ij")
    P, A, B = P.reshape(-1), ii[I.reshape(-1)], jj[I.reshape(-1)]
    gap = np.abs(q[P, A] - q[P, B])
    a_better = q[P, A] > q[P, B]
    kappa = _calibrate(gap, judge_accuracy)
    kap = kappa * np.where(hard[cl[P]], hard_factor, 1.0)
    cols: dict[str, list] = {c: [] for c in VOTES.names}
    n = len(P)
    for j, bias in enumerate((0.0, 0.0, 0.2)):
        for order in ("ab", "ba"):
            right = rng.random(n) < _sigmoid(kap * gap)
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
    votes = pa.Table.from_pydict(cols, schema=VOTES)
    mcfg = MarginConfig()
    agg = aggregate_votes(votes)
    pairs = compute_margins(agg.outputs["comparisons"], agg.outputs["scores"],
                            mcfg).outputs["pairs"]
    den = denoise_pairs(pairs, DenoiseConfig(confidence_weights=True, on_contradicted="keep"),
                        mcfg)
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
        "pairs": pairs, "prompt_emb": _emb_table(pids.tolist(), x, "prompt_id"),
        "x": x.astype(np.float32), "emb": emb.astype(np.float32), "row": row,
        "prompt_row": {p: i for i, p in enumerate(pids)}, "label_noise": float(noisy.mean()),
        "test": (x[Pt].astype(np.float32), emb[Pt, better].astype(np.float32),
                 emb[Pt, worse].astype(np.float32)),
        "denoise": {k: v for k, v in den.counts.to_dict().items() if k != "quarantined"},
    }


def _bt_accuracy(sim: dict[str, Any], pairs: pa.Table, seed: int) -> float:
    row, prow, emb, x = sim["row"], sim["prompt_row"], sim["emb"], sim["x"]
    ch = [row[c] for c in pairs.column("chosen_id").to_pylist()]
    rj = [row[c] for c in pairs.column("rejected_id").to_pylist()]
    pr = [prow[p] for p in pairs.column("prompt_id").to_pylist()]
    ec = emb[tuple(np.array(ch).T)]
    er = emb[tuple(np.array(rj).T)]
    bt = train_bt(x[pr], ec, er, np.ones(len(ch)),
                  BTConfig(hidden=64, input_dims=None, epochs=30, seed=seed))
    xp, eb, ew = sim["test"]
    return float((bt.score_pairs(xp, eb, ew) > 0.5).mean())


def budget_eval(seed: int, n_prompts: int, fraction: float = 0.3) -> dict[str, Any]:
    sim = simulate_pairs(n_prompts, seed)
    pairs = sim["pairs"]
    n = pairs.num_rows
    b = int(round(fraction * n))
    sel = select_pairs_budget(pairs, sim["prompt_emb"], SelectConfig(budget=fraction,
                                                                     seed=seed))
    qual = select_pairs_budget(pairs, sim["prompt_emb"], SelectConfig(
        budget=fraction, coverage_tradeoff=0.0, seed=seed))
    rnd = pairs.take(pa.array(np.sort(np.random.default_rng(seed + 99).permutation(n)[:b])))
    out = {"seed": seed, "pairs": n, "label_noise": sim["label_noise"],
           "all": _bt_accuracy(sim, pairs, seed),
           "budget": _bt_accuracy(sim, sel.outputs["pairs"], seed),
           "random": _bt_accuracy(sim, rnd, seed),
           "quality_only": _bt_accuracy(sim, qual.outputs["pairs"], seed),
           "select": {k: sel.info[k] for k in ("quality_before", "quality_after",
                                                "coverage_before", "coverage_after",
                                                "prompts_before", "prompts_after",
                                                "select_seconds")},
           "select_quality_only": {k: qual.info[k] for k in ("quality_after",
                                                             "coverage_after",
                                                             "prompts_after")}}
    return out


# ------------------------------------------------------------------------------ (c) timing

def synthetic_pairs_table(n_pairs: int, per_prompt: int = 4, dim: int = 384,
                          clusters: int = 50, seed: int = 0) -> tuple[pa.Table, pa.Table]:
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
    cols = {"pair_id": pa.array([f"q{i}" for i in range(n)]), "prompt_id": pa.array(prompt),
            "source_id": pa.array(["s"] * n), "chosen_id": pa.array([f"c{i}" for i in range(n)]),
            "rejected_id": pa.array([f"r{i}" for i in range(n)]), "p_hat": pa.array(w),
            "disagreement": pa.array(1 - w), "n_votes": pa.array(np.full(n, 4, np.int32)),
            "margin": pa.array(m), "weight": pa.array(w),
            "label_status": pa.array(["agree"] * n), "similarity": nul[pa.float64()],
            "flags": pa.array([[]] * n, pa.list_(pa.string())),
            "decision": pa.array(["keep"] * n), "reason": nul[pa.string()],
            "score_chosen": nul[pa.float64()], "score_rejected": nul[pa.float64()],
            "curriculum_stage": nul[pa.int32()], "split": nul[pa.string()]}
    pairs = pa.Table.from_arrays([cols[f.name].cast(f.type) for f in PAIRS], schema=PAIRS)
    return pairs, _emb_table(pid, e, "prompt_id")


def select_timing(n: int, fraction: float = 0.3) -> list[dict[str, Any]]:
    out = []
    for per in (4, 1):
        pairs, emb = synthetic_pairs_table(n, per_prompt=per)
        t0 = time.perf_counter()
        res = select_pairs_budget(pairs, emb, SelectConfig(budget=fraction))
        out.append({"pairs": n, "pairs_per_prompt": per, "fraction": fraction,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "select_seconds": res.info["select_seconds"],
                    "kept": res.counts.kept, "dropped": res.counts.dropped,
                    "quality": [round(res.info["quality_before"], 3),
                                round(res.info["quality_after"], 3)],
                    "coverage": [round(res.info["coverage_before"], 3),
                                 round(res.info["coverage_after"], 3)]})
    return out


# ------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--prompts", type=int, default=1200,
                    help="prompts of the noisy simulation (part b; 4 candidates, 6 pairs each)")
    ap.add_argument("--cyclic-prompts", type=int, default=300,
                    help="training prompts of the cyclic set (part a)")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--select-timing", type=int, metavar="N", default=0,
                    help="only time select_pairs_budget on N pairs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.select_timing:
        print(json.dumps(select_timing(args.select_timing, args.fraction), indent=1))
        return 0
    t0 = time.perf_counter()
    cyc = [cyclic_accuracy(args.cyclic_prompts, 300, seed=s) for s in args.seeds]
    stage = cyclic_stage(400, seed=args.seeds[0])
    bud = [budget_eval(s, args.prompts, args.fraction) for s in args.seeds]
    if args.json:
        print(json.dumps({"cyclic": cyc, "cyclic_stage": stage, "budget": bud}, indent=1))
        return 0
    pct = f"{args.fraction:.0%}"
    print(f"GPM evaluation — python bench/gpm_eval.py --seeds {' '.join(map(str, args.seeds))}"
          f" --prompts {args.prompts}")
    head = (f"{'seed':>4} | {'GPM':>6} {'BT':>6} | {'label':>5} {'pairs':>6} | "
            f"{'all':>6} {'budget' + pct:>10} {'random' + pct:>10} {'quality' + pct:>11} | "
            f"{'cov all':>7} {'cov bud':>7} {'cov qual':>8}")
    print("     | (a) cyclic set: pair acc.| (b) noisy sim.| BT head accuracy on clean held-out "
          "pairs, trained on        | (b) prompt coverage")
    print(head)
    print("-" * len(head))
    for c, b in zip(cyc, bud):
        print(f"{b['seed']:>4} | {c['gpm']:6.3f} {c['bt']:6.3f} | {b['label_noise']:5.2f} "
              f"{b['pairs']:>6} | {b['all']:6.3f} {b['budget']:10.3f} {b['random']:10.3f} "
              f"{b['quality_only']:11.3f} | {b['select']['coverage_before']:7.3f} "
              f"{b['select']['coverage_after']:7.3f} "
              f"{b['select_quality_only']['coverage_after']:8.3f}")
    mean = {k: float(np.mean([b[k] for b in bud])) for k in ("all", "budget", "random",
                                                              "quality_only", "label_noise")}
    sd = {k: float(np.std([b[k] for b in bud])) for k in ("all", "budget", "random",
                                                           "quality_only")}
    print("-" * len(head))
    print(f"{'mean':>4} | {np.mean([c['gpm'] for c in cyc]):6.3f} "
          f"{np.mean([c['bt'] for c in cyc]):6.3f} | {mean['label_noise']:5.2f} {'':>6} | "
          f"{mean['all']:6.3f} {mean['budget']:10.3f} {mean['random']:10.3f} "
          f"{mean['quality_only']:11.3f} |")
    print(f"{'sd':>4} | {np.std([c['gpm'] for c in cyc]):6.3f} "
          f"{np.std([c['bt'] for c in cyc]):6.3f} | {'':>5} {'':>6} | "
          f"{sd['all']:6.3f} {sd['budget']:10.3f} {sd['random']:10.3f} "
          f"{sd['quality_only']:11.3f} |")
    diffs = [b["budget"] - b["all"] for b in bud]
    gaps = [b["budget"] - b["random"] for b in bud]
    print(f"budget − all: {np.mean(diffs):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in diffs)});"
          f" budget − random: {np.mean(gaps):+.3f} (per seed "
          f"{', '.join(f'{d:+.3f}' for d in gaps)})")
    q0 = bud[0]["select"]
    print(f"selection (seed {bud[0]['seed']}): mean weight×margin {q0['quality_before']:.3f} → "
          f"{q0['quality_after']:.3f}, prompts {q0['prompts_before']} → {q0['prompts_after']}, "
          f"{q0['select_seconds']:.2f} s")
    print(f"GPM stage end to end (400 cyclic prompts, 2 folds): out-of-fold gpm-vote accuracy "
          f"{stage['stage_gpm_oof']:.3f}; prompts flagged cyclic: gpm {stage['cyclic_gpm']:.2f}, "
          f"panel {stage['cyclic_panel']:.2f}; {stage['stage_seconds']:.1f} s")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
