"""Reward models on tiny locally built Llama classifiers: transformers and vLLM pooling.

The vLLM comparison starts one engine (the num_labels=1 model). The same comparison for
the 3-head model needs a second engine start and only runs with
``PREFCURATE_EXTRA_ENGINE_TESTS=1``.
"""

from __future__ import annotations

import functools
import json
import os

import pyarrow as pa
import pytest
from tiny_models import build_tiny_reward_model

from pipeline.annotate.rewards import (
    HFRewardScorer,
    RewardInput,
    RewardModelSpec,
    aspect_names,
    build_reward_inputs,
    encode_conversation,
    make_reward_scores,
    model_heads,
    run_rewards,
    score_with_reward_model,
)
from pipeline.engines.base import RequestCache
from pipeline.stage import Reason
from schemas.errors import ConfigError, EngineError
from schemas.tables import CANDIDATES, PROMPTS, SCORES, check_table, from_rows

TOL = 1e-4

PROMPTS_ = [
    [{"role": "user", "content": "What is two plus two?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a short poem about the sea."},
    ],
]
RESPONSES = [
    ("p0", "Four."),
    ("p0", "Two plus two equals five, I think."),
    ("p1", "The sea and the wind, the quick brown fox jumps over the lazy dog."),
    ("p1", "Sorry, I cannot help with that request."),
]


def _prompts() -> pa.Table:
    return from_rows(
        [
            {"prompt_id": f"p{i}", "source_id": "s", "prompt": m, "source": "t", "meta": None}
            for i, m in enumerate(PROMPTS_)
        ],
        PROMPTS,
        "prompts",
    )


def _candidates(extra: list[tuple[str, str | None]] = ()) -> pa.Table:
    return from_rows(
        [
            {
                "prompt_id": p,
                "source_id": "s",
                "candidate_id": f"c{i}",
                "policy": "pol",
                "sample_index": i,
                "text": t,
                "finish_reason": "stop",
                "n_prompt_tokens": 3,
                "n_output_tokens": 3,
                "request_hash": None,
                "truncated": False,
                "error": None,
            }
            for i, (p, t) in enumerate(list(RESPONSES) + list(extra))
        ],
        CANDIDATES,
        "candidates",
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-rm")
    return {
        1: str(build_tiny_reward_model(root / "rm1", num_labels=1)),
        3: str(build_tiny_reward_model(root / "rm3", num_labels=3)),
    }


@functools.lru_cache(maxsize=2)
def _load(path: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()


def _reference_logits(path: str, ids: list[int]) -> list[float]:
    """Logits at the last token of one unpadded sequence (backbone + score head)."""
    import torch

    m = _load(path)
    with torch.inference_mode():
        h = m.model(input_ids=torch.tensor([ids])).last_hidden_state
        return [float(x) for x in m.score(h)[0, -1]]


# --------------------------------------------------------------------------- pure parts


def test_aspect_names():
    assert aspect_names(1, {0: "LABEL_0"}) == ["reward"]
    assert aspect_names(3, None) == ["head_0", "head_1", "head_2"]
    assert aspect_names(2, {0: "Helpfulness", 1: "Correctness"}) == ["helpfulness", "correctness"]
    assert aspect_names(2, {0: "x", 1: "X"}) == ["head_0", "head_1"]  # not unique
    assert aspect_names(2, None, ["h", "v"]) == ["h", "v"]
    with pytest.raises(ConfigError, match="2 head"):
        aspect_names(2, None, ["only_one"])


def test_encode_uses_chat_template_and_inputs(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    ids = encode_conversation(tok, PROMPTS_[0], "Four.")
    text = tok.decode(ids)
    assert text.startswith("<|bos|><|user|>What is two plus two?<|end|><|assistant|>Four.")
    assert text.endswith("<|end|>")
    inputs, drops = build_reward_inputs(
        _candidates([("p0", None), ("p0", " ")]), _prompts(), tok, max_len=30
    )
    assert [d["reason"] for d in drops] == [Reason.EMPTY_OUTPUT] * 2
    assert len(inputs) == 4
    too_long = [x for x in inputs if x.error]
    assert too_long and all(x.error.startswith("prompt_too_long") for x in too_long)
    assert all(len(x.token_ids) >= 30 for x in too_long)


def test_encode_without_chat_template(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    tok.chat_template = None
    ids = encode_conversation(tok, PROMPTS_[0], "Four.")
    assert tok.decode(ids) == "user: What is two plus two?\nassistant: Four."


def test_make_reward_scores_multi_head_and_mismatch():
    inputs = [
        RewardInput("c1", "s", (1, 2)),
        RewardInput("c2", "s", (3,)),
        RewardInput("c3", "s", (4,), error="prompt_too_long: 9 tokens > max 8"),
    ]
    res = make_reward_scores(
        inputs,
        [[0.5, -1.0], [1.0], None],
        [None, None, "prompt_too_long: 9 tokens > max 8"],
        annotator="rm",
        aspects=["helpfulness", "verbosity"],
        drops=[{"source_id": "s", "row_id": "c4", "reason": Reason.EMPTY_OUTPUT, "detail": "x"}],
    )
    rows = check_table(res.outputs["scores"], SCORES, "scores").to_pylist()
    assert [(r["candidate_id"], r["aspect"], r["score"]) for r in rows] == [
        ("c1", "helpfulness", 0.5),
        ("c1", "verbosity", -1.0),
        ("c2", "helpfulness", None),
        ("c2", "verbosity", None),
        ("c3", "helpfulness", None),
        ("c3", "verbosity", None),
    ]
    assert "1 logit(s) for 2 aspect(s)" in rows[2]["parse_error"]
    assert rows[4]["parse_error"].startswith("prompt_too_long")
    assert json.loads(rows[0]["raw_output"]) == [0.5, -1.0]
    assert res.counts.to_dict() == {
        "in": 4,
        "kept": 3,
        "dropped": {"empty_output": 1},
        "quarantined": {},
        "out": 6,
    }
    assert res.info["too_long"] == 1 and res.info["null_scores"] == 2


def test_failed_reward_calls_are_quarantined_and_keep_the_stage_incomplete():
    from flows.runtime import calls_complete as _no_failed_calls

    inputs = [
        RewardInput("c1", "s1", (1,)),
        RewardInput("c2", "s2", (2,)),
        RewardInput("c3", "s3", (3,)),
    ]
    res = make_reward_scores(
        inputs,
        [[0.5], None, [1.0, 2.0]],
        [None, "request failed: RuntimeError: out of memory", None],
        annotator="rm",
        aspects=["reward"],
    )
    q = res.quarantine.to_pylist()
    assert [(r["source_id"], r["reason"]) for r in q] == [("s2", "request_failed")]
    assert "c2" in q[0]["detail"] and "out of memory" in q[0]["detail"]
    # the wrong-width output is a null score but not a failed call: kept
    assert res.counts.to_dict() == {
        "in": 3,
        "kept": 2,
        "dropped": {},
        "quarantined": {"request_failed": 1},
        "out": 3,
    }
    assert not _no_failed_calls(res)
    ok = make_reward_scores(inputs[:1], [[0.5]], [None], annotator="rm", aspects=["reward"])
    assert _no_failed_calls(ok) and ok.quarantine.num_rows == 0


class _Scorer:
    kind, model = "fake", "fake-rm"

    def __init__(self, fail: bool = False, poison: int | None = None):
        self.calls, self.fail, self.poison = 0, fail, poison

    def score(self, token_ids):
        self.calls += len(token_ids)
        if self.fail or any(self.poison in ids for ids in token_ids):
            raise RuntimeError("out of memory")
        return [[float(sum(ids)), float(len(ids))] for ids in token_ids]


def test_run_rewards_cache_and_failures(tmp_path):
    inputs = [
        RewardInput("c1", "s", (1, 2)),
        RewardInput("c2", "s", (5,)),
        RewardInput("c3", "s", (7,), error="prompt_too_long: x"),
    ]
    cache = RequestCache(tmp_path / "c.sqlite")
    bad = _Scorer(fail=True)
    logits, errors, stats = run_rewards(
        inputs, engine_kind="fake", model="m", get_scorer=lambda: bad, cache=cache
    )
    assert logits == [None, None, None] and stats["failed"] == 2
    assert errors[0].startswith("request failed: RuntimeError") and len(cache) == 0
    good = _Scorer()
    logits, errors, stats = run_rewards(
        inputs, engine_kind="fake", model="m", get_scorer=lambda: good, cache=cache, chunk_size=1
    )
    assert logits == [[3.0, 2.0], [5.0, 1.0], None] and errors[:2] == [None, None]
    assert good.calls == 2 and stats["made"] == 2 and len(cache) == 2

    def no_engine():
        raise AssertionError("a fully cached rerun must not build the scorer")

    logits2, _, stats2 = run_rewards(
        inputs, engine_kind="fake", model="m", get_scorer=no_engine, cache=cache
    )
    assert logits2 == logits and stats2["reused"] == 2

    # one bad input in a chunk fails alone; the others are scored and cached
    poisoned = [
        RewardInput("d1", "s", (1, 1)),
        RewardInput("d2", "s", (66,)),
        RewardInput("d3", "s", (2, 2)),
    ]
    logits3, errors3, stats3 = run_rewards(
        poisoned, engine_kind="fake", model="m", get_scorer=lambda: _Scorer(poison=66), cache=cache
    )
    assert logits3 == [[2.0, 2.0], None, [4.0, 2.0]] and stats3["failed"] == 1
    assert errors3[1].startswith("request failed") and len(cache) == 4

    def broken():
        raise EngineError("cannot start")

    with pytest.raises(EngineError):
        run_rewards(inputs[:1], engine_kind="fake", model="other", get_scorer=broken)


# --------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("num_labels", [1, 3])
def test_hf_batched_matches_unpadded_reference(tiny, num_labels):
    from transformers import AutoTokenizer

    path = tiny[num_labels]
    tok = AutoTokenizer.from_pretrained(path)
    seqs = [encode_conversation(tok, PROMPTS_[int(p[1])], t) for p, t in RESPONSES]
    # a sequence that ends with the pad token: transformers' own pooling would skip it
    seqs.append(seqs[0] + [tok.pad_token_id])
    assert len({len(s) for s in seqs}) > 2  # padding really happens
    got = HFRewardScorer("rm", path, batch_size=8).score(seqs)
    for ids, g in zip(seqs, got):
        ref = _reference_logits(path, ids)
        assert len(g) == num_labels
        assert max(abs(a - b) for a, b in zip(g, ref)) < 1e-5
    flat = [x for g in got for x in g]
    assert max(flat) - min(flat) > 0.1  # scores differ by input: the test has teeth


def test_score_with_reward_model_transformers(tiny, tmp_path):
    spec = RewardModelSpec(
        model=tiny[3], name="tiny-rm3", engine="transformers", max_model_len=40, batch_size=2
    )
    cache = RequestCache(tmp_path / "c.sqlite")
    res = score_with_reward_model(_candidates([("p0", None)]), _prompts(), spec, cache=cache)
    t = check_table(res.outputs["scores"], SCORES, "scores")
    assert t.num_rows == 4 * 3
    assert set(t.column("annotator").to_pylist()) == {"tiny-rm3"}
    assert set(t.column("aspect").to_pylist()) == {"head_0", "head_1", "head_2"}
    assert res.counts.to_dict()["dropped"] == {"empty_output": 1}
    rows = t.to_pylist()
    too_long = [r for r in rows if r["parse_error"]]
    assert too_long and all(
        r["parse_error"].startswith("prompt_too_long") and r["score"] is None for r in too_long
    )
    again = score_with_reward_model(
        _candidates([("p0", None)]), _prompts(), spec, cache=cache, get_scorer=lambda: 1 / 0
    )
    assert again.outputs["scores"].equals(res.outputs["scores"])
    assert again.info["calls"]["reused"] == res.info["calls"]["made"] > 0
    assert model_heads(tiny[3])[0] == 3


# --------------------------------------------------------------------------- vLLM pooling


def _vllm_scorer(path: str):
    from pipeline.annotate.rewards import VLLMRewardScorer

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return VLLMRewardScorer(
        "tiny-rm", path, dtype="float32", max_model_len=256, engine_args={"enforce_eager": True}
    )


@pytest.fixture(scope="module")
def vllm_rm1(tiny):
    scorer = _vllm_scorer(tiny[1])
    yield scorer
    scorer.close()


def _agreement(path: str, scorer) -> float:
    cands, prompts = _candidates(), _prompts()
    spec_v = RewardModelSpec(model=path, engine="vllm", max_model_len=256)
    spec_t = RewardModelSpec(model=path, engine="transformers", max_model_len=256)
    v = score_with_reward_model(cands, prompts, spec_v, get_scorer=lambda: scorer)
    t = score_with_reward_model(cands, prompts, spec_t)
    sv, st_ = v.outputs["scores"].to_pylist(), t.outputs["scores"].to_pylist()
    assert [(r["candidate_id"], r["aspect"]) for r in sv] == [
        (r["candidate_id"], r["aspect"]) for r in st_
    ]
    scores = [r["score"] for r in sv]
    assert None not in scores
    assert any(s < 0 or s > 1 for s in scores)  # raw logits: no sigmoid/softmax applied
    return max(abs(a["score"] - b["score"]) for a, b in zip(sv, st_))


@pytest.mark.engine
def test_vllm_pooling_agrees_with_transformers_single_head(tiny, vllm_rm1):
    diff = _agreement(tiny[1], vllm_rm1)
    print(f"num_labels=1: max |vLLM - transformers| = {diff:.2e}")
    assert diff < TOL


@pytest.mark.engine
@pytest.mark.skipif(
    os.environ.get("PREFCURATE_EXTRA_ENGINE_TESTS") != "1",
    reason="a second vLLM engine start; set PREFCURATE_EXTRA_ENGINE_TESTS=1",
)
def test_vllm_pooling_agrees_with_transformers_three_heads(tiny):
    scorer = _vllm_scorer(tiny[3])
    try:
        diff = _agreement(tiny[3], scorer)
    finally:
        scorer.close()
    print(f"num_labels=3: max |vLLM - transformers| = {diff:.2e}")
    assert diff < TOL
