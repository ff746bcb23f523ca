"""Dropping prompts, with their pairs, and accounting for every source row (hygiene stages).

A hygiene stage decides per prompt; the unit of its counts is the **source row** (a
prompt of a prompts file, a pair of a pairs file), so a dropped prompt drops every row
that asked it, each a DROPPED row with the stage's reason and detail.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import StageCounts, StageResult
from schemas.tables import DROPPED, conform


def source_rows(
    prompts: pa.Table, candidates: pa.Table | None, votes: pa.Table | None
) -> dict[str, list[str]]:
    """{prompt_id: the source_ids that asked it}, in first-seen order: one per prompt for
    a prompts file, one per pair for a pairs file (from its candidates and votes)."""
    rows_of: dict[str, list[str]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for table in (candidates, votes):
        if table is None or not table.num_rows:
            continue
        for pid, sid in zip(
            table.column("prompt_id").to_pylist(), table.column("source_id").to_pylist()
        ):
            if (pid, sid) not in seen:
                seen.add((pid, sid))
                rows_of[pid].append(sid)
    for pid, sid in zip(
        prompts.column("prompt_id").to_pylist(), prompts.column("source_id").to_pylist()
    ):
        if not rows_of.get(pid):
            rows_of[pid] = [sid]
    return rows_of


def _source_pairs(prompts: pa.Table, candidates: pa.Table | None, votes: pa.Table | None):
    """(prompt_id, source_id) of every source row, in first-seen order (as
    :func:`source_rows`), as a polars frame with the row's first position ``pos``."""
    import polars as pl

    parts = [
        pl.from_arrow(t.select(["prompt_id", "source_id"]))
        for t in (candidates, votes)
        if t is not None and t.num_rows
    ]
    seen = (
        pl.concat(parts).unique(maintain_order=True)
        if parts
        else pl.DataFrame(schema={"prompt_id": pl.String, "source_id": pl.String})
    )
    own = pl.from_arrow(prompts.select(["prompt_id", "source_id"]))
    lonely = own.join(seen.select("prompt_id").unique(), on="prompt_id", how="anti").unique(
        "prompt_id", keep="first", maintain_order=True
    )
    return pl.concat([seen, lonely]).with_row_index("pos")


def drop_prompts(
    stage: str,
    prompts: pa.Table,
    candidates: pa.Table | None,
    votes: pa.Table | None,
    dropped: dict[str, tuple[str, str]],
    info: dict[str, Any],
) -> StageResult:
    """The tables without the prompts in ``dropped`` ({prompt_id: (reason, detail)}) and
    their candidates and votes; one DROPPED row per source row of each (by columns: the
    same rows, in the same order, as :func:`source_rows` gives)."""
    import polars as pl

    pairs = _source_pairs(prompts, candidates, votes)
    n_rows = pairs.height
    which = pl.DataFrame(
        {
            "prompt_id": list(dropped),
            "rank": range(len(dropped)),
            "reason": [str(r) for r, _ in dropped.values()],
            "detail": [d for _, d in dropped.values()],
        },
        schema={"prompt_id": pl.String, "rank": pl.Int64, "reason": pl.String, "detail": pl.String},
    )
    drops = (
        pairs.join(which, on="prompt_id", how="inner")
        .sort(["rank", "pos"])
        .select(
            stage=pl.lit(stage),
            source_id="source_id",
            row_id="prompt_id",
            reason="reason",
            detail="detail",
        )
    )
    bad = pa.array(sorted(dropped), pa.string())

    def keep(table: pa.Table) -> pa.Table:
        if not dropped:
            return table
        return table.filter(pc.invert(pc.is_in(table.column("prompt_id"), value_set=bad)))

    outputs = {"prompts": keep(prompts)}
    for name, table in (("candidates", candidates), ("votes", votes)):
        if table is not None:
            outputs[name] = keep(table)
    by_reason = dict(Counter(drops["reason"].to_list()))
    counts = StageCounts(
        rows_in=n_rows,
        kept=n_rows - drops.height,
        dropped=by_reason,
        rows_out=outputs["prompts"].num_rows,
    )
    return StageResult(
        stage, outputs, counts, conform(drops.to_arrow(), DROPPED, "dropped"), info=info
    )
