"""Performance of the aggregation core: Dawid–Skene EM at scale, against crowd-kit.

    python bench/core.py [--pairs N] [--votes V] [--annotators W] [--no-table] [--no-crowdkit]

Measured on the 2-core machine (1M × 10, 20 annotators): see the README.

Synthesises N pairs × V votes with a known truth (a/b labels only, so crowd-kit's
``DawidSkene`` sees the same two classes), from W annotators with their own 2×2 confusion
matrices (one spammer, one always-"a" position-biased annotator among them); each pair gets
V distinct annotators. Then, each part in a fresh Python process so that its peak RSS is
its own:

- ``ours arrays``: ``pipeline.aggregate.em.fit_dawid_skene`` on the integer-coded vote arrays
  (item, annotator, label), end to end: sparse matrix build, majority init, EM to the
  stopping rule; also ``fit_one_coin``.
- ``default chain``: what the flow runs with the default config on a VOTES parquet file of
  N·V rows (string ids, as the pipeline has them; written by the parent, read with
  polars, not timed): ``aggregate_votes`` (``AggregateConfig()``: Dawid–Skene, plus the
  judges-only EM), ``compute_margins``, ``denoise_pairs`` with ``DenoiseConfig()``
  (confidence weights on the judges-only posterior; no embeddings, so no peer review) and
  ``build_pairs`` (best_worst). Wall time end to end and per stage, peak RSS.
- ``crowd-kit``: ``DawidSkene().fit`` on a pandas DataFrame (task, worker, label) of the
  same votes; building the DataFrame is timed apart.
- per EM iteration, for both: fit with the stopping rule off (``tol=-inf``) for 2 and for
  2 + k iterations; per iteration = (t(2 + k) − t(2)) / k, so set-up costs cancel.

Peak RSS is the process's ``ru_maxrss`` (whole process: interpreter, libraries, the input
arrays or table); "base" is the RSS just before the timed call. Timings of our own code are
the median of ``--repeat`` runs, crowd-kit's a single run (it is slow).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- data


def synthesize(n_pairs: int, n_votes: int, n_annot: int, seed: int) -> dict[str, np.ndarray]:
    """Votes with known truth. Annotator w has acc[w, c] = P(says c | truth c)."""
    if n_votes > n_annot:
        raise SystemExit(
            f"--votes {n_votes} > --annotators {n_annot}: each pair gets distinct annotators"
        )
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.6, 0.92, size=(n_annot, 2))
    acc[0] = (0.5, 0.5)  # a spammer
    acc[1] = (1.0, 0.0)  # always "a": position bias
    truth = (rng.random(n_pairs) < 0.45).astype(np.int8)  # 1 = b
    start = rng.integers(0, n_annot, n_pairs)
    item = np.repeat(np.arange(n_pairs, dtype=np.int32), n_votes)
    annot = ((np.repeat(start, n_votes) + np.tile(np.arange(n_votes), n_pairs)) % n_annot).astype(
        np.int32
    )
    t = truth[item]
    right = rng.random(item.size) < acc[annot, t]
    label = np.where(right, t, 1 - t).astype(np.int8)
    return {"item": item, "annot": annot, "label": label, "truth": truth}


def annotator_names(n_annot: int) -> list[str]:
    """judge|template|persona|order for all but the last, which is the dataset's label."""
    names = [
        f"judge{w // 2}|pairwise|default|{'ab' if w % 2 == 0 else 'ba'}" for w in range(n_annot - 1)
    ]
    return names + ["source"]


def votes_table(d: dict[str, np.ndarray], n_annot: int):  # -> pa.Table
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas.tables import VOTES

    item = pa.array(d["item"]).cast(pa.string())
    n = len(item)
    names = annotator_names(n_annot)
    annot = pa.array(np.asarray(names, dtype=object)).take(pa.array(d["annot"]))
    orders = pa.array(
        [nm.rsplit("|", 1)[1] if "|" in nm else None for nm in names], pa.string()
    ).take(pa.array(d["annot"]))
    verdict = pa.array(["a", "b"]).take(pa.array(d["label"]))
    null_s = pa.nulls(n, pa.string())
    cols = {
        "prompt_id": pc.binary_join_element_wise("p", item, ""),
        "source_id": pc.binary_join_element_wise("s", item, ""),
        "candidate_a": pc.binary_join_element_wise("c", item, "a", ""),
        "candidate_b": pc.binary_join_element_wise("c", item, "b", ""),
        "annotator": annot,
        "order": orders,
        "verdict": verdict,
        "prob_a": pa.nulls(n, pa.float64()),
        "raw_output": null_s,
        "parse_error": null_s,
    }
    return pa.table(cols, schema=VOTES)


# --------------------------------------------------------------------------- parts


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def rss_now_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def load(data: Path) -> dict[str, np.ndarray]:
    with np.load(data / "votes.npz") as z:
        return {k: z[k] for k in z.files}


def timed(f, repeat: int):
    ts, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def part_ours(data: Path, repeat: int, k: int) -> dict:
    from pipeline.aggregate.em import fit_dawid_skene, fit_one_coin

    d = load(data)
    args = (d["item"], d["annot"], d["label"])
    base = rss_now_gb()
    t, res = timed(lambda: fit_dawid_skene(*args), repeat)
    peak = peak_rss_gb()
    np.save(data / "ours_post.npy", res.posterior[:, 0])
    t_oc, oc = timed(lambda: fit_one_coin(*args), repeat)
    t2, _ = timed(lambda: fit_dawid_skene(*args, tol=-np.inf, max_iter=2), repeat)
    tk, _ = timed(lambda: fit_dawid_skene(*args, tol=-np.inf, max_iter=2 + k), repeat)
    return {
        "t": t,
        "n_iter": res.n_iter,
        "converged": res.converged,
        "base": base,
        "peak": peak,
        "acc": float((res.labels() == d["truth"]).mean()),
        "t_oc": t_oc,
        "n_iter_oc": oc.n_iter,
        "acc_oc": float((oc.labels() == d["truth"]).mean()),
        "per_iter": (tk - t2) / k,
        "t2": t2,
        "tk": tk,
        "reliability": res.reliability().round(3).tolist(),
        "loss_history": res.history,
        "elbo_history": res.elbo,
    }


def part_pipeline(data: Path) -> dict:
    """The product's default chain on the VOTES table, as the flow runs it: each stage
    reads its input, the votes are released after aggregation. Reading the parquet file
    is not timed (its RSS is in "base")."""
    import gc

    import polars as pl

    from pipeline.aggregate.aggregation import aggregate_votes
    from pipeline.chain import aggregate_kwargs, denoise_p_model
    from pipeline.denoise.denoise import denoise_pairs
    from pipeline.margins import compute_margins
    from pipeline.pairs import build_pairs
    from schemas.config import AggregateConfig, DenoiseConfig, MarginConfig, PairsConfig

    votes = pl.read_parquet(data / "votes.parquet")
    rows = votes.height
    truth = load(data)["truth"]
    base = rss_now_gb()
    acfg, mcfg, dcfg = AggregateConfig(), MarginConfig(), DenoiseConfig()
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    agg = aggregate_votes(votes, label_annotators={"source"}, **aggregate_kwargs(acfg))
    steps["aggregate"] = time.perf_counter() - t0
    del votes
    gc.collect()
    comps = agg.outputs["comparisons"]
    t1 = time.perf_counter()
    pairs = compute_margins(comps, agg.outputs["scores"], mcfg).outputs["pairs"]
    steps["margins"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    den = denoise_pairs(
        pairs, dcfg, mcfg, label_source="source", p_model=denoise_p_model(pairs, comps, dcfg)
    )
    steps[f"denoise ({dcfg.method})"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    sel = build_pairs(den.outputs["pairs"], PairsConfig())
    steps["pairs"] = time.perf_counter() - t1
    t = time.perf_counter() - t0
    peak = peak_rss_gb()
    p_a = comps.column("p_a").to_numpy()
    same = (
        np.abs(p_a - np.load(data / "ours_post.npy")).max()
        if (data / "ours_post.npy").exists()
        else None
    )
    return {
        "t": t,
        "steps": steps,
        "base": base,
        "peak": peak,
        "rows": rows,
        "method": agg.info["method"],
        "judges_method": agg.info["judges_method"],
        "n_iter": agg.info["n_iter"],
        "pairs_out": sel.outputs["pairs"].num_rows,
        "denoise": den.counts.to_dict(),
        "flipped": den.info["flipped"],
        "acc": float(((p_a < 0.5) == truth.astype(bool)).mean()),
        "max_diff_vs_arrays": None if same is None else float(same),
    }


def part_crowdkit(data: Path, k: int, fixed: bool) -> dict:
    import warnings

    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    warnings.filterwarnings("ignore")  # crowd-kit 1.4.2's own pandas-3 deprecations
    d = load(data)
    t0 = time.perf_counter()
    df = pd.DataFrame({"task": d["item"], "worker": d["annot"], "label": d["label"]})
    t_df = time.perf_counter() - t0
    if fixed:
        t0 = time.perf_counter()
        DawidSkene(n_iter=2, tol=-np.inf).fit(df)
        t2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        DawidSkene(n_iter=2 + k, tol=-np.inf).fit(df)
        tk = time.perf_counter() - t0
        return {"per_iter": (tk - t2) / k, "t2": t2, "tk": tk}
    base = rss_now_gb()
    t0 = time.perf_counter()
    model = DawidSkene().fit(df)
    t = time.perf_counter() - t0
    peak = peak_rss_gb()
    post = model.probas_.reindex(index=np.arange(len(d["truth"])), columns=[0, 1])
    post = post.to_numpy()[:, 0]
    ours = np.load(data / "ours_post.npy")
    # and ours run for exactly crowd-kit's number of iterations (stopping rule off)
    from pipeline.aggregate.em import fit_dawid_skene

    n_ck = len(model.loss_history_)
    same = fit_dawid_skene(d["item"], d["annot"], d["label"], tol=-np.inf, max_iter=n_ck).posterior[
        :, 0
    ]
    return {
        "t": t,
        "t_df": t_df,
        "base": base,
        "peak": peak,
        "n_iter": n_ck,
        "loss_history": model.loss_history_,
        "acc": float(((post < 0.5) == d["truth"].astype(bool)).mean()),
        "agree": float(((post >= 0.5) == (ours >= 0.5)).mean()),
        "max_diff": float(np.abs(post - ours).max()),
        "agree_same_iters": float(((post >= 0.5) == (same >= 0.5)).mean()),
        "max_diff_same_iters": float(np.abs(post - same).max()),
    }


# --------------------------------------------------------------------------- driver


def run_part(name: str, argv: list[str], timeout: float | None = None) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, *argv]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"part {name} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--votes", type=int, default=10)
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing of our code")
    ap.add_argument(
        "--iters",
        type=int,
        default=10,
        help="k extra fixed iterations for the per-iteration figure",
    )
    ap.add_argument("--no-table", action="store_true", help="skip the default-chain part")
    ap.add_argument("--no-crowdkit", action="store_true")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.part:  # a child process: one measurement, one JSON line
        data = Path(a.data)
        out = {
            "ours": lambda: part_ours(data, a.repeat, a.iters),
            "pipeline": lambda: part_pipeline(data),
            "crowdkit": lambda: part_crowdkit(data, a.iters, fixed=False),
            "crowdkit_fixed": lambda: part_crowdkit(data, a.iters, fixed=True),
        }[a.part]()
        print(json.dumps(out))
        return

    n, v = a.pairs, a.votes
    print(
        f"# bench/core.py: {n:,} pairs × {v} votes = {n * v:,} votes, {a.annotators} "
        f"annotators, {os.cpu_count()} CPUs, python {sys.version.split()[0]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefcurate-bench-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        np.savez(data / "votes.npz", **synthesize(n, v, a.annotators, a.seed))
        print(f"# synthesised in {time.perf_counter() - t0:.1f} s", flush=True)
        common = [
            "--data",
            tmp,
            "--annotators",
            str(a.annotators),
            "--repeat",
            str(a.repeat),
            "--iters",
            str(a.iters),
        ]
        ours = run_part("ours", common)
        print(f"# ours: {json.dumps(ours)}", flush=True)
        table = ck = ckf = None
        if not a.no_table:
            import pyarrow.parquet as pq

            t0 = time.perf_counter()
            pq.write_table(votes_table(load(data), a.annotators), data / "votes.parquet")
            print(f"# VOTES table written in {time.perf_counter() - t0:.1f} s", flush=True)
            table = run_part("pipeline", common)
            print(f"# pipeline: {json.dumps(table)}", flush=True)
        if not a.no_crowdkit:
            ck = run_part("crowdkit", common)
            print(f"# crowd-kit: {json.dumps(ck)}", flush=True)
            ckf = run_part("crowdkit_fixed", common)
            print(f"# crowd-kit fixed: {json.dumps(ckf)}", flush=True)

    rows = [
        (
            "ours: fit_dawid_skene on vote arrays",
            ours["t"],
            ours["base"],
            ours["peak"],
            ours["n_iter"],
            f"label acc vs truth {ours['acc']:.4f}",
        ),
        (
            "ours: fit_one_coin on vote arrays",
            ours["t_oc"],
            None,
            None,
            ours["n_iter_oc"],
            f"label acc vs truth {ours['acc_oc']:.4f}",
        ),
    ]
    if table:
        rows.append(
            (
                "ours: default chain on the VOTES table",
                table["t"],
                table["base"],
                table["peak"],
                table["n_iter"],
                f"{table['rows']:,} votes → {table['pairs_out']:,} pairs; aggregate "
                f"{table['method']} (+ judges-only {table['judges_method']}); max "
                f"|p_a − arrays run| {fmt(table['max_diff_vs_arrays'], '.1e')}",
            )
        )
        for step, dt in table["steps"].items():
            rows.append((f"  {step}", dt, None, None, None, ""))
    if ck:
        rows.append(
            (
                "crowd-kit DawidSkene().fit on a DataFrame",
                ck["t"],
                ck["base"],
                ck["peak"],
                ck["n_iter"],
                f"label acc vs truth {ck['acc']:.4f}; DataFrame built in "
                f"{ck['t_df']:.2f} s (not timed)",
            )
        )
    print()
    print(f"{'measure':52s} {'wall s':>8s} {'base GB':>8s} {'peak GB':>8s} {'iters':>6s}  notes")
    for name, t, base, peak, it, note in rows:
        print(
            f"{name:52s} {fmt(t):>8s} {fmt(base):>8s} {fmt(peak):>8s} "
            f"{'-' if it is None else it:>6}  {note}"
        )
    print()
    print(f"per EM iteration, stopping rule off, (t(2+{a.iters}) − t(2)) / {a.iters}:")
    print(
        f"  ours      {ours['per_iter'] * 1000:8.1f} ms   (t(2) {ours['t2']:.2f} s, "
        f"t({2 + a.iters}) {ours['tk']:.2f} s)"
    )
    if ckf:
        print(
            f"  crowd-kit {ckf['per_iter'] * 1000:8.1f} ms   (t(2) {ckf['t2']:.2f} s, "
            f"t({2 + a.iters}) {ckf['tk']:.2f} s)"
        )
    if ck:
        print()
        print("ratios crowd-kit / ours:")
        print(f"  end to end (arrays run)          {ck['t'] / ours['t']:7.1f}×   (target ≥ 10×)")
        if table:
            print(f"  end to end (default chain)       {ck['t'] / table['t']:7.1f}×")
        if ckf:
            print(
                f"  per EM iteration                 {ckf['per_iter'] / ours['per_iter']:7.1f}×"
                f"   (target ≥ 20×)"
            )
        print(f"  peak RSS (arrays run)            {ck['peak'] / ours['peak']:7.1f}×")
        print(
            f"label agreement ours vs crowd-kit, each with its own stopping rule "
            f"({ours['n_iter']} vs {ck['n_iter']} iterations): {ck['agree'] * 100:.4f}% of "
            f"pairs; max |P_ours(a) − P_crowdkit(a)| = {ck['max_diff']:.1e}"
        )
        print(
            f"label agreement with ours run for crowd-kit's {ck['n_iter']} iterations: "
            f"{ck['agree_same_iters'] * 100:.4f}%; max |ΔP(a)| = "
            f"{ck['max_diff_same_iters']:.1e}"
        )
    print(
        f"targets (issue 5): ours < 10 s and < 3 GB peak at 1M × 10: arrays run "
        f"{ours['t']:.2f} s / {ours['peak']:.2f} GB"
        + (
            f"; default chain (aggregation + margins + weights + pair building) "
            f"{table['t']:.2f} s / {table['peak']:.2f} GB"
            if table
            else ""
        )
    )


if __name__ == "__main__":
    main()
