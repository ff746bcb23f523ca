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

``tests/test_ingest_columnar.py`` checks that both paths give the same outputs, drops and
quarantine rows on fuzzed files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import hashing
from pipeline.ingest import readers as rd
from pipeline.ingest import rows as rw
from pipeline.ingest import stage as st
from pipeline.stage import Reason, StageCounts, StageResult, quarantine_table
from schemas.tables import CANDIDATES, DROPPED, PROMPTS, VOTES, conform

CHUNK_BYTES = 32 << 20  # bytes of JSON lines parsed as one block
BLOCK_BYTES = 4 << 20  # pyarrow parses blocks in parallel
MIN_SPLIT = 32  # a refused chunk this small goes to the row path line by line
# what Python's str.strip() removes, in ASCII; the other Unicode spaces send a text whose
# edge holds one to the row path (so the expressions strip exactly as Python does)
_ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_UNICODE_SPACE = "[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_VOTE_LIST = pa.list_(pa.struct([("annotator", pa.string()), ("preferred", pa.string())]))
_RESERVED_TYPES = {
    "id": (pa.string(), pa.large_string(), pa.int64(), pa.null()),
    "prompt": (pa.string(), pa.large_string(), pa.null()),
    "chosen": (pa.string(), pa.large_string(), pa.null()),
    "rejected": (pa.string(), pa.large_string(), pa.null()),
}


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


# --------------------------------------------------------------------------- step 1


def _clean_mask(df, schema: pa.Schema, name: str):
    """The rows of ``df`` (a parsed piece, polars) the expressions cover, as a boolean
    Series."""
    import polars as pl

    n = df.height
    cols = set(schema.names)
    for col, types in _RESERVED_TYPES.items():
        if col in cols and schema.field(col).type not in types:
            return pl.Series([False] * n)
    ok = pl.lit(True)
    for col in ("prompt", "chosen", "rejected"):
        if col not in cols or pa.types.is_null(schema.field(col).type):
            return pl.Series([False] * n)
        ok = ok & _clean_text(pl.col(col))
    ok = ok & (_strip(pl.col("chosen")) != _strip(pl.col("rejected")))
    if "id" in cols and schema.field("id").type in (pa.string(), pa.large_string()):
        ok = ok & (pl.col("id").is_null() | _clean_text(pl.col("id")))
    if "votes" in cols:
        ok = ok & _clean_votes(schema.field("votes").type, name)
    return df.select(ok.alias("ok"))["ok"].fill_null(False)


def _strip(e):
    return e.str.strip_chars(_ASCII_SPACE)


def _clean_text(e):
    """A non-null text with no NUL, not blank, and no Unicode space at an edge."""
    s = _strip(e)
    return (
        e.is_not_null()
        & ~e.str.contains("\x00", literal=True)
        & (s.str.len_bytes() > 0)
        & ~s.str.contains(f"^{_UNICODE_SPACE}|{_UNICODE_SPACE}$")
    )


def _clean_votes(typ: pa.DataType, name: str):
    import polars as pl

    v = pl.col("votes")
    if pa.types.is_null(typ):
        return pl.lit(True)
    if not pa.types.is_list(typ):
        return v.is_null()
    item = typ.value_type
    if not (
        pa.types.is_struct(item)
        and sorted(item.field(i).name for i in range(item.num_fields)) == ["annotator", "preferred"]
        and all(
            item.field(k).type in (pa.string(), pa.large_string())
            for k in ("annotator", "preferred")
        )
    ):
        return v.is_null()
    ann = v.list.eval(pl.element().struct.field("annotator"))
    pref = v.list.eval(pl.element().struct.field("preferred"))
    good_ann = ann.list.eval(
        (_clean_text(pl.element()) & (pl.element() != pl.lit(name))).fill_null(False)
    ).list.all()
    return v.is_null() | (
        v.list.eval(pl.element().is_not_null()).list.all()
        & good_ann
        & pref.list.eval(pl.element().is_in(list(rw.PREFERRED)).fill_null(False)).list.all()
        & (ann.list.n_unique() == v.list.len())
    )


def _clean_frame(df, schema: pa.Schema, rows: list[int]):
    """The clean rows ``df`` of a piece in step 2's columns, but the hashes."""
    import polars as pl

    cols = df.columns
    ids = (
        pl.col("id").cast(pl.String)
        if "id" in cols and schema.field("id").type != pa.null()
        else pl.lit(None, dtype=pl.String)
    )
    votes = (
        pl.col("votes").cast(pl.List(pl.Struct({"annotator": pl.String, "preferred": pl.String})))
        if "votes" in cols and schema.field("votes").type != pa.null()
        else pl.lit(
            None, dtype=pl.List(pl.Struct({"annotator": pl.String, "preferred": pl.String}))
        )
    )
    return df.select(
        row=pl.Series(rows, dtype=pl.Int64),
        id=ids,
        prompt=pl.col("prompt").cast(pl.String),
        chosen=pl.col("chosen").cast(pl.String),
        rejected=pl.col("rejected").cast(pl.String),
        votes=votes,
    )


# --------------------------------------------------------------------------- step 2


def _escape_free(col: str):
    """Where ``col`` is a string JSON writes as is (its canonical JSON is a plain
    concatenation)."""
    import polars as pl

    return pl.col(col).is_not_null() & ~pl.col(col).str.contains(r'["\\\x00-\x1f]')


def _with_ids(df, base: str):
    """``sid``, ``pid``, ``c_id``, ``r_id`` and ``messages`` for the fast rows."""
    import polars as pl

    prefix = "[" + json.dumps(base, ensure_ascii=False) + ","
    hashed_sid = hashing.hash_canonical(
        df,
        pl.concat_str([pl.lit(prefix), pl.col("row").cast(pl.String), pl.lit("]")]),
        pl.lit(True),
        lambda r: hashing.stable_hash(base, r["row"]),
    )
    df = df.with_columns(sid=pl.coalesce(pl.col("id"), hashed_sid))
    df = df.with_columns(
        pid=hashing.hash_canonical(
            df,
            pl.concat_str([pl.lit('[[["user","'), pl.col("prompt"), pl.lit('"]]]')]),
            _escape_free("prompt"),
            lambda r: hashing.prompt_id([{"role": "user", "content": r["prompt"]}]),
        )
    )
    for col, policy, out in (
        ("chosen", "given:chosen", "c_id"),
        ("rejected", "given:rejected", "r_id"),
    ):
        df = df.with_columns(
            hashing.hash_canonical(
                df,
                pl.concat_str(
                    [
                        pl.lit('["'),
                        pl.col("pid"),
                        pl.lit(f'","{policy}",0,"'),
                        pl.col(col),
                        pl.lit('"]'),
                    ]
                ),
                _escape_free(col),
                lambda r, col=col, policy=policy: hashing.candidate_id(r["pid"], policy, 0, r[col]),
            ).alias(out)
        )
    msg = pl.Struct({"role": pl.String, "content": pl.String})
    return df.select(
        "row",
        "sid",
        "pid",
        messages=pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("prompt"))).cast(
            pl.List(msg)
        ),
        chosen="chosen",
        rejected="rejected",
        c_id="c_id",
        r_id="r_id",
        votes="votes",
        meta=pl.lit(None, dtype=pl.String),
    )


def _row_frame(records: list[dict[str, Any]]):
    """Good rows from the row path as a frame of step 2's columns."""
    import polars as pl

    msg = pl.Struct({"role": pl.String, "content": pl.String})
    vote = pl.Struct({"annotator": pl.String, "preferred": pl.String})
    schema = {
        "row": pl.Int64,
        "sid": pl.String,
        "pid": pl.String,
        "messages": pl.List(msg),
        "chosen": pl.String,
        "rejected": pl.String,
        "c_id": pl.String,
        "r_id": pl.String,
        "votes": pl.List(vote),
        "meta": pl.String,
    }
    return pl.DataFrame(records, schema=schema)


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


def _step1_table(
    table: pa.Table, rows: list[int], name: str, base: str, frames: list, slow: list[int]
) -> None:
    """Split one parsed piece: its clean rows (as a frame with ids) into ``frames``, the
    others' positions into ``slow``."""
    import polars as pl

    # the pair's own fields by columns; any other field (messages, meta, verifier
    # targets) sends its row to the row path, tested in pyarrow (polars 2.1 does not
    # convert a JSON reader's list<null> column)
    own = [c for c in table.column_names if c in ("id", "prompt", "chosen", "rejected", "votes")]
    others = [pc.is_null(table.column(c)) for c in table.column_names if c not in own]
    sub = table.select(own)
    if "votes" in own and sub.schema.field("votes").type == pa.list_(pa.null()):
        sub = sub.set_column(own.index("votes"), "votes", sub.column("votes").cast(_VOTE_LIST))
    try:
        df = pl.from_arrow(sub)
    except pl.exceptions.PolarsError:  # a shape polars does not read: the row path
        slow.extend(range(table.num_rows))
        return
    mask = _clean_mask(df, sub.schema, name)
    for none in others:
        mask = mask & pl.from_arrow(none)
    idx = pl.Series(range(table.num_rows))
    fast = idx.filter(mask).to_list()
    slow.extend(idx.filter(~mask).to_list())
    if fast:
        clean = _clean_frame(df.filter(mask), sub.schema, [rows[i] for i in fast])
        frames.append(_with_ids(clean, base))


# --------------------------------------------------------------------------- step 2


def _first(col: str, key: list[str]):
    import polars as pl

    return pl.col(col).first().over(key)


def _resolve(good, name: str, limit: int | None):
    """Step 2 over the good rows (sorted by row, repeated ids removed): the output tables
    and the dropped rows."""
    import polars as pl

    key = ["pid", "lo", "hi"]
    g = good.with_columns(
        lo=pl.when(pl.col("chosen") < pl.col("rejected"))
        .then(pl.col("chosen"))
        .otherwise(pl.col("rejected")),
        hi=pl.when(pl.col("chosen") < pl.col("rejected"))
        .then(pl.col("rejected"))
        .otherwise(pl.col("chosen")),
    ).with_columns(first=pl.col("row") == pl.col("row").min().over(key))
    firsts = pl.col("first").cast(pl.Int64)
    g = g.with_columns(
        lim=pl.lit(limit is not None)
        & ((firsts.cum_sum() - firsts) >= (limit if limit is not None else 0))
    )
    g = g.with_columns(
        f_sid=_first("sid", key),
        f_c=_first("c_id", key),
        f_r=_first("r_id", key),
        f_chosen=_first("chosen", key),
    ).with_columns(
        a=pl.when(pl.col("f_c") < pl.col("f_r")).then(pl.col("f_c")).otherwise(pl.col("f_r")),
        b=pl.when(pl.col("f_c") < pl.col("f_r")).then(pl.col("f_r")).otherwise(pl.col("f_c")),
        swapped=pl.col("f_chosen") != pl.col("chosen"),
    )
    mine = (
        pl.when(~pl.col("swapped"))
        .then(pl.col("f_c"))
        .when(pl.col("f_c") == pl.col("a"))
        .then(pl.col("b"))
        .otherwise(pl.col("a"))
    )
    g = g.with_columns(
        lab=pl.when(mine == pl.col("a")).then(pl.lit("a")).otherwise(pl.lit("b")),
        opp=pl.when(mine == pl.col("a")).then(pl.lit("b")).otherwise(pl.lit("a")),
        pair_id=_pair_ids(g),
    )
    kept = g.filter(pl.col("first") & ~pl.col("lim"))
    voting = g.filter(~pl.col("lim"))

    prompts = kept.filter(pl.col("row") == pl.col("row").min().over("pid")).select(
        prompt_id="pid", source_id="sid", prompt="messages", source=pl.lit(name), meta="meta"
    )
    cands = (
        pl.concat(
            [
                kept.select(
                    "row",
                    side=pl.lit(k),
                    pid="pid",
                    sid="sid",
                    cid=cid,
                    policy=pl.lit(policy),
                    text=text,
                )
                for k, (cid, policy, text) in enumerate(
                    [("c_id", "given:chosen", "chosen"), ("r_id", "given:rejected", "rejected")]
                )
            ]
        )
        .sort(["row", "side"])
        .unique("cid", keep="first", maintain_order=True)
        .select(
            prompt_id="pid",
            source_id="sid",
            candidate_id="cid",
            policy="policy",
            sample_index=pl.lit(0, dtype=pl.Int32),
            text="text",
            finish_reason=pl.lit(None, dtype=pl.String),
            n_prompt_tokens=pl.lit(None, dtype=pl.Int32),
            n_output_tokens=pl.lit(None, dtype=pl.Int32),
            request_hash=pl.lit(None, dtype=pl.String),
            truncated=pl.lit(False),
            error=pl.lit(None, dtype=pl.String),
            history=pl.lit(
                None, dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
            ),
        )
    )
    base = ["row", "pid", "f_sid", "a", "b"]
    label = voting.select(
        *base, k=pl.lit(-1, dtype=pl.Int64), annotator=pl.lit(name), verdict="lab"
    )
    given = (
        voting.filter(pl.col("votes").list.len() > 0)
        .select(*base, "lab", "opp", "votes", k=pl.int_ranges(0, pl.col("votes").list.len()))
        .explode(["votes", "k"])
        .filter(pl.col("votes").is_not_null())
        .select(
            *base,
            k=pl.col("k").cast(pl.Int64),
            annotator=pl.col("votes").struct.field("annotator"),
            verdict=pl.col("votes")
            .struct.field("preferred")
            .replace_strict(["chosen", "rejected", "tie"], [None, None, "tie"], default=None)
            .fill_null(
                pl.when(pl.col("votes").struct.field("preferred") == "chosen")
                .then(pl.col("lab"))
                .otherwise(pl.col("opp"))
            ),
        )
    )
    votes = (
        pl.concat([label, given])
        .sort(["row", "k"])
        .select(
            prompt_id="pid",
            source_id="f_sid",
            candidate_a="a",
            candidate_b="b",
            annotator="annotator",
            order=pl.lit(None, dtype=pl.String),
            verdict="verdict",
            prob_a=pl.lit(None, dtype=pl.Float64),
            raw_output=pl.lit(None, dtype=pl.String),
            parse_error=pl.lit(None, dtype=pl.String),
        )
    )
    drops = g.filter(pl.col("lim") | ~pl.col("first")).select(
        "row",
        stage=pl.lit(st.STAGE),
        source_id="sid",
        row_id="pair_id",
        reason=pl.when(pl.col("lim"))
        .then(pl.lit(str(Reason.LIMIT)))
        .otherwise(pl.lit(str(Reason.DUPLICATE_PAIR))),
        detail=pl.when(pl.col("lim"))
        .then(pl.lit(f"limit={limit} reached"))
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("same pair as source_id "),
                    pl.col("f_sid"),
                    pl.when(pl.col("swapped"))
                    .then(pl.lit(" with chosen and rejected swapped"))
                    .otherwise(pl.lit("")),
                    pl.lit("; its votes are pooled there"),
                ]
            )
        ),
    )
    return int(kept.height), prompts, cands, votes, drops


def _pair_ids(g):
    import polars as pl

    text = pl.concat_str(
        [
            pl.lit('["'),
            pl.col("pid"),
            pl.lit('","'),
            pl.col("c_id"),
            pl.lit('","'),
            pl.col("r_id"),
            pl.lit('"]'),
        ]
    )
    return hashing.hash_canonical(
        g, text, pl.lit(True), lambda r: hashing.pair_id(r["pid"], r["c_id"], r["r_id"])
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
