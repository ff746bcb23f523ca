"""Per-version data-quality report: JSON-able numbers, rich tables, one self-contained HTML.

Inputs: a published version directory (``manifest.json``, ``data.parquet`` (PUBLISHED),
``dropped.parquet`` (DROPPED), ``quarantine.parquet`` (QUARANTINE)) — or the same tables and
manifest before publishing — plus, when they still exist, the run's finished stage outputs
under ``<root>/runs/<name>/stages/<stage>-<key>/`` (the *lineage*: candidate texts, votes,
pointwise scores), found through the stage keys in ``manifest["stages"]``. Every section
degrades to a note when its inputs are absent.

Output of :func:`build_report` / :func:`report_from_tables`: a dict with one entry per
section in :data:`SECTIONS` (``overview``, ``stages``, ``scores``, ``judges``,
``length_bias``, ``distributions``, ``similarity``, ``noise``, ``examples``). Only numbers,
strings, lists and dicts: ``json.dumps(report)`` works. :func:`render_html` turns it into
one HTML file with inline CSS, no script and every plot an inline base64 PNG (matplotlib,
Agg canvas), so it renders offline; every plot has an ``id`` and a ``<figcaption>``; all text
from the data is HTML-escaped. :func:`render_terminal` prints the same sections as rich tables.

Where the HTML goes: a published version is immutable, so :func:`write_report` writes
``<root>/datasets/<name>/reports/v<N>.html`` beside the version by default (or to
``out_path``). To ship the report inside a version, render it before publishing with
``render_html(report_from_tables(manifest, data, dropped, quarantine, run_root=...))``.

>>> summarize([1.0, 2.0, None, 3.0])["median"]
2.0
>>> summarize([])["n"]
0
>>> length_bias([("aaaa", "b"), ("a", "bbb"), ("cc", "dd")])["longer_wins"]
0.5
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import conversation
from pipeline.annotate.judge_stats import cohen_kappa

log = logging.getLogger(__name__)

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
]


# ---------------------------------------------------------------------------- small numerics


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def _num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN / inf / None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(values: Iterable[Any]) -> dict[str, Any]:
    """n, nulls, mean, std, min, p05, p25, median, p75, p95, max of the finite values."""
    vals = list(values)
    arr = _finite(vals)
    out: dict[str, Any] = {"n": int(arr.size), "nulls": len(vals) - int(arr.size)}
    keys = ("mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max")
    if arr.size == 0:
        return {**out, **{k: None for k in keys}}
    q = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
    stats = [arr.mean(), arr.std(), arr.min(), *q, arr.max()]
    return {**out, **{k: _num(v) for k, v in zip(keys, stats)}}


def histogram(values: Iterable[Any], bins: int = 20,
              value_range: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """``{"edges": [...], "counts": [...]}`` of the finite values, or None when there are none."""
    arr = _finite(values)
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
    differ = [(c, r) for c, r in lens if c != r]
    wins = sum(c > r for c, r in differ)
    return {
        "pairs": len(lens), "equal_length": len(lens) - len(differ),
        "chosen_longer": wins, "rejected_longer": len(differ) - wins,
        "longer_wins": _num(wins / len(differ)) if differ else None,
        "mean_chosen_chars": _num(np.mean([c for c, _ in lens])) if lens else None,
        "mean_rejected_chars": _num(np.mean([r for _, r in lens])) if lens else None,
    }


# ---------------------------------------------------------------------------- text helpers


def truncate(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` as a string, cut to ``limit`` characters with an ellipsis.

    >>> truncate("abcdef", 4)
    'abc…'
    """
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: max(limit - 1, 0)] + "…"


def _tabulate(title: str, obj: Any) -> dict[str, Any] | None:
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
        return {"title": title, "columns": ["name", *cols],
                "rows": [[k, *[f.get(c) for c in cols]] for k, f in rows]}
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        flats = []
        cols = []
        for v in obj:
            f = {}
            flat("", v, f)
            flats.append(f)
            cols += [c for c in f if c not in cols]
        return {"title": title, "columns": cols,
                "rows": [[f.get(c) for c in cols] for f in flats]}
    f = {}
    flat("", obj if isinstance(obj, dict) else {"value": obj}, f)
    return {"title": title, "columns": ["key", "value"], "rows": [[k, v] for k, v in f.items()]}


# ---------------------------------------------------------------------------- lineage


class _Lineage:
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

    def table(self, stage: str, name: str, columns: list[str] | None = None
              ) -> pa.Table | None:
        f = self.dirs.get(stage, Path("/nonexistent")) / f"{name}.parquet"
        if not f.is_file():
            return None
        from pipeline.store.datasets import read_parquet_columns

        try:
            return read_parquet_columns(f, columns)
        except (OSError, pa.ArrowException) as exc:
            log.warning("report: cannot read %s: %s", f, exc)
            return None


def _default_run_root(version_path: Path, manifest: dict[str, Any]) -> Path:
    name = manifest.get("name") or version_path.parent.name
    return version_path.parent.parent.parent / "runs" / name


# ---------------------------------------------------------------------------- sections


def _col(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else []


def _section_overview(manifest: dict[str, Any], version_path: Path | None) -> dict[str, Any]:
    inp = manifest.get("input") or {}
    calls = manifest.get("calls") or {}
    return {
        "name": manifest.get("name"), "version": manifest.get("version"),
        "path": str(version_path) if version_path else None,
        "created_at": manifest.get("created_at"),
        "parent_version": manifest.get("parent_version"),
        "code_version": manifest.get("code_version"),
        "config_hash": manifest.get("config_hash"),
        "input": {"kind": inp.get("kind"), "path": inp.get("path")},
        "models": manifest.get("models") or [],
        "rows": manifest.get("rows") or {},
        "calls": _tabulate("model calls per stage", calls),
    }


def _section_hygiene(manifest: dict[str, Any]) -> dict[str, Any]:
    """Dedup and decontamination: what was dropped, against which benchmarks, and what
    was left out (the input's own source)."""
    info = manifest.get("stage_info") or {}
    dd, dc = info.get("dedup"), info.get("decontaminate")
    out: dict[str, Any] = {"dedup": None, "decontaminate": None}
    if dd is not None:
        out["dedup"] = {"prompts": dd.get("prompts"),
                        "duplicate_prompt": dd.get("duplicate_prompts", 0),
                        "near_duplicate": dd.get("near_duplicates", 0),
                        "threshold": dd.get("threshold"), "ngram": dd.get("ngram"),
                        "examples": dd.get("examples", [])[:10]}
    if dc is not None:
        out["decontaminate"] = {"benchmarks": dc.get("benchmarks", {}),
                                "contaminated": dc.get("contaminated", {}),
                                "skipped": dc.get("skipped", []),
                                "unavailable": dc.get("unavailable", []),
                                "ngram": dc.get("ngram"),
                                "examples": dc.get("examples", [])[:10]}
    out["note"] = None if dd is not None or dc is not None else \
        "no dedup or decontamination stage in this version"
    return out


def _section_stages(manifest: dict[str, Any]) -> dict[str, Any]:
    stages = manifest.get("stages") or {}
    order = list(manifest.get("stage_order") or stages.keys())
    order += [s for s in stages if s not in order]
    rows, drops, quars = [], Counter(), Counter()
    for st in order:
        c = stages.get(st) or {}
        d, q = dict(c.get("dropped") or {}), dict(c.get("quarantined") or {})
        drops.update(d)
        quars.update(q)
        rows.append({"stage": st, "in": c.get("in"), "kept": c.get("kept"), "out": c.get("out"),
                     "dropped": d, "quarantined": q, "dropped_total": sum(d.values()),
                     "quarantined_total": sum(q.values()), "reused": bool(c.get("reused"))})
    return {"order": order, "rows": rows, "drop_reasons": dict(drops.most_common()),
            "quarantine_reasons": dict(quars.most_common())}


def _section_scores(data: pa.Table, lin: _Lineage) -> dict[str, Any]:
    sc, sr = _col(data, "score_chosen"), _col(data, "score_rejected")
    both = _finite(sc + sr)
    rng = (float(both.min()), float(both.max())) if both.size else None
    if rng and rng[0] == rng[1]:
        rng = (rng[0] - 0.5, rng[1] + 0.5)
    gaps = [c - r for c, r in zip(sc, sr) if c is not None and r is not None]
    by_ann = []
    for t in lin.tables("scores", ["annotator", "aspect", "score"]):
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for a, asp, s in zip(_col(t, "annotator"), _col(t, "aspect"), _col(t, "score")):
            groups[(a, asp)].append(s)
        for (a, asp), vals in sorted(groups.items()):
            s = summarize(vals)
            by_ann.append({"annotator": a, "aspect": asp, "n": s["n"], "nulls": s["nulls"],
                           "mean": s["mean"], "std": s["std"], "min": s["min"],
                           "median": s["median"], "max": s["max"]})
    return {
        "score_chosen": summarize(sc), "score_rejected": summarize(sr), "gap": summarize(gaps),
        "chosen_higher_share": _num(sum(g > 0 for g in gaps) / len(gaps)) if gaps else None,
        "hist_chosen": histogram(sc, 20, rng), "hist_rejected": histogram(sr, 20, rng),
        "by_annotator": by_ann,
        "note": None if data.num_rows else "no published pairs",
    }


def _agreement(votes: list[pa.Table]) -> dict[str, Any] | None:
    """Pairwise agreement and Cohen's κ between annotators on the comparisons both judged."""
    per: dict[str, dict[tuple, str]] = defaultdict(dict)
    for t in votes:
        cols = [_col(t, c) for c in ("annotator", "source_id", "candidate_a", "candidate_b",
                                     "verdict")]
        for ann, sid, a, b, v in zip(*cols):
            if v is not None:
                per[ann].setdefault((sid, a, b), v)
    anns = sorted(per, key=lambda a: (-len(per[a]), a))[:MAX_ANNOTATORS]
    if len(anns) < 2:
        return None
    k = len(anns)
    agree = [[None] * k for _ in range(k)]
    kappa = [[None] * k for _ in range(k)]
    n = [[0] * k for _ in range(k)]
    for i, x in enumerate(anns):
        for j, y in enumerate(anns):
            common = sorted(set(per[x]) & set(per[y]))
            n[i][j] = len(common)
            if common:
                lx = [per[x][c] for c in common]
                ly = [per[y][c] for c in common]
                agree[i][j] = _num(sum(a == b for a, b in zip(lx, ly)) / len(common))
                kappa[i][j] = _num(cohen_kappa(lx, ly))
    return {"annotators": anns, "agreement": agree, "kappa": kappa, "n": n,
            "votes": {a: len(per[a]) for a in anns}}


# stage_info keys shown in the judge section (any stage), besides keys starting "judge"
_JUDGE_KEYS = {"judge_stats", "position_consistency", "agreement", "kappa", "cohen_kappa",
               "alpha", "krippendorff_alpha", "length_bias", "position_bias"}


def _judge_stats_tables(stage: str, js: dict[str, Any]) -> list[dict[str, Any]]:
    """The judge stage's statistics as two tables a person reads (the raw numbers stay
    in the manifest): per judge, and per annotator (judge × order)."""
    def r(v: Any) -> Any:
        return round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) \
            else v

    out = []
    judges = js.get("judges") or {}
    if isinstance(judges, dict) and judges:
        out.append({"title": f"{stage}: judges (Krippendorff's α over all annotators "
                             f"{r(js.get('krippendorff_alpha'))}, {js.get('n_pairs')} pairs)",
                    "columns": ["judge", "pairs in both orders", "position consistency",
                                "first position wins", "κ ab vs ba", "mean κ vs others"],
                    "rows": [[n, d.get("position_pairs"), r(d.get("position_consistency")),
                              r(d.get("first_position_win_rate")), r(d.get("kappa_ab_ba")),
                              r(d.get("mean_kappa_vs_other_judges"))]
                             for n, d in judges.items() if isinstance(d, dict)]})
    anns = js.get("annotators") or {}
    if isinstance(anns, dict) and anns:
        rows = []
        for n, d in anns.items():
            if not isinstance(d, dict):
                continue
            v = d.get("verdicts") or {}
            rows.append([n, d.get("votes"), f"{v.get('a', 0)} / {v.get('b', 0)} / "
                         f"{v.get('tie', 0)}", r(d.get("tie_rate")),
                         r(d.get("parse_failure_rate")), r(d.get("longer_win_rate")),
                         r(d.get("majority_agreement"))])
        out.append({"title": f"{stage}: annotators (judge × order)",
                    "columns": ["annotator", "votes", "a / b / tie", "tie rate",
                                "parse failures", "longer wins", "agrees with majority"],
                    "rows": rows})
    return out


def _qualification_table(stage: str, q: dict[str, Any]) -> dict[str, Any] | None:
    """The judge-qualification info (pipeline/annotate/qualify.py) as a readable table."""
    judges = q.get("judges") or {}
    if not isinstance(judges, dict) or not judges:
        return None

    def pct(v: Any) -> Any:
        return None if not isinstance(v, (int, float)) else round(100 * float(v), 1)

    rows = []
    for name, r in judges.items():
        if not isinstance(r, dict):
            continue
        ci = r.get("accuracy_ci")
        ci_s = f"{pct(ci[0])}–{pct(ci[1])}" if isinstance(ci, list) and len(ci) == 2 else None
        rows.append([name, r.get("pairs"), pct(r.get("accuracy")), ci_s,
                     pct(r.get("soft_accuracy")), pct(r.get("position_flip_rate")),
                     pct(r.get("tie_rate")), pct(r.get("panel_agreement"))])
    src = ", ".join(str(x) for x in q.get("gold_sources") or []) or "gold"
    return {"title": f"{stage}: judge qualification on {q.get('gold_pairs')} pairs decided "
                     f"by {src} (%)",
            "columns": ["judge", "gold pairs", "accuracy", "95% CI", "accuracy from logits",
                        "position flips", "ties", "agrees with panel"], "rows": rows}


def _section_judges(manifest: dict[str, Any], lin: _Lineage) -> dict[str, Any]:
    info = manifest.get("stage_info") or {}
    tables = []
    pc = None
    warnings: list[str] = []
    for stage, d in info.items():
        if not isinstance(d, dict):
            continue
        for key, val in d.items():
            if key == "position_consistency" and isinstance(val, dict) and val:
                pc = val
            if key == "judge_stats" and isinstance(val, dict) and "judges" in val:
                tables += _judge_stats_tables(stage, val)
                continue
            if key == "judge_qualification" and isinstance(val, dict):
                t = _qualification_table(stage, val)
                if t:
                    tables.insert(0, t)
                warnings += [str(w) for w in val.get("warnings") or []]
                continue
            if key in _JUDGE_KEYS or key.startswith("judge"):
                t = _tabulate(f"{stage}: {key}", val)
                if t:
                    tables.append(t)
        if stage == "aggregate" and isinstance(d.get("annotators"), dict):
            t = _tabulate("aggregate: votes per annotator", d["annotators"])
            if t:
                tables.append(t)
    if isinstance(manifest.get("judge_stats"), dict):
        t = _tabulate("judge_stats", manifest["judge_stats"])
        if t:
            tables.append(t)
    pcs = None
    if pc:
        pcs = {k: _num(v.get("consistency")) if isinstance(v, dict) else _num(v)
               if isinstance(v, (int, float)) else None for k, v in pc.items()}
    agreement = _agreement(lin.tables("votes", ["annotator", "source_id", "candidate_a",
                                                "candidate_b", "verdict"]))
    notes = [f"warning: {w}" for w in warnings]
    if not pc:
        notes.append("no position consistency in the manifest (no pairwise judge ran both "
                     "orders)")
    if agreement is None:
        notes.append("no agreement matrix: fewer than two annotators with votes, or the run's "
                     "stage outputs are no longer on disk")
    return {"position_consistency": pcs, "tables": tables, "agreement": agreement,
            "note": "; ".join(notes) or None}


def _section_length(data: pa.Table, manifest: dict[str, Any] | None = None,
                    lin: _Lineage | None = None) -> dict[str, Any]:
    """Length bias: the published pairs' lengths, each annotator's length GLM (from the
    aggregate stage's info), what length control and balancing did, and the chosen −
    rejected length distribution before curation (the margins stage's pairs, in the
    label's orientation) and after (the published pairs)."""
    from pipeline.aggregate import length

    def response(m: Any) -> str:  # the assistant side of a published response
        return conversation.contents(m, ("assistant",)) or conversation.contents(m)

    ch = [response(m) for m in _col(data, "chosen")]
    rj = [response(m) for m in _col(data, "rejected")]
    out = length_bias(zip(ch, rj))
    pts = [(len(c), len(r)) for c, r in zip(ch, rj)]
    step = max(1, math.ceil(len(pts) / MAX_POINTS))
    out["points"] = [list(p) for p in pts[::step]]
    info = (manifest or {}).get("stage_info") or {}
    agg = next((info[k] for k in ("aggregate_gpm", "aggregate") if isinstance(info.get(k), dict)),
               {})
    eff = agg.get("length_effects") or {}
    out["annotators"] = [{"annotator": a, **row} for a, row in
                         (eff.get("annotators") or {}).items()]
    out["annotators_left_out"] = eff.get("annotators_left_out", 0)
    ctl = agg.get("length_control")
    out["control"] = None if ctl is None else {
        "mode": ctl.get("mode"), "min_diff": ctl.get("min_diff"),
        "comparisons": ctl.get("comparisons"), "split": ctl.get("split") or {}}
    out["balance"] = (info.get("pairs") or {}).get("length_balance") \
        if isinstance(info.get("pairs"), dict) else None
    out["after"] = length.length_shift(np.array([c for c, _ in pts], dtype=float),
                                       np.array([r for _, r in pts], dtype=float))
    out["before"] = None
    if lin is not None:
        mp = lin.table("margins", "pairs", ["chosen_id", "rejected_id"])
        cands = next((t for st in ("generate", "ingest")
                      if (t := lin.table(st, "candidates", ["candidate_id", "text"]))
                      is not None), None)
        if mp is not None and cands is not None:
            lens = length.candidate_lengths(cands)
            out["before"] = length.length_shift(
                length.lookup(pl.Series(mp.column("chosen_id").to_pylist()), lens),
                length.lookup(pl.Series(mp.column("rejected_id").to_pylist()), lens))
    notes = []
    if not pts:
        notes.append("no published pairs")
    if not out["annotators"]:
        notes.append("no per-annotator length table (aggregate.length_control off, or "
                     "no decisive vote on pairs of unequal length)")
    if out["before"] is None:
        notes.append("no before-curation distribution: the run's margins and candidates "
                     "outputs are no longer on disk")
    out["note"] = "; ".join(notes) or None
    return out


def _section_distributions(data: pa.Table) -> dict[str, Any]:
    out = {}
    for col, rng in (("p_hat", (0.0, 1.0)), ("disagreement", (0.0, 1.0)), ("margin", None),
                     ("weight", (0.0, 1.0))):
        vals = _col(data, col)
        out[col] = {"stats": summarize(vals), "hist": histogram(vals, 20, rng)}
    return out


def _section_similarity(data: pa.Table, lin: _Lineage,
                        manifest: dict[str, Any]) -> dict[str, Any]:
    flags = Counter(f for fl in _col(data, "flags") for f in (fl or []))
    inj = ((manifest.get("stage_info") or {}).get("margins") or {}).get("injection_suspects")
    source, sims = None, []
    if "similarity" in data.column_names:
        sims = _finite(_col(data, "similarity")).tolist()
        source = "published pairs"
    if not sims:
        for stage in ("denoise", "margins"):
            t = lin.table(stage, "pairs")
            if t is not None:
                sims = _finite(_col(t, "similarity")).tolist()
                if sims:
                    source = f"{stage} stage pairs (before selection)"
                    break
    n = data.num_rows
    return {
        "source": source if sims else None, "stats": summarize(sims),
        "hist": histogram(sims, 20, (min(0.0, min(sims)), max(1.0, max(sims))))
        if sims else None,
        "flags": dict(flags.most_common()),
        "indistinguishable_share": _num(flags.get("indistinguishable", 0) / n) if n else None,
        # responses with text aimed at the judge (pipeline.annotate.injection)
        "injection": None if inj is None else {
            "candidates": inj.get("candidates", 0), "pairs": inj.get("pairs", 0),
            "published": flags.get("injection_suspect", 0)},
        "note": None if sims else "no chosen/rejected similarity was computed for this version "
                                  "(embedding similarity not enabled); flag counts only",
    }


def _section_noise(manifest: dict[str, Any], data: pa.Table) -> dict[str, Any]:
    st = (manifest.get("stages") or {}).get("denoise")
    decisions = Counter(_col(data, "decision"))
    flipped_col = _col(data, "flipped")
    n_flip_data = sum(bool(x) for x in flipped_col) if flipped_col else decisions.get("flip", 0)
    info = (manifest.get("stage_info") or {}).get("denoise") or {}
    weights = _finite(_col(data, "weight"))
    out: dict[str, Any] = {
        "label_status": dict(Counter(_col(data, "label_status")).most_common()),
        "decisions": dict(decisions.most_common()),
        "flipped_published": n_flip_data,
        "expected_label_error_kept": _num(1.0 - weights.mean()) if weights.size else None,
    }
    sinfo = manifest.get("stage_info") or {}
    cyc = (sinfo.get("margins") or {}).get("cyclic")
    out["cyclic"] = cyc if isinstance(cyc, dict) else None  # GPM / panel intransitive prompts
    sel = sinfo.get("select") or {}
    out["selection"] = {k: sel[k] for k in ("quality_before", "quality_after",
                                            "coverage_before", "coverage_after",
                                            "prompts_before", "prompts_after") if k in sel} \
        or None
    if not st:
        return {**out, "denoise_in": None, "dropped": {}, "flipped": None, "noise_rate": None,
                "weights_noise_rate": None, "agreement_filter_retention": None,
                "details": [], "note": "no denoise stage in this version"}
    dropped = dict(st.get("dropped") or {})
    flipped = info.get("flipped", n_flip_data)
    weights_info = info.get("weights") if isinstance(info.get("weights"), dict) else {}
    af = info.get("agreement_filter") if isinstance(info.get("agreement_filter"), dict) else {}
    out["weights_noise_rate"] = _num(weights_info.get("noise_rate")) \
        if isinstance(weights_info.get("noise_rate"), (int, float)) else None
    out["agreement_filter_retention"] = _num(af.get("retention")) \
        if isinstance(af.get("retention"), (int, float)) else None
    out["details"] = [t for t in (_tabulate(f"denoise: {k}", v) for k, v in info.items()
                                  if isinstance(v, dict)) if t]
    n_in = st.get("in") or 0
    rate = (sum(dropped.values()) + (flipped or 0)) / n_in if n_in else None
    return {**out, "denoise_in": n_in, "dropped": dropped, "flipped": flipped,
            "noise_rate": _num(rate),
            "note": "noise rate = (pairs denoise dropped + pairs it flipped) / pairs into "
                    "denoise; expected label error = 1 − mean weight of the published pairs"}


def _section_examples(data: pa.Table, dropped: pa.Table, quarantine: pa.Table, lin: _Lineage,
                      max_examples: int) -> dict[str, Any]:
    mask = np.zeros(data.num_rows, dtype=bool)
    if "decision" in data.column_names:
        mask |= np.array([d == "flip" for d in _col(data, "decision")], dtype=bool)
    if "flipped" in data.column_names:
        mask |= np.array([bool(f) for f in _col(data, "flipped")], dtype=bool)
    n_flip = int(mask.sum())
    idx = np.flatnonzero(mask)[:max_examples]
    flip = data.take(pa.array(idx, type=pa.int64())).to_pylist() if idx.size else []
    flipped = [{
        "source_id": r.get("source_id"), "pair_id": r.get("pair_id"),
        "prompt": truncate(conversation.render(r.get("prompt"))),
        "chosen": truncate(conversation.contents(r.get("chosen"))),
        "rejected": truncate(conversation.contents(r.get("rejected"))),
        "p_hat": _num(r.get("p_hat")), "margin": _num(r.get("margin")),
        "label_status": r.get("label_status"),
        "reason": "the votes contradict the input's label: chosen and rejected exchanged",
    } for r in flip]

    # texts from the lineage, to show what a dropped pair / candidate was
    cand_text: dict[str, str] = {}
    cand_prompt: dict[str, str] = {}
    for t in lin.tables("candidates", ["candidate_id", "prompt_id", "text"]):
        cand_text.update(zip(_col(t, "candidate_id"), _col(t, "text")))
        cand_prompt.update(zip(_col(t, "candidate_id"), _col(t, "prompt_id")))
    prompt_text: dict[str, str] = {}
    for t in lin.tables("prompts", ["prompt_id", "prompt"]):
        prompt_text.update(zip(_col(t, "prompt_id"),
                               map(conversation.render, _col(t, "prompt"))))
    pair_ids: dict[str, tuple[str, str, str]] = {}
    for t in lin.tables("pairs", ["pair_id", "prompt_id", "chosen_id", "rejected_id"]):
        for pid, prid, c, r in zip(_col(t, "pair_id"), _col(t, "prompt_id"),
                                   _col(t, "chosen_id"), _col(t, "rejected_id")):
            pair_ids.setdefault(pid, (prid, c, r))

    def by_reason(table: pa.Table) -> list[dict[str, Any]]:
        seen: Counter = Counter()
        idx = []
        for i, k in enumerate(zip(_col(table, "stage"), _col(table, "reason"))):
            if seen[k] < max_examples:
                seen[k] += 1
                idx.append(i)
        return table.take(idx).to_pylist() if idx else []

    drops = []
    for r in by_reason(dropped):
        e = {"stage": r.get("stage"), "reason": r.get("reason"), "source_id": r.get("source_id"),
             "row_id": r.get("row_id"), "detail": truncate(r.get("detail")),
             "prompt": None, "chosen": None, "rejected": None, "text": None}
        rid = r.get("row_id")
        if rid in pair_ids:
            prid, c, rj = pair_ids[rid]
            e.update(prompt=truncate(prompt_text.get(prid)), chosen=truncate(cand_text.get(c)),
                     rejected=truncate(cand_text.get(rj)))
        elif rid in cand_text:
            e.update(text=truncate(cand_text[rid]),
                     prompt=truncate(prompt_text.get(cand_prompt.get(rid))))
        drops.append(e)
    quars = [{"stage": r.get("stage"), "reason": r.get("reason"), "file": r.get("file"),
              "row": r.get("row"), "source_id": r.get("source_id"),
              "detail": truncate(r.get("detail")), "raw": truncate(r.get("raw"))}
             for r in by_reason(quarantine)]
    return {"flipped": flipped, "flipped_total": n_flip, "dropped": drops,
            "dropped_total": dropped.num_rows, "quarantined": quars,
            "quarantined_total": quarantine.num_rows,
            "texts_from_lineage": bool(cand_text)}


# ---------------------------------------------------------------------------- public API


def report_from_tables(manifest: dict[str, Any], data: pa.Table, dropped: pa.Table,
                       quarantine: pa.Table, *, version_path: str | Path | None = None,
                       run_root: str | Path | None = None,
                       max_examples: int = 5) -> dict[str, Any]:
    """The report dict from a manifest and the three tables (usable before publishing).

    ``run_root`` (``<data_root>/runs/<name>``) is where the run's stage outputs are looked
    up for candidate texts, votes and pointwise scores; None: no lineage (those parts of the
    report say so). Column sets may be wider or narrower than PUBLISHED: missing optional
    columns only blank their statistic.
    """
    lin = _Lineage(manifest, Path(run_root) if run_root is not None else None)
    vp = Path(version_path) if version_path is not None else None
    rep = {
        "report_version": REPORT_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": f"{manifest.get('name') or 'dataset'}"
                 f"{'@v' + str(manifest['version']) if manifest.get('version') else ''}",
        "lineage": {"run_root": str(run_root) if run_root is not None else None,
                    "stages_found": sorted(lin.dirs)},
        "overview": _section_overview(manifest, vp),
        "stages": _section_stages(manifest),
        "hygiene": _section_hygiene(manifest),
        "scores": _section_scores(data, lin),
        "judges": _section_judges(manifest, lin),
        "length_bias": _section_length(data, manifest, lin),
        "distributions": _section_distributions(data),
        "similarity": _section_similarity(data, lin, manifest),
        "noise": _section_noise(manifest, data),
        "examples": _section_examples(data, dropped, quarantine, lin, max_examples),
    }
    # one count of flips: the published flipped pairs, and how many denoise flipped (a
    # flipped pair can still be left out by pair building or selection)
    rep["examples"]["flipped_by_denoise"] = rep["noise"].get("flipped")
    return rep


def _flip_count(ex: dict[str, Any]) -> str:
    """"4 published" or "4 published of 5 flipped by denoise"."""
    n, by = ex.get("flipped_total"), ex.get("flipped_by_denoise")
    if isinstance(by, int) and by != n:
        return f"{n} published of {by} flipped by denoise"
    return f"{n} published"


def build_report(version_path: str | Path, *, run_root: str | Path | None = None,
                 lineage: bool = True, max_examples: int = 5) -> dict[str, Any]:
    """The report dict of a published version directory ``<root>/datasets/<name>/v<N>``.

    The run's stage outputs are looked up under ``run_root`` (default
    ``<root>/runs/<name>``) unless ``lineage=False``.
    """
    from pipeline.store.datasets import (
        DATA_PARQUET,
        DROPPED_PARQUET,
        QUARANTINE_PARQUET,
        read_manifest,
        read_version_table,
    )

    vp = Path(version_path)
    manifest = read_manifest(vp)
    tables = [read_version_table(vp, f)
              for f in (DATA_PARQUET, DROPPED_PARQUET, QUARANTINE_PARQUET)]
    if lineage and run_root is None:
        run_root = _default_run_root(vp, manifest)
    return report_from_tables(manifest, *tables, version_path=vp,
                              run_root=run_root if lineage else None,
                              max_examples=max_examples)


def default_report_path(version_path: str | Path) -> Path:
    """``<root>/datasets/<name>/reports/v<N>.html`` for ``<root>/datasets/<name>/v<N>``."""
    vp = Path(version_path)
    return vp.parent / REPORTS_DIR / f"{vp.name}.html"


def write_report(version_path: str | Path, out_path: str | Path | None = None, *,
                 report: dict[str, Any] | None = None) -> Path:
    """Build (unless given) and render the report, write it atomically, return its path.

    Default path: :func:`default_report_path` — beside the immutable version, never in it.
    """
    vp = Path(version_path)
    rep = report if report is not None else build_report(vp)
    out = Path(out_path) if out_path is not None else default_report_path(vp)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(rep)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------------------- plots


def _fig(width: float = 6.4, height: float = 3.2):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(ax, hist: dict[str, Any], label: str | None = None, color: str | None = None,
          alpha: float = 0.8) -> None:
    e = hist["edges"]
    widths = [b - a for a, b in zip(e[:-1], e[1:])]
    ax.bar(e[:-1], hist["counts"], width=widths, align="edge", alpha=alpha, label=label,
           color=color, edgecolor="white", linewidth=0.5)


def _plot_stages(rep: dict[str, Any]):
    rows = [r for r in rep["stages"]["rows"] if r["in"] is not None]
    if not rows:
        return None
    fig, ax = _fig(6.4, 0.45 * len(rows) + 1.2)
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["in"] for r in rows], height=0.4, label="in", color="#9db4d6")
    ax.barh(y + 0.2, [r["kept"] or 0 for r in rows], height=0.4, label="kept", color="#2e6fba")
    ax.set_yticks(y, [r["stage"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _plot_scores(rep: dict[str, Any]):
    s = rep["scores"]
    if not s["hist_chosen"] and not s["hist_rejected"]:
        return None
    fig, ax = _fig()
    if s["hist_chosen"]:
        _bars(ax, s["hist_chosen"], "score_chosen", "#2e8b57", 0.6)
    if s["hist_rejected"]:
        _bars(ax, s["hist_rejected"], "score_rejected", "#c0392b", 0.6)
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return fig


def _plot_agreement(rep: dict[str, Any]):
    a = rep["judges"]["agreement"]
    if not a:
        return None
    k = len(a["annotators"])
    m = np.array([[np.nan if v is None else v for v in row] for row in a["agreement"]])
    fig, ax = _fig(min(6.4, 2.8 + 0.45 * k), min(2.0 + 0.4 * k, 7))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(k), [str(i + 1) for i in range(k)])
    ax.set_yticks(range(k), [str(i + 1) for i in range(k)])
    for i in range(k):
        for j in range(k):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def _plot_position(rep: dict[str, Any]):
    pc = rep["judges"]["position_consistency"]
    vals = {k: v for k, v in (pc or {}).items() if v is not None}
    if not vals:
        return None
    fig, ax = _fig(6.4, 0.45 * len(vals) + 1.2)
    names = list(vals)
    ax.barh(range(len(names)), [vals[n] for n in names], color="#8e6cc0")
    ax.set_yticks(range(len(names)), [truncate(n, 40) for n in names], fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("share of pairs where both orders agree")
    return fig


def _plot_length(rep: dict[str, Any]):
    pts = rep["length_bias"]["points"]
    if not pts:
        return None
    fig, ax = _fig(5.0, 4.0)
    x = [p[1] for p in pts]
    y = [p[0] for p in pts]
    ax.scatter(x, y, s=10, alpha=0.6, color="#2e6fba")
    hi = max(max(x), max(y), 1)
    ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("rejected length (chars)")
    ax.set_ylabel("chosen length (chars)")
    return fig


def _plot_length_shift(rep: dict[str, Any]):
    lb = rep["length_bias"]
    shown = [(n, d, c) for n, d, c in (("before curation", lb.get("before"), "#b0b7c3"),
                                       ("published", lb.get("after"), "#2e6fba"))
             if d and d["pairs"]]
    if not shown:
        return None
    fig, ax = _fig()
    for name, d, color in shown:
        edges = np.array(d["edges"])
        share = np.array(d["counts"], dtype=float) / max(d["pairs"], 1)
        ax.step(edges[:-1], share, where="post", color=color, lw=1.6, label=name)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("(chosen − rejected) / (chosen + rejected) length")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    return fig


def _plot_hist(get: Callable[[dict[str, Any]], Any], xlabel: str,
               color: str) -> Callable[[dict[str, Any]], Any]:
    """A histogram plot of the report's histogram ``get(rep)`` (None: no plot)."""
    def draw(rep: dict[str, Any]):
        h = get(rep)
        if not h:
            return None
        fig, ax = _fig(6.4, 2.6)
        _bars(ax, h, color=color)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        return fig
    return draw


def _dist_hist(col: str, color: str) -> Callable[[dict[str, Any]], Any]:
    return _plot_hist(lambda rep: rep["distributions"][col]["hist"], col, color)


def _plot_noise(rep: dict[str, Any]):
    n = rep["noise"]
    if n.get("denoise_in") is None:
        return None
    kept = (n["denoise_in"] or 0) - sum(n["dropped"].values()) - (n["flipped"] or 0)
    labels = ["kept", "flipped", *[f"dropped: {r}" for r in n["dropped"]]]
    vals = [kept, n["flipped"] or 0, *n["dropped"].values()]
    fig, ax = _fig(6.4, 0.45 * len(labels) + 1.2)
    colors = ["#2e8b57", "#d68910", *["#c0392b"] * len(n["dropped"])]
    ax.barh(range(len(labels)), vals, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pairs out of denoise's input")
    return fig


# (section, plot id, caption, drawer). A drawer returns None when its data is absent.
PLOTS: list[tuple[str, str, str, Callable[[dict[str, Any]], Any]]] = [
    ("stages", "plot-stage-rows", "Rows in and kept at every stage, in pipeline order.",
     _plot_stages),
    ("scores", "plot-scores", "Distribution of score_chosen and score_rejected over the "
     "published pairs.", _plot_scores),
    ("judges", "plot-agreement", "Pairwise agreement between annotators on the comparisons "
     "both judged (numbers index the annotator table).", _plot_agreement),
    ("judges", "plot-position-consistency", "Position consistency per judge: share of pairs "
     "whose verdict is the same in both presentation orders.", _plot_position),
    ("length_bias", "plot-length-bias", "Chosen vs rejected response length; points above "
     "the diagonal are pairs where the longer response was chosen.", _plot_length),
    ("length_bias", "plot-length-shift", "Normalised chosen − rejected length before "
     "curation and in the published pairs.", _plot_length_shift),
    ("distributions", "plot-p-hat", "Histogram of p_hat, the estimated probability that "
     "chosen is preferred.", _dist_hist("p_hat", "#2e6fba")),
    ("distributions", "plot-disagreement", "Histogram of disagreement d = 1 − |2p̂ − 1|.",
     _dist_hist("disagreement", "#8e6cc0")),
    ("distributions", "plot-margin", "Histogram of the margin used by reward-model training.",
     _dist_hist("margin", "#2e8b57")),
    ("similarity", "plot-similarity", "Cosine similarity of chosen and rejected responses.",
     _plot_hist(lambda rep: rep["similarity"]["hist"], "cosine similarity (chosen, rejected)",
                "#d68910")),
    ("noise", "plot-noise", "What denoise did with its input pairs.", _plot_noise),
]


# ---------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.4}
header{background:#1d2330;color:#fff;padding:16px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8cfdb;font-size:13px}
nav{padding:8px 28px;background:#e8ebf0;font-size:13px}nav a{margin-right:14px;color:#2e4a7a}
main{padding:8px 28px 40px;max-width:1180px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:14px;margin:14px 0 6px;color:#3a4556}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border:1px solid #dde2ea;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{max-width:360px;white-space:pre-wrap;word-break:break-word}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #eef0f4}
figcaption{font-size:12px;color:#56607a}.note{font-size:12.5px;color:#6a5a10;background:#fff8db;
padding:4px 8px;border-radius:4px;display:inline-block}.big{font-size:20px;font-weight:600}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "0"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _html_table(columns: list[str], rows: list[list[Any]], text_cols: Iterable[str] = ()
                ) -> str:
    tc = set(text_cols)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c, v in zip(columns, row):
            cls = "text" if c in tc else "num" if isinstance(v, (int, float)) and \
                not isinstance(v, bool) else ""
            cells.append(f'<td class="{cls}">{_e(_fmt(v))}</td>' if cls else
                         f"<td>{_e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _stats_table(named: dict[str, dict[str, Any]]) -> str:
    keys = ["n", "nulls", "mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max"]
    return _html_table(["column", *keys], [[n, *[s.get(k) for k in keys]]
                                           for n, s in named.items()])


def _kv_table(d: dict[str, Any]) -> str:
    return _html_table(["key", "value"], [[k, v] for k, v in d.items()])


def _note(text: str | None) -> str:
    return f'<p class="note">{_e(text)}</p>' if text else ""


def _section_html(key: str, rep: dict[str, Any]) -> str:
    s = rep[key]
    p: list[str] = []
    if key == "overview":
        p.append(_kv_table({"dataset": rep["title"], "path": s["path"],
                            "created_at": s["created_at"], "parent_version": s["parent_version"],
                            "code_version": s["code_version"], "config_hash": s["config_hash"],
                            "input": f"{s['input']['kind']}: {s['input']['path']}",
                            "models": ", ".join(s["models"]) or "none",
                            "rows": s["rows"], "report generated": rep["generated_at"],
                            "stage outputs found": ", ".join(rep["lineage"]["stages_found"])
                            or "none"}))
        if s["calls"]:
            p.append(_html_table(s["calls"]["columns"], s["calls"]["rows"]))
    elif key == "stages":
        p.append(_html_table(["stage", "in", "kept", "out", "dropped by reason",
                              "quarantined by reason", "reused"],
                             [[r["stage"], r["in"], r["kept"], r["out"], r["dropped"],
                               r["quarantined"], r["reused"]] for r in s["rows"]]))
        if s["drop_reasons"]:
            p.append("<h3>All drop reasons</h3>" + _kv_table(s["drop_reasons"]))
        if s["quarantine_reasons"]:
            p.append("<h3>All quarantine reasons</h3>" + _kv_table(s["quarantine_reasons"]))
    elif key == "scores":
        p.append(_stats_table({"score_chosen": s["score_chosen"],
                               "score_rejected": s["score_rejected"],
                               "score_chosen − score_rejected": s["gap"]}))
        p.append(f"<p>share of pairs whose chosen response scored higher: "
                 f"<b>{_e(_fmt(s['chosen_higher_share']))}</b></p>")
        if s["by_annotator"]:
            cols = list(s["by_annotator"][0])
            p.append("<h3>Pointwise scores per annotator and aspect (all candidates)</h3>" +
                     _html_table(cols, [[r[c] for c in cols] for r in s["by_annotator"]]))
        p.append(_note(s["note"]))
    elif key == "judges":
        a = s["agreement"]
        if a:
            k = len(a["annotators"])
            p.append("<h3>Annotators</h3>" + _html_table(
                ["#", "annotator", "votes"],
                [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])]))
            p.append("<h3>Agreement matrix (share of common comparisons with the same "
                     "verdict)</h3>" + _html_table(
                         ["#", *[str(j + 1) for j in range(k)]],
                         [[i + 1, *a["agreement"][i]] for i in range(k)]))
            p.append("<h3>Cohen's κ</h3>" + _html_table(
                ["#", *[str(j + 1) for j in range(k)]],
                [[i + 1, *a["kappa"][i]] for i in range(k)]))
            p.append("<h3>Comparisons judged by both</h3>" + _html_table(
                ["#", *[str(j + 1) for j in range(k)]],
                [[i + 1, *a["n"][i]] for i in range(k)]))
        for t in s["tables"]:
            p.append(f"<h3>{_e(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        p.append(_note(s["note"]))
    elif key == "hygiene":
        if s["dedup"] is not None:
            d = s["dedup"]
            p.append(_kv_table({"prompts checked": d["prompts"],
                                "exact duplicates (after normalisation)":
                                d["duplicate_prompt"],
                                f"near duplicates (word {d['ngram']}-gram Jaccard ≥ "
                                f"{d['threshold']})": d["near_duplicate"]}))
            if d["examples"]:
                p.append(_html_table(list(d["examples"][0]),
                                     [list(r.values()) for r in d["examples"]]))
        if s["decontaminate"] is not None:
            c = s["decontaminate"]
            p.append(_kv_table({"benchmarks (items)": c["benchmarks"] or "none",
                                "contaminated prompts": c["contaminated"] or 0,
                                "left out (never the input against itself)":
                                ", ".join(c["skipped"]) or "none",
                                "not installed": ", ".join(c["unavailable"]) or "none"}))
            if c["examples"]:
                p.append(_html_table(list(c["examples"][0]),
                                     [list(r.values()) for r in c["examples"]]))
        p.append(_note(s["note"]))
    elif key == "length_bias":
        p.append(f'<p>win rate of the longer response: <span class="big">'
                 f'{_e(_fmt(s["longer_wins"]))}</span> (0.5 = no length bias)</p>')
        p.append(_kv_table({k: s[k] for k in ("pairs", "equal_length", "chosen_longer",
                                              "rejected_longer", "mean_chosen_chars",
                                              "mean_rejected_chars")}))
        shift = [(n, d) for n, d in (("before curation", s.get("before")),
                                     ("published", s.get("after"))) if d]
        if shift:
            p.append("<h3>Chosen − rejected length</h3>")
            p.append(_html_table(["pairs", "count", "chosen longer", "median chosen − "
                                  "rejected (chars)"],
                                 [[n, d["pairs"], d["chosen_longer_share"],
                                   d["median_diff_chars"]] for n, d in shift]))
        if s.get("annotators"):
            p.append("<h3>Length effect per annotator</h3>")
            p.append("<p>Logistic regression of each annotator's verdicts on the pair's "
                     "posterior and tanh(length difference / sd) (LC-AlpacaEval's GLM): the "
                     "length coefficient, and the longer-win rate with it set to 0.</p>")
            cols = ["annotator", "votes", "longer_win_rate", "lc_longer_win_rate",
                    "length_coef", "length_coef_se"]
            p.append(_html_table(cols, [[r.get(c) for c in cols] for r in s["annotators"]],
                                 text_cols=["annotator"]))
            if s.get("annotators_left_out"):
                p.append(_note(f"{s['annotators_left_out']} annotators with fewer votes "
                               f"left out of the table"))
        if s.get("control"):
            c = s["control"]
            p.append(_kv_table({"length control": c["mode"],
                                "pairs by length side": c["comparisons"],
                                "annotators given one confusion per side":
                                    ", ".join(c["split"]) or "none"}))
        if s.get("balance"):
            b = s["balance"]
            p.append(_kv_table({"length balance band": b["band"],
                                "chosen longer before": b["chosen_longer_before"],
                                "chosen longer after": b["chosen_longer_after"],
                                "dropped (length_balance)": b["dropped"]}))
        p.append(_note(s["note"]))
    elif key == "distributions":
        p.append(_stats_table({c: v["stats"] for c, v in s.items()}))
    elif key == "similarity":
        if s["source"]:
            p.append(f"<p>from {_e(s['source'])}</p>" +
                     _stats_table({"similarity": s["stats"]}))
        p.append("<h3>Flags on published pairs</h3>" +
                 (_kv_table(s["flags"]) if s["flags"] else "<p>no flags</p>"))
        p.append(f"<p>share flagged indistinguishable: "
                 f"{_e(_fmt(s['indistinguishable_share']))}</p>")
        if s.get("injection") is not None:
            i = s["injection"]
            p.append(f"<p>text aimed at the judge (flag <code>injection_suspect</code>): "
                     f"{_e(i['candidates'])} responses, {_e(i['pairs'])} pairs, "
                     f"{_e(i['published'])} of them published</p>")
        p.append(_note(s["note"]))
    elif key == "noise":
        p.append(f'<p>estimated noise rate: <span class="big">{_e(_fmt(s["noise_rate"]))}'
                 f'</span></p>')
        p.append(_kv_table({"pairs into denoise": s["denoise_in"],
                            "dropped by denoise": s["dropped"], "flipped by denoise":
                            s["flipped"], "expected label error of published pairs":
                            s["expected_label_error_kept"],
                            "noise rate from annotator reliability (weights)":
                            s["weights_noise_rate"],
                            "agreement filter retention": s["agreement_filter_retention"],
                            "label_status (published)": s["label_status"],
                            "decision (published)": s["decisions"],
                            "cyclic prompts (GPM / panel)": s.get("cyclic"),
                            "budgeted selection (quality, coverage before → after)":
                            s.get("selection")}))
        for t in s["details"]:
            p.append(f"<h3>{_e(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        p.append(_note(s["note"]))
    elif key == "examples":
        p.append(f"<h3>Flipped pairs ({_flip_count(s)})</h3>")
        if s["flipped"]:
            cols = ["source_id", "prompt", "chosen", "rejected", "p_hat", "margin",
                    "label_status", "reason"]
            p.append(_html_table(cols, [[r[c] for c in cols] for r in s["flipped"]],
                                 ("prompt", "chosen", "rejected", "reason")))
        else:
            p.append("<p>none</p>")
        p.append(f"<h3>Dropped rows ({s['dropped_total']} in total; a few per stage and "
                 f"reason)</h3>")
        if s["dropped"]:
            cols = ["stage", "reason", "source_id", "row_id", "detail", "prompt", "chosen",
                    "rejected", "text"]
            p.append(_html_table(cols, [[r[c] for c in cols] for r in s["dropped"]],
                                 ("detail", "prompt", "chosen", "rejected", "text")))
            if not s["texts_from_lineage"]:
                p.append(_note("texts of dropped rows need the run's stage outputs, which "
                               "were not found"))
        else:
            p.append("<p>none</p>")
        p.append(f"<h3>Quarantined rows ({s['quarantined_total']} in total)</h3>")
        if s["quarantined"]:
            cols = ["stage", "reason", "file", "row", "source_id", "detail", "raw"]
            p.append(_html_table(cols, [[r[c] for c in cols] for r in s["quarantined"]],
                                 ("detail", "raw")))
        else:
            p.append("<p>none</p>")
    return "\n".join(x for x in p if x)


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page of ``report``: inline CSS, inline PNG plots, no script,
    no external resource; every value from the data is HTML-escaped."""
    title = f"prefcurate quality report: {report.get('title', '')}"
    nav = " ".join(f'<a href="#{k}">{_e(h)}</a>' for k, h in SECTIONS)
    body = []
    for key, heading in SECTIONS:
        figs = []
        for sec, pid, caption, draw in PLOTS:
            if sec != key:
                continue
            try:
                fig = draw(report)
            except Exception as exc:  # a broken plot must not lose the rest of the report
                log.warning("report: plot %s failed: %s", pid, exc)
                fig = None
            if fig is None:
                continue
            png = _png(fig)
            figs.append(f'<figure id="fig-{pid}"><img class="plot" id="{pid}" '
                        f'alt="{_e(caption)}" src="data:image/png;base64,{png}">'
                        f"<figcaption>{_e(caption)}</figcaption></figure>")
        body.append(f'<section id="{key}"><h2>{_e(heading)}</h2>\n'
                    f"{_section_html(key, report)}\n{''.join(figs)}</section>")
    ov = report.get("overview", {})
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{_e(ov.get('path') or '')} · generated "
            f"{_e(report.get('generated_at'))}</p></header><nav>{nav}</nav><main>"
            + "\n".join(body) + "</main></body></html>\n")


# ---------------------------------------------------------------------------- terminal


def render_terminal(report: dict[str, Any], console: Any) -> None:
    """Print every section of ``report`` (a rule with its heading, then rich tables) on
    ``console``; text from the data is never interpreted as rich markup."""
    from rich.table import Table
    from rich.text import Text

    def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
        t = Table(title=Text(title) if title else None, title_justify="left")
        for c in columns:
            t.add_column(Text(str(c)), overflow="fold")
        for r in rows:
            t.add_row(*[Text(_fmt(v)) for v in r])
        return t

    def kv(title: str | None, d: dict[str, Any]) -> Table:
        return table(title, ["key", "value"], [[k, v] for k, v in d.items()])

    def stats(title: str | None, named: dict[str, dict[str, Any]]) -> Table:
        keys = ["n", "nulls", "mean", "std", "min", "median", "p95", "max"]
        return table(title, ["column", *keys], [[n, *[s.get(k) for k in keys]]
                                                for n, s in named.items()])

    def note(text: str | None) -> None:
        if text:
            console.print(Text(f"note: {text}", style="yellow"))

    def short(rows: list[dict[str, Any]], cols: list[str], n: int) -> list[list[Any]]:
        return [[truncate(r[c], n) if isinstance(r[c], str) else r[c] for c in cols]
                for r in rows]

    heads = dict(SECTIONS)
    console.print(Text(f"prefcurate quality report: {report['title']}", style="bold"))

    ov = report["overview"]
    console.rule(Text(heads["overview"]))
    console.print(kv(None, {
        "path": ov["path"], "created_at": ov["created_at"], "parent": ov["parent_version"],
        "input": f"{ov['input']['kind']}: {ov['input']['path']}",
        "models": ", ".join(ov["models"]) or "none", "rows": ov["rows"],
        "stage outputs found": ", ".join(report["lineage"]["stages_found"]) or "none"}))
    if ov["calls"]:
        console.print(table("model calls", ov["calls"]["columns"], ov["calls"]["rows"]))

    st = report["stages"]
    console.rule(Text(heads["stages"]))
    console.print(table(None, ["stage", "in", "kept", "out", "dropped", "quarantined",
                               "reused"],
                        [[r["stage"], r["in"], r["kept"], r["out"], r["dropped"],
                          r["quarantined"], r["reused"]] for r in st["rows"]]))

    sc = report["scores"]
    console.rule(Text(heads["scores"]))
    console.print(stats(None, {"score_chosen": sc["score_chosen"],
                               "score_rejected": sc["score_rejected"], "gap": sc["gap"]}))
    console.print(Text(f"share of pairs whose chosen response scored higher: "
                       f"{_fmt(sc['chosen_higher_share'])}"))
    if sc["by_annotator"]:
        cols = list(sc["by_annotator"][0])
        console.print(table("pointwise scores per annotator and aspect", cols,
                            [[r[c] for c in cols] for r in sc["by_annotator"]]))
    note(sc["note"])

    j = report["judges"]
    console.rule(Text(heads["judges"]))
    if j["agreement"]:
        a = j["agreement"]
        k = len(a["annotators"])
        console.print(table("annotators", ["#", "annotator", "votes"],
                            [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])]))
        console.print(table("agreement (Cohen's κ)", ["#", *[str(i + 1) for i in range(k)]],
                            [[i + 1, *[f"{_fmt(x)} ({_fmt(y)})" for x, y in
                                       zip(a["agreement"][i], a["kappa"][i])]]
                             for i in range(k)]))
    for t in j["tables"]:
        console.print(table(t["title"], t["columns"], t["rows"]))
    note(j["note"])

    hy = report["hygiene"]
    console.rule(Text(heads["hygiene"]))
    if hy["dedup"] is not None:
        d = hy["dedup"]
        console.print(kv(None, {"prompts checked": d["prompts"],
                                "exact duplicates": d["duplicate_prompt"],
                                "near duplicates": d["near_duplicate"]}))
    if hy["decontaminate"] is not None:
        c = hy["decontaminate"]
        console.print(kv(None, {"benchmarks": c["benchmarks"] or "none",
                                "contaminated": c["contaminated"] or 0,
                                "left out": ", ".join(c["skipped"]) or "none"}))
    note(hy["note"])

    lb = report["length_bias"]
    console.rule(Text(heads["length_bias"]))
    console.print(kv(None, {k: lb[k] for k in (
        "longer_wins", "pairs", "equal_length", "chosen_longer", "rejected_longer",
        "mean_chosen_chars", "mean_rejected_chars")}))
    shift = [(n, d) for n, d in (("before curation", lb.get("before")),
                                 ("published", lb.get("after"))) if d]
    if shift:
        console.print(table("chosen − rejected length", ["pairs", "count", "chosen longer",
                                                         "median diff (chars)"],
                            [[n, d["pairs"], d["chosen_longer_share"], d["median_diff_chars"]]
                             for n, d in shift]))
    if lb.get("annotators"):
        cols = ["annotator", "votes", "longer_win_rate", "lc_longer_win_rate", "length_coef"]
        console.print(table("length effect per annotator (GLM)", cols,
                            [[r.get(c) for c in cols] for r in lb["annotators"]]))
    if lb.get("control"):
        console.print(kv(None, {"length control": lb["control"]["mode"],
                                "split": ", ".join(lb["control"]["split"]) or "none"}))
    if lb.get("balance"):
        b = lb["balance"]
        console.print(kv(None, {"length balance": b["band"],
                                "chosen longer before → after":
                                    f"{_fmt(b['chosen_longer_before'])} → "
                                    f"{_fmt(b['chosen_longer_after'])}",
                                "dropped": b["dropped"]}))
    note(lb["note"])

    console.rule(Text(heads["distributions"]))
    console.print(stats(None, {c: v["stats"] for c, v in report["distributions"].items()}))

    sim = report["similarity"]
    console.rule(Text(heads["similarity"]))
    if sim["source"]:
        console.print(stats(f"from {sim['source']}", {"similarity": sim["stats"]}))
    console.print(kv("flags", {**sim["flags"],
                               "indistinguishable share": sim["indistinguishable_share"]}))
    note(sim["note"])

    n = report["noise"]
    console.rule(Text(heads["noise"]))
    console.print(kv(None, {"noise rate": n["noise_rate"], "into denoise": n["denoise_in"],
                            "dropped": n["dropped"], "flipped": n["flipped"],
                            "expected label error (published)": n["expected_label_error_kept"],
                            "noise rate from weights": n["weights_noise_rate"],
                            "agreement filter retention": n["agreement_filter_retention"],
                            "label_status": n["label_status"],
                            "cyclic prompts": n.get("cyclic"),
                            "budgeted selection": n.get("selection")}))
    for t in n["details"]:
        console.print(table(t["title"], t["columns"], t["rows"]))
    note(n["note"])

    ex = report["examples"]
    console.rule(Text(heads["examples"]))
    if ex["flipped"]:
        cols = ["source_id", "prompt", "chosen", "rejected", "p_hat", "reason"]
        console.print(table(f"flipped pairs ({_flip_count(ex)})", cols,
                            short(ex["flipped"], cols, 80)))
    if ex["dropped"]:
        cols = ["stage", "reason", "source_id", "detail", "chosen", "rejected", "text"]
        console.print(table(f"dropped rows ({ex['dropped_total']})", cols,
                            short(ex["dropped"], cols, 60)))
    if ex["quarantined"]:
        cols = ["stage", "reason", "file", "row", "detail", "raw"]
        console.print(table(f"quarantined rows ({ex['quarantined_total']})", cols,
                            short(ex["quarantined"], cols, 60)))
    if not (ex["flipped"] or ex["dropped"] or ex["quarantined"]):
        console.print(Text("no flipped, dropped or quarantined rows"))
