"""Vote aggregation: votes → comparisons (one row per judged pair) and candidate scores.

Input: VOTES. Outputs: COMPARISONS (per ``source_id`` × canonical pair: vote counts,
aggregated ``p_a`` = P(a ≻ b), the original dataset label if any) and SCORES (per
candidate: win rate over its comparisons, annotator ``aggregate``, aspect ``winrate``).
Row unit: one vote. Kept: votes with a verdict. Dropped: ``null_verdict`` (unparseable
judge output; the raw text stays in the votes table).

Method ``majority``: p_a = (n_a + ½·n_tie) / n_valid (null without valid votes).
With ``use_logprobs`` a vote that carries ``prob_a`` (the judge's probability of "a" from
its logprobs, tie mass counted half) counts as a soft vote: ``prob_a`` to a and
``1 − prob_a`` to b. Averaged over both presentation orders, this cancels a judge's
position bias: a judge that always answers "A" still prefers, on average, the response
it gives more probability to in both orders (measured: SmolLM2-135M answers "A" in 96/96
calls, yet its probabilities separate the candidates).
The dataset's own label is a vote like any other (annotators in ``label_annotators``) and
is also reported in ``label``.

>>> import pyarrow as pa
>>> from schemas.tables import VOTES
>>> v = pa.Table.from_pylist([
...   dict(prompt_id="p", source_id="s", candidate_a="x", candidate_b="y", annotator=n,
...        order=None, verdict=d, prob_a=None, raw_output=None, parse_error=None)
...   for n, d in [("src", "a"), ("j1", "b"), ("j2", "a"), ("j3", None)]], schema=VOTES)
>>> res = aggregate_votes(v, label_annotators={"src"})
>>> c = res.outputs["comparisons"].to_pylist()[0]
>>> c["n_votes"], round(c["p_a"], 3), c["label"]
(3, 0.667, 'a')
>>> res.counts.to_dict()["dropped"]
{'null_verdict': 1}
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.tables import COMPARISONS, SCORES, check_table, conform

STAGE = "aggregate"
STAGE_VERSION = 1
KEY = ["source_id", "prompt_id", "candidate_a", "candidate_b"]


def aggregate_votes(votes: pa.Table, *, label_annotators: set[str] | frozenset[str] = frozenset(),
                    method: str = "majority", use_logprobs: bool = False) -> StageResult:
    """Aggregate votes per pair (vectorised with polars)."""
    if method != "majority":
        raise ValueError(f"unknown aggregation method {method!r}")
    check_table(votes, votes.schema, "votes")
    df = pl.from_arrow(votes) if votes.num_rows else pl.DataFrame(
        schema={n: pl.Utf8 for n in KEY + ["annotator", "verdict"]})
    null = df.filter(pl.col("verdict").is_null()) if df.height else df
    drops = [{"source_id": r["source_id"], "row_id": f"{r['candidate_a']}|{r['candidate_b']}|"
              f"{r['annotator']}", "reason": Reason.NULL_VERDICT,
              "detail": "judge output did not parse"} for r in null.iter_rows(named=True)]
    labels = sorted(label_annotators)
    if df.height:
        valid = pl.col("verdict").is_not_null()
        soft = valid & pl.col("prob_a").is_not_null() if use_logprobs else pl.lit(False)
        df = df.with_columns(
            _a=pl.when(soft).then(pl.col("prob_a"))
            .otherwise((pl.col("verdict") == "a").cast(pl.Float64)),
            _b=pl.when(soft).then(1.0 - pl.col("prob_a"))
            .otherwise((pl.col("verdict") == "b").cast(pl.Float64)),
            _t=pl.when(soft).then(0.0)
            .otherwise((pl.col("verdict") == "tie").cast(pl.Float64)),
        )
        comp = (df.group_by(KEY, maintain_order=True).agg(
            n_a=pl.col("_a").fill_null(0.0).sum(),
            n_b=pl.col("_b").fill_null(0.0).sum(),
            n_tie=pl.col("_t").fill_null(0.0).sum(),
            n_valid=valid.sum().cast(pl.Int32),
            n_null=pl.col("verdict").is_null().sum().cast(pl.Int32),
            label=pl.col("verdict").filter(pl.col("annotator").is_in(labels)
                                           & pl.col("verdict").is_in(["a", "b"])).first(),
        ).rename({"n_valid": "n_votes"})
         .with_columns(p_a=pl.when(pl.col("n_votes") > 0)
                       .then((pl.col("n_a") + 0.5 * pl.col("n_tie")) / pl.col("n_votes"))
                       .otherwise(None)))
        comparisons = conform(comp.to_arrow(), COMPARISONS, "comparisons")
        long = pl.concat([
            comp.select(pl.col("candidate_a").alias("candidate_id"), pl.col("p_a").alias("w")),
            comp.select(pl.col("candidate_b").alias("candidate_id"),
                        (1 - pl.col("p_a")).alias("w")),
        ])
        sc = (long.group_by("candidate_id", maintain_order=True)
              .agg(score=pl.col("w").mean())
              .with_columns(annotator=pl.lit("aggregate"), aspect=pl.lit("winrate"),
                            raw_output=pl.lit(None, pl.Utf8), parse_error=pl.lit(None, pl.Utf8)))
        scores = conform(sc.to_arrow(), SCORES, "scores")
    else:
        comparisons, scores = COMPARISONS.empty_table(), SCORES.empty_table()
    counts = StageCounts(rows_in=df.height, kept=df.height - len(drops),
                         dropped={str(Reason.NULL_VERDICT): len(drops)} if drops else {},
                         rows_out=comparisons.num_rows)
    annot = {}
    if df.height:
        for r in df.group_by("annotator").agg(
                n=pl.len(), null=pl.col("verdict").is_null().sum()).iter_rows(named=True):
            annot[r["annotator"]] = {"votes": r["n"], "null": r["null"]}
    return StageResult(STAGE, {"comparisons": comparisons, "scores": scores}, counts,
                       dropped_table(STAGE, drops),
                       info={"method": method, "use_logprobs": use_logprobs,
                             "annotators": annot,
                             "position_consistency": position_consistency(votes)})


def position_consistency(votes: pa.Table) -> dict[str, dict[str, float | int]]:
    """Per judge (annotator without its order): share of pairs whose ab and ba verdicts agree.

    Only pairs with a parsed verdict in both orders count.
    """
    if not votes.num_rows:
        return {}
    df = pl.from_arrow(votes).filter(pl.col("order").is_in(["ab", "ba"])
                                     & pl.col("verdict").is_not_null())
    if not df.height:
        return {}
    df = df.with_columns(judge=pl.col("annotator").str.replace(r"\|(ab|ba)$", ""))
    wide = (df.group_by(["judge", "source_id", "candidate_a", "candidate_b"])
            .agg(ab=pl.col("verdict").filter(pl.col("order") == "ab").first(),
                 ba=pl.col("verdict").filter(pl.col("order") == "ba").first())
            .drop_nulls(["ab", "ba"]))
    out = {}
    for r in wide.group_by("judge").agg(n=pl.len(), agree=(pl.col("ab") == pl.col("ba")).sum(),
                                        first=((pl.col("ab") == "a") & (pl.col("ba") == "b"))
                                        .sum()).iter_rows(named=True):
        out[r["judge"]] = {"pairs": r["n"], "consistency": r["agree"] / r["n"],
                           "always_first_share": r["first"] / r["n"]}
    return out
