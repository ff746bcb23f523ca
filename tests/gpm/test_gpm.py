"""Tests for the GPM head, the ``gpm`` annotator and cyclic-preference detection."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from bench.gpm_eval import cyclic_accuracy, make_cyclic_set
from pipeline.gpm.annotate import annotate_gpm, comparisons_p_hat, gpm_votes
from pipeline.gpm.cycles import find_cycles, flag_cyclic_pairs, flag_cyclic_prompts
from pipeline.gpm.model import (
    FLAG_CYCLIC,
    NO_EMBEDDING,
    GPMModel,
    Standardizer,
    sigmoid_pair,
    skew_scores,
)
from pipeline.gpm.train import train_gpm
from pipeline.margins import oriented_row
from schemas.config import GPMConfig, MarginConfig
from schemas.errors import PrefcurateError
from schemas.tables import COMPARISONS, CYCLES, DROPPED, PAIRS, VOTES, check_table, from_rows

PROPS = settings(max_examples=60, deadline=None)
FAST = GPMConfig(epochs=15, seed=0)


def random_model(seed: int, d: int = 6, d_x: int = 5, k: int = 3, hidden: int = 0) -> GPMModel:
    """A GPM head with random weights (no training), prompts on, joint embedding."""
    rng = np.random.default_rng(seed)
    width = hidden or 2 * k
    return GPMModel(
        resp=Standardizer(np.zeros(d), None, 1.0),
        prompt=Standardizer(np.zeros(d_x), None, 1.0),
        w_y=rng.normal(size=(width, d)),
        b_y=rng.normal(size=width),
        w_x=rng.normal(size=(width, d_x)),
        w_out=rng.normal(size=(2 * k, hidden)) if hidden else None,
        b_out=rng.normal(size=2 * k) if hidden else None,
        w_gate=rng.normal(size=(k, d_x)),
        b_gate=rng.normal(size=k),
        tau=0.1,
    )


@pytest.fixture(scope="module")
def rps_model() -> tuple[GPMModel, dict]:
    data = make_cyclic_set(120, seed=0)
    return train_gpm(data["prompt"], data["a"], data["b"], data["p_hat"], FAST), data


# ------------------------------------------------------------------------------ math

finite = st.floats(-10, 10, allow_nan=False, width=32)


@PROPS
@given(
    seed=st.integers(0, 2**16),
    hidden=st.sampled_from([0, 4]),
    ei=arrays(np.float32, (7, 6), elements=finite),
    ej=arrays(np.float32, (7, 6), elements=finite),
    ex=arrays(np.float32, (7, 5), elements=finite),
)
@example(
    seed=0,
    hidden=0,
    ei=np.zeros((7, 6), np.float32),
    ej=np.zeros((7, 6), np.float32),
    ex=np.zeros((7, 5), np.float32),
)
def test_scores_are_exactly_antisymmetric(seed, hidden, ei, ej, ex):
    m = random_model(seed, hidden=hidden)
    s_ij, s_ji = m.logits(ex, ei, ej), m.logits(ex, ej, ei)
    assert np.all(s_ij == -s_ji)
    assert np.all(np.abs(s_ij) <= 1 + 1e-12)
    p_ij, p_ji = m.score_pairs(ex, ei, ej), m.score_pairs(ex, ej, ei)
    assert np.all(p_ij + p_ji == 1.0)
    assert np.all((p_ij >= 0) & (p_ij <= 1))
    assert np.all(m.score_pairs(ex, ei, ei) == 0.5)  # a response against itself


@PROPS
@given(z=arrays(np.float64, 20, elements=st.floats(-800, 800, allow_nan=False)))
def test_sigmoid_pair_sums_to_one(z):
    assert np.all(sigmoid_pair(z) + sigmoid_pair(-z) == 1.0)


def test_trained_head_is_antisymmetric(rps_model):
    m, d = rps_model
    assert np.all(m.logits(d["prompt"], d["a"], d["b"]) == -m.logits(d["prompt"], d["b"], d["a"]))
    p = m.score_pairs(d["prompt"], d["a"], d["b"]) + m.score_pairs(d["prompt"], d["b"], d["a"])
    assert np.all(p == 1.0)
    lam = m.prompt_weights(d["prompt"][:5])
    assert lam.shape == (5, m.k) and np.all(lam >= 0) and np.allclose(lam.sum(1), 1)


def test_three_unit_vectors_120_degrees_apart_form_a_cycle():
    v = np.array([[math.cos(t), math.sin(t)] for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    lam = np.ones((3, 1))
    s = skew_scores(v, v[[1, 2, 0]], lam)  # 0 ≻ 1, 1 ≻ 2, 2 ≻ 0
    assert np.allclose(s, math.sin(2 * math.pi / 3))
    p = sigmoid_pair(s / 0.1)
    assert np.all(p > 0.99)
    table = pa.table(
        {
            "prompt_id": ["p"] * 3,
            "candidate_a": ["r", "s", "r"],
            "candidate_b": ["s", "t", "t"],
            "p_a": [p[0], p[1], 1 - p[2]],
        }
    )  # r ≻ s, s ≻ t, t ≻ r
    cyc = find_cycles(table).to_pylist()
    assert [(c["candidate_1"], c["candidate_2"], c["candidate_3"]) for c in cyc] == [
        ("r", "s", "t")
    ]


def test_gpm_learns_a_cycle_that_bt_cannot():
    acc = cyclic_accuracy(n_train=150, n_test=150, seed=0)
    assert acc["gpm"] >= 0.95
    assert acc["bt"] <= 0.70


def test_margin_loss_and_weights(rps_model):
    _, d = rps_model
    hard = (d["p_hat"] > 0.5).astype(float)
    m = train_gpm(
        d["prompt"],
        d["a"],
        d["b"],
        hard,
        GPMConfig(epochs=15, loss="margin", margin_scale=0.1),
        margin=np.full(len(hard), 2.0),
        weight=np.ones(len(hard)),
    )
    te = make_cyclic_set(100, seed=5)
    acc = ((m.score_pairs(te["prompt"], te["a"], te["b"]) > 0.5) == (te["truth"] > 0.5)).mean()
    assert acc >= 0.95
    assert m.info["loss"] == "margin" and len(m.info["loss_by_epoch"]) == 15


def test_training_is_seeded(rps_model):
    _, d = rps_model
    a = train_gpm(
        d["prompt"][:60], d["a"][:60], d["b"][:60], d["p_hat"][:60], GPMConfig(epochs=3, seed=1)
    )
    b = train_gpm(
        d["prompt"][:60], d["a"][:60], d["b"][:60], d["p_hat"][:60], GPMConfig(epochs=3, seed=1)
    )
    assert np.array_equal(a.w_y, b.w_y) and np.array_equal(a.b_gate, b.b_gate)


def test_without_prompts():
    d = make_cyclic_set(80, seed=3, topic=0.0)
    m = train_gpm(None, d["a"], d["b"], d["p_hat"], GPMConfig(epochs=15))
    assert m.prompt is None and m.w_gate is None
    assert ((m.score_pairs(None, d["a"], d["b"]) > 0.5) == (d["truth"] > 0.5)).mean() >= 0.95


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(p_a=np.full(4, 1.5)), "p_a must lie"),
        (dict(emb_a=np.full((4, 3), np.nan, np.float32)), "NaN"),
        (dict(emb_b=np.zeros((3, 3), np.float32)), "rows"),
        (dict(prompt_emb=np.zeros((2, 3), np.float32)), "rows"),
        (
            dict(
                emb_a=np.zeros((0, 3), np.float32),
                emb_b=np.zeros((0, 3), np.float32),
                p_a=np.zeros(0),
                prompt_emb=None,
            ),
            "no pair",
        ),
    ],
)
def test_bad_inputs_raise(bad, match):
    args = dict(
        prompt_emb=np.zeros((4, 3), np.float32),
        emb_a=np.ones((4, 3), np.float32),
        emb_b=np.zeros((4, 3), np.float32),
        p_a=np.full(4, 0.7),
    )
    args.update(bad)
    with pytest.raises(PrefcurateError, match=match):
        train_gpm(
            args["prompt_emb"], args["emb_a"], args["emb_b"], args["p_a"], GPMConfig(epochs=1)
        )


def test_prompt_embeddings_required_when_trained_with_them():
    m = random_model(0)
    with pytest.raises(PrefcurateError, match="prompt"):
        m.score_pairs(None, np.zeros((1, 6)), np.ones((1, 6)))


def test_config_is_frozen_and_strict():
    with pytest.raises(ValidationError):
        GPMConfig(tua=0.1)
    with pytest.raises(ValidationError):
        GPMConfig(tau=0)
    cfg = GPMConfig()
    assert cfg.tau == 0.1 and cfg.annotator == "gpm"
    with pytest.raises(ValidationError):
        cfg.k = 3


# ------------------------------------------------------------------------------ annotator


def emb_table(ids: list[str], mat: np.ndarray, col: str) -> pa.Table:
    flat = pa.array(np.asarray(mat, np.float32).reshape(-1), pa.float32())
    return pa.table(
        {
            col: pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]),
        }
    )


def rps_tables(
    data: dict, n: int, prefix: str = "q"
) -> tuple[pa.Table, pa.Table, pa.Table, list[list[str]]]:
    """Candidates (ids deliberately *not* in kind order), candidate and prompt embeddings."""
    names = ("z-rock", "b-paper", "m-scissors")  # canonical order: paper < scissors < rock
    pids = [f"{prefix}{i:03d}" for i in range(n)]
    cids = [[f"{p}/{nm}" for nm in names] for p in pids]
    cands = pa.table(
        {
            "prompt_id": [p for p in pids for _ in names],
            "source_id": ["src"] * (3 * n),
            "candidate_id": [c for row in cids for c in row],
        }
    )
    c_emb = emb_table(
        [c for row in cids for c in row], data["emb"][:n].reshape(3 * n, -1), "candidate_id"
    )
    return cands, c_emb, emb_table(pids, data["x"][:n], "prompt_id"), cids


def test_gpm_votes_schema_and_orientation(rps_model):
    m, _ = rps_model
    data = make_cyclic_set(10, seed=42)
    cands, c_emb, p_emb, cids = rps_tables(data, 10)
    votes = gpm_votes(m, cands, c_emb, p_emb, tie_band=0.05)
    check_table(votes, VOTES, "votes")
    rows = votes.to_pylist()
    assert len(rows) == 10 * 3  # K(K-1)/2 = 3 per prompt
    assert all(
        r["annotator"] == "gpm"
        and r["order"] is None
        and r["source_id"] == "src"
        and r["candidate_a"] < r["candidate_b"]
        and r["parse_error"] is None
        for r in rows
    )
    row_of = {c: (i, j) for i, row in enumerate(cids) for j, c in enumerate(row)}
    for r in rows:
        i, ja = row_of[r["candidate_a"]]
        _, jb = row_of[r["candidate_b"]]
        p = m.score_pairs(data["x"][[i]], data["emb"][i, [ja]], data["emb"][i, [jb]])[0]
        assert r["prob_a"] == pytest.approx(p, abs=1e-12)
        assert r["verdict"] == ("tie" if abs(p - 0.5) < 0.05 else "a" if p > 0.5 else "b")
    # truth: paper beats rock, scissors beat paper, rock beats scissors
    beats = {("b-paper", "z-rock"), ("m-scissors", "b-paper"), ("z-rock", "m-scissors")}
    right = [
        ((r["candidate_a"].split("/")[1], r["candidate_b"].split("/")[1]) in beats)
        == (r["verdict"] == "a")
        for r in rows
    ]
    assert np.mean(right) >= 0.9
    assert find_cycles(votes, p_column="prob_a").num_rows >= 9


def test_gpm_votes_ties_missing_embeddings_and_single_candidates(rps_model):
    m, data = rps_model
    e = data["emb"][0]
    cands = pa.table(
        {
            "prompt_id": ["p1", "p1", "p1", "p2", "p3"],
            "source_id": ["s"] * 5,
            "candidate_id": ["x", "y", "nope", "w", "v"],
        }
    )
    c_emb = emb_table(["x", "y", "w", "v"], np.stack([e[0], e[0], e[1], e[2]]), "candidate_id")
    p_emb = emb_table(["p1", "p2"], data["x"][:2], "prompt_id")  # p3 has no prompt embedding
    votes = gpm_votes(m, cands, c_emb, p_emb, tie_band=0.05).to_pylist()
    assert len(votes) == 1  # x vs y only: "nope" has no embedding, p2 / p3 one candidate each
    assert votes[0]["prob_a"] == 0.5 and votes[0]["verdict"] == "tie"
    empty = gpm_votes(m, cands.slice(0, 0), c_emb, p_emb)
    assert empty.num_rows == 0 and empty.schema.equals(VOTES)


def comparisons_for(cids: list[list[str]], data: dict, n: int) -> pa.Table:
    """COMPARISONS as the aggregation writes them: 4 votes per pair, from data's p_hat."""
    rows = []
    kinds = [(0, 1), (1, 2), (0, 2)]
    for i in range(n):
        for t, (a, b) in enumerate(kinds):
            p = data["p_hat"][3 * i + t]  # P(kind a ≻ kind b) (Jeffreys, 4 votes)
            n_a = round(p * 5 - 0.5)
            ca, cb = cids[i][a], cids[i][b]
            if ca > cb:
                ca, cb, n_a = cb, ca, 4 - n_a
            rows.append(
                dict(
                    prompt_id=f"q{i:03d}",
                    source_id="src",
                    candidate_a=ca,
                    candidate_b=cb,
                    n_votes=4,
                    n_a=float(n_a),
                    n_b=float(4 - n_a),
                    n_tie=0.0,
                    n_null=0,
                    p_a=n_a / 4,
                    label=None,
                )
            )
    return from_rows(rows, COMPARISONS, "comparisons")


def test_annotate_gpm_stage():
    n = 120
    data = make_cyclic_set(n, seed=7)
    cands, c_emb, p_emb, cids = rps_tables(data, n)
    extra = pa.table(
        {
            "prompt_id": ["q000", "lonely"],
            "source_id": ["src", "src"],
            "candidate_id": ["q000/no-embedding", "lonely/only"],
        }
    )
    cands = pa.concat_tables([cands, extra])
    c_emb = pa.concat_tables(
        [c_emb, emb_table(["lonely/only"], data["emb"][0, :1], "candidate_id")]
    )
    p_emb = pa.concat_tables([p_emb, emb_table(["lonely"], data["x"][:1], "prompt_id")])
    comps = comparisons_for(cids, data, n)
    res = annotate_gpm(comps, cands, c_emb, p_emb, GPMConfig(epochs=15, folds=2))
    c = res.counts
    assert c.rows_in == cands.num_rows == c.kept + sum(c.dropped.values())
    assert c.dropped == {NO_EMBEDDING: 1, "single_candidate": 1}
    check_table(res.dropped, DROPPED, "dropped")
    votes = check_table(res.outputs["votes"], VOTES, "votes")
    assert votes.num_rows == 3 * n
    assert set(votes.column("annotator").to_pylist()) == {"gpm"}
    assert res.info["folds"] == 2 and len(res.info["heads"]) == 2
    assert res.info["agreement_with_panel"] > 0.8  # out of fold
    cycles = check_table(res.outputs["cycles"], CYCLES, "cycles")
    assert set(cycles.column("origin").to_pylist()) <= {"panel", "gpm"}
    cyc = res.info["cyclic"]
    assert cyc["prompts_gpm"] >= 0.6 * n  # out of fold: all three pairs of a prompt right
    assert cyc["prompts"] == len(flag_cyclic_prompts(cycles).keys)


def test_annotate_gpm_without_training_data():
    data = make_cyclic_set(3, seed=1)
    cands, c_emb, p_emb, _ = rps_tables(data, 3)
    res = annotate_gpm(COMPARISONS.empty_table(), cands, c_emb, p_emb, FAST)
    assert res.outputs["votes"].num_rows == 0 and "skipped" in res.info
    assert res.counts.kept == 9


def test_comparisons_p_hat_matches_margins():
    comps = from_rows(
        [
            dict(
                prompt_id="p",
                source_id="s",
                candidate_a="x",
                candidate_b="y",
                n_votes=4,
                n_a=3.0,
                n_b=0.0,
                n_tie=1.0,
                n_null=0,
                p_a=0.875,
                label=None,
            ),
            dict(
                prompt_id="p",
                source_id="s",
                candidate_a="x",
                candidate_b="z",
                n_votes=0,
                n_a=0.0,
                n_b=0.0,
                n_tie=0.0,
                n_null=2,
                p_a=None,
                label=None,
            ),
        ],
        COMPARISONS,
        "comparisons",
    )
    p = comparisons_p_hat(comps, 0.5)
    row = oriented_row(comps.to_pylist()[0], True, MarginConfig(), {})
    assert p[0] == pytest.approx(row["p_hat"]) and math.isnan(p[1])


# ------------------------------------------------------------------------------ cycles


def cmp_table(rows: list[tuple], source: bool = True) -> pa.Table:
    cols = {
        "prompt_id": [r[0] for r in rows],
        "candidate_a": [r[1] for r in rows],
        "candidate_b": [r[2] for r in rows],
        "p_a": pa.array([r[3] for r in rows], pa.float64()),
    }
    if source:
        cols = {"source_id": ["s"] * len(rows), **cols}
    return pa.table(cols)


def triples(t: pa.Table) -> list[tuple]:
    return [
        (r["prompt_id"], r["candidate_1"], r["candidate_2"], r["candidate_3"])
        for r in t.to_pylist()
    ]


@pytest.mark.parametrize(
    "rows, expected",
    [
        # x≻y, y≻z, z≻x
        (
            [("p", "x", "y", 0.9), ("p", "y", "z", 0.8), ("p", "x", "z", 0.3)],
            [("p", "x", "y", "z")],
        ),
        # the other direction: y≻x, z≻y, x≻z → x ≻ z ≻ y ≻ x
        (
            [("p", "x", "y", 0.1), ("p", "y", "z", 0.2), ("p", "x", "z", 0.7)],
            [("p", "x", "z", "y")],
        ),
        # transitive: x≻y≻z, x≻z
        ([("p", "x", "y", 0.9), ("p", "y", "z", 0.8), ("p", "x", "z", 0.9)], []),
        # a tie within the band breaks the cycle
        ([("p", "x", "y", 0.9), ("p", "y", "z", 0.8), ("p", "x", "z", 0.52)], []),
        # exactly 0.5 + band is not enough
        ([("p", "x", "y", 0.9), ("p", "y", "z", 0.55), ("p", "x", "z", 0.1)], []),
        # a missing pair is no edge
        ([("p", "x", "y", 0.9), ("p", "y", "z", 0.8)], []),
        # a null probability is no edge
        ([("p", "x", "y", 0.9), ("p", "y", "z", 0.8), ("p", "x", "z", None)], []),
        # the three edges on different prompts do not make a cycle
        ([("p", "x", "y", 0.9), ("q", "y", "z", 0.8), ("r", "x", "z", 0.1)], []),
        # two prompts, four candidates on one: cycles x>y>z>x and x>y>w>x
        (
            [
                ("p", "x", "y", 0.9),
                ("p", "y", "z", 0.8),
                ("p", "x", "z", 0.2),
                ("p", "w", "x", 0.9),
                ("p", "w", "y", 0.1),
                ("p", "w", "z", 0.5),
                ("q", "a", "b", 0.9),
                ("q", "b", "c", 0.9),
                ("q", "a", "c", 0.1),
            ],
            [("p", "w", "x", "y"), ("p", "x", "y", "z"), ("q", "a", "b", "c")],
        ),
    ],
)
def test_find_cycles(rows, expected):
    t = find_cycles(cmp_table(rows), band=0.05)
    check_table(t, CYCLES, "cycles")
    assert sorted(triples(t)) == sorted(expected)


def test_find_cycles_probabilities_duplicates_and_no_source():
    rows = [("p", "x", "y", 0.9), ("p", "x", "y", 0.7), ("p", "y", "z", 0.8), ("p", "x", "z", 0.3)]
    t = find_cycles(cmp_table(rows, source=False), origin="gpm").to_pylist()
    assert len(t) == 1
    r = t[0]
    assert r["p_12"] == pytest.approx(0.8) and r["p_23"] == pytest.approx(0.8)
    assert r["p_31"] == pytest.approx(0.7) and r["origin"] == "gpm" and r["source_id"] is None
    assert find_cycles(cmp_table([])).num_rows == 0
    with pytest.raises(PrefcurateError, match="p_a"):
        find_cycles(pa.table({"prompt_id": ["p"], "candidate_a": ["x"], "candidate_b": ["y"]}))


def test_flag_cyclic_prompts_and_pairs():
    panel = find_cycles(
        cmp_table([("p", "x", "y", 0.9), ("p", "y", "z", 0.8), ("p", "x", "z", 0.3)]),
        origin="panel",
    )
    gpm = find_cycles(
        cmp_table(
            [
                ("p", "x", "y", 0.9),
                ("p", "y", "z", 0.8),
                ("p", "x", "z", 0.3),
                ("q", "a", "b", 0.9),
                ("q", "b", "c", 0.9),
                ("q", "a", "c", 0.1),
            ]
        ),
        origin="gpm",
    )
    cyc = flag_cyclic_prompts(pa.concat_tables([panel, gpm]))
    assert cyc.keys == [("s", "p"), ("s", "q")]
    assert cyc.counts == {
        "prompts": 2,
        "triples": 3,
        "prompts_gpm": 2,
        "prompts_panel": 1,
        "prompts_both": 1,
    }
    assert flag_cyclic_prompts(panel.slice(0, 0)).counts["prompts"] == 0
    assert flag_cyclic_prompts(pa.concat_tables([panel, gpm]), origins=["panel"]).keys == [
        ("s", "p")
    ]

    def pair(pid: str, flags: list[str]) -> dict:
        c = dict(
            prompt_id=pid,
            source_id="s",
            candidate_a="x",
            candidate_b="y",
            n_votes=2,
            n_a=2.0,
            n_b=0.0,
            n_tie=0.0,
            n_null=0,
            p_a=1.0,
            label=None,
        )
        return {**oriented_row(c, True, MarginConfig(), {}), "flags": flags}

    pairs = from_rows([pair("p", []), pair("p", [FLAG_CYCLIC]), pair("r", ["tie"])], PAIRS, "pairs")
    out = check_table(flag_cyclic_pairs(pairs, cyc), PAIRS, "pairs")
    assert out.column("flags").to_pylist() == [[FLAG_CYCLIC], [FLAG_CYCLIC], ["tie"]]
