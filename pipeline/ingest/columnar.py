"""Columnar ingest of preference-pair files (JSON lines and Parquet): the same tables,
reasons and order as the row path of :mod:`pipeline.ingest.stage`, at column speed.

Two steps:

1. **Rows, each on its own.** A file is read in chunks with pyarrow's readers (a JSON-lines
   chunk is parsed as one block; a chunk pyarrow refuses — a bad line, a field whose type
   changes, a duplicate key — is split in halves until the refused lines are found, and
   those few go to the row path). Column expressions then pass the rows in the common,
   clean shape: ``prompt``, ``chosen`` and ``rejected`` strings, an integer or string
   ``id``, ``votes`` a list of ``{annotator, preferred}``, nothing else. Every other row —
   anything a check rejects or that the expressions do not cover (messages, extra fields
   that go into ``meta``, verifier targets, control characters, Unicode spaces at an
   edge) — goes through the row path's own checks (:func:`stage.check_row`), which name
   its row and reason exactly as before.
2. **Rows against each other**, as polars expressions over the good rows in file order:
   a repeated ``id`` is quarantined (the first is kept), ``limit`` counts kept pairs, the
   same pair again (maybe swapped) is dropped and its votes are pooled on the first,
   prompts and candidates keep their first occurrence.

``tests/ingest/test_ingest_columnar.py`` checks that both paths give the same outputs, drops and
quarantine rows on fuzzed files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import hashing
from pipeline.ingest import readers as rd
from pipeline.ingest import rows as rw
from pipeline.ingest import stage as st
from pipeline.ingest.columnar_clean import _row_frame, _step1_table
from pipeline.ingest.columnar_resolve import _resolve
from pipeline.stage import StageCounts, StageResult, quarantine_table
from schemas.tables import CANDIDATES, DROPPED, PROMPTS, VOTES, conform

CHUNK_BYTES = 32 << 20  # bytes of JSON lines parsed as one block
BLOCK_BYTES = 4 << 20  # pyarrow parses blocks in parallel
MIN_SPLIT = 32  # a refused chunk this small goes to the row path line by line


# --------------------------------------------------------------------------- reading


def _jsonl_lines(path: Path) -> Iterator[list[tuple[int, bytes]]]:
    """The row path's data lines (:func:`stage.jsonl_lines`) in chunks of about
    ``CHUNK_BYTES``."""
    with path.open("rb") as fh:
        out, size = [], 0
        for line in rd.jsonl_lines(fh):
            out.append(line)
            size += len(line[1])
            if size >= CHUNK_BYTES:
                yield out
                out, size = [], 0
        if out:
            yield out


_CONTROL = re.compile(rb"[\x00-\x1f]")


def _odd_lines(chunk: list[tuple[int, bytes]]) -> list[bool]:
    """:func:`_odd` of every line; at once where the whole chunk is printable ASCII."""
    import numpy as np

    blob = np.frombuffer(b"".join(d for _, d in chunk), dtype=np.uint8)
    if not blob.size or (blob.min() >= 0x20 and blob.max() < 0x80):
        return [d[:1] != b"{" and not d.lstrip().startswith(b"{") for _, d in chunk]
    return [_odd(d) for _, d in chunk]


def _odd(data: bytes) -> bool:
    """A line for the row path before any parsing: one that does not start an object
    (pyarrow 26 crashes on a block of bare ``null`` lines), a raw control character (JSON
    refuses it inside a string, pyarrow does not always) or bytes that are not UTF-8
    (pyarrow does not check them)."""
    if not data.lstrip().startswith(b"{") or _CONTROL.search(data):
        return True
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _parse(
    lines: list[tuple[int, bytes]],
) -> Iterator[tuple[list[tuple[int, bytes]], pa.Table | None]]:
    """(lines, the table pyarrow parsed from them) per piece of ``lines``; a piece
    pyarrow refuses is halved until it is ``MIN_SPLIT`` lines or fewer (table None: the
    row path reads those lines)."""
    import pyarrow.json as pj

    if not lines:
        return
    data = b"\n".join(d for _, d in lines)
    try:
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        table = None
    if table is not None and table.num_rows == len(lines):
        yield lines, table
        return
    if len(lines) <= MIN_SPLIT:
        yield lines, None
        return
    half = len(lines) // 2
    yield from _parse(lines[:half])
    yield from _parse(lines[half:])


# --------------------------------------------------------------------------- the row path


def _row_path(rows: list[rw._Row], name: str, base: str, file: str, good: list, bad: list) -> None:
    """The row path's per-row checks: good rows as records of step 2, the others as
    quarantine rows."""
    for r in rows:
        try:
            sid, value, messages, pair = rw.check_row(r, "pairs", name, base)
        except rw._Reject as rej:
            bad.append(rw.quarantine_row(rej, file, r))
            continue
        pid = hashing.prompt_id(messages)
        good.append(
            {
                "row": r.row,
                "sid": sid,
                "pid": pid,
                "messages": messages,
                "chosen": pair.chosen,
                "rejected": pair.rejected,
                "c_id": hashing.candidate_id(pid, "given:chosen", 0, pair.chosen),
                "r_id": hashing.candidate_id(pid, "given:rejected", 0, pair.rejected),
                "votes": [{"annotator": a, "preferred": v} for a, v in pair.votes],
                "meta": rw._meta(value),
            }
        )


# --------------------------------------------------------------------------- entry


def _raw_of(path: Path, fmt: str, rows: set[int]) -> dict[int, str]:
    """The quarantine table's raw text of the given rows (read again: they are few)."""
    out: dict[int, str] = {}
    if not rows:
        return out
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for lineno, data in rd.jsonl_lines(fh):
                if lineno in rows:
                    out[lineno] = rw._clip(data.decode("utf-8"))
        return out
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rd._BATCH):
        want = [i for i in range(batch.num_rows) if n + 1 + i in rows]
        for i, rec in zip(want, batch.take(want).to_pylist() if want else []):
            out[n + 1 + i] = rw._clip(rw._safe_json(rec))
        n += batch.num_rows
    return out


def _read(path: Path, fmt: str, file: str, name: str, base: str):
    """Step 1 over the whole file: (data rows, fast frames, row-path records, quarantine)."""
    frames: list = []
    records: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    rows_in = 0
    if fmt == "jsonl":
        try:
            for chunk in _jsonl_lines(path):
                rows_in += len(chunk)
                odd = _odd_lines(chunk)
                routed = [rd.jsonl_row(n, d) for (n, d), o in zip(chunk, odd) if o]
                plain = [line for line, o in zip(chunk, odd) if not o]
                for lines, table in _parse(plain):
                    if table is None:
                        routed += [rd.jsonl_row(n, d) for n, d in lines]
                        continue
                    slow: list[int] = []
                    _step1_table(table, [n for n, _ in lines], name, base, frames, slow)
                    routed += [rd.jsonl_row(*lines[i]) for i in slow]
                _row_path(routed, name, base, file, records, bad)
        except OSError as exc:
            raise st.InputError(f"{file}: cannot read: {exc}") from exc
        return rows_in, frames, records, bad
    import pyarrow.parquet as pq

    batches: list[pa.RecordBatch] = []

    def flush() -> None:
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        first = rows_in - table.num_rows + 1
        rows = list(range(first, rows_in + 1))
        slow: list[int] = []
        _step1_table(table, rows, name, base, frames, slow)
        recs = table.take(slow).to_pylist() if slow else []
        routed = [rw._Row(rows[i], rw._clip(rw._safe_json(rec)), rec) for i, rec in zip(slow, recs)]
        _row_path(routed, name, base, file, records, bad)
        batches.clear()

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rd._BATCH):
            batches.append(batch)
            rows_in += batch.num_rows
            if sum(b.num_rows for b in batches) >= 1 << 17:
                flush()
        flush()
    except (OSError, pa.ArrowException) as exc:
        raise st.InputError(
            f"{file}: cannot read as Parquet (after {rows_in} rows): {exc}"
        ) from exc
    return rows_in, frames, records, bad


def ingest_pairs_columnar(
    path: Path, fmt: str, file: str, name: str, base: str, limit: int | None
) -> StageResult:
    """:func:`stage.ingest_pairs` for a ``.jsonl`` or ``.parquet`` file, by columns."""
    import polars as pl

    rows_in, frames, records, bad = _read(path, fmt, file, name, base)
    good = pl.concat([*frames, _row_frame(records)], how="vertical_relaxed").sort("row")
    good = good.with_columns(first_of_id=pl.col("row").min().over("sid"))
    first_row = pl.col("first_of_id")
    dups = good.filter(pl.col("row") != first_row).select("row", "sid", first=first_row)
    if dups.height:
        raw = _raw_of(path, fmt, set(dups["row"].to_list()))
        for row, sid, first in dups.iter_rows():
            bad.append(rw.quarantine_row(rw.duplicate_id(sid, first), file, rw._Row(row, raw[row])))
        good = good.filter(pl.col("row") == first_row)
    good = good.drop("first_of_id")
    bad.sort(key=lambda q: q["row"])
    if good.height == 0:
        raise st._no_rows_error(file, "pairs", rows_in, bad)
    kept, prompts, cands, votes, drops = _resolve(good, name, limit)
    drops = drops.sort("row").drop("row")
    outputs = {
        "prompts": conform(prompts.to_arrow(), PROMPTS, "prompts"),
        "candidates": conform(cands.to_arrow(), CANDIDATES, "candidates"),
        "votes": conform(votes.to_arrow(), VOTES, "votes"),
    }
    dropped = conform(drops.to_arrow(), DROPPED, "dropped")
    counts = StageCounts(
        rows_in=rows_in,
        kept=kept,
        dropped=dict(Counter(drops["reason"].to_list())),
        quarantined=dict(Counter(str(q["reason"]) for q in bad)),
    )
    st.log.info(
        "ingest %s (%s, pairs, columnar): %d rows in, %d kept, dropped %s, quarantined %s",
        file,
        fmt,
        rows_in,
        kept,
        counts.dropped,
        counts.quarantined,
    )
    return StageResult(
        stage=st.STAGE,
        outputs=outputs,
        counts=counts,
        dropped=dropped,
        quarantine=quarantine_table(st.STAGE, bad),
        info={
            "file": file,
            "format": fmt,
            "kind": "pairs",
            "source": name,
            **{f"n_{k}": t.num_rows for k, t in outputs.items()},
        },
    )
