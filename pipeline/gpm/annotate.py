"""The GPM as an annotator (stage ``gpm``) and as the chooser of round 2's pairs (see
:mod:`pipeline.gpm.model`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.gpm.cycles import find_cycles, flag_cyclic_prompts
from pipeline.gpm.model import ANNOTATOR, NO_EMBEDDING, STAGE, GPMModel, sigmoid_pair, skew_scores
from pipeline.gpm.train import train_gpm
from pipeline.hashing import stable_hash_rows
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError
from schemas.tables import VOTES, check_table

log = logging.getLogger("prefcurate.gpm")

# ------------------------------------------------------------------------------ annotator


def _lookup(table: pa.Table, id_column: str) -> tuple[dict[str, int], np.ndarray]:
    """(id → row, float32 matrix) of an embedding table ``(id_column, embedding)``."""
    from pipeline.embeddings import embeddings_matrix

    ids, mat = embeddings_matrix(table, id_column, stage="gpm")
    return {c: i for i, c in enumerate(ids)}, mat.astype(np.float32, copy=False)


def _score_groups(
    model: GPMModel, cand: pl.DataFrame, c_mat: np.ndarray, p_mat: np.ndarray | None
) -> pl.DataFrame:
    """All canonical pairs (a < b) within each (source_id, prompt_id) of ``cand``.

    ``cand`` holds ``source_id, prompt_id, candidate_id, _c`` (row of ``c_mat``) and
    ``_p`` (row of ``p_mat``). Each candidate is embedded once; pairs are scored from the
    stored embeddings.
    """
    cand = cand.with_row_index("_i")
    x = None
    if model.prompt is not None:
        x = model.prompt(p_mat[cand["_p"].to_numpy()])
    v = model._embed_std(model.resp(c_mat[cand["_c"].to_numpy()]), x)
    lam = model._gate_std(x, cand.height)
    keys = ["source_id", "prompt_id"]
    left = cand.select(
        *keys, pl.col("candidate_id").alias("candidate_a"), pl.col("_i").alias("_ia")
    )
    right = cand.select(
        *keys, pl.col("candidate_id").alias("candidate_b"), pl.col("_i").alias("_ib")
    )
    pairs = left.join(right, on=keys, how="inner", nulls_equal=True).filter(
        pl.col("candidate_a") < pl.col("candidate_b")
    )
    ia, ib = pairs["_ia"].to_numpy(), pairs["_ib"].to_numpy()
    s = skew_scores(v[ia], v[ib], lam[ia])
    return pairs.with_columns(
        s=pl.Series(s, dtype=pl.Float64),
        prob_a=pl.Series(sigmoid_pair(s / model.tau), dtype=pl.Float64),
    )


def _candidate_frame(candidates: pa.Table) -> pl.DataFrame:
    """``source_id, prompt_id, candidate_id`` of CANDIDATES, each candidate once, in input
    order (source_id null when the table has none)."""
    for col in ("prompt_id", "candidate_id"):
        if col not in candidates.schema.names:
            raise PrefcurateError(f"gpm: candidates table needs column '{col}'")
    df = pl.from_arrow(
        candidates.select(
            [c for c in ("source_id", "prompt_id", "candidate_id") if c in candidates.schema.names]
        )
    )
    if "source_id" not in df.columns:
        df = df.with_columns(source_id=pl.lit(None, pl.Utf8))
    return df.select("source_id", "prompt_id", "candidate_id").unique(maintain_order=True)


def _usable(
    candidates: pa.Table, c_idx: dict[str, int], p_idx: dict[str, int] | None
) -> tuple[pl.DataFrame, list[dict]]:
    """Candidates that can be scored (with ``_c`` / ``_p`` rows) and the drop rows."""
    df = _candidate_frame(candidates).with_columns(
        _c=pl.col("candidate_id").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _p=(
            pl.col("prompt_id").replace_strict(p_idx, default=None, return_dtype=pl.Int64)
            if p_idx is not None
            else pl.lit(0, pl.Int64)
        ),
    )
    missing = df.filter(pl.col("_c").is_null() | pl.col("_p").is_null())
    drops = [
        {
            "source_id": r["source_id"],
            "row_id": r["candidate_id"],
            "reason": NO_EMBEDDING,
            "detail": "no candidate embedding" if r["_c"] is None else "no prompt embedding",
        }
        for r in missing.iter_rows(named=True)
    ]
    ok = df.filter(pl.col("_c").is_not_null() & pl.col("_p").is_not_null())
    size = ok.group_by(["source_id", "prompt_id"]).agg(n=pl.len())
    ok = ok.join(size, on=["source_id", "prompt_id"], how="left", nulls_equal=True)
    single = ok.filter(pl.col("n") < 2)
    drops += [
        {
            "source_id": r["source_id"],
            "row_id": r["candidate_id"],
            "reason": Reason.SINGLE_CANDIDATE,
            "detail": "no other candidate to compare",
        }
        for r in single.iter_rows(named=True)
    ]
    return ok.filter(pl.col("n") >= 2).drop("n"), drops


def gpm_votes(
    model: GPMModel,
    candidates: pa.Table,
    candidate_embeddings: pa.Table,
    prompt_embeddings: pa.Table | None = None,
    *,
    tie_band: float = 0.05,
    annotator: str = ANNOTATOR,
) -> pa.Table:
    """VOTES for every pair of each prompt's candidates, scored by ``model``.

    Input: candidates (``prompt_id``, ``candidate_id``, optionally ``source_id``), the
    embed stage's ``candidate_embeddings`` (``candidate_id``, ``embedding``) and
    ``prompt_embeddings`` (``prompt_id``, ``embedding``; needed when the head was trained
    with prompts). Output: VOTES, one row per canonical pair (candidate_a < candidate_b):
    annotator ``gpm``, order null, prob_a = P(a ≻ b), verdict a / b, or tie when
    |prob_a − ½| < ``tie_band``; raw_output ``s=<score>``. Candidates without an
    embedding, and prompts left with a single candidate, get no vote.
    """
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = (None, None)
    if model.prompt is not None:
        if prompt_embeddings is None:
            raise PrefcurateError(
                "gpm: the head was trained with prompt embeddings; pass "
                "prompt_embeddings to gpm_votes"
            )
        p_idx, p_mat = _lookup(prompt_embeddings, "prompt_id")
    ok, _ = _usable(candidates, c_idx, p_idx)
    if not ok.height:
        return VOTES.empty_table()
    scored = _score_groups(model, ok, c_mat, p_mat)
    return _votes_table(scored, tie_band, annotator)


def _votes_table(scored: pl.DataFrame, tie_band: float, annotator: str) -> pa.Table:
    p = pl.col("prob_a")
    out = scored.select(
        pl.col("prompt_id"),
        pl.col("source_id").fill_null(""),
        pl.col("candidate_a"),
        pl.col("candidate_b"),
        annotator=pl.lit(annotator),
        order=pl.lit(None, pl.Utf8),
        verdict=pl.when((p - 0.5).abs() < tie_band)
        .then(pl.lit("tie"))
        .when(p > 0.5)
        .then(pl.lit("a"))
        .otherwise(pl.lit("b")),
        prob_a=p,
        raw_output=pl.format("s={}", pl.col("s").round(6)),
        parse_error=pl.lit(None, pl.Utf8),
    )
    t = out.to_arrow()
    return check_table(
        pa.Table.from_arrays(
            [t.column(c).cast(f.type) for c, f in zip(VOTES.names, VOTES)], schema=VOTES
        ),
        VOTES,
        "votes",
    )


def comparisons_p_hat(comparisons: pa.Table, prior: float = 0.5) -> np.ndarray:
    """P̂(a ≻ b) per comparison from its counts, Jeffreys-smoothed as in the margins
    stage: (n_a + ½·n_tie + a) / (S + 2a); NaN without a valid vote."""
    n_a = np.asarray(comparisons.column("n_a").to_pylist(), dtype=np.float64)
    n_b = np.asarray(comparisons.column("n_b").to_pylist(), dtype=np.float64)
    n_t = np.asarray(comparisons.column("n_tie").to_pylist(), dtype=np.float64)
    s = n_a + n_b + n_t
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (n_a + 0.5 * n_t + prior) / (s + 2 * prior)
    return np.where(s > 0, p, np.nan)


def _training_pairs(
    comparisons: pa.Table, c_idx: dict[str, int], p_idx: dict[str, int] | None, prior: float
) -> pl.DataFrame:
    """Training pairs: the comparisons with a valid vote whose candidates (and prompt, when
    ``p_idx`` is given) are embedded; columns ``source_id, prompt_id, candidate_a,
    candidate_b``, the soft label ``p`` (:func:`comparisons_p_hat`) and the rows ``_a``,
    ``_b`` (of the candidate matrix) and ``_p`` (of the prompt matrix; 0 without one)."""
    comp = (
        pl.from_arrow(comparisons.select(["source_id", "prompt_id", "candidate_a", "candidate_b"]))
        if comparisons.num_rows
        else pl.DataFrame(
            schema={c: pl.Utf8 for c in ("source_id", "prompt_id", "candidate_a", "candidate_b")}
        )
    )
    p_hat = comparisons_p_hat(comparisons, prior) if comparisons.num_rows else np.zeros(0)
    return comp.with_columns(
        p=pl.Series(p_hat, dtype=pl.Float64),
        _a=pl.col("candidate_a").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _b=pl.col("candidate_b").replace_strict(c_idx, default=None, return_dtype=pl.Int64),
        _p=(
            pl.col("prompt_id").replace_strict(p_idx, default=None, return_dtype=pl.Int64)
            if p_idx is not None
            else pl.lit(0, pl.Int64)
        ),
    ).filter(
        pl.col("p").is_not_nan()
        & pl.col("_a").is_not_null()
        & pl.col("_b").is_not_null()
        & pl.col("_p").is_not_null()
    )


def _fit(
    train: pl.DataFrame, c_mat: np.ndarray, p_mat: np.ndarray | None, cfg: GPMConfig
) -> GPMModel:
    """:func:`train_gpm` on :func:`_training_pairs` rows (without prompts when ``p_mat`` is
    None)."""
    x = p_mat[train["_p"].to_numpy()] if p_mat is not None else None
    return train_gpm(
        x, c_mat[train["_a"].to_numpy()], c_mat[train["_b"].to_numpy()], train["p"].to_numpy(), cfg
    )


def annotate_gpm(
    comparisons: pa.Table,
    candidates: pa.Table,
    candidate_embeddings: pa.Table,
    prompt_embeddings: pa.Table,
    cfg: GPMConfig,
) -> StageResult:
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
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = _lookup(prompt_embeddings, "prompt_id")
    ok, drops = _usable(candidates, c_idx, p_idx)
    counts = StageCounts(
        rows_in=ok.height + len(drops),
        kept=ok.height,
        dropped=dict(_count(d["reason"] for d in drops)),
    )
    panel_cycles = find_cycles(comparisons, band=cfg.cycle_band, p_column="p_a", origin="panel")
    info: dict[str, Any] = {"annotator": cfg.annotator, "folds": cfg.folds}
    comp = _training_pairs(comparisons, c_idx, p_idx, cfg.prior)
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
        model = _fit(train, c_mat, p_mat, cfg)
        scored = _score_groups(model, target.drop("_fold"), c_mat, p_mat)
        scored_parts.append(scored)
        fold_info.append({k: model.info[k] for k in ("pairs", "train_accuracy", "seconds")})
    scored = pl.concat(scored_parts) if scored_parts else None
    votes = (
        _votes_table(scored, cfg.tie_band, cfg.annotator)
        if scored is not None
        else VOTES.empty_table()
    )
    # agreement with the panel where both exist (out of fold when folds >= 2)
    agree = None
    if scored is not None:
        j = scored.join(
            comp.select("source_id", "prompt_id", "candidate_a", "candidate_b", "p"),
            on=["source_id", "prompt_id", "candidate_a", "candidate_b"],
            nulls_equal=True,
        ).filter(pl.col("p") != 0.5)
        if j.height:
            agree = float(((j["prob_a"] > 0.5) == (j["p"] > 0.5)).mean())
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


def select_uncertain_pairs(
    comparisons: pa.Table,
    candidates: pa.Table,
    candidate_embeddings: pa.Table,
    prompt_embeddings: pa.Table | None,
    cfg: GPMConfig,
    per_prompt: int,
    judged: pa.Table | None = None,
) -> tuple[list[tuple[str, str, str, str]], list[dict], dict]:
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
    keys = ["source_id", "prompt_id"]
    pair_key = [*keys, "candidate_a", "candidate_b"]
    c_idx, c_mat = _lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = (
        _lookup(prompt_embeddings, "prompt_id") if prompt_embeddings is not None else (None, None)
    )
    cand = _candidate_frame(candidates)
    ok, missing = _usable(candidates, c_idx, p_idx)
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
    # already judged: round 1's pairwise pairs (either orientation)
    judged = comparisons if judged is None else judged
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
    todo = pairs.filter(pl.col("_judged").is_null()).drop("_judged")
    info: dict[str, Any] = {
        "per_prompt": per_prompt,
        "prompts": groups.height,
        "pairs": pairs.height,
        "already_judged": pairs.height - todo.height,
        "unjudged": todo.height,
        "unscored_candidates": sum(d["reason"] == NO_EMBEDDING for d in missing),
        "prompts_with_single_candidate": size.filter(pl.col("n") < 2).height,
        "training_pairs": 0,
        "train_loss": None,
        "train_accuracy": None,
        "train_seconds": None,
        "fallback": None,
    }
    # the head: trained on round 1 when something is left to rank
    labelled = (
        comparisons.filter(comparisons.column("p_a").is_valid())
        if comparisons.num_rows
        else comparisons
    )
    train = _training_pairs(labelled, c_idx, p_idx, cfg.prior)
    info["training_pairs"] = train.height
    prob = pl.lit(None, pl.Float64)
    if train.height < 2:
        info["fallback"] = (
            f"{train.height} comparison(s) with a p_a between embedded "
            f"candidates (need 2): no GPM head; up to per_prompt="
            f"{per_prompt} unjudged pairs per prompt in stable-hash order"
        )
    elif todo.filter(pl.col("_rank")).height:
        model = _fit(train, c_mat, p_mat, cfg)
        scored = _score_groups(model, ok, c_mat, p_mat).select(*pair_key, "prob_a")
        todo = todo.join(scored, on=pair_key, how="left", nulls_equal=True)
        prob = pl.col("prob_a")
        info.update(
            train_loss=model.info["loss_by_epoch"][-1],
            train_accuracy=model.info["train_accuracy"],
            train_seconds=model.info["seconds"],
        )
    hashes = stable_hash_rows(*todo.select("prompt_id", "candidate_a", "candidate_b").get_columns())
    todo = (
        todo.with_columns(prob_a=prob, _h=pl.Series(hashes, dtype=pl.Utf8))
        .with_columns(_u=(pl.col("prob_a") - 0.5).abs().fill_null(0.0))
        .sort(["_g", "_rank", "_u", "_h"])
        .with_columns(_k=pl.int_range(pl.len()).over(["_g", "_rank"]))
    )
    take = todo.with_columns(_take=~pl.col("_rank") | (pl.col("_k") < per_prompt))
    chosen = take.filter(pl.col("_take"))
    skipped = take.filter(~pl.col("_take"))
    out = list(chosen.select("prompt_id", "source_id", "candidate_a", "candidate_b").iter_rows())
    if info["fallback"] is None:
        drops = [
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
    else:
        drops = [
            {
                "source_id": sid,
                "row_id": f"{a}|{b}",
                "reason": Reason.OVER_BUDGET,
                "detail": f"no GPM head to rank by: beyond per_prompt={per_prompt} in "
                f"stable-hash order",
            }
            for sid, a, b in skipped.select("source_id", "candidate_a", "candidate_b").iter_rows()
        ]

    def certainty(df: pl.DataFrame) -> float | None:
        u = df.filter(pl.col("prob_a").is_not_null())["_u"]
        return round(float(u.mean()), 4) if len(u) else None

    info.update(
        pairs_scored=int(todo["prob_a"].is_not_null().sum()),
        selected=len(out),
        skipped=len(drops),
        unscored_pairs=int((~todo["_rank"]).sum()),
        mean_certainty_selected=certainty(chosen),
        mean_certainty_skipped=certainty(skipped),
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


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[str(it)] = out.get(str(it), 0) + 1
    return out
