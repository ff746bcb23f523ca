"""The report as one self-contained HTML page (inline CSS and PNGs, no script)."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from typing import Any

from pipeline.report.common import SECTIONS, flip_count
from pipeline.report.length import SHIFT_COLUMNS, shift_rows
from pipeline.report.plots import PLOTS, to_png

log = logging.getLogger(f"prefcurate.{__name__}")

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


def fmt(v: Any) -> str:
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


def _html_table(columns: list[str], rows: list[list[Any]], text_cols: Iterable[str] = ()) -> str:
    tc = set(text_cols)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c, v in zip(columns, row):
            cls = (
                "text"
                if c in tc
                else "num"
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                else ""
            )
            cells.append(
                f'<td class="{cls}">{_e(fmt(v))}</td>' if cls else f"<td>{_e(fmt(v))}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _stats_table(named: dict[str, dict[str, Any]]) -> str:
    keys = ["n", "nulls", "mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max"]
    return _html_table(
        ["column", *keys], [[n, *[s.get(k) for k in keys]] for n, s in named.items()]
    )


def _kv_table(d: dict[str, Any]) -> str:
    return _html_table(["key", "value"], [[k, v] for k, v in d.items()])


def _note(text: str | None) -> str:
    return f'<p class="note">{_e(text)}</p>' if text else ""


def section_html(key: str, rep: dict[str, Any]) -> str:
    s = rep[key]
    p: list[str] = []
    if key == "overview":
        p.append(
            _kv_table(
                {
                    "dataset": rep["title"],
                    "path": s["path"],
                    "created_at": s["created_at"],
                    "parent_version": s["parent_version"],
                    "code_version": s["code_version"],
                    "config_hash": s["config_hash"],
                    "input": f"{s['input']['kind']}: {s['input']['path']}",
                    "models": ", ".join(s["models"]) or "none",
                    "rows": s["rows"],
                    "report generated": rep["generated_at"],
                    "stage outputs found": ", ".join(rep["lineage"]["stages_found"]) or "none",
                }
            )
        )
        if s["calls"]:
            p.append(f"<h3>{_e(s['calls']['title'])}</h3>")
            p.append(_html_table(s["calls"]["columns"], s["calls"]["rows"]))
    elif key == "stages":
        p.append(
            _html_table(
                [
                    "stage",
                    "in",
                    "kept",
                    "out",
                    "dropped by reason",
                    "quarantined by reason",
                    "reused",
                ],
                [
                    [
                        r["stage"],
                        r["in"],
                        r["kept"],
                        r["out"],
                        r["dropped"],
                        r["quarantined"],
                        r["reused"],
                    ]
                    for r in s["rows"]
                ],
            )
        )
        if s["drop_reasons"]:
            p.append("<h3>All drop reasons</h3>" + _kv_table(s["drop_reasons"]))
        if s["quarantine_reasons"]:
            p.append("<h3>All quarantine reasons</h3>" + _kv_table(s["quarantine_reasons"]))
    elif key == "scores":
        p.append(
            _stats_table(
                {
                    "score_chosen": s["score_chosen"],
                    "score_rejected": s["score_rejected"],
                    "score_chosen − score_rejected": s["gap"],
                }
            )
        )
        p.append(
            f"<p>share of pairs whose chosen response scored higher: "
            f"<b>{_e(fmt(s['chosen_higher_share']))}</b></p>"
        )
        if s["by_annotator"]:
            cols = list(s["by_annotator"][0])
            p.append(
                "<h3>Pointwise scores per annotator and aspect (all candidates)</h3>"
                + _html_table(cols, [[r[c] for c in cols] for r in s["by_annotator"]])
            )
        p.append(_note(s["note"]))
    elif key == "judges":
        a = s["agreement"]
        if a:
            k = len(a["annotators"])
            p.append(
                "<h3>Annotators</h3>"
                + _html_table(
                    ["#", "annotator", "votes"],
                    [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])],
                )
            )
            p.append(
                "<h3>Agreement matrix (share of common comparisons with the same "
                "verdict)</h3>"
                + _html_table(
                    ["#", *[str(j + 1) for j in range(k)]],
                    [[i + 1, *a["agreement"][i]] for i in range(k)],
                )
            )
            p.append(
                "<h3>Cohen's κ</h3>"
                + _html_table(
                    ["#", *[str(j + 1) for j in range(k)]],
                    [[i + 1, *a["kappa"][i]] for i in range(k)],
                )
            )
            p.append(
                "<h3>Comparisons judged by both</h3>"
                + _html_table(
                    ["#", *[str(j + 1) for j in range(k)]], [[i + 1, *a["n"][i]] for i in range(k)]
                )
            )
        for t in s["tables"]:
            p.append(f"<h3>{_e(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        p.append(_note(s["note"]))
    elif key == "hygiene":
        if s["dedup"] is not None:
            d = s["dedup"]
            p.append(
                _kv_table(
                    {
                        "prompts checked": d["prompts"],
                        "exact duplicates (after normalisation)": d["duplicate_prompt"],
                        f"near duplicates (word {d['ngram']}-gram Jaccard ≥ {d['threshold']})": d[
                            "near_duplicate"
                        ],
                    }
                )
            )
            if d["examples"]:
                p.append(
                    _html_table(list(d["examples"][0]), [list(r.values()) for r in d["examples"]])
                )
        if s["decontaminate"] is not None:
            c = s["decontaminate"]
            p.append(
                _kv_table(
                    {
                        "benchmarks (items)": c["benchmarks"] or "none",
                        "contaminated prompts": c["contaminated"] or 0,
                        "left out (never the input against itself)": ", ".join(c["skipped"])
                        or "none",
                        "not installed": ", ".join(c["unavailable"]) or "none",
                    }
                )
            )
            if c["examples"]:
                p.append(
                    _html_table(list(c["examples"][0]), [list(r.values()) for r in c["examples"]])
                )
        p.append(_note(s["note"]))
    elif key == "length_bias":
        p.append(
            f'<p>win rate of the longer response: <span class="big">'
            f"{_e(fmt(s['longer_wins']))}</span> (0.5 = no length bias)</p>"
        )
        p.append(
            _kv_table(
                {
                    k: s[k]
                    for k in (
                        "pairs",
                        "equal_length",
                        "chosen_longer",
                        "rejected_longer",
                        "mean_chosen_chars",
                        "mean_rejected_chars",
                    )
                }
            )
        )
        if shift_rows(s):
            p.append("<h3>Chosen − rejected length</h3>")
            p.append(_html_table(list(SHIFT_COLUMNS), shift_rows(s)))
        if s.get("annotators"):
            p.append("<h3>Length effect per annotator</h3>")
            p.append(
                "<p>Logistic regression of each annotator's verdicts on the pair's "
                "posterior and tanh(length difference / sd) (LC-AlpacaEval's GLM): the "
                "length coefficient, and the longer-win rate with it set to 0.</p>"
            )
            cols = [
                "annotator",
                "votes",
                "longer_win_rate",
                "lc_longer_win_rate",
                "length_coef",
                "length_coef_se",
                "note",
            ]
            p.append(
                _html_table(
                    cols,
                    [[r.get(c) for c in cols] for r in s["annotators"]],
                    text_cols=["annotator", "note"],
                )
            )
            if s.get("annotators_left_out"):
                p.append(
                    _note(
                        f"{s['annotators_left_out']} annotators with fewer votes "
                        f"left out of the table"
                    )
                )
        if s.get("control"):
            c = s["control"]
            p.append(
                _kv_table(
                    {
                        "length control": c["mode"],
                        "pairs by length side": c["comparisons"],
                        "annotators given one confusion per side": ", ".join(c["split"]) or "none",
                    }
                )
            )
        if s.get("balance"):
            b = s["balance"]
            p.append(
                _kv_table(
                    {
                        "length balance band": b["band"],
                        "chosen longer before": b["chosen_longer_before"],
                        "chosen longer after": b["chosen_longer_after"],
                        "dropped (length_balance)": b["dropped"],
                    }
                )
            )
        p.append(_note(s["note"]))
    elif key == "distributions":
        p.append(_stats_table({c: v["stats"] for c, v in s.items()}))
    elif key == "similarity":
        if s["source"]:
            p.append(f"<p>from {_e(s['source'])}</p>" + _stats_table({"similarity": s["stats"]}))
        p.append(
            "<h3>Flags on published pairs</h3>"
            + (_kv_table(s["flags"]) if s["flags"] else "<p>no flags</p>")
        )
        p.append(f"<p>share flagged indistinguishable: {_e(fmt(s['indistinguishable_share']))}</p>")
        if s.get("injection") is not None:
            i = s["injection"]
            p.append(
                f"<p>text aimed at the judge (flag <code>injection_suspect</code>): "
                f"{_e(i['candidates'])} responses, {_e(i['pairs'])} pairs, "
                f"{_e(i['published'])} of them published</p>"
            )
        p.append(_note(s["note"]))
    elif key == "noise":
        p.append(
            f'<p>estimated noise rate: <span class="big">{_e(fmt(s["noise_rate"]))}</span></p>'
        )
        p.append(
            _kv_table(
                {
                    "pairs into denoise": s["denoise_in"],
                    "dropped by denoise": s["dropped"],
                    "flipped by denoise": s["flipped"],
                    "expected label error of published pairs": s["expected_label_error_kept"],
                    "noise rate from annotator reliability (weights)": s["weights_noise_rate"],
                    "agreement filter retention": s["agreement_filter_retention"],
                    "label_status (published)": s["label_status"],
                    "decision (published)": s["decisions"],
                    "cyclic prompts (GPM / panel)": s.get("cyclic"),
                    "budgeted selection (quality, coverage before → after)": s.get("selection"),
                }
            )
        )
        for t in s["details"]:
            p.append(f"<h3>{_e(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        p.append(_note(s["note"]))
    elif key == "examples":
        p.append(f"<h3>Flipped pairs ({flip_count(s)})</h3>")
        if s["flipped"]:
            cols = [
                "source_id",
                "prompt",
                "chosen",
                "rejected",
                "p_hat",
                "margin",
                "label_status",
                "reason",
            ]
            p.append(
                _html_table(
                    cols,
                    [[r[c] for c in cols] for r in s["flipped"]],
                    ("prompt", "chosen", "rejected", "reason"),
                )
            )
        else:
            p.append("<p>none</p>")
        p.append(
            f"<h3>Dropped rows ({s['dropped_total']} in total; a few per stage and reason)</h3>"
        )
        if s["dropped"]:
            cols = [
                "stage",
                "reason",
                "source_id",
                "row_id",
                "detail",
                "prompt",
                "chosen",
                "rejected",
                "text",
            ]
            p.append(
                _html_table(
                    cols,
                    [[r[c] for c in cols] for r in s["dropped"]],
                    ("detail", "prompt", "chosen", "rejected", "text"),
                )
            )
            if not s["texts_from_lineage"]:
                p.append(
                    _note(
                        "texts of dropped rows need the run's stage outputs, which were not found"
                    )
                )
        else:
            p.append("<p>none</p>")
        p.append(f"<h3>Quarantined rows ({s['quarantined_total']} in total)</h3>")
        if s["quarantined"]:
            cols = ["stage", "reason", "file", "row", "source_id", "detail", "raw"]
            p.append(
                _html_table(
                    cols, [[r[c] for c in cols] for r in s["quarantined"]], ("detail", "raw")
                )
            )
        else:
            p.append("<p>none</p>")
    elif key == "review":
        if s["summary"] is not None:
            p.append(_kv_table(s["summary"]))
        for t in s["tables"]:
            p.append(f"<h3>{_e(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        p.append(_note(s["note"]))
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
            png = to_png(fig)
            figs.append(
                f'<figure id="fig-{pid}"><img class="plot" id="{pid}" '
                f'alt="{_e(caption)}" src="data:image/png;base64,{png}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        body.append(
            f'<section id="{key}"><h2>{_e(heading)}</h2>\n'
            f"{section_html(key, report)}\n{''.join(figs)}</section>"
        )
    ov = report.get("overview", {})
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(ov.get('path') or '')} · generated "
        f"{_e(report.get('generated_at'))}</p></header><nav>{nav}</nav><main>"
        + "\n".join(body)
        + "</main></body></html>\n"
    )
