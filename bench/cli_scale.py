"""The CLI end to end at scale (issue 19 item 4): ``prefcurate run`` on a generated pairs
file of N pairs × 5 votes, as a subprocess, with wall time and peak RSS.

The file is JSONL in the pairs format of ``data/examples/pairs_votes.jsonl``: a prompt,
chosen and rejected texts of 8–40 words from a 2,000-word vocabulary, and five annotators'
votes (each right with its own accuracy 0.6–0.9 against a hidden truth that agrees with
the label 80% of the time). The run uses ``data/examples/pairs_votes.yaml`` (no judges,
no model load) with ``data_root`` in a temporary folder, a fresh Prefect home, ``--json``.
Peak RSS is the largest resident set of the CLI and its children (``resource`` RUSAGE_
CHILDREN, max over the run), which includes Prefect's ephemeral API server.

Growth: with several ``--pairs`` sizes, the ratio of time per pair between the largest
and the smallest (the target: 10× rows ≤ 11× time between 100k and 1M).

Usage::

    python bench/cli_scale.py                        # 100k and 1M pairs
    python bench/cli_scale.py --pairs 20000 100000   # smaller sizes
    python bench/cli_scale.py --json
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
ANNOTATORS = 5


def write_pairs(path: Path, n: int, seed: int = 0) -> dict:
    """``n`` pairs × 5 votes as JSONL (chunks of 50k rows); returns what was written."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(2000)])
    acc = np.linspace(0.6, 0.9, ANNOTATORS)
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            label_right = rng.random(m) < 0.8
            lines = []
            for j in range(m):
                i = start + j
                words = rng.integers(0, vocab.size, 96)
                lens = rng.integers(8, 40, 3)
                p = " ".join(vocab[words[: lens[0]]])
                c = " ".join(vocab[words[32 : 32 + lens[1]]])
                r = " ".join(vocab[words[64 : 64 + lens[2]]])
                right = rng.random(ANNOTATORS) < acc
                says_chosen = right == label_right[j]
                votes = [
                    {"annotator": f"ann{k}", "preferred": "chosen" if s else "rejected"}
                    for k, s in enumerate(says_chosen)
                ]
                lines.append(
                    json.dumps(
                        {
                            "id": f"x{i}",
                            "prompt": f"{p} {i}",
                            "chosen": c,
                            "rejected": r,
                            "votes": votes,
                        }
                    )
                )
            fh.write("\n".join(lines) + "\n")
    return {"pairs": n, "bytes": path.stat().st_size, "write_seconds": time.perf_counter() - t0}


def run_cli(pairs_file: Path, work: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--config",
        str(ROOT / "data" / "examples" / "pairs_votes.yaml"),
        "--set",
        f"input.path={pairs_file}",
        "--set",
        f"data_root={work / 'data'}",
        "--set",
        "name=cli-scale",
        "--json",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"prefcurate run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {
        "wall_seconds": round(wall, 1),
        # RUSAGE_CHILDREN is the max over finished children; the first run sets it
        "peak_rss_gb": round(peak_kb / 2**20, 2) if peak_kb > before else None,
        "rows": summary.get("rows"),
        "stages": {k: v.get("in") for k, v in (summary.get("stages") or {}).items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"load_average": os.getloadavg()[0], "runs": []}
    for n in sorted(args.pairs):
        with tempfile.TemporaryDirectory(prefix="prefcurate-cli-scale-") as d:
            work = Path(d)
            f = work / "pairs.jsonl"
            info = write_pairs(f, n)
            print(f"{n:,} pairs written ({info['bytes'] / 2**20:.0f} MiB)", file=sys.stderr)
            res = run_cli(f, work)
            out["runs"].append({**info, **res})
            print(
                f"{n:,} pairs: {res['wall_seconds']} s, peak {res['peak_rss_gb']} GB",
                file=sys.stderr,
            )
    if len(out["runs"]) > 1:
        a, b = out["runs"][0], out["runs"][-1]
        out["growth"] = {
            "rows_ratio": b["pairs"] / a["pairs"],
            "time_ratio": round(b["wall_seconds"] / a["wall_seconds"], 2),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"\nprefcurate run on a pairs file × {ANNOTATORS} votes "
        f"(load average {out['load_average']:.1f})"
    )
    print(f"{'pairs':>10s} {'MiB':>7s} {'wall s':>8s} {'peak GB':>8s} {'pairs/s':>9s}")
    for r in out["runs"]:
        print(
            f"{r['pairs']:>10,} {r['bytes'] / 2**20:>7.0f} {r['wall_seconds']:>8.1f} "
            f"{r['peak_rss_gb'] if r['peak_rss_gb'] is not None else '-':>8} "
            f"{r['pairs'] / r['wall_seconds']:>9,.0f}"
        )
    if "growth" in out:
        g = out["growth"]
        print(f"growth: {g['rows_ratio']:.0f}× rows took {g['time_ratio']}× the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
