"""Speed of the hygiene stages: prompt dedup and benchmark decontamination at scale.

Synthetic prompts (8–60 words from a 20k-word vocabulary, one in 50 a one-word edit of
the one before, one in 1,000 a copy of a benchmark item with one word changed) against a
synthetic benchmark list, through the product's own functions
(:func:`pipeline.hygiene.dedup.find_duplicates`, :func:`pipeline.hygiene.decontam.match`).
Printed: seconds and rows/s per step, and each step's time as a ratio to the baseline
measured in the same process — hashing the normalised texts (what exact dedup alone costs).

Usage::

    python bench/hygiene.py                      # 1,000,000 prompts, 10,000 benchmark items
    python bench/hygiene.py --prompts 200000 --items 10000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.hygiene.decontam import BenchmarkItem, build_index, match  # noqa: E402
from pipeline.hygiene.dedup import find_duplicates, normalise_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--ngram", type=int, default=13)
    a = ap.parse_args()
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(20_000)]
    items = [
        BenchmarkItem("synthetic", str(i), " ".join(rng.choices(vocab, k=rng.randint(15, 80))))
        for i in range(a.items)
    ]
    texts = []
    for i in range(a.prompts):
        if i % 1000 == 999:
            words = rng.choice(items).text.split()
            words[0] = "edited"
            texts.append(" ".join(words))
        elif i % 50 == 1:
            words = texts[-1].split()
            words[len(words) // 2] = "changed"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.randint(8, 60))))
    print(f"{a.prompts:,} prompts, {a.items:,} benchmark items", file=sys.stderr)

    t0 = time.perf_counter()
    _ = {hash(normalise_text(t)) for t in texts}
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    dups = find_duplicates(texts)
    t_dedup = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = build_index(items, a.ngram)
    hits = sum(match(t, index, a.ngram) is not None for t in texts)
    t_decon = time.perf_counter() - t0

    n = a.prompts
    print(f"{'step':38s} {'seconds':>8s} {'rows/s':>10s} {'× baseline':>10s}")
    for name, sec in (
        ("baseline: hash of the normalised text", base),
        ("dedup (exact + MinHash LSH near)", t_dedup),
        (f"decontamination ({a.ngram}-grams, {a.items:,} items)", t_decon),
        ("dedup + decontamination", t_dedup + t_decon),
    ):
        print(f"{name:38s} {sec:8.1f} {n / sec:10,.0f} {sec / base:10.1f}")
    print(
        f"flagged: {len(dups):,} duplicates (planted {n // 50:,} edits), {hits:,} "
        f"contaminated (planted {n // 1000:,})"
    )


if __name__ == "__main__":
    main()
