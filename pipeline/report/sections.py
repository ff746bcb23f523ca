"""The report's sections as data (one function per entry of ``SECTIONS``)."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import conversation
from pipeline.report.common import (
    MAX_POINTS,
    Lineage,
    column_values,
    finite,
    histogram,
    length_bias,
    num,
    summarize,
    tabulate,
    truncate,
)

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


SHIFT_COLUMNS = ("pairs", "count", "chosen longer", "median chosen − rejected (chars)")


def shift_rows(section: dict[str, Any]) -> list[list[Any]]:
    """The Length section's before / after table (:data:`SHIFT_COLUMNS`), for both
    renderers."""
    return [
        [name, d["pairs"], d["chosen_longer_share"], d["median_diff_chars"]]
        for name, d in (
            ("before curation", section.get("before")),
            ("published", section.get("after")),
        )
        if d
    ]


def section_length(
    data: pa.Table, manifest: dict[str, Any] | None = None, lin: Lineage | None = None
) -> dict[str, Any]:
    """Length bias: the published pairs' lengths, each annotator's length GLM (from the
    aggregate stage's info), what length control and balancing did, and the chosen −
    rejected length distribution before curation (the margins stage's pairs, in the
    label's orientation) and after (the published pairs)."""
    from pipeline.aggregate import length

    def response(m: Any) -> str:  # the assistant side of a published response
        return conversation.contents(m, ("assistant",)) or conversation.contents(m)

    ch = [response(m) for m in column_values(data, "chosen")]
    rj = [response(m) for m in column_values(data, "rejected")]
    out = length_bias(zip(ch, rj))
    pts = [(len(c), len(r)) for c, r in zip(ch, rj)]
    step = max(1, math.ceil(len(pts) / MAX_POINTS))
    out["points"] = [list(p) for p in pts[::step]]
    info = (manifest or {}).get("stage_info") or {}
    agg = next(
        (info[k] for k in ("aggregate_gpm", "aggregate") if isinstance(info.get(k), dict)), {}
    )
    eff = agg.get("length_effects") or {}
    out["annotators"] = [
        {"annotator": a, **row} for a, row in (eff.get("annotators") or {}).items()
    ]
    out["annotators_left_out"] = eff.get("annotators_left_out", 0)
    ctl = agg.get("length_control")
    out["control"] = (
        None
        if ctl is None
        else {
            "mode": ctl.get("mode"),
            "min_diff": ctl.get("min_diff"),
            "comparisons": ctl.get("comparisons"),
            "split": ctl.get("split") or {},
        }
    )
    out["balance"] = (
        (info.get("pairs") or {}).get("length_balance")
        if isinstance(info.get("pairs"), dict)
        else None
    )
    out["after"] = length.length_shift(
        np.array([c for c, _ in pts], dtype=float), np.array([r for _, r in pts], dtype=float)
    )
    out["before"] = None
    if lin is not None:
        mp = lin.table("margins", "pairs", ["chosen_id", "rejected_id"])
        cands = next(
            (
                t
                for st in ("generate", "ingest")
                if (t := lin.table(st, "candidates", ["candidate_id", "text"])) is not None
            ),
            None,
        )
        if mp is not None and cands is not None:
            lens = length.candidate_lengths(cands)
            out["before"] = length.length_shift(
                length.lookup(pl.Series(mp.column("chosen_id").to_pylist()), lens),
                length.lookup(pl.Series(mp.column("rejected_id").to_pylist()), lens),
            )
    notes = []
    if not pts:
        notes.append("no published pairs")
    if not out["annotators"]:
        notes.append(
            "no per-annotator length table (aggregate.length_control off, or "
            "no decisive vote on pairs of unequal length)"
        )
    if out["before"] is None:
        notes.append(
            "no before-curation distribution: the run's margins and candidates "
            "outputs are no longer on disk"
        )
    out["note"] = "; ".join(notes) or None
    return out


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
    decisions = Counter(column_values(data, "decision"))
    flipped_col = column_values(data, "flipped")
    n_flip_data = sum(bool(x) for x in flipped_col) if flipped_col else decisions.get("flip", 0)
    info = (manifest.get("stage_info") or {}).get("denoise") or {}
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
    out["selection"] = {
        k: sel[k]
        for k in (
            "quality_before",
            "quality_after",
            "coverage_before",
            "coverage_after",
            "prompts_before",
            "prompts_after",
        )
        if k in sel
    } or None
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


def section_examples(
    data: pa.Table, dropped: pa.Table, quarantine: pa.Table, lin: Lineage, max_examples: int
) -> dict[str, Any]:
    mask = np.zeros(data.num_rows, dtype=bool)
    if "decision" in data.column_names:
        mask |= np.array([d == "flip" for d in column_values(data, "decision")], dtype=bool)
    if "flipped" in data.column_names:
        mask |= np.array([bool(f) for f in column_values(data, "flipped")], dtype=bool)
    n_flip = int(mask.sum())
    idx = np.flatnonzero(mask)[:max_examples]
    flip = data.take(pa.array(idx, type=pa.int64())).to_pylist() if idx.size else []
    flipped = [
        {
            "source_id": r.get("source_id"),
            "pair_id": r.get("pair_id"),
            "prompt": truncate(conversation.render(r.get("prompt"))),
            "chosen": truncate(conversation.contents(r.get("chosen"))),
            "rejected": truncate(conversation.contents(r.get("rejected"))),
            "p_hat": num(r.get("p_hat")),
            "margin": num(r.get("margin")),
            "label_status": r.get("label_status"),
            "reason": "the votes contradict the input's label: chosen and rejected exchanged",
        }
        for r in flip
    ]

    # texts from the lineage, to show what a dropped pair / candidate was
    cand_text: dict[str, str] = {}
    cand_prompt: dict[str, str] = {}
    for t in lin.tables("candidates", ["candidate_id", "prompt_id", "text"]):
        cand_text.update(zip(column_values(t, "candidate_id"), column_values(t, "text")))
        cand_prompt.update(zip(column_values(t, "candidate_id"), column_values(t, "prompt_id")))
    prompt_text: dict[str, str] = {}
    for t in lin.tables("prompts", ["prompt_id", "prompt"]):
        prompt_text.update(
            zip(column_values(t, "prompt_id"), map(conversation.render, column_values(t, "prompt")))
        )
    pair_ids: dict[str, tuple[str, str, str]] = {}
    for t in lin.tables("pairs", ["pair_id", "prompt_id", "chosen_id", "rejected_id"]):
        for pid, prid, c, r in zip(
            column_values(t, "pair_id"),
            column_values(t, "prompt_id"),
            column_values(t, "chosen_id"),
            column_values(t, "rejected_id"),
        ):
            pair_ids.setdefault(pid, (prid, c, r))

    def by_reason(table: pa.Table) -> list[dict[str, Any]]:
        seen: Counter = Counter()
        idx = []
        for i, k in enumerate(zip(column_values(table, "stage"), column_values(table, "reason"))):
            if seen[k] < max_examples:
                seen[k] += 1
                idx.append(i)
        return table.take(idx).to_pylist() if idx else []

    drops = []
    for r in by_reason(dropped):
        e = {
            "stage": r.get("stage"),
            "reason": r.get("reason"),
            "source_id": r.get("source_id"),
            "row_id": r.get("row_id"),
            "detail": truncate(r.get("detail")),
            "prompt": None,
            "chosen": None,
            "rejected": None,
            "text": None,
        }
        rid = r.get("row_id")
        if rid in pair_ids:
            prid, c, rj = pair_ids[rid]
            e.update(
                prompt=truncate(prompt_text.get(prid)),
                chosen=truncate(cand_text.get(c)),
                rejected=truncate(cand_text.get(rj)),
            )
        elif rid in cand_text:
            e.update(
                text=truncate(cand_text[rid]),
                prompt=truncate(prompt_text.get(cand_prompt.get(rid))),
            )
        drops.append(e)
    quars = [
        {
            "stage": r.get("stage"),
            "reason": r.get("reason"),
            "file": r.get("file"),
            "row": r.get("row"),
            "source_id": r.get("source_id"),
            "detail": truncate(r.get("detail")),
            "raw": truncate(r.get("raw")),
        }
        for r in by_reason(quarantine)
    ]
    return {
        "flipped": flipped,
        "flipped_total": n_flip,
        "dropped": drops,
        "dropped_total": dropped.num_rows,
        "quarantined": quars,
        "quarantined_total": quarantine.num_rows,
        "texts_from_lineage": bool(cand_text),
    }
