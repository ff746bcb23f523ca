"""Tests for active judging: :func:`pipeline.gpm.annotate.select_uncertain_pairs` picks round 2's
pairs where a GPM head trained on round 1 is least certain."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.gpm.annotate import select_uncertain_pairs
from pipeline.gpm.model import STAGE
from pipeline.hashing import stable_hash
from pipeline.stage import Reason, dropped_table
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError
from schemas.tables import COMPARISONS, DROPPED, check_table, embedding_schema, from_rows

CFG = GPMConfig(epochs=15, seed=0)
K = 5  # candidates per prompt: 10 pairs


def emb_table(ids: list[str], mat: np.ndarray, col: str) -> pa.Table:
    flat = pa.array(np.asarray(mat, np.float32).reshape(-1), pa.float32())
    return check_table(
        pa.table(
            {
                col: pa.array(ids, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]),
            }
        ),
        embedding_schema(col, mat.shape[1]),
        col,
    )


def comparison(pid: str, a: str, b: str, n_a: int, n: int = 4, sid: str = "src") -> dict:
    """A COMPARISONS row for (a, b), canonical order, n votes of which n_a for a."""
    if a > b:
        a, b, n_a = b, a, n - n_a
    return dict(
        prompt_id=pid,
        source_id=sid,
        candidate_a=a,
        candidate_b=b,
        n_votes=n,
        n_a=float(n_a),
        n_b=float(n - n_a),
        n_tie=0.0,
        n_null=0,
        p_a=n_a / n if n else None,
        label=None,
    )


def quality_world(n: int, seed: int, seed_pairs: int = 3, dim: int = 16) -> dict:
    """Prompts of K candidates with latent quality q; embedding = q·u + noise (plus some
    of the prompt's topic). Round 1: ``seed_pairs`` random pairs per prompt, 4 votes
    each, a vote for a with probability σ(3·(q_a − q_b))."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    x = rng.normal(size=(n, dim))
    q = rng.normal(size=(n, K))
    emb = 2.0 * q[:, :, None] * u + 0.5 * x[:, None, :] + 0.5 * rng.normal(size=(n, K, dim))
    pids = [f"q{i:04d}" for i in range(n)]
    # candidate ids deliberately not in quality order
    cids = [[f"{p}/{c}" for c in rng.permutation(list("vwxyz"))] for p in pids]
    quality = {c: q[i, j] for i, row in enumerate(cids) for j, c in enumerate(row)}
    all_pairs = list(itertools.combinations(range(K), 2))
    rows = []
    for i, p in enumerate(pids):
        for t in rng.permutation(len(all_pairs))[:seed_pairs]:
            a, b = all_pairs[t]
            n_a = int(rng.binomial(4, 1 / (1 + np.exp(-3 * (q[i, a] - q[i, b])))))
            rows.append(comparison(p, cids[i][a], cids[i][b], n_a))
    cands = pa.table(
        {
            "prompt_id": [p for p in pids for _ in range(K)],
            "source_id": ["src"] * (K * n),
            "candidate_id": [c for row in cids for c in row],
        }
    )
    return {
        "cands": cands,
        "quality": quality,
        "pids": pids,
        "cids": cids,
        "comps": from_rows(rows, COMPARISONS, "comparisons"),
        "c_emb": emb_table(
            [c for row in cids for c in row], emb.reshape(K * n, dim), "candidate_id"
        ),
        "p_emb": emb_table(pids, x, "prompt_id"),
    }


def canonical_pairs(cands: pa.Table) -> set[tuple[str, str, str, str]]:
    by: dict[tuple[str, str], set[str]] = {}
    for r in cands.to_pylist():
        by.setdefault((r["prompt_id"], r["source_id"]), set()).add(r["candidate_id"])
    return {
        (p, s, a, b) for (p, s), cs in by.items() for a, b in itertools.combinations(sorted(cs), 2)
    }


def judged_pairs(comps: pa.Table) -> set[tuple[str, str, str, str]]:
    return {
        (r["prompt_id"], r["source_id"], *sorted((r["candidate_a"], r["candidate_b"])))
        for r in comps.to_pylist()
    }


def drop_key(d: dict, pid_of: dict[str, str]) -> tuple[str, str, str, str]:
    a, b = d["row_id"].split("|")
    return (pid_of[a], d["source_id"], a, b)


def check_accounting(world: dict, pairs: list, drops: list, info: dict) -> None:
    """Selected + dropped = unjudged, disjoint; judged pairs neither; drop rows valid."""
    pid_of = dict(
        zip(
            world["cands"].column("candidate_id").to_pylist(),
            world["cands"].column("prompt_id").to_pylist(),
        )
    )
    unjudged = canonical_pairs(world["cands"]) - judged_pairs(world["comps"])
    sel, dropped = set(pairs), {drop_key(d, pid_of) for d in drops}
    assert len(sel) == len(pairs) and len(dropped) == len(drops)  # no duplicates
    assert not sel & dropped
    assert sel | dropped == unjudged
    assert info["unjudged"] == len(unjudged) == info["selected"] + info["skipped"]
    assert all(a < b for _, _, a, b in pairs)
    check_table(dropped_table(STAGE, drops), DROPPED, "dropped")


@pytest.fixture(scope="module")
def world() -> dict:
    return quality_world(150, seed=0)


@pytest.fixture(scope="module")
def selection(world) -> tuple[list, list, dict]:
    return select_uncertain_pairs(
        world["comps"], world["cands"], world["c_emb"], world["p_emb"], CFG, per_prompt=2
    )


def test_selection_excludes_judged_pairs_and_accounts_for_every_pair(world, selection):
    pairs, drops, info = selection
    assert not set(pairs) & judged_pairs(world["comps"])
    check_accounting(world, pairs, drops, info)
    assert info["fallback"] is None and info["training_pairs"] == 3 * 150
    assert info["already_judged"] == 3 * 150 and info["pairs"] == 10 * 150
    assert info["pairs_scored"] == 7 * 150 and info["unscored_pairs"] == 0
    assert {d["reason"] for d in drops} == {Reason.FIRST_SIGNAL}
    assert all(
        d["detail"].startswith("gpm P(a≻b)=") and d["detail"].endswith(": confident, not judged")
        for d in drops
    )
    assert info["train_loss"] is not None and info["train_seconds"] >= 0


def test_per_prompt_is_respected(world, selection):
    pairs, _, info = selection
    per = {}
    for pid, *_ in pairs:
        per[pid] = per.get(pid, 0) + 1
    assert set(per) == set(world["pids"]) and set(per.values()) == {2}
    assert info["selected"] == 2 * 150 and info["skipped"] == 5 * 150


def test_selected_pairs_are_the_hard_ones(world, selection):
    pairs, drops, info = selection
    q = world["quality"]
    gap_sel = np.mean([abs(q[a] - q[b]) for _, _, a, b in pairs])
    gap_skip = np.mean([abs(q[a] - q[b]) for a, b in (d["row_id"].split("|") for d in drops)])
    # random pairs of N(0, 1) qualities: E|Δq| ≈ 1.13; the GPM's least certain are close
    assert gap_sel < 0.6 * gap_skip, (gap_sel, gap_skip)
    assert info["mean_certainty_selected"] < info["mean_certainty_skipped"]
    # the dropped rows' P agrees with the truth far more often than chance
    right = []
    for d in drops:
        a, b = d["row_id"].split("|")
        p = float(d["detail"].split("=")[1].split(":")[0])
        right.append((p > 0.5) == (q[a] > q[b]))
    assert np.mean(right) > 0.85


def test_ties_in_certainty_break_by_stable_hash():
    # identical embeddings: every pair scores P = ½ exactly, so the hash alone orders them
    cands = pa.table(
        {
            "prompt_id": ["p"] * 4 + ["r"] * 2,
            "source_id": ["s"] * 6,
            "candidate_id": ["a", "b", "c", "d", "e", "f"],
        }
    )
    c_emb = emb_table(list("abcdef"), np.ones((6, 3)), "candidate_id")
    reversed_cd = {
        **comparison("p", "c", "d", 2, sid="s"),
        "candidate_a": "d",
        "candidate_b": "c",
    }  # judged, written in the other orientation
    comps = from_rows(
        [comparison("r", "e", "f", 3, sid="s"), comparison("r", "e", "f", 1, sid="s"), reversed_cd],
        COMPARISONS,
        "comparisons",
    )
    pairs, drops, info = select_uncertain_pairs(
        comps, cands, c_emb, None, GPMConfig(epochs=1), per_prompt=2
    )
    assert info["fallback"] is None and info["mean_certainty_selected"] == 0.0
    assert info["already_judged"] == 2 and info["unjudged"] == 5
    by_hash = sorted(
        (p for p in itertools.combinations("abcd", 2) if p != ("c", "d")),
        key=lambda p: stable_hash("p", *p),
    )
    assert pairs == [("p", "s", a, b) for a, b in by_hash[:2]]
    assert {d["row_id"] for d in drops} == {f"{a}|{b}" for a, b in by_hash[2:]}


def test_deterministic_across_calls():
    w = quality_world(40, seed=3)
    cfg = GPMConfig(epochs=5, seed=1)
    one = select_uncertain_pairs(w["comps"], w["cands"], w["c_emb"], None, cfg, per_prompt=3)
    two = select_uncertain_pairs(w["comps"], w["cands"], w["c_emb"], None, cfg, per_prompt=3)
    assert one[0] == two[0] and one[1] == two[1]
    assert one[2]["train_loss"] == two[2]["train_loss"]
    check_accounting(w, *one)


@pytest.mark.parametrize(
    "rows",
    [
        [],  # nothing judged yet
        [comparison("q0000", "q0000/v", "q0000/w", 3)],  # one comparison: too little
        [
            comparison("q0000", "q0000/v", "q0000/w", 0, n=0),  # no valid vote: p_a null
            comparison("q0001", "q0001/v", "q0001/w", 0, n=0),
        ],
    ],
)
def test_fallback_takes_stable_hash_order(rows):
    w = quality_world(4, seed=1, seed_pairs=0)
    w["comps"] = from_rows(rows, COMPARISONS, "comparisons")
    pairs, drops, info = select_uncertain_pairs(
        w["comps"], w["cands"], w["c_emb"], w["p_emb"], CFG, per_prompt=2
    )
    assert info["fallback"] and "no GPM head" in info["fallback"]
    assert info["pairs_scored"] == 0 and info["mean_certainty_selected"] is None
    check_accounting(w, pairs, drops, info)
    judged = judged_pairs(w["comps"])
    for pid, row in zip(w["pids"], w["cids"]):
        todo = [p for p in itertools.combinations(sorted(row), 2) if (pid, "src", *p) not in judged]
        want = sorted(todo, key=lambda p: stable_hash(pid, *p))[:2]
        assert [(a, b) for p, _, a, b in pairs if p == pid] == want
    assert {d["reason"] for d in drops} == {Reason.OVER_BUDGET}


def test_missing_embeddings_are_judged_not_lost(world):
    w = dict(world)
    n = 30
    keep = world["cands"].slice(0, K * n)
    no_cand = world["cids"][0][0]  # one candidate of prompt 0 has no embedding
    no_prompt = world["pids"][1]  # prompt 1 has no prompt embedding
    ids = [c for c in keep.column("candidate_id").to_pylist() if c != no_cand]
    rows = {c: i for i, c in enumerate(world["c_emb"].column("candidate_id").to_pylist())}
    w["cands"] = keep
    w["c_emb"] = world["c_emb"].take([rows[c] for c in ids])
    w["p_emb"] = world["p_emb"].filter(
        pc.is_in(world["p_emb"].column("prompt_id"), pa.array(world["pids"][:n]))
    )
    w["p_emb"] = w["p_emb"].filter(pc.not_equal(w["p_emb"].column("prompt_id"), no_prompt))
    w["comps"] = world["comps"].filter(
        pc.is_in(world["comps"].column("prompt_id"), pa.array(world["pids"][:n]))
    )
    pairs, drops, info = select_uncertain_pairs(
        w["comps"], w["cands"], w["c_emb"], w["p_emb"], CFG, per_prompt=2
    )
    check_accounting(w, pairs, drops, info)
    assert info["unscored_candidates"] == 1 + K  # one candidate, and prompt 1's five
    judged = judged_pairs(w["comps"])
    unscorable = {
        p for p in canonical_pairs(w["cands"]) - judged if p[0] == no_prompt or no_cand in p[2:]
    }
    assert unscorable <= set(pairs)  # judged, on top of per_prompt
    assert info["unscored_pairs"] == len(unscorable)
    per = {}
    for p in set(pairs) - unscorable:
        per[p[0]] = per.get(p[0], 0) + 1
    assert per[world["pids"][0]] <= 2 and no_prompt not in per
    assert all(v == 2 for k, v in per.items() if k != world["pids"][0])
    assert info["selected"] == len(unscorable) + sum(per.values())


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=0, max_size=5),
    judged=st.lists(st.integers(0, 2**16), max_size=6),
    per_prompt=st.integers(0, 4),
)
@example(sizes=[], judged=[], per_prompt=0)
def test_fallback_accounting_property(sizes, judged, per_prompt):
    """Whatever the groups, judged pairs and cap: selected + dropped = unjudged, and each
    group gets min(per_prompt, its unjudged pairs)."""
    cids = [[f"p{g}/{j}" for j in range(n)] for g, n in enumerate(sizes)]
    cands = pa.table(
        {
            "prompt_id": pa.array(
                [f"p{g}" for g, row in enumerate(cids) for _ in row], pa.string()
            ),
            "source_id": pa.array(["s"] * sum(sizes), pa.string()),
            "candidate_id": pa.array([c for row in cids for c in row], pa.string()),
        }
    )
    allp = sorted(canonical_pairs(cands))
    rows = (
        [
            comparison(p, a, b, 1, sid=s)
            for p, s, a, b in {allp[h % len(allp)] for h in judged}
            if allp
        ]
        if allp
        else []
    )
    w = {"cands": cands, "comps": from_rows(rows[:1], COMPARISONS, "comparisons")}
    c_emb = pa.table(
        {
            "candidate_id": pa.array([], pa.string()),
            "embedding": pa.array([], pa.list_(pa.float32(), 2)),
        }
    )
    pairs, drops, info = select_uncertain_pairs(
        w["comps"], cands, c_emb, None, CFG, per_prompt=per_prompt
    )
    # no embeddings at all: nothing can be ranked, so every unjudged pair is judged
    check_accounting(w, pairs, drops, info)
    assert info["unscored_pairs"] == len(pairs) and not drops
    w["comps"] = from_rows(rows, COMPARISONS, "comparisons")
    emb = emb_table([c for row in cids for c in row], np.ones((sum(sizes), 2)), "candidate_id")
    pairs, drops, info = select_uncertain_pairs(
        w["comps"], cands, emb, None, CFG, per_prompt=per_prompt
    )
    check_accounting(w, pairs, drops, info)
    todo = canonical_pairs(cands) - judged_pairs(w["comps"])
    for g in range(len(sizes)):
        n_todo = sum(p[0] == f"p{g}" for p in todo)
        assert sum(p[0] == f"p{g}" for p in pairs) == min(per_prompt, n_todo)
    assert info["prompts_with_single_candidate"] == sum(n < 2 for n in sizes)


def test_negative_per_prompt_is_an_error(world):
    with pytest.raises(PrefcurateError, match="per_prompt"):
        select_uncertain_pairs(world["comps"], world["cands"], world["c_emb"], None, CFG, -1)
