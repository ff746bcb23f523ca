"""Publish at scale: ``publish_version`` on a synthetic PUBLISHED table of 16M rows.

    python bench/publish.py [--rows N] [--quick] [--json] [--dir DIR]

What is generated: a PUBLISHED table (``schemas.tables.PUBLISHED``, every column) of
``--rows`` pairs, built column-wise with a seeded numpy RNG in chunks of ``--chunk`` rows
(Arrow arrays straight from numpy buffers: no Python dict per row). The prompt, chosen and
rejected texts are ``--min-words``..``--max-words`` words (default 20–80) drawn from a
``--vocab``-word vocabulary (one message each: user / assistant / assistant); ids are
16-hex-digit strings, the floats uniform, a few nulls where the schema allows them. With
the defaults a row is ~1.33 KB in Arrow (0.93 KB in Parquet), so 16M rows are ~21 GB in
memory: where that does not fit, measure fewer rows (both writes stream, so time grows
linearly with the rows; the JSON carries that extrapolation to 16M) or shorter texts
(``--min-words 4 --max-words 12``: ~0.45 KB a row, 16M rows in ~7 GB). Publish writes
~2.4× the plain write's bytes (Parquet + Arrow) and fsyncs them, so on a slow disk it is
bound by the disk, not by the CPU.

What is measured, in this order, in one process:

- ``plain write`` (the baseline): ``pyarrow.parquet.write_table`` of the same table to one
  file in the same folder (no fsync, no hashing, no ``datasets`` copy); the file is then
  removed and ``os.sync`` run so that publish starts without its dirty pages.
- ``publish``: :func:`pipeline.store.publish.publish_version` of the table (empty dropped
  / quarantine tables, a small manifest and card) into ``--dir`` (a temporary folder by
  default): ``data.parquet``, the ``datasets`` ``save_to_disk`` folder ``data/``, the
  manifest with every file's sha256, fsync, atomic rename. Wall seconds, rows/s, and the
  ratio publish / plain write. The store's internal steps (whichever of
  ``write_dataset``, ``_write_parquet``, ``file_hash``, ``fsync_tree`` it calls) are timed
  too, by wrapping them, so the breakdown shows where the time goes.
- memory: the resident set size before each step (the table is already in memory), and the
  step's peak (Linux ``VmHWM``, reset before each step through ``/proc/self/clear_refs``;
  where that is not possible, the process's ``ru_maxrss``, which then covers everything
  before too). "added" is peak − before: what the step itself holds on top of the table.
- bytes written: the sum of the version's file sizes (and the plain file's size).
- verification (timed separately, not part of the publish figure):
  :func:`~pipeline.store.datasets.verify_version` reports no problem, and
  ``datasets.load_from_disk`` of ``data/`` and the Parquet footer of ``data.parquet`` both
  have ``--rows`` rows.

``--json`` prints one JSON document on stdout (progress goes to stderr either way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.store import datasets as store  # noqa: E402
from pipeline.store import publish as publisher  # noqa: E402
from schemas.tables import DROPPED, MESSAGES, PUBLISHED, QUARANTINE, check_table  # noqa: E402

GB = 1e9
TARGET_ROWS = 16_000_000  # issue 19: 16M rows in under 60 s
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m[1]) if m else None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class Step:
    """Wall time, RSS before and peak RSS of one step."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Step:
        self.peak_reset = reset_peak()
        self.rss_before = rss_bytes()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak = peak_bytes()
        self.added = self.peak - self.rss_before

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "rss_before_gb": round(self.rss_before / GB, 3),
            "peak_rss_gb": round(self.peak / GB, 3),
            "added_gb": round(self.added / GB, 3),
            "peak_is_per_step": self.peak_reset,
        }


# --------------------------------------------------------------------------- data


def _strings(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A string array from a uint8 data buffer and int32 offsets (no Python objects)."""
    n = len(offsets) - 1
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data.astype(np.uint8))
    )


def _const(text: str, n: int) -> pa.Array:
    b = text.encode()
    return _strings(np.frombuffer(b * n, dtype=np.uint8), np.arange(n + 1) * len(b))


def _hex_ids(rng: np.random.Generator, n: int, prefix: bytes = b"") -> pa.Array:
    """n random ``prefix + 16 hex digits`` strings."""
    raw = rng.integers(0, 2**63, n, dtype=np.uint64).view(np.uint8).reshape(n, 8)
    digits = np.empty((n, 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 15]
    if prefix:
        digits = np.hstack([np.tile(np.frombuffer(prefix, dtype=np.uint8), (n, 1)), digits])
    width = digits.shape[1]
    return _strings(digits.reshape(-1), np.arange(n + 1) * width)


def _texts(rng: np.random.Generator, n: int, vocab: pa.Array, lo: int, hi: int) -> pa.Array:
    """n texts of lo..hi words drawn uniformly from ``vocab``, words joined by spaces."""
    lengths = rng.integers(lo, hi + 1, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    words = pc.take(vocab, pa.array(rng.integers(0, len(vocab), int(offsets[-1]), dtype=np.int32)))
    lists = pa.ListArray.from_arrays(pa.array(offsets), words)
    return pc.binary_join(lists, " ")


def _messages(role: str, content: pa.Array) -> pa.Array:
    n = len(content)
    struct = pa.StructArray.from_arrays(
        [_const(role, n), content], fields=list(MESSAGES.value_type)
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), struct, MESSAGES)


def _pick(rng: np.random.Generator, n: int, choices: list[str], p=None) -> pa.Array:
    return pc.take(pa.array(choices, pa.string()), pa.array(rng.choice(len(choices), n, p=p)))


def _with_nulls(rng: np.random.Generator, arr: pa.Array, rate: float) -> pa.Array:
    if rate <= 0:
        return arr
    return pc.if_else(pa.array(rng.random(len(arr)) < rate), pa.nulls(len(arr), arr.type), arr)


def make_vocab(rng: np.random.Generator, size: int) -> pa.Array:
    """``size`` distinct lower-case pseudo-words of 2–10 letters (common lengths likelier)."""
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    weights = 1.0 / np.arange(1, 27)
    weights /= weights.sum()
    words: set[str] = set()
    while len(words) < size:
        k = int(
            rng.choice(
                [2, 3, 4, 5, 6, 7, 8, 9, 10], p=np.array([5, 12, 16, 16, 14, 13, 10, 8, 6]) / 100
            )
        )
        words.add(bytes(rng.choice(letters, k, p=weights)).decode())
    return pa.array(sorted(words), pa.string())


def make_chunk(
    rng: np.random.Generator, n: int, vocab: pa.Array, lo: int, hi: int
) -> pa.RecordBatch:
    """n PUBLISHED rows."""
    policies = ["model-a", "model-b", "model-c", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct"]
    chosen_pol = rng.integers(0, len(policies), n)
    rejected_pol = (chosen_pol + rng.integers(1, len(policies), n)) % len(policies)
    pol = pa.array(policies, pa.string())
    p_hat = rng.uniform(0.5, 1.0, n)
    flag = rng.random(n)
    flags_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(flag < 0.3, out=flags_offsets[1:])
    flags = pa.ListArray.from_arrays(
        pa.array(flags_offsets), _const("plurality", int(flags_offsets[-1])), pa.list_(pa.string())
    )
    cols = {
        "prompt": _messages("user", _texts(rng, n, vocab, lo, hi)),
        "chosen": _messages("assistant", _texts(rng, n, vocab, lo, hi)),
        "rejected": _messages("assistant", _texts(rng, n, vocab, lo, hi)),
        "margin": pa.array(rng.uniform(0, 5, n)),
        "weight": pa.array(rng.uniform(0, 1, n)),
        "p_hat": pa.array(p_hat),
        "disagreement": pa.array(1.0 - p_hat),
        "n_votes": pa.array(rng.integers(1, 11, n, dtype=np.int32)),
        "score_chosen": _with_nulls(rng, pa.array(rng.uniform(0, 10, n)), 0.1),
        "score_rejected": _with_nulls(rng, pa.array(rng.uniform(0, 10, n)), 0.1),
        "source_id": _hex_ids(rng, n, b"src-"),
        "prompt_id": _hex_ids(rng, n),
        "pair_id": _hex_ids(rng, n),
        "chosen_id": _hex_ids(rng, n),
        "rejected_id": _hex_ids(rng, n),
        "chosen_policy": pc.take(pol, pa.array(chosen_pol)),
        "rejected_policy": pc.take(pol, pa.array(rejected_pol)),
        "label_status": _pick(rng, n, ["agree", "contested", "unknown"], [0.8, 0.15, 0.05]),
        "decision": _pick(rng, n, ["keep", "flip"], [0.93, 0.07]),
        "flipped": pa.array(rng.random(n) < 0.07),
        "flags": flags,
        "curriculum_stage": _with_nulls(rng, pa.array(rng.integers(0, 3, n, dtype=np.int32)), 0.5),
        "split": _with_nulls(rng, _pick(rng, n, ["train", "test"], [0.95, 0.05]), 0.2),
        "tools": pa.nulls(n, pa.string()),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in PUBLISHED], schema=PUBLISHED)


def make_table(rows: int, chunk: int, seed: int, vocab_size: int, lo: int, hi: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, vocab_size)
    batches = []
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        batches.append(make_chunk(rng, n, vocab, lo, hi))
        done += n
        if len(batches) % 4 == 0 or done == rows:
            log(f"  generated {done:,} / {rows:,} rows ({rss_bytes() / GB:.1f} GB RSS)")
    return check_table(pa.Table.from_batches(batches, PUBLISHED), PUBLISHED, "published")


# --------------------------------------------------------------------------- timing


class Wrapped:
    """Time the store's internal functions while publish runs (by name; absent ones are
    skipped), so the breakdown follows whatever publish_version calls."""

    NAMES = ("write_dataset", "_write_parquet", "file_hash", "fsync_tree", "fsync_file")

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.saved: dict[str, object] = {}

    def __enter__(self) -> Wrapped:
        for name in self.NAMES:
            fn = getattr(publisher, name, None)
            if fn is None:
                continue
            self.saved[name] = fn

            def timed(*a, _fn=fn, _name=name, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self.seconds[_name] = self.seconds.get(_name, 0.0) + time.perf_counter() - t0
                    self.calls[_name] = self.calls.get(_name, 0) + 1

            setattr(publisher, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self.saved.items():
            setattr(publisher, name, fn)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="rows (default 16,000,000)")
    ap.add_argument("--quick", action="store_true", help="1,000,000 rows")
    ap.add_argument("--chunk", type=int, default=250_000, help="rows per generated chunk")
    ap.add_argument("--vocab", type=int, default=5_000, help="vocabulary size")
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", help="where to publish (default: a temporary folder, removed)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain write")
    ap.add_argument("--no-verify", action="store_true", help="skip the verification")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    a = ap.parse_args()
    rows = a.rows if a.rows is not None else (1_000_000 if a.quick else TARGET_ROWS)

    log(
        f"# bench/publish.py: {rows:,} PUBLISHED rows, {a.min_words}-{a.max_words} words "
        f"per text, {a.vocab:,}-word vocabulary, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, pyarrow {pa.__version__}"
    )
    with Step("generate") as gen:
        table = make_table(rows, a.chunk, a.seed, a.vocab, a.min_words, a.max_words)
    log(
        f"generated in {gen.seconds:.1f} s: {table.nbytes / GB:.2f} GB in Arrow, "
        f"{table.num_rows:,} rows in {table['prompt'].num_chunks} chunks"
    )
    t0 = time.perf_counter()
    import datasets  # noqa: F401  (publish imports it lazily: not counted in its time/memory)

    out_import = round(time.perf_counter() - t0, 3)
    dropped = DROPPED.empty_table()
    quarantine = QUARANTINE.empty_table()

    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="prefcurate-bench-publish-"))
    base.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "rows": rows,
        "table_gb": round(table.nbytes / GB, 3),
        "words": [a.min_words, a.max_words],
        "vocab": a.vocab,
        "cpus": os.cpu_count(),
        "load_average_start": round(os.getloadavg()[0], 2),
        "generate": gen.as_dict(),
        "import_datasets_s": out_import,
    }
    try:
        if not a.no_baseline:
            plain = base / "plain.parquet"
            log("plain pyarrow.parquet.write_table ...")
            with Step("plain") as st:
                pq.write_table(table, plain)
            out["plain_write"] = {**st.as_dict(), "bytes": plain.stat().st_size}
            log(f"  {st.seconds:.1f} s, {plain.stat().st_size / GB:.2f} GB")
            plain.unlink()
            os.sync()

        log("publish_version ...")
        with Wrapped() as w, Step("publish") as st:
            ref = publisher.publish_version(
                base / "store",
                "bench",
                data=table,
                dropped=dropped,
                quarantine=quarantine,
                manifest={"bench": "publish", "rows": rows},
                card="# bench\n",
                content_key=f"bench-{rows}-{a.seed}",
            )
        files = sorted(p for p in ref.path.rglob("*") if p.is_file())
        written = tree_bytes(ref.path)
        out["publish"] = {
            **st.as_dict(),
            "rows_per_s": round(rows / st.seconds),
            "bytes": written,
            "files": len(files),
            "data_dir_bytes": tree_bytes(ref.path / store.DATA_DIR),
            "data_parquet_bytes": (ref.path / store.DATA_PARQUET).stat().st_size,
            "steps": {k: round(v, 3) for k, v in sorted(w.seconds.items())},
            "calls": dict(sorted(w.calls.items())),
        }
        log(f"  {st.seconds:.1f} s, {written / GB:.2f} GB in {len(files)} files")
        if "plain_write" in out:
            out["ratio_publish_over_plain"] = round(st.seconds / out["plain_write"]["seconds"], 2)

        if not a.no_verify:
            log("verifying ...")
            with Step("verify") as vs:
                problems = store.verify_version(ref.path)
                ds_rows = datasets.load_from_disk(str(ref.path / store.DATA_DIR)).num_rows
                pq_rows = pq.read_metadata(ref.path / store.DATA_PARQUET).num_rows
            out["verify"] = {
                "seconds": round(vs.seconds, 3),
                "problems": problems,
                "load_from_disk_rows": ds_rows,
                "parquet_rows": pq_rows,
                "ok": not problems and ds_rows == rows and pq_rows == rows,
            }
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    if rows != TARGET_ROWS and rows > 0:  # linear in rows (both are streaming writes)
        scale = TARGET_ROWS / rows
        out["linear_extrapolation_to_16m_s"] = {
            k: round(out[k]["seconds"] * scale, 1) for k in ("plain_write", "publish") if k in out
        }
    # ru_maxrss follows the VmHWM resets, so the process's peak is the largest step peak
    out["peak_rss_process_gb"] = max(
        v["peak_rss_gb"] for v in out.values() if isinstance(v, dict) and "peak_rss_gb" in v
    )
    out["load_average_end"] = round(os.getloadavg()[0], 2)

    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"# {rows:,} rows, {out['table_gb']:.2f} GB in Arrow; load average "
            f"{out['load_average_start']} -> {out['load_average_end']}"
        )
        print(
            f"{'step':34s} {'seconds':>8s} {'rows/s':>11s} {'GB written':>10s} "
            f"{'peak GB':>8s} {'added GB':>8s}"
        )
        for key, label in (
            ("plain_write", "baseline: pq.write_table"),
            ("publish", "publish_version"),
        ):
            if key in out:
                r = out[key]
                print(
                    f"{label:34s} {r['seconds']:8.1f} {rows / r['seconds']:11,.0f} "
                    f"{r['bytes'] / GB:10.2f} {r['peak_rss_gb']:8.2f} {r['added_gb']:8.2f}"
                )
        if "ratio_publish_over_plain" in out:
            print(f"ratio publish / plain write: {out['ratio_publish_over_plain']:.2f}×")
        if "publish" in out:
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in out["publish"]["steps"].items())
            print(f"publish steps: {steps}")
        if "linear_extrapolation_to_16m_s" in out:
            ex = ", ".join(
                f"{k} {v:.0f} s" for k, v in out["linear_extrapolation_to_16m_s"].items()
            )
            print(f"linear extrapolation to {TARGET_ROWS:,} rows: {ex}")
        if "verify" in out:
            v = out["verify"]
            print(
                f"verify ({v['seconds']:.1f} s): {'ok' if v['ok'] else 'FAILED'}; "
                f"load_from_disk {v['load_from_disk_rows']:,} rows, data.parquet "
                f"{v['parquet_rows']:,} rows" + (f"; {v['problems']}" if v["problems"] else "")
            )
    return 0 if out.get("verify", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
