"""Cyclic (intransitive) prompts: find the triples, flag the prompts and their pairs
(see :mod:`pipeline.gpm.model`).

>>> t = pa.table({"prompt_id": ["p"] * 3, "candidate_a": ["x", "x", "y"],
...               "candidate_b": ["y", "z", "z"], "p_a": [0.9, 0.2, 0.8]})
>>> find_cycles(t).select(["candidate_1", "candidate_2", "candidate_3"]).to_pylist()
[{'candidate_1': 'x', 'candidate_2': 'y', 'candidate_3': 'z'}]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pipeline.gpm.model import FLAG_CYCLIC, ORIGINS
from schemas.errors import PrefcurateError
from schemas.tables import CYCLES

log = logging.getLogger("prefcurate.gpm")

# ------------------------------------------------------------------------------ cycles


def find_cycles(
    table: pa.Table | pl.DataFrame,
    *,
    band: float = 0.05,
    p_column: str = "p_a",
    origin: str = "panel",
) -> pa.Table:
    """Intransitive triples per prompt from pairwise probabilities.

    Input: rows ``prompt_id, candidate_a, candidate_b, <p_column>`` (= P(a ≻ b)),
    ``source_id`` optional: a COMPARISONS table (``p_a``), GPM votes (``prob_a``) or any
    table like them. Several rows for one pair are averaged; null p is no edge. An edge
    x → y needs P(x ≻ y) > ½ + ``band``. Output: CYCLES, one row per triple x ≻ y ≻ z ≻ x
    (candidate_1 = the smallest id of the three), with the three probabilities.
    """
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    if not isinstance(df, pl.DataFrame) or df.height == 0:
        return CYCLES.empty_table()
    for col in ("prompt_id", "candidate_a", "candidate_b", p_column):
        if col not in df.columns:
            raise PrefcurateError(
                f"find_cycles: column '{col}' is missing (need prompt_id, "
                f"candidate_a, candidate_b and the probability column "
                f"'{p_column}')"
            )
    if "source_id" not in df.columns:
        df = df.with_columns(source_id=pl.lit(None, pl.Utf8))
    key = ["source_id", "prompt_id"]
    p = (
        df.filter(pl.col(p_column).is_not_null() & pl.col(p_column).is_not_nan())
        .group_by([*key, "candidate_a", "candidate_b"])
        .agg(p=pl.col(p_column).cast(pl.Float64).mean())
    )
    edges = pl.concat(
        [
            p.filter(pl.col("p") > 0.5 + band).select(
                *key, pl.col("candidate_a").alias("w"), pl.col("candidate_b").alias("l"), "p"
            ),
            p.filter(pl.col("p") < 0.5 - band).select(
                *key,
                pl.col("candidate_b").alias("w"),
                pl.col("candidate_a").alias("l"),
                (1.0 - pl.col("p")).alias("p"),
            ),
        ]
    )
    if edges.height < 3:
        return CYCLES.empty_table()
    e1 = edges.rename({"w": "c1", "l": "c2", "p": "p_12"})
    e2 = edges.rename({"w": "c2", "l": "c3", "p": "p_23"})
    e3 = edges.rename({"w": "c3", "l": "c1", "p": "p_31"})
    tri = (
        e1.filter(pl.col("c1") < pl.col("c2"))
        .join(e2, on=[*key, "c2"], nulls_equal=True)
        .filter(pl.col("c1") < pl.col("c3"))
        .join(e3, on=[*key, "c3", "c1"], nulls_equal=True)
        .sort([*key, "c1", "c2", "c3"], nulls_last=True)
    )
    out = tri.select(
        "source_id",
        "prompt_id",
        pl.col("c1").alias("candidate_1"),
        pl.col("c2").alias("candidate_2"),
        pl.col("c3").alias("candidate_3"),
        "p_12",
        "p_23",
        "p_31",
        origin=pl.lit(origin),
    ).to_arrow()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in CYCLES], schema=CYCLES)


@dataclass(frozen=True)
class CyclicPrompts:
    """Prompts with at least one intransitive triple (flag ``cyclic``)."""

    keys: list[tuple[str | None, str]]  # (source_id, prompt_id), sorted
    counts: dict[str, int]  # prompts, triples, and prompts per origin


def flag_cyclic_prompts(cycles: pa.Table, origins: Sequence[str] | None = None) -> CyclicPrompts:
    """The prompts with a cycle (from the given origins; default all) and the counts:
    ``prompts`` (cyclic prompts), ``triples``, ``prompts_<origin>`` per origin and
    ``prompts_both`` (cyclic for the panel and the GPM alike)."""
    df = (
        pl.from_arrow(cycles)
        if cycles.num_rows
        else pl.DataFrame(schema={"source_id": pl.Utf8, "prompt_id": pl.Utf8, "origin": pl.Utf8})
    )
    if origins is not None:
        df = df.filter(pl.col("origin").is_in(list(origins)))
    keys_df = (
        df.select("source_id", "prompt_id")
        .unique()
        .sort(["source_id", "prompt_id"], nulls_last=True)
    )
    keys = list(keys_df.iter_rows())
    counts = {"prompts": len(keys), "triples": df.height}
    per: dict[str, set] = {}
    for o in sorted(set(df["origin"].to_list()) | set(ORIGINS)):
        sub = df.filter(pl.col("origin") == o).select("source_id", "prompt_id").unique()
        per[o] = set(sub.iter_rows())
        counts[f"prompts_{o}"] = len(per[o])
    counts["prompts_both"] = len(per.get("panel", set()) & per.get("gpm", set()))
    return CyclicPrompts(keys, counts)


def flag_cyclic_pairs(pairs: pa.Table, cyclic: CyclicPrompts) -> pa.Table:
    """``pairs`` (PAIRS) with the flag ``cyclic`` added to every pair of a cyclic prompt
    (matched on source_id and prompt_id; no duplicate flag). Rows and order unchanged."""
    if not pairs.num_rows or not cyclic.keys:
        return pairs
    from pipeline.margins import add_flag

    keys = set(cyclic.keys)
    mask = [
        (s, p) in keys
        for s, p in zip(
            pairs.column("source_id").to_pylist(), pairs.column("prompt_id").to_pylist()
        )
    ]
    return add_flag(pairs, mask, FLAG_CYCLIC)[0]
