"""Prompt dedup (pipeline/hygiene/dedup.py): exact-after-normalisation and near duplicates,
the pairs of a dropped prompt dropped with it, every drop naming its kept twin."""

from __future__ import annotations

import json

import pytest

from pipeline.hygiene.dedup import dedup_prompts, find_duplicates, normalise_text
from pipeline.ingest.stage import ingest_pairs, ingest_prompts

LONG = (
    "Write a short guide for a first-time visitor explaining how to use the metro "
    "system in Lisbon, including tickets, lines and the busiest hours to avoid"
)


def test_normalisation_catches_case_punctuation_and_spacing():
    texts = ["What is 2+2?", "what is 2 + 2", "WHAT   IS 2+2 ?!", "What is 2+3?"]
    out = find_duplicates(texts, near=False)
    assert {i: (r, j) for i, (r, j, _) in out.items()} == {
        1: ("duplicate_prompt", 0),
        2: ("duplicate_prompt", 0),
    }
    assert normalise_text("Ünïcode  ﬁne") == "ünïcode fine"  # NFKC: the ligature


def test_near_duplicates_by_jaccard_and_distinct_short_prompts_kept():
    edited = LONG.replace("busiest", "quietest")  # one word: 3 of 24 shingles change
    other = (
        "Write a short guide for a first-time visitor explaining how to use the tram "
        "network in Prague, including passes, routes and night services"
    )
    texts = [LONG, edited, other, "What is the capital of France?", "What is the capital of Spain?"]
    out = find_duplicates(texts, threshold=0.7, ngram=3)
    assert set(out) == {1}
    reason, twin, sim = out[1]
    assert reason == "near_duplicate" and twin == 0 and 0.7 <= sim < 1.0
    # ("capital of France" vs "of Spain": 3 of 5 shingles shared, 0.6: two questions)
    # the same texts at a stricter threshold: the edit is no longer a duplicate
    assert find_duplicates(texts, threshold=0.95, ngram=3) == {}


def test_near_duplicate_detection_matches_exact_jaccard_on_many_texts():
    """LSH only proposes candidates; whatever it finds is at or above the threshold, and
    with threshold 0.8 it finds the planted one-word edits of long texts."""
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    texts = []
    for _ in range(300):
        words = rng.choices(vocab, k=40)
        texts.append(" ".join(words))
        words[20] = "edited"
        texts.append(" ".join(words))
    out = find_duplicates(texts, threshold=0.8, ngram=3)
    # a one-word edit in the middle of 40 words changes 3 of 38 shingles: Jaccard 35/41
    assert all(r == "near_duplicate" and s >= 0.8 for r, _, s in out.values())
    assert sum(i % 2 == 1 and out[i][1] == i - 1 for i in out) >= 285  # ≥ 95% found
    assert all(i % 2 == 1 for i in out)  # no unrelated text flagged


def test_prompts_file_dedup_accounts_every_row(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "prompt": LONG},
        {"id": "b", "prompt": LONG.upper()},
        {"id": "c", "prompt": LONG.replace("Lisbon", "Porto")},
        {"id": "d", "prompt": "Name a prime number."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ing = ingest_prompts(str(path), limit=None)
    res = dedup_prompts(ing.outputs["prompts"], threshold=0.7)
    assert res.outputs["prompts"].column("source_id").to_pylist() == ["a", "d"]
    drops = {d["source_id"]: d for d in res.dropped.to_pylist()}
    assert drops["b"]["reason"] == "duplicate_prompt" and "source_id a" in drops["b"]["detail"]
    assert drops["c"]["reason"] == "near_duplicate" and "Jaccard" in drops["c"]["detail"]
    c = res.counts.to_dict()
    assert c["in"] == 4 and c["kept"] == 2 and c["in"] == c["kept"] + sum(c["dropped"].values())


def test_pairs_of_a_dropped_prompt_go_with_it(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "p1", "prompt": LONG, "chosen": "Buy a Viva Viagem card.", "rejected": "Walk."},
        {"id": "p2", "prompt": LONG, "chosen": "Avoid 8-9am.", "rejected": "Any time."},
        {"id": "p3", "prompt": LONG + ".", "chosen": "Use line blue.", "rejected": "Taxi."},
        {"id": "p4", "prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ing = ingest_pairs(str(path), limit=None).outputs
    res = dedup_prompts(ing["prompts"], ing["candidates"], ing["votes"])
    # p1 and p2 share one prompt (kept); p3's prompt is the same after normalisation
    assert sorted(d["source_id"] for d in res.dropped.to_pylist()) == ["p3"]
    assert sorted(set(res.outputs["votes"].column("source_id").to_pylist())) == ["p1", "p2", "p4"]
    assert "p3" not in res.outputs["candidates"].column("source_id").to_pylist()
    c = res.counts.to_dict()
    assert c["in"] == 4 and c["kept"] == 3


@pytest.mark.parametrize("texts", [[], ["one"], ["", ""]])
def test_degenerate_inputs(texts):
    out = find_duplicates(texts)
    assert set(out) == ({1} if texts == ["", ""] else set())


def test_short_templated_questions_are_not_near_duplicates():
    """Templated questions are not near duplicates: "…the basics of inflation?" and "…of
    volcanoes?" share 6 of 8 word 3-grams (0.75) but are two questions; below min_words
    only exact duplicates count."""
    texts = [
        "Can you walk me through the basics of inflation?",
        "Can you walk me through the basics of volcanoes?",
        "can you walk me through the basics of INFLATION",
    ]
    out = find_duplicates(texts)
    assert {i: r for i, (r, _, _) in out.items()} == {2: "duplicate_prompt"}
    assert 1 in find_duplicates(texts, min_words=5)  # what the guard prevents


def test_flow_drops_duplicates_before_generation(tmp_path):
    from flows.curate import curate
    from pipeline.store import datasets as store
    from schemas.config import load_config

    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "prompt": LONG},
        {"id": "b", "prompt": LONG.upper() + "!!"},
        {"id": "c", "prompt": LONG.replace("busiest", "quietest")},
        {"id": "d", "prompt": "Name a prime number."},
        {"id": "e", "prompt": "Name a prime number bigger than ten."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
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
        ],
    )
    summary = curate(cfg.model_dump(mode="json"))
    manifest = store.read_manifest(summary["path"])
    assert manifest["stage_order"][:4] == ["ingest", "dedup", "decontaminate", "generate"]
    d = manifest["stages"]["dedup"]
    assert d["in"] == 5 and d["kept"] == 3
    assert d["dropped"] == {"duplicate_prompt": 1, "near_duplicate": 1}
    assert manifest["stages"]["generate"]["in"] == 3 * 2  # no call for a duplicate
    assert summary["calls"]["generate"]["requests"] == 3


def test_drop_prompts_by_columns_matches_source_rows():
    """drop_prompts (polars) drops, in the same order, one row per source row that
    ``source_rows`` (the plain Python reference) lists for each dropped prompt."""
    import random

    import pyarrow as pa

    from pipeline.hygiene.filtering import drop_prompts, source_rows

    schema = pa.schema([("prompt_id", pa.string()), ("source_id", pa.string())])
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(0, 25)

        def table(m):
            return pa.table(
                {
                    "prompt_id": [f"p{rng.randint(0, max(n - 1, 0))}" for _ in range(m)],
                    "source_id": [f"s{rng.randint(0, 8)}" for _ in range(m)],
                },
                schema=schema,
            )

        prompts = pa.table(
            {"prompt_id": [f"p{i}" for i in range(n)], "source_id": [f"s{i}" for i in range(n)]},
            schema=schema,
        )
        cands = table(rng.randint(0, 30) if n else 0) if rng.random() < 0.7 else None
        votes = table(rng.randint(0, 30) if n else 0) if rng.random() < 0.7 else None
        pids = [f"p{i}" for i in range(n)]
        rng.shuffle(pids)
        dropped = {p: ("contaminated", f"why {p}") for p in pids[: rng.randint(0, n)]}
        res = drop_prompts("decontaminate", prompts, cands, votes, dropped, {})
        rows_of = source_rows(prompts, cands, votes)
        want = [
            (sid, pid, reason, detail)
            for pid, (reason, detail) in dropped.items()
            for sid in rows_of[pid]
        ]
        got = [
            (d["source_id"], d["row_id"], d["reason"], d["detail"]) for d in res.dropped.to_pylist()
        ]
        assert got == want
        assert res.counts.rows_in == sum(len(v) for v in rows_of.values())
        assert res.counts.kept == res.counts.rows_in - len(want)
