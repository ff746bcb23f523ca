"""Step 2 of the columnar ingest (:mod:`pipeline.ingest.columnar`): the good rows against
each other, as polars expressions in file order — repeated ids quarantined, ``limit``,
the same pair again (maybe swapped) dropped with its votes pooled on the first, first
occurrences of prompts and candidates kept."""

from __future__ import annotations

from pipeline import hashing
from pipeline.ingest import stage as st
from pipeline.stage import Reason


def _first(col: str, key: list[str]):
    import polars as pl

    return pl.col(col).first().over(key)


def _resolve(good, name: str, limit: int | None):
    """Step 2 over the good rows (sorted by row, repeated ids removed): the number of
    pairs kept, the output tables (prompts, candidates, votes) and the dropped rows."""
    import polars as pl

    g = _oriented(good, limit)
    kept = g.filter(pl.col("first") & ~pl.col("lim"))
    prompts = kept.filter(pl.col("row") == pl.col("row").min().over("pid")).select(
        prompt_id="pid", source_id="sid", prompt="messages", source=pl.lit(name), meta="meta"
    )
    votes = _votes(g.filter(~pl.col("lim")), name)
    return int(kept.height), prompts, _candidates(kept), votes, _drops(g, limit)


def _oriented(good, limit: int | None):
    """The rows with their pair's first occurrence (``first``; its source, ids and
    orientation: ``f_*``, ``swapped``), the pair's candidates in id order (``a``, ``b``),
    this row's label and its opposite (``lab``, ``opp``), whether ``limit`` pairs came
    before it (``lim``) and its pair id."""
    import polars as pl

    key = ["pid", "lo", "hi"]
    g = good.with_columns(
        lo=pl.when(pl.col("chosen") < pl.col("rejected"))
        .then(pl.col("chosen"))
        .otherwise(pl.col("rejected")),
        hi=pl.when(pl.col("chosen") < pl.col("rejected"))
        .then(pl.col("rejected"))
        .otherwise(pl.col("chosen")),
    ).with_columns(first=pl.col("row") == pl.col("row").min().over(key))
    firsts = pl.col("first").cast(pl.Int64)
    g = g.with_columns(
        lim=pl.lit(limit is not None)
        & ((firsts.cum_sum() - firsts) >= (limit if limit is not None else 0))
    )
    g = g.with_columns(
        f_sid=_first("sid", key),
        f_c=_first("c_id", key),
        f_r=_first("r_id", key),
        f_chosen=_first("chosen", key),
    ).with_columns(
        a=pl.when(pl.col("f_c") < pl.col("f_r")).then(pl.col("f_c")).otherwise(pl.col("f_r")),
        b=pl.when(pl.col("f_c") < pl.col("f_r")).then(pl.col("f_r")).otherwise(pl.col("f_c")),
        swapped=pl.col("f_chosen") != pl.col("chosen"),
    )
    mine = (
        pl.when(~pl.col("swapped"))
        .then(pl.col("f_c"))
        .when(pl.col("f_c") == pl.col("a"))
        .then(pl.col("b"))
        .otherwise(pl.col("a"))
    )
    g = g.with_columns(
        lab=pl.when(mine == pl.col("a")).then(pl.lit("a")).otherwise(pl.lit("b")),
        opp=pl.when(mine == pl.col("a")).then(pl.lit("b")).otherwise(pl.lit("a")),
        pair_id=_pair_ids(g),
    )
    return g


def _candidates(kept):
    """CANDIDATES: each kept pair's chosen and rejected response, first occurrence of an
    id kept."""
    import polars as pl

    return (
        pl.concat(
            [
                kept.select(
                    "row",
                    side=pl.lit(k),
                    pid="pid",
                    sid="sid",
                    cid=cid,
                    policy=pl.lit(policy),
                    text=text,
                )
                for k, (cid, policy, text) in enumerate(
                    [("c_id", "given:chosen", "chosen"), ("r_id", "given:rejected", "rejected")]
                )
            ]
        )
        .sort(["row", "side"])
        .unique("cid", keep="first", maintain_order=True)
        .select(
            prompt_id="pid",
            source_id="sid",
            candidate_id="cid",
            policy="policy",
            sample_index=pl.lit(0, dtype=pl.Int32),
            text="text",
            finish_reason=pl.lit(None, dtype=pl.String),
            n_prompt_tokens=pl.lit(None, dtype=pl.Int32),
            n_output_tokens=pl.lit(None, dtype=pl.Int32),
            request_hash=pl.lit(None, dtype=pl.String),
            truncated=pl.lit(False),
            error=pl.lit(None, dtype=pl.String),
            history=pl.lit(
                None, dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
            ),
        )
    )


def _votes(voting, name: str):
    """VOTES: each pair's label (annotator ``name``) and its given votes, oriented on the
    pair's first occurrence (a swapped repeat's votes pooled there)."""
    import polars as pl

    base = ["row", "pid", "f_sid", "a", "b"]
    label = voting.select(
        *base, k=pl.lit(-1, dtype=pl.Int64), annotator=pl.lit(name), verdict="lab"
    )
    given = (
        voting.filter(pl.col("votes").list.len() > 0)
        .select(*base, "lab", "opp", "votes", k=pl.int_ranges(0, pl.col("votes").list.len()))
        .explode(["votes", "k"])
        .filter(pl.col("votes").is_not_null())
        .select(
            *base,
            k=pl.col("k").cast(pl.Int64),
            annotator=pl.col("votes").struct.field("annotator"),
            verdict=pl.col("votes")
            .struct.field("preferred")
            .replace_strict(["chosen", "rejected", "tie"], [None, None, "tie"], default=None)
            .fill_null(
                pl.when(pl.col("votes").struct.field("preferred") == "chosen")
                .then(pl.col("lab"))
                .otherwise(pl.col("opp"))
            ),
        )
    )
    return (
        pl.concat([label, given])
        .sort(["row", "k"])
        .select(
            prompt_id="pid",
            source_id="f_sid",
            candidate_a="a",
            candidate_b="b",
            annotator="annotator",
            order=pl.lit(None, dtype=pl.String),
            verdict="verdict",
            prob_a=pl.lit(None, dtype=pl.Float64),
            raw_output=pl.lit(None, dtype=pl.String),
            parse_error=pl.lit(None, dtype=pl.String),
        )
    )


def _drops(g, limit: int | None):
    """The dropped rows: past ``limit``, or the same pair again."""
    import polars as pl

    return g.filter(pl.col("lim") | ~pl.col("first")).select(
        "row",
        stage=pl.lit(st.STAGE),
        source_id="sid",
        row_id="pair_id",
        reason=pl.when(pl.col("lim"))
        .then(pl.lit(str(Reason.LIMIT)))
        .otherwise(pl.lit(str(Reason.DUPLICATE_PAIR))),
        detail=pl.when(pl.col("lim"))
        .then(pl.lit(f"limit={limit} reached"))
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("same pair as source_id "),
                    pl.col("f_sid"),
                    pl.when(pl.col("swapped"))
                    .then(pl.lit(" with chosen and rejected swapped"))
                    .otherwise(pl.lit("")),
                    pl.lit("; its votes are pooled there"),
                ]
            )
        ),
    )


def _pair_ids(g):
    import polars as pl

    text = pl.concat_str(
        [
            pl.lit('["'),
            pl.col("pid"),
            pl.lit('","'),
            pl.col("c_id"),
            pl.lit('","'),
            pl.col("r_id"),
            pl.lit('"]'),
        ]
    )
    return hashing.hash_canonical(
        g, text, pl.lit(True), lambda r: hashing.pair_id(r["pid"], r["c_id"], r["r_id"])
    )
