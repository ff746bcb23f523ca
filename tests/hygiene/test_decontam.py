"""Benchmark decontamination (pipeline/hygiene/decontam.py): MT-Bench / HumanEval copies
with light edits found, clean prompts untouched, every drop naming the matched item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.hygiene.decontam import (
    BenchmarkItem,
    decontaminate,
    load_benchmark_file,
    load_shipped,
)
from pipeline.ingest.stage import ingest_pairs, ingest_prompts
from schemas.errors import InputError


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shipped_benchmarks_load_from_their_wheels():
    mt, he = load_shipped("mtbench"), load_shipped("humaneval")
    assert len(mt) == 160 and mt[0].item_id == "81/turn1"  # 80 questions, two turns each
    assert len(he) == 164 and he[0].item_id == "HumanEval/0"
    with pytest.raises(InputError, match="unknown shipped benchmark"):
        load_shipped("mmlu")


def test_lightly_edited_mtbench_questions_are_dropped_and_clean_ones_kept(tmp_path):
    mt = load_shipped("mtbench")
    q81 = mt[0].text  # "Compose an engaging travel blog post about a recent trip to Hawaii…"
    long_q = max(mt, key=lambda it: len(it.text.split()))
    edited = long_q.text.replace(".", "!", 1)
    words = edited.split()
    words[len(words) // 2] = "EDITED"  # one word changed in the middle
    rows = [
        {"id": "copy", "prompt": "Please: " + q81},
        {"id": "edit", "prompt": " ".join(words)},
        {"id": "clean", "prompt": "Explain how tides work, for a ten-year-old."},
        {"id": "clean2", "prompt": "Write a blog post about a trip."},
    ]
    ing = ingest_prompts(str(write(tmp_path / "p.jsonl", rows)), limit=None).outputs
    res = decontaminate(ing["prompts"], benchmarks=mt, ngram=8)
    assert sorted(res.outputs["prompts"].column("source_id").to_pylist()) == ["clean", "clean2"]
    drops = {d["source_id"]: d for d in res.dropped.to_pylist()}
    assert set(drops) == {"copy", "edit"}
    assert drops["copy"]["reason"] == "contaminated"
    assert "mtbench item 81/turn1" in drops["copy"]["detail"]
    assert f"mtbench item {long_q.item_id}" in drops["edit"]["detail"]
    assert res.info["contaminated"] == {"mtbench": 2}
    c = res.counts.to_dict()
    assert c["in"] == 4 == c["kept"] + sum(c["dropped"].values())


def test_a_file_without_benchmark_text_loses_nothing(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Give me {i} tips for growing tomatoes on a balcony in a windy city.",
        }
        for i in range(30)
    ]
    ing = ingest_prompts(str(write(tmp_path / "p.jsonl", rows)), limit=None).outputs
    res = decontaminate(
        ing["prompts"], benchmarks=load_shipped("mtbench") + load_shipped("humaneval")
    )
    assert res.dropped.num_rows == 0 and res.outputs["prompts"].num_rows == 30


def test_a_pairs_file_and_a_user_benchmark(tmp_path):
    bench = write(
        tmp_path / "bench.jsonl",
        [
            {
                "id": "b1",
                "question": "A train leaves the station at nine travelling at sixty "
                "miles per hour towards a city two hundred miles away",
            }
        ],
    )
    items = load_benchmark_file("trains", str(bench))
    assert items == [BenchmarkItem("trains", "b1", items[0].text)]
    pairs = write(
        tmp_path / "pairs.jsonl",
        [
            {
                "id": "p1",
                "prompt": "a train leaves the station at nine, travelling at sixty miles "
                "per hour towards a city two hundred miles away. When?",
                "chosen": "At 12:20.",
                "rejected": "At noon.",
            },
            {"id": "p2", "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
        ],
    )
    ing = ingest_pairs(str(pairs), limit=None).outputs
    res = decontaminate(ing["prompts"], ing["candidates"], ing["votes"], benchmarks=items)
    assert [d["source_id"] for d in res.dropped.to_pylist()] == ["p1"]
    assert set(res.outputs["votes"].column("source_id").to_pylist()) == {"p2"}
    assert set(res.outputs["candidates"].column("source_id").to_pylist()) == {"p2"}


def test_bad_benchmark_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_benchmark_file("x", str(tmp_path / "nope.jsonl"))
    bad = write(tmp_path / "bad.jsonl", [{"id": 1, "answer": "42"}])
    with pytest.raises(InputError, match="row 1: no 'prompt'"):
        load_benchmark_file("x", str(bad))


def _fake_prompts_run(tmp_path, path, *extra):
    from flows.curate import curate
    from pipeline.store import datasets as store
    from schemas.config import load_config

    m = "generate.policies.0.model"
    cfg = load_config(
        None,
        [
            f"data_root={tmp_path / 'd'}",
            f"input.path={path}",
            "input.limit=null",
            f"{m}.engine=fake",
            f"{m}.model=fake",
            "generate.policies.0.n=2",
            "judge.judges=[]",
            "rubrics.judges=[]",
            "verify.enabled=false",
            "embed.enabled=false",
            *extra,
        ],
    )
    summary = curate(cfg.model_dump(mode="json"))
    return summary, store.read_manifest(summary["path"])


def test_flow_drops_a_copied_benchmark_question_before_generation(tmp_path):
    he = load_shipped("humaneval")[3].text
    path = write(
        tmp_path / "p.jsonl",
        [
            {"id": "copy", "prompt": "Complete this function:\n" + he},
            {"id": "ok", "prompt": "Explain how a bicycle gear works."},
        ],
    )
    summary, manifest = _fake_prompts_run(tmp_path, path)
    assert manifest["stage_order"][:4] == ["ingest", "dedup", "decontaminate", "generate"]
    st = manifest["stages"]["decontaminate"]
    assert st["in"] == 2 and st["kept"] == 1 and st["dropped"] == {"contaminated": 1}
    info = manifest["stage_info"]["decontaminate"]
    assert info["contaminated"] == {"humaneval": 1} and set(info["benchmarks"]) == {
        "mtbench",
        "humaneval",
    }
    assert summary["calls"]["generate"]["requests"] == 1  # no call for the copied question
    html = (Path(summary["path"]) / "report.html").read_text("utf-8")
    assert "Hygiene" in html and "humaneval" in html


def test_the_input_is_never_checked_against_itself(tmp_path):
    summary, manifest = _fake_prompts_run(tmp_path, "mtbench:3")
    info = manifest["stage_info"]["decontaminate"]
    assert info["skipped"] == ["mtbench (the input's own source)"]
    assert manifest["stages"]["decontaminate"]["kept"] == 3
    html = (Path(summary["path"]) / "report.html").read_text("utf-8")
    assert "the input&#x27;s own source" in html or "the input's own source" in html


def test_the_column_prefilter_drops_exactly_what_match_finds():
    """decontaminate passes only the texts holding an index n-gram to ``match``; on
    prompts mixing benchmark fragments (recased, repunctuated, non-ASCII around them)
    with other text, it drops exactly the prompts ``match`` flags when run on all."""
    import random

    from pipeline import conversation
    from pipeline.hygiene.decontam import build_index, decontaminate, match
    from schemas.tables import PROMPTS, from_rows

    items = load_shipped("mtbench") + load_shipped("humaneval")
    rng = random.Random(5)
    words = [w for it in items[:40] for w in it.text.split()]
    rows = []
    for i in range(600):
        src = rng.choice(items).text.split()
        start = rng.randrange(max(1, len(src) - 14))
        frag = src[start : start + rng.choice([5, 12, 13, 20])]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))
        if rng.random() < 0.5:
            text += " " + " ".join(frag)
        r = rng.random()
        if r < 0.2:
            text = text.upper()
        elif r < 0.3:
            text = text.replace(" ", ",  ")
        elif r < 0.4:
            text = "Ünïcode — " + text + " “quoted”"
        msgs = [{"role": "user", "content": text}]
        if rng.random() < 0.1:
            msgs.insert(0, {"role": "system", "content": " ".join(frag)})
        rows.append(
            {
                "prompt_id": f"p{i}",
                "source_id": f"s{i}",
                "prompt": msgs,
                "source": "t",
                "meta": None,
            }
        )
    prompts = from_rows(rows, PROMPTS, "prompts")
    index = build_index(items, 13)
    want = {
        r["prompt_id"]
        for r in rows
        if match(conversation.contents(r["prompt"]), index, 13) is not None
    }
    res = decontaminate(prompts, benchmarks=items, ngram=13)
    got = {d["row_id"] for d in res.dropped.to_pylist()}
    assert got == want and 30 < len(want) < 570, len(want)
