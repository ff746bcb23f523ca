"""Which pairs go to a human, and the Label Studio tasks that show them (pure functions).

:func:`review_candidates` takes a published version's lineage: the margins stage's pairs
(every scored pair, with p̂, disagreement, label status and flags), the denoise stage's
kept pairs (their decision: keep or flip) and the rows it and the pairs stage dropped
(their reason). A pair is worth a look when any of ``review.select`` holds:

- ``contested``: the votes contest or contradict the dataset's label;
- ``flipped``: denoise exchanged chosen and rejected;
- ``low_confidence``: p̂ inside ``review.low_confidence_band`` or dropped low_confidence;
- ``disagreement``: the vote disagreement at least ``review.min_disagreement``;
- ``cyclic``: its prompt has an intransitive triple (GPM or the panel).

Most informative first: priority = (1 − |2p̂ − 1|) · (1 + ln(1 + m)), where m is the number
of other pairs of the same prompt (a posterior near ½ is the most uncertain; an answer
about a prompt with many pairs also informs the others through the shared candidates),
ties broken by a stable hash of the pair id. :func:`build_tasks` turns the chosen pairs
into Label Studio tasks: the prompt, the two responses as A and B in an order drawn from
``stable_hash(pair_id, seed)`` and recorded in the task, and the ids that map an answer
back (:mod:`pipeline.review.votes`).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.conversation import render, shown
from pipeline.hashing import stable_hash
from schemas.config import ReviewConfig

STAGE_VERSION = 1
LOW_CONFIDENCE_REASONS = ("low_confidence", "flipped_low_confidence")
CHOICES = ("A", "B", "tie", "both bad")

LABEL_CONFIG = """<View>
  <Header value="Which response is better? ($reasons)"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: flex; gap: 1em">
    <View style="flex: 1">
      <Header value="Response A"/>
      <Text name="a" value="$a"/>
    </View>
    <View style="flex: 1">
      <Header value="Response B"/>
      <Text name="b" value="$b"/>
    </View>
  </View>
  <Choices name="verdict" toName="a" choice="single" required="true" showInLine="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="tie"/>
    <Choice value="both bad"/>
  </Choices>
  <TextArea name="comment" toName="a" placeholder="Comment (optional)" maxSubmissions="1"/>
</View>"""


def review_candidates(
    margins_pairs: pa.Table, denoise_pairs: pa.Table, dropped: pa.Table, cfg: ReviewConfig
) -> pl.DataFrame:
    """Every margins pair with its outcome, the criteria it meets and its priority, sorted
    most informative first; ``worth`` is True where any ``cfg.select`` criterion holds.

    Columns: pair_id, prompt_id, source_id, chosen_id, rejected_id, p_hat, disagreement,
    label_status, flags, outcome (keep | flip | drop), drop_reason, the five criteria as
    booleans, reasons (the met criteria among ``cfg.select``, comma-separated), worth,
    priority.

    >>> m = pa.table({"pair_id": ["p1", "p2"], "prompt_id": ["q", "q"],
    ...               "source_id": ["s", "s"], "chosen_id": ["a", "a"],
    ...               "rejected_id": ["b", "c"], "p_hat": [0.55, 0.95],
    ...               "disagreement": [0.9, 0.1], "label_status": ["agree", "agree"],
    ...               "flags": [[], []]})
    >>> d = pa.table({"pair_id": ["p2"], "decision": ["keep"]})
    >>> x = pa.table({"row_id": ["p1"], "reason": ["low_confidence"]})
    >>> df = review_candidates(m, d, x, ReviewConfig())
    >>> df.select("pair_id", "outcome", "reasons", "worth").rows()
    [('p1', 'drop', 'low_confidence,disagreement', True), ('p2', 'keep', '', False)]
    """
    lo, hi = cfg.low_confidence_band
    base = pl.from_arrow(
        margins_pairs.select(
            [
                "pair_id",
                "prompt_id",
                "source_id",
                "chosen_id",
                "rejected_id",
                "p_hat",
                "disagreement",
                "label_status",
                "flags",
            ]
        )
    )
    kept = pl.from_arrow(denoise_pairs.select(["pair_id", "decision"])).unique("pair_id")
    drops = (
        pl.from_arrow(dropped.select(["row_id", "reason"]))
        .rename({"row_id": "pair_id", "reason": "drop_reason"})
        .unique("pair_id", keep="first")
    )
    df = (
        base.join(kept, on="pair_id", how="left")
        .join(drops, on="pair_id", how="left")
        .with_columns(
            outcome=pl.when(pl.col("decision").is_not_null())
            .then(pl.col("decision"))
            .otherwise(pl.lit("drop")),
            m=pl.len().over("prompt_id", "source_id") - 1,
        )
        .drop("decision")
    )
    p = pl.col("p_hat")
    df = df.with_columns(
        contested=pl.col("label_status").is_in(["contested", "contradicted"]),
        flipped=pl.col("outcome") == "flip",
        low_confidence=((p >= lo) & (p < hi)).fill_null(True)
        | pl.col("drop_reason").is_in(LOW_CONFIDENCE_REASONS).fill_null(False),
        disagreement_high=(pl.col("disagreement") >= cfg.min_disagreement).fill_null(False),
        cyclic=pl.col("flags").list.contains("cyclic").fill_null(False),
    )
    # the criterion "disagreement" is column disagreement_high (disagreement is the value)
    cols = ["disagreement_high" if c == "disagreement" else c for c in cfg.select]
    reasons = pl.concat_list(
        [pl.when(pl.col(c)).then(pl.lit(name)).otherwise(None) for name, c in zip(cfg.select, cols)]
    ).list.drop_nulls()
    u = (1.0 - (2.0 * p - 1.0).abs()).fill_null(1.0)
    hashes = [stable_hash(x, length=12) for x in df["pair_id"].to_list()]
    return (
        df.with_columns(
            reasons=reasons.list.join(","),
            worth=pl.any_horizontal(cols) if cols else pl.lit(False),
            priority=u * (1.0 + (1.0 + pl.col("m").cast(pl.Float64)).log()),
            _h=pl.Series(hashes, dtype=pl.Utf8),
        )
        .sort(["worth", "priority", "_h"], descending=[True, True, False])
        .drop("_h", "m")
    )


def choose(candidates: pl.DataFrame, budget: int) -> pl.DataFrame:
    """The ``budget`` most informative pairs worth a look (``candidates`` is sorted)."""
    return candidates.filter(pl.col("worth")).head(budget)


def shown_order(pair_id: str, seed: int) -> str:
    """``ab``: A is the version's chosen response; ``ba``: A is the rejected one.

    >>> shown_order("p1", 0) in ("ab", "ba")
    True
    """
    return "ab" if int(stable_hash(pair_id, seed, length=8), 16) % 2 == 0 else "ba"


def build_tasks(
    chosen: pl.DataFrame, prompts: pa.Table, candidates: pa.Table, ref: str, seed: int
) -> list[dict[str, Any]]:
    """Label Studio tasks (``{"data": {...}}``) for the ``chosen`` pairs of version ``ref``.

    ``data``: pair_id, version (``ref``), prompt (the conversation up to the judged turn as
    text), a / b (each response as a judge reads it: its last answer, or for several
    turns the transcript with the judged answer marked), a_id / b_id (candidate ids),
    order (``ab``: A is the version's chosen), prompt_id, source_id, p_hat, outcome and
    reasons. A pair whose prompt or candidates are missing from the tables is left out
    (the caller counts it).
    """
    prompt_text = {
        (s, p): render(m)
        for p, s, m in zip(
            prompts.column("prompt_id").to_pylist(),
            prompts.column("source_id").to_pylist(),
            prompts.column("prompt").to_pylist(),
        )
    }
    hist = (
        candidates.column("history").to_pylist()
        if "history" in candidates.column_names
        else [None] * candidates.num_rows
    )
    text = {
        c: shown(h, t)
        for c, t, h in zip(
            candidates.column("candidate_id").to_pylist(),
            candidates.column("text").to_pylist(),
            hist,
        )
    }
    tasks = []
    for r in chosen.iter_rows(named=True):
        key = (r["source_id"], r["prompt_id"])
        if key not in prompt_text or r["chosen_id"] not in text or r["rejected_id"] not in text:
            continue
        order = shown_order(r["pair_id"], seed)
        a, b = (
            (r["chosen_id"], r["rejected_id"])
            if order == "ab"
            else (r["rejected_id"], r["chosen_id"])
        )
        p_hat = r["p_hat"]
        tasks.append(
            {
                "data": {
                    "pair_id": r["pair_id"],
                    "version": ref,
                    "prompt": prompt_text[key],
                    "a": text[a],
                    "b": text[b],
                    "a_id": a,
                    "b_id": b,
                    "order": order,
                    "prompt_id": r["prompt_id"],
                    "source_id": r["source_id"],
                    "p_hat": None if p_hat is None or math.isnan(p_hat) else round(p_hat, 4),
                    "outcome": r["outcome"],
                    "reasons": r["reasons"] or "review",
                }
            }
        )
    return tasks
