"""Dropping prompts, with their pairs, and accounting for every source row (hygiene stages).

A hygiene stage decides per prompt; the unit of its counts is the **source row** (a
prompt of a prompts file, a pair of a pairs file), so a dropped prompt drops every row
that asked it, each a DROPPED row with the stage's reason and detail.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import StageCounts, StageResult, dropped_table


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


def drop_prompts(
    stage: str,
    prompts: pa.Table,
    candidates: pa.Table | None,
    votes: pa.Table | None,
    dropped: dict[str, tuple[str, str]],
    info: dict[str, Any],
) -> StageResult:
    """The tables without the prompts in ``dropped`` ({prompt_id: (reason, detail)}) and
    their candidates and votes; one DROPPED row per source row of each."""
    rows_of = source_rows(prompts, candidates, votes)
    drops = [
        {"source_id": sid, "row_id": pid, "reason": reason, "detail": detail}
        for pid, (reason, detail) in dropped.items()
        for sid in rows_of[pid]
    ]
    bad = pa.array(sorted(dropped), pa.string())

    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pc.invert(pc.is_in(table.column("prompt_id"), value_set=bad)))

    outputs = {"prompts": keep(prompts)}
    for name, table in (("candidates", candidates), ("votes", votes)):
        if table is not None:
            outputs[name] = keep(table)
    n_rows = sum(len(v) for v in rows_of.values())
    by_reason: dict[str, int] = {}
    for d in drops:
        by_reason[str(d["reason"])] = by_reason.get(str(d["reason"]), 0) + 1
    counts = StageCounts(
        rows_in=n_rows,
        kept=n_rows - len(drops),
        dropped=by_reason,
        rows_out=outputs["prompts"].num_rows,
    )
    return StageResult(stage, outputs, counts, dropped_table(stage, drops), info=info)
