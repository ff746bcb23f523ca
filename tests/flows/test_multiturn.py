"""Multi-turn prompts (issue 15, item 4): follow-up turns answered by each candidate in its
own context, judges that see the whole conversation, and published rows with every turn."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from flows.curate import curate
from pipeline.annotate.judging import build_judge_requests, format_pairwise
from pipeline.annotate.rubrics import format_rubric, format_yesno
from pipeline.ingest.stage import ingest_prompts
from pipeline.store import datasets as store
from schemas.config import JudgeSpec, RubricConfig, load_config
from tests.fake_run import FAKE_MODELS

ROWS = [
    {"id": "t1", "prompt": "Name a prime number.", "follow_ups": ["Now name a larger one."]},
    {
        "id": "t2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Pick a colour."},
        ],
        "follow_ups": ["Why that one?", "And a second colour?"],
    },
    {"id": "t3", "prompt": "Say hello."},  # single turn in the same file
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ingest_checks_follow_ups_and_keeps_them(tmp_path):
    bad = [
        {"id": "b1", "prompt": "x", "follow_ups": "not a list"},
        {"id": "b2", "prompt": "x", "follow_ups": ["ok", "  "]},
        {
            "id": "b3",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "follow_ups": ["more?"],
        },
        {"id": "b4", "prompt": "x", "tools": {"type": "function"}},
    ]
    res = ingest_prompts(str(_write(tmp_path / "p.jsonl", ROWS + bad)))
    assert res.counts.kept == 3
    assert res.counts.quarantined == {"wrong_type": 2, "empty_text": 1, "invalid_value": 1}
    q = {r["source_id"]: r["detail"] for r in res.quarantine.to_pylist()}
    assert "follow_ups[1]" in q["b2"] and "end with a user turn" in q["b3"]
    metas = {
        r["source_id"]: json.loads(r["meta"] or "{}") for r in res.outputs["prompts"].to_pylist()
    }
    assert metas["t2"]["follow_ups"] == ["Why that one?", "And a second colour?"]
    # the follow-ups are part of the prompt's identity
    other = ingest_prompts(
        str(_write(tmp_path / "q.jsonl", [{**ROWS[0], "follow_ups": ["Another?"]}]))
    )
    ids = res.outputs["prompts"].column("prompt_id").to_pylist()
    assert other.outputs["prompts"].column("prompt_id")[0].as_py() not in ids


def test_mtbench2_has_both_turns():
    one = ingest_prompts("mtbench:3").outputs["prompts"].to_pylist()
    two = ingest_prompts("mtbench2:3").outputs["prompts"].to_pylist()
    assert [r["prompt"] for r in one] == [r["prompt"] for r in two]
    assert all(r["meta"] is None or "follow_ups" not in r["meta"] for r in one)
    for r in two:
        assert len(json.loads(r["meta"])["follow_ups"]) == 1
    # decontamination never checks MT-Bench against itself
    from pipeline.hygiene.decontam import resolve_benchmarks

    assert resolve_benchmarks(["mtbench"], "mtbench2:3")[1]["skipped"] == [
        "mtbench (the input's own source)"
    ]


def test_single_turn_judge_requests_are_unchanged():
    """Cache keys of single-turn judge and rubric requests are the ones the code gave before
    multi-turn support (computed from the previous commit): finished calls stay reusable."""
    p = [{"role": "user", "content": "What is 2+2?"}]
    assert format_pairwise(JudgeSpec(), p, "4", "five").key("vllm", "m") == (
        "ddf3a4d188deaa24a3b2fb5048a38a05"
    )
    assert format_rubric(RubricConfig(), p, "4").key("vllm", "m") == (
        "21c0693e0f7b2c3d0d7dafeb508976ad"
    )
    assert format_yesno(RubricConfig(template="yesno_v1"), p, "4").key("vllm", "m") == (
        "73bcca09373ce4085a542e6fe7429ed6"
    )


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            f"data_root={tmp_path}",
            "name=multi",
            f"input.path={_write(tmp_path / 'turns.jsonl', ROWS)}",
            *FAKE_MODELS,
            "generate.policies.0.n=3",
            "rubrics.judges=[]",
            "embed.enabled=false",
            "denoise.flip_below=0.0",
            "denoise.drop_below=0.0",
            *extra,
        ],
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def multi_version(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    return curate(_cfg(tmp)), tmp


def test_follow_ups_are_answered_per_candidate_and_published(multi_version):
    summary, _ = multi_version
    # turn 1: 3 prompts; turn 2: 3 candidates x 2 prompts; turn 3: 3 candidates of t2
    assert summary["calls"]["generate"]["made"] == 3 + 6 + 3
    manifest = store.read_manifest(summary["path"])
    g = manifest["stages"]["generate"]
    assert g["in"] == 9 and g["kept"] == 9
    assert manifest["stage_info"]["generate"]["turns"] == 3
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    by_source = {}
    for row in ds:
        by_source.setdefault(row["source_id"], row)
    assert set(by_source) == {"t1", "t2", "t3"}
    t1, t2, t3 = by_source["t1"], by_source["t2"], by_source["t3"]
    # the prompt is the shared first turn; each side is the candidate's whole conversation
    assert [m["role"] for m in t1["prompt"]] == ["user"]
    for side in ("chosen", "rejected"):
        assert [m["role"] for m in t1[side]] == ["assistant", "user", "assistant"]
        assert t1[side][1]["content"] == "Now name a larger one."
        assert [m["content"] for m in t2[side] if m["role"] == "user"] == [
            "Why that one?",
            "And a second colour?",
        ]
        assert len(t3[side]) == 1
    # the two sides are two conversations: their first answers differ too
    assert t1["chosen"][0]["content"] != t1["rejected"][0]["content"]
    assert [m["role"] for m in t2["prompt"]] == ["system", "user"]


def test_judges_see_the_whole_conversation(multi_version):
    summary, tmp = multi_version
    runs = tmp / "runs" / "multi" / "stages"
    gen = next(p for p in runs.iterdir() if p.name.startswith("generate"))
    import pyarrow.parquet as pq

    cands = pq.read_table(gen / "candidates.parquet")
    prompts = pq.read_table(
        next(p for p in runs.iterdir() if p.name.startswith("ingest")) / "prompts.parquet"
    )
    rows = cands.to_pylist()
    multi = [r for r in rows if r["history"]]
    a, b = multi[0], next(r for r in multi[1:] if r["prompt_id"] == multi[0]["prompt_id"])
    pair = [(a["prompt_id"], a["source_id"], a["candidate_id"], b["candidate_id"])]
    for mode in ("last", "whole"):
        req = build_judge_requests(pair, cands, prompts, [JudgeSpec(multi_turn=mode)])[0]
        user = req.request.messages[-1][1]
        assert "several turns" in user
        assert ("judge only the assistant's last answer" in user) == (mode == "last")
        # both candidates' first answers and the follow-up are in what the judge reads
        assert a["history"][0]["content"] in user and b["history"][0]["content"] in user
        assert a["history"][1]["content"] in user
        assert a["text"] in user and b["text"] in user
    single = [r for r in rows if not r["history"]]
    c, d = single[0], next(r for r in single[1:] if r["prompt_id"] == single[0]["prompt_id"])
    req = build_judge_requests(
        [(c["prompt_id"], c["source_id"], c["candidate_id"], d["candidate_id"])],
        cands,
        prompts,
        [JudgeSpec()],
    )[0]
    assert "several turns" not in req.request.messages[-1][1]


def test_dpo_trainer_trains_on_multi_turn_rows(multi_version, tmp_path):
    import torch
    from tiny_models import build_tiny_causal_lm, train_dpo_two_steps
    from transformers import AutoTokenizer, LlamaForCausalLM

    summary, _ = multi_version
    path = build_tiny_causal_lm(tmp_path / "lm")
    tok = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path)
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    ds = ds.filter(lambda r: len(r["chosen"]) > 1)
    assert ds.num_rows >= 2
    out, losses = train_dpo_two_steps(model, tok, ds, tmp_path / "dpo", 256)
    assert out.global_step == 2
    assert losses and all(torch.isfinite(torch.tensor(losses)))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_tools_reach_the_engine_and_the_published_rows(tmp_path):
    from pipeline import generation
    from pipeline.engines.openai import OpenAIEngine
    from schemas.config import PolicyConfig

    rows = [{"id": "w1", "prompt": "Weather in Oslo?", "tools": TOOLS}, ROWS[2]]
    path = _write(tmp_path / "tools.jsonl", rows)
    prompts = ingest_prompts(str(path)).outputs["prompts"]
    reqs = generation.build_generation_requests(prompts, [PolicyConfig()])
    by_source = {r.source_id: r.request for r in reqs}
    assert json.loads(by_source["w1"].tools) == TOOLS and by_source["t3"].tools is None
    body = OpenAIEngine("m", "http://127.0.0.1:9/v1").request_body(by_source["w1"])
    assert body["tools"] == TOOLS
    assert "tools" not in OpenAIEngine("m", "http://127.0.0.1:9/v1").request_body(by_source["t3"])
    # the published rows carry TRL's tools column (JSON text, as TRL reads it)
    cfg = load_config(
        None,
        [
            f"data_root={tmp_path}",
            "name=tools",
            f"input.path={path}",
            *FAKE_MODELS,
            "rubrics.judges=[]",
            "embed.enabled=false",
            "denoise.flip_below=0.0",
            "denoise.drop_below=0.0",
        ],
    )
    summary = curate(cfg.model_dump(mode="json"))
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    got = {r["source_id"]: r["tools"] for r in ds}
    assert json.loads(got["w1"]) == TOOLS and got.get("t3", None) is None


def test_vllm_engine_calls_chat_once_per_tool_list():
    from pipeline.engines.base import ChatRequest, VLLMEngine

    class Out:
        def __init__(self, text):
            self.index, self.text, self.finish_reason = 0, text, "stop"
            self.token_ids, self.logprobs = [1, 2], None

    class LLM:
        calls: list = []

        def chat(self, convs, params, use_tqdm, tools):
            self.calls.append((len(convs), tools))
            return [
                type("O", (), {"outputs": [Out(f"{c[-1]['content']}|{tools is not None}")],
                               "prompt_token_ids": [0]})()
                for c in convs
            ]  # fmt: skip

    eng = VLLMEngine.__new__(VLLMEngine)
    eng.llm, eng._max_len = LLM(), 4096
    eng.count_prompt_tokens = lambda r: 3
    t = json.dumps(TOOLS)
    reqs = [
        ChatRequest(messages=(("user", "a"),)),
        ChatRequest(messages=(("user", "b"),), tools=t),
        ChatRequest(messages=(("user", "c"),)),
    ]
    out = eng.complete(reqs)
    assert [c.texts[0] for c in out] == ["a|False", "b|True", "c|False"]
    assert sorted(eng.llm.calls, key=str) == sorted([(2, None), (1, TOOLS)], key=str)
