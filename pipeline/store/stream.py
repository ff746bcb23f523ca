"""Streaming writers for publish (issue 19): every file sha256-hashed as its bytes go out
and fsynced as it closes, so publishing adds memory bounded by a row group or a 64 MB slice
and reads nothing back (``bench/publish.py``).

:class:`HashingSink` is the file pyarrow writes to; :func:`write_dataset` is
``datasets.Dataset.save_to_disk`` streamed; :class:`Worker` runs one writer in a second
thread so ``data.parquet`` and ``data/`` are written at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.hashing import file_hash
from schemas.errors import StoreError

_SINK_BUFFER = 8 << 20  # bytes buffered before the sink (and its hash) sees a write
_SINK_QUEUE = 4  # writes of up to _SINK_BUFFER waiting for the sink's thread
_SLICE_BYTES = 64 << 20  # Arrow bytes handed to the datasets writer at a time
_WRITEBACK_BYTES = 256 << 20  # start the kernel's writeback every this many bytes


class Cancelled(StoreError):
    """The other writer of the same publish failed: stop early (never surfaces)."""


class HashingSink:
    """A file opened for writing that sha256-hashes every byte written to it (no re-read),
    starts the kernel's writeback of what it has written every 256 MB (so the final fsync
    does not wait for the whole file, and a publish of many GB does not fill the page cache
    with dirty pages) and fsyncs on :meth:`finish`. Hashing and the write system calls run
    in a thread of their own (hashlib and os.write release the GIL), fed through a short
    queue, so the encoder that writes here does not wait for them. Use as a context manager
    (it stops the thread and closes the descriptor); :meth:`stream` is what pyarrow writes
    to.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._hash = hashlib.sha256()
        self._accepted = 0  # bytes handed to write()
        self._written = 0  # bytes written to the file
        self._advised = 0  # bytes before this offset have had their writeback started
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_SINK_QUEUE)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._drain, name="prefcurate-sink", daemon=True
        )
        self._thread.start()
        self.closed = False

    # the file object pyarrow's PythonFile calls
    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:  # a pyarrow Buffer over the caller's memory: copy it
            data = bytes(data)
        self._queue.put(data)
        self._accepted += len(data)
        return len(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking, so that the writer never blocks on a full queue
            try:
                self._consume(data)
            except BaseException as exc:  # raised in the writer's thread
                self._error = exc

    def _consume(self, data: bytes) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written - self._advised >= _WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
            # DONTNEED on pages just written (still dirty) starts their writeback now
            # instead of at the final fsync; it drops only pages already clean, so the
            # file mostly stays in the page cache for readers
            n = self._written - self._advised
            os.posix_fadvise(self._fd, self._advised, n, os.POSIX_FADV_DONTNEED)
            self._advised = self._written

    def tell(self) -> int:
        return self._accepted

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # pyarrow closing its stream; the descriptor stays open
        self.closed = True

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _release(self) -> None:
        self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def finish(self) -> str:
        """Wait for the writes, fsync, close; return the sha256 (hex) of the file."""
        self._stop()
        if self._error is not None:
            raise self._error
        os.fsync(self._fd)
        self._release()
        return self._hash.hexdigest()

    def stream(self) -> pa.NativeFile:
        return pa.BufferedOutputStream(pa.PythonFile(self, mode="w"), buffer_size=_SINK_BUFFER)

    def __enter__(self) -> HashingSink:
        return self

    def __exit__(self, *exc) -> None:
        self._release()


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("publish cancelled: the other writer failed")


def write_dataset(
    table: pa.Table, path: Path, cancel: threading.Event | None = None
) -> dict[str, str]:
    """``datasets.Dataset.save_to_disk`` of ``table`` into ``path`` (one shard when
    empty), streamed; returns {file name in ``path``: sha256}, hashed while writing.

    The files are save_to_disk's: the same ``data-XXXXX-of-YYYYY.arrow`` shards
    (``config.MAX_SHARD_SIZE``) holding the same record batches (1,000 rows for text;
    datasets' own ``ArrowWriter`` writes them, with the same schema and metadata), and the
    same ``state.json`` and ``dataset_info.json``; byte for byte the same when each of the
    table's chunks starts a multiple of 1,000 rows into its shard (otherwise some batches'
    buffers are padded differently: save_to_disk copies each batch that spans two chunks
    on its own, this copies a 64 MB slice; the values are the same).
    What differs is the cost: save_to_disk fingerprints an in-memory table by pickling
    all of it (~4× the table in memory, ~10 s/GB) and hands its writer one 1,000-row batch
    at a time (~3 ms of Python each: 45 s for 16M rows); here the fingerprint is a hash of
    the shards' bytes (16 hex digits, as datasets' own) and the writer gets 64 MB slices
    that it cuts into the same record batches in C++. ``cancel``, when set, stops it
    between slices.
    """
    import datasets  # imported here: listing and resolving must not pay for it
    from datasets import config as ds_config

    try:  # the pieces of save_to_disk used here (datasets 4 / 5)
        from datasets.arrow_writer import (
            ArrowWriter,
            get_arrow_writer_batch_size_from_features,
            get_writer_batch_size_from_data_size,
        )
        from datasets.utils.py_utils import asdict, convert_file_size_to_int  # noqa: F401
    except ImportError:  # an older datasets: its own save_to_disk, slowly
        return _save_to_disk(table, path)

    # a placeholder fingerprint: without one, Dataset() hashes the table by pickling it
    ds = datasets.Dataset(table, fingerprint="0" * 16)
    n = len(ds)
    nbytes = ds._estimate_nbytes()
    # save_to_disk's sharding and batch sizes
    num_shards = (
        1
        if n == 0
        else min(n, int(nbytes / convert_file_size_to_int(ds_config.MAX_SHARD_SIZE)) + 1)
    )
    batch = ds_config.DEFAULT_MAX_BATCH_SIZE
    if nbytes > 0:
        batch = min(batch, get_writer_batch_size_from_data_size(n, nbytes))
    split = (
        get_arrow_writer_batch_size_from_features(ds.features) or ds_config.DEFAULT_MAX_BATCH_SIZE
    )
    if batch <= split and n and nbytes:
        # slices of whole batches; the writer cuts them into batch-row record batches
        step = batch * max(1, _SLICE_BYTES * n // (nbytes * batch))
        writer_batch = batch
    else:  # the writer's own split is finer (images, audio): feed it batch by batch
        step, writer_batch = batch, None

    path.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for index in range(num_shards):
        name = f"data-{index:05d}-of-{num_shards:05d}.arrow"
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        with HashingSink(path / name) as sink:
            writer = ArrowWriter(
                features=shard.features,
                stream=sink.stream(),
                embed_local_files=True,
                writer_batch_size=writer_batch,
            )
            try:
                for piece in shard.with_format("arrow").iter(step):
                    check_cancel(cancel)
                    writer.write_table(piece)
                writer.finalize()  # closes the stream
            finally:
                writer.close()
            hashes[name] = sink.finish()

    hashes.update(_write_state(ds, path, hashes))
    return hashes


def _write_state(ds: Any, path: Path, shards: dict[str, str]) -> dict[str, str]:
    """save_to_disk's ``state.json`` and ``dataset_info.json`` for the ``shards`` written
    (the fingerprint a hash of their hashes) → {file name: sha256}."""
    from datasets import config as ds_config
    from datasets.utils.py_utils import asdict

    state = {
        key: ds.__dict__[key]
        for key in (
            "_fingerprint",
            "_format_columns",
            "_format_kwargs",
            "_format_type",
            "_output_all_columns",
        )
    }
    state["_fingerprint"] = hashlib.sha256("".join(shards.values()).encode()).hexdigest()[:16]
    state["_split"] = str(ds.split) if ds.split is not None else ds.split
    state["_data_files"] = [{"filename": name} for name in shards]
    info = asdict(ds._info)
    out = {}
    for name, doc in (
        (ds_config.DATASET_STATE_JSON_FILENAME, json.dumps(state, indent=2, sort_keys=True)),
        (ds_config.DATASET_INFO_FILENAME, json.dumps({k: info[k] for k in sorted(info)}, indent=2)),
    ):
        raw = doc.encode("utf-8")
        (path / name).write_bytes(raw)
        out[name] = hashlib.sha256(raw).hexdigest()
    return out


def _save_to_disk(table: pa.Table, path: Path) -> dict[str, str]:
    """save_to_disk itself (one shard when empty, no progress bar), then hash the files."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset(table).save_to_disk(
            str(path), num_shards=1 if not table.num_rows else None
        )
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    return {p.name: file_hash(p) for p in sorted(path.iterdir()) if p.is_file()}


class Worker(threading.Thread):
    """Run ``fn(*args)`` in a thread; :meth:`result` joins and returns or re-raises."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        super().__init__(name="prefcurate-publish", daemon=True)
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value
