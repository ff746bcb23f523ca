"""The result every stage returns, with row accounting checked.

A stage accounts for each of its input rows: ``rows_in = kept + dropped + quarantined``
(each by reason). ``rows_out`` is the size of the main output, which may differ in unit
from the input (e.g. votes in, comparisons out).

>>> c = StageCounts(rows_in=3, kept=2, dropped={"tie": 1})
>>> c.check("pairs")
>>> StageCounts(rows_in=3, kept=1).check("pairs")
Traceback (most recent call last):
...
schemas.errors.PrefcurateError: stage 'pairs' lost rows: in=3 but kept=1 + dropped=0 + quarantined=0
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from schemas.errors import PrefcurateError
from schemas.tables import DROPPED, QUARANTINE, from_rows


class Reason(StrEnum):
    """Why a row was not kept. Every drop and quarantine carries one."""

    # ingest
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"  # the right type, a value not allowed there
    EMPTY_TEXT = "empty_text"
    INVALID_TEXT = "invalid_text"
    UNKNOWN_ROLE = "unknown_role"
    IDENTICAL_PAIR = "identical_pair"
    INVALID_TARGET = "invalid_target"  # a bad answer / tests / constraints field
    DUPLICATE_PAIR = "duplicate_pair"  # the same pair again (or swapped): votes pooled
    DUPLICATE_ID = "duplicate_id"
    LIMIT = "limit"
    # hygiene
    DUPLICATE_PROMPT = "duplicate_prompt"  # the same prompt text after normalisation
    NEAR_DUPLICATE = "near_duplicate"  # word n-gram Jaccard >= dedup.threshold
    CONTAMINATED = "contaminated"  # shares a word n-gram with a benchmark item
    # generation
    EMPTY_OUTPUT = "empty_output"
    DUPLICATE_OUTPUT = "duplicate_output"
    TRUNCATED = "truncated"  # generation stopped at max_tokens (generate.on_truncated: drop)
    PROMPT_TOO_LONG = "prompt_too_long"
    REQUEST_FAILED = "request_failed"
    # judging / aggregation
    NULL_VERDICT = "null_verdict"
    OVER_BUDGET = "over_budget"
    FIRST_SIGNAL = "first_signal"  # not the (best, worst) pair by the cheap first signal
    SINGLE_CANDIDATE = "single_candidate"
    # margins / denoise / pairs
    TIE = "tie"
    NULL_SCORE = "null_score"
    CONTRADICTED = "contradicted"
    CONTESTED = "contested"
    HIGH_DISAGREEMENT = "high_disagreement"
    NOT_SELECTED = "not_selected"
    LOW_CONFIDENCE = "low_confidence"  # LCPO weight between flip_below and drop_below
    FLIPPED_LOW_CONFIDENCE = "flipped_low_confidence"
    PEER_REVIEW = "peer_review"  # both CRM reward heads reject the pair late in training
    DISAGREEMENT_FILTER = "disagreement_filter"  # SCIR: judges / RMs / label disagree
    BELOW_MIN_MARGIN = "below_min_margin"
    LENGTH_BALANCE = "length_balance"  # the chosen-longer share outside pairs.length_balance
    BUDGET = "budget"
    NO_EMBEDDING = "no_embedding"


@dataclass
class StageCounts:
    rows_in: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    rows_out: int | None = None

    def check(self, stage: str) -> None:
        d, q = sum(self.dropped.values()), sum(self.quarantined.values())
        if self.rows_in != self.kept + d + q:
            raise PrefcurateError(
                f"stage '{stage}' lost rows: in={self.rows_in} but kept={self.kept} + "
                f"dropped={d} + quarantined={q}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "in": self.rows_in,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "quarantined": dict(self.quarantined),
            "out": self.kept if self.rows_out is None else self.rows_out,
        }


@dataclass
class StageResult:
    """Outputs of one stage: named tables, rejects with reasons, counts, extra info."""

    stage: str
    outputs: dict[str, pa.Table]
    counts: StageCounts
    dropped: pa.Table = field(default_factory=DROPPED.empty_table)
    quarantine: pa.Table = field(default_factory=QUARANTINE.empty_table)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts.check(self.stage)
        by_reason = Counter(self.dropped.column("reason").to_pylist())
        q_reason = Counter(self.quarantine.column("reason").to_pylist())
        if dict(by_reason) != {k: v for k, v in self.counts.dropped.items() if v} or dict(
            q_reason
        ) != {k: v for k, v in self.counts.quarantined.items() if v}:
            raise PrefcurateError(
                f"stage '{self.stage}': reject tables disagree with counts "
                f"(dropped {dict(by_reason)} vs {self.counts.dropped}, quarantined "
                f"{dict(q_reason)} vs {self.counts.quarantined})"
            )


def dropped_table(stage: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows ``{source_id, row_id, reason, detail}`` → a DROPPED table for ``stage``."""
    return from_rows(
        [
            {
                "stage": stage,
                "source_id": r.get("source_id"),
                "row_id": r.get("row_id"),
                "reason": str(r["reason"]),
                "detail": r.get("detail"),
            }
            for r in rows
        ],
        DROPPED,
        "dropped",
    )


def quarantine_table(stage: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows ``{source_id, file, row, reason, detail, raw}`` → a QUARANTINE table."""
    return from_rows(
        [
            {
                "stage": stage,
                "source_id": r.get("source_id"),
                "file": r.get("file"),
                "row": r.get("row"),
                "reason": str(r["reason"]),
                "detail": r.get("detail"),
                "raw": r.get("raw"),
            }
            for r in rows
        ],
        QUARANTINE,
        "quarantine",
    )


def as_matrix(x: Any, name: str, stage: str, rows: int | None = None) -> Any:
    """``x`` as a finite 2-D float32 array (embeddings), or a PrefcurateError saying which."""
    import numpy as np

    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise PrefcurateError(
            f"{stage}: {name} must be a 2-D array (rows × dims), got shape {arr.shape}"
        )
    if rows is not None and arr.shape[0] != rows:
        raise PrefcurateError(
            f"{stage}: {name} has {arr.shape[0]} rows, expected {rows} (one per pair)"
        )
    if not np.all(np.isfinite(arr)):
        raise PrefcurateError(
            f"{stage}: {name} holds NaN or infinite values; embed every "
            f"prompt and response before this stage"
        )
    return arr


def count_reasons(table: pa.Table) -> dict[str, int]:
    return dict(Counter(table.column("reason").to_pylist()))


STAGE_COLUMNS = ("stage", "in", "kept", "dropped", "quarantined", "reused")


def stage_count_rows(stages: dict[str, dict]) -> list[list[str]]:
    """The per-stage counts as text rows (:data:`STAGE_COLUMNS`): what the terminal, the
    Prefect artifact and the dataset card print. Drops and quarantines as
    ``reason=count`` lists ("0" when none).

    >>> stage_count_rows({"ingest": {"in": 3, "kept": 2, "dropped": {"limit": 1},
    ...                              "quarantined": {}, "reused": True}})
    [['ingest', '3', '2', 'limit=1', '0', 'yes']]
    """

    def reasons(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in (d or {}).items()) or "0"

    return [
        [
            st,
            str(c["in"]),
            str(c["kept"]),
            reasons(c.get("dropped")),
            reasons(c.get("quarantined")),
            "yes" if c.get("reused") else "",
        ]
        for st, c in stages.items()
    ]
