"""The columnar ingest of pairs files (pipeline/ingest/columnar.py) against the row path:
on fuzzed JSON-lines and Parquet files, the same prompts, candidates and votes, the same
dropped and quarantine rows with the same reasons and details, the same counts — or the
same error."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.stage import ingest_pairs
from schemas.errors import InputError

WORDS = ["alpha", "beta", "gamma", "delta", "é", "日本", "😀", 'q"uote', "back\\slash", "x"]
ODD_TEXTS = [
    "",
    "   ",
    "\xa0pad",
    "pad\u3000",
    "\x1cfs",
    "nul\x00in",
    "tab\tin",
    "line\nbreak",
    " same ",
    "same",
    "\u2028",
    "ok",
]


def _text(rng: random.Random) -> str:
    if rng.random() < 0.12:
        return rng.choice(ODD_TEXTS)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))


def _votes(rng: random.Random):
    r = rng.random()
    if r < 0.2:
        return None
    if r < 0.25:
        return []
    if r < 0.28:
        return json.dumps([{"annotator": "s", "preferred": "chosen"}])  # JSON text
    if r < 0.3:
        return "not a list"
    out = []
    for k in rng.sample(range(6), rng.randint(1, 4)):
        v = {"annotator": f"ann{k}", "preferred": rng.choice(["chosen", "rejected", "tie"])}
        q = rng.random()
        if q < 0.03:
            v["preferred"] = "maybe"
        elif q < 0.05:
            v["annotator"] = "fz"  # the file's own label source
        elif q < 0.07:
            v["annotator"] = " "
        elif q < 0.08:
            v = None
        elif q < 0.09:
            v["preferred"] = None
        out.append(v)
    if rng.random() < 0.05 and out and out[0] is not None:
        out.append(dict(out[0]))  # an annotator twice
    return out


def _row(rng: random.Random, i: int, pool: list[dict]) -> dict:
    if pool and rng.random() < 0.15:  # the same pair again, maybe swapped, maybe new id
        row = dict(rng.choice(pool))
        if rng.random() < 0.5 and "rejected" in row:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        if rng.random() < 0.6:
            row["id"] = f"r{i}"
        return row
    row: dict = {}
    r = rng.random()
    if r < 0.6:
        row["id"] = f"r{i}" if rng.random() < 0.9 else f"r{rng.randint(0, i)}"
    elif r < 0.75:
        row["id"] = i if rng.random() < 0.95 else rng.choice([True, 1.5, "", None, [1]])
    prompts = [p["prompt"] for p in pool if isinstance(p.get("prompt"), str)]
    row["prompt"] = rng.choice(prompts) if prompts and rng.random() < 0.2 else _text(rng)
    if rng.random() < 0.05:
        row["prompt"] = [{"role": rng.choice(["user", "system", "bot"]), "content": _text(rng)}]
    row["chosen"], row["rejected"] = _text(rng), _text(rng)
    if rng.random() < 0.04:
        row["chosen"] = [{"role": "assistant", "content": _text(rng)}]
    if rng.random() < 0.03:
        del row["rejected"]
    v = _votes(rng)
    if v is not None or rng.random() < 0.5:
        row["votes"] = v
    q = rng.random()
    if q < 0.05:
        row["lang"] = rng.choice(["en", "fr"])  # meta
    elif q < 0.07:
        row["answer"] = rng.choice(["42", ""])  # a verifier target
    elif q < 0.08:
        row["messages"] = [{"role": "user", "content": "m"}]
    elif q < 0.09:
        row["tags"] = [None, None]  # a list<null> column (polars does not read it)
    return row


def _line(rng: random.Random, row: dict) -> str:
    r = rng.random()
    if r < 0.02:
        return "{not json"
    if r < 0.03:
        return "[1, 2]"
    if r < 0.04:
        return "   "
    if r < 0.05:
        return json.dumps(row) + " " + json.dumps(row)  # two objects on a line
    if r < 0.06:
        return '{"id": "d", "id": "e", "prompt": "p", "chosen": "a", "rejected": "b"}'
    if r < 0.07:
        return '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'
    if r < 0.075:
        return rng.choice(["null", "5", '{"prompt": "p", "chosen": "a", "rejected": "b"} null'])
    text = json.dumps(row, ensure_ascii=rng.random() < 0.5)
    return text + ("\r" if rng.random() < 0.05 else "")


def _write_jsonl(path: Path, rng: random.Random, n: int) -> None:
    pool: list[dict] = []
    lines = []
    for i in range(n):
        row = _row(rng, i, pool)
        pool.append(row)
        lines.append(_line(rng, row))
    if rng.random() < 0.3:
        lines.insert(rng.randrange(len(lines) + 1), "")
    data = "\n".join(lines) + "\n"
    raw = data.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        raw = b"\xef\xbb\xbf" + raw
    if rng.random() < 0.1:
        raw += b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}\n'  # not UTF-8
    path.write_bytes(raw)


def _outcome(path: Path, columnar: bool, limit):
    try:
        res = ingest_pairs(str(path), columnar=columnar, limit=limit)
    except InputError as exc:
        return ("error", str(exc))
    return (
        {k: t.to_pylist() for k, t in res.outputs.items()},
        res.dropped.to_pylist(),
        res.quarantine.to_pylist(),
        res.counts,
        res.info,
    )


def _compare(path: Path, limit) -> None:
    rows, cols = _outcome(path, False, limit), _outcome(path, True, limit)
    if rows[0] == "error" or cols[0] == "error":
        assert rows == cols
        return
    names = ["outputs", "dropped", "quarantine", "counts"]
    for name, a, b in zip(names, rows, cols):
        assert a == b, f"{path.name} limit={limit}: {name} differ"
    assert {k: v for k, v in rows[4].items()} == cols[4]


@pytest.mark.parametrize("seed", range(12))
def test_jsonl_columnar_and_row_paths_agree_on_fuzzed_files(tmp_path, seed):
    rng = random.Random(seed)
    f = tmp_path / f"fuzz{seed}.jsonl"
    _write_jsonl(f, rng, rng.choice([5, 60, 400]))
    _compare(f, rng.choice([None, None, 0, 3, 25]))


def test_refused_lines_are_found_by_halving(tmp_path, monkeypatch):
    """A chunk pyarrow refuses (one bad line among many, a field whose type changes) is
    split until the refused lines are found; the rest stays on the fast path."""
    from pipeline.ingest import columnar

    monkeypatch.setattr(columnar, "MIN_SPLIT", 4)
    lines = [
        json.dumps({"id": i, "prompt": f"p{i}", "chosen": "a", "rejected": "b"}) for i in range(300)
    ]
    lines[137] = "{broken"
    lines[201] = json.dumps({"id": "s", "prompt": "p", "chosen": "a", "rejected": "b"})
    f = tmp_path / "halve.jsonl"
    f.write_text("\n".join(lines) + "\n")
    calls = []
    real = columnar._row_path
    monkeypatch.setattr(
        columnar, "_row_path", lambda rows, *a: (calls.extend(r.row for r in rows), real(rows, *a))
    )
    _compare(f, None)
    assert 138 in calls and len(calls) < 60, calls


def _parquet_rows(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        row = {
            "id": f"r{i}" if rng.random() < 0.9 else rng.choice(["", f"r{rng.randint(0, i)}"]),
            "prompt": _text(rng),
            "chosen": _text(rng),
            "rejected": _text(rng) if rng.random() < 0.97 else None,
            "votes": None,
            "lang": "en" if rng.random() < 0.05 else None,
        }
        v = _votes(rng)
        if isinstance(v, list):
            row["votes"] = [x for x in v if x is not None]
        out.append(row)
    for _ in range(n // 10):  # the same pair again
        row = dict(rng.choice(out))
        row["id"] = f"d{len(out)}"
        out.insert(rng.randrange(len(out) + 1), row)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_parquet_columnar_and_row_paths_agree_on_fuzzed_files(tmp_path, seed):
    rng = random.Random(100 + seed)
    rows = [r for r in _parquet_rows(rng, rng.choice([40, 300])) if "\x00" not in str(r)]
    f = tmp_path / f"fuzz{seed}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f, row_group_size=64)
    _compare(f, rng.choice([None, 7]))
