"""What the GPM stage and the round-2 pair choice share: the embedding lookups, the
candidates each prompt can compare, the scored canonical pairs of each prompt, the
training pairs (soft labels from the panel's counts), fitting a head, and VOTES."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.gpm.model import ANNOTATOR, NO_EMBEDDING, GPMModel, sigmoid_pair, skew_scores
from pipeline.gpm.train import train_gpm
from pipeline.stage import Reason
from schemas.config import GPMConfig
from schemas.errors import PrefcurateError
from schemas.tables import VOTES, check_table


def embedding_lookup(table: pa.Table, id_column: str) -> tuple[dict[str, int], np.ndarray]:
    """(id → row, float32 matrix) of an embedding table ``(id_column, embedding)``."""
    from pipeline.embeddings import embeddings_matrix

    ids, mat = embeddings_matrix(table, id_column, stage="gpm")
    return {c: i for i, c in enumerate(ids)}, mat.astype(np.float32, copy=False)


def score_groups(
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


def candidate_frame(candidates: pa.Table) -> pl.DataFrame:
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


def usable_candidates(
    candidates: pa.Table, c_idx: dict[str, int], p_idx: dict[str, int] | None
) -> tuple[pl.DataFrame, list[dict]]:
    """Candidates that can be scored (with ``_c`` / ``_p`` rows) and the drop rows."""
    df = candidate_frame(candidates).with_columns(
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
    c_idx, c_mat = embedding_lookup(candidate_embeddings, "candidate_id")
    p_idx, p_mat = (None, None)
    if model.prompt is not None:
        if prompt_embeddings is None:
            raise PrefcurateError(
                "gpm: the head was trained with prompt embeddings; pass "
                "prompt_embeddings to gpm_votes"
            )
        p_idx, p_mat = embedding_lookup(prompt_embeddings, "prompt_id")
    ok, _ = usable_candidates(candidates, c_idx, p_idx)
    if not ok.height:
        return VOTES.empty_table()
    scored = score_groups(model, ok, c_mat, p_mat)
    return votes_table(scored, tie_band, annotator)


def votes_table(scored: pl.DataFrame, tie_band: float, annotator: str) -> pa.Table:
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


def training_pairs(
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


def fit_head(
    train: pl.DataFrame, c_mat: np.ndarray, p_mat: np.ndarray | None, cfg: GPMConfig
) -> GPMModel:
    """:func:`train_gpm` on :func:`training_pairs` rows (without prompts when ``p_mat`` is
    None)."""
    x = p_mat[train["_p"].to_numpy()] if p_mat is not None else None
    return train_gpm(
        x, c_mat[train["_a"].to_numpy()], c_mat[train["_b"].to_numpy()], train["p"].to_numpy(), cfg
    )
