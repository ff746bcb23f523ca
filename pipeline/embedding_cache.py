"""The on-disk embedding cache: text hash → vector, per model, in Parquet shards written
atomically; and the conversions between numpy vectors and Arrow fixed-size lists that
the cache and the embedding tables share."""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import stable_hash
from pipeline.store.datasets import fsync_file


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
                mat = matrix(pq.read_table(shard, columns=["embedding"]).column(0))
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
                "embedding": fixed_list(vectors, dim),
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


def fixed_list(vectors: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
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
