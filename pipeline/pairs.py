"""Pair building and the published table.

``build_pairs``: input PAIRS (denoised), output PAIRS selected by a strategy. Row unit:
one pair. Pairs are grouped by ``source_id`` (one input prompt, or one input pair).

- ``best_worst``: the pair whose chosen has the highest aggregated score and whose
  rejected has the lowest, among the pairs denoise kept; the others are dropped
  ``not_selected``. When the scores do not separate the two the source's pairs are
  dropped ``tie``; a pair with a null score is dropped ``null_score`` — never paired
  silently.
- ``all_pairs``: every kept pair with ``margin ≥ min_margin`` (else ``below_min_margin``).
- ``curriculum`` (Curry-DPO, arXiv 2403.07230): the pairs whose chosen is the source's
  best candidate, ordered by score gap (largest = easiest) into ``curriculum_stages``
  stages; other pairs ``not_selected``.

Then optionally ``split = easy_hard`` (MPO, arXiv 2403.19443): ``split`` is ``hard`` for
pairs whose margin is below the ``hard_quantile`` of kept margins, else ``easy``; and
``reward_augmented`` twins (arXiv 2410.08067): each kept pair gets a twin conditioned on
the rejected response's score with chosen and rejected exchanged; the original is
conditioned on the chosen score (flags ``ra_target=<score>``, ``ra_twin``).

``published_table``: selected PAIRS + PROMPTS + CANDIDATES → PUBLISHED (TRL
conversational ``prompt`` / ``chosen`` / ``rejected`` plus margin, weight, lineage).

>>> import pyarrow as pa
>>> from schemas.tables import PAIRS
>>> def row(pid, ch, rj, sc, sr):
...     return dict(pair_id=pid, prompt_id="p", source_id="s", chosen_id=ch, rejected_id=rj,
...         p_hat=0.8, disagreement=0.4, n_votes=2, margin=1.0, weight=0.8,
...         label_status="agree", similarity=None, flags=[], decision="keep", reason=None,
...         score_chosen=sc, score_rejected=sr, curriculum_stage=None, split=None)
>>> t = pa.Table.from_pylist([row("1", "x", "y", 0.9, 0.5), row("2", "x", "z", 0.9, 0.1)],
...                          schema=PAIRS)
>>> res = build_pairs(t)
>>> res.outputs["pairs"].column("pair_id").to_pylist(), res.counts.to_dict()["dropped"]
(['2'], {'not_selected': 1})
>>> from schemas.config import PairsConfig
>>> res = build_pairs(t, PairsConfig(strategy="curriculum", curriculum_stages=2))
>>> res.outputs["pairs"].select(["pair_id", "curriculum_stage"]).to_pylist()
[{'pair_id': '2', 'curriculum_stage': 1}, {'pair_id': '1', 'curriculum_stage': 2}]
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.conversation import tools
from pipeline.hashing import stable_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import PairsConfig
from schemas.tables import PAIRS, PUBLISHED, conform, from_rows

STAGE = "pairs"
STAGE_VERSION = 2
BELOW_MIN_MARGIN = Reason.BELOW_MIN_MARGIN.value
RA_TARGET = "ra_target="
RA_TWIN = "ra_twin"


def _twins(rows: list[dict]) -> list[dict]:
    """Reward-augmented twins: condition on the target score; the twin is reversed."""
    out = []
    for r in rows:
        out.append({**r, "flags": list(r["flags"]) + [f"{RA_TARGET}{r['score_chosen']:.2f}"]})
        twin = {
            **r,
            "chosen_id": r["rejected_id"],
            "rejected_id": r["chosen_id"],
            "score_chosen": r["score_rejected"],
            "score_rejected": r["score_chosen"],
            "pair_id": stable_hash(r["pair_id"], RA_TWIN),
            "flags": list(r["flags"]) + [f"{RA_TARGET}{r['score_rejected']:.2f}", RA_TWIN],
        }
        out.append(twin)
    return out


def build_pairs(
    pairs: pa.Table, cfg: PairsConfig | str = "best_worst", lengths: pl.DataFrame | None = None
) -> StageResult:
    """Select pairs per source by ``cfg.strategy``, balance lengths, then split / augment
    (vectorised with polars: one pass per rule over all sources at once).

    ``cfg.length_balance`` (needs ``lengths``, :func:`pipeline.aggregate.length.
    candidate_lengths`): of the selected pairs, those on the side in excess (chosen longer
    or not) are dropped with reason ``length_balance``, lowest weight first, until the
    share whose chosen is longer lies in the band; ``info["length_balance"]`` has the share
    before and after."""
    if isinstance(cfg, str):
        cfg = PairsConfig(strategy=cfg)
    info: dict = {"strategy": cfg.strategy}
    if not pairs.num_rows:
        return StageResult(
            STAGE,
            {"pairs": PAIRS.empty_table()},
            StageCounts(0, 0),
            dropped_table(STAGE, []),
            info=info,
        )
    df = (
        pl.from_arrow(pairs)
        .with_row_index("_i")
        .with_columns(
            _g=pl.col("_i").min().over("source_id"),  # sources in first-seen order
            _scored=pl.col("score_chosen").is_not_null() & pl.col("score_rejected").is_not_null(),
            _gap=pl.col("score_chosen") - pl.col("score_rejected"),
        )
    )
    if cfg.strategy != "all_pairs":
        df = df.join(_best_per_source(df, cfg), on="source_id", how="left")
    why, detail = _select(df, cfg)
    df = df.with_columns(_why=why, _detail=detail)
    if cfg.length_balance is not None:
        if lengths is None:
            raise ValueError("pairs.length_balance needs the candidates' lengths")
        df, info["length_balance"] = _balance(df, lengths, cfg.length_balance)
    kept = df.filter(pl.col("_why").is_null())
    kept = _ordered(kept, cfg)
    gone = df.filter(pl.col("_why").is_not_null()).sort("_g", "_i")
    n_kept = kept.height
    if cfg.split == "easy_hard" and n_kept:
        kept = _easy_hard(kept, cfg.hard_quantile, info)
    out = (
        conform(kept.select(PAIRS.names).to_arrow(), PAIRS, "pairs")
        if n_kept
        else PAIRS.empty_table()
    )
    if cfg.reward_augmented:
        out = from_rows(_twins(out.to_pylist()), PAIRS, "pairs")
        info["reward_augmented_twins"] = n_kept
    drops = [
        {"source_id": sid, "row_id": pid, "reason": r, "detail": d}
        for sid, pid, r, d in gone.select("source_id", "pair_id", "_why", "_detail").iter_rows()
    ]
    counts = StageCounts(
        rows_in=pairs.num_rows,
        kept=n_kept,
        dropped=dict(Counter(gone["_why"].to_list())),
        rows_out=out.num_rows,
    )
    return StageResult(STAGE, {"pairs": out}, counts, dropped_table(STAGE, drops), info=info)


def _ordered(kept: pl.DataFrame, cfg: PairsConfig) -> pl.DataFrame:
    """The kept pairs in source order; ``curriculum``: easiest (largest score gap) first
    within a source, in ``curriculum_stages`` stages."""
    if cfg.strategy != "curriculum":
        return kept.sort("_g", "_i")
    k = cfg.curriculum_stages
    return (
        kept.sort(["_g", "_gap", "pair_id"], descending=[False, True, False])
        .with_columns(_r=pl.int_range(pl.len()).over("source_id"), _n=pl.len().over("source_id"))
        .with_columns(
            curriculum_stage=pl.min_horizontal(
                1 + (pl.col("_r") * k) // pl.col("_n"), pl.lit(k)
            ).cast(pl.Int32)
        )
    )


def _easy_hard(kept: pl.DataFrame, hard_quantile: float, info: dict) -> pl.DataFrame:
    """Split ``easy_hard``: pairs whose margin is below its ``hard_quantile`` are hard;
    ``info`` gets the threshold and the counts."""
    m = kept["margin"].fill_null(0.0).fill_nan(0.0)
    thr = float(np.quantile(m.to_numpy(), hard_quantile))
    kept = kept.with_columns(split=pl.when(m < thr).then(pl.lit("hard")).otherwise(pl.lit("easy")))
    info["hard_below_margin"] = thr
    info["split_counts"] = dict(Counter(kept["split"].to_list()))
    return kept


def _balance(
    df: pl.DataFrame, lengths: pl.DataFrame, band: tuple[float, float]
) -> tuple[pl.DataFrame, dict]:
    """Mark the pairs :func:`pipeline.aggregate.length.balance_drops` picks among the
    selected ones as dropped (``length_balance``)."""
    from pipeline.aggregate import length

    sel = df.filter(pl.col("_why").is_null())
    lc = length.lookup(sel["chosen_id"], lengths)
    lr = length.lookup(sel["rejected_id"], lengths)
    longer = lc > lr
    w = sel["weight"].fill_null(0.0).fill_nan(0.0).to_numpy()
    drop = length.balance_drops(longer, w, band)
    before = float(longer.mean()) if longer.size else None
    keep = np.ones(longer.size, dtype=bool)
    keep[drop] = False
    info = {
        "band": list(band),
        "chosen_longer_before": before,
        "chosen_longer_after": float(longer[keep].mean()) if keep.any() else None,
        "dropped": int(drop.size),
        "reachable": bool(before is None or band[0] <= before <= band[1] or drop.size),
    }
    if not drop.size:
        return df, info
    ids = sel["_i"].gather(drop)
    side = "longer" if longer[drop[0]] else "not longer"
    msg = (
        f"chosen-longer share {before:.3f} outside [{band[0]}, {band[1]}]: "
        f"a lowest-weight pair whose chosen is {side}"
    )
    hit = pl.col("_i").is_in(ids.implode())
    return df.with_columns(
        _why=pl.when(hit).then(pl.lit(str(Reason.LENGTH_BALANCE))).otherwise(pl.col("_why")),
        _detail=pl.when(hit).then(pl.lit(msg)).otherwise(pl.col("_detail")),
    ), info


def _best_per_source(df: pl.DataFrame, cfg: PairsConfig) -> pl.DataFrame:
    """Per source, among its scored pairs: for best_worst the best pair (largest score
    gap, then margin, then pair_id: ``_best`` row, ``_bgap``, ``_bpid``); for curriculum
    the best candidate (highest chosen score, then id: ``_bid``)."""
    scored = df.filter(pl.col("_scored"))
    if cfg.strategy == "curriculum":
        return scored.group_by("source_id").agg(
            _bid=pl.col("chosen_id").sort_by(["score_chosen", "chosen_id"], descending=True).first()
        )
    rank = [pl.col("_gap"), pl.col("margin").fill_null(0.0).fill_nan(0.0), pl.col("pair_id")]
    return scored.group_by("source_id").agg(
        _best=pl.col("_i").sort_by(rank, descending=True).first(),
        _bpid=pl.col("pair_id").sort_by(rank, descending=True).first(),
        _bgap=pl.col("_gap").max(),
    )


def _select(df: pl.DataFrame, cfg: PairsConfig) -> tuple[pl.Expr, pl.Expr]:
    """Per row: the drop reason (null: kept) and its detail."""
    scored, gap = pl.col("_scored"), pl.col("_gap")
    null_score = pl.lit(str(Reason.NULL_SCORE))
    if cfg.strategy == "all_pairs":
        m = pl.col("margin")
        why = (
            pl.when(m.is_null() | m.is_nan())
            .then(null_score)
            .when(m < cfg.min_margin)
            .then(pl.lit(BELOW_MIN_MARGIN))
        )
        detail = (
            pl.when(m.is_null() | m.is_nan())
            .then(pl.lit("no margin"))
            .when(m < cfg.min_margin)
            .then(pl.format("margin {} < {}", m.round(3), pl.lit(cfg.min_margin)))
        )
        return why, detail
    no_score = "a candidate of this pair has no aggregated score"
    if cfg.strategy == "best_worst":
        # the best pair of a source: largest score gap, then margin, then pair_id
        best_gap, best, best_pid = pl.col("_bgap"), pl.col("_best"), pl.col("_bpid")
        why = (
            pl.when(~scored)
            .then(null_score)
            .when(best_gap <= 0)
            .then(pl.lit(str(Reason.TIE)))
            .when(pl.col("_i") != best)
            .then(pl.lit(str(Reason.NOT_SELECTED)))
        )
        detail = (
            pl.when(~scored)
            .then(pl.lit(no_score))
            .when(best_gap <= 0)
            .then(
                pl.format(
                    "scores do not separate chosen from rejected (best gap {})", best_gap.round(3)
                )
            )
            .when(pl.col("_i") != best)
            .then(pl.format("best_worst: pair {} was selected", best_pid))
        )
        return why, detail
    # curriculum (Curry-DPO): pairs whose chosen is the source's best candidate, easiest
    # (largest score gap) first, in curriculum_stages stages
    best_id = pl.col("_bid")
    mine = scored & (pl.col("chosen_id") == best_id) & (gap > 0)
    why = (
        pl.when(~scored)
        .then(null_score)
        .when(mine)
        .then(pl.lit(None, pl.Utf8))
        .when(pl.col("chosen_id") == best_id)
        .then(pl.lit(str(Reason.TIE)))
        .otherwise(pl.lit(str(Reason.NOT_SELECTED)))
    )
    detail = (
        pl.when(~scored)
        .then(pl.lit(no_score))
        .when(mine)
        .then(pl.lit(None, pl.Utf8))
        .when(pl.col("chosen_id") == best_id)
        .then(pl.lit("scores do not separate chosen from rejected"))
        .otherwise(pl.lit("curriculum: chosen is not the best candidate"))
    )
    return why, detail


def _conditioned(prompt: list[dict], flags: list[str]) -> list[dict]:
    target = next((f[len(RA_TARGET) :] for f in flags if f.startswith(RA_TARGET)), None)
    if target is None:
        return prompt
    note = f"Write a response whose quality score (0 to 1) is {target}."
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": prompt[0]["content"] + "\n" + note}] + prompt[1:]
    return [{"role": "system", "content": note}] + prompt


def published_table(pairs: pa.Table, prompts: pa.Table, candidates: pa.Table) -> pa.Table:
    """Join the selected pairs with their prompt and texts into the PUBLISHED schema
    (TRL's conversational form: ``prompt`` the shared conversation, ``chosen`` /
    ``rejected`` each candidate's whole assistant side: for several turns, its earlier
    answers and the follow-up user turns, then its last answer). Column joins; the rare
    rows that need Python (tools in a prompt's meta, a reward-augmented target in the
    flags) go through :func:`conversation.tools` and :func:`_conditioned`."""
    msg = pl.Struct({"role": pl.String, "content": pl.String})
    pr, cd = _prompt_rows(prompts), _response_sides(candidates, msg)
    df = pl.from_arrow(pairs).with_row_index("_i")
    out = (
        df.join(pr.rename({"prompt_id": "_pid"}), left_on="prompt_id", right_on="_pid", how="left")
        .join(
            cd.rename({"candidate_id": "_c", "policy": "chosen_policy", "side": "chosen"}),
            left_on="chosen_id",
            right_on="_c",
            how="left",
        )
        .join(
            cd.rename({"candidate_id": "_r", "policy": "rejected_policy", "side": "rejected"}),
            left_on="rejected_id",
            right_on="_r",
            how="left",
        )
        .sort("_i")
    )
    for col, what in (
        ("prompt", "prompt_id"),
        ("chosen", "chosen_id"),
        ("rejected", "rejected_id"),
    ):
        missing = out.filter(pl.col(col).is_null())
        if missing.height:
            raise KeyError(f"published_table: {what} {missing[what][0]!r} has no row")
    out = out.with_columns(
        margin=pl.col("margin").fill_nan(None).fill_null(0.0),
        flipped=(pl.col("decision") == "flip").fill_null(False),
    )
    targeted = out["flags"].list.eval(pl.element().str.starts_with(RA_TARGET)).list.any()
    if targeted.any():
        prompts_ = out["prompt"].to_list()
        flags_ = out["flags"].to_list()
        for i in targeted.fill_null(False).arg_true().to_list():
            prompts_[i] = _conditioned(prompts_[i], flags_[i])
        out = out.with_columns(prompt=pl.Series(prompts_, dtype=pl.List(msg)))
    return conform(out.select(PUBLISHED.names).to_arrow(), PUBLISHED, "published")


def _prompt_rows(prompts: pa.Table) -> pl.DataFrame:
    """Per prompt id (its last row): the prompt and its tools (from the meta)."""
    pr = pl.from_arrow(prompts.select(["prompt_id", "prompt", "meta"]))
    has_tools = pr["meta"].str.contains("tools", literal=True).fill_null(False)
    tools_col = [None] * pr.height
    for i in has_tools.arg_true().to_list():
        tools_col[i] = tools(pr["meta"][i])
    return pr.with_columns(tools=pl.Series(tools_col, dtype=pl.String)).unique(
        "prompt_id", keep="last", maintain_order=True
    )


def _response_sides(candidates: pa.Table, msg: pl.DataType) -> pl.DataFrame:
    """Per candidate id (its last row): its policy and its whole assistant side (earlier
    turns' history, then its answer)."""
    cols = ["candidate_id", "text", "policy"]
    cd = pl.from_arrow(candidates.select(cols))
    hist = (
        pl.from_arrow(candidates.column("history")).cast(pl.List(msg))
        if "history" in candidates.column_names
        else pl.Series("history", [None] * cd.height, dtype=pl.List(msg))
    )
    last = pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col("text").fill_null("")))
    return (
        cd.with_columns(history=hist.alias("history"))
        .select(
            "candidate_id",
            "policy",
            side=pl.concat_list(pl.col("history").fill_null(pl.lit([], dtype=pl.List(msg))), last),
        )
        .unique("candidate_id", keep="last", maintain_order=True)
    )
