"""Round 2 of active judging: the unjudged pairs a GPM head trained on round 1 is least
sure of (:func:`select_uncertain_pairs`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.gpm.model import NO_EMBEDDING
from pipeline.gpm.scoring import (
    candidate_frame,
    embedding_lookup,
    fit_head,
    score_groups,
    training_pairs,
    usable_candidates,
)
from pipeline.hashing import stable_hash_rows
from pipeline.stage import Reason
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError

log = logging.getLogger("prefcurate.gpm")

_GROUP = ["source_id", "prompt_id"]
_PAIR = [*_GROUP, "candidate_a", "candidate_b"]


def select_uncertain_pairs(
    comparisons: pa.Table,
    candidates: pa.Table,
    candidate_embeddings: pa.Table,
    prompt_embeddings: pa.Table | None,
    cfg: GPMConfig,
    per_prompt: int,
    judged: pa.Table | None = None,
) -> tuple[list[tuple[str, str, str, str]], list[dict], dict]:
    # long by its docstring (round 2's whole contract): the steps are the helpers below
    """Round 2 of active judging: per prompt, the unjudged pairs the GPM is least sure of.

    Inputs: round 1's COMPARISONS (the pairs already judged, aggregated), CANDIDATES
    (``prompt_id``, ``candidate_id``, optionally ``source_id``), the embed stage's
    ``candidate_embeddings`` and ``prompt_embeddings`` (None: a head without prompts). One
    head is trained, in sample (it only ranks), on the comparisons with a non-null ``p_a``
    (label p̂ from the counts, as :func:`annotate_gpm`); it scores every canonical pair
    (candidate_a < candidate_b) of each (prompt_id, source_id) group of ``candidates`` —
    the grouping of :func:`pipeline.annotate.judging.select_pairs`. Pairs present in
    ``judged`` (any table with source_id, prompt_id, candidate_a, candidate_b: round 1's
    pairwise judge VOTES) are not returned and not dropped (they are judged already);
    ``judged=None`` takes the pairs of ``comparisons``. Pass ``judged`` whenever the
    comparisons hold more than the judges' pairs: Yes/No rubric votes cover every pair of a
    prompt, and counting them as judged would leave round 2 nothing to judge.

    Returns (pairs, dropped rows, info), like ``select_pairs``. Pairs: (prompt_id,
    source_id, a, b) to judge — per group the ``per_prompt`` unjudged pairs with the
    smallest |P(a ≻ b) − ½| (ties by :func:`pipeline.hashing.stable_hash` of (prompt_id,
    a, b)), plus every unjudged pair with a candidate (or prompt) that has no embedding:
    the head cannot rank it, so it is judged, on top of ``per_prompt``, and counted in
    ``info["unscored_pairs"]``. Dropped: every other unjudged pair, reason
    ``first_signal``, row_id ``a|b``. With fewer than 2 comparisons to train on (a p_a,
    both candidates embedded) there is no head: ``info["fallback"]`` says so and the
    ``per_prompt`` pairs are taken in stable-hash order, the rest dropped ``over_budget``
    (as ``select_pairs`` does beyond its cap). Every unjudged pair is returned or dropped.
    ``info``: pairs (canonical pairs of the groups), already_judged, unjudged,
    pairs_scored, selected, skipped, unscored_candidates, unscored_pairs, training
    (pairs, final loss, accuracy, seconds), mean |P − ½| of the selected and skipped
    pairs, fallback, prompts_with_single_candidate, seconds.

    >>> from schemas.tables import COMPARISONS
    >>> c = pa.table({"prompt_id": ["p"] * 3, "source_id": ["s"] * 3,
    ...               "candidate_id": ["x", "y", "z"]})
    >>> e = pa.table({"candidate_id": ["x", "y", "z"],
    ...               "embedding": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]})
    >>> pairs, drops, info = select_uncertain_pairs(COMPARISONS.empty_table(), c, e, None,
    ...                                             GPMConfig(), per_prompt=1)
    >>> len(pairs), [str(d["reason"]) for d in drops], info["fallback"] is not None
    (1, ['over_budget', 'over_budget'], True)
    """
    if per_prompt < 0:
        raise PrefcurateError(
            f"gpm: per_prompt must be >= 0 (got {per_prompt}): the number "
            f"of unjudged pairs to judge per prompt"
        )
    t0 = time.perf_counter()
    c_idx, c_mat = embedding_lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = (
        embedding_lookup(prompt_embeddings, "prompt_id")
        if prompt_embeddings is not None
        else (None, None)
    )
    ok, missing = usable_candidates(candidates, c_idx, p_idx)
    pairs, n_groups, n_single = _group_pairs(candidates, ok)
    todo = _unjudged(pairs, comparisons if judged is None else judged)
    info: dict[str, Any] = {
        "per_prompt": per_prompt,
        "prompts": n_groups,
        "pairs": pairs.height,
        "already_judged": pairs.height - todo.height,
        "unjudged": todo.height,
        "unscored_candidates": sum(d["reason"] == NO_EMBEDDING for d in missing),
        "prompts_with_single_candidate": n_single,
        "training_pairs": 0,
        "train_loss": None,
        "train_accuracy": None,
        "train_seconds": None,
        "fallback": None,
    }
    todo, prob = _rank(todo, comparisons, ok, (c_idx, c_mat, p_idx, p_mat), cfg, per_prompt, info)
    todo, chosen, skipped = _take(todo, prob, per_prompt)
    out = list(chosen.select("prompt_id", "source_id", "candidate_a", "candidate_b").iter_rows())
    drops = _skip_rows(skipped, info["fallback"], per_prompt)
    info.update(
        pairs_scored=int(todo["prob_a"].is_not_null().sum()),
        selected=len(out),
        skipped=len(drops),
        unscored_pairs=int((~todo["_rank"]).sum()),
        mean_certainty_selected=_certainty(chosen),
        mean_certainty_skipped=_certainty(skipped),
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info(
        "gpm: %d of %d unjudged pair(s) chosen to judge (%d unscored), %d skipped%s",
        len(out),
        todo.height,
        info["unscored_pairs"],
        len(drops),
        "" if info["fallback"] is None else " (fallback: no head)",
    )
    return out, drops, info


def _group_pairs(candidates: pa.Table, ok: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
    """Every canonical pair of each (source_id, prompt_id) group of ``candidates``, with
    its group's position ``_g`` and ``_rank`` (both candidates in ``ok``: the head can
    score it); and the number of groups, and of groups with a single candidate."""
    keys = _GROUP
    cand = candidate_frame(candidates)
    cand = cand.join(
        ok.select(*keys, "candidate_id", _ok=pl.lit(True)),
        on=[*keys, "candidate_id"],
        how="left",
        nulls_equal=True,
    )
    groups = cand.select(keys).unique(maintain_order=True).with_row_index("_g")
    size = cand.group_by(keys).agg(n=pl.len())
    # every canonical pair of each group, with its group's position and rankability
    left = cand.select(
        *keys,
        pl.col("candidate_id").alias("candidate_a"),
        pl.col("_ok").fill_null(False).alias("_oa"),
    )
    right = cand.select(
        *keys,
        pl.col("candidate_id").alias("candidate_b"),
        pl.col("_ok").fill_null(False).alias("_ob"),
    )
    pairs = (
        left.join(right, on=keys, nulls_equal=True)
        .filter(pl.col("candidate_a") < pl.col("candidate_b"))
        .join(groups, on=keys, how="left", nulls_equal=True)
        .with_columns(_rank=pl.col("_oa") & pl.col("_ob"))
        .drop("_oa", "_ob")
    )
    return pairs, groups.height, size.filter(pl.col("n") < 2).height


def _unjudged(pairs: pl.DataFrame, judged: pa.Table) -> pl.DataFrame:
    """The ``pairs`` not in ``judged`` (in either orientation)."""
    keys, pair_key = _GROUP, _PAIR
    # already judged: round 1's pairwise pairs (either orientation)
    if judged.num_rows:
        done = (
            pl.from_arrow(judged.select(pair_key))
            .select(
                *keys,
                pl.min_horizontal("candidate_a", "candidate_b").alias("candidate_a"),
                pl.max_horizontal("candidate_a", "candidate_b").alias("candidate_b"),
            )
            .unique()
            .with_columns(_judged=pl.lit(True))
        )
        pairs = pairs.join(done, on=pair_key, how="left", nulls_equal=True)
    else:
        pairs = pairs.with_columns(_judged=pl.lit(None, pl.Boolean))
    return pairs.filter(pl.col("_judged").is_null()).drop("_judged")


def _rank(
    todo: pl.DataFrame,
    comparisons: pa.Table,
    ok: pl.DataFrame,
    emb: tuple[dict[str, int], np.ndarray, dict[str, int] | None, np.ndarray | None],
    cfg: GPMConfig,
    per_prompt: int,
    info: dict[str, Any],
) -> tuple[pl.DataFrame, pl.Expr]:
    """The head, trained on round 1 when something is left to rank: (``todo``, with the
    head's ``prob_a`` when there is one, and the expression of P(a ≻ b), null without a
    head); ``info`` gets the training's numbers, or the fallback."""
    c_idx, c_mat, p_idx, p_mat = emb
    labelled = (
        comparisons.filter(comparisons.column("p_a").is_valid())
        if comparisons.num_rows
        else comparisons
    )
    train = training_pairs(labelled, c_idx, p_idx, cfg.prior)
    info["training_pairs"] = train.height
    prob = pl.lit(None, pl.Float64)
    if train.height < 2:
        info["fallback"] = (
            f"{train.height} comparison(s) with a p_a between embedded "
            f"candidates (need 2): no GPM head; up to per_prompt="
            f"{per_prompt} unjudged pairs per prompt in stable-hash order"
        )
    elif todo.filter(pl.col("_rank")).height:
        model = fit_head(train, c_mat, p_mat, cfg)
        scored = score_groups(model, ok, c_mat, p_mat).select(*_PAIR, "prob_a")
        todo = todo.join(scored, on=_PAIR, how="left", nulls_equal=True)
        prob = pl.col("prob_a")
        info.update(
            train_loss=model.info["loss_by_epoch"][-1],
            train_accuracy=model.info["train_accuracy"],
            train_seconds=model.info["seconds"],
        )
    return todo, prob


def _take(
    todo: pl.DataFrame, prob: pl.Expr, per_prompt: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(``todo`` in the order of choice, the chosen pairs, the skipped ones): per group, the
    ``per_prompt`` rankable pairs with the smallest |P − ½| (ties by stable hash), and
    every pair the head cannot rank."""
    hashes = stable_hash_rows(*todo.select("prompt_id", "candidate_a", "candidate_b").get_columns())
    todo = (
        todo.with_columns(prob_a=prob, _h=pl.Series(hashes, dtype=pl.Utf8))
        .with_columns(_u=(pl.col("prob_a") - 0.5).abs().fill_null(0.0))
        .sort(["_g", "_rank", "_u", "_h"])
        .with_columns(_k=pl.int_range(pl.len()).over(["_g", "_rank"]))
    )
    take = todo.with_columns(_take=~pl.col("_rank") | (pl.col("_k") < per_prompt))
    return todo, take.filter(pl.col("_take")), take.filter(~pl.col("_take"))


def _skip_rows(skipped: pl.DataFrame, fallback: str | None, per_prompt: int) -> list[dict]:
    """The drop rows of the skipped pairs: ``first_signal`` when a head ranked them, else
    (a ``fallback``) ``over_budget``: beyond ``per_prompt`` in stable-hash order."""
    if fallback is None:
        return [
            {
                "source_id": sid,
                "row_id": f"{a}|{b}",
                "reason": Reason.FIRST_SIGNAL,
                "detail": f"gpm P(a≻b)={p:.3f}: confident, not judged",
            }
            for sid, a, b, p in skipped.select(
                "source_id", "candidate_a", "candidate_b", "prob_a"
            ).iter_rows()
        ]
    return [
        {
            "source_id": sid,
            "row_id": f"{a}|{b}",
            "reason": Reason.OVER_BUDGET,
            "detail": f"no GPM head to rank by: beyond per_prompt={per_prompt} in "
            f"stable-hash order",
        }
        for sid, a, b in skipped.select("source_id", "candidate_a", "candidate_b").iter_rows()
    ]


def _certainty(df: pl.DataFrame) -> float | None:
    """Mean |P − ½| of the pairs of ``df`` the head scored (None: none)."""
    u = df.filter(pl.col("prob_a").is_not_null())["_u"]
    return round(float(u.mean()), 4) if len(u) else None
