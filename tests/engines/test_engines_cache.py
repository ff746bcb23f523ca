"""Tests for pipeline.engines.base (FakeEngine, RequestCache, run_cached) and
pipeline.store.stages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.base import ChatRequest, Completion, FakeEngine, RequestCache, run_cached
from pipeline.generation import build_generation_requests, make_candidates
from pipeline.stage import StageResult
from pipeline.store.stages import COMPLETE, StageStore
from schemas.config import PolicyConfig
from schemas.errors import EngineError, SchemaError
from schemas.tables import CANDIDATES, PROMPTS, from_rows

# --------------------------------------------------------------------------- helpers


def req(text: str, n: int = 1, seed: int | None = 0, **kw) -> ChatRequest:
    return ChatRequest(messages=(("user", text),), n=n, seed=seed, **kw)


def reqs(k: int) -> list[ChatRequest]:
    return [req(f"question {i}") for i in range(k)]


def no_engine() -> FakeEngine:
    raise AssertionError("the engine must not be built when everything is cached")


def run(requests: Sequence[ChatRequest], cache: RequestCache, engine, batch_size: int = 64):
    return run_cached(
        requests,
        engine_kind="fake",
        model="fake-model",
        get_engine=lambda: engine,
        cache=cache,
        batch_size=batch_size,
    )


@pytest.fixture
def cache(tmp_path: Path):
    c = RequestCache(tmp_path / "cache" / "requests.sqlite")
    yield c
    c.close()


class FailingEngine(FakeEngine):
    """Answers requests whose text contains 'bad' with an error completion."""

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        good = FakeEngine.complete(self, requests)
        return [
            Completion(texts=[], finish_reasons=[], error="prompt_too_long: 9999")
            if "bad" in r.messages[-1][1]
            else c
            for r, c in zip(requests, good)
        ]


class RaisingEngine(FakeEngine):
    def __init__(self, exc: BaseException, on_batch: int = 1) -> None:
        super().__init__()
        self.exc, self.on_batch, self.batches = exc, on_batch, 0

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.batches += 1
        if self.batches == self.on_batch:
            raise self.exc
        return super().complete(requests)


# --------------------------------------------------------------------------- FakeEngine


def test_fake_engine_is_deterministic() -> None:
    rs = [req("hi", n=3, seed=1), req("hi", n=3, seed=2), req("yo", n=1)]
    a, b = FakeEngine().complete(rs), FakeEngine().complete(rs)
    assert a == b
    assert len(a[0].texts) == 3 and len(set(a[0].texts)) == 3  # samples differ
    assert a[0].texts != a[1].texts  # the seed matters
    assert a[0].finish_reasons == ["stop"] * 3 and a[0].error is None
    assert a[0].n_prompt_tokens == FakeEngine().count_prompt_tokens(rs[0]) == 3


def test_fake_engine_counts_calls_and_uses_responder() -> None:
    eng = FakeEngine(responder=lambda r, i: f"{r.messages[-1][1]}#{i}")
    out = eng.complete([req("x", n=2), req("y")])
    assert [c.texts for c in out] == [["x#0", "x#1"], ["y#0"]]
    assert eng.calls == 2
    assert eng.complete([]) == [] and eng.calls == 2


def test_fake_engine_answers_follow_the_schema() -> None:
    from pipeline.annotate.judging import VERDICT_SCHEMA

    rs = [req(f"compare {i}", json_schema=VERDICT_SCHEMA) for i in range(12)]
    winners = {json.loads(c.texts[0])["winner"] for c in FakeEngine().complete(rs)}
    assert winners <= {"A", "B", "tie"} and len(winners) > 1
    schema = json.dumps(
        {
            "type": "object",
            "properties": {
                "helpfulness": {"type": "integer", "minimum": 1, "maximum": 5},
                "rationale": {"type": "string", "maxLength": 3},
            },
        }
    )
    for c in FakeEngine().complete([req(f"rate {i}", json_schema=schema) for i in range(8)]):
        obj = json.loads(c.texts[0])
        assert 1 <= obj["helpfulness"] <= 5 and len(obj["rationale"]) <= 3


def test_request_key_covers_every_field() -> None:
    base = req("hi")
    keys = {
        base.key("fake", "m"),
        base.key("vllm", "m"),
        base.key("fake", "m2"),
        req("hi", n=2).key("fake", "m"),
        req("hi", seed=1).key("fake", "m"),
        req("hi", temperature=0.5).key("fake", "m"),
        req("hi", stop=("x",)).key("fake", "m"),
        req("hi", json_schema="{}").key("fake", "m"),
        req("hi", logprobs=5).key("fake", "m"),
    }
    assert len(keys) == 9
    assert base.key("fake", "m") == req("hi").key("fake", "m")


# --------------------------------------------------------------------------- RequestCache


def test_completion_json_round_trip() -> None:
    c = Completion(
        texts=["a", None],
        finish_reasons=["stop", "length"],
        n_prompt_tokens=3,
        n_output_tokens=[1, None],
        top_logprobs=[[{"A": -0.1, "é": -2.0}], None],
    )
    assert Completion.from_json(c.to_json()) == c


def test_cache_put_get_round_trip(cache: RequestCache) -> None:
    c1 = Completion(
        texts=["hello"],
        finish_reasons=["stop"],
        n_prompt_tokens=2,
        n_output_tokens=[1],
        top_logprobs=[[{"A": -0.5}]],
    )
    c2 = Completion(texts=["x", "y"], finish_reasons=["stop", "length"])
    cache.put_many([("k1", "fake", "m", c1), ("k2", "fake", "m", c2)])
    assert cache.get_many(["k1", "k2", "missing"]) == {"k1": c1, "k2": c2}
    assert cache.get_many([]) == {} and len(cache) == 2
    cache.put_many([("k1", "fake", "m", c2)])  # replace
    assert cache.get_many(["k1"]) == {"k1": c2} and len(cache) == 2


def test_cache_many_keys(cache: RequestCache) -> None:
    items = [
        (f"k{i}", "fake", "m", Completion(texts=[str(i)], finish_reasons=["stop"]))
        for i in range(1200)
    ]
    cache.put_many(items)
    got = cache.get_many([k for k, *_ in items])
    assert len(got) == 1200 and got["k1199"].texts == ["1199"]


def test_cache_persists_across_objects(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first = RequestCache(path)
    c = Completion(texts=["kept"], finish_reasons=["stop"])
    first.put_many([("k", "fake", "m", c)])
    second = RequestCache(path)  # open while the first is still open
    assert second.get_many(["k"]) == {"k": c}
    first.close()
    second.close()
    third = RequestCache(path)
    assert third.get_many(["k"]) == {"k": c} and len(third) == 1
    third.close()


# --------------------------------------------------------------------------- run_cached


def test_second_run_makes_no_engine_call(cache: RequestCache) -> None:
    rs = reqs(5)
    eng = FakeEngine()
    out1, st1 = run(rs, cache, eng, batch_size=2)
    assert eng.calls == 5 and (st1.requests, st1.made, st1.reused, st1.failed) == (5, 5, 0, 0)
    assert out1 == FakeEngine().complete(rs)
    out2, st2 = run_cached(
        rs, engine_kind="fake", model="fake-model", get_engine=no_engine, cache=cache
    )
    assert out2 == out1 and eng.calls == 5
    assert (st2.made, st2.reused) == (0, 5)


def test_only_missing_requests_reach_the_engine(cache: RequestCache) -> None:
    run(reqs(3), cache, FakeEngine())
    eng = FakeEngine()
    out, stats = run(reqs(5)[::-1], cache, eng)  # 2 new, in a different order
    assert eng.calls == 2 and (stats.made, stats.reused) == (2, 3)
    assert out == FakeEngine().complete(reqs(5)[::-1])


def test_cache_key_includes_engine_and_model(cache: RequestCache) -> None:
    rs = reqs(2)
    run(rs, cache, FakeEngine())
    eng = FakeEngine()
    run_cached(rs, engine_kind="fake", model="other-model", get_engine=lambda: eng, cache=cache)
    assert eng.calls == 2


def test_empty_request_list_builds_no_engine(cache: RequestCache) -> None:
    out, stats = run_cached([], engine_kind="fake", model="m", get_engine=no_engine, cache=cache)
    assert out == [] and stats.requests == 0


def test_duplicate_requests_answered_once(cache: RequestCache) -> None:
    a, b = req("same"), req("other")
    eng = FakeEngine()
    out, stats = run([a, b, a, a], cache, eng, batch_size=1)
    assert eng.calls == 2 and len(cache) == 2
    assert out[0] == out[2] == out[3] != out[1]
    assert (stats.requests, stats.made, stats.reused) == (4, 2, 2)


def test_error_completions_are_returned_not_cached_and_retried(cache: RequestCache) -> None:
    rs = [req("good 1"), req("bad 1"), req("good 2")]
    out, stats = run(rs, cache, FailingEngine())
    assert [c.error for c in out] == [None, "prompt_too_long: 9999", None]
    assert stats.failed == 1 and len(cache) == 2
    eng = FakeEngine()
    out2, stats2 = run(rs, cache, eng)
    assert eng.calls == 1 and (stats2.made, stats2.reused, stats2.failed) == (1, 2, 0)
    assert out2[1].error is None and out2[1] == FakeEngine().complete([rs[1]])[0]
    assert len(cache) == 3


def test_a_failing_batch_becomes_error_rows(cache: RequestCache) -> None:
    rs = reqs(4)
    eng = RaisingEngine(RuntimeError("CUDA out of memory"), on_batch=1)
    out, stats = run(rs, cache, eng, batch_size=2)
    assert [c.error for c in out[:2]] == ["RuntimeError: CUDA out of memory"] * 2
    assert [c.error for c in out[2:]] == [None, None]
    assert stats.failed == 2 and len(cache) == 2
    again = FakeEngine()
    run(rs, cache, again)
    assert again.calls == 2  # only the failed batch is redone


def test_engine_error_propagates(cache: RequestCache) -> None:
    with pytest.raises(EngineError):
        run(reqs(2), cache, RaisingEngine(EngineError("dead"), on_batch=1))
    assert len(cache) == 0


def test_crash_mid_run_keeps_finished_batches(cache: RequestCache) -> None:
    rs = reqs(6)
    crashing = RaisingEngine(KeyboardInterrupt(), on_batch=2)
    with pytest.raises(KeyboardInterrupt):
        run(rs, cache, crashing, batch_size=2)
    assert crashing.calls == 2 and len(cache) == 2
    eng = FakeEngine()
    out, stats = run(rs, cache, eng, batch_size=2)
    assert eng.calls == 4 and (stats.reused, stats.made) == (2, 4)
    assert out == FakeEngine().complete(rs)


def test_progress_is_reported(cache: RequestCache) -> None:
    run(reqs(2), cache, FakeEngine())
    seen: list[int] = []
    run_cached(
        reqs(5),
        engine_kind="fake",
        model="fake-model",
        get_engine=FakeEngine,
        cache=cache,
        batch_size=2,
        progress=seen.append,
    )
    assert seen == [2, 2, 1] and sum(seen) == 5


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=10),
    st.lists(st.integers(0, 5), max_size=10),
    st.integers(1, 4),
)
def test_run_cached_matches_engine_and_calls_each_request_once(
    first: list[int], second: list[int], batch: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cache = RequestCache(Path(d) / "c.sqlite")
        try:
            eng = FakeEngine()
            for ids in (first, second):
                rs = [req(f"q{i}") for i in ids]
                out, stats = run(rs, cache, eng, batch_size=batch)
                assert out == FakeEngine().complete(rs)
                assert stats.made + stats.reused == stats.requests == len(rs)
            assert eng.calls == len(set(first) | set(second)) == len(cache)
        finally:
            cache.close()


# --------------------------------------------------------------------------- stagestore


def gen_result() -> StageResult:
    prompts = from_rows(
        [
            {
                "prompt_id": f"p{i}",
                "source_id": f"s{i}",
                "prompt": [{"role": "user", "content": f"q{i}"}],
                "source": "t",
                "meta": None,
            }
            for i in range(2)
        ],
        PROMPTS,
        "prompts",
    )
    rs = build_generation_requests(prompts, [PolicyConfig(name="pol", n=2)])
    comps = [
        Completion(texts=["a", ""], finish_reasons=["stop", "stop"]),
        Completion(texts=[], finish_reasons=[], error="boom"),
    ]
    return make_candidates(rs, comps)


def test_save_then_load_reuses(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "run")
    res = gen_result()
    key = StageStore.key("generate", 1, {"n": 2}, ["in-hash"])
    assert store.load("generate", key) is None
    saved = store.save(res, key, inputs=["in-hash"])
    assert saved.reused is False and (saved.path / COMPLETE).exists()
    loaded = store.load("generate", key)
    assert loaded is not None and loaded.reused is True
    assert loaded.output_hash == saved.output_hash and loaded.key == key
    assert loaded.counts == res.counts.to_dict()
    assert loaded.meta["inputs"] == ["in-hash"] and loaded.tables() == ["candidates"]
    assert loaded.read("candidates").equals(res.outputs["candidates"])
    assert loaded.read("dropped").to_pylist() == res.dropped.to_pylist()
    assert loaded.read("quarantine").num_rows == 2
    assert not list(store.root.glob(".tmp-*"))


def test_same_content_same_output_hash(tmp_path: Path) -> None:
    a = StageStore(tmp_path / "a").save(gen_result(), "k")
    b = StageStore(tmp_path / "b").save(gen_result(), "k2")
    assert a.output_hash == b.output_hash
    res = gen_result()
    res.outputs["candidates"] = res.outputs["candidates"].slice(0, 0)
    res.counts.kept = 0
    res.counts.rows_in -= 1
    c = StageStore(tmp_path / "c").save(res, "k")
    assert c.output_hash != a.output_hash


def test_incomplete_save_is_not_loaded(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    saved = store.save(gen_result(), "k", complete=False)
    assert (saved.path / "candidates.parquet").exists()
    assert not (saved.path / COMPLETE).exists()
    assert store.load("generate", "k") is None
    store.save(gen_result(), "k")  # a rerun overwrites and completes it
    assert store.load("generate", "k") is not None


def test_key_depends_on_every_part() -> None:
    base = StageStore.key("judge", 1, {"a": 1}, ["h1"])
    assert base == StageStore.key("judge", 1, {"a": 1}, ["h1"])
    others = {
        StageStore.key("judge", 2, {"a": 1}, ["h1"]),
        StageStore.key("judge", 1, {"a": 2}, ["h1"]),
        StageStore.key("judge", 1, {"a": 1}, ["h2"]),
        StageStore.key("margins", 1, {"a": 1}, ["h1"]),
    }
    assert base not in others and len(others) == 4


def test_save_checks_the_schema(tmp_path: Path) -> None:
    res = gen_result()
    res.outputs["candidates"] = res.outputs["candidates"].drop_columns(["error"])
    store = StageStore(tmp_path)
    with pytest.raises(SchemaError, match="missing column 'error'"):
        store.save(res, "k")
    assert store.load("generate", "k") is None and not list(store.root.iterdir())


def test_read_casts_loose_types_to_the_declared_schema(tmp_path: Path) -> None:
    saved = StageStore(tmp_path).save(gen_result(), "k")
    t = pq.read_table(saved.path / "candidates.parquet")
    loose = t.set_column(4, "sample_index", t.column("sample_index").cast(pa.int64()))
    pq.write_table(loose, saved.path / "candidates.parquet")
    out = saved.read("candidates")
    assert out.schema.equals(CANDIDATES) and out.equals(gen_result().outputs["candidates"])


def _missing_column(t: pa.Table) -> pa.Table:
    return t.drop_columns(["policy"])


def _null_in_required(t: pa.Table) -> pa.Table:
    loose = pa.schema([f.with_nullable(True) for f in t.schema])
    rows = t.to_pylist()
    rows[0]["policy"] = None
    return pa.Table.from_pylist(rows, schema=loose)


@pytest.mark.parametrize("corrupt", [_missing_column, _null_in_required])
def test_read_rejects_bad_files_with_schema_error(tmp_path: Path, corrupt) -> None:
    saved = StageStore(tmp_path).save(gen_result(), "k")
    t = pq.read_table(saved.path / "candidates.parquet")
    pq.write_table(corrupt(t), saved.path / "candidates.parquet")
    with pytest.raises(SchemaError, match="policy"):
        saved.read("candidates")


def test_read_rejects_bad_files(tmp_path: Path) -> None:
    """Whatever the error type, a corrupted table is never returned."""
    saved = StageStore(tmp_path).save(gen_result(), "k")
    t = pq.read_table(saved.path / "candidates.parquet")
    for corrupt in (_missing_column, _null_in_required):
        pq.write_table(corrupt(t), saved.path / "candidates.parquet")
        with pytest.raises((SchemaError, ValueError, pa.ArrowInvalid)):
            saved.read("candidates")
