"""Length-bias control (issue 14): the per-annotator GLM, the length-debiased posterior of
``aggregate.length_control`` and ``pairs.length_balance``."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from bench import scenarios as S
from pipeline.aggregate import length
from pipeline.aggregate.aggregation import aggregate_votes
from pipeline.pairs import build_pairs
from schemas.config import AggregateConfig, PairsConfig, load_config
from schemas.tables import PAIRS, VOTES


def _lengths(sim: S.Sim) -> pl.DataFrame:
    """Candidate lengths in the frame of :func:`bench.scenarios.votes_table`."""
    ca, cb = S.candidate_ids(sim)
    la = np.where(sim.swapped, sim.len_b, sim.len_a)
    lb = np.where(sim.swapped, sim.len_a, sim.len_b)
    return pl.DataFrame(
        {"candidate_id": ca + cb, "length": np.concatenate([la, lb]).astype(np.float64)}
    )


def _accuracy(sim: S.Sim, res) -> float:
    c = res.outputs["comparisons"]
    row = {s: i for i, s in enumerate(sim.ids)}
    idx = np.array([row[s] for s in c.column("source_id").to_pylist()])
    p_a = np.array(c.column("p_a").to_pylist(), dtype=float)
    return float(np.mean((p_a > 0.5) == (sim.better_a != sim.swapped)[idx]))


def _fit(sim: S.Sim, mode: str):
    return aggregate_votes(
        S.votes_table(sim, include_label=sim.has_label),
        label_annotators={S.LABEL_ANNOTATOR},
        method="dawid_skene",
        prior=(2.0, 1.0),
        class_prior="tested",
        label_correlation="split",
        length_control=mode,
        lengths=_lengths(sim),
    )


@pytest.mark.parametrize("scenario", ["length_confound", "length_judges"])
def test_length_control_recovers_what_length_biased_judges_lose(scenario):
    sim = S.simulate(scenario, 2000, 0.2, seed=0)
    off, tested = _fit(sim, "off"), _fit(sim, "tested")
    oracle = S.oracle(sim).p_a
    ceiling = float(np.mean((oracle > 0.5) == sim.better_a))
    assert _accuracy(sim, tested) > _accuracy(sim, off) + 0.015
    assert _accuracy(sim, tested) > ceiling - 0.02
    lc = tested.info["length_control"]
    assert lc["mode"] == "tested" and lc["split"]  # annotators found biased, with z > 4
    assert all(abs(z) > 4 for z in lc["split"].values())
    # "on" (every annotator split, length assumed to carry no quality) recovers it too
    assert _accuracy(sim, _fit(sim, "on")) > _accuracy(sim, off) + 0.015
    # the collapsed reliabilities are named like the annotators, within [0, 1]
    rel = tested.info["annotator_reliability"]
    assert set(rel) == set(off.info["annotator_reliability"])
    assert all(r is None or 0 <= r <= 1 for r in rel.values())


@pytest.mark.parametrize("scenario", ["sparse", "dense", "ties"])
def test_length_control_changes_nothing_without_a_length_bias(scenario):
    sim = S.simulate(scenario, 1500, 0.2, seed=3)
    off, tested = _fit(sim, "off"), _fit(sim, "tested")
    assert tested.info["length_control"]["split"] == {}
    assert np.array_equal(
        off.outputs["comparisons"].column("p_a").to_numpy(),
        tested.outputs["comparisons"].column("p_a").to_numpy(),
    )


def test_length_flags_find_the_biased_annotators_only():
    sim = S.simulate("length_biased", 3000, 0.2, seed=1)  # two "lengthy-*" annotators
    res = _fit(sim, "tested")
    assert set(res.info["length_control"]["split"]) == {"lengthy-0", "lengthy-1"}


def test_length_control_on_needs_lengths_and_ignores_verifiers():
    sim = S.simulate("sparse", 200, 0.2, seed=0)
    votes = S.votes_table(sim)
    with pytest.raises(ValueError, match="needs the candidates' lengths"):
        aggregate_votes(votes, method="dawid_skene", length_control="on")
    # tested without lengths (the core-chain bench): no length control, no error
    res = aggregate_votes(votes, method="dawid_skene", length_control="tested")
    assert "length_control" not in res.info
    # "on": every annotator but a verifier gets a confusion per side
    ver = votes.set_column(
        votes.schema.get_field_index("annotator"),
        "annotator",
        pa.array(
            [
                "verifier:answer" if i % 7 == 0 else a
                for i, a in enumerate(votes.column("annotator").to_pylist())
            ]
        ),
    )
    on = aggregate_votes(ver, method="dawid_skene", length_control="on", lengths=_lengths(sim))
    by_side = on.info["length_control"]["reliability_by_side"]
    assert "verifier:answer" not in by_side  # one confusion, under its own name
    assert set(by_side) == set(on.info["annotator_reliability"]) - {"verifier:answer"}
    assert all(set(v) <= set(length.SIDES) for v in by_side.values())
    assert sum(len(v) > 1 for v in by_side.values()) > len(by_side) // 2


def _votes(rows: list[tuple[int, str, str]]) -> pa.Table:
    """VOTES rows (pair i, annotator, verdict) on the pairs a{i} / b{i} of source s{i}."""
    return pa.Table.from_pylist(
        [
            dict(
                prompt_id=f"p{i}",
                source_id=f"s{i}",
                candidate_a=f"a{i}",
                candidate_b=f"b{i}",
                annotator=w,
                order=None,
                verdict=d,
                prob_a=None,
                raw_output=None,
                parse_error=None,
            )
            for i, w, d in rows
        ],
        schema=VOTES,
    )


def _pairs_and_lengths(p_a, len_a, len_b) -> tuple[pa.Table, pl.DataFrame]:
    """COMPARISONS-like rows (p_a per pair i) and the lengths of a{i} / b{i}."""
    n = len(p_a)
    comps = pa.Table.from_pylist(
        [
            {
                "source_id": f"s{i}",
                "prompt_id": f"p{i}",
                "candidate_a": f"a{i}",
                "candidate_b": f"b{i}",
                "p_a": float(p_a[i]),
            }
            for i in range(n)
        ]
    )
    lengths = pl.DataFrame(
        {
            "candidate_id": [f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)],
            "length": np.concatenate([np.asarray(len_a, float), np.asarray(len_b, float)]),
        }
    )
    return comps, lengths


def test_length_effects_glm_separates_a_length_judge_from_an_honest_one():
    rng = np.random.default_rng(0)
    n = 400
    la = rng.integers(50, 800, n).astype(float)
    lb = rng.integers(50, 800, n).astype(float)
    truth_a = rng.random(n) < 0.5  # quality independent of length
    rows = []
    for i in range(n):
        honest = "a" if (truth_a[i] if rng.random() < 0.85 else not truth_a[i]) else "b"
        lengthy = "a" if la[i] > lb[i] else "b"
        rows += [(i, "honest", honest), (i, "lengthy", lengthy)]
    votes = _votes(rows)
    comps, lengths = _pairs_and_lengths(np.where(truth_a, 0.9, 0.1), la, lb)
    eff = length.length_effects(votes, comps, lengths)["annotators"]
    h, ln = eff["honest"], eff["lengthy"]
    assert ln["longer_win_rate"] == 1.0 and abs(h["longer_win_rate"] - 0.5) < 0.1
    assert ln["length_coef"] > 3.0 and abs(h["length_coef"]) < 3 * h["length_coef_se"] + 0.3
    # with the length term set to 0, the length judge's "longer" rate falls towards ½
    assert ln["lc_longer_win_rate"] < 0.75
    assert abs(h["lc_longer_win_rate"] - h["longer_win_rate"]) < 0.05


def _pairs(n: int, weights: list[float]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            dict(
                pair_id=f"p{i}",
                prompt_id=f"q{i}",
                source_id=f"s{i}",
                chosen_id=f"c{i}",
                rejected_id=f"r{i}",
                p_hat=0.8,
                disagreement=0.1,
                n_votes=3,
                margin=1.0,
                weight=weights[i],
                label_status="agree",
                similarity=None,
                flags=[],
                decision="keep",
                reason=None,
                score_chosen=None,
                score_rejected=None,
                curriculum_stage=None,
                split=None,
            )
            for i in range(n)
        ],
        schema=PAIRS,
    )


def test_length_balance_drops_the_lowest_weight_pairs_on_the_side_in_excess():
    n = 10
    w = [0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6, 1.0, 0.4]
    chosen_longer = [True] * 8 + [False] * 2
    lengths = pl.DataFrame(
        {
            "candidate_id": [f"c{i}" for i in range(n)] + [f"r{i}" for i in range(n)],
            "length": [300.0 if x else 50.0 for x in chosen_longer] + [100.0] * n,
        }
    )
    res = build_pairs(_pairs(n, w), PairsConfig(length_balance=(0.4, 0.6)), lengths)
    # (8 − k) / (10 − k) <= 0.6 needs k = 5: the five lightest chosen-longer pairs
    gone = set(res.dropped.column("row_id").to_pylist())
    assert gone == {"p1", "p5", "p3", "p2", "p7"}
    assert set(res.dropped.column("reason").to_pylist()) == {"length_balance"}
    assert res.counts.rows_in == res.counts.kept + sum(res.counts.dropped.values())
    info = res.info["length_balance"]
    assert info["chosen_longer_before"] == 0.8 and info["chosen_longer_after"] == 0.6
    # inside the band: nothing dropped; a band only an empty set meets: nothing dropped
    assert (
        build_pairs(_pairs(n, w), PairsConfig(length_balance=(0.0, 0.9)), lengths).counts.dropped
        == {}
    )
    all_long = lengths.with_columns(
        length=pl.when(pl.col("candidate_id").str.starts_with("c"))
        .then(500.0)
        .otherwise(pl.col("length"))
    )
    none = build_pairs(_pairs(n, w), PairsConfig(length_balance=(0.0, 0.5)), all_long)
    assert none.counts.dropped == {} and none.info["length_balance"]["reachable"] is False
    with pytest.raises(ValueError, match="needs the candidates' lengths"):
        build_pairs(_pairs(n, w), PairsConfig(length_balance=(0.4, 0.6)))


def test_config_names_and_checks():
    assert AggregateConfig().length_control == "tested"
    # YAML 1.1 reads a bare off / on as a boolean
    assert load_config(None, ["aggregate.length_control=off"]).aggregate.length_control == "off"
    assert load_config(None, ["aggregate.length_control=on"]).aggregate.length_control == "on"
    with pytest.raises(ValueError, match="length_balance"):
        PairsConfig(length_balance=(0.7, 0.3))
    with pytest.raises(ValueError):
        PairsConfig(length_balance=(0.2, 1.5))


def test_flow_balances_lengths_and_reports_them(tmp_path):
    """The pairs example through the real flow with a band it is outside of: the excess
    pairs are in dropped.parquet with reason length_balance, the rows add up, and the
    published share is inside the band."""
    import json
    from pathlib import Path

    from flows.curate import curate
    from pipeline.store import datasets as store

    examples = Path(__file__).resolve().parents[2] / "data" / "examples"
    cfg = load_config(
        examples / "pairs_votes.yaml",
        [
            f"data_root={tmp_path}",
            f"input.path={examples / 'pairs_votes.jsonl'}",
            "pairs.length_balance=[0.0,0.4]",
        ],
    )
    vpath = Path(curate(cfg.model_dump(mode="json"))["path"])
    manifest = store.read_manifest(vpath)
    info = manifest["stage_info"]["pairs"]["length_balance"]
    assert info["chosen_longer_before"] > 0.4 >= info["chosen_longer_after"]
    dropped = pl.read_parquet(vpath / "dropped.parquet")
    bal = dropped.filter(pl.col("reason") == "length_balance")
    assert bal.height == info["dropped"] > 0
    assert set(bal["stage"].to_list()) == {"pairs"}
    st = manifest["stages"]["pairs"]
    assert st["in"] == st["kept"] + sum(st["dropped"].values()) + sum(st["quarantined"].values())
    data = pl.read_parquet(vpath / "data.parquet")
    text = lambda m: "".join(x["content"] for x in m if x["role"] == "assistant")  # noqa: E731
    longer = [
        len(text(c)) > len(text(r))
        for c, r in zip(data["chosen"].to_list(), data["rejected"].to_list())
    ]
    assert sum(longer) / len(longer) <= 0.4
    assert json.loads(json.dumps(manifest["stage_info"]["aggregate"]["length_control"]))


def test_length_effects_of_a_judge_that_always_answers_a_is_not_a_number():
    """SmolLM2 answers "A" in every call: its |ab votes are all a, its |ba all b. A GLM
    fitted to a constant has no finite coefficient; the table says so instead of
    printing a huge standard error."""
    comps, lengths = _pairs_and_lengths([0.5] * 30, [10.0 + i for i in range(30)], [20.0] * 30)
    votes = _votes([(i, "always-a", "a") for i in range(30)])
    row = length.length_effects(votes, comps, lengths)["annotators"]["always-a"]
    assert row["length_coef"] is None and row["note"] == "always says a"
    assert 0.0 < row["longer_win_rate"] < 1.0
