"""Judge qualification: the table on verifier- or gold-decided pairs, its warnings, and the
`judges qualify` path that publishes nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from flows.qualify import qualify_run
from pipeline.annotate.qualify import qualify_judges
from schemas.config import load_config
from schemas.tables import VOTES

REPO = Path(__file__).resolve().parents[2]


def vote(
    sid: str, ann: str, order: str | None, verdict: str | None, prob_a: float | None = None
) -> dict:
    return dict(
        prompt_id="p",
        source_id=sid,
        candidate_a="x" + sid,
        candidate_b="y" + sid,
        annotator=ann,
        order=order,
        verdict=verdict,
        prob_a=prob_a,
        raw_output=None,
        parse_error=None,
    )


def test_a_judge_that_always_answers_a_is_at_chance_and_flips_every_pair() -> None:
    rows = []
    for i in range(40):
        gold = "a" if i % 2 else "b"
        rows.append(vote(str(i), "verifier:exact_answer", None, gold))
        rows.append(vote(str(i), "j|pairwise_v1|none|ab", "ab", "a"))  # always "A" shown
        rows.append(vote(str(i), "j|pairwise_v1|none|ba", "ba", "b"))
        rows.append(vote(str(i), "good|pairwise_v1|none|ab", "ab", gold))
        rows.append(vote(str(i), "good|pairwise_v1|none|ba", "ba", gold))
    q = qualify_judges(
        pa.Table.from_pylist(rows, schema=VOTES),
        judge_models={"j": "m1", "good": "m2"},
        policy_models={"pol": "m2"},
    )
    j, g = q["judges"]["j|pairwise_v1|none"], q["judges"]["good|pairwise_v1|none"]
    assert q["gold_pairs"] == 40 and j["pairs"] == 40
    assert j["accuracy"] == 0.5 and j["position_flip_rate"] == 1.0
    assert g["accuracy"] == 1.0 and g["position_flip_rate"] == 0.0 and g["accuracy_ci"][0] > 0.9
    # j agrees with the good judge half the time; j itself is split 1-1 on every pair,
    # so the good judge has no panel majority to agree with
    assert j["panel_agreement"] == 0.5 and g["panel_agreement"] is None
    warnings = " ".join(q["warnings"])
    assert "j|pairwise_v1|none: not distinguishable from chance" in warnings
    assert "good|pairwise_v1|none: not" not in warnings
    assert "good: shares its model m2 with policy pol" in warnings


def test_disagreeing_verifiers_make_no_gold_pair() -> None:
    rows = [
        vote("1", "verifier:exact_answer", None, "a"),
        vote("1", "verifier:constraints", None, "b"),
        vote("1", "j|pairwise_v1|none|ab", "ab", "a"),
    ]
    assert qualify_judges(pa.Table.from_pylist(rows, schema=VOTES))["gold_pairs"] == 0


def test_qualify_run_on_a_gold_pairs_file_publishes_nothing(tmp_path: Path) -> None:
    cfg = load_config(
        None, [f"data_root={tmp_path}", "judge.judges.0.model.engine=fake", "rubrics.judges=[]"]
    )
    q = qualify_run(cfg.model_dump(mode="json"), str(REPO / "data/examples/pairs_votes.jsonl"))
    assert q["gold_pairs"] == 12 and q["gold_sources"] == ["gold"]
    judge = q["judges"]["smollm2-judge|pairwise_v1|none"]
    assert judge["pairs"] == 12 and judge["parsed"] + 0 <= 24
    assert q["calls"]["judge"]["made"] == 24
    assert not (tmp_path / "datasets").exists()
