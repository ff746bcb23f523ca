"""The report's Examples section as data: the flipped pairs, and a few dropped and
quarantined rows per stage and reason with their texts from the lineage."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import conversation
from pipeline.report.common import Lineage, column_values, num, truncate


def section_examples(
    data: pa.Table, dropped: pa.Table, quarantine: pa.Table, lin: Lineage, max_examples: int
) -> dict[str, Any]:
    flipped, n_flip = _flipped(data, max_examples)
    texts = _LineageTexts.read(lin)
    drops = [_dropped_example(r, texts) for r in _by_reason(dropped, max_examples)]
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
        "texts_from_lineage": bool(texts.cand_text),
    }


def _flipped(data: pa.Table, max_examples: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``max_examples`` published pairs whose label was flipped, and how many
    were."""
    mask = np.zeros(data.num_rows, dtype=bool)
    if "decision" in data.column_names:
        mask |= np.array([d == "flip" for d in column_values(data, "decision")], dtype=bool)
    if "flipped" in data.column_names:
        mask |= np.array([bool(f) for f in column_values(data, "flipped")], dtype=bool)
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

    @classmethod
    def read(cls, lin: Lineage) -> _LineageTexts:
        out = cls()
        for t in lin.tables("candidates", ["candidate_id", "prompt_id", "text"]):
            ids = column_values(t, "candidate_id")
            out.cand_text.update(zip(ids, column_values(t, "text")))
            out.cand_prompt.update(zip(ids, column_values(t, "prompt_id")))
        for t in lin.tables("prompts", ["prompt_id", "prompt"]):
            out.prompt_text.update(
                zip(
                    column_values(t, "prompt_id"),
                    map(conversation.render, column_values(t, "prompt")),
                )
            )
        for t in lin.tables("pairs", ["pair_id", "prompt_id", "chosen_id", "rejected_id"]):
            for pid, prid, c, r in zip(
                column_values(t, "pair_id"),
                column_values(t, "prompt_id"),
                column_values(t, "chosen_id"),
                column_values(t, "rejected_id"),
            ):
                out.pair_ids.setdefault(pid, (prid, c, r))
        return out


def _by_reason(table: pa.Table, max_examples: int) -> list[dict[str, Any]]:
    """The first ``max_examples`` rows of each (stage, reason) of a reject table."""
    seen: Counter = Counter()
    idx = []
    for i, k in enumerate(zip(column_values(table, "stage"), column_values(table, "reason"))):
        if seen[k] < max_examples:
            seen[k] += 1
            idx.append(i)
    return table.take(idx).to_pylist() if idx else []


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
