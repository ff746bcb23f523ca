"""Noise-recovery evaluation: how well does curation find and fix wrong labels?

Simulates an ingested binary preference dataset whose truth is known, runs the real
stages on it — ``aggregate_votes`` → ``compute_margins`` → ``denoise_pairs`` — and prints,
per share of flipped labels and per method, how much of the truth comes back.

Simulation (all numbers are options below):

- prompts, each with ``--candidates`` responses of latent quality q ~ N(0, 1); the
  dataset pair is (best, a random other one), UltraFeedback-style. Truth: the better one.
- a population of users preferring a response with probability σ(κ·Δq) (κ calibrated so
  that the population agrees with the truth on ``--pop-accuracy`` of the pairs): the
  *true vote share* of a pair.
- the dataset's label: the truth, flipped on exactly ``noise`` of the pairs, kept as a vote
  from annotator ``source`` (as ``ingest_pairs`` does).
- a panel of LLM-judge-like annotators, each called in both orders (``ab`` and ``ba``,
  verdicts mapped to the ``ab`` orientation, annotator ``name|pairwise_v1|none|order`` as
  the judge stage writes them). Judge j is right with probability
  (1 − h)·α_j + h·σ(κ_j·|Δq|), κ_j calibrated so that its mean accuracy is α_j: h =
  ``--difficulty`` mixes a fixed accuracy (h = 0, the classic Dawid–Skene simulation)
  with Bradley–Terry judges that err more on close pairs (h = 1). A position-biased judge
  answers "the first response" with probability ``position_bias`` in each call; a
  spammer answers at random; ``--null-rate`` of the calls do not parse.
  Default panel: judge-a 0.85, judge-b 0.78, judge-c 0.70 with position bias 0.3, and a
  spammer.
- embeddings for the CRM heads: per prompt x ~ N(0, I); per response 0.5·x + q·u(x) +
  ``--emb-noise``·N(0, I), with u(x) a unit quality direction that depends on the prompt.

Methods (``METHODS``; the votes of every method are aggregated with the label as a vote):

- ``majority``: flip every pair whose votes contradict the label (band 0), drop ties;
- ``dawid_skene``: the DS posterior P(a ≻ b) of ``aggregate_votes(method="dawid_skene")``
  orients each pair (read from the comparisons: ``compute_margins`` reads the vote
  counts, not the posterior);
- ``lcpo``: confidence weights with p_i = p̂ of the votes without the label's vote;
- ``lcpo_ds``: confidence weights with p_i = a judges-only DS posterior (``p_model``,
  from ``aggregate_votes`` on the votes without the ``source`` annotator);
- ``crm``: peer review alone, mode ``drop``;
- ``scir``: the agreement filter (judges, peer-review heads, label);
- ``default``: the product's defaults through the product's path —
  ``AggregateConfig()`` (Dawid–Skene, plus the judges-only EM ``p_a_judges``),
  ``denoise.judges_posterior`` as p_i, ``DenoiseConfig()`` (contradicted pairs kept,
  calibrated confidence weights with thresholds 0.3 / 0.5, flip below; CRM peer review
  with its margins as evidence, since the simulation has embeddings).

Metrics, per method: ``acc`` recovered label accuracy (final orientation vs truth, over the
kept pairs) and ``kept`` (share of pairs kept); precision / recall / F1 of the flagged
pairs (flipped or dropped by denoise, any reason) against the truly flipped labels;
``spearman`` between the final p̂ and the true vote share of the final orientation (kept
pairs).

Usage::

    python bench/noise_eval.py [--noise 0 0.2 0.3 0.4] [--pairs 4000] [--seed 0]
    python bench/noise_eval.py --crm-timing 100000   # CRM on 100k pairs × 384-d, timed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.aggregate.aggregation import aggregate_votes  # noqa: E402
from pipeline.chain import aggregate_kwargs, denoise_p_model  # noqa: E402
from pipeline.denoise.denoise import denoise_pairs, judges_posterior  # noqa: E402
from pipeline.denoise.weights import sigmoid  # noqa: E402
from pipeline.margins import compute_margins  # noqa: E402
from schemas.config import AggregateConfig, DenoiseConfig, MarginConfig  # noqa: E402
from schemas.tables import VOTES  # noqa: E402

SOURCE = "source"  # the dataset's label annotator
TEMPLATE = "pairwise_v1|none"


@dataclass(frozen=True)
class Annotator:
    """A simulated judge: mean accuracy, position bias, or a spammer."""

    name: str
    accuracy: float
    position_bias: float = 0.0  # probability of answering "the first response" per call
    spammer: bool = False


DEFAULT_PANEL = (
    Annotator("judge-a", 0.85),
    Annotator("judge-b", 0.78),
    Annotator("judge-c", 0.70, position_bias=0.3),
    Annotator("spammer", 0.5, spammer=True),
)


@dataclass
class Simulation:
    votes: pa.Table
    source_ids: list[str]
    better: dict[str, str]  # source_id -> truly better candidate
    worse: dict[str, str]  # source_id -> the other candidate of the pair
    label: dict[str, str]  # source_id -> the candidate the dataset labels as chosen
    noisy: dict[str, bool]  # source_id -> the dataset label was flipped
    quality: dict[str, float]
    cand_row: dict[str, int]  # candidate_id -> row of ``emb``
    emb: np.ndarray
    prompt_row: dict[str, int]
    prompt_emb: np.ndarray
    kappa_pop: float
    params: dict[str, Any] = field(default_factory=dict)


def calibrate(gap: np.ndarray, acc: float) -> float:
    """κ with mean σ(κ·gap) = acc (bisection; gap ≥ 0)."""
    if acc <= 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while sigmoid(hi * gap).mean() < acc and hi < 1e6:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigmoid(mid * gap).mean() < acc else (lo, mid)
    return 0.5 * (lo + hi)


def simulate(
    n_pairs: int,
    noise: float,
    seed: int,
    *,
    panel: tuple[Annotator, ...] = DEFAULT_PANEL,
    candidates: int = 4,
    difficulty: float = 0.5,
    pop_accuracy: float = 0.8,
    emb_dim: int = 32,
    emb_noise: float = 0.5,
    null_rate: float = 0.01,
) -> Simulation:
    """Simulate one dataset (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n, k = n_pairs, candidates
    q = rng.normal(size=(n, k))
    best = q.argmax(1)
    other = (best + rng.integers(1, k, size=n)) % k
    rows = np.arange(n)
    gap = q[rows, best] - q[rows, other]  # > 0
    cid = np.array([[f"c{i:06d}_{j}" for j in range(k)] for i in range(n)])
    good, bad = cid[rows, best], cid[rows, other]
    a_is_good = good < bad  # canonical order: candidate_a < candidate_b
    cand_a, cand_b = np.where(a_is_good, good, bad), np.where(a_is_good, bad, good)
    pids = np.array([f"p{i:06d}" for i in range(n)])
    sids = np.array([f"s{i:06d}" for i in range(n)])
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.permutation(n)[: int(round(noise * n))]] = True
    label_is_good = ~noisy
    kappa_pop = calibrate(gap, pop_accuracy)

    cols: dict[str, list] = {c: [] for c in VOTES.names}

    def add(verdict: np.ndarray, annotator: str, order: str | None) -> None:
        cols["prompt_id"].extend(pids)
        cols["source_id"].extend(sids)
        cols["candidate_a"].extend(cand_a)
        cols["candidate_b"].extend(cand_b)
        cols["annotator"].extend([annotator] * n)
        cols["order"].extend([order] * n)
        cols["verdict"].extend(verdict.tolist())
        cols["prob_a"].extend([None] * n)
        cols["raw_output"].extend([None] * n)
        cols["parse_error"].extend(
            [None if v is not None else "no verdict" for v in verdict.tolist()]
        )

    # the dataset's own label, in the ab orientation
    add(np.where(label_is_good == a_is_good, "a", "b").astype(object), SOURCE, None)
    for judge in panel:
        kappa = calibrate(gap, judge.accuracy)
        p_right = (1 - difficulty) * judge.accuracy + difficulty * sigmoid(kappa * gap)
        for order in ("ab", "ba"):
            if judge.spammer:
                says_a = rng.random(n) < 0.5
            else:
                right = rng.random(n) < p_right
                says_a = right == a_is_good
                first = rng.random(n) < judge.position_bias
                says_a = np.where(first, order == "ab", says_a)
            verdict = np.where(says_a, "a", "b").astype(object)
            verdict[rng.random(n) < null_rate] = None
            add(verdict, f"{judge.name}|{TEMPLATE}|{order}", order)
    votes = pa.Table.from_pydict(cols, schema=VOTES)

    # embeddings: prompt x, response 0.5 x + q u(x) + noise
    x = rng.normal(size=(n, emb_dim))
    u0 = rng.normal(size=emb_dim)
    mix = rng.normal(size=(emb_dim, emb_dim)) / np.sqrt(emb_dim)
    u = u0 + 0.7 * x @ mix
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    e = (
        0.5 * x[:, None, :]
        + q[:, :, None] * u[:, None, :]
        + emb_noise * rng.normal(size=(n, k, emb_dim))
    )
    flat = cid.reshape(-1)
    return Simulation(
        votes=votes,
        source_ids=sids.tolist(),
        better=dict(zip(sids, good)),
        worse=dict(zip(sids, bad)),
        label=dict(zip(sids, np.where(label_is_good, good, bad))),
        noisy=dict(zip(sids, noisy.tolist())),
        quality=dict(zip(flat, q.reshape(-1).tolist())),
        cand_row={c: i for i, c in enumerate(flat)},
        emb=e.reshape(n * k, emb_dim),
        prompt_row={p: i for i, p in enumerate(pids)},
        prompt_emb=x,
        kappa_pop=kappa_pop,
        params={
            "pairs": n,
            "noise": noise,
            "seed": seed,
            "candidates": k,
            "difficulty": difficulty,
            "pop_accuracy": pop_accuracy,
            "emb_dim": emb_dim,
            "emb_noise": emb_noise,
            "null_rate": null_rate,
            "panel": [a.__dict__ for a in panel],
        },
    )


# ------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    name: str
    aggregate: str  # aggregation method for the pairs' votes
    margins: MarginConfig
    denoise: DenoiseConfig | None  # None: the aggregation's posterior decides alone
    p_model: str | None = None  # "dawid_skene": p_i from a judges-only DS posterior
    embeddings: bool = False


# the LCPO / CRM / SCIR variants of denoise method "weights" (its measured thresholds)
W = dict(method="weights", drop_below=0.5)
OFF = dict(confidence_weights=False, peer_review=False, **W)  # weights and CRM off
LCPO = dict(on_contradicted="keep", confidence_weights=True, peer_review=False, **W)
METHODS = (
    Method(
        "majority",
        "majority",
        MarginConfig(contested_band=0.0),
        DenoiseConfig(on_contradicted="flip", **OFF),
    ),
    Method("dawid_skene", "dawid_skene", MarginConfig(contested_band=0.0), None),
    Method("lcpo", "majority", MarginConfig(), DenoiseConfig(**LCPO)),
    Method("lcpo_ds", "majority", MarginConfig(), DenoiseConfig(**LCPO), p_model="dawid_skene"),
    Method(
        "crm",
        "majority",
        MarginConfig(),
        DenoiseConfig(on_contradicted="keep", confidence_weights=False, peer_review=True, **W),
        embeddings=True,
    ),
    Method(
        "scir",
        "majority",
        MarginConfig(),
        DenoiseConfig(
            on_contradicted="keep",
            confidence_weights=False,
            agreement_filter=True,
            peer_review=True,
            **W,
        ),
        embeddings=True,
    ),
    # the product's defaults, through the product's path: aggregate with the judges-only
    # EM (AggregateConfig), p_model = denoise.judges_posterior of its p_a_judges
    Method(
        "default",
        AggregateConfig().method,
        MarginConfig(),
        DenoiseConfig(),
        p_model="product",
        embeddings=True,
    ),
)


def run_method(sim: Simulation, m: Method) -> dict[str, Any]:
    """Run the real stages for one method; return the final state of every pair."""
    t0 = time.perf_counter()
    if m.p_model == "product":  # the product's aggregation arguments, exactly
        agg = aggregate_votes(
            sim.votes, label_annotators={SOURCE}, **aggregate_kwargs(AggregateConfig())
        )
    else:
        agg = aggregate_votes(
            sim.votes,
            label_annotators={SOURCE},
            method=m.aggregate,
            use_logprobs=AggregateConfig().use_logprobs,
        )
    comps = agg.outputs["comparisons"]
    pairs = compute_margins(comps, agg.outputs["scores"], m.margins).outputs["pairs"]
    final: dict[str, tuple[str, float]] = {}  # source_id -> (chosen, p_hat)
    dropped: set[str] = set()
    info: dict[str, Any] = {}
    if m.denoise is None:  # the aggregation's own posterior orients the pair
        post = judges_posterior(pairs, comps, column="p_a")
        for r, p in zip(pairs.select(["source_id", "chosen_id", "rejected_id"]).to_pylist(), post):
            if not np.isfinite(p) or p == 0.5:
                dropped.add(r["source_id"])
            else:
                final[r["source_id"]] = (
                    (r["chosen_id"], p) if p > 0.5 else (r["rejected_id"], 1.0 - p)
                )
        flagged = {
            s
            for s in sim.source_ids
            if s in dropped or (s in final and final[s][0] != sim.label[s])
        }
    else:
        kw: dict[str, Any] = {"label_source": SOURCE}
        if m.p_model == "product":
            p_model = denoise_p_model(pairs, comps, m.denoise)
            if p_model is not None:
                kw["p_model"] = p_model
        if m.p_model == "dawid_skene":
            judges = sim.votes.filter(pa.compute.not_equal(sim.votes["annotator"], SOURCE))
            ds = aggregate_votes(judges, method="dawid_skene", use_logprobs=True)
            kw["p_model"] = judges_posterior(pairs, ds.outputs["comparisons"], column="p_a")
        if m.embeddings:
            ch = [sim.cand_row[c] for c in pairs.column("chosen_id").to_pylist()]
            rj = [sim.cand_row[c] for c in pairs.column("rejected_id").to_pylist()]
            pr = [sim.prompt_row[p] for p in pairs.column("prompt_id").to_pylist()]
            kw.update(
                emb_chosen=sim.emb[ch], emb_rejected=sim.emb[rj], emb_prompt=sim.prompt_emb[pr]
            )
        res = denoise_pairs(pairs, m.denoise, m.margins, **kw)
        info = {k: v for k, v in res.info.items() if k != "flipped"}
        for r in res.outputs["pairs"].select(["source_id", "chosen_id", "p_hat"]).to_pylist():
            final[r["source_id"]] = (r["chosen_id"], r["p_hat"])
        dropped = set(res.dropped.column("source_id").to_pylist())
        flagged = dropped | {
            r["source_id"]
            for r in res.outputs["pairs"].select(["source_id", "decision"]).to_pylist()
            if r["decision"] == "flip"
        }
    return {
        "final": final,
        "dropped": dropped,
        "flagged": flagged,
        "info": info,
        "seconds": time.perf_counter() - t0,
    }


def score(sim: Simulation, out: dict[str, Any]) -> dict[str, float]:
    """Recovered accuracy, kept share, flag precision / recall / F1, Spearman."""
    from scipy.stats import spearmanr

    final, flagged = out["final"], out["flagged"]
    n = len(sim.source_ids)
    right = [final[s][0] == sim.better[s] for s in final]
    noisy = {s for s in sim.source_ids if sim.noisy[s]}
    tp = len(flagged & noisy)
    prec = tp / len(flagged) if flagged else (1.0 if not noisy else 0.0)
    rec = tp / len(noisy) if noisy else (1.0 if not flagged else 0.0)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    p_hat, share = [], []
    for s, (chosen, p) in final.items():
        rejected = sim.worse[s] if chosen == sim.better[s] else sim.better[s]
        dq = sim.quality[chosen] - sim.quality[rejected]
        p_hat.append(p)
        share.append(float(sigmoid(np.array(sim.kappa_pop * dq))))
    rho = float(spearmanr(p_hat, share).statistic) if len(final) > 2 else float("nan")
    return {
        "acc": float(np.mean(right)) if right else float("nan"),
        "kept": len(final) / n,
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "spearman": rho,
        "flagged": len(flagged) / n,
        "seconds": out["seconds"],
    }


# ------------------------------------------------------------------------------ CLI


def crm_timing(n: int, dim: int = 384, seed: int = 0) -> dict[str, Any]:
    """Time CRM peer review on n random pairs with prompt and response embeddings."""
    from pipeline.denoise.peer_review import review_pairs

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    u = rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
    qc, qr = rng.normal(size=n), rng.normal(size=n)
    ec = (0.5 * x + np.outer(qc, u) * 4 + rng.normal(size=(n, dim))).astype(np.float32)
    er = (0.5 * x + np.outer(qr, u) * 4 + rng.normal(size=(n, dim))).astype(np.float32)
    swap = qr > qc
    ec[swap], er[swap] = er[swap].copy(), ec[swap].copy()
    noisy = rng.random(n) < 0.2
    ec[noisy], er[noisy] = er[noisy].copy(), ec[noisy].copy()
    t0 = time.perf_counter()
    res = review_pairs(ec, er, x, noise_rate=0.2, seed=seed)
    secs = time.perf_counter() - t0
    flagged = res.flagged
    tp = int((flagged & noisy).sum())
    return {
        "pairs": n,
        "dims": dim,
        "seconds": round(secs, 1),
        "precision": round(tp / max(int(flagged.sum()), 1), 3),
        "recall": round(tp / max(int(noisy.sum()), 1), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=[0.0, 0.2, 0.3, 0.4],
        help="shares of flipped dataset labels (default: 0 0.2 0.3 0.4)",
    )
    ap.add_argument("--pairs", type=int, default=4000, help="pairs per dataset (4000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--methods", nargs="+", default=[m.name for m in METHODS], choices=[m.name for m in METHODS]
    )
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument(
        "--difficulty",
        type=float,
        default=0.5,
        help="0: fixed judge accuracy; 1: judges err on close pairs (0.5)",
    )
    ap.add_argument(
        "--emb-noise", type=float, default=0.5, help="noise of the synthetic embeddings (0.5)"
    )
    ap.add_argument(
        "--pop-accuracy",
        type=float,
        default=0.8,
        help="share of pairs on which the user population prefers the truth",
    )
    ap.add_argument(
        "--null-rate",
        type=float,
        default=0.01,
        help="share of judge calls that do not parse (0.01)",
    )
    ap.add_argument(
        "--position-bias",
        type=float,
        default=0.3,
        help="judge-c's probability of answering by position (0.3)",
    )
    ap.add_argument(
        "--flip-below",
        type=float,
        default=None,
        help="override flip_below of the weight-based methods",
    )
    ap.add_argument(
        "--drop-below",
        type=float,
        default=None,
        help="override drop_below of the weight-based methods",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--crm-timing",
        type=int,
        metavar="N",
        default=0,
        help="only time CRM peer review on N pairs of 384-d embeddings",
    )
    args = ap.parse_args(argv)
    if args.crm_timing:
        print(json.dumps(crm_timing(args.crm_timing)))
        return 0
    panel = tuple(
        Annotator(a.name, a.accuracy, args.position_bias if a.position_bias else 0.0, a.spammer)
        for a in DEFAULT_PANEL
    )
    methods = [m for m in METHODS if m.name in args.methods]
    over = {
        k: v
        for k, v in (("flip_below", args.flip_below), ("drop_below", args.drop_below))
        if v is not None
    }
    if over:
        methods = [
            replace(m, denoise=m.denoise.model_copy(update=over))
            if m.denoise is not None and m.denoise.confidence_weights
            else m
            for m in methods
        ]
    results = []
    for noise in args.noise:
        sim = simulate(
            args.pairs,
            noise,
            args.seed,
            panel=panel,
            candidates=args.candidates,
            difficulty=args.difficulty,
            emb_noise=args.emb_noise,
            pop_accuracy=args.pop_accuracy,
            null_rate=args.null_rate,
        )
        if not args.json:
            print(
                f"\nnoise {noise:.0%}: {args.pairs} pairs, seed {args.seed}, difficulty "
                f"{args.difficulty}, label accuracy before curation {1 - noise:.3f}"
            )
            print(
                f"  {'method':<12} {'acc':>6} {'kept':>6} {'flagged':>7} {'prec':>6} "
                f"{'recall':>6} {'F1':>6} {'spearman':>8} {'secs':>6}"
            )
        for m in methods:
            s = score(sim, run_method(sim, m))
            results.append({"noise": noise, "method": m.name, **s})
            if not args.json:
                print(
                    f"  {m.name:<12} {s['acc']:6.3f} {s['kept']:6.3f} {s['flagged']:7.3f} "
                    f"{s['precision']:6.3f} "
                    f"{s['recall']:6.3f} {s['f1']:6.3f} {s['spearman']:8.3f} "
                    f"{s['seconds']:6.1f}"
                )
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
