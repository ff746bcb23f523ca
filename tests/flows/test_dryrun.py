"""``prefcurate run --plan``: calls, tokens and cost per stage without loading a model."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline import generation
from pipeline.dryrun import plan_run
from pipeline.engines.base import FakeEngine, RequestCache
from schemas.config import load_config
from tests.fake_run import FAKE_MODELS


def _cfg(tmp_path, examples, *extra):
    return load_config(
        None,
        [
            f"data_root={tmp_path}",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=4",
            *FAKE_MODELS,
            "generate.policies.0.n=3",
            *extra,
        ],
    )


def test_plan_counts_calls_per_stage(tmp_path, examples):
    p = plan_run(_cfg(tmp_path, examples, "judge.max_pairs_per_prompt=2"))
    by = {s["stage"]: s for s in p["stages"]}
    assert p["input"]["rows"] == 4
    assert by["generate"]["calls"] == 4 and by["generate"]["max_output_tokens"] == 4 * 3 * 128
    assert by["generate"]["cached"] is None  # no cache file: the plan creates none
    assert not (tmp_path / "cache").exists()
    assert by["judge"]["calls"] == 4 * 2 * 2  # 2 of C(3,2) pairs per prompt, two orders
    assert by["rubric"]["calls"] == 4 * 3  # one Yes/No judge per pairwise judge
    assert p["total"]["calls"] == 4 + 16 + 12
    assert all(s["prompt_tokens_est"] > 0 for s in p["stages"])
    # the judge budget caps the judge calls
    capped = plan_run(_cfg(tmp_path, examples, "judge.budget=6", "rubrics.judges=[]"))
    assert [(s["stage"], s["calls"]) for s in capped["stages"]] == [("generate", 4), ("judge", 6)]
    gpm = plan_run(_cfg(tmp_path, examples, "judge.pair_selection=gpm", "rubrics.judges=[]"))
    assert [(s["stage"], s["calls"]) for s in gpm["stages"]][1:] == [
        ("judge", 4 * 2 * 2),
        ("judge_gpm", 4 * 1 * 2),
    ]


def test_plan_counts_cached_calls_prices_and_budgets(tmp_path, examples):
    cfg = _cfg(
        tmp_path,
        examples,
        "cost.prices={fake-judge: {input_per_mtok: 1.0, output_per_mtok: 2.0}}",
        "budget.max_calls=10",
        "budget.stages={judge: {max_cost: 1.0}}",
    )
    ing = plan_run(cfg)
    # answer two generation requests into the run's request cache: they cost nothing now
    from pipeline.ingest.stage import ingest_prompts

    prompts = ingest_prompts(cfg.input.path, limit=4).outputs["prompts"]
    reqs = generation.build_generation_requests(prompts, list(cfg.generate.policies))[:2]
    cache = RequestCache(tmp_path / "cache" / "requests.sqlite")
    eng = FakeEngine()
    spec = cfg.generate.policies[0].model
    cache.put_many(
        [
            (r.request.key(spec.engine, spec.cache_identity()), "fake", spec.model, c)
            for r, c in zip(reqs, eng.complete([r.request for r in reqs]))
        ]
    )
    cache.close()
    p = plan_run(cfg)
    by = {s["stage"]: s for s in p["stages"]}
    assert ing["stages"][0]["cached"] is None and by["generate"]["cached"] == 2
    j = by["judge"]
    assert j["max_cost"] == round(
        j["prompt_tokens_est"] * 1.0 / 1e6 + j["max_output_tokens"] * 2.0 / 1e6, 6
    )
    # the rubric stage's Yes/No judge runs on the judge's model: priced too
    assert by["generate"]["max_cost"] is None and by["rubric"]["max_cost"] > 0
    assert p["total"]["max_cost"] == round(j["max_cost"] + by["rubric"]["max_cost"], 6)
    assert p["budget"]["budget.max_calls"] == {
        "limit": 10,
        "planned": p["total"]["calls"],
        "fits": False,
    }
    assert p["budget"]["budget.stages.judge.max_cost"]["fits"] is True
    # priced generation: the two cached calls of four cost nothing
    priced = plan_run(
        cfg.model_copy(
            update={
                "cost": cfg.cost.model_validate(
                    {"prices": {"fake-policy": {"input_per_mtok": 1e6}}}
                )
            }
        )
    )
    g = priced["stages"][0]
    assert g["max_cost"] == round(g["prompt_tokens_est"] * 0.5, 6) > 0


def test_cli_plan_json_on_the_embedded_default_loads_no_model(tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['prefcurate', 'run', '--plan', '--json', '--set', 'data_root={tmp_path}']\n"
        "try:\n"
        "    runpy.run_module('flows.cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('vllm', 'sentence_transformers', 'prefect.flows')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    plan = json.loads(out.stdout)  # JSON and nothing else on stdout
    assert [s["stage"] for s in plan["stages"]] == ["generate", "rubric", "judge"]
    assert plan["input"]["rows"] == 28 and plan["stages"][0]["calls"] == 28
    assert "LOADED []" in out.stderr


def test_plan_rubric_only_hourly_prices_and_the_checks_of_a_run(tmp_path, examples):
    cfg = _cfg(tmp_path, examples, "judge.judges=[]", "rubrics.judges=[{name: r1}]")
    p = plan_run(cfg)
    assert [(s["stage"], s["calls"]) for s in p["stages"]] == [("generate", 4), ("rubric", 12)]
    # Yes/No rubric judges ask for 3 tokens: the plan uses the real request's max_tokens
    yn = plan_run(_cfg(tmp_path, examples))
    rub = next(s for s in yn["stages"] if s["stage"] == "rubric")
    assert rub["max_output_tokens"] == rub["calls"] * 3
    hourly = plan_run(
        _cfg(
            tmp_path,
            examples,
            "cost.prices={fake-judge: {per_hour: 2.0}}",
            "budget.stages={judge: {max_cost: 0.000001}}",
        )
    )
    assert hourly["budget"]["budget.stages.judge.max_cost"]["fits"] is None
    assert any("priced per hour, not estimated: fake-judge" in n for n in hourly["notes"])
    # --plan runs the same checks as a run: a missing model folder fails before the plan
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--plan", "--json", "--set",
         f"data_root={tmp_path}", "--set", "generate.policies.0.model.model=/no/such/model"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and bad.stdout == "" and "/no/such/model" in bad.stderr
