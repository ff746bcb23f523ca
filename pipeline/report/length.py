"""The report's Length section as data: the published pairs' lengths, each annotator's
length GLM, what length control and balancing did, and the chosen − rejected length
distribution before and after curation (with its table rows, shared by both renderers)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import conversation
from pipeline.report.common import MAX_POINTS, Lineage, length_bias_of

SHIFT_COLUMNS = ("pairs", "count", "chosen longer", "median chosen − rejected (chars)")


def shift_rows(section: dict[str, Any]) -> list[list[Any]]:
    """The Length section's before / after table (:data:`SHIFT_COLUMNS`), for both
    renderers."""
    return [
        [name, d["pairs"], d["chosen_longer_share"], d["median_diff_chars"]]
        for name, d in (
            ("before curation", section.get("before")),
            ("published", section.get("after")),
        )
        if d
    ]


def section_length(
    data: pa.Table, manifest: dict[str, Any] | None = None, lin: Lineage | None = None
) -> dict[str, Any]:
    """Length bias: the published pairs' lengths, each annotator's length GLM (from the
    aggregate stage's info), what length control and balancing did, and the chosen −
    rejected length distribution before curation (the margins stage's pairs, in the
    label's orientation) and after (the published pairs)."""
    from pipeline.aggregate import length

    lc, lr = _response_lengths(data, "chosen"), _response_lengths(data, "rejected")
    out = length_bias_of(lc, lr)
    step = max(1, math.ceil(lc.size / MAX_POINTS))
    out["points"] = [[int(c), int(r)] for c, r in zip(lc[::step], lr[::step])]
    out.update(_length_stage_info((manifest or {}).get("stage_info") or {}))
    out["after"] = length.length_shift(lc.astype(float), lr.astype(float))
    out["before"] = _before_curation(lin) if lin is not None else None
    out["note"] = _length_note(out, lc.size)
    return out


def _length_stage_info(info: dict[str, Any]) -> dict[str, Any]:
    """The Length section's parts from the stages' info: the per-annotator GLM and the
    length control (aggregate), the length balance (pairs)."""
    agg = next(
        (info[k] for k in ("aggregate_gpm", "aggregate") if isinstance(info.get(k), dict)), {}
    )
    eff = agg.get("length_effects") or {}
    out: dict[str, Any] = {}
    out["annotators"] = [
        {"annotator": a, **row} for a, row in (eff.get("annotators") or {}).items()
    ]
    out["annotators_left_out"] = eff.get("annotators_left_out", 0)
    ctl = agg.get("length_control")
    out["control"] = (
        None
        if ctl is None
        else {
            "mode": ctl.get("mode"),
            "min_diff": ctl.get("min_diff"),
            "comparisons": ctl.get("comparisons"),
            "split": ctl.get("split") or {},
        }
    )
    out["balance"] = (
        (info.get("pairs") or {}).get("length_balance")
        if isinstance(info.get("pairs"), dict)
        else None
    )
    return out


def _response_lengths(data: pa.Table, name: str) -> np.ndarray:
    """The length in characters of each published response: its assistant messages'
    contents one per line, or all its messages' when those are empty (as
    ``conversation.contents(m, ("assistant",)) or conversation.contents(m)``), by
    columns."""
    if name not in data.column_names:
        return np.zeros(0, dtype=np.int64)
    col = data.column(name)
    assistant = conversation.contents_series(col, ("assistant",))
    every = conversation.contents_series(col)
    text = pl.select(
        pl.when(assistant.str.len_chars() > 0).then(assistant).otherwise(every)
    ).to_series()
    return text.str.len_chars().to_numpy().astype(np.int64)


def _before_curation(lin: Lineage) -> dict[str, Any] | None:
    """The chosen − rejected length distribution of the margins stage's pairs (None when
    those pairs or the candidates are no longer on disk)."""
    from pipeline.aggregate import length

    mp = lin.table("margins", "pairs", ["chosen_id", "rejected_id"])
    cands = next(
        (
            t
            for st in ("generate", "ingest")
            if (t := lin.table(st, "candidates", ["candidate_id", "text"])) is not None
        ),
        None,
    )
    if mp is None or cands is None:
        return None
    lens = length.candidate_lengths(cands)
    return length.length_shift(
        length.lookup(pl.Series("c", mp.column("chosen_id")), lens),
        length.lookup(pl.Series("r", mp.column("rejected_id")), lens),
    )


def _length_note(out: dict[str, Any], n_pairs: int) -> str | None:
    notes = []
    if not n_pairs:
        notes.append("no published pairs")
    if not out["annotators"]:
        notes.append(
            "no per-annotator length table (aggregate.length_control off, or "
            "no decisive vote on pairs of unequal length)"
        )
    if out["before"] is None:
        notes.append(
            "no before-curation distribution: the run's margins and candidates "
            "outputs are no longer on disk"
        )
    return "; ".join(notes) or None
