"""The versioned, immutable dataset store (DESIGN.md §4): names, versions, references,
reading and verifying; writing a version is :func:`pipeline.store.publish.publish_version`.

Layout under a store root::

    <root>/datasets/<name>/v<N>/
        data/               datasets.Dataset.save_to_disk of the kept pairs (PUBLISHED)
        data.parquet        the same table as one Parquet file
        dropped.parquet     every row a stage did not keep (DROPPED)
        quarantine.parquet  rows that could not be read (QUARANTINE)
        manifest.json       the caller's manifest + version, lineage, schemas, file hashes
        README.md           the dataset card

Publishing is atomic: everything is written into ``<name>/.tmp-<uuid>/`` and fsynced,
then, under an exclusive ``flock`` on ``<name>/.lock``, the next free ``N`` is chosen,
the manifest is written and the directory is renamed to ``v<N>``. Readers therefore only
ever see complete versions; two publishers never get the same ``N``. Files of a
published version are read-only. Publishing again with a ``content_key`` that an
existing version already carries publishes nothing and returns that version.

Publishing streams (issue 19): ``data.parquet`` is written row group by row group and
``data/`` shard by shard (in a second thread, at the same time), each file sha256-hashed as
its bytes go out and fsynced as it closes, so publish adds memory bounded by a row group /
a 64 MB slice, not copies of the table, and reads nothing back (``bench/publish.py``).

>>> validate_name("hh-rlhf.clean_v2")
'hh-rlhf.clean_v2'
>>> parse_ref("hh-rlhf@v3"), parse_ref("hh-rlhf@3"), parse_ref("hh-rlhf")
(('hh-rlhf', 3), ('hh-rlhf', 3), ('hh-rlhf', None))
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import file_hash
from schemas.errors import StoreError

log = logging.getLogger(f"prefcurate.{__name__}")

DATASETS_DIR = "datasets"
LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
CARD = "README.md"
DATA_DIR = "data"
DATA_PARQUET = "data.parquet"
DROPPED_PARQUET = "dropped.parquet"
QUARANTINE_PARQUET = "quarantine.parquet"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION_DIR_RE = re.compile(r"v([1-9][0-9]*)")
_REF_RE = re.compile(r"(?P<name>[^@]*)(?:@v?(?P<version>[0-9]+))?")
_NAME_RULE = (
    "a dataset name is 1-100 characters from [A-Za-z0-9._-], starts with a letter "
    "or digit, and contains no '..' or '/'"
)

# Keys the store sets in every manifest; they override any the caller passes.
STORE_KEYS = (
    "name",
    "version",
    "created_at",
    "content_key",
    "parent_version",
    "schema_fingerprints",
    "rows",
    "files",
)


@dataclass(frozen=True)
class VersionRef:
    """One published version: ``path`` is ``<root>/datasets/<name>/v<version>``.

    ``created`` is False when ``publish_version`` found an existing version with the same
    content key (and, for ``resolve``, always False).
    """

    name: str
    version: int
    path: Path
    created: bool

    @property
    def ref(self) -> str:
        """The ``name@vN`` string that ``resolve`` accepts."""
        return f"{self.name}@v{self.version}"


# ---------------------------------------------------------------------------- names / refs


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def sweep_stale_tmp(folder: Path, prefix: str = TMP_PREFIX) -> list[str]:
    """Remove the ``<prefix><pid>-…`` folders of writers that are gone (a crash or a kill
    -9 mid-write leaves them; readers ignore them, but they held 121 MB after one killed
    publish). A folder whose writer is alive is left alone; an old-style name without a
    pid only when it is older than this process. Returns the names removed.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / ".tmp-999999999-x").mkdir(); (d / f".tmp-{os.getpid()}-y").mkdir()
    >>> sweep_stale_tmp(d), sorted(p.name for p in d.iterdir()) == [f".tmp-{os.getpid()}-y"]
    (['.tmp-999999999-x'], True)
    """
    if not folder.is_dir():
        return []
    started = _process_start()
    gone = []
    for p in folder.iterdir():
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        head = p.name[len(prefix) :].split("-", 1)[0]
        if head.isdigit():
            stale = not pid_alive(int(head))
        else:
            try:
                stale = p.stat().st_mtime < started
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    if gone:
        log.info("removed %d stale temporary folders in %s", len(gone), folder)
    return sorted(gone)


def _process_start() -> float:
    """This process's start time (epoch seconds), from /proc where there is one."""
    try:
        ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return __import__("time").time()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe dataset name, else raise StoreError.

    >>> validate_name("../x")
    Traceback (most recent call last):
    ...
    schemas.errors.StoreError: invalid dataset name '../x': a dataset name is 1-100 ...
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise StoreError(f"invalid dataset name {name!r}: {_NAME_RULE}")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``name``, ``name@vN`` or ``name@N`` into ``(name, N or None)``; name validated."""
    m = _REF_RE.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise StoreError(
            f"invalid dataset reference {ref!r}: use NAME (latest version), "
            f"NAME@vN or NAME@N, e.g. 'my-dpo@v2'"
        )
    name = validate_name(m["name"])
    version = int(m["version"]) if m["version"] is not None else None
    if version == 0:
        raise StoreError(f"invalid dataset reference {ref!r}: versions start at 1")
    return name, version


# ---------------------------------------------------------------------------- listing


def _datasets_dir(root: str | Path) -> Path:
    return Path(root) / DATASETS_DIR


def list_datasets(root: str | Path) -> list[str]:
    """Names of the datasets under ``root`` that have at least one published version."""
    base = _datasets_dir(root)
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.iterdir()):
        if (
            p.is_dir()
            and _NAME_RE.fullmatch(p.name)
            and ".." not in p.name
            and list_versions(root, p.name)
        ):
            out.append(p.name)
    return out


def list_versions(root: str | Path, name: str) -> list[int]:
    """Published version numbers of ``name``, ascending (temp dirs and locks ignored)."""
    d = _datasets_dir(root) / validate_name(name)
    if not d.is_dir():
        return []
    versions = []
    for p in d.iterdir():
        m = _VERSION_DIR_RE.fullmatch(p.name)
        if m and p.is_dir():
            versions.append(int(m[1]))
    return sorted(versions)


def version_path(root: str | Path, name: str, version: int) -> Path:
    """``<root>/datasets/<name>/v<version>`` (no existence check)."""
    return _datasets_dir(root) / validate_name(name) / f"v{int(version)}"


def resolve(root: str | Path, ref: str) -> VersionRef:
    """Resolve ``name`` (latest), ``name@vN`` or ``name@N`` to an existing version."""
    name, version = parse_ref(ref)
    versions = list_versions(root, name)
    if not versions:
        existing = list_datasets(root)
        raise StoreError(
            f"dataset {name!r} not found under {_datasets_dir(root)}; "
            f"existing datasets: {', '.join(existing) if existing else 'none'}"
        )
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise StoreError(
            f"dataset {name!r} has no version v{version}; existing versions: "
            f"{', '.join(f'v{v}' for v in versions)}"
        )
    return VersionRef(name, version, version_path(root, name, version), created=False)


# ---------------------------------------------------------------------------- manifests


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a version directory (or of a ``manifest.json`` path)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        with open(p, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError as exc:
        raise StoreError(
            f"no manifest at {p}: is this a published version directory "
            f"(<root>/datasets/<name>/v<N>)?"
        ) from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read manifest {p}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise StoreError(f"manifest {p} is not a JSON object")
    return manifest


def verify_version(path: str | Path) -> list[str]:
    """Re-hash a version's files against its manifest; return the problems (empty: intact).

    Reports missing, changed and unlisted files, and a manifest whose version does not
    match its directory name.
    """
    vdir = Path(path)
    try:
        manifest = read_manifest(vdir)
    except StoreError as exc:
        return [str(exc)]
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{vdir / MANIFEST}: no 'files' table to verify against"]
    problems = []
    m = _VERSION_DIR_RE.fullmatch(vdir.name)
    if m and manifest.get("version") != int(m[1]):
        problems.append(
            f"manifest version {manifest.get('version')!r} does not match directory {vdir.name}"
        )
    for rel, want in sorted(files.items()):
        f = vdir / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
            continue
        got = file_hash(f)
        if got != want:
            problems.append(f"{rel}: sha256 {got} does not match manifest {want}")
    for f in sorted(x for x in vdir.rglob("*") if x.is_file()):
        rel = f.relative_to(vdir).as_posix()
        if rel != MANIFEST and rel not in files:
            problems.append(f"{rel}: not listed in the manifest")
    return problems


def find_content_key(root: str | Path, name: str, content_key: str) -> int | None:
    """The version of ``name`` whose manifest carries ``content_key``, if any."""
    for v in reversed(list_versions(root, name)):
        try:
            manifest = read_manifest(version_path(root, name, v))
        except StoreError:
            continue
        if manifest.get("content_key") == content_key:
            return v
    return None


# ---------------------------------------------------------------------------- publishing


def read_parquet_columns(f: Path, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file as a table; with ``columns``, only those of them it has."""
    if columns is not None:
        have = set(pq.read_schema(f).names)
        columns = [c for c in columns if c in have]
    return pq.read_table(f, columns=columns)


def read_version_table(path: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of a published version (only ``columns`` it has, when given);
    a StoreError that says what to check when the file is missing."""
    f = Path(path) / name
    if not f.is_file():
        raise StoreError(
            f"{f} is missing: is {path} a complete published version? "
            f"(`prefcurate datasets show` re-checks its files)"
        )
    return read_parquet_columns(f, columns)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path``, then every directory, deepest first."""
    dirs = [path]
    for p in sorted(path.rglob("*")):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fsync_file(p)
    for d in sorted(dirs, key=lambda x: len(x.parts), reverse=True):
        _fsync_dir(d)
