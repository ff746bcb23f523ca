"""Human review without a server: choosing pairs, building tasks, mapping answers back to
votes, the review stage in the flow and gold anchors in the aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.curate import curate
from pipeline.aggregate.aggregation import aggregate_votes
from pipeline.review.pick import build_tasks, choose, review_candidates, shown_order
from pipeline.review.votes import annotations_to_votes, review_votes
from pipeline.store import datasets as store
from schemas.config import ReviewConfig, load_config
from schemas.errors import ConfigError
from schemas.tables import VOTES
from tests.fake_run import FAKE_MODELS


def _margins(rows: list[tuple]) -> pa.Table:
    cols = ["pair_id", "prompt_id", "chosen_id", "rejected_id", "p_hat", "disagreement"]
    cols += ["label_status", "flags"]
    t = pl.DataFrame([dict(zip(cols, r)) for r in rows]).with_columns(source_id=pl.lit("s"))
    return t.to_arrow()


def test_candidates_meet_the_criteria_and_are_ranked():
    m = _margins(
        [
            ("p1", "q1", "a", "b", 0.95, 0.1, "agree", []),  # nothing: not sent
            ("p2", "q1", "a", "c", 0.52, 0.96, "agree", []),  # low confidence, disagreement
            ("p3", "q2", "d", "e", 0.9, 0.2, "contested", []),  # contested
            ("p4", "q2", "d", "f", 0.85, 0.3, "agree", []),  # flipped by denoise
            ("p5", "q3", "g", "h", 0.9, 0.2, "agree", ["cyclic"]),  # cyclic prompt
            ("p6", "q1", "b", "c", 0.6, 0.8, "agree", []),  # dropped low_confidence
        ]
    )
    kept = pa.table(
        {"pair_id": ["p1", "p3", "p4", "p5"], "decision": ["keep", "keep", "flip", "keep"]}
    )
    dropped = pa.table({"row_id": ["p2", "p6"], "reason": ["below_min_margin", "low_confidence"]})
    df = review_candidates(m, kept, dropped, ReviewConfig())
    by = {r["pair_id"]: r for r in df.iter_rows(named=True)}
    assert not by["p1"]["worth"]
    assert by["p2"]["reasons"] == "low_confidence,disagreement"
    assert by["p3"]["reasons"] == "contested" and by["p4"]["reasons"] == "flipped"
    assert by["p5"]["reasons"] == "cyclic" and by["p6"]["outcome"] == "drop"
    assert "low_confidence" in by["p6"]["reasons"]
    # most informative first: p2 (p̂ 0.52, two other pairs on its prompt) leads
    assert df["pair_id"][0] == "p2" and df["pair_id"][-1] == "p1"
    assert choose(df, 2)["pair_id"].to_list() == ["p2", "p6"]
    # only the criteria asked for count
    only = review_candidates(m, kept, dropped, ReviewConfig(select=("flipped",)))
    assert choose(only, 10)["pair_id"].to_list() == ["p4"]


def test_tasks_record_the_shown_order_and_answers_map_back():
    prompts = pa.table(
        {
            "prompt_id": ["q1"],
            "source_id": ["s"],
            "prompt": [[{"role": "user", "content": "Say hi"}]],
        }
    )
    cands = pa.table(
        {"candidate_id": ["a", "b"], "text": ["hello", "go away"], "history": [None, None]}
    )
    chosen = pl.DataFrame(
        {
            "pair_id": ["p"],
            "prompt_id": ["q1"],
            "source_id": ["s"],
            "chosen_id": ["a"],
            "rejected_id": ["b"],
            "p_hat": [0.6],
            "outcome": ["keep"],
            "reasons": ["low_confidence"],
        }
    )
    orders = {seed: shown_order("p", seed) for seed in range(8)}
    assert set(orders.values()) == {"ab", "ba"}  # both orders occur over seeds
    for seed, order in orders.items():
        (task,) = build_tasks(chosen, prompts, cands, "d@v1", seed)
        d = task["data"]
        assert d["prompt"] == "Say hi" and d["version"] == "d@v1" and d["order"] == order
        shown_a = "hello" if order == "ab" else "go away"
        assert d["a"] == shown_a and {d["a_id"], d["b_id"]} == {"a", "b"}
        # the reviewer prefers "hello", whichever side it was shown on
        pick = "A" if d["a_id"] == "a" else "B"
        ann = {
            "id": 5,
            "completed_by": {"id": 2},
            "result": [
                {"from_name": "verdict", "value": {"choices": [pick]}},
                {"from_name": "comment", "value": {"text": ["rude"]}},
            ],
        }
        votes, info = annotations_to_votes([{"id": 1, "data": d, "annotations": [ann]}], "d@v1")
        (v,) = votes.to_pylist()
        assert (v["candidate_a"], v["candidate_b"], v["verdict"]) == ("a", "b", "a")
        assert v["annotator"] == "human:2" and json.loads(v["raw_output"])["comment"] == "rude"


def test_latest_answer_counts_once_and_unanswered_are_reported():
    d = {"pair_id": "p", "version": "d@v1", "a_id": "a", "b_id": "b", "order": "ab"}
    d |= {"prompt_id": "q", "source_id": "s"}

    def ann(i: int, user: int, choice: str | None, cancelled: bool = False) -> dict:
        res = [{"from_name": "verdict", "value": {"choices": [choice]}}] if choice else []
        return {"id": i, "completed_by": user, "result": res, "was_cancelled": cancelled}

    tasks = [
        {
            "id": 1,
            "data": d,
            "annotations": [ann(1, 7, "A"), ann(4, 7, "B"), ann(2, 8, "both bad")],
        },
        {"id": 2, "data": {**d, "pair_id": "p2"}, "annotations": [ann(3, 7, None, True)]},
        {"id": 3, "data": {**d, "pair_id": "p3", "version": "d@v2"}, "annotations": []},
    ]
    votes, info = annotations_to_votes(tasks, "d@v1")
    got = sorted((v["annotator"], v["verdict"]) for v in votes.to_pylist())
    assert got == [("human:7", "b"), ("human:8", "tie")]  # user 7's later answer wins
    assert info["unanswered"] == ["p2"] and info["cancelled"] == 1 and info["other_version"] == 1
    again, _ = annotations_to_votes(tasks + tasks, "d@v1")  # importing twice: no doubling
    assert again.num_rows == 2


def test_review_stage_quarantines_votes_of_other_candidates():
    cands = pa.table({"source_id": ["s", "s"], "prompt_id": ["q", "q"], "candidate_id": ["a", "b"]})
    rows = [
        {"prompt_id": "q", "source_id": "s", "candidate_a": "a", "candidate_b": "b",
         "annotator": "human:1", "verdict": "a"},
        {"prompt_id": "q", "source_id": "s", "candidate_a": "a", "candidate_b": "z",
         "annotator": "human:1", "verdict": "b"},
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=VOTES)
    res = review_votes([("h.parquet", table)], cands)
    assert res.counts.kept == 1 and res.counts.quarantined == {"invalid_value": 1}
    (q,) = res.quarantine.to_pylist()
    assert q["file"] == "h.parquet" and q["row"] == 1 and "candidate z" in q["detail"]


def test_human_majority_anchors_the_aggregation():
    """Three judges agree on b where two humans say a: plain Dawid–Skene follows the judges;
    with the humans as gold the pair is a, and a judge that contradicts the humans on the
    anchored pairs loses its reliability."""
    rows = []
    for i in range(12):
        pair = (f"c{i}a", f"c{i}b")
        for j in range(3):
            rows.append((f"q{i}", *pair, f"judge{j}", "b" if i < 6 else "a"))
        if i < 6:
            rows += [(f"q{i}", *pair, "human:1", "a"), (f"q{i}", *pair, "human:2", "a")]
    votes = pl.DataFrame(
        rows,
        schema=["prompt_id", "candidate_a", "candidate_b", "annotator", "verdict"],
        orient="row",
    ).with_columns(
        source_id=pl.lit("s"),
        order=pl.lit(None, pl.Utf8),
        prob_a=pl.lit(None, pl.Float64),
        raw_output=pl.lit(None, pl.Utf8),
        parse_error=pl.lit(None, pl.Utf8),
    )
    plain = aggregate_votes(votes, method="dawid_skene", prior=(2.0, 1.0))
    gold = aggregate_votes(votes, method="dawid_skene", prior=(2.0, 1.0), gold_prefix="human:")
    p_plain = plain.outputs["comparisons"].column("p_a").to_numpy()[:6]
    p_gold = gold.outputs["comparisons"].column("p_a").to_numpy()[:6]
    assert (p_plain < 0.5).all() and np.allclose(p_gold, 1.0)
    assert gold.info["gold"] == {
        "prefix": "human:",
        "annotators": 2,
        "comparisons": 6,
        "a": 6,
        "b": 0,
    }
    rel = gold.info["annotator_reliability"]
    assert rel["judge0"] < plain.info["annotator_reliability"]["judge0"]
    maj = aggregate_votes(votes, method="majority", gold_prefix="human:")
    assert np.allclose(maj.outputs["comparisons"].column("p_a").to_numpy()[:6], 1.0)


def _fake_cfg(tmp_path: Path, examples: Path, *extra: str):
    return load_config(
        None,
        [
            f"data_root={tmp_path}",
            "name=review-run",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=3",
            *FAKE_MODELS,
            "rubrics.judges=[]",
            *extra,
        ],
    )


def test_flow_takes_review_votes_and_anchors(tmp_path, examples):
    first = curate(_fake_cfg(tmp_path, examples).model_dump(mode="json"))
    m1 = store.read_manifest(first["path"])
    run = Path(tmp_path) / "runs" / "review-run" / "stages"
    (mar,) = run.glob(f"margins-{m1['stages']['margins']['key']}")
    pairs = pq.read_table(mar / "pairs.parquet").to_pylist()[:2]
    votes = []
    for p in pairs:  # two humans prefer the rejected side of two pairs
        a, b = sorted((p["chosen_id"], p["rejected_id"]))
        for h in ("human:1", "human:2"):
            votes.append(
                {"prompt_id": p["prompt_id"], "source_id": p["source_id"], "candidate_a": a,
                 "candidate_b": b, "annotator": h, "order": None,
                 "verdict": "a" if p["rejected_id"] == a else "b", "prob_a": None,
                 "raw_output": None, "parse_error": None}
            )  # fmt: skip
    path = tmp_path / "human.parquet"
    pq.write_table(pa.Table.from_pylist(votes, schema=VOTES), path)
    cfg = _fake_cfg(tmp_path, examples, f"review.votes=[{path}]", "review.anchor=true")
    second = curate(cfg.model_dump(mode="json"))
    m2 = store.read_manifest(second["path"])
    assert m2["stages"]["review"]["kept"] == 4
    assert m2["stage_info"]["aggregate"]["gold"]["comparisons"] == 2
    for stage in ("generate", "judge"):  # no model call repeated for the review
        assert m2["stages"][stage]["reused"]
    published = pl.read_parquet(Path(second["path"]) / "data.parquet")
    flipped_to = {(p["rejected_id"], p["chosen_id"]) for p in pairs}
    got = set(zip(published["chosen_id"], published["rejected_id"]))
    assert flipped_to <= got  # the humans' side is now chosen
    with pytest.raises(ConfigError, match="does not exist"):
        curate(
            _fake_cfg(tmp_path, examples, "review.votes=[/nonexistent.parquet]").model_dump(
                mode="json"
            )
        )


class FakeLabelStudio:
    """An in-memory stand-in with the client's methods (the real server: test_labelstudio)."""

    def __init__(self) -> None:
        self.projects: dict[int, dict] = {}

    def find_project(self, title: str) -> int | None:
        return next((i for i, p in self.projects.items() if p["title"] == title), None)

    def create_project(self, title, label_config, description="", maximum_annotations=1) -> int:
        pid = len(self.projects) + 1
        self.projects[pid] = {"title": title, "tasks": [], "overlap": maximum_annotations}
        return pid

    def task_ids_by(self, project_id: int, key: str = "pair_id") -> dict[str, int]:
        return {t["data"][key]: t["id"] for t in self.projects[project_id]["tasks"]}

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        ts = self.projects[project_id]["tasks"]
        for t in tasks:
            ts.append({"id": len(ts) + 1, "data": t["data"], "annotations": []})
        return len(tasks)

    def export_tasks(self, project_id: int) -> list[dict]:
        return json.loads(json.dumps(self.projects[project_id]["tasks"]))

    def answer(self, project_id: int, user: int, pick) -> None:
        for t in self.projects[project_id]["tasks"]:
            choice = pick(t["data"])
            t["annotations"].append(
                {"id": len(t["annotations"]) + 100 * user, "completed_by": user,
                 "result": [{"from_name": "verdict", "value": {"choices": [choice]}}]}
            )  # fmt: skip


def test_export_and_import_through_a_client(tmp_path, examples):
    from flows.review import export_review, import_review

    cfg = _fake_cfg(tmp_path, examples, "review.budget=4", "review.overlap=2")
    first = curate(cfg.model_dump(mode="json"))
    ls = FakeLabelStudio()
    ref = f"review-run@v{first['version']}"
    sent = export_review(tmp_path, ref, ls)
    assert sent["project_created"] and 0 < sent["sent"] <= 4 and sent["missing_text"] == 0
    assert ls.projects[sent["project_id"]]["overlap"] == 2
    again = export_review(tmp_path, ref, ls)  # idempotent: found by title and pair id
    assert not again["project_created"] and again["sent"] == 0
    assert again["already_there"] == sent["sent"]
    assert json.loads(Path(again["path"]).read_text())["project_id"] == sent["project_id"]
    pid = sent["project_id"]
    # nobody answered yet: reported, nothing curated
    none = import_review(tmp_path, ref, ls)
    assert (
        none["votes"] == 0 and none["unanswered_pairs"] == sent["sent"] and none["curation"] is None
    )
    # two reviewers prefer the version's rejected response of every pair
    ls.answer(pid, 1, lambda d: "B" if d["order"] == "ab" else "A")
    ls.answer(pid, 2, lambda d: "B" if d["order"] == "ab" else "A")
    res = import_review(tmp_path, ref, ls, anchor=True)
    assert res["votes"] == 2 * sent["sent"] and res["humans"] == 2
    summary = res["curation"]
    assert summary["created"] and summary["version"] == first["version"] + 1
    m = store.read_manifest(summary["path"])
    assert m["config"]["review"]["anchor"] is True
    assert m["stage_info"]["review"]["reviewed_versions"] == [ref]
    assert m["config"]["review"]["votes"] == [res["votes_path"]]
    assert m["stage_info"]["aggregate"]["gold"]["comparisons"] == sent["sent"]
    assert all(m["stages"][s]["reused"] for s in ("generate", "judge"))
    pub = pl.read_parquet(Path(summary["path"]) / "data.parquet")
    # a pair's id follows its orientation: find the reviewed pairs by their two candidates
    got = {frozenset(p): p[0] for p in zip(pub["chosen_id"], pub["rejected_id"])}
    seen = 0
    for t in ls.export_tasks(pid):  # the reviewers' side is chosen now, where published
        d = t["data"]
        old_rejected = d["b_id"] if d["order"] == "ab" else d["a_id"]
        key = frozenset((d["a_id"], d["b_id"]))
        if key in got:
            seen += 1
            assert got[key] == old_rejected
    assert seen > 0
    # the report's Review section: what was sent and answered, what changed, who agreed
    from pipeline.report.build import build_report, render_html, render_terminal

    rep = build_report(summary["path"])
    rv = rep["review"]
    assert rv["summary"]["reviewers"] == 2 and rv["summary"]["votes"] == res["votes"]
    assert rv["summary"][f"pairs sent ({ref})"] == sent["sent"]
    assert rv["summary"]["pairs with a human majority"] == sent["sent"]
    tables = {t["title"]: dict(t["rows"]) if len(t["columns"]) == 2 else t for t in rv["tables"]}
    before = tables[f"humans against the reviewed version {ref}"]
    assert before.get("agreed: human side chosen", 0) == 0  # they always chose the rejected
    here = tables["the pairs the humans decided, in this version"]
    assert here["human side chosen"] == seen and here["other side chosen"] == 0
    accuracy = tables["annotators' accuracy against the human majority"]
    assert accuracy["rows"] and all(0 <= r[2] <= 1 for r in accuracy["rows"])
    assert "Review: what people answered" in render_html(rep)
    from rich.console import Console

    con = Console(record=True, width=140)
    render_terminal(rep, con)
    assert "humans against the reviewed version" in con.export_text()
    # importing again: the same votes, no new version
    twice = import_review(tmp_path, ref, ls, anchor=True)
    assert twice["votes"] == res["votes"] and not twice["curation"]["created"]
