"""Judge qualification: how good is each judge on pairs whose answer is known?

Input: VOTES (every annotator's, the judges' with their order) and the gold pairs — the
comparisons a verifier decided (annotators ``verifier:<kind>``; where several verifiers
voted on one pair, only a unanimous verdict is gold) and/or the votes of ``gold``
annotators (a user's gold pairs file: its label). Output: a JSON-able dict, no table (it
lands in the aggregate stage's info, the manifest and the report).

Per judge (the annotator without its ``|ab``/``|ba`` order), on the gold pairs it judged:

- ``accuracy``: share of its parsed verdicts that pick the gold side (a tie counts
  ½), with a 95% Wilson interval; ``soft_accuracy``: share of pairs where its mean
  P(gold side) over both orders (from ``prob_a``, the A/B logits) is above ½;
- ``position_flip_rate``: share of the pairs judged in both orders whose two verdicts
  differ (after mapping ``ba`` back); ``tie_rate``;
- ``panel_agreement``: share of its verdicts that agree with the majority of the other
  judges on the same pair (None with a single judge);
- ``verifier_agreement``: the same as accuracy against each verifier kind.

Warnings: a judge whose accuracy interval reaches ½ (``at chance``) or lies below it
(``worse than chance``), and a judge sharing its model with a policy that wrote the
responses (``self-preference risk``).

>>> import pyarrow as pa
>>> from schemas.tables import VOTES
>>> def v(a, w, o, d, p=None):
...     return dict(prompt_id="p", source_id="s" + a, candidate_a="x", candidate_b="y",
...                 annotator=w, order=o, verdict=d, prob_a=p, raw_output=None, parse_error=None)
>>> rows = [v("1", "verifier:exact_answer", None, "a"), v("2", "verifier:exact_answer", None, "b")]
>>> ab, ba = "j|pairwise_v1|none|ab", "j|pairwise_v1|none|ba"
>>> rows += [v("1", ab, "ab", "a", 0.9), v("1", ba, "ba", "a", 0.7),
...          v("2", ab, "ab", "a", 0.6), v("2", ba, "ba", "b", 0.2)]
>>> q = qualify_judges(pa.Table.from_pylist(rows, schema=VOTES))
>>> q["gold_pairs"], q["judges"]["j|pairwise_v1|none"]["accuracy"]
(2, 0.75)
>>> j = q["judges"]["j|pairwise_v1|none"]
>>> j["position_flip_rate"], j["soft_accuracy"]
(0.5, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.aggregate.votes import ORDER_SUFFIX

STAGE_VERSION = 1  # part of the aggregate stage's key (its info holds the table)
VERIFIER_PREFIX = "verifier:"
KEY = ["source_id", "candidate_a", "candidate_b"]


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n.

    >>> [round(x, 3) for x in wilson(14, 28)]
    [0.326, 0.674]
    """
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def gold_pairs(votes: pl.DataFrame, gold_annotators: Iterable[str] = ()) -> pl.DataFrame:
    """Per gold pair: the gold side (``a``/``b``) and where it came from; verifiers'
    pairs must be unanimous, a gold annotator's verdict wins over a verifier's."""
    gold_annotators = set(gold_annotators)
    ver = votes.filter(
        pl.col("annotator").str.starts_with(VERIFIER_PREFIX) & pl.col("verdict").is_in(["a", "b"])
    )
    ver = ver.group_by(KEY).agg(
        gold=pl.col("verdict").first(),
        n_sides=pl.col("verdict").n_unique(),
        gold_from=pl.col("annotator").sort().str.join("+"),
    )
    ver = ver.filter(pl.col("n_sides") == 1).drop("n_sides")
    if gold_annotators:
        usr = (
            votes.filter(
                pl.col("annotator").is_in(list(gold_annotators))
                & pl.col("verdict").is_in(["a", "b"])
            )
            .group_by(KEY)
            .agg(gold=pl.col("verdict").first(), gold_from=pl.lit("gold"))
        )
        ver = pl.concat(
            [usr, ver.join(usr.select(KEY), on=KEY, how="anti")], how="vertical_relaxed"
        )
    return ver


def qualify_judges(
    votes: pa.Table | pl.DataFrame,
    *,
    gold_annotators: Iterable[str] = (),
    exclude: Iterable[str] = (),
    policy_models: Mapping[str, str] | None = None,
    judge_models: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The qualification table (module docstring). ``judge_models`` maps a judge name (the
    first part of its annotator) to its model, ``policy_models`` a policy to its model:
    together they name the self-preference risks. Annotators in ``exclude`` (the file's
    label) are not judges; every other annotator that is not a verifier is one (pointwise
    judges through their pairwise votes, order null)."""
    df = votes if isinstance(votes, pl.DataFrame) else pl.from_arrow(votes)
    gold = gold_pairs(df, gold_annotators)
    out: dict[str, Any] = {
        "gold_pairs": gold.height,
        "gold_sources": sorted(set(gold["gold_from"].to_list())) if gold.height else [],
        "judges": {},
        "warnings": [],
    }
    special = df["annotator"].str.starts_with(VERIFIER_PREFIX) | df["annotator"].is_in(
        list(set(gold_annotators) | set(exclude))
    )
    jv = df.filter(~special).with_columns(judge=pl.col("annotator").str.replace(ORDER_SUFFIX, ""))
    if not gold.height or not jv.height:
        return out
    # every verdict in the ab orientation already (the judge stage maps ba back)
    j = jv.join(gold, on=KEY, how="inner")
    # the panel's majority per pair, for agreement (hard a/b verdicts of each judge)
    per_judge = (
        jv.filter(pl.col("verdict").is_in(["a", "b"]))
        .group_by(KEY + ["judge"])
        .agg(n_a=(pl.col("verdict") == "a").sum(), n=pl.len())
    )
    for name in sorted(j["judge"].unique().to_list()):
        others = per_judge.filter(pl.col("judge") != name)
        row = _judge_row(j.filter(pl.col("judge") == name), others)
        out["judges"][name] = row
        if row["parsed"]:
            out["warnings"] += _chance_warning(name, row)
    out["warnings"] += _self_preference(judge_models, policy_models)
    return out


def _judge_row(mine: pl.DataFrame, others: pl.DataFrame) -> dict[str, Any]:
    """One judge's row of the table: ``mine``, its votes joined to the gold answers;
    ``others``, the other judges' hard a/b counts per pair (for panel agreement)."""
    parsed = mine.filter(pl.col("verdict").is_not_null())
    n = parsed.height
    ties = float((parsed["verdict"] == "tie").sum())
    correct = float((parsed["verdict"] == parsed["gold"]).sum()) + 0.5 * ties
    row: dict[str, Any] = {
        "votes": mine.height,
        "parsed": n,
        "pairs": mine.select(KEY).unique().height,
    }
    row["accuracy"] = correct / n if n else None
    row["accuracy_ci"] = list(wilson(correct, n)) if n else None
    row["tie_rate"] = ties / n if n else None
    soft = (
        mine.filter(pl.col("prob_a").is_not_null())
        .with_columns(
            p_gold=pl.when(pl.col("gold") == "a")
            .then(pl.col("prob_a"))
            .otherwise(1.0 - pl.col("prob_a"))
        )
        .group_by(KEY)
        .agg(pl.col("p_gold").mean())
    )
    row["soft_accuracy"] = float((soft["p_gold"] > 0.5).mean()) if soft.height else None
    both = (
        parsed.group_by(KEY)
        .agg(
            ab=pl.col("verdict").filter(pl.col("order") == "ab").first(),
            ba=pl.col("verdict").filter(pl.col("order") == "ba").first(),
        )
        .drop_nulls(["ab", "ba"])
    )
    row["position_flip_rate"] = float((both["ab"] != both["ba"]).mean()) if both.height else None
    row["verifier_agreement"] = {
        src: float(
            ((g := parsed.filter(pl.col("gold_from") == src))["verdict"] == g["gold"]).mean()
        )
        for src in sorted(parsed["gold_from"].unique())
        if parsed.filter(pl.col("gold_from") == src).height
    }
    row["panel_agreement"] = _panel_agreement(parsed, others)
    return row


def _panel_agreement(parsed: pl.DataFrame, others: pl.DataFrame) -> float | None:
    """How often a judge's hard verdict is the other judges' majority (pairs where they
    tie left out); None without other judges."""
    if not others.height:
        return None
    others = others.group_by(KEY).agg(n_a=pl.col("n_a").sum(), n=pl.col("n").sum())
    mj = parsed.filter(pl.col("verdict").is_in(["a", "b"])).join(others, on=KEY)
    mj = mj.filter(2 * pl.col("n_a") != pl.col("n"))
    maj = pl.when(2 * pl.col("n_a") > pl.col("n")).then(pl.lit("a")).otherwise(pl.lit("b"))
    return float(mj.select((pl.col("verdict") == maj).mean()).item()) if mj.height else None


def _chance_warning(name: str, row: dict[str, Any]) -> list[str]:
    """A warning when a judge's accuracy is below chance or not told apart from it."""
    n, (lo, hi), acc = row["parsed"], row["accuracy_ci"], row["accuracy"]
    ci = f"(accuracy {acc:.2f}, 95% CI {lo:.2f}–{hi:.2f})"
    if hi < 0.5:
        return [f"{name}: worse than chance on {n} gold verdicts {ci}"]
    if lo <= 0.5:
        return [f"{name}: not distinguishable from chance on {n} gold verdicts {ci}"]
    return []


def _self_preference(
    judge_models: Mapping[str, str] | None, policy_models: Mapping[str, str] | None
) -> list[str]:
    """A warning for every judge that shares its model with a policy."""
    if not (judge_models and policy_models):
        return []
    by_model: dict[str, list[str]] = {}
    for pol, model in policy_models.items():
        by_model.setdefault(model, []).append(pol)
    return [
        f"{judge}: shares its model {model} with policy "
        f"{', '.join(sorted(by_model[model]))} (self-preference risk)"
        for judge, model in sorted(judge_models.items())
        if model in by_model
    ]
