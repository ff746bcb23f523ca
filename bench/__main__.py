"""Every benchmark in one command: ``python -m bench [--quick]``.

Runs, each in its own process (so one's memory and threads do not skew the next):
``bench/generation.py`` (vLLM offline vs transformers tokens/s, framework overhead),
``bench/core.py`` (Dawid–Skene vs crowd-kit), ``bench/noise_eval.py`` (label recovery
under flipped labels) and ``bench/gpm_eval.py`` (GPM vs BT on cyclic preferences, budgeted
selection) when present; prints each script's own table, then one summary table of the
figures the README quotes. Sized to finish in about 10 minutes on 2 idle cores
(``--quick``: about 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _run(label: str, args: list[str], timeout: int) -> tuple[int, float]:
    print(f"\n=== {label}: {' '.join(args)}", flush=True)
    t0 = time.time()
    try:
        rc = subprocess.run([sys.executable, *args], cwd=REPO, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"--- {label}: timed out after {timeout} s", flush=True)
        rc = 124
    return rc, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (~3 min)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prefcurate-bench-"))
    gen_json, noise_json = tmp / "generation.json", tmp / "noise.json"
    summary: list[tuple[str, str]] = []
    status: list[tuple[str, int, float]] = []

    gen = [
        "-m",
        "bench.generation",
        "--hf-threads",
        "1",
        "--json",
        str(gen_json),
        "--candidates",
        "20000" if a.quick else "100000",
    ]
    if a.quick:
        gen.append("--skip-hf")
    rc, dt = _run("generation", gen, 900)
    status.append(("generation", rc, dt))
    if gen_json.exists():
        for row in json.loads(gen_json.read_text()):
            m = row["measure"]
            if any(k in m for k in ("tokens/s", "ratio", "cand/s", "overhead", "engine start")):
                summary.append((m, row["value"]))

    rc, dt = _run(
        "core",
        ["bench/core.py", "--pairs", "100000" if a.quick else "1000000", "--repeat", "1"],
        900,
    )
    status.append(("core (see its table above for the crowd-kit ratios)", rc, dt))

    noise = [
        "bench/noise_eval.py",
        "--noise",
        "0",
        "0.2",
        "0.3",
        "0.4",
        "--pairs",
        "1000" if a.quick else "4000",
        "--methods",
        "majority",
        "dawid_skene",
        "default",
        "--json",
    ]
    print(f"\n=== noise_eval: {' '.join(noise)}", flush=True)
    t0 = time.time()
    res = subprocess.run(
        [sys.executable, *noise], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    status.append(("noise_eval", res.returncode, time.time() - t0))
    if res.returncode == 0:
        noise_json.write_text(res.stdout)
        rows = json.loads(res.stdout)
        print(f"{'noise':>6} {'method':<12} {'acc':>6} {'kept':>6} {'F1':>6} {'spearman':>8}")
        for r in rows:
            print(
                f"{r['noise']:>6.1f} {r['method']:<12} {r['acc']:>6.3f} {r['kept']:>6.3f} "
                f"{(r['f1'] or 0):>6.3f} {(r['spearman'] or 0):>8.3f}"
            )
            if r["noise"] == 0.3:
                summary.append(
                    (f"noise 30%: {r['method']} acc / F1", f"{r['acc']:.3f} / {(r['f1'] or 0):.3f}")
                )
    else:
        print(res.stderr[-2000:])

    if (HERE / "gpm_eval.py").exists():
        rc, dt = _run("gpm_eval", ["bench/gpm_eval.py"] + (["--quick"] if a.quick else []), 900)
        status.append(("gpm_eval", rc, dt))

    print(
        "\n=== summary (load average now "
        f"{os.getloadavg()[0]:.1f}; other work on the machine skews every figure)"
    )
    width = max((len(k) for k, _ in summary), default=10)
    for k, v in summary:
        print(f"{k:<{width}}  {v}")
    for name, rc, dt in status:
        print(f"{name}: exit {rc}, {dt:.0f} s")
    return 0 if all(rc == 0 for _, rc, _ in status) else 1


if __name__ == "__main__":
    sys.exit(main())
