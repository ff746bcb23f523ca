"""The report's Examples section as data: the flipped pairs, and a few dropped and
quarantined rows per stage and reason with their texts from the lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import conversation
from pipeline.report.common import Lineage, column_values, num, truncate


def section_examples(
    data: pa.Table, dropped: pa.Table, quarantine: pa.Table, lin: Lineage, max_examples: int
) -> dict[str, Any]:
    flipped, n_flip = _flipped(data, max_examples)
    drop_rows = _by_reason(dropped, max_examples)
    texts = _LineageTexts.read(lin, {r["row_id"] for r in drop_rows if r.get("row_id")})
    drops = [_dropped_example(r, texts) for r in drop_rows]
    quars = [
        {
            "stage": r.get("stage"),
            "reason": r.get("reason"),
            "file": r.get("file"),
            "row": r.get("row"),
            "source_id": r.get("source_id"),
            "detail": truncate(r.get("detail")),
            "raw": truncate(r.get("raw")),
        }
        for r in _by_reason(quarantine, max_examples)
    ]
    return {
        "flipped": flipped,
        "flipped_total": n_flip,
        "dropped": drops,
        "dropped_total": dropped.num_rows,
        "quarantined": quars,
        "quarantined_total": quarantine.num_rows,
        "texts_from_lineage": texts.any_candidates,
    }


def _flipped(data: pa.Table, max_examples: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``max_examples`` published pairs whose label was flipped, and how many
    were."""
    mask = np.zeros(data.num_rows, dtype=bool)
    if "decision" in data.column_names:
        flip = pc.equal(data.column("decision").cast(pa.string()), "flip")
        mask |= pc.fill_null(flip, False).to_numpy(zero_copy_only=False)
    if "flipped" in data.column_names:
        flipped = pc.fill_null(data.column("flipped").cast(pa.bool_()), False)
        mask |= flipped.to_numpy(zero_copy_only=False)
    n_flip = int(mask.sum())
    idx = np.flatnonzero(mask)[:max_examples]
    flip = data.take(pa.array(idx, type=pa.int64())).to_pylist() if idx.size else []
    flipped = [
        {
            "source_id": r.get("source_id"),
            "pair_id": r.get("pair_id"),
            "prompt": truncate(conversation.render(r.get("prompt"))),
            "chosen": truncate(conversation.contents(r.get("chosen"))),
            "rejected": truncate(conversation.contents(r.get("rejected"))),
            "p_hat": num(r.get("p_hat")),
            "margin": num(r.get("margin")),
            "label_status": r.get("label_status"),
            "reason": "the votes contradict the input's label: chosen and rejected exchanged",
        }
        for r in flip
    ]
    return flipped, n_flip


@dataclass
class _LineageTexts:
    """Texts from the lineage, to show what a dropped pair / candidate was."""

    cand_text: dict[str, str] = field(default_factory=dict)
    cand_prompt: dict[str, str] = field(default_factory=dict)
    prompt_text: dict[str, str] = field(default_factory=dict)
    pair_ids: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    any_candidates: bool = False

    @classmethod
    def read(cls, lin: Lineage, row_ids: set[str]) -> _LineageTexts:
        """The texts of the pairs and candidates among ``row_ids`` (and their prompts): each
        table is cut to the ids asked for before anything becomes Python objects."""
        out = cls()
        want = pa.array(sorted(row_ids), pa.string())
        for t in lin.tables("pairs", ["pair_id", "prompt_id", "chosen_id", "rejected_id"]):
            t = _rows_in(t, "pair_id", want)
            for pid, prid, c, r in zip(
                column_values(t, "pair_id"),
                column_values(t, "prompt_id"),
                column_values(t, "chosen_id"),
                column_values(t, "rejected_id"),
            ):
                out.pair_ids.setdefault(pid, (prid, c, r))
        cands = set(row_ids) | {c for _, a, b in out.pair_ids.values() for c in (a, b)}
        want = pa.array(sorted(cands), pa.string())
        for t in lin.tables("candidates", ["candidate_id", "prompt_id", "text"]):
            out.any_candidates |= t.num_rows > 0
            t = _rows_in(t, "candidate_id", want)
            ids = column_values(t, "candidate_id")
            out.cand_text.update(zip(ids, column_values(t, "text")))
            out.cand_prompt.update(zip(ids, column_values(t, "prompt_id")))
        prompts = {p for p, _, _ in out.pair_ids.values()}
        prompts |= {out.cand_prompt[c] for c in row_ids if c in out.cand_prompt}
        want = pa.array(sorted(p for p in prompts if p is not None), pa.string())
        for t in lin.tables("prompts", ["prompt_id", "prompt"]):
            t = _rows_in(t, "prompt_id", want)
            out.prompt_text.update(
                zip(
                    column_values(t, "prompt_id"),
                    map(conversation.render, column_values(t, "prompt")),
                )
            )
        return out


def _rows_in(table: pa.Table, column: str, ids: pa.Array) -> pa.Table:
    """The rows of ``table`` whose ``column`` is one of ``ids`` (in table order)."""
    if column not in table.column_names:
        return table.slice(0, 0)
    return table.filter(pc.is_in(table.column(column).cast(pa.string()), value_set=ids))


def _by_reason(table: pa.Table, max_examples: int) -> list[dict[str, Any]]:
    """The first ``max_examples`` rows of each (stage, reason) of a reject table."""
    if not {"stage", "reason"} <= set(table.column_names) or not table.num_rows:
        return []
    keys = pl.from_arrow(table.select(["stage", "reason"]))
    assert isinstance(keys, pl.DataFrame)
    first = keys.with_row_index("i").filter(
        pl.int_range(pl.len()).over(["stage", "reason"]) < max_examples
    )
    return table.take(first["i"].to_arrow()).to_pylist()


def _dropped_example(r: dict[str, Any], texts: _LineageTexts) -> dict[str, Any]:
    """A dropped row with the texts of its pair or candidate, where the lineage has them."""
    e = {
        "stage": r.get("stage"),
        "reason": r.get("reason"),
        "source_id": r.get("source_id"),
        "row_id": r.get("row_id"),
        "detail": truncate(r.get("detail")),
        "prompt": None,
        "chosen": None,
        "rejected": None,
        "text": None,
    }
    rid = r.get("row_id")
    if rid in texts.pair_ids:
        prid, c, rj = texts.pair_ids[rid]
        e.update(
            prompt=truncate(texts.prompt_text.get(prid)),
            chosen=truncate(texts.cand_text.get(c)),
            rejected=truncate(texts.cand_text.get(rj)),
        )
    elif rid in texts.cand_text:
        e.update(
            text=truncate(texts.cand_text[rid]),
            prompt=truncate(texts.prompt_text.get(texts.cand_prompt.get(rid))),
        )
    return e
