"""Judge statistics against hand-computed values on tiny tables (and sklearn for κ)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.annotate.judge_stats import (
    cohen_kappa,
    compute_judge_stats,
    compute_score_stats,
    judge_of,
    krippendorff_alpha_nominal,
)
from schemas.tables import CANDIDATES, SCORES, VOTES, from_rows

J1, J2 = "j1|pairwise_v1|none", "j2|pairwise_v1|abc123"
PAIRS = {"P1": ("c1", "c2"), "P2": ("c1", "c3"), "P3": ("c2", "c3"), "P4": ("c3", "c4")}
LENGTHS = {"c1": 4, "c2": 2, "c3": 6, "c4": 2}

# verdicts in the ab orientation; None = a parse failure
PANEL = {
    f"{J1}|ab": {"P1": "a", "P2": "b", "P3": "b", "P4": "a"},
    f"{J1}|ba": {"P1": "a", "P2": "a", "P3": "b", "P4": None},
    f"{J2}|ab": {"P1": "a", "P2": "b", "P3": "tie", "P4": "a"},
    f"{J2}|ba": {"P1": "b", "P2": "b", "P3": "b", "P4": "a"},
}


def _votes(panel: dict[str, dict[str, str | None]], extra: list[dict] | None = None):
    rows = []
    for ann, vs in panel.items():
        order = ann.rsplit("|", 1)[1] if ann.endswith(("|ab", "|ba")) else None
        for p, v in vs.items():
            a, b = PAIRS[p]
            rows.append(
                {
                    "prompt_id": "p",
                    "source_id": "s",
                    "candidate_a": a,
                    "candidate_b": b,
                    "annotator": ann,
                    "order": order,
                    "verdict": v,
                    "prob_a": None,
                    "raw_output": json.dumps({"winner": v}),
                    "parse_error": None if v else "could not find a verdict",
                }
            )
    return from_rows(rows + (extra or []), VOTES, "votes")


def _candidates():
    return from_rows(
        [
            {
                "prompt_id": "p",
                "source_id": "s",
                "candidate_id": c,
                "policy": "x",
                "sample_index": i,
                "text": "z" * n,
                "finish_reason": "stop",
                "n_prompt_tokens": 1,
                "n_output_tokens": n,
                "request_hash": None,
                "truncated": False,
                "error": None,
            }
            for i, (c, n) in enumerate(LENGTHS.items())
        ],
        CANDIDATES,
        "candidates",
    )


def test_cohen_kappa_textbook_2x2():
    # Wikipedia's example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4
    x = ["yes"] * 25 + ["no"] * 25
    y = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(x, y) == pytest.approx(0.4)


def test_cohen_kappa_undefined_and_errors():
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: no variation
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_krippendorff_alpha_textbook_nominal():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 observers x
    # 12 units with missing values; nominal alpha = 0.743
    n = None
    obs = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in col if v is not None] for col in zip(*obs)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha_nominal([]) is None
    assert krippendorff_alpha_nominal([["a"], ["b"]]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # one category
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0


def test_panel_statistics_hand_computed():
    s = compute_judge_stats(_votes(PANEL), _candidates())
    assert s["n_votes"] == 16 and s["n_pairs"] == 4 and s["n_annotators"] == 4
    assert s["parse_failure_rate"] == 0.0625 and s["null_verdict_rate"] == 0.0625
    j1, j2 = s["judges"][J1], s["judges"][J2]
    assert j1["position_consistency"] == pytest.approx(2 / 3, abs=1e-6)
    assert j1["position_pairs"] == 3  # P4 has no valid ba verdict
    assert j2["position_consistency"] == 0.5 and j2["position_pairs"] == 4
    assert j1["kappa_ab_ba"] == pytest.approx(0.4)
    assert j1["first_position_win_rate"] == pytest.approx(3 / 7, abs=1e-6)
    ann = s["annotators"]
    assert ann[f"{J1}|ab"]["majority_agreement"] == 1.0
    assert ann[f"{J1}|ab"]["majority_compared"] == 2  # P1, P3: the other judge splits
    assert ann[f"{J1}|ba"]["majority_agreement"] == 0.0
    assert ann[f"{J2}|ab"]["majority_agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert ann[f"{J2}|ba"]["majority_agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert ann[f"{J1}|ba"]["parse_failure_rate"] == 0.25
    assert ann[f"{J2}|ab"]["verdicts"] == {"a": 2, "b": 1, "tie": 1}
    # alpha: units P1 [a,a,a,b], P2 [b,a,b,b], P3 [b,b,tie,b], P4 [a,a,a] -> 1 - 14*6/126
    assert s["krippendorff_alpha"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["alpha_units"] == 4
    # length bias: the longer response won 12 of 14 decisive verdicts
    assert s["longer_win_rate"] == pytest.approx(12 / 14, abs=1e-6)
    assert s["length_decisive_votes"] == 14
    assert ann[f"{J1}|ba"]["longer_win_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert ann[f"{J2}|ba"]["longer_win_rate"] == 0.75
    k = {(d["annotator_1"], d["annotator_2"]): d for d in s["kappa"]}
    assert len(k) == 6
    assert k[(f"{J1}|ab", f"{J1}|ba")]["kappa"] == pytest.approx(0.4)
    assert k[(f"{J1}|ab", f"{J1}|ba")]["n"] == 3
    json.dumps(s)  # JSON-able for the manifest


def test_kappa_agrees_with_sklearn_on_the_panel():
    sk = pytest.importorskip("sklearn.metrics")
    s = compute_judge_stats(_votes(PANEL))
    for d in s["kappa"]:
        a, b = PANEL[d["annotator_1"]], PANEL[d["annotator_2"]]
        common = [p for p in PAIRS if a[p] is not None and b[p] is not None]
        want = sk.cohen_kappa_score([a[p] for p in common], [b[p] for p in common])
        assert d["kappa"] == pytest.approx(want, abs=1e-6)


def test_ingested_annotator_and_samples():
    extra = []
    # an ingested label (order null) and a judge sampled twice per pair at temperature > 0
    for p, v in (("P1", "a"), ("P2", "b")):
        a, b = PAIRS[p]
        extra.append(
            {
                "prompt_id": "p",
                "source_id": "s",
                "candidate_a": a,
                "candidate_b": b,
                "annotator": "source",
                "order": None,
                "verdict": v,
                "prob_a": None,
                "raw_output": None,
                "parse_error": None,
            }
        )
    s = compute_judge_stats(
        _votes(
            {f"{J1}|ab": {"P1": "a", "P2": "b"}},
            extra
            + [
                {
                    "prompt_id": "p",
                    "source_id": "s",
                    "candidate_a": "c1",
                    "candidate_b": "c2",
                    "annotator": f"{J1}|ab",
                    "order": "ab",
                    "verdict": "a",
                    "prob_a": None,
                    "raw_output": None,
                    "parse_error": None,
                },
                {
                    "prompt_id": "p",
                    "source_id": "s",
                    "candidate_a": "c1",
                    "candidate_b": "c3",
                    "annotator": f"{J1}|ab",
                    "order": "ab",
                    "verdict": "a",
                    "prob_a": None,
                    "raw_output": None,
                    "parse_error": None,
                },
            ],
        )
    )
    ann = s["annotators"]
    assert ann["source"]["judge"] == "source" and ann["source"]["order"] is None
    # P1: samples a, a -> a; P2: samples b, a -> no modal verdict
    assert ann[f"{J1}|ab"]["verdicts"] == {"a": 1, "b": 0, "tie": 0}
    assert ann[f"{J1}|ab"]["majority_agreement"] == 1.0
    assert s["judges"][J1]["position_consistency"] is None  # only one order
    assert s["longer_win_rate"] is None  # no candidates given


def test_empty_votes():
    s = compute_judge_stats(VOTES.empty_table())
    assert s["n_votes"] == 0 and s["krippendorff_alpha"] is None
    assert s["parse_failure_rate"] is None and s["kappa"] == [] and s["judges"] == {}


def test_judge_of():
    assert judge_of("j|t|p|ab", "ab") == "j|t|p"
    assert judge_of("source", None) == "source"
    assert judge_of("odd-name", "ba") == "odd-name"


def test_score_stats():
    t = from_rows(
        [
            {
                "candidate_id": "c1",
                "annotator": "r",
                "aspect": "helpfulness",
                "score": 4.0,
                "raw_output": "{}",
                "parse_error": None,
            },
            {
                "candidate_id": "c2",
                "annotator": "r",
                "aspect": "helpfulness",
                "score": None,
                "raw_output": "junk",
                "parse_error": "no score",
            },
            {
                "candidate_id": "c1",
                "annotator": "rm",
                "aspect": "reward",
                "score": -1.0,
                "raw_output": "[-1.0]",
                "parse_error": None,
            },
            {
                "candidate_id": "c2",
                "annotator": "rm",
                "aspect": "reward",
                "score": 1.0,
                "raw_output": "[1.0]",
                "parse_error": None,
            },
        ],
        SCORES,
        "scores",
    )
    s = compute_score_stats(t)
    assert s["rows"] == 4 and s["parse_failure_rate"] == 0.25
    assert s["aspects"]["r/helpfulness"] == {
        "rows": 2,
        "null": 1,
        "null_rate": 0.5,
        "parse_errors": 1,
        "mean": 4.0,
        "std": 0.0,
    }
    assert s["aspects"]["rm/reward"]["mean"] == 0.0 and s["aspects"]["rm/reward"]["std"] == 1.0


LABELS = st.sampled_from(["a", "b", "tie"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(LABELS, LABELS), min_size=1, max_size=30))
def test_kappa_matches_sklearn_property(pairs):
    sk = pytest.importorskip("sklearn.metrics")
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    ours = cohen_kappa(x, y)
    if ours is None:
        assert len(set(x) | set(y)) == 1
    else:
        assert ours == pytest.approx(sk.cohen_kappa_score(x, y), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(LABELS, min_size=0, max_size=5), min_size=0, max_size=12))
def test_alpha_bounds_property(units):
    a = krippendorff_alpha_nominal(units)
    if a is not None:
        assert a <= 1.0 + 1e-9
        if all(len(set(u)) <= 1 for u in units):
            assert a == 1.0  # no disagreement inside any unit
