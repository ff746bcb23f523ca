"""The report's by-column parts (issue 19) against the row-by-row code they replaced, on
random tables: response lengths (Length section), the examples per reason, the flipped
pairs and the lineage texts (Examples section)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from pipeline import conversation
from pipeline.report import examples, length
from pipeline.report.common import length_bias, length_bias_of

MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
ROLES = ["assistant", "user", "system", "tool", None]
TEXTS = ["", "a", "héllo wörld", "多语言", "x\ny", "  ", "emoji 🎉 here", None]


def _messages(rng: random.Random):
    if rng.random() < 0.05:
        return None
    return [
        {"role": rng.choice(ROLES), "content": rng.choice(TEXTS)} for _ in range(rng.randint(0, 4))
    ]


@pytest.mark.parametrize("seed", range(5))
def test_response_lengths_match_the_row_code(seed):
    rng = random.Random(seed)
    col = [_messages(rng) for _ in range(400)]
    data = pa.table({"chosen": pa.array(col, MSG)})
    want = [len(conversation.contents(m, ("assistant",)) or conversation.contents(m)) for m in col]
    assert length._response_lengths(data, "chosen").tolist() == want
    plain = pa.table({"chosen": pa.array([rng.choice(TEXTS) for _ in range(50)])})
    got = length._response_lengths(plain, "chosen").tolist()
    assert got == [len(t or "") for t in plain.column(0).to_pylist()]


def test_length_bias_of_lengths_equals_length_bias_of_texts():
    rng = random.Random(3)
    pairs = [(rng.choice(TEXTS) or "", rng.choice(TEXTS) or "") for _ in range(300)]
    lc = np.array([len(c) for c, _ in pairs])
    lr = np.array([len(r) for _, r in pairs])
    assert length_bias_of(lc, lr) == length_bias(pairs)
    assert length_bias_of(np.array([], int), np.array([], int)) == length_bias([])


def _by_reason_reference(table: pa.Table, k: int) -> list[dict]:
    seen: Counter = Counter()
    idx = []
    stage = table.column("stage").to_pylist()
    reason = table.column("reason").to_pylist()
    for i, key in enumerate(zip(stage, reason)):
        if seen[key] < k:
            seen[key] += 1
            idx.append(i)
    return table.take(idx).to_pylist() if idx else []


@pytest.mark.parametrize("seed", range(4))
def test_examples_by_reason_match_the_row_code(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 500)
    t = pa.table(
        {
            "stage": [rng.choice(["denoise", "pairs", None]) for _ in range(n)],
            "reason": [rng.choice(["low_confidence", "tie", "limit", None]) for _ in range(n)],
            "row_id": [f"r{i}" for i in range(n)],
        },
        schema=pa.schema(
            [("stage", pa.string()), ("reason", pa.string()), ("row_id", pa.string())]
        ),
    )
    for k in (1, 3):
        assert examples._by_reason(t, k) == _by_reason_reference(t, k)
    assert examples._by_reason(t.drop_columns(["reason"]), 3) == []


def test_flipped_pairs_match_the_row_code():
    rng = random.Random(5)
    n = 300
    decision = [rng.choice(["keep", "flip", None]) for _ in range(n)]
    flipped = [rng.choice([True, False, None]) for _ in range(n)]
    data = pa.table(
        {
            "decision": pa.array(decision, pa.string()),
            "flipped": pa.array(flipped, pa.bool_()),
            "source_id": [str(i) for i in range(n)],
        }
    )
    want = [i for i in range(n) if decision[i] == "flip" or bool(flipped[i])]
    got, total = examples._flipped(data, 1000)
    assert total == len(want) and [int(r["source_id"]) for r in got] == want
    assert examples._flipped(data.drop_columns(["flipped"]), 2)[1] == decision.count("flip")


class _Lineage:
    """Stand-in for the report's Lineage: named tables per stage, in stage order."""

    def __init__(self, tables: dict[str, list[pa.Table]]):
        self._t = tables

    def tables(self, name, columns=None):
        return [
            t.select([c for c in columns if c in t.column_names]) for t in self._t.get(name, [])
        ]


def test_lineage_texts_are_those_of_the_whole_tables():
    rng = random.Random(9)
    prompts = pa.table(
        {
            "prompt_id": [f"p{i}" for i in range(50)],
            "prompt": pa.array([[{"role": "user", "content": f"q{i}"}] for i in range(50)], MSG),
        }
    )
    cand = lambda lo, hi, tag: pa.table(  # noqa: E731
        {
            "candidate_id": [f"c{i}" for i in range(lo, hi)],
            "prompt_id": [f"p{i % 50}" for i in range(lo, hi)],
            "text": [f"{tag} {i}" for i in range(lo, hi)],
        }
    )
    pairs = lambda seed: pa.table(  # noqa: E731
        {
            "pair_id": [f"x{rng.randint(0, 80)}" for _ in range(60)],
            "prompt_id": [f"p{rng.randint(0, 60)}" for _ in range(60)],
            "chosen_id": [f"c{rng.randint(0, 200)}" for _ in range(60)],
            "rejected_id": [f"c{rng.randint(0, 200)}" for _ in range(60)],
        }
    )
    lin = _Lineage(
        {
            "prompts": [prompts],
            "candidates": [cand(0, 150, "gen"), cand(100, 180, "re")],
            "pairs": [pairs(1), pairs(2)],
        }
    )
    ids = {f"x{i}" for i in range(0, 80, 3)} | {f"c{i}" for i in range(0, 190, 7)} | {"nope"}
    got = examples._LineageTexts.read(lin, ids)
    # the reference: every table whole, as before
    cand_text, cand_prompt, prompt_text, pair_ids = {}, {}, {}, {}
    for t in lin.tables("candidates", ["candidate_id", "prompt_id", "text"]):
        for r in t.to_pylist():
            cand_text[r["candidate_id"]] = r["text"]
            cand_prompt[r["candidate_id"]] = r["prompt_id"]
    for r in prompts.to_pylist():
        prompt_text[r["prompt_id"]] = conversation.render(r["prompt"])
    for t in lin.tables("pairs", ["pair_id", "prompt_id", "chosen_id", "rejected_id"]):
        for r in t.to_pylist():
            pair_ids.setdefault(r["pair_id"], (r["prompt_id"], r["chosen_id"], r["rejected_id"]))
    assert got.any_candidates
    for rid in sorted(ids):
        row = {"row_id": rid, "stage": "s", "reason": "r"}
        full = examples._LineageTexts(cand_text, cand_prompt, prompt_text, pair_ids)
        assert examples._dropped_example(row, got) == examples._dropped_example(row, full), rid
