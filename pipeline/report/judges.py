"""The report's judge section: agreement matrix, judge statistics, qualification."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pipeline.annotate.judge_stats import kappa_from_counts
from pipeline.report.common import MAX_ANNOTATORS, Lineage, num, tabulate

log = logging.getLogger(f"prefcurate.{__name__}")


def _agreement(votes: list[pa.Table]) -> dict[str, Any] | None:
    """Pairwise agreement and Cohen's κ between annotators on the comparisons both judged
    (an annotator's first verdict on a comparison counts); one column pass per pair of
    annotators over a comparison × annotator matrix of verdict codes."""
    import numpy as np
    import polars as pl

    cols = ["annotator", "source_id", "candidate_a", "candidate_b", "verdict"]
    frames = [
        pl.from_arrow(t.select(cols)).cast(pl.String)
        for t in votes
        if all(c in t.column_names for c in cols) and t.num_rows
    ]
    if not frames:
        return None
    df = (
        pl.concat(frames)
        .filter(pl.col("verdict").is_not_null())
        .unique(cols[:4], keep="first", maintain_order=True)
    )
    counts = df.group_by("annotator").len()
    anns = counts.sort(["len", "annotator"], descending=[True, False])["annotator"].to_list()
    anns = anns[:MAX_ANNOTATORS]
    per_ann = dict(zip(counts["annotator"].to_list(), counts["len"].to_list()))
    if len(anns) < 2:
        return None
    df = df.filter(pl.col("annotator").is_in(anns)).with_columns(
        key=pl.struct(cols[1:4]).rank("dense") - 1,
        ann=pl.col("annotator").replace_strict(anns, list(range(len(anns)))),
        code=pl.col("verdict").rank("dense").cast(pl.Int64),  # 1.. (0 = no verdict)
    )
    k, n_keys = len(anns), int(df["key"].max()) + 1
    n_codes = int(df["code"].max()) + 1
    m = np.zeros((k, n_keys), dtype=np.int64)
    m[df["ann"].to_numpy(), df["key"].to_numpy()] = df["code"].to_numpy()
    agree = [[None] * k for _ in range(k)]
    kappa = [[None] * k for _ in range(k)]
    n = [[0] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            both = (m[i] > 0) & (m[j] > 0)
            x, y = m[i][both], m[j][both]
            n[i][j] = int(both.sum())
            if n[i][j]:
                agreed = int((x == y).sum())
                agree[i][j] = num(agreed / n[i][j])
                products = np.bincount(x, minlength=n_codes) * np.bincount(y, minlength=n_codes)
                kappa[i][j] = num(kappa_from_counts(n[i][j], agreed, products.tolist()))
    return {
        "annotators": anns,
        "agreement": agree,
        "kappa": kappa,
        "n": n,
        "votes": {a: per_ann[a] for a in anns},
    }


# stage_info keys shown in the judge section (any stage), besides keys starting "judge"
_JUDGE_KEYS = {
    "judge_stats",
    "position_consistency",
    "agreement",
    "kappa",
    "cohen_kappa",
    "alpha",
    "krippendorff_alpha",
    "length_bias",
    "position_bias",
}


_JUDGE_COLUMNS = ["judge", "pairs in both orders", "position consistency"]
_JUDGE_COLUMNS += ["first position wins", "κ ab vs ba", "mean κ vs others"]
_JUDGE_KEYS = ["position_consistency", "first_position_win_rate", "kappa_ab_ba"]
_JUDGE_KEYS += ["mean_kappa_vs_other_judges"]
_ANNOTATOR_COLUMNS = ["annotator", "votes", "a / b / tie", "tie rate", "parse failures"]
_ANNOTATOR_COLUMNS += ["longer wins", "agrees with majority"]
_ANNOTATOR_KEYS = ["tie_rate", "parse_failure_rate", "longer_win_rate", "majority_agreement"]


def _r(v: Any) -> Any:
    return round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _judge_stats_tables(stage: str, js: dict[str, Any]) -> list[dict[str, Any]]:
    """The judge stage's statistics as two tables a person reads (the raw numbers stay
    in the manifest): per judge, and per annotator (judge × order)."""
    out = []
    judges = js.get("judges") or {}
    if isinstance(judges, dict) and judges:
        title = (
            f"{stage}: judges (Krippendorff's α over all annotators "
            f"{_r(js.get('krippendorff_alpha'))}, {js.get('n_pairs')} pairs)"
        )
        rows = [
            [n, d.get("position_pairs"), *(_r(d.get(k)) for k in _JUDGE_KEYS)]
            for n, d in judges.items()
            if isinstance(d, dict)
        ]
        out.append({"title": title, "columns": list(_JUDGE_COLUMNS), "rows": rows})
    anns = js.get("annotators") or {}
    if isinstance(anns, dict) and anns:
        rows = []
        for n, d in anns.items():
            if not isinstance(d, dict):
                continue
            v = d.get("verdicts") or {}
            split = f"{v.get('a', 0)} / {v.get('b', 0)} / {v.get('tie', 0)}"
            rows.append([n, d.get("votes"), split, *(_r(d.get(k)) for k in _ANNOTATOR_KEYS)])
        title = f"{stage}: annotators (judge × order)"
        out.append({"title": title, "columns": list(_ANNOTATOR_COLUMNS), "rows": rows})
    return out


def qualification_table(stage: str, q: dict[str, Any]) -> dict[str, Any] | None:
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
        rows.append(
            [
                name,
                r.get("pairs"),
                pct(r.get("accuracy")),
                ci_s,
                pct(r.get("soft_accuracy")),
                pct(r.get("position_flip_rate")),
                pct(r.get("tie_rate")),
                pct(r.get("panel_agreement")),
            ]
        )
    src = ", ".join(str(x) for x in q.get("gold_sources") or []) or "gold"
    return {
        "title": f"{stage}: judge qualification on {q.get('gold_pairs')} pairs decided "
        f"by {src} (%)",
        "columns": [
            "judge",
            "gold pairs",
            "accuracy",
            "95% CI",
            "accuracy from logits",
            "position flips",
            "ties",
            "agrees with panel",
        ],
        "rows": rows,
    }


def section_judges(manifest: dict[str, Any], lin: Lineage) -> dict[str, Any]:
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
                t = qualification_table(stage, val)
                if t:
                    tables.insert(0, t)
                warnings += [str(w) for w in val.get("warnings") or []]
                continue
            if key in _JUDGE_KEYS or key.startswith("judge"):
                t = tabulate(f"{stage}: {key}", val)
                if t:
                    tables.append(t)
        if stage == "aggregate" and isinstance(d.get("annotators"), dict):
            t = tabulate("aggregate: votes per annotator", d["annotators"])
            if t:
                tables.append(t)
    if isinstance(manifest.get("judge_stats"), dict):
        t = tabulate("judge_stats", manifest["judge_stats"])
        if t:
            tables.append(t)
    pcs = None
    if pc:
        pcs = {
            k: num(v.get("consistency"))
            if isinstance(v, dict)
            else num(v)
            if isinstance(v, (int, float))
            else None
            for k, v in pc.items()
        }
    agreement = _agreement(
        lin.tables("votes", ["annotator", "source_id", "candidate_a", "candidate_b", "verdict"])
    )
    notes = [f"warning: {w}" for w in warnings]
    if not pc:
        notes.append("no position consistency in the manifest (no pairwise judge ran both orders)")
    if agreement is None:
        notes.append(
            "no agreement matrix: fewer than two annotators with votes, or the run's "
            "stage outputs are no longer on disk"
        )
    return {
        "position_consistency": pcs,
        "tables": tables,
        "agreement": agreement,
        "note": "; ".join(notes) or None,
    }
