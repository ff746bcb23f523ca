"""The report's "Review" section: what people answered and what it changed (issue 16).

From the version's ``review`` stage (the reviewers' votes, ``human:<id>``) and the other
vote stages of its lineage, and — when still on disk — the reviewed version's published
pairs (named in each vote's ``raw_output``) and what ``review export`` sent: pairs sent and
answered, the humans' agreement with the reviewed version's decision, what this version
does with the pairs the humans decided, and every other annotator's accuracy against the
human majority.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.report.common import Lineage
from schemas.config import HUMAN_PREFIX

VOTE_STAGES = ("ingest", "verify", "rubric", "judge", "judge_gpm")


def _majorities(votes: list[dict]) -> dict[tuple[str, str], str]:
    """(candidate_a, candidate_b) → the winning candidate by a strict human majority."""
    n: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for v in votes:
        if v["verdict"] in ("a", "b"):
            n[(v["candidate_a"], v["candidate_b"])][v["verdict"]] += 1
    out = {}
    for (a, b), c in n.items():
        if c["a"] != c["b"]:
            out[(a, b)] = a if c["a"] > c["b"] else b
    return out


def _published(table: pa.Table | None) -> dict[frozenset, str]:
    """{chosen, rejected} → chosen, of a published table."""
    if table is None:
        return {}
    return {
        frozenset((c, r)): c
        for c, r in zip(
            table.column("chosen_id").to_pylist(), table.column("rejected_id").to_pylist()
        )
    }


def _fate(pairs: dict[tuple[str, str], str], published: dict[frozenset, str]) -> dict[str, int]:
    out = {"human side chosen": 0, "other side chosen": 0, "not published": 0}
    for (a, b), win in pairs.items():
        got = published.get(frozenset((a, b)))
        key = (
            "not published"
            if got is None
            else ("human side chosen" if got == win else "other side chosen")
        )
        out[key] += 1
    return out


def section_review(
    manifest: dict[str, Any], lin: Lineage, data: pa.Table, version_path: Path | None
) -> dict[str, Any]:
    """The report's human-review section: what was reviewed, what each reviewed version
    and this one did with the pairs the humans decided, and each annotator's accuracy
    against the human majority."""
    info = (manifest.get("stage_info") or {}).get("review")
    votes_t = lin.table("review", "votes")
    out: dict[str, Any] = {"summary": None, "tables": [], "note": None}
    if info is None:
        out["note"] = "no human review in this version (prefcurate review export / import)"
        return out
    if votes_t is None:
        out["note"] = "the review stage's votes are no longer on disk (run folder removed)"
        return out
    votes = votes_t.to_pylist()
    raws = [json.loads(v["raw_output"]) if v.get("raw_output") else {} for v in votes]
    reviewed = sorted({r["version"] for r in raws if r.get("version")})
    choices = Counter(r.get("choice") for r in raws if r.get("choice"))
    human = _majorities(votes)
    summary: dict[str, Any] = {
        "reviewed versions": ", ".join(reviewed) or "unknown",
        "reviewers": len({v["annotator"] for v in votes}),
        "votes": len(votes),
        "pairs answered": len({(v["candidate_a"], v["candidate_b"]) for v in votes}),
        "pairs with a human majority": len(human),
        "answers": dict(choices),
        "humans as gold anchors": bool(
            (manifest.get("config") or {}).get("review", {}).get("anchor")
        ),
    }
    if version_path is not None:
        out["tables"] += _reviewed_versions(summary, human, reviewed, version_path)
    now = _fate(human, _published(data))
    out["tables"].append(
        {
            "title": "the pairs the humans decided, in this version",
            "columns": ["here", "pairs"],
            "rows": [[k, n] for k, n in now.items()],
        }
    )
    acc = _accuracy_against(lin, human)
    out["tables"].append(
        {
            "title": "annotators' accuracy against the human majority",
            "columns": ["annotator", "pairs", "accuracy"],
            "rows": [
                [w, c["n"], round(c["right"] / c["n"], 3)]
                for w, c in sorted(acc.items(), key=lambda kv: -kv[1]["n"])
            ],
        }
    )
    out["summary"] = summary
    if not human:
        out["note"] = "no pair has a human majority yet (ties, both bad, or one answer each way)"
    return out


def _reviewed_versions(
    summary: dict[str, Any],
    human: dict[tuple[str, str], str],
    reviewed: list[str],
    version_path: Path,
) -> list[dict[str, Any]]:
    """Per reviewed version: the pairs sent (into ``summary``) and a table of what that
    version published of the pairs the humans decided."""
    tables = []
    root = version_path.parent.parent.parent
    for ref in reviewed:
        name, _, v = ref.partition("@v")
        sent = root / "reviews" / name / f"v{v}" / "export.json"
        if sent.is_file():
            summary[f"pairs sent ({ref})"] = len(json.loads(sent.read_text()).get("pairs", {}))
        old = version_path.parent / f"v{v}" / "data.parquet"
        if old.is_file():
            published = _published(pq.read_table(old, columns=["chosen_id", "rejected_id"]))
            tables.append(
                {
                    "title": f"humans against the reviewed version {ref}",
                    "columns": ["there", "pairs"],
                    "rows": [
                        ["agreed: " + k if k == "human side chosen" else k, n]
                        for k, n in _fate(human, published).items()
                    ],
                }
            )
    return tables


def _accuracy_against(lin: Lineage, human: dict[tuple[str, str], str]) -> dict[str, Counter]:
    """Per non-human annotator of the run: pairs with a human majority it voted on
    (``n``) and those it got right (``right``)."""
    acc: dict[str, Counter] = defaultdict(Counter)
    for stage in VOTE_STAGES:
        t = lin.table(stage, "votes")
        if t is None:
            continue
        for a, b, who, verdict in zip(
            *(
                t.column(c).to_pylist()
                for c in ("candidate_a", "candidate_b", "annotator", "verdict")
            )
        ):
            win = human.get((a, b))
            if win is None or verdict not in ("a", "b") or who.startswith(HUMAN_PREFIX):
                continue
            acc[who]["n"] += 1
            acc[who]["right"] += (a if verdict == "a" else b) == win
    return acc
