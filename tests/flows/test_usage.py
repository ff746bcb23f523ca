"""Token and cost accounting of model calls, and the run's budget (issue 15, items 1-2)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.curate import curate
from pipeline.engines.base import ChatRequest, FakeEngine, RequestCache, run_cached
from pipeline.engines.usage import Budget, cost, reused_stage, summary
from pipeline.report.sections import usage_table
from pipeline.store import datasets as store
from schemas.config import BudgetConfig, CostConfig, Price, load_config
from schemas.errors import ConfigError
from tests.fake_run import FAKE_MODELS


def _reqs(n: int, max_tokens: int = 8, samples: int = 1) -> list[ChatRequest]:
    return [
        ChatRequest(messages=(("user", f"question {i} is here"),), n=samples, max_tokens=max_tokens)
        for i in range(n)
    ]


def _run(reqs, cache, eng, gate=None, batch_size=2):
    return run_cached(
        reqs,
        engine_kind="fake",
        model=eng.model,
        get_engine=lambda: eng,
        cache=cache,
        batch_size=batch_size,
        gate=gate,
    )


def test_tokens_and_seconds_are_counted_and_reuse_is_saved(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    eng = FakeEngine()
    reqs = _reqs(5, samples=2)
    comps, st = _run(reqs, cache, eng)
    want_in = sum(c.n_prompt_tokens for c in comps)
    want_out = sum(sum(c.n_output_tokens) for c in comps)
    assert want_in > 0 and want_out > 0
    assert (st.made, st.reused, st.prompt_tokens, st.output_tokens) == (5, 0, want_in, want_out)
    assert st.seconds > 0 and st.saved_prompt_tokens == 0 and st.untokened == 0
    # the second run answers everything from the cache: the same tokens, now saved
    _, st2 = _run(reqs, cache, FakeEngine())
    assert (st2.made, st2.reused, st2.prompt_tokens, st2.output_tokens) == (0, 5, 0, 0)
    assert (st2.saved_prompt_tokens, st2.saved_output_tokens) == (want_in, want_out)
    assert st2.saved_seconds == pytest.approx(st.seconds - st.start_seconds, rel=1e-6, abs=1e-9)


def test_cost_from_a_price_table_and_the_summary():
    from pipeline.engines.base import CallStats

    usage = {
        "generate": {"api": CallStats(made=3, prompt_tokens=2_000_000, output_tokens=1_000_000)},
        "judge": {
            "api": CallStats(
                made=1, reused=2, prompt_tokens=1_000_000, saved_prompt_tokens=500_000
            ),
            "local": CallStats(made=2, seconds=7200.0),
        },
    }
    prices = CostConfig(prices={"api": Price(input_per_mtok=0.5, output_per_mtok=2.0)})
    out = summary(usage, prices)
    assert out["stages"]["generate"]["api"]["cost"] == pytest.approx(1.0 + 2.0)
    assert out["stages"]["judge"]["api"]["cost"] == pytest.approx(0.5)
    assert out["stages"]["judge"]["api"]["saved_cost"] == pytest.approx(0.25)
    assert out["stages"]["judge"]["local"]["cost"] is None  # no price: not guessed
    assert out["unpriced"] == ["local"]
    assert out["total"]["cost"] == pytest.approx(3.5)
    assert out["total"]["made"] == 6 and out["total"]["prompt_tokens"] == 3_000_000
    # a local engine priced by the hour
    assert cost(usage["judge"]["local"], Price(per_hour=1.5)) == pytest.approx(3.0)
    t = usage_table(out)
    assert [r[:2] for r in t["rows"]] == [
        ["generate", "api"],
        ["judge", "api"],
        ["judge", "local"],
        ["total", ""],
    ]
    assert "no price for local" in t["title"]


def test_a_stage_reused_whole_counts_as_saved():
    stored = {
        "m": {
            "requests": 4,
            "made": 3,
            "reused": 1,
            "prompt_tokens": 30,
            "seconds": 2.0,
            "start_seconds": 0.5,
            "saved_prompt_tokens": 10,
            "output_tokens": 7,
        }
    }
    st = reused_stage(stored)["m"]
    assert (st.requests, st.reused, st.made) == (4, 4, 0)
    assert (st.saved_prompt_tokens, st.saved_output_tokens, st.saved_seconds) == (40, 7, 1.5)


def test_max_calls_stops_new_calls_and_a_higher_budget_makes_only_the_rest(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    reqs = _reqs(7)
    budget = Budget(BudgetConfig(max_calls=3), {})
    eng = FakeEngine()
    comps, st = _run(reqs, cache, eng, gate=budget.gate("generate", eng.model))
    assert eng.calls == 3 and (st.made, st.over_budget) == (3, 4)
    assert [c.error is None for c in comps] == [True] * 3 + [False] * 4
    assert all(c.error.startswith("over_budget: budget.max_calls 3") for c in comps[3:])
    assert len(cache) == 3  # refused calls are never cached
    budget2 = Budget(BudgetConfig(max_calls=10), {})
    eng2 = FakeEngine()
    comps2, st2 = _run(reqs, cache, eng2, gate=budget2.gate("generate", eng2.model))
    assert eng2.calls == 4 and (st2.made, st2.reused, st2.over_budget) == (4, 3, 0)
    assert comps2 == FakeEngine().complete(reqs)


@pytest.mark.parametrize("limit", [0, 7, 16, 17, 50])
def test_output_token_budget_is_never_exceeded(tmp_path, limit):
    cache = RequestCache(tmp_path / "c.sqlite")
    budget = Budget(BudgetConfig(max_output_tokens=limit), {})
    eng = FakeEngine()
    comps, st = _run(_reqs(9, max_tokens=4, samples=2), cache, eng, gate=budget.gate("g", "m"))
    assert st.output_tokens <= limit
    # each call may generate 4 x 2 tokens: the budget admits a call only when that fits
    # after what the earlier calls really generated (2 words x 2 samples each here)
    assert st.made == min(9, max(0, (limit - 8) // 4 + 1) if limit >= 8 else 0)
    assert st.made + st.over_budget == 9


def test_cost_budget_per_stage(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    price = Price(input_per_mtok=1_000_000.0)  # one unit per prompt token
    cfg = BudgetConfig(stages={"judge": {"max_cost": 20.0}})
    budget = Budget(cfg, {"m": price})
    eng = FakeEngine(model="m")
    _, st_gen = _run(_reqs(4), cache, eng, gate=budget.gate("generate", "m"))
    assert st_gen.over_budget == 0  # no limit on this stage
    reqs = [ChatRequest(messages=(("user", f"judge {i}"),), max_tokens=2) for i in range(6)]
    _, st = _run(reqs, cache, eng, gate=budget.gate("judge", "m"))
    # each judge prompt is 4 fake tokens: 5 calls fit in 20
    assert (st.made, st.over_budget) == (5, 1)
    assert budget.stage_cost["judge"] == pytest.approx(20.0)


def test_budget_and_price_configs_fail_before_any_call(tmp_path):
    base = [f"data_root={tmp_path}", "generate.policies.0.model.model=pol"]
    with pytest.raises(ConfigError, match="cost.prices.nope: no policy or judge"):
        load_config(None, base + ["cost.prices={nope: {input_per_mtok: 1}}"])
    with pytest.raises(ConfigError, match="budget.max_cost needs a price for every model"):
        load_config(None, base + ["budget.max_cost=2"])
    with pytest.raises(ConfigError, match="budget.stages.judge_gpm: this config has no"):
        load_config(None, base + ["budget.stages={judge_gpm: {max_calls: 3}}"])
    with pytest.raises(ConfigError, match="runner.kind: thread"):
        load_config(None, base + ["budget.max_calls=3", "runner.kind=dask"])
    with pytest.raises(ConfigError, match="max_calls"):
        load_config(None, base + ["budget.max_calls=-1"])
    ok = load_config(
        None,
        base
        + [
            "budget.stages={judge: {max_cost: 1}}",
            "cost.prices={smollm2-judge: {per_hour: 2}}",
            "judge.judges.0.model.model=smollm2-judge",
        ],
    )
    assert ok.budget.stages["judge"].max_cost == 1


def _fake(tmp_path: Path, examples: Path, *extra: str):
    return load_config(
        None,
        [
            f"data_root={tmp_path}",
            "name=budget-run",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=4",
            *FAKE_MODELS,
            "rubrics.judges=[]",
            "embed.enabled=false",
            "cost.prices={fake-judge: {input_per_mtok: 3, output_per_mtok: 15}}",
            *extra,
        ],
    ).model_dump(mode="json")


def test_flow_budget_drops_over_budget_and_resumes(tmp_path, examples, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PREFCURATE_FAKE_CALL_LOG", str(log))
    # 4 generation calls; 4 prompts x 3 pairs x 2 orders = 24 judge calls; allow 14 in all
    s1 = curate(_fake(tmp_path, examples, "budget.max_calls=14"))
    calls1 = log.read_text().split()
    assert len(calls1) == 14
    m1 = store.read_manifest(Path(s1["path"]))
    # 4 x C(4,2) = 24 pairs, 12 over judge.max_pairs_per_prompt; more for the run's budget
    assert m1["stages"]["judge"]["dropped"]["over_budget"] >= 12 + 14 // 2
    c = m1["stages"]["judge"]
    assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    u = m1["usage"]
    assert u["total"]["made"] == 14 and u["total"]["over_budget"] == 14
    assert u["stages"]["judge"]["fake-judge"]["cost"] > 0
    assert u["stages"]["generate"]["fake-policy"]["cost"] is None
    assert u["unpriced"] == ["fake-policy"]
    assert s1["usage"] == u and s1["calls"]["judge"]["over_budget"] == 14
    html = (Path(s1["path"]) / "report.html").read_text()
    assert "model calls, tokens and cost (USD)" in html and "no price for fake-policy" in html
    dropped = pl.read_parquet(Path(s1["path"]) / "dropped.parquet")
    assert (dropped["reason"] == "over_budget").sum() == c["dropped"]["over_budget"]
    # raise the budget: only the missing judge calls are made, the rest is reused
    s2 = curate(_fake(tmp_path, examples, "budget.max_calls=100"))
    calls2 = log.read_text().split()[len(calls1) :]
    assert len(calls2) == 14 and not set(calls2) & set(calls1)
    m2 = store.read_manifest(Path(s2["path"]))
    assert m2["stages"]["judge"]["dropped"]["over_budget"] == 12
    t2 = m2["usage"]["total"]
    assert (t2["made"], t2["over_budget"]) == (14, 0)
    # generation was reused whole: its tokens are saved tokens now
    g2 = m2["usage"]["stages"]["generate"]["fake-policy"]
    g1 = m1["usage"]["stages"]["generate"]["fake-policy"]
    assert g2["made"] == 0 and g2["saved_output_tokens"] == g1["output_tokens"] > 0
    assert json.loads(json.dumps(m2["usage"])) == m2["usage"]
