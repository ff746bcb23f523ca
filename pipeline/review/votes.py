"""Reviewers' answers → VOTES rows, and the ``review`` stage that feeds them to aggregation.

:func:`annotations_to_votes` reads a Label Studio export (tasks with their annotations, as
:meth:`pipeline.review.labelstudio.LabelStudio.export_tasks` returns them) of the tasks
:func:`pipeline.review.pick.build_tasks` made. Each answer is mapped back from the shown
order (A / B) to the pair's candidates in the canonical orientation of VOTES
(candidate_a < candidate_b): A or B is a vote for that side, ``tie`` a tie, ``both bad`` a
tie too (no preference between them; ``raw_output`` keeps the answer and the comment).
The annotator is ``human:<Label Studio user id>``. Per (pair, reviewer) the latest
annotation counts, so importing again never doubles a vote; a cancelled (skipped)
annotation is no vote. Tasks nobody answered are reported, never guessed.

:func:`review_votes` is the flow's ``review`` stage: the votes files of ``review.votes``,
each row checked against the run's candidates (a pair whose candidates this run does not
have is quarantined with the file and row).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipeline.stage import Reason, StageCounts, StageResult, quarantine_table
from schemas.config import HUMAN_PREFIX
from schemas.errors import ConfigError, PrefcurateError
from schemas.tables import VOTES, conform, from_rows

STAGE = "review"
STAGE_VERSION = 2  # 2: info names the reviewed versions
VERDICT_OF = {"A": "A", "B": "B", "tie": "tie", "both bad": "tie"}


def _user(annotation: dict[str, Any]) -> str | None:
    u = annotation.get("completed_by")
    if isinstance(u, dict):
        u = u.get("id")
    return None if u is None else str(u)


def _answer(annotation: dict[str, Any]) -> tuple[str | None, str | None]:
    """(choice, comment) of one annotation's result list."""
    choice = comment = None
    for r in annotation.get("result") or []:
        value = r.get("value") or {}
        if r.get("from_name") == "verdict" and value.get("choices"):
            choice = str(value["choices"][0])
        elif r.get("from_name") == "comment" and value.get("text"):
            comment = " ".join(str(t) for t in value["text"])
    return choice, comment


def annotations_to_votes(tasks: list[dict[str, Any]], ref: str) -> tuple[pa.Table, dict]:
    """VOTES from the exported ``tasks`` of version ``ref``, and what happened to each.

    >>> t = {"id": 7, "data": {"pair_id": "p", "version": "d@v1", "a_id": "y", "b_id": "x",
    ...      "order": "ba", "prompt_id": "q", "source_id": "s"},
    ...      "annotations": [{"id": 1, "completed_by": 3, "was_cancelled": False,
    ...                       "result": [{"from_name": "verdict",
    ...                                   "value": {"choices": ["A"]}}]}]}
    >>> votes, info = annotations_to_votes([t], "d@v1")
    >>> v = votes.to_pylist()[0]
    >>> v["candidate_a"], v["candidate_b"], v["annotator"], v["verdict"], v["order"]
    ('x', 'y', 'human:3', 'b', 'ba')
    >>> info["answered_pairs"], info["unanswered_pairs"]
    (1, 0)
    """
    latest: dict[tuple[str, str], tuple[int, dict]] = {}
    info: dict[str, Any] = {
        "tasks": 0,
        "other_version": 0,
        "annotations": 0,
        "cancelled": 0,
        "no_choice": 0,
        "choices": {c: 0 for c in VERDICT_OF},
        "unanswered": [],
    }
    meta: dict[str, dict] = {}
    for task in tasks:
        data = task.get("data") or {}
        if data.get("version") != ref or not data.get("pair_id"):
            info["other_version"] += 1
            continue
        info["tasks"] += 1
        pid = str(data["pair_id"])
        meta[pid] = data
        answered = False
        for ann in task.get("annotations") or []:
            info["annotations"] += 1
            user = _user(ann)
            if ann.get("was_cancelled") or user is None:
                info["cancelled"] += 1
                continue
            choice, comment = _answer(ann)
            if choice not in VERDICT_OF:
                info["no_choice"] += 1
                continue
            answered = True
            aid = int(ann.get("id") or 0)
            row = {"choice": choice, "comment": comment, "task": task.get("id"), "annotation": aid}
            if (pid, user) not in latest or latest[(pid, user)][0] <= aid:
                latest[(pid, user)] = (aid, row)
        if not answered:
            info["unanswered"].append(pid)
    rows = []
    for (pid, user), (_, ans) in sorted(latest.items()):
        info["choices"][ans["choice"]] += 1
        rows.append(_vote_row(meta[pid], user, ans, pid, ref))
    info["votes"] = len(rows)
    info["humans"] = len({u for _, u in latest})
    info["answered_pairs"] = len({p for p, _ in latest})
    info["unanswered_pairs"] = len(info["unanswered"])
    return from_rows(rows, VOTES, "votes"), info


def _vote_row(d: dict[str, Any], user: str, ans: dict[str, Any], pid: str, ref: str) -> dict:
    """A VOTES row of one human's answer on the pair shown as ``d``'s A (``a_id``) and B:
    the verdict in the pair's id order, the order it was shown in, the answer kept raw."""
    a_id, b_id = str(d["a_id"]), str(d["b_id"])
    cand_a, cand_b = sorted((a_id, b_id))
    said = VERDICT_OF[ans["choice"]]
    if said == "tie":
        verdict = "tie"
    else:
        verdict = "a" if (a_id if said == "A" else b_id) == cand_a else "b"
    return {
        "prompt_id": d["prompt_id"],
        "source_id": d["source_id"],
        "candidate_a": cand_a,
        "candidate_b": cand_b,
        "annotator": f"{HUMAN_PREFIX}{user}",
        "order": "ab" if a_id == cand_a else "ba",
        "verdict": verdict,
        "prob_a": None,
        "raw_output": json.dumps({**ans, "pair_id": pid, "version": ref}, ensure_ascii=False),
        "parse_error": None,
    }


def read_votes_file(path: str) -> pa.Table:
    """A ``review.votes`` file (VOTES Parquet) checked against its schema; a missing or
    unreadable file, or one that is not VOTES, is a ConfigError naming it (the flow reads
    them all before its first model call)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return conform(table, VOTES, f"{path}: votes")
    except FileNotFoundError:
        raise ConfigError(
            f"review.votes: {path} does not exist (written by `prefcurate review import`)"
        ) from None
    except (OSError, pa.ArrowException, PrefcurateError) as exc:
        raise ConfigError(f"review.votes: {path} is not a VOTES Parquet file: {exc}") from None


def review_votes(files: list[tuple[str, pa.Table]], candidates: pa.Table) -> StageResult:
    """The ``review`` stage: every (file, VOTES table) of ``review.votes`` as one VOTES
    table; a row whose candidates are not both among this run's ``candidates`` under its
    prompt is quarantined (``invalid_value``, with the file and row)."""
    where = set(
        zip(
            candidates.column("source_id").to_pylist(),
            candidates.column("prompt_id").to_pylist(),
            candidates.column("candidate_id").to_pylist(),
        )
    )
    kept, bad = [], []
    n = 0
    for path, table in files:
        table = conform(table, VOTES, f"{path}: votes")
        for i, r in enumerate(table.to_pylist()):
            n += 1
            key = (r["source_id"], r["prompt_id"])
            missing = [c for c in (r["candidate_a"], r["candidate_b"]) if (*key, c) not in where]
            if missing:
                bad.append(
                    {
                        "source_id": r["source_id"],
                        "file": path,
                        "row": i,
                        "reason": Reason.INVALID_VALUE,
                        "detail": f"candidate {missing[0]} of prompt {r['prompt_id']} is not "
                        f"in this run (a review of another run or config?)",
                        "raw": json.dumps(r, default=str),
                    }
                )
            else:
                kept.append(r)
    q = quarantine_table(STAGE, bad)
    counts = StageCounts(
        n, len(kept), quarantined={str(Reason.INVALID_VALUE): len(bad)} if bad else {}
    )
    humans = sorted({r["annotator"] for r in kept})
    reviewed = set()
    for r in kept:
        try:
            v = json.loads(r["raw_output"] or "{}").get("version")
        except (ValueError, AttributeError):
            v = None
        if isinstance(v, str):
            reviewed.add(v)
    return StageResult(
        STAGE,
        {"votes": from_rows(kept, VOTES, "votes")},
        counts,
        quarantine=q,
        info={
            "files": [p for p, _ in files],
            "annotators": humans,
            "votes": len(kept),
            "reviewed_versions": sorted(reviewed),  # the versions these answers reviewed
        },
    )
