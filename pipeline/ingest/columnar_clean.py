"""Step 1 of the columnar ingest (:mod:`pipeline.ingest.columnar`): column expressions
that pass the rows in the common, clean shape (string texts, an integer or string id,
well-formed votes, nothing else) and route every other row to the row path."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import hashing
from pipeline.ingest import rows as rw

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
