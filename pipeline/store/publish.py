"""Publishing a dataset version: the data as Parquet (row group by row group) and as the
``datasets`` ``save_to_disk`` folder at the same time, every file hashed while written,
the manifest with those hashes and the card, fsync, an atomic rename under the dataset's
lock, and the version made read-only. An identical content key publishes nothing new."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import file_hash
from pipeline.store.datasets import (
    CARD,
    DATA_DIR,
    DATA_PARQUET,
    DROPPED_PARQUET,
    LOCK_NAME,
    MANIFEST,
    QUARANTINE_PARQUET,
    TMP_PREFIX,
    VersionRef,
    _datasets_dir,
    _fsync_dir,
    find_content_key,
    fsync_file,
    fsync_tree,
    list_versions,
    log,
    validate_name,
    version_path,
)
from pipeline.store.stream import Cancelled, HashingSink, Worker, check_cancel, write_dataset
from schemas.errors import StoreError
from schemas.tables import DROPPED, PUBLISHED, QUARANTINE, check_table, schema_fingerprint

ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default row group: the same bytes as one write_table


def _write_parquet(table: pa.Table, path: Path, cancel: threading.Event | None = None) -> str:
    """Write ``table`` to ``path`` as Parquet, one row group (ROW_GROUP_ROWS rows) at a
    time, with pq.write_table's options (the same bytes); return the file's sha256, hashed
    while writing. ``cancel``, when set, stops it between row groups."""
    with HashingSink(path) as sink:
        stream = sink.stream()
        with pq.ParquetWriter(stream, table.schema) as writer:
            for start in range(0, table.num_rows, ROW_GROUP_ROWS):
                check_cancel(cancel)
                writer.write_table(table.slice(start, ROW_GROUP_ROWS))
            if table.num_rows == 0:
                writer.write_table(table)
        if not stream.closed:
            stream.close()
        return sink.finish()


def _manifest_json(manifest: dict[str, Any]) -> str:
    try:
        return (
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
            + "\n"
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"manifest is not valid JSON ({exc}): pass only str, int, float "
            f"(finite), bool, None, list and dict values, e.g. str(path) for "
            f"paths and None for NaN"
        ) from exc


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            mode = p.stat().st_mode
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _check_args(
    name: str,
    data: pa.Table,
    dropped: pa.Table,
    quarantine: pa.Table,
    manifest: Any,
    card: Any,
    content_key: Any,
    extra_files: dict[str, Any] | None,
) -> None:
    """Every check of :func:`publish_version`'s arguments, before anything is written."""
    validate_name(name)
    for rel in extra_files or {}:
        if (
            "/" in rel
            or rel.startswith(".")
            or rel in (MANIFEST, CARD, DATA_DIR, DATA_PARQUET, DROPPED_PARQUET, QUARANTINE_PARQUET)
        ):
            raise StoreError(
                f"extra file name {rel!r} is not allowed (a plain file name "
                f"that is not one of the store's own)"
            )
    if not isinstance(content_key, str) or not content_key:
        raise StoreError(
            f"content_key must be a non-empty string (a hash of the resolved "
            f"config and input content), got {content_key!r}"
        )
    if not isinstance(manifest, dict):
        raise StoreError(f"manifest must be a dict, got {type(manifest).__name__}")
    if not isinstance(card, str):
        raise StoreError(f"card must be the dataset card text (str), got {type(card).__name__}")
    check_table(data, PUBLISHED, "published")
    check_table(dropped, DROPPED, "dropped")
    check_table(quarantine, QUARANTINE, "quarantine")
    _manifest_json(manifest)  # fail before writing anything, not after


def _write_tables(
    tmp: Path, data: pa.Table, dropped: pa.Table, quarantine: pa.Table
) -> dict[str, str]:
    """The version's tables into ``tmp``: data.parquet, dropped, quarantine and the
    ``datasets`` folder → {relative path: sha256}."""
    import datasets  # noqa: F401  (in this thread, before the writer thread needs it)

    # data/ in a second thread while this one writes data.parquet: both encoders
    # release the GIL, so the two files cost about the longer of the two
    cancel = threading.Event()

    def data_dir() -> dict[str, str]:
        try:
            return write_dataset(data, tmp / DATA_DIR, cancel)
        except BaseException:
            cancel.set()  # stop the Parquet writer too
            raise

    worker = Worker(data_dir)
    worker.start()
    try:
        files = {DATA_PARQUET: _write_parquet(data, tmp / DATA_PARQUET, cancel)}
        files[DROPPED_PARQUET] = _write_parquet(dropped, tmp / DROPPED_PARQUET)
        files[QUARANTINE_PARQUET] = _write_parquet(quarantine, tmp / QUARANTINE_PARQUET)
    except Cancelled:
        worker.result()  # raises the writer thread's own error
        raise
    except BaseException:
        cancel.set()
        worker.join()  # it stops at its next slice; then the folder can go
        raise
    files.update({f"{DATA_DIR}/{k}": v for k, v in worker.result().items()})
    return files


def _store_keys(
    name: str,
    versions: list[int],
    content_key: str,
    tables: list[tuple[str, pa.Table]],
    files: dict[str, str],
) -> dict[str, Any]:
    """The manifest keys the store adds (STORE_KEYS) for the next version after
    ``versions``; ``files`` is the dict itself (files written later join it)."""
    return {
        "name": name,
        "version": versions[-1] + 1 if versions else 1,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "content_key": content_key,
        "parent_version": versions[-1] if versions else None,
        "schema_fingerprints": {k: schema_fingerprint(t.schema) for k, t in tables},
        "rows": {k: t.num_rows for k, t in tables},
        "files": files,
    }


def publish_version(
    root: str | Path,
    name: str,
    *,
    data: pa.Table,
    dropped: pa.Table,
    quarantine: pa.Table,
    manifest: dict[str, Any],
    card: str,
    content_key: str,
    extra_files: dict[str, str | Callable[[dict[str, Any], Path], str]] | None = None,
) -> VersionRef:
    """Publish the tables as the next immutable version ``v<N>`` of dataset ``name``.

    ``data`` must match PUBLISHED, ``dropped`` DROPPED, ``quarantine`` QUARANTINE (checked
    before anything is written). ``manifest`` is written as given, plus the keys in
    STORE_KEYS (``name``, ``version``, ``created_at`` (ISO-8601 UTC), ``content_key``,
    ``parent_version`` (the previous latest or None), ``schema_fingerprints``, ``rows`` and
    ``files``: {relative path: sha256}); the caller is responsible for redacting secrets.
    If a version already carries ``content_key``, nothing is published and that version is
    returned with ``created=False``. ``extra_files`` ({relative name: text}, e.g. the HTML
    report) are written into the version too and hashed like the rest; a value may be a
    callable ``(manifest, version path) -> text``, called under the lock once the version
    number, parent and row counts are known (the stored report names its real version).
    """
    _check_args(name, data, dropped, quarantine, manifest, card, content_key, extra_files)
    tables = [("data", data), ("dropped", dropped), ("quarantine", quarantine)]
    existing = find_content_key(root, name, content_key)
    if existing is not None:
        log.info(
            "dataset %s@v%d already holds content key %s; nothing published",
            name,
            existing,
            content_key,
        )
        return VersionRef(name, existing, version_path(root, name, existing), created=False)

    ds_dir = _datasets_dir(root) / name
    ds_dir.mkdir(parents=True, exist_ok=True)
    tmp = ds_dir / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        files = _write_tables(tmp, data, dropped, quarantine)
        (tmp / CARD).write_text(card, encoding="utf-8")
        deferred = {rel: f for rel, f in (extra_files or {}).items() if callable(f)}
        for rel, text in (extra_files or {}).items():
            if not callable(text):
                (tmp / rel).write_text(text, encoding="utf-8")
        for p in sorted(tmp.rglob("*")):  # the small files, and anything else written
            rel = p.relative_to(tmp).as_posix()
            if p.is_file() and rel not in files:
                files[rel] = file_hash(p)
        files = dict(sorted(files.items()))
        fsync_tree(tmp)

        with open(ds_dir / LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            # Lock released when the file closes, also on error.
            existing = find_content_key(root, name, content_key)
            if existing is not None:
                log.info(
                    "dataset %s@v%d was published with content key %s meanwhile; nothing published",
                    name,
                    existing,
                    content_key,
                )
                shutil.rmtree(tmp, ignore_errors=True)
                return VersionRef(name, existing, version_path(root, name, existing), created=False)
            versions = list_versions(root, name)
            full = {**manifest, **_store_keys(name, versions, content_key, tables, files)}
            version = full["version"]
            final = ds_dir / f"v{version}"
            for rel, render in deferred.items():
                (tmp / rel).write_text(render(full, final), encoding="utf-8")
                fsync_file(tmp / rel)
                files[rel] = file_hash(tmp / rel)
            (tmp / MANIFEST).write_text(_manifest_json(full), encoding="utf-8")
            fsync_file(tmp / MANIFEST)
            _make_read_only(tmp)
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(ds_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("published %s@v%d (%d pairs) at %s", name, version, data.num_rows, final)
    return VersionRef(name, version, final, created=True)
