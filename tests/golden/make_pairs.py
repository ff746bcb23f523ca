"""Writes ``pairs.jsonl``, the golden run's input (deterministic: seed 7).

    python tests/golden/make_pairs.py

400 preference rows × 5 votes from 12 annotators of mixed reliability (two spammers,
one who always says "chosen"), with the things a real file has: ties, message-list
rows, a row whose chosen and rejected are swapped copies of an earlier one, exact repeats,
integer ids, and a few broken rows (bad JSON, identical sides, an unknown verdict, a
missing field) that the ingest must quarantine. The published rows of this input under
``data/examples/pairs_votes.yaml`` are pinned in ``published.jsonl`` (see
``tests/test_golden.py``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = (
    "the a model answer question river mountain city number because therefore quickly "
    "carefully energy system water light data value result method simple clear wrong right"
).split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def rows(seed: int = 7, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    # P(vote agrees with the truth) per annotator; spammers at 0.5, one always "chosen"
    skill = [0.9, 0.85, 0.8, 0.8, 0.75, 0.7, 0.7, 0.65, 0.6, 0.5, 0.5, None]
    out: list[str] = []
    made: list[dict] = []
    for i in range(n):
        prompt = f"Question {i}: " + _text(rng, 4, 14)
        good, bad = _text(rng, 3, 30), _text(rng, 3, 30)
        if good == bad:
            bad += " Not quite."
        label_right = rng.random() < 0.75  # the file's own label is right 75% of the time
        chosen, rejected = (good, bad) if label_right else (bad, good)
        votes = []
        for a in rng.sample(range(len(skill)), 5):
            p = skill[a]
            if p is None:
                pref = "chosen"
            elif rng.random() < 0.08:
                pref = "tie"
            else:
                right = rng.random() < p
                pref = "chosen" if right == label_right else "rejected"
            votes.append({"annotator": f"ann_{a:02d}", "preferred": pref})
        row: dict = {"id": f"g-{i:04d}" if i % 10 else i, "prompt": prompt}
        if i % 7 == 0:  # messages format, with a system turn on some
            turns = [{"role": "user", "content": prompt}]
            if i % 14 == 0:
                turns.insert(0, {"role": "system", "content": "Answer briefly."})
            row["prompt"] = turns
            row["chosen"] = [{"role": "assistant", "content": chosen}]
            row["rejected"] = [{"role": "assistant", "content": rejected}]
        else:
            row["chosen"], row["rejected"] = chosen, rejected
        row["votes"] = votes
        made.append(row)
        out.append(json.dumps(row))
        if i % 50 == 25:  # the same pair again, sides swapped, new id and votes
            twin = dict(made[i - 3], id=f"swap-{i}")
            twin["chosen"], twin["rejected"] = twin["rejected"], twin["chosen"]
            twin["votes"] = [{"annotator": "ann_00", "preferred": "rejected"}]
            out.append(json.dumps(twin))
        if i % 80 == 40:  # an exact repeat of the row with a new id
            out.append(json.dumps(dict(row, id=f"rep-{i}")))
    out.insert(17, '{"id": "broken-json", "prompt": "x", "chosen": ')
    out.insert(60, json.dumps({"id": "same", "prompt": "p", "chosen": "same", "rejected": "same"}))
    out.insert(
        90,
        json.dumps(
            {
                "id": "bad-vote",
                "prompt": "p2",
                "chosen": "yes",
                "rejected": "no",
                "votes": [{"annotator": "x", "preferred": "maybe"}],
            }
        ),
    )
    out.insert(130, json.dumps({"id": "no-rejected", "prompt": "p3", "chosen": "only"}))
    dup_id = {"id": "g-0011", "prompt": "dup id", "chosen": "c", "rejected": "r"}
    out.insert(200, json.dumps(dup_id))
    return out


if __name__ == "__main__":
    (HERE / "pairs.jsonl").write_text("\n".join(rows()) + "\n")
