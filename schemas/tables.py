"""Arrow schemas for every stage boundary, checked on read and on write.

One ``pa.Schema`` constant per table (DESIGN.md §3). ``check_table`` validates a table
against its declared schema and raises :class:`SchemaError` naming the table and column;
``conform`` casts a table whose columns are right but whose types are looser (e.g. a
polars ``large_string``) onto the declared schema, column order included.

>>> t = pa.table({"source_id": ["x"], "file": ["f.jsonl"], "row": [3],
...               "stage": ["ingest"], "reason": ["empty_text"], "detail": [None],
...               "raw": ["{}"]})
>>> check_table(conform(t, QUARANTINE, "quarantine"), QUARANTINE, "quarantine").num_rows
1
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from schemas.errors import SchemaError

MESSAGE = pa.struct(
    [
        pa.field("role", pa.string(), nullable=False),
        pa.field("content", pa.string(), nullable=False),
    ]
)
MESSAGES = pa.list_(MESSAGE)


def _f(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


PROMPTS = pa.schema(
    [
        _f("prompt_id", pa.string()),
        _f("source_id", pa.string()),
        _f("prompt", MESSAGES),
        _f("source", pa.string()),
        _f("meta", pa.string(), True),  # JSON text
    ]
)

CANDIDATES = pa.schema(
    [
        _f("prompt_id", pa.string()),
        _f("source_id", pa.string()),
        _f("candidate_id", pa.string()),
        _f("policy", pa.string()),
        _f("sample_index", pa.int32()),
        _f("text", pa.string(), True),
        _f("finish_reason", pa.string(), True),
        _f("n_prompt_tokens", pa.int32(), True),
        _f("n_output_tokens", pa.int32(), True),
        _f("request_hash", pa.string(), True),
        _f("truncated", pa.bool_()),
        _f("error", pa.string(), True),
        # multi-turn: this candidate's own earlier turns after the prompt (its answers and
        # the follow-up user turns), ``text`` being its answer to the last one; null for
        # a single turn
        _f("history", MESSAGES, True),
    ]
)

VOTES = pa.schema(
    [
        _f("prompt_id", pa.string()),
        _f("source_id", pa.string()),
        _f("candidate_a", pa.string()),  # canonical order: candidate_a < candidate_b
        _f("candidate_b", pa.string()),
        _f("annotator", pa.string()),
        _f("order", pa.string(), True),  # "ab" | "ba" | null (ingested)
        _f("verdict", pa.string(), True),  # "a" | "b" | "tie" | null, in the ab orientation
        _f("prob_a", pa.float64(), True),
        _f("raw_output", pa.string(), True),
        _f("parse_error", pa.string(), True),
    ]
)

SCORES = pa.schema(
    [
        _f("candidate_id", pa.string()),
        _f("annotator", pa.string()),
        _f("aspect", pa.string()),
        _f("score", pa.float64(), True),
        _f("raw_output", pa.string(), True),
        _f("parse_error", pa.string(), True),
    ]
)

COMPARISONS = pa.schema(
    [
        _f("prompt_id", pa.string()),
        _f("source_id", pa.string()),
        _f("candidate_a", pa.string()),
        _f("candidate_b", pa.string()),
        _f("n_votes", pa.int32()),  # valid (non-null) votes
        _f("n_a", pa.float64()),
        _f("n_b", pa.float64()),
        _f("n_tie", pa.float64()),
        _f("n_null", pa.int32()),
        _f("p_a", pa.float64(), True),  # aggregated P(a > b); null when no valid vote
        _f("label", pa.string(), True),  # original dataset label ("a" | "b"), if any
        # judges-only EM posterior P(a > b), without the label annotators' votes (aggregate's
        # judges_method); null when not fitted or no valid judge vote
        _f("p_a_judges", pa.float64(), True),
    ]
)

PAIRS = pa.schema(
    [
        _f("pair_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("source_id", pa.string()),
        _f("chosen_id", pa.string()),
        _f("rejected_id", pa.string()),
        _f("p_hat", pa.float64(), True),
        _f("disagreement", pa.float64(), True),
        _f("n_votes", pa.int32()),
        _f("margin", pa.float64(), True),
        _f("weight", pa.float64(), True),
        _f("label_status", pa.string()),  # agree | contested | contradicted | unknown
        _f("similarity", pa.float64(), True),
        _f("flags", pa.list_(pa.string())),
        _f("decision", pa.string()),  # keep | flip | drop
        _f("reason", pa.string(), True),
        _f("score_chosen", pa.float64(), True),
        _f("score_rejected", pa.float64(), True),
        _f("curriculum_stage", pa.int32(), True),
        _f("split", pa.string(), True),
    ]
)

PUBLISHED = pa.schema(
    [
        _f("prompt", MESSAGES),
        _f("chosen", MESSAGES),
        _f("rejected", MESSAGES),
        _f("margin", pa.float64()),
        _f("weight", pa.float64()),
        _f("p_hat", pa.float64()),
        _f("disagreement", pa.float64()),
        _f("n_votes", pa.int32()),
        _f("score_chosen", pa.float64(), True),
        _f("score_rejected", pa.float64(), True),
        _f("source_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("pair_id", pa.string()),
        _f("chosen_id", pa.string()),
        _f("rejected_id", pa.string()),
        _f("chosen_policy", pa.string()),
        _f("rejected_policy", pa.string()),
        _f("label_status", pa.string()),
        _f("decision", pa.string()),
        _f("flipped", pa.bool_()),  # chosen/rejected exchanged against the input's label
        _f("flags", pa.list_(pa.string())),
        _f("curriculum_stage", pa.int32(), True),
        _f("split", pa.string(), True),
        # JSON text of the prompt's OpenAI tool schemas (TRL's ``tools`` column), or null
        _f("tools", pa.string(), True),
    ]
)

# Intransitive triples among a prompt's candidates (GPM / panel), one row per triple.
CYCLES = pa.schema(
    [
        _f("source_id", pa.string(), True),
        _f("prompt_id", pa.string()),
        _f("candidate_1", pa.string()),  # 1 ≻ 2 ≻ 3 ≻ 1
        _f("candidate_2", pa.string()),
        _f("candidate_3", pa.string()),
        _f("p_12", pa.float64()),  # P(1 ≻ 2)
        _f("p_23", pa.float64()),
        _f("p_31", pa.float64()),
        _f("origin", pa.string()),  # "panel" | "gpm" | caller's name
    ]
)

# Every row a stage did not keep: the stage, why, and enough to find it again.
DROPPED = pa.schema(
    [
        _f("stage", pa.string()),
        _f("source_id", pa.string(), True),
        _f("row_id", pa.string(), True),  # candidate_id / pair_id / request hash, per stage
        _f("reason", pa.string()),
        _f("detail", pa.string(), True),
    ]
)

QUARANTINE = pa.schema(
    [
        _f("source_id", pa.string(), True),
        _f("file", pa.string(), True),
        _f("row", pa.int64(), True),
        _f("stage", pa.string()),
        _f("reason", pa.string()),
        _f("detail", pa.string(), True),
        _f("raw", pa.string(), True),
    ]
)


def embedding_schema(id_column: str, dim: int) -> pa.Schema:
    """``(id_column: string, embedding: fixed_size_list<float32>[dim])``, both non-null."""
    return pa.schema(
        [
            pa.field(id_column, pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def schema_for(name: str, table: pa.Table | None = None) -> pa.Schema:
    """The declared schema of table ``name``; embedding tables take their width from the
    table (it depends on the embedding model)."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    if name in ("prompt_embeddings", "candidate_embeddings") and table is not None:
        id_col = "prompt_id" if name.startswith("prompt") else "candidate_id"
        typ = table.schema.field("embedding").type if "embedding" in table.schema.names else None
        dim = typ.list_size if typ is not None and pa.types.is_fixed_size_list(typ) else 0
        return embedding_schema(id_col, dim)
    raise SchemaError(f"no declared schema for table '{name}'", table=name, column=None)


SCHEMAS: dict[str, pa.Schema] = {
    "prompts": PROMPTS,
    "candidates": CANDIDATES,
    "votes": VOTES,
    "scores": SCORES,
    "comparisons": COMPARISONS,
    "pairs": PAIRS,
    "published": PUBLISHED,
    "dropped": DROPPED,
    "quarantine": QUARANTINE,
    "cycles": CYCLES,
}


def _nested_nulls(arr: pa.Array | pa.ChunkedArray, typ: pa.DataType, path: str) -> str | None:
    """Return the path of a non-nullable nested child that holds a null, if any."""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        for ch in chunks:
            flat = ch.flatten()
            bad = _nested_nulls(flat, typ.value_type, path + "[]")
            if bad:
                return bad
    elif pa.types.is_struct(typ):
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        for i in range(typ.num_fields):
            f = typ.field(i)
            for ch in chunks:
                child = ch.field(i)
                if not f.nullable and child.null_count:
                    return f"{path}.{f.name}"
                bad = _nested_nulls(child, f.type, f"{path}.{f.name}")
                if bad:
                    return bad
    return None


def check_table(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Check ``table`` against ``schema``; raise SchemaError naming table and column.

    Column names, order, types and non-nullable columns (nested fields included) are
    checked. Returns the table unchanged so calls can be chained.
    """
    got = table.schema.names
    want = schema.names
    missing = [c for c in want if c not in got]
    if missing:
        raise SchemaError(
            f"table '{name}': missing column '{missing[0]}' (expected columns {want})",
            table=name,
            column=missing[0],
        )
    extra = [c for c in got if c not in want]
    if extra:
        raise SchemaError(
            f"table '{name}': unexpected column '{extra[0]}' (declared columns are {want})",
            table=name,
            column=extra[0],
        )
    if got != want:
        raise SchemaError(
            f"table '{name}': columns out of order: {got} != {want}", table=name, column=None
        )
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            raise SchemaError(
                f"table '{name}': column '{field.name}' has type {col.type}, expected {field.type}",
                table=name,
                column=field.name,
            )
        if not field.nullable and col.null_count:
            raise SchemaError(
                f"table '{name}': column '{field.name}' is not nullable but "
                f"has {col.null_count} null value(s)",
                table=name,
                column=field.name,
            )
        bad = _nested_nulls(col, field.type, field.name)
        if bad:
            raise SchemaError(
                f"table '{name}': nested field '{bad}' is not nullable but has null value(s)",
                table=name,
                column=bad,
            )
    return table


# nullable columns added after tables were first written: a table written before reads
# with nulls there (stage outputs of earlier runs, published versions' lineage)
LATER_COLUMNS: dict[str, tuple[str, ...]] = {"candidates": ("history",), "published": ("tools",)}


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast ``table``'s columns onto ``schema`` (order, types), then check it.

    Use this on tables produced by polars (large strings, int64) before writing.
    """
    for col in LATER_COLUMNS.get(name.rpartition("/")[2], ()):
        if col not in table.schema.names and col in schema.names:  # written before it existed
            table = table.append_column(col, pa.nulls(table.num_rows, schema.field(col).type))
    missing = [c for c in schema.names if c not in table.schema.names]
    if missing:
        raise SchemaError(
            f"table '{name}': missing column '{missing[0]}' (expected columns {schema.names})",
            table=name,
            column=missing[0],
        )
    cols = []
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"table '{name}': column '{field.name}' of type {col.type} "
                    f"cannot be cast to {field.type}: {exc}",
                    table=name,
                    column=field.name,
                ) from exc
        cols.append(col)
    # an empty table as one empty chunk per column (a polars frame's has none, which
    # datasets and other readers do not take)
    out = pa.Table.from_arrays(cols, schema=schema) if table.num_rows else schema.empty_table()
    return check_table(out, schema, name)


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table with ``schema``."""
    return schema.empty_table()


def from_rows(rows: list[dict[str, Any]], schema: pa.Schema, name: str) -> pa.Table:
    """Build a checked table from a list of row dicts."""
    if not rows:
        return schema.empty_table()
    names = set(schema.names)
    for i, r in enumerate(rows):
        extra = set(r) - names
        if extra:
            col = sorted(extra)[0]
            raise SchemaError(
                f"table '{name}': row {i} has unknown column '{col}' "
                f"(declared columns are {schema.names})",
                table=name,
                column=col,
            )
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as exc:
        raise SchemaError(
            f"table '{name}': rows do not fit the declared schema: {exc}", table=name, column=None
        ) from exc
    return check_table(table, schema, name)


def schema_fingerprint(schema: pa.Schema) -> str:
    """A short stable hash of a schema (names, types, nullability)."""
    import hashlib

    text = ";".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
