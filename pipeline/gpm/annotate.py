"""The GPM as an annotator (stage ``gpm``, :func:`annotate_gpm`; see
:mod:`pipeline.gpm.model`). The round-2 pair choice is in :mod:`pipeline.gpm.active`, what
both share (embedding lookups, pair scores, training pairs, VOTES) in
:mod:`pipeline.gpm.scoring`; this module re-exports their names."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.gpm.active import select_uncertain_pairs  # noqa: F401 - re-exported
from pipeline.gpm.cycles import find_cycles, flag_cyclic_prompts
from pipeline.gpm.model import STAGE
from pipeline.gpm.scoring import (  # noqa: F401 - comparisons_p_hat, gpm_votes: re-exported
    comparisons_p_hat,
    embedding_lookup,
    fit_head,
    gpm_votes,
    score_groups,
    training_pairs,
    usable_candidates,
    votes_table,
)
from pipeline.stage import StageCounts, StageResult, dropped_table
from schemas.config import GPMConfig
from schemas.tables import VOTES

log = logging.getLogger("prefcurate.gpm")


def annotate_gpm(
    comparisons: pa.Table,
    candidates: pa.Table,
    candidate_embeddings: pa.Table,
    prompt_embeddings: pa.Table,
    cfg: GPMConfig,
) -> StageResult:
    # over 60 lines with its docstring: the stage's steps in order, each one call or two
    """Stage: train GPM heads on the panel's comparisons, vote on every candidate pair,
    find cyclic prompts (from the panel and from the GPM).

    Inputs: COMPARISONS (the panel's aggregation), CANDIDATES, the embed stage's
    ``candidate_embeddings`` and ``prompt_embeddings``. Outputs: ``votes`` (VOTES,
    annotator ``cfg.annotator``; add them to the judges' votes and aggregate again) and
    ``cycles`` (CYCLES, origins ``panel`` and ``gpm``). Row unit: one candidate; kept: the
    candidates that were scored; dropped: ``no_embedding``, ``single_candidate``.
    ``info``: training (pairs, folds, train / out-of-fold accuracy against the panel),
    vote counts, and ``cyclic`` (:func:`flag_cyclic_prompts` counts).
    """
    t0 = time.perf_counter()
    c_idx, c_mat = embedding_lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = embedding_lookup(prompt_embeddings, "prompt_id")
    ok, drops = usable_candidates(candidates, c_idx, p_idx)
    counts = StageCounts(
        rows_in=ok.height + len(drops),
        kept=ok.height,
        dropped=dict(_count(d["reason"] for d in drops)),
    )
    panel_cycles = find_cycles(comparisons, band=cfg.cycle_band, p_column="p_a", origin="panel")
    info: dict[str, Any] = {"annotator": cfg.annotator, "folds": cfg.folds}
    comp = training_pairs(comparisons, c_idx, p_idx, cfg.prior)
    info["training_pairs"] = comp.height
    if comp.height == 0 or ok.height == 0:
        info.update(
            votes=0,
            skipped="no comparison with a valid vote between embedded candidates"
            if comp.height == 0
            else "no prompt with two embedded candidates",
            cyclic=flag_cyclic_prompts(panel_cycles).counts,
            seconds=round(time.perf_counter() - t0, 3),
        )
        return StageResult(
            STAGE,
            {"votes": VOTES.empty_table(), "cycles": panel_cycles},
            counts,
            dropped_table(STAGE, drops),
            info=info,
        )
    votes, agree, folds, fold_info = _cross_fit(ok, comp, c_mat, p_mat, cfg)
    gpm_cycles = find_cycles(votes, band=cfg.cycle_band, p_column="prob_a", origin="gpm")
    cycles = pa.concat_tables([panel_cycles, gpm_cycles])
    verdicts = dict(_count(votes.column("verdict").to_pylist()))
    info.update(
        folds=folds,
        heads=fold_info,
        votes=votes.num_rows,
        verdicts=verdicts,
        agreement_with_panel=agree,
        cyclic=flag_cyclic_prompts(cycles).counts,
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info(
        "gpm: %d votes from %d head(s), %d cyclic prompt(s) (panel %d, gpm %d)",
        votes.num_rows,
        len(fold_info),
        info["cyclic"]["prompts"],
        info["cyclic"]["prompts_panel"],
        info["cyclic"]["prompts_gpm"],
    )
    return StageResult(
        STAGE, {"votes": votes, "cycles": cycles}, counts, dropped_table(STAGE, drops), info=info
    )


def _cross_fit(
    ok: pl.DataFrame,
    comp: pl.DataFrame,
    c_mat: np.ndarray,
    p_mat: np.ndarray | None,
    cfg: GPMConfig,
) -> tuple[pa.Table, float | None, int, list[dict[str, Any]]]:
    """Cross-fitting by prompt: VOTES on the pairs of ``ok``'s prompts, each fold's by a
    head trained on the other folds' comparisons; their agreement with the panel
    (:func:`_agreement`), the number of folds, and each head's pairs, accuracy and
    seconds."""
    # cross-fitting by prompt: prompts dealt into folds by a seeded permutation
    prompts = ok.select("source_id", "prompt_id").unique(maintain_order=True)
    folds = max(1, min(cfg.folds, prompts.height))
    rng = np.random.default_rng(cfg.seed)
    prompts = prompts.with_columns(
        _fold=pl.Series(rng.permutation(prompts.height) % folds, dtype=pl.Int64)
    )
    ok = ok.join(prompts, on=["source_id", "prompt_id"], how="left", nulls_equal=True)
    comp = comp.join(
        prompts, on=["source_id", "prompt_id"], how="left", nulls_equal=True
    ).with_columns(pl.col("_fold").fill_null(-1))
    scored_parts, fold_info = [], []
    for f in range(folds):
        train = comp.filter(pl.col("_fold") != f) if folds > 1 else comp
        target = ok.filter(pl.col("_fold") == f) if folds > 1 else ok
        if not target.height:
            continue
        if not train.height:  # nothing to learn from outside this fold: train on it all
            train = comp
        model = fit_head(train, c_mat, p_mat, cfg)
        scored = score_groups(model, target.drop("_fold"), c_mat, p_mat)
        scored_parts.append(scored)
        fold_info.append({k: model.info[k] for k in ("pairs", "train_accuracy", "seconds")})
    scored = pl.concat(scored_parts) if scored_parts else None
    votes = (
        votes_table(scored, cfg.tie_band, cfg.annotator)
        if scored is not None
        else VOTES.empty_table()
    )
    return votes, _agreement(scored, comp), folds, fold_info


def _agreement(scored: pl.DataFrame | None, comp: pl.DataFrame) -> float | None:
    """How often the GPM's side agrees with the panel's where both exist (out of fold when
    folds >= 2; pairs the panel calls even are left out)."""
    if scored is None:
        return None
    j = scored.join(
        comp.select("source_id", "prompt_id", "candidate_a", "candidate_b", "p"),
        on=["source_id", "prompt_id", "candidate_a", "candidate_b"],
        nulls_equal=True,
    ).filter(pl.col("p") != 0.5)
    if j.height:
        return float(((j["prob_a"] > 0.5) == (j["p"] > 0.5)).mean())
    return None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[str(it)] = out.get(str(it), 0) + 1
    return out
