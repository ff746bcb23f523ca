"""pipeline/annotate/stages.py: the model stage bodies, with a call function over the fake
engine (no cache, no Prefect)."""

from __future__ import annotations

from collections import Counter

from pipeline.annotate.stages import generate_stage, judge_stage, rubric_stage
from pipeline.engines.fake import FakeEngine
from pipeline.ingest.stage import ingest_prompts
from schemas.config import load_config
from tests.fake_run import FAKE_RUN


def _cfg(examples, *extra):
    return load_config(
        None, [f"input.path={examples / 'prompts.jsonl'}", "input.limit=3", *FAKE_RUN, *extra]
    )


class _Calls:
    """A call function over fake engines that records what each stage asked."""

    def __init__(self):
        self.asked = Counter()

    def __call__(self, stage, groups, batch_size):
        ordered, comps = [], []
        for _name, spec, reqs in groups:
            self.asked[stage] += len(reqs)
            ordered += reqs
            comps += FakeEngine(model=spec.model).complete([r.request for r in reqs])
        return ordered, comps


def test_generate_then_judge_through_the_call_function(examples):
    cfg = _cfg(examples, "generate.policies.0.n=2")
    prompts = ingest_prompts(cfg.input.path, limit=3).outputs["prompts"]
    call = _Calls()
    gen = generate_stage(prompts, cfg, call)
    cands = gen.outputs["candidates"]
    assert call.asked["generate"] == 3  # one request per prompt, n=2 samples each
    assert cands.num_rows == 3 * 2 == gen.counts.kept
    jud = judge_stage(prompts, cands, cfg, call, [])
    votes = jud.outputs["votes"]
    assert call.asked["judge"] == votes.num_rows > 0  # one vote per call, both orders
    assert set(votes.column("order").to_pylist()) == {"ab", "ba"}


def test_rubric_budget_drops_the_calls_over_it(examples):
    cfg = _cfg(
        examples,
        "generate.policies.0.n=2",
        "rubrics.judges=[{name: r, model: {engine: fake, model: fake-rubric}}]",
        "rubrics.budget=4",
    )
    prompts = ingest_prompts(cfg.input.path, limit=3).outputs["prompts"]
    call = _Calls()
    cands = generate_stage(prompts, cfg, call).outputs["candidates"]
    res = rubric_stage(prompts, cands, cfg, call)
    assert call.asked["rubric"] == 4
    assert res.counts.dropped.get("over_budget") == cands.num_rows - 4
