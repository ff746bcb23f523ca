"""Pair-building strategies: all_pairs, curriculum, easy/hard split, reward-augmented twins."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.pairs import RA_TWIN, build_pairs, published_table
from schemas.config import PairsConfig
from schemas.tables import CANDIDATES, PAIRS, PROMPTS


def row(pid, ch, rj, sc, sr, margin=1.0, source="s"):
    return dict(
        pair_id=pid,
        prompt_id="p",
        source_id=source,
        chosen_id=ch,
        rejected_id=rj,
        p_hat=0.8,
        disagreement=0.4,
        n_votes=2,
        margin=margin,
        weight=0.8,
        label_status="agree",
        similarity=None,
        flags=[],
        decision="keep",
        reason=None,
        score_chosen=sc,
        score_rejected=sr,
        curriculum_stage=None,
        split=None,
    )


def table(*rows):
    return pa.Table.from_pylist(list(rows), schema=PAIRS)


def accounted(res):
    c = res.counts.to_dict()
    assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    return res


def test_all_pairs_min_margin():
    t = table(
        row("1", "x", "y", 0.9, 0.5, margin=0.2),
        row("2", "x", "z", 0.9, 0.1, 1.5),
        row("3", "y", "z", 0.5, 0.1, margin=None),
    )
    res = accounted(build_pairs(t, PairsConfig(strategy="all_pairs", min_margin=0.5)))
    assert res.outputs["pairs"].column("pair_id").to_pylist() == ["2"]
    assert res.counts.dropped == {"below_min_margin": 1, "null_score": 1}


def test_curriculum_orders_by_gap_and_shares_best():
    t = table(
        row("a", "best", "w1", 0.9, 0.6),
        row("b", "best", "w2", 0.9, 0.1),
        row("c", "best", "w3", 0.9, 0.4),
        row("d", "w1", "w2", 0.6, 0.1),
    )
    res = accounted(build_pairs(t, PairsConfig(strategy="curriculum", curriculum_stages=3)))
    out = res.outputs["pairs"].select(["pair_id", "curriculum_stage"]).to_pylist()
    assert out == [
        {"pair_id": "b", "curriculum_stage": 1},
        {"pair_id": "c", "curriculum_stage": 2},
        {"pair_id": "a", "curriculum_stage": 3},
    ]
    assert res.counts.dropped == {"not_selected": 1}


def test_easy_hard_split_by_margin_quantile():
    t = table(
        *[
            row(str(i), f"c{i}", f"r{i}", 0.9, 0.1, margin=float(i), source=f"s{i}")
            for i in range(4)
        ]
    )
    res = build_pairs(t, PairsConfig(strategy="all_pairs", split="easy_hard", hard_quantile=0.5))
    split = dict(
        zip(
            res.outputs["pairs"].column("pair_id").to_pylist(),
            res.outputs["pairs"].column("split").to_pylist(),
        )
    )
    assert split == {"0": "hard", "1": "hard", "2": "easy", "3": "easy"}


def test_reward_augmented_twins_are_reversed_and_conditioned():
    t = table(row("1", "x", "y", 0.9, 0.2))
    res = accounted(build_pairs(t, PairsConfig(reward_augmented=True)))
    out = res.outputs["pairs"].to_pylist()
    assert res.counts.kept == 1 and res.counts.rows_out == 2
    orig, twin = out
    assert (twin["chosen_id"], twin["rejected_id"]) == ("y", "x") and RA_TWIN in twin["flags"]
    prompts = pa.Table.from_pylist(
        [
            {
                "prompt_id": "p",
                "source_id": "s",
                "source": "t",
                "meta": None,
                "prompt": [{"role": "user", "content": "q"}],
            }
        ],
        schema=PROMPTS,
    )
    cands = pa.Table.from_pylist(
        [
            {
                "prompt_id": "p",
                "source_id": "s",
                "candidate_id": c,
                "policy": "pol",
                "sample_index": 0,
                "text": f"text {c}",
                "finish_reason": "stop",
                "n_prompt_tokens": 1,
                "n_output_tokens": 1,
                "request_hash": None,
                "truncated": False,
                "error": None,
            }
            for c in ("x", "y")
        ],
        schema=CANDIDATES,
    )
    pub = published_table(res.outputs["pairs"], prompts, cands).to_pylist()
    assert "0.90" in pub[0]["prompt"][0]["content"] and "0.20" in pub[1]["prompt"][0]["content"]
    assert pub[1]["chosen"][0]["content"] == "text y"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 4),
            st.integers(0, 4),
            st.one_of(st.none(), st.floats(0, 1)),
            st.one_of(st.none(), st.floats(0, 1)),
            st.floats(0, 4),
        ),
        max_size=12,
    ),
    st.sampled_from(["best_worst", "all_pairs", "curriculum"]),
)
def test_invariants(rows, strategy):
    t = table(
        *[
            row(f"p{i}", f"c{a}", f"c{b}" if b != a else f"d{b}", sc, sr, m, f"s{s}")
            for i, (s, a, b, sc, sr, m) in enumerate(rows)
        ]
    )
    res = accounted(build_pairs(t, PairsConfig(strategy=strategy, split="easy_hard")))
    out = res.outputs["pairs"].to_pylist()
    assert all(r["chosen_id"] != r["rejected_id"] for r in out)
    if strategy == "best_worst":
        assert len({r["source_id"] for r in out}) == len(out)  # at most one per source


def _published_by_rows(pairs, prompts, candidates):
    """The published rows built one by one in Python (the reference for the column
    joins of ``published_table``)."""
    import math

    from pipeline.conversation import histories, side, tools
    from pipeline.pairs import _conditioned

    prompt_of = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()))
    tools_of = dict(zip(prompts["prompt_id"].to_pylist(), map(tools, prompts["meta"].to_pylist())))
    cand = {
        r["candidate_id"]: {**r, "side": side(h, r["text"])}
        for r, h in zip(
            candidates.select(["candidate_id", "text", "policy"]).to_pylist(), histories(candidates)
        )
    }
    rows = []
    for p in pairs.to_pylist():
        ch, rj = cand[p["chosen_id"]], cand[p["rejected_id"]]
        m = p["margin"]
        rows.append(
            {
                **{k: p[k] for k in ("weight", "p_hat", "disagreement", "n_votes")},
                **{k: p[k] for k in ("score_chosen", "score_rejected", "source_id", "prompt_id")},
                **{k: p[k] for k in ("pair_id", "chosen_id", "rejected_id", "label_status")},
                **{k: p[k] for k in ("decision", "flags", "curriculum_stage", "split")},
                "prompt": _conditioned(prompt_of[p["prompt_id"]], p["flags"]),
                "chosen": ch["side"],
                "rejected": rj["side"],
                "margin": 0.0 if m is None or math.isnan(m) else m,
                "chosen_policy": ch["policy"],
                "rejected_policy": rj["policy"],
                "flipped": p["decision"] == "flip",
                "tools": tools_of[p["prompt_id"]],
            }
        )
    return rows


def test_published_table_by_columns_matches_the_rows_built_one_by_one():
    """Multi-turn histories, tools in meta, reward-augmented targets, NaN and null
    margins, flips: the column joins give the rows the one-by-one build gives."""
    import json
    import random

    from pipeline.pairs import RA_TARGET, published_table
    from schemas.tables import CANDIDATES, PAIRS, PROMPTS, from_rows

    rng = random.Random(2)
    prompts = [
        {
            "prompt_id": f"p{i}",
            "source_id": f"s{i}",
            "prompt": ([{"role": "system", "content": "sys"}] if i % 3 == 0 else [])
            + [{"role": "user", "content": f"q{i}"}],
            "source": "t",
            "meta": json.dumps({"tools": [{"type": "function", "function": {"name": "f"}}]})
            if i % 4 == 0
            else (json.dumps({"lang": "en"}) if i % 4 == 1 else None),
        }
        for i in range(12)
    ]
    cands = []
    for i in range(12):
        for k in range(3):
            hist = (
                [{"role": "assistant", "content": f"a{k}"}, {"role": "user", "content": "more"}]
                if i % 5 == 0
                else None
            )
            cands.append(
                {
                    "prompt_id": f"p{i}",
                    "source_id": f"s{i}",
                    "candidate_id": f"c{i}_{k}",
                    "policy": f"pol{k}",
                    "sample_index": 0,
                    "text": None if (i, k) == (3, 1) else f"text {i} {k}",
                    "truncated": False,
                    "history": hist,
                }
            )
    pairs = []
    for n in range(40):
        i = rng.randrange(12)
        a, b = rng.sample(range(3), 2)
        flags = rng.choice([[], ["low_margin"], [f"{RA_TARGET}0.75"], ["x", f"{RA_TARGET}0.2"]])
        pairs.append(
            {
                "pair_id": f"pair{n}",
                "prompt_id": f"p{i}",
                "source_id": f"s{i}",
                "chosen_id": f"c{i}_{a}",
                "rejected_id": f"c{i}_{b}",
                "p_hat": rng.random(),
                "disagreement": rng.random(),
                "n_votes": rng.randint(1, 9),
                "margin": rng.choice([None, float("nan"), rng.random()]),
                "weight": rng.random(),
                "label_status": "agree",
                "flags": flags,
                "decision": rng.choice(["keep", "flip"]),
                "score_chosen": rng.choice([None, 0.5]),
                "score_rejected": None,
                "curriculum_stage": rng.choice([None, 1]),
                "split": rng.choice([None, "train"]),
            }
        )
    tables = (
        from_rows(pairs, PAIRS, "pairs"),
        from_rows(prompts, PROMPTS, "prompts"),
        from_rows(cands, CANDIDATES, "candidates"),
    )
    got = published_table(*tables).to_pylist()
    want = _published_by_rows(*tables)
    assert got == [{k: w[k] for k in g} for g, w in zip(got, want)] and len(got) == len(want)
