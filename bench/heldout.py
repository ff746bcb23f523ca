"""Held-out check of the default curation on multi-annotator pairs files.

An independent check: the generators below are written from scratch (nothing is imported
from, or shares code with, ``bench/scenarios.py`` / ``bench/noise_matrix.py``), the files
are curated by the real command line (``prefcurate run``, every key at its default except
the input, ``judge.judges=[]`` and ``data_root``), and the published dataset is read back
from disk and scored against the generator's truth.

Usage::

    .venv/bin/python bench/heldout.py                 # both sets, seed 0, 1,500 pairs each
    .venv/bin/python bench/heldout.py --seeds 3       # mean over seeds 0, 1, 2
    .venv/bin/python bench/heldout.py --json          # one JSON document on stdout
    .venv/bin/python bench/heldout.py --sets B --pairs 500 --seed 7 --skip-product

Flags: ``--pairs N`` (1500) pairs a set; ``--seed S`` (0) first seed; ``--seeds K`` (1)
seeds S..S+K-1, figures averaged; ``--sets A,B``; ``--skip-product`` (reference methods
only); ``--keep DIR`` (write the pairs files and the product's data_root under DIR and
keep them); ``--timeout`` (600 s) per product run; ``--json``. Logs go to stderr.

Texts (both sets)
-----------------
Every pair has a distinct prompt (one of 10 question templates × 40 topics × 8 audience
or context phrases, drawn without replacement) and two distinct responses assembled from
an opener (often empty), 1–9 sentences drawn from 14 templates filled with the topic's own
nouns and generic fillers, sometimes a 2–4-item bullet list, and a closer (often empty).
Response lengths therefore range from ~50 to ~1,000 characters. The two responses of a
pair never have the same length in characters; "longer" below means more characters.
Which response is truly better is the generator's truth; nothing in the text reveals it
except, in set B, its length (below).

Set A — static annotators, copied labels
----------------------------------------
* Exactly round(0.30·N) pairs, drawn at random, have a wrong file label (``chosen`` is the
  truly worse response). Lengths carry no information (the better response is either of
  the two independently generated texts).
* 10 annotators ``w00``..``w09``; each pair gets 5 of them, without replacement, uniformly.
* ``w00`` adversarial, accuracy 0.30; ``w01`` random, 0.50; ``w02`` copies the file's label
  (always votes ``chosen``, never ties); ``w03``..``w09`` honest with accuracies 0.65, 0.69,
  0.73, 0.77, 0.81, 0.85, 0.90.
* Every annotator except ``w02`` votes ``tie`` with probability 0.05; otherwise it prefers
  the truly better response with its accuracy.

Set B — instance-dependent noise, sparse votes
----------------------------------------------
* Each pair has a latent gap g ~ Exponential(1). Its file label is wrong with probability
  m(g) = 0.5·exp(−g/1.0833) (E m(g) = 0.26: 26% wrong labels in expectation; 0.5 on
  indistinguishable pairs). The better response is the longer one with probability 0.6,
  independently of everything else.
* 15 annotators ``w00``..``w14``; each pair gets 3 of them, without replacement.
* "Honest" behaviour with base accuracy a: tie with probability t(g) = 0.15·exp(−g/0.5);
  otherwise the truly better response with probability acc(g) = 0.5 + (a − 0.5)·(1 −
  exp(−g/0.5)) — at chance on close pairs for everyone.
* ``w00``, ``w01`` follow the file's label: with probability 0.7 they vote ``chosen``,
  otherwise they behave honestly with a = 0.80. ``w02`` always prefers the longer response
  (never ties). ``w03``..``w14`` are honest with a = 0.60, 0.63, …, 0.93, 0.95
  (``linspace(0.60, 0.95, 12)``).
* The Bayes-optimal posterior q* = P(label right | votes, which response is longer) is
  computed from exactly these parameters: for r ∈ {right, wrong}, ∫ p(g) · P(r | g) ·
  P(longer side | r) · Π_votes P(vote | r, g) dg, with g integrated by the midpoint rule on
  u = 1 − exp(−g) (4,000 nodes, exact for the Exponential(1) density). The length picker's
  vote is then certain (factor 1): its information is the length itself, which every method
  could read from the file.

Methods (each gives keep / flip / drop per pair)
------------------------------------------------
1. ``majority``: the file's label as one ``chosen`` vote plus the annotators' votes (a tie
   vote counts for neither side): flip if ``rejected`` has more, drop an exact tie.
2. ``dawid-skene``: one-pass full-confusion Dawid–Skene, maximum likelihood, no prior
   (``pipeline.aggregate.em.fit_dawid_skene``), the file's label as one more annotator, in a
   per-pair random a/b frame (like the product's content-hash order; the label then votes
   a or b), ties as the non-class label 2; q = P(label's side better).
   ``dawid-skene (c/r frame)``: the same fit with class 0 = ``chosen`` for every pair: the
   label is then a constant vote that carries nothing, π estimates the clean share, and an
   annotator that always votes ``chosen`` is as uninformative as the label.
   Decision: flip if q < 0.3, drop if q < 0.7, else keep.
3. ``bayes-optimal`` (set B): the same rule on q*.
4. ``prefcurate default``: ``prefcurate run --set input.kind=pairs --set input.path=FILE
   --set 'judge.judges=[]' --set input.limit=null --set data_root=TMP/data --json``. The
   published ``data.parquet`` is mapped back by ``source_id`` (the input ``id``); a pair
   whose published ``chosen_policy`` is ``given:rejected`` was flipped; a pair not
   published was dropped (reasons from ``dropped.parquet``).

Figures: ``accuracy`` = over published pairs (kept or flipped), the share whose final
``chosen`` is truly better; ``F1`` = flagged (flipped or dropped) vs truly wrong labels;
``clean kept`` = share of truly clean pairs published unchanged; ``kept`` = share of pairs
published.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.aggregate.em import fit_dawid_skene  # noqa: E402

log = logging.getLogger("bench.heldout")

KEEP, FLIP, DROP = 0, 1, 2
FLIP_BELOW, DROP_BELOW = 0.3, 0.7

# ---------------------------------------------------------------- generator parameters
A_WRONG = 0.30
A_VOTES = 5
A_ACC = [0.30, 0.50, None, 0.65, 0.69, 0.73, 0.77, 0.81, 0.85, 0.90]  # None: label copier
A_ROLES = ["adversarial 0.30", "random 0.50", "label copier"] + [
    f"honest {a:.2f}" for a in A_ACC[3:]
]
A_TIE = 0.05

B_VOTES = 3
B_GAP_SCALE = 1.0  # g ~ Exponential(1)
B_MIS_MAX, B_MIS_SCALE = 0.5, 1.0833  # m(g) = 0.5 exp(-g / 1.0833); E m = 0.26
B_ACC_SCALE = 0.5  # acc(g) = 0.5 + (a - 0.5)(1 - exp(-g / 0.5))
B_TIE_MAX, B_TIE_SCALE = 0.15, 0.5  # t(g) = 0.15 exp(-g / 0.5)
B_LONG_BETTER = 0.6
B_COPY, B_COPIER_ACC = 0.7, 0.80
B_HONEST = np.linspace(0.60, 0.95, 12)
B_N = 15  # w00, w01 copiers; w02 length picker; w03..w14 honest
B_ROLES = ["label follower (0.7)", "label follower (0.7)", "longer-response picker"] + [
    f"honest {a:.2f}" for a in B_HONEST
]
B_GRID = 4000

# ---------------------------------------------------------------- text generator
TOPICS = [
    ("photosynthesis", ["chlorophyll", "sunlight", "carbon dioxide", "glucose"]),
    ("compound interest", ["the principal", "the interest rate", "time", "monthly deposits"]),
    ("sourdough baking", ["the starter", "hydration", "proofing time", "oven temperature"]),
    (
        "password managers",
        ["the master password", "encryption", "browser extensions", "two-factor codes"],
    ),
    ("plate tectonics", ["the mantle", "subduction zones", "fault lines", "earthquakes"]),
    ("container gardening", ["drainage", "potting mix", "watering", "root space"]),
    (
        "binary search",
        ["a sorted array", "the midpoint", "the search interval", "off-by-one errors"],
    ),
    ("marathon training", ["long runs", "recovery days", "pacing", "hydration"]),
    ("vaccines", ["the immune system", "antibodies", "booster doses", "herd immunity"]),
    ("inflation", ["prices", "wages", "central banks", "interest rates"]),
    ("git branching", ["feature branches", "merge conflicts", "rebasing", "pull requests"]),
    ("sleep hygiene", ["screen time", "caffeine", "a regular schedule", "bedroom light"]),
    (
        "the French Revolution",
        ["the Estates-General", "bread prices", "the monarchy", "the Terror"],
    ),
    ("electric cars", ["battery capacity", "charging speed", "range", "running costs"]),
    ("public speaking", ["preparation", "eye contact", "pacing", "nerves"]),
    ("composting", ["green waste", "brown waste", "moisture", "turning the pile"]),
    ("black holes", ["the event horizon", "gravity", "accretion disks", "Hawking radiation"]),
    ("unit testing", ["test fixtures", "assertions", "mocking", "edge cases"]),
    ("meal prepping", ["batch cooking", "storage containers", "portion sizes", "food safety"]),
    ("the water cycle", ["evaporation", "condensation", "precipitation", "groundwater"]),
    ("negotiating a salary", ["market data", "the first offer", "benefits", "timing"]),
    ("SQL joins", ["inner joins", "left joins", "foreign keys", "null values"]),
    ("learning a language", ["vocabulary", "listening practice", "grammar", "speaking partners"]),
    ("home insulation", ["loft insulation", "draught proofing", "heat loss", "energy bills"]),
    ("the immune response", ["white blood cells", "inflammation", "fever", "memory cells"]),
    ("budgeting", ["fixed costs", "an emergency fund", "variable spending", "savings goals"]),
    ("neural networks", ["weights", "the loss function", "gradient descent", "overfitting"]),
    ("coffee brewing", ["grind size", "water temperature", "brew time", "the coffee ratio"]),
    ("climate change", ["greenhouse gases", "sea levels", "carbon emissions", "feedback loops"]),
    (
        "job interviews",
        ["research on the company", "example answers", "questions to ask", "follow-up emails"],
    ),
    ("recursion", ["the base case", "the call stack", "the recursive step", "stack overflows"]),
    ("bird migration", ["day length", "magnetic fields", "stopover sites", "fat reserves"]),
    ("houseplant care", ["light levels", "overwatering", "humidity", "repotting"]),
    ("the Roman Empire", ["the legions", "roads", "the Senate", "taxation"]),
    ("cybersecurity basics", ["phishing", "software updates", "backups", "strong passwords"]),
    ("statistics", ["the sample size", "the mean", "variance", "confidence intervals"]),
    ("cycling to work", ["a safe route", "bike maintenance", "visibility", "weather"]),
    ("volcanoes", ["magma", "the crater", "ash clouds", "lava flows"]),
    ("time management", ["priorities", "deadlines", "distractions", "a weekly review"]),
    ("solar panels", ["panel orientation", "inverters", "feed-in tariffs", "shading"]),
]
PROMPTS = [
    "Explain how {t} works{c}.",
    "What are the main advantages and drawbacks of {t}{c}?",
    "Give me a few practical tips about {t}{c}.",
    "Why does {t} matter{c}?",
    "I'm struggling with {t}. Where should I start{c}?",
    "Summarise the key ideas behind {t}{c}.",
    "What do people most often get wrong about {t}{c}?",
    "Can you walk me through the basics of {t}{c}?",
    "How would you teach {t}{c}?",
    "Write a short explanation of {t}{c}, with one concrete example.",
]
CONTEXTS = [
    "",
    " to a complete beginner",
    " for a ten-year-old",
    " in under 150 words",
    " for a busy professional",
    " as if I were a first-year student",
    " in plain English",
    " with a focus on everyday life",
]
OPENERS = [
    "",
    "",
    "",
    "Sure! ",
    "Good question. ",
    "Here is a short answer. ",
    "Let me break it down. ",
    "In short: ",
]
CLOSERS = [
    "",
    "",
    "",
    " Hope this helps.",
    " Let me know if you want more detail.",
    " Happy to expand on any of these points.",
]
SENTENCES = [
    "{T} is best understood as a process in which {n1} interacts with {n2}.",
    "A common mistake is to assume that {n1} alone determines the outcome.",
    "In practice, start by looking at {n1}, then check how it affects {n2}.",
    "For example, a small change in {n1} can have a surprisingly large effect on {n2}.",
    "Most experts agree that {n1} matters more than beginners expect.",
    "Keep in mind that the details depend on {f}.",
    "Overall, {t} rewards patience and careful attention to {n2}.",
    "It helps to think of {n1} as the starting point and {n2} as the result.",
    "If you only remember one thing, remember that {n1} and {n2} are linked.",
    "People often overlook {n2}, even though it shapes most of what happens.",
    "A useful rule of thumb is to change one thing at a time, starting with {n1}.",
    "The evidence here is mixed, especially when it comes to {n2}.",
    "Books and courses on {t} usually begin with {n1} for a good reason.",
    "Once {n1} is under control, {n2} tends to follow.",
]
FILLERS = [
    "your goals",
    "the context",
    "local conditions",
    "how much time you have",
    "the season",
    "your budget",
    "the scale of the problem",
    "who you ask",
]


def _response(rng: np.random.Generator, topic: str, nouns: list[str]) -> str:
    parts = [OPENERS[rng.integers(len(OPENERS))]]
    k = int(min(9, rng.geometric(0.3) + rng.integers(0, 2)))
    idx = rng.choice(len(SENTENCES), size=min(k, len(SENTENCES)), replace=False)
    body = []
    for i in idx:
        n1, n2 = rng.choice(len(nouns), size=2, replace=False)
        s = SENTENCES[i].format(
            t=topic,
            T=topic[0].upper() + topic[1:],
            n1=nouns[n1],
            n2=nouns[n2],
            f=FILLERS[rng.integers(len(FILLERS))],
        )
        body.append(s)
    parts.append(" ".join(body))
    if rng.random() < 0.25:
        m = int(rng.integers(2, 5))
        items = rng.choice(len(nouns), size=m, replace=False)
        parts.append(
            "\n\nKey points:\n"
            + "\n".join(f"- {nouns[j][0].upper() + nouns[j][1:]}" for j in items)
        )
    parts.append(CLOSERS[rng.integers(len(CLOSERS))])
    return "".join(parts).strip()


def make_texts(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], list[str]]:
    """n distinct prompts and two distinct responses each (all responses distinct, the two
    of a pair of different lengths)."""
    combos = len(PROMPTS) * len(TOPICS) * len(CONTEXTS)
    if n > combos:
        raise ValueError(f"at most {combos} pairs")
    pick = rng.choice(combos, size=n, replace=False)
    prompts, r1, r2, seen = [], [], [], set()
    for code in pick:
        p, rest = divmod(int(code), len(TOPICS) * len(CONTEXTS))
        ti, ci = divmod(rest, len(CONTEXTS))
        topic, nouns = TOPICS[ti]
        prompts.append(PROMPTS[p].format(t=topic, c=CONTEXTS[ci]))
        while True:
            x = _response(rng, topic, nouns)
            y = _response(rng, topic, nouns)
            if x != y and len(x) != len(y) and x not in seen and y not in seen:
                break
        seen.update((x, y))
        r1.append(x)
        r2.append(y)
    return prompts, r1, r2


# ---------------------------------------------------------------- generators
def _rows(ids, prompts, chosen, rejected, votes) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "prompt": p,
            "chosen": c,
            "rejected": r,
            "votes": [{"annotator": a, "preferred": v} for a, v in vs],
        }
        for i, p, c, r, vs in zip(ids, prompts, chosen, rejected, votes)
    ]


def gen_set_a(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0xA])
    prompts, better, worse = make_texts(rng, n)
    wrong = np.zeros(n, dtype=bool)
    wrong[rng.choice(n, size=int(round(A_WRONG * n)), replace=False)] = True
    votes = []
    for i in range(n):
        vs = []
        for j in rng.choice(len(A_ACC), size=A_VOTES, replace=False):
            acc = A_ACC[j]
            if acc is None:
                v = "chosen"
            elif rng.random() < A_TIE:
                v = "tie"
            else:
                says_better = rng.random() < acc
                v = "chosen" if says_better != wrong[i] else "rejected"
            vs.append((f"w{j:02d}", v))
        votes.append(vs)
    chosen = [w if wr else b for b, w, wr in zip(better, worse, wrong)]
    rejected = [b if wr else w for b, w, wr in zip(better, worse, wrong)]
    ids = [f"A{seed}-{i:05d}" for i in range(n)]
    return {
        "name": "A",
        "ids": ids,
        "wrong": wrong,
        "votes": votes,
        "n_annot": len(A_ACC),
        "roles": {f"w{j:02d}": r for j, r in enumerate(A_ROLES)},
        "rows": _rows(ids, prompts, chosen, rejected, votes),
        "chosen_longer": np.array([len(c) > len(r) for c, r in zip(chosen, rejected)]),
    }


def _b_acc(a: float | np.ndarray, g: np.ndarray) -> np.ndarray:
    return 0.5 + (a - 0.5) * (1.0 - np.exp(-g / B_ACC_SCALE))


def _b_tie(g: np.ndarray) -> np.ndarray:
    return B_TIE_MAX * np.exp(-g / B_TIE_SCALE)


def _b_mis(g: np.ndarray) -> np.ndarray:
    return B_MIS_MAX * np.exp(-g / B_MIS_SCALE)


def gen_set_b(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0xB])
    prompts, x, y = make_texts(rng, n)
    g = rng.exponential(B_GAP_SCALE, size=n)
    wrong = rng.random(n) < _b_mis(g)
    long_better = rng.random(n) < B_LONG_BETTER
    better, worse = [], []
    for xi, yi, lb in zip(x, y, long_better):
        lo, sh = (xi, yi) if len(xi) > len(yi) else (yi, xi)
        better.append(lo if lb else sh)
        worse.append(sh if lb else lo)
    chosen = [w if wr else b for b, w, wr in zip(better, worse, wrong)]
    rejected = [b if wr else w for b, w, wr in zip(better, worse, wrong)]
    chosen_longer = np.array([len(c) > len(r) for c, r in zip(chosen, rejected)])

    def honest(i: int, a: float) -> str:
        if rng.random() < _b_tie(g[i]):
            return "tie"
        says_better = rng.random() < _b_acc(a, g[i])
        return "chosen" if says_better != wrong[i] else "rejected"

    votes = []
    for i in range(n):
        vs = []
        for j in rng.choice(B_N, size=B_VOTES, replace=False):
            if j in (0, 1):
                v = "chosen" if rng.random() < B_COPY else honest(i, B_COPIER_ACC)
            elif j == 2:
                v = "chosen" if chosen_longer[i] else "rejected"
            else:
                v = honest(i, float(B_HONEST[j - 3]))
            vs.append((f"w{j:02d}", v))
        votes.append(vs)
    ids = [f"B{seed}-{i:05d}" for i in range(n)]
    return {
        "name": "B",
        "ids": ids,
        "wrong": wrong,
        "votes": votes,
        "n_annot": B_N,
        "roles": {f"w{j:02d}": r for j, r in enumerate(B_ROLES)},
        "gap": g,
        "rows": _rows(ids, prompts, chosen, rejected, votes),
        "chosen_longer": chosen_longer,
    }


def oracle_b(data: dict[str, Any]) -> np.ndarray:
    """Bayes-optimal q* = P(label right | votes, which side is longer), set B's model."""
    u = (np.arange(B_GRID) + 0.5) / B_GRID
    g = -np.log1p(-u) * B_GAP_SCALE  # midpoint rule: p(g) dg = du
    acc_h = _b_acc(B_HONEST[:, None], g[None, :])  # (12, G)
    acc_c = _b_acc(B_COPIER_ACC, g)
    t = _b_tie(g)
    mis = _b_mis(g)
    n = len(data["ids"])
    # log-likelihood over the grid for r = right (1) and r = wrong (0)
    ll = {1: np.tile(np.log1p(-mis), (n, 1)), 0: np.tile(np.log(mis), (n, 1))}
    cl = data["chosen_longer"]
    ll[1] += np.where(cl, np.log(B_LONG_BETTER), np.log(1 - B_LONG_BETTER))[:, None]
    ll[0] += np.where(cl, np.log(1 - B_LONG_BETTER), np.log(B_LONG_BETTER))[:, None]

    def p_honest(v: str, r: int, acc: np.ndarray) -> np.ndarray:
        if v == "tie":
            return t
        p_chosen_better = acc if r == 1 else 1.0 - acc
        return (1.0 - t) * (p_chosen_better if v == "chosen" else 1.0 - p_chosen_better)

    for i, vs in enumerate(data["votes"]):
        for name, v in vs:
            j = int(name[1:])
            if j == 2:
                continue  # certain given which side is longer
            for r in (0, 1):
                if j in (0, 1):
                    p = (1 - B_COPY) * p_honest(v, r, acc_c)
                    if v == "chosen":
                        p = p + B_COPY
                else:
                    p = p_honest(v, r, acc_h[j - 3])
                ll[r][i] += np.log(p)
    top = np.maximum(ll[1].max(axis=1), ll[0].max(axis=1))[:, None]
    s1 = np.exp(ll[1] - top).sum(axis=1)
    s0 = np.exp(ll[0] - top).sum(axis=1)
    return s1 / (s1 + s0)


# ---------------------------------------------------------------- reference methods
def decide(q: np.ndarray) -> np.ndarray:
    return np.where(q < FLIP_BELOW, FLIP, np.where(q < DROP_BELOW, DROP, KEEP))


def majority(data: dict[str, Any]) -> np.ndarray:
    out = np.empty(len(data["ids"]), dtype=np.int64)
    for i, vs in enumerate(data["votes"]):
        c = 1 + sum(v == "chosen" for _, v in vs)
        r = sum(v == "rejected" for _, v in vs)
        out[i] = FLIP if r > c else DROP if r == c else KEEP
    return out


def dawid_skene(data: dict[str, Any], seed: int, frame: str = "ab") -> np.ndarray:
    """q = P(label right) from one-pass ML Dawid–Skene, label = annotator ``n_annot``."""
    n, w_label = len(data["ids"]), data["n_annot"]
    if frame == "ab":  # chosen is candidate a (class 0) or b (class 1), at random
        side = np.random.default_rng([seed, 0xF]).integers(0, 2, size=n)
    else:
        side = np.zeros(n, dtype=np.int64)
    item, annot, label = [], [], []
    for i, vs in enumerate(data["votes"]):
        item.append(i)
        annot.append(w_label)
        label.append(side[i])
        for name, v in vs:
            item.append(i)
            annot.append(int(name[1:]))
            label.append(2 if v == "tie" else side[i] if v == "chosen" else 1 - side[i])
    res = fit_dawid_skene(
        np.array(item),
        np.array(annot),
        np.array(label),
        n_items=n,
        n_annotators=w_label + 1,
        n_classes=2,
        n_labels=3,
    )
    return res.posterior[np.arange(n), side]


# ---------------------------------------------------------------- the product
def run_product(data: dict[str, Any], workdir: Path, timeout: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    f = workdir / f"heldout_{data['name']}.jsonl"
    with f.open("w", encoding="utf-8") as fh:
        for row in data["rows"]:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    root = workdir / "data"
    exe = REPO / ".venv" / "bin" / "prefcurate"
    cmd = [
        str(exe if exe.exists() else "prefcurate"),
        "run",
        "--set",
        "input.kind=pairs",
        "--set",
        f"input.path={f}",
        "--set",
        "judge.judges=[]",
        "--set",
        "input.limit=null",
        "--set",
        f"data_root={root}",
        "--json",
    ]
    log.info("set %s: %s", data["name"], " ".join(cmd))
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"prefcurate run exited {p.returncode}: {p.stderr[-2000:]}")
    summary = json.loads(p.stdout)
    vdir = Path(summary["path"])
    pub = pq.read_table(
        vdir / "data.parquet",
        columns=["source_id", "chosen_policy", "flipped", "decision", "label_status"],
    ).to_pylist()
    manifest = json.loads((vdir / "manifest.json").read_text())
    dropped = pq.read_table(vdir / "dropped.parquet").to_pylist()
    quarantine = pq.read_table(vdir / "quarantine.parquet").to_pylist()

    index = {sid: i for i, sid in enumerate(data["ids"])}
    dec = np.full(len(index), DROP, dtype=np.int64)
    unknown, inconsistent = 0, 0
    for r in pub:
        i = index.get(r["source_id"])
        if i is None:
            unknown += 1
            continue
        flipped = r["chosen_policy"] == "given:rejected"
        inconsistent += flipped != bool(r["flipped"])
        dec[i] = FLIP if flipped else KEEP
    agg = manifest.get("stage_info", {}).get("aggregate", {})
    rel = agg.get("annotator_reliability", {})
    info = {
        "seconds_wall": round(wall, 1),
        "seconds_run": summary.get("seconds"),
        "version_path": str(vdir),
        "published": len(pub),
        "unmapped_published_rows": unknown,
        "flipped_column_mismatch": inconsistent,
        "stages": {
            k: {
                "in": v["in"],
                "kept": v["kept"],
                "dropped": v["dropped"],
                "quarantined": v["quarantined"],
            }
            for k, v in summary.get("stages", {}).items()
        },
        "dropped_reasons": dict(Counter(f"{d['stage']}:{d['reason']}" for d in dropped)),
        "quarantined": dict(Counter(q.get("reason") for q in quarantine)),
        "aggregate_method": agg.get("method"),
        "label_correlated": agg.get("label_correlated"),
        "annotator_reliability": {k: round(v, 3) for k, v in sorted(rel.items())},
        "priors": agg.get("priors"),
        "denoise": manifest.get("stage_info", {}).get("denoise"),
    }
    return {"decision": dec, "info": info}


# ---------------------------------------------------------------- figures
def figures(dec: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    published = dec != DROP
    right_final = ((dec == KEEP) & ~wrong) | ((dec == FLIP) & wrong)
    flagged = dec != KEEP
    tp = int((flagged & wrong).sum())
    prec = tp / max(int(flagged.sum()), 1)
    rec = tp / max(int(wrong.sum()), 1)
    return {
        "accuracy": float(right_final[published].mean()) if published.any() else float("nan"),
        "f1": 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0,
        "clean_kept": float((dec[~wrong] == KEEP).mean()),
        "kept": float(published.mean()),
        "n_kept": int((dec == KEEP).sum()),
        "n_flipped": int((dec == FLIP).sum()),
        "n_dropped": int((dec == DROP).sum()),
    }


def evaluate(
    name: str, n: int, seed: int, skip_product: bool, keep: Path | None, timeout: int
) -> dict[str, Any]:
    t0 = time.time()
    data = (gen_set_a if name == "A" else gen_set_b)(n, seed)
    wrong = data["wrong"]
    log.info(
        "set %s seed %d: %d pairs, %.1f%% wrong labels, generated in %.1f s",
        name,
        seed,
        n,
        100 * wrong.mean(),
        time.time() - t0,
    )
    methods: dict[str, dict[str, float]] = {}
    methods["majority vote"] = figures(majority(data), wrong)
    methods["dawid-skene"] = figures(decide(dawid_skene(data, seed, "ab")), wrong)
    methods["dawid-skene (c/r frame)"] = figures(decide(dawid_skene(data, seed, "cr")), wrong)
    if name == "B":
        methods["bayes-optimal"] = figures(decide(oracle_b(data)), wrong)
    product = None
    if not skip_product:
        if keep is not None:
            wd = keep / f"{name}-seed{seed}"
            wd.mkdir(parents=True, exist_ok=True)
            res = run_product(data, wd, timeout)
        else:
            with tempfile.TemporaryDirectory(prefix=f"heldout-{name}-") as tmp:
                res = run_product(data, Path(tmp), timeout)
        methods["prefcurate default"] = figures(res["decision"], wrong)
        product = res["info"]
        product["roles"] = data["roles"]
    log.info("set %s seed %d done in %.1f s", name, seed, time.time() - t0)
    return {
        "seed": seed,
        "wrong_rate": float(wrong.mean()),
        "methods": methods,
        "product": product,
        "seconds": round(time.time() - t0, 1),
    }


def mean_over(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in runs[0]["methods"]:
        out[m] = {
            k: float(np.mean([r["methods"][m][k] for r in runs])) for k in runs[0]["methods"][m]
        }
    return out


def print_table(name: str, n: int, runs: list[dict[str, Any]]) -> None:
    mean = mean_over(runs)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    wr = np.mean([r["wrong_rate"] for r in runs])
    print(f"\nSet {name}: {n} pairs, seeds {seeds}, {100 * wr:.1f}% wrong labels")
    hdr = (
        f"{'method':<26}{'accuracy':>10}{'F1':>8}{'clean kept':>12}{'kept':>8}"
        f"{'flip':>8}{'drop':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for m, f in mean.items():
        print(
            f"{m:<26}{f['accuracy']:>10.3f}{f['f1']:>8.3f}{f['clean_kept']:>12.3f}"
            f"{f['kept']:>8.3f}{f['n_flipped']:>8.0f}{f['n_dropped']:>8.0f}"
        )
    for r in runs:
        p = r["product"]
        if not p:
            continue
        lc = p.get("label_correlated") or {}
        print(
            f"  product, seed {r['seed']}: run {p['seconds_run']} s; ingest "
            f"quarantined {p['stages'].get('ingest', {}).get('quarantined')}, dropped "
            f"reasons {p['dropped_reasons']}; aggregate method {p['aggregate_method']}; "
            f"{p['published']} published, {p['unmapped_published_rows']} not mapped to an "
            f"input id, {p['flipped_column_mismatch']} with `flipped` != chosen_policy"
        )
        print(
            "    label_correlated: "
            + (
                ", ".join(f"{k} ({p['roles'].get(k, '?')}): {json.dumps(v)}" for k, v in lc.items())
                or "none"
            )
        )
        print(
            "    stage_info.aggregate.annotator_reliability: "
            + ", ".join(
                f"{k}={v}" + (f" [{p['roles'][k]}]" if k in p["roles"] else " [file label]")
                for k, v in p["annotator_reliability"].items()
            )
        )


def _code_version() -> dict[str, Any]:
    """The repository's HEAD and the tracked files modified in the work tree (the product
    measured is the work tree as it is)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "head": git("rev-parse", "HEAD").strip(),
        "modified": [
            ln[3:]
            for ln in git("status", "--porcelain").splitlines()
            if ln[:2].strip() and not ln.startswith("??")
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sets", default="A,B")
    ap.add_argument("--skip-product", action="store_true")
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    t0 = time.time()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sets = [s.strip().upper() for s in args.sets.split(",") if s.strip()]
    result: dict[str, Any] = {
        "pairs": args.pairs,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "load_average_start": load0,
        "code": _code_version(),
        "sets": {},
    }
    for name in sets:
        if name not in ("A", "B"):
            ap.error(f"unknown set {name!r}")
        runs = [
            evaluate(name, args.pairs, s, args.skip_product, args.keep, args.timeout)
            for s in result["seeds"]
        ]
        result["sets"][name] = {"mean": mean_over(runs), "runs": runs}
        if not args.json:
            print_table(name, args.pairs, runs)
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        code = result["code"]
        print(
            f"\ntotal {result['seconds']} s (load average at start {load0}); code "
            f"{code['head'][:10]}, modified: {', '.join(code['modified']) or 'none'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
