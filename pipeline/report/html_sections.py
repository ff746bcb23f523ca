"""The report's sections as HTML: one writer per entry of ``SECTIONS`` (its tables and
notes from the section's data; :func:`~pipeline.report.html.render_html` adds the
figures), and :func:`section_html`, which picks the section's writer."""

from __future__ import annotations

from typing import Any

from pipeline.report.common import flip_count, fmt
from pipeline.report.html_tables import esc, html_table, kv_table, note, stats_table, titled_table
from pipeline.report.length import SHIFT_COLUMNS, shift_rows
from pipeline.report.sections import stage_rows


def section_html(key: str, rep: dict[str, Any]) -> str:
    """The markup of section ``key`` of ``rep`` (empty for a key without a writer)."""
    s = rep[key]
    write = _WRITERS.get(key)
    p = write(s, rep) if write is not None else []
    return "\n".join(x for x in p if x)


def _overview(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(
        kv_table(
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
        p.append(f"<h3>{esc(s['calls']['title'])}</h3>")
        p.append(html_table(s["calls"]["columns"], s["calls"]["rows"]))
    return p


def _stages(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(
        html_table(
            ["stage", "in", "kept", "out", "dropped by reason", "quarantined by reason", "reused"],
            stage_rows(s),
        )
    )
    if s["drop_reasons"]:
        p.append("<h3>All drop reasons</h3>" + kv_table(s["drop_reasons"]))
    if s["quarantine_reasons"]:
        p.append("<h3>All quarantine reasons</h3>" + kv_table(s["quarantine_reasons"]))
    return p


def _scores(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(
        stats_table(
            {
                "score_chosen": s["score_chosen"],
                "score_rejected": s["score_rejected"],
                "score_chosen − score_rejected": s["gap"],
            }
        )
    )
    p.append(
        f"<p>share of pairs whose chosen response scored higher: "
        f"<b>{esc(fmt(s['chosen_higher_share']))}</b></p>"
    )
    if s["by_annotator"]:
        cols = list(s["by_annotator"][0])
        p.append(
            "<h3>Pointwise scores per annotator and aspect (all candidates)</h3>"
            + html_table(cols, [[r[c] for c in cols] for r in s["by_annotator"]])
        )
    p.append(note(s["note"]))
    return p


def _judges(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    a = s["agreement"]
    if a:
        k = len(a["annotators"])
        p.append(
            "<h3>Annotators</h3>"
            + html_table(
                ["#", "annotator", "votes"],
                [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])],
            )
        )
        p.append(
            "<h3>Agreement matrix (share of common comparisons with the same "
            "verdict)</h3>"
            + html_table(
                ["#", *[str(j + 1) for j in range(k)]],
                [[i + 1, *a["agreement"][i]] for i in range(k)],
            )
        )
        p.append(
            "<h3>Cohen's κ</h3>"
            + html_table(
                ["#", *[str(j + 1) for j in range(k)]], [[i + 1, *a["kappa"][i]] for i in range(k)]
            )
        )
        p.append(
            "<h3>Comparisons judged by both</h3>"
            + html_table(
                ["#", *[str(j + 1) for j in range(k)]], [[i + 1, *a["n"][i]] for i in range(k)]
            )
        )
    p.extend(titled_table(t) for t in s["tables"])
    p.append(note(s["note"]))
    return p


def _hygiene(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if s["dedup"] is not None:
        d = s["dedup"]
        p.append(
            kv_table(
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
            p.append(html_table(list(d["examples"][0]), [list(r.values()) for r in d["examples"]]))
    if s["decontaminate"] is not None:
        c = s["decontaminate"]
        p.append(
            kv_table(
                {
                    "benchmarks (items)": c["benchmarks"] or "none",
                    "contaminated prompts": c["contaminated"] or 0,
                    "left out (never the input against itself)": ", ".join(c["skipped"]) or "none",
                    "not installed": ", ".join(c["unavailable"]) or "none",
                }
            )
        )
        if c["examples"]:
            p.append(html_table(list(c["examples"][0]), [list(r.values()) for r in c["examples"]]))
    p.append(note(s["note"]))
    return p


def _length_bias(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(
        f'<p>win rate of the longer response: <span class="big">'
        f"{esc(fmt(s['longer_wins']))}</span> (0.5 = no length bias)</p>"
    )
    p.append(
        kv_table(
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
        p.append(html_table(list(SHIFT_COLUMNS), shift_rows(s)))
    p += _length_annotators(s)
    if s.get("control"):
        c = s["control"]
        p.append(
            kv_table(
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
            kv_table(
                {
                    "length balance band": b["band"],
                    "chosen longer before": b["chosen_longer_before"],
                    "chosen longer after": b["chosen_longer_after"],
                    "dropped (length_balance)": b["dropped"],
                }
            )
        )
    p.append(note(s["note"]))
    return p


def _length_annotators(s: dict[str, Any]) -> list[str]:
    """The Length section's per-annotator GLM table (none without annotators)."""
    p: list[str] = []
    if not s.get("annotators"):
        return p
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
        html_table(
            cols,
            [[r.get(c) for c in cols] for r in s["annotators"]],
            text_cols=["annotator", "note"],
        )
    )
    if s.get("annotators_left_out"):
        p.append(
            note(f"{s['annotators_left_out']} annotators with fewer votes left out of the table")
        )
    return p


def _distributions(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(stats_table({c: v["stats"] for c, v in s.items()}))
    return p


def _similarity(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if s["source"]:
        p.append(f"<p>from {esc(s['source'])}</p>" + stats_table({"similarity": s["stats"]}))
    p.append(
        "<h3>Flags on published pairs</h3>"
        + (kv_table(s["flags"]) if s["flags"] else "<p>no flags</p>")
    )
    p.append(f"<p>share flagged indistinguishable: {esc(fmt(s['indistinguishable_share']))}</p>")
    if s.get("injection") is not None:
        i = s["injection"]
        p.append(
            f"<p>text aimed at the judge (flag <code>injection_suspect</code>): "
            f"{esc(i['candidates'])} responses, {esc(i['pairs'])} pairs, "
            f"{esc(i['published'])} of them published</p>"
        )
    p.append(note(s["note"]))
    return p


def _noise(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    p.append(f'<p>estimated noise rate: <span class="big">{esc(fmt(s["noise_rate"]))}</span></p>')
    p.append(
        kv_table(
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
    p.extend(titled_table(t) for t in s["details"])
    p.append(note(s["note"]))
    return p


def _examples(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
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
            html_table(
                cols,
                [[r[c] for c in cols] for r in s["flipped"]],
                ("prompt", "chosen", "rejected", "reason"),
            )
        )
    else:
        p.append("<p>none</p>")
    p.append(f"<h3>Dropped rows ({s['dropped_total']} in total; a few per stage and reason)</h3>")
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
            html_table(
                cols,
                [[r[c] for c in cols] for r in s["dropped"]],
                ("detail", "prompt", "chosen", "rejected", "text"),
            )
        )
        if not s["texts_from_lineage"]:
            p.append(
                note("texts of dropped rows need the run's stage outputs, which were not found")
            )
    else:
        p.append("<p>none</p>")
    p.append(f"<h3>Quarantined rows ({s['quarantined_total']} in total)</h3>")
    if s["quarantined"]:
        cols = ["stage", "reason", "file", "row", "source_id", "detail", "raw"]
        p.append(
            html_table(cols, [[r[c] for c in cols] for r in s["quarantined"]], ("detail", "raw"))
        )
    else:
        p.append("<p>none</p>")
    return p


def _review(s: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if s["summary"] is not None:
        p.append(kv_table(s["summary"]))
    p.extend(titled_table(t) for t in s["tables"])
    p.append(note(s["note"]))
    return p


_WRITERS = {
    "overview": _overview,
    "stages": _stages,
    "scores": _scores,
    "judges": _judges,
    "hygiene": _hygiene,
    "length_bias": _length_bias,
    "distributions": _distributions,
    "similarity": _similarity,
    "noise": _noise,
    "examples": _examples,
    "review": _review,
}
