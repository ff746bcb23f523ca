"""The real engine: SmolLM2-135M-Instruct (embedded default) through vLLM's offline engine.

One engine start is shared by every test here (the session's runtime keeps it: conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from flows.curate import curate
from pipeline.engines.base import ChatRequest
from pipeline.store import datasets as store
from schemas.config import ModelSpec, load_config

pytestmark = pytest.mark.engine

SPEC = ModelSpec()  # the embedded default, engine vllm


@pytest.fixture(scope="module")
def engine(smollm2_engine):
    return smollm2_engine


def _cfg(root: Path):
    return load_config(
        None,
        [
            f"data_root={root}",
            "name=e2e",
            "input.limit=2",
            "generate.policies.0.n=2",
            "generate.policies.0.max_tokens=32",
            # 32 tokens cut most samples: keep them, this test is about the engine path
            # (the default drops them: tests/test_stages.py::test_make_candidates_on_truncated)
            "generate.on_truncated=keep",
            # one weak judge alone: publish what its posterior leans to
            "rubrics.judges=[]",
            "denoise.drop_below=0.5",
        ],
    )


def test_end_to_end_two_prompts_real_engine(tmp_path, engine, runtime):
    summary = curate(_cfg(tmp_path).model_dump(mode="json"), runtime=runtime)
    assert summary["created"] and summary["version"] == 1
    assert summary["calls"]["generate"]["made"] == 2
    assert summary["calls"]["judge"]["made"] == 2 * 1 * 2  # 2 prompts x 1 pair x 2 orders
    manifest = store.read_manifest(summary["path"])
    for stage, c in manifest["stages"].items():
        assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values()), (
            stage
        )
    assert manifest["models"] == [SPEC.model]
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    assert ds.num_rows >= 1
    row = ds[0]
    assert row["chosen"][0]["content"].strip() and row["rejected"][0]["content"].strip()
    assert row["chosen"] != row["rejected"] and row["margin"] >= 0

    again = curate(_cfg(tmp_path).model_dump(mode="json"), runtime=runtime)
    assert again["created"] is False and again["version"] == 1
    assert all(c["reused"] for c in again["stages"].values())


def test_samples_distinct_and_seeds_reproduce(engine):
    req = ChatRequest(
        messages=(("user", "Name a colour and say why you like it."),),
        n=3,
        temperature=1.0,
        top_p=1.0,
        max_tokens=24,
        seed=7,
    )
    first = engine.complete([req])[0]
    second = engine.complete([req])[0]
    assert len(first.texts) == 3
    assert len(set(first.texts)) > 1  # n > 1 gives distinct samples
    assert first.texts == second.texts  # the same seed reproduces them
    other = engine.complete([ChatRequest(**{**req.__dict__, "seed": 8})])[0]
    assert other.texts != first.texts


def test_judge_structured_output_and_logprobs(engine):
    from pipeline.annotate.judging import format_pairwise, parse_verdict, prob_first_from_logprobs
    from schemas.config import JudgeSpec

    req = format_pairwise(
        JudgeSpec(), [{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 = 4.", "2 + 2 = 5."
    )
    comp = engine.complete([req])[0]
    verdict, err = parse_verdict(comp.texts[0])
    assert err is None and verdict in ("A", "B", "tie")  # schema-valid JSON
    p = prob_first_from_logprobs(comp.top_logprobs[0])
    assert p is not None and 0.0 <= p <= 1.0


def test_prompt_longer_than_context_is_quarantined(tmp_path, engine, runtime):
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "hello"}\n{"prompt": "' + "word " * 3000 + '"}\n')
    summary = curate(
        load_config(
            None,
            [
                f"data_root={tmp_path}",
                "name=long",
                f"input.path={long}",
                "generate.policies.0.n=2",
                "generate.policies.0.max_tokens=16",
            ],
        ).model_dump(mode="json"),
        runtime=runtime,
    )
    gen = summary["stages"]["generate"]
    assert gen["quarantined"] == {"prompt_too_long": 2}
    assert gen["kept"] + sum(gen["dropped"].values()) == 2


def test_two_turn_mtbench_real_engine(tmp_path, engine, runtime):
    """MT-Bench with its second turn: each candidate answers the follow-up in its own
    context, and the published sides hold both turns."""
    cfg = load_config(
        None,
        [
            f"data_root={tmp_path}",
            "name=e2e-two-turns",
            "input.path=mtbench2:1",
            "generate.policies.0.n=2",
            "generate.policies.0.max_tokens=24",
            "generate.on_truncated=keep",
            "rubrics.judges=[]",
            "denoise.flip_below=0.0",
            "denoise.drop_below=0.0",
        ],
    )
    summary = curate(cfg.model_dump(mode="json"), runtime=runtime)
    assert summary["calls"]["generate"]["made"] == 1 + 2  # one prompt, then each candidate
    ds = datasets.load_from_disk(str(Path(summary["path"]) / "data"))
    assert ds.num_rows >= 1
    row = ds[0]
    follow_up = store.read_manifest(summary["path"])["stages"]["generate"]
    assert follow_up["kept"] == 2
    for side in ("chosen", "rejected"):
        assert [m["role"] for m in row[side]] == ["assistant", "user", "assistant"]
        assert all(m["content"].strip() for m in row[side])
    assert row["chosen"][1]["content"] == row["rejected"][1]["content"]  # MT-Bench's turn 2
    usage = summary["usage"]["stages"]["generate"][SPEC.model]
    assert usage["prompt_tokens"] > 0 and usage["output_tokens"] > 0
