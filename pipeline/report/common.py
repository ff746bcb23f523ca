"""The report's shared pieces: its constants and section list, small numerics, text
helpers, and the lineage (the run's stage outputs a version came from).

>>> summarize([1.0, 2.0, None, 3.0])["median"]
2.0
>>> summarize([])["n"]
0
>>> length_bias([("aaaa", "b"), ("a", "bbb"), ("cc", "dd")])["longer_wins"]
0.5
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(f"prefcurate.{__name__}")

REPORT_VERSION = 1
REPORTS_DIR = "reports"  # <root>/datasets/<name>/reports/v<N>.html
TEXT_LIMIT = 300  # characters of any text shown in an example
MAX_POINTS = 2000  # points kept for scatter plots
MAX_ANNOTATORS = 12  # annotators in the agreement matrix (most votes first)

# (key in the report dict, heading). The HTML and the terminal show them in this order.
SECTIONS: list[tuple[str, str]] = [
    ("overview", "Overview"),
    ("stages", "Rows per stage"),
    ("hygiene", "Hygiene: duplicates and contamination"),
    ("scores", "Score and reward distributions"),
    ("judges", "Judge agreement and position consistency"),
    ("length_bias", "Length: bias per annotator and chosen − rejected lengths"),
    ("distributions", "p_hat, disagreement and margin"),
    ("similarity", "Similarity of chosen vs rejected"),
    ("noise", "Estimated noise rate"),
    ("examples", "Flipped and dropped examples"),
    ("review", "Review: what people answered and what it changed"),
]


# ---------------------------------------------------------------------------- small numerics


def finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN / inf / None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(values: Iterable[Any]) -> dict[str, Any]:
    """n, nulls, mean, std, min, p05, p25, median, p75, p95, max of the finite values."""
    vals = list(values)
    arr = finite(vals)
    out: dict[str, Any] = {"n": int(arr.size), "nulls": len(vals) - int(arr.size)}
    keys = ("mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max")
    if arr.size == 0:
        return {**out, **{k: None for k in keys}}
    q = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
    stats = [arr.mean(), arr.std(), arr.min(), *q, arr.max()]
    return {**out, **{k: num(v) for k, v in zip(keys, stats)}}


def histogram(
    values: Iterable[Any], bins: int = 20, value_range: tuple[float, float] | None = None
) -> dict[str, Any] | None:
    """``{"edges": [...], "counts": [...]}`` of the finite values, or None when there are none."""
    arr = finite(values)
    if arr.size == 0:
        return None
    if value_range is None:
        lo, hi = float(arr.min()), float(arr.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        value_range = (lo, hi)
    counts, edges = np.histogram(arr, bins=bins, range=value_range)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def length_bias(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Win rate of the longer response over ``(chosen_text, rejected_text)`` pairs.

    ``longer_wins`` = share of pairs with unequal lengths (characters) whose chosen response
    is the longer one; 0.5 means no length bias.
    """
    lens = [(len(c or ""), len(r or "")) for c, r in pairs]
    return length_bias_of(
        np.array([c for c, _ in lens], dtype=np.int64),
        np.array([r for _, r in lens], dtype=np.int64),
    )


def length_bias_of(len_chosen: np.ndarray, len_rejected: np.ndarray) -> dict[str, Any]:
    """:func:`length_bias` from the two sides' lengths in characters."""
    lc, lr = np.asarray(len_chosen), np.asarray(len_rejected)
    n_differ = int((lc != lr).sum())
    wins = int((lc > lr).sum())
    return {
        "pairs": int(lc.size),
        "equal_length": int(lc.size) - n_differ,
        "chosen_longer": wins,
        "rejected_longer": n_differ - wins,
        "longer_wins": num(wins / n_differ) if n_differ else None,
        "mean_chosen_chars": num(np.mean(lc)) if lc.size else None,
        "mean_rejected_chars": num(np.mean(lr)) if lr.size else None,
    }


# ---------------------------------------------------------------------------- text helpers


def fmt(v: Any) -> str:
    """A value as both renderers show it: – for None, yes / no, floats to 4 significant
    digits, dicts as ``k=v`` and lists comma-separated."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items()) or "0"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def truncate(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` as a string, cut to ``limit`` characters with an ellipsis.

    >>> truncate("abcdef", 4)
    'abc…'
    """
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: max(limit - 1, 0)] + "…"


def tabulate(title: str, obj: Any) -> dict[str, Any] | None:
    """A {title, columns, rows} table of any JSON-ish value (rendered as is, never trusted).

    dict of dicts → one row per key; dict of scalars → key/value rows; list of dicts → rows;
    deeper nesting is flattened to dotted keys.
    """

    def scalar(v: Any) -> bool:
        return v is None or isinstance(v, (str, int, float, bool))

    def flat(prefix: str, v: Any, out: dict[str, Any]) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                flat(f"{prefix}.{k}" if prefix else str(k), x, out)
        elif isinstance(v, list) and not all(scalar(x) for x in v):
            for i, x in enumerate(v):
                flat(f"{prefix}[{i}]", x, out)
        else:
            out[prefix] = v if scalar(v) else json.dumps(v, default=str)

    if obj is None or obj == {} or obj == []:
        return None
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        rows, cols = [], []
        for k, v in obj.items():
            f: dict[str, Any] = {}
            flat("", v, f)
            for c in f:
                if c not in cols:
                    cols.append(c)
            rows.append((k, f))
        return {
            "title": title,
            "columns": ["name", *cols],
            "rows": [[k, *[f.get(c) for c in cols]] for k, f in rows],
        }
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        flats = []
        cols = []
        for v in obj:
            f = {}
            flat("", v, f)
            flats.append(f)
            cols += [c for c in f if c not in cols]
        return {"title": title, "columns": cols, "rows": [[f.get(c) for c in cols] for f in flats]}
    f = {}
    flat("", obj if isinstance(obj, dict) else {"value": obj}, f)
    return {"title": title, "columns": ["key", "value"], "rows": [[k, v] for k, v in f.items()]}


# ---------------------------------------------------------------------------- lineage


class Lineage:
    """The run's finished stage outputs that this version came from, if still on disk."""

    def __init__(self, manifest: dict[str, Any], run_root: Path | None):
        self.run_root = run_root
        self.dirs: dict[str, Path] = {}
        if run_root is None:
            return
        for stage, c in (manifest.get("stages") or {}).items():
            key = c.get("key") if isinstance(c, dict) else None
            d = run_root / "stages" / f"{stage}-{key}"
            if key and (d / "_COMPLETE").is_file():
                self.dirs[stage] = d

    def tables(self, name: str, columns: list[str] | None = None) -> list[pa.Table]:
        """Table ``name`` of every stage that wrote one (``columns``: those it has)."""
        return [t for stage in self.dirs if (t := self.table(stage, name, columns)) is not None]

    def table(self, stage: str, name: str, columns: list[str] | None = None) -> pa.Table | None:
        f = self.dirs.get(stage, Path("/nonexistent")) / f"{name}.parquet"
        if not f.is_file():
            return None
        from pipeline.store.datasets import read_parquet_columns

        try:
            return read_parquet_columns(f, columns)
        except (OSError, pa.ArrowException) as exc:
            log.warning("report: cannot read %s: %s", f, exc)
            return None


def default_run_root(version_path: Path, manifest: dict[str, Any]) -> Path:
    name = manifest.get("name") or version_path.parent.name
    return version_path.parent.parent.parent / "runs" / name


def column_values(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else []


def flip_count(ex: dict[str, Any]) -> str:
    """The flip count as shown: "4 published" or "4 published of 5 flipped by denoise"."""
    n, by = ex.get("flipped_total"), ex.get("flipped_by_denoise")
    if isinstance(by, int) and by != n:
        return f"{n} published of {by} flipped by denoise"
    return f"{n} published"
