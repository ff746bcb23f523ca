"""Differences between two published dataset versions (``prefcurate datasets diff A B``).

Inputs: two version directories of the store (``data.parquet`` (PUBLISHED), ``dropped.parquet``
(DROPPED), ``manifest.json``). Output of :func:`diff_versions`: a JSON-able dict with

- ``pairs``: ``added`` / ``removed`` / ``changed_decision`` / ``reoriented`` / ``unchanged``
  counts and example ``pair_id`` lists. Pairs are matched by their comparison — source row
  plus the unordered {chosen_id, rejected_id} — because a flipped pair gets a new
  ``pair_id``; so a pair kept in A and flipped in B is *changed*, not removed + added.
  ``removed`` examples carry the reason B dropped them, when B's dropped table has it.
- ``reasons``: rows dropped / quarantined per stage and reason in A, in B, and B − A.
- ``distributions``: ``margin`` (and ``p_hat``, ``weight``) summaries in A and B, the shift
  of mean, median and quantiles, and a two-sample Kolmogorov–Smirnov statistic
  (``scipy.stats.ks_2samp``).
- ``config``: the resolved-config keys whose values differ (dotted paths).

>>> flatten({"a": {"b": 1, "c": [1, 2]}})
{'a.b': 1, 'a.c': [1, 2]}
>>> pair_key({"source_id": "s", "chosen_id": "y", "rejected_id": "x"})
('s', 'x', 'y')
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.hashing import stable_hash
from pipeline.report.common import finite, num
from pipeline.store import datasets as store

MAX_IDS = 20  # pair ids listed per category
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
COMPARED = ("margin", "p_hat", "weight")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {dotted.path: leaf value} (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, p))
        else:
            out[p] = v
    return out


def pair_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """Orientation-free identity of a pair: (source_id, smaller id, larger id)."""
    a, b = sorted((row["chosen_id"], row["rejected_id"]))
    return (row.get("source_id") or row.get("prompt_id") or "", a, b)


def _dist(values: list[Any]) -> dict[str, Any]:
    arr = finite(values)
    out: dict[str, Any] = {"n": int(arr.size)}
    if arr.size == 0:
        out.update(mean=None, std=None, median=None, quantiles={str(q): None for q in QUANTILES})
        return out
    out.update(
        mean=num(arr.mean()),
        std=num(arr.std()),
        median=num(np.median(arr)),
        quantiles={str(q): num(v) for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES))},
    )
    return out


def _shift(a: list[Any], b: list[Any]) -> dict[str, Any]:
    da, db = _dist(a), _dist(b)

    def sub(x: Any, y: Any) -> float | None:
        return None if x is None or y is None else num(y - x)

    out = {
        "a": da,
        "b": db,
        "delta_mean": sub(da["mean"], db["mean"]),
        "delta_median": sub(da["median"], db["median"]),
        "delta_quantiles": {
            q: sub(da["quantiles"][q], db["quantiles"][q]) for q in da["quantiles"]
        },
        "ks_statistic": None,
        "ks_pvalue": None,
    }
    xa, xb = finite(a), finite(b)
    if xa.size and xb.size:
        from scipy.stats import ks_2samp

        res = ks_2samp(xa, xb)
        out["ks_statistic"] = num(res.statistic)
        out["ks_pvalue"] = num(res.pvalue)
    return out


def _reasons(manifest: dict[str, Any], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for stage, c in (manifest.get("stages") or {}).items():
        for reason, n in ((c or {}).get(key) or {}).items():
            out[f"{stage}/{reason}"] = out.get(f"{stage}/{reason}", 0) + int(n)
    return out


def _delta(a: dict[str, int], b: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {"reason": k, "a": a.get(k, 0), "b": b.get(k, 0), "delta": b.get(k, 0) - a.get(k, 0)}
        for k in sorted(set(a) | set(b))
    ]


def _read(path: Path, name: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of one Parquet file of a version (only ``columns`` that exist, when given)."""
    return store.read_version_table(path, name, columns).to_pylist()


def _why_removed(path: Path) -> Any:
    """A function: a pair of A → the ``stage/reason`` of B's drop record for it (by row id:
    the pair id, or a pair id in either orientation), or None."""
    drop_b: dict[str, dict[str, Any]] = {}
    for r in _read(path, store.DROPPED_PARQUET, ["row_id", "stage", "reason"]):
        if r.get("row_id"):
            drop_b.setdefault(r["row_id"], r)

    def why(r: dict[str, Any]) -> str | None:
        src, c, j = r["source_id"], r["chosen_id"], r["rejected_id"]
        for i in (r["pair_id"], stable_hash(src, c, j), stable_hash(src, j, c)):
            if i in drop_b:
                return f"{drop_b[i]['stage']}/{drop_b[i]['reason']}"
        return None

    return why


def _match(da: list[dict[str, Any]], db: list[dict[str, Any]], why_removed: Any) -> dict[str, Any]:
    """The ``pairs`` part of a diff: A's and B's pairs matched by :func:`pair_key`."""
    ka, kb = {pair_key(r): r for r in da}, {pair_key(r): r for r in db}
    added = [kb[k] for k in kb if k not in ka]
    removed = sorted((ka[k] for k in ka if k not in kb), key=lambda r: r["pair_id"])
    changed, reoriented, unchanged = [], [], 0
    for k in ka.keys() & kb.keys():
        a, b = ka[k], kb[k]
        if a["decision"] != b["decision"]:
            changed.append((a, b))
        elif a["chosen_id"] != b["chosen_id"]:
            reoriented.append((a, b))
        else:
            unchanged += 1
    changed.sort(key=lambda ab: ab[1]["pair_id"])
    transitions = Counter(f"{a['decision']}→{b['decision']}" for a, b in changed)
    removed_why = [why_removed(r) for r in removed]
    removed_reasons = Counter(w or "not in B (no drop record)" for w in removed_why)
    return {
        "added": len(added),
        "removed": len(removed),
        "changed_decision": len(changed),
        "reoriented": len(reoriented),
        "unchanged": unchanged,
        "decision_transitions": dict(transitions.most_common()),
        "removed_reasons": dict(removed_reasons.most_common()),
        "added_ids": sorted(r["pair_id"] for r in added)[:MAX_IDS],
        "removed_examples": [
            {"pair_id": r["pair_id"], "source_id": r["source_id"], "reason_in_b": w}
            for r, w in zip(removed[:MAX_IDS], removed_why)
        ],
        "changed_examples": [
            {
                "source_id": a["source_id"],
                "pair_id_a": a["pair_id"],
                "pair_id_b": b["pair_id"],
                "decision_a": a["decision"],
                "decision_b": b["decision"],
            }
            for a, b in changed[:MAX_IDS]
        ],
    }


def _version(v: Any, manifest: dict[str, Any], rows: int) -> dict[str, Any]:
    keys = ("created_at", "config_hash")
    return {"ref": v.ref, "path": str(v.path), "rows": rows, **{k: manifest.get(k) for k in keys}}


def diff_versions(root: str | Path, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Compare versions ``ref_a`` and ``ref_b`` (``name@vN``, ``name@N`` or ``name``) of the
    store at ``root``; see the module docstring for the result."""
    va, vb = store.resolve(root, ref_a), store.resolve(root, ref_b)
    ma, mb = store.read_manifest(va.path), store.read_manifest(vb.path)
    cols = ["source_id", "prompt_id", "pair_id", "chosen_id", "rejected_id", "decision", *COMPARED]
    da = [{c: r.get(c) for c in cols} for r in _read(va.path, store.DATA_PARQUET, cols)]
    db = [{c: r.get(c) for c in cols} for r in _read(vb.path, store.DATA_PARQUET, cols)]
    fa, fb = flatten(ma.get("config") or {}), flatten(mb.get("config") or {})
    reasons = {k: _delta(_reasons(ma, k), _reasons(mb, k)) for k in ("dropped", "quarantined")}
    return {
        "a": _version(va, ma, len(da)),
        "b": _version(vb, mb, len(db)),
        "pairs": _match(da, db, _why_removed(vb.path)),
        "reasons": reasons,
        "distributions": {c: _shift([r[c] for r in da], [r[c] for r in db]) for c in COMPARED},
        "config": [
            {"key": k, "a": fa.get(k), "b": fb.get(k)}
            for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)
        ],
    }


Section = tuple[str, list[str], list[list[Any]]]  # (title, columns, rows)

_SHIFT_COLUMNS = ["column", "n A", "n B", "mean A", "mean B", "Δ mean"]
_SHIFT_COLUMNS += ["median A", "median B", "Δ median", "KS D", "KS p"]
_ALWAYS = ("versions", "distribution shift", "margin quantiles")


def diff_sections(diff: dict[str, Any]) -> list[Section]:
    """A diff from :func:`diff_versions` as the tables a renderer prints, in order (a
    section with no rows is left out, except the counts)."""
    a, b, p = diff["a"], diff["b"], diff["pairs"]
    versions = [
        [v, d["ref"], d["rows"], d["created_at"], d["config_hash"]] for v, d in (("A", a), ("B", b))
    ]
    counts = [p["added"], p["removed"], p["changed_decision"], p["reoriented"], p["unchanged"]]
    reasons = [
        [r["reason"], r["a"], r["b"], f"{r['delta']:+d}"] for r in diff["reasons"]["dropped"]
    ]
    reasons += [
        [f"quarantine: {r['reason']}", r["a"], r["b"], f"{r['delta']:+d}"]
        for r in diff["reasons"]["quarantined"]
    ]
    shift = [
        [col, s["a"]["n"], s["b"]["n"], s["a"]["mean"], s["b"]["mean"], s["delta_mean"]]
        + [s["a"]["median"], s["b"]["median"], s["delta_median"], s["ks_statistic"], s["ks_pvalue"]]
        for col, s in diff["distributions"].items()
    ]
    m = diff["distributions"]["margin"]
    quantiles = [
        [q, m["a"]["quantiles"][q], m["b"]["quantiles"][q], m["delta_quantiles"][q]]
        for q in m["a"]["quantiles"]
    ]
    sections: list[Section] = [
        ("versions", ["", "ref", "rows", "created_at", "config_hash"], versions),
        (
            "pairs (matched by source row and unordered candidate ids)",
            ["added", "removed", "changed decision", "reoriented", "unchanged"],
            [counts],
        ),
        (
            "decision changes",
            ["A → B", "pairs"],
            [[k, v] for k, v in p["decision_transitions"].items()],
        ),
        (
            "why removed pairs left",
            ["reason in B", "pairs"],
            [[k, v] for k, v in p["removed_reasons"].items()],
        ),
        ("rows by stage/reason", ["stage/reason", "A", "B", "B − A"], reasons),
        ("distribution shift", _SHIFT_COLUMNS, shift),
        ("margin quantiles", ["q", "A", "B", "Δ"], quantiles),
        ("config changes", ["key", "A", "B"], [[c["key"], c["a"], c["b"]] for c in diff["config"]]),
    ]
    return [sec for sec in sections if sec[2] or sec[0] in _ALWAYS]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_diff_terminal(diff: dict[str, Any], console: Any) -> None:
    """Print a diff from :func:`diff_versions` as rich tables (data never read as markup)."""
    from rich.table import Table
    from rich.text import Text

    console.rule(Text(f"diff {diff['a']['ref']} → {diff['b']['ref']}"))
    for title, columns, rows in diff_sections(diff):
        t = Table(title=Text(title), title_justify="left")
        for c in columns:
            t.add_column(Text(c), overflow="fold")
        for r in rows:
            t.add_row(*[Text(_fmt(v)) for v in r])
        console.print(t)
