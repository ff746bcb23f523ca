"""The report's sections as data (one function per entry of ``SECTIONS``): the overview
(with the model calls' usage table), rows per stage, hygiene, scores, distributions,
similarity and noise. The others have their own modules: the Length section
(:mod:`~pipeline.report.length`), the examples (:mod:`~pipeline.report.examples`), the
judges (:mod:`~pipeline.report.judges`) and the review (:mod:`~pipeline.report.review`)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.report.common import (
    Lineage,
    column_values,
    finite,
    histogram,
    num,
    summarize,
    tabulate,
)
from pipeline.selection import SUMMARY_KEYS

log = logging.getLogger(f"prefcurate.{__name__}")

# ---------------------------------------------------------------------------- sections


def section_overview(manifest: dict[str, Any], version_path: Path | None) -> dict[str, Any]:
    inp = manifest.get("input") or {}
    calls = manifest.get("calls") or {}
    return {
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "path": str(version_path) if version_path else None,
        "created_at": manifest.get("created_at"),
        "parent_version": manifest.get("parent_version"),
        "code_version": manifest.get("code_version"),
        "config_hash": manifest.get("config_hash"),
        "input": {"kind": inp.get("kind"), "path": inp.get("path")},
        "models": manifest.get("models") or [],
        "rows": manifest.get("rows") or {},
        "calls": usage_table(manifest["usage"])
        if manifest.get("usage")
        else tabulate("model calls per stage", calls),
    }


USAGE_COLUMNS = (
    "stage",
    "model",
    "made",
    "reused",
    "failed",
    "over budget",
    "tokens in",
    "tokens out",
    "tokens saved",
    "seconds",
    "out tokens/s",
    "cost",
    "saved cost",
)


def usage_table(usage: dict[str, Any]) -> dict[str, Any] | None:
    """The model calls per stage and model (``manifest.usage``): calls, tokens, seconds,
    cost; the last row sums them."""

    def row(stage: str, model: str, r: dict[str, Any]) -> list[Any]:
        return [
            stage,
            model,
            r.get("made"),
            r.get("reused"),
            r.get("failed"),
            r.get("over_budget"),
            r.get("prompt_tokens"),
            r.get("output_tokens"),
            (r.get("saved_prompt_tokens") or 0) + (r.get("saved_output_tokens") or 0),
            r.get("seconds"),
            r.get("output_tokens_per_s"),
            r.get("cost"),
            r.get("saved_cost"),
        ]

    rows = [
        row(stage, model, r)
        for stage, models in (usage.get("stages") or {}).items()
        for model, r in models.items()
    ]
    if not rows:
        return None
    rows.append(row("total", "", usage.get("total") or {}))
    title = f"model calls, tokens and cost ({usage.get('currency', '')})"
    if usage.get("unpriced") and any(r[-2] is not None for r in rows):
        title += "; no price for " + ", ".join(usage["unpriced"])
    return {"title": title, "columns": list(USAGE_COLUMNS), "rows": rows}


def section_hygiene(manifest: dict[str, Any]) -> dict[str, Any]:
    """Dedup and decontamination: what was dropped, against which benchmarks, and what
    was left out (the input's own source)."""
    info = manifest.get("stage_info") or {}
    dd, dc = info.get("dedup"), info.get("decontaminate")
    out: dict[str, Any] = {"dedup": None, "decontaminate": None}
    if dd is not None:
        out["dedup"] = {
            "prompts": dd.get("prompts"),
            "duplicate_prompt": dd.get("duplicate_prompts", 0),
            "near_duplicate": dd.get("near_duplicates", 0),
            "threshold": dd.get("threshold"),
            "ngram": dd.get("ngram"),
            "examples": dd.get("examples", [])[:10],
        }
    if dc is not None:
        out["decontaminate"] = {
            "benchmarks": dc.get("benchmarks", {}),
            "contaminated": dc.get("contaminated", {}),
            "skipped": dc.get("skipped", []),
            "unavailable": dc.get("unavailable", []),
            "ngram": dc.get("ngram"),
            "examples": dc.get("examples", [])[:10],
        }
    out["note"] = (
        None
        if dd is not None or dc is not None
        else "no dedup or decontamination stage in this version"
    )
    return out


#: The per-stage count columns both renderers show, in order (:func:`stage_rows`).
STAGE_FIELDS = ("stage", "in", "kept", "out", "dropped", "quarantined", "reused")


def stage_rows(section: dict[str, Any]) -> list[list[Any]]:
    """The Stages section's table rows (:data:`STAGE_FIELDS`), for both renderers."""
    return [[r[k] for k in STAGE_FIELDS] for r in section["rows"]]


def section_stages(manifest: dict[str, Any]) -> dict[str, Any]:
    stages = manifest.get("stages") or {}
    order = list(manifest.get("stage_order") or stages.keys())
    order += [s for s in stages if s not in order]
    rows, drops, quars = [], Counter(), Counter()
    for st in order:
        c = stages.get(st) or {}
        d, q = dict(c.get("dropped") or {}), dict(c.get("quarantined") or {})
        drops.update(d)
        quars.update(q)
        rows.append(
            {
                "stage": st,
                "in": c.get("in"),
                "kept": c.get("kept"),
                "out": c.get("out"),
                "dropped": d,
                "quarantined": q,
                "dropped_total": sum(d.values()),
                "quarantined_total": sum(q.values()),
                "reused": bool(c.get("reused")),
            }
        )
    return {
        "order": order,
        "rows": rows,
        "drop_reasons": dict(drops.most_common()),
        "quarantine_reasons": dict(quars.most_common()),
    }


def section_scores(data: pa.Table, lin: Lineage) -> dict[str, Any]:
    sc, sr = column_values(data, "score_chosen"), column_values(data, "score_rejected")
    both = finite(sc + sr)
    rng = (float(both.min()), float(both.max())) if both.size else None
    if rng and rng[0] == rng[1]:
        rng = (rng[0] - 0.5, rng[1] + 0.5)
    gaps = [c - r for c, r in zip(sc, sr) if c is not None and r is not None]
    by_ann = []
    for t in lin.tables("scores", ["annotator", "aspect", "score"]):
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for a, asp, s in zip(*(column_values(t, c) for c in ("annotator", "aspect", "score"))):
            groups[(a, asp)].append(s)
        for (a, asp), vals in sorted(groups.items()):
            s = summarize(vals)
            by_ann.append(
                {
                    "annotator": a,
                    "aspect": asp,
                    "n": s["n"],
                    "nulls": s["nulls"],
                    "mean": s["mean"],
                    "std": s["std"],
                    "min": s["min"],
                    "median": s["median"],
                    "max": s["max"],
                }
            )
    return {
        "score_chosen": summarize(sc),
        "score_rejected": summarize(sr),
        "gap": summarize(gaps),
        "chosen_higher_share": num(sum(g > 0 for g in gaps) / len(gaps)) if gaps else None,
        "hist_chosen": histogram(sc, 20, rng),
        "hist_rejected": histogram(sr, 20, rng),
        "by_annotator": by_ann,
        "note": None if data.num_rows else "no published pairs",
    }


def section_distributions(data: pa.Table) -> dict[str, Any]:
    out = {}
    for col, rng in (
        ("p_hat", (0.0, 1.0)),
        ("disagreement", (0.0, 1.0)),
        ("margin", None),
        ("weight", (0.0, 1.0)),
    ):
        vals = column_values(data, col)
        out[col] = {"stats": summarize(vals), "hist": histogram(vals, 20, rng)}
    return out


def section_similarity(data: pa.Table, lin: Lineage, manifest: dict[str, Any]) -> dict[str, Any]:
    flags = Counter(f for fl in column_values(data, "flags") for f in (fl or []))
    inj = ((manifest.get("stage_info") or {}).get("margins") or {}).get("injection_suspects")
    source, sims = None, []
    if "similarity" in data.column_names:
        sims = finite(column_values(data, "similarity")).tolist()
        source = "published pairs"
    if not sims:
        for stage in ("denoise", "margins"):
            t = lin.table(stage, "pairs")
            if t is not None:
                sims = finite(column_values(t, "similarity")).tolist()
                if sims:
                    source = f"{stage} stage pairs (before selection)"
                    break
    n = data.num_rows
    return {
        "source": source if sims else None,
        "stats": summarize(sims),
        "hist": histogram(sims, 20, (min(0.0, min(sims)), max(1.0, max(sims)))) if sims else None,
        "flags": dict(flags.most_common()),
        "indistinguishable_share": num(flags.get("indistinguishable", 0) / n) if n else None,
        # responses with text aimed at the judge (pipeline.annotate.injection)
        "injection": None
        if inj is None
        else {
            "candidates": inj.get("candidates", 0),
            "pairs": inj.get("pairs", 0),
            "published": flags.get("injection_suspect", 0),
        },
        "note": None
        if sims
        else "no chosen/rejected similarity was computed for this version "
        "(embedding similarity not enabled); flag counts only",
    }


def section_noise(manifest: dict[str, Any], data: pa.Table) -> dict[str, Any]:
    st = (manifest.get("stages") or {}).get("denoise")
    out, n_flip_data = _noise_published(manifest, data)
    if not st:
        return {
            **out,
            "denoise_in": None,
            "dropped": {},
            "flipped": None,
            "noise_rate": None,
            "weights_noise_rate": None,
            "agreement_filter_retention": None,
            "details": [],
            "note": "no denoise stage in this version",
        }
    info = (manifest.get("stage_info") or {}).get("denoise") or {}
    dropped = dict(st.get("dropped") or {})
    flipped = info.get("flipped", n_flip_data)
    weights_info = info.get("weights") if isinstance(info.get("weights"), dict) else {}
    af = info.get("agreement_filter") if isinstance(info.get("agreement_filter"), dict) else {}
    out["weights_noise_rate"] = (
        num(weights_info.get("noise_rate"))
        if isinstance(weights_info.get("noise_rate"), (int, float))
        else None
    )
    out["agreement_filter_retention"] = (
        num(af.get("retention")) if isinstance(af.get("retention"), (int, float)) else None
    )
    out["details"] = [
        t
        for t in (tabulate(f"denoise: {k}", v) for k, v in info.items() if isinstance(v, dict))
        if t
    ]
    n_in = st.get("in") or 0
    rate = (sum(dropped.values()) + (flipped or 0)) / n_in if n_in else None
    return {
        **out,
        "denoise_in": n_in,
        "dropped": dropped,
        "flipped": flipped,
        "noise_rate": num(rate),
        "note": "noise rate = (pairs denoise dropped + pairs it flipped) / pairs into "
        "denoise; expected label error = 1 − mean weight of the published pairs",
    }


def _noise_published(manifest: dict[str, Any], data: pa.Table) -> tuple[dict[str, Any], int]:
    """The noise section's parts that need no denoise stage: the published pairs' label
    statuses, decisions, flips and expected label error, the cyclic prompts and the
    budgeted selection; and the number of published flipped pairs."""
    decisions = Counter(column_values(data, "decision"))
    flipped_col = column_values(data, "flipped")
    n_flip_data = sum(bool(x) for x in flipped_col) if flipped_col else decisions.get("flip", 0)
    weights = finite(column_values(data, "weight"))
    out: dict[str, Any] = {
        "label_status": dict(Counter(column_values(data, "label_status")).most_common()),
        "decisions": dict(decisions.most_common()),
        "flipped_published": n_flip_data,
        "expected_label_error_kept": num(1.0 - weights.mean()) if weights.size else None,
    }
    sinfo = manifest.get("stage_info") or {}
    cyc = (sinfo.get("margins") or {}).get("cyclic")
    out["cyclic"] = cyc if isinstance(cyc, dict) else None  # GPM / panel intransitive prompts
    sel = sinfo.get("select") or {}
    out["selection"] = {k: sel[k] for k in SUMMARY_KEYS if k in sel} or None
    return out, n_flip_data
