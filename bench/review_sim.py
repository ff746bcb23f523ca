"""Human review on the noise harness: do reviewers' answers help, and should they be plain
annotators or gold anchors? (issue 16)

For each labelled scenario of ``bench/scenarios.py`` × noise × seed: the product's default
path (``bench.noise_matrix.run_default``) curates the simulated pairs file; the real
review picker (``pipeline.review.pick``: ``review_candidates`` → ``choose``) takes the
``--budget`` share of pairs most worth a look from that run's own tables; ``--reviewers``
simulated people (each right with probability ``--accuracy``, independently) answer
them; the same path runs again with their votes

- ``annotators``: the reviewers are more annotators for Dawid–Skene;
- ``anchor``: ``review.anchor: true``, their majorities are gold anchors;
- ``random_anchor``: anchors on as many pairs drawn at random (what the picker adds);

beside ``none`` (no review) and the ``oracle`` (the Bayes posterior without review).
Metrics as in the noise matrix: kept-label accuracy (``acc``) and noisy-pair F1 (``f1``),
mean over the cells, and the worst cell of each method against ``none``.

Usage::

    python bench/review_sim.py                 # labelled scenarios × noise 0.2 / 0.4 × 2 seeds
    python bench/review_sim.py --quick         # 3 scenarios, 1 seed
    python bench/review_sim.py --json          # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import noise_matrix as NM  # noqa: E402
from bench import scenarios as S  # noqa: E402

METHODS = ("none", "annotators", "anchor", "random_anchor", "oracle")


def reviewer_votes(
    sim: S.Sim, items: np.ndarray, n: int, accuracy: float, rng: np.random.Generator
) -> list[tuple[int, str, bool]]:
    """``n`` reviewers' answers on ``items``: each says the truly better position with
    probability ``accuracy``."""
    out = []
    for r in range(n):
        right = rng.random(items.size) < accuracy
        says_a = np.where(right, sim.better_a[items], ~sim.better_a[items])
        out += [(int(i), f"human:{r + 1}", bool(a)) for i, a in zip(items, says_a)]
    return out


def run_cell(
    scenario: str, noise: float, seed: int, args: argparse.Namespace
) -> dict[str, Any] | None:
    from pipeline.review.pick import choose, review_candidates

    sim = S.simulate(scenario, args.pairs, noise, seed)
    if not sim.has_label:  # a review corrects a file's labels: judge-only sets are left out
        return None
    cfg = NM.default_config(sim)
    budget = max(1, int(round(args.budget * sim.n)))
    first = NM.run_default(sim, cfg)
    t = first.tables
    picked = choose(review_candidates(t["margins"], t["denoise"], t["dropped"], cfg.review), budget)
    row = {s: i for i, s in enumerate(sim.ids)}
    items = np.array(sorted({row[s] for s in picked["source_id"].to_list()}), dtype=np.int64)
    rng = np.random.default_rng(seed + 1000)
    votes = reviewer_votes(sim, items, args.reviewers, args.accuracy, rng)
    rand = rng.choice(sim.n, size=items.size, replace=False)
    rand_votes = reviewer_votes(sim, rand, args.reviewers, args.accuracy, rng)
    anchor = cfg.model_copy(update={"review": cfg.review.model_copy(update={"anchor": True})})
    res = {
        "none": NM.result_of(sim, first),
        "annotators": NM.result_of(sim, NM.run_default(sim, cfg, human=votes)),
        "anchor": NM.result_of(sim, NM.run_default(sim, anchor, human=votes)),
        "random_anchor": NM.result_of(sim, NM.run_default(sim, anchor, human=rand_votes)),
        "oracle": NM.method_oracle(sim, S.oracle(sim)),
    }
    wrong = ~sim.label_right
    return {
        "scenario": scenario,
        "noise": noise,
        "seed": seed,
        "reviewed": int(items.size),
        "reviewed_wrong_label": float(wrong[items].mean()) if items.size else None,
        "random_wrong_label": float(wrong[rand].mean()),
        "metrics": {m: NM.score(sim, r) for m, r in res.items()},
    }


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in METHODS:
        acc = [c["metrics"][m]["acc"] for c in cells]
        f1 = [c["metrics"][m]["f1"] for c in cells]
        d_acc = [c["metrics"][m]["acc"] - c["metrics"]["none"]["acc"] for c in cells]
        worst = int(np.argmin(d_acc))
        out[m] = {
            "acc": float(np.nanmean(acc)),
            "f1": float(np.nanmean(f1)),
            "kept": float(np.mean([c["metrics"][m]["kept"] for c in cells])),
            "worst_acc_vs_none": float(d_acc[worst]),
            "worst_cell": f"{cells[worst]['scenario']}@{cells[worst]['noise']}",
        }
    out["reviewed_wrong_label"] = float(np.mean([c["reviewed_wrong_label"] or 0 for c in cells]))
    out["random_wrong_label"] = float(np.mean([c["random_wrong_label"] for c in cells]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", nargs="*", default=None)
    ap.add_argument("--noise", nargs="*", type=float, default=[0.2, 0.4])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=0.05, help="share of pairs reviewed")
    ap.add_argument("--reviewers", type=int, default=2, help="people per pair (overlap)")
    ap.add_argument("--accuracy", type=float, default=0.9, help="each reviewer's accuracy")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.scenarios or [n for n in S.SCENARIOS if n != "judges_only"]
    if args.quick:
        names, args.seeds = names[:3], 1
    NM._prefect_home()
    t0 = time.perf_counter()
    cells = []
    for name in names:
        for noise in args.noise:
            for seed in range(args.seeds):
                c = run_cell(name, noise, seed, args)
                if c is None:
                    continue
                cells.append(c)
                NM.log(
                    f"{name}@{noise} seed {seed}: "
                    + "  ".join(f"{m} {c['metrics'][m]['acc']:.3f}" for m in METHODS)
                )
    summ = summarise(cells)
    doc = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "scenarios": names,
        "cells": cells,
        "summary": summ,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        print(json.dumps(NM._jsonable(doc), indent=2))
        return 0
    print(
        f"\nreview simulation: {len(cells)} cells, {args.budget:.0%} of pairs reviewed by "
        f"{args.reviewers} people of accuracy {args.accuracy} ({doc['seconds']} s)"
    )
    print(
        f"wrong labels among the reviewed pairs: {summ['reviewed_wrong_label']:.3f} "
        f"(random pairs: {summ['random_wrong_label']:.3f})"
    )
    print(f"{'method':15s} {'acc':>7s} {'f1':>7s} {'kept':>7s}  worst acc vs none")
    for m in METHODS:
        s = summ[m]
        print(
            f"{m:15s} {s['acc']:7.3f} {s['f1']:7.3f} {s['kept']:7.3f}  "
            f"{s['worst_acc_vs_none']:+.3f} ({s['worst_cell']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
