"""The report on a terminal: every section as rich tables."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.report.common import SECTIONS, flip_count, fmt, truncate
from pipeline.report.length import SHIFT_COLUMNS, shift_rows

log = logging.getLogger(f"prefcurate.{__name__}")

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
            t.add_row(*[Text(fmt(v)) for v in r])
        return t

    def kv(title: str | None, d: dict[str, Any]) -> Table:
        return table(title, ["key", "value"], [[k, v] for k, v in d.items()])

    def stats(title: str | None, named: dict[str, dict[str, Any]]) -> Table:
        keys = ["n", "nulls", "mean", "std", "min", "median", "p95", "max"]
        return table(
            title, ["column", *keys], [[n, *[s.get(k) for k in keys]] for n, s in named.items()]
        )

    def note(text: str | None) -> None:
        if text:
            console.print(Text(f"note: {text}", style="yellow"))

    def short(rows: list[dict[str, Any]], cols: list[str], n: int) -> list[list[Any]]:
        return [[truncate(r[c], n) if isinstance(r[c], str) else r[c] for c in cols] for r in rows]

    heads = dict(SECTIONS)
    console.print(Text(f"prefcurate quality report: {report['title']}", style="bold"))

    ov = report["overview"]
    console.rule(Text(heads["overview"]))
    console.print(
        kv(
            None,
            {
                "path": ov["path"],
                "created_at": ov["created_at"],
                "parent": ov["parent_version"],
                "input": f"{ov['input']['kind']}: {ov['input']['path']}",
                "models": ", ".join(ov["models"]) or "none",
                "rows": ov["rows"],
                "stage outputs found": ", ".join(report["lineage"]["stages_found"]) or "none",
            },
        )
    )
    if ov["calls"]:
        console.print(table(ov["calls"]["title"], ov["calls"]["columns"], ov["calls"]["rows"]))

    st = report["stages"]
    console.rule(Text(heads["stages"]))
    console.print(
        table(
            None,
            ["stage", "in", "kept", "out", "dropped", "quarantined", "reused"],
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
                for r in st["rows"]
            ],
        )
    )

    sc = report["scores"]
    console.rule(Text(heads["scores"]))
    console.print(
        stats(
            None,
            {
                "score_chosen": sc["score_chosen"],
                "score_rejected": sc["score_rejected"],
                "gap": sc["gap"],
            },
        )
    )
    console.print(
        Text(
            f"share of pairs whose chosen response scored higher: {fmt(sc['chosen_higher_share'])}"
        )
    )
    if sc["by_annotator"]:
        cols = list(sc["by_annotator"][0])
        console.print(
            table(
                "pointwise scores per annotator and aspect",
                cols,
                [[r[c] for c in cols] for r in sc["by_annotator"]],
            )
        )
    note(sc["note"])

    j = report["judges"]
    console.rule(Text(heads["judges"]))
    if j["agreement"]:
        a = j["agreement"]
        k = len(a["annotators"])
        console.print(
            table(
                "annotators",
                ["#", "annotator", "votes"],
                [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])],
            )
        )
        console.print(
            table(
                "agreement (Cohen's κ)",
                ["#", *[str(i + 1) for i in range(k)]],
                [
                    [
                        i + 1,
                        *[f"{fmt(x)} ({fmt(y)})" for x, y in zip(a["agreement"][i], a["kappa"][i])],
                    ]
                    for i in range(k)
                ],
            )
        )
    for t in j["tables"]:
        console.print(table(t["title"], t["columns"], t["rows"]))
    note(j["note"])

    hy = report["hygiene"]
    console.rule(Text(heads["hygiene"]))
    if hy["dedup"] is not None:
        d = hy["dedup"]
        console.print(
            kv(
                None,
                {
                    "prompts checked": d["prompts"],
                    "exact duplicates": d["duplicate_prompt"],
                    "near duplicates": d["near_duplicate"],
                },
            )
        )
    if hy["decontaminate"] is not None:
        c = hy["decontaminate"]
        console.print(
            kv(
                None,
                {
                    "benchmarks": c["benchmarks"] or "none",
                    "contaminated": c["contaminated"] or 0,
                    "left out": ", ".join(c["skipped"]) or "none",
                },
            )
        )
    note(hy["note"])

    lb = report["length_bias"]
    console.rule(Text(heads["length_bias"]))
    console.print(
        kv(
            None,
            {
                k: lb[k]
                for k in (
                    "longer_wins",
                    "pairs",
                    "equal_length",
                    "chosen_longer",
                    "rejected_longer",
                    "mean_chosen_chars",
                    "mean_rejected_chars",
                )
            },
        )
    )
    if shift_rows(lb):
        console.print(table("chosen − rejected length", list(SHIFT_COLUMNS), shift_rows(lb)))
    if lb.get("annotators"):
        cols = ["annotator", "votes", "longer_win_rate", "lc_longer_win_rate", "length_coef"]
        console.print(
            table(
                "length effect per annotator (GLM)",
                cols,
                [[r.get(c) for c in cols] for r in lb["annotators"]],
            )
        )
    if lb.get("control"):
        console.print(
            kv(
                None,
                {
                    "length control": lb["control"]["mode"],
                    "split": ", ".join(lb["control"]["split"]) or "none",
                },
            )
        )
    if lb.get("balance"):
        b = lb["balance"]
        console.print(
            kv(
                None,
                {
                    "length balance": b["band"],
                    "chosen longer before → after": f"{fmt(b['chosen_longer_before'])} → "
                    f"{fmt(b['chosen_longer_after'])}",
                    "dropped": b["dropped"],
                },
            )
        )
    note(lb["note"])

    console.rule(Text(heads["distributions"]))
    console.print(stats(None, {c: v["stats"] for c, v in report["distributions"].items()}))

    sim = report["similarity"]
    console.rule(Text(heads["similarity"]))
    if sim["source"]:
        console.print(stats(f"from {sim['source']}", {"similarity": sim["stats"]}))
    console.print(
        kv("flags", {**sim["flags"], "indistinguishable share": sim["indistinguishable_share"]})
    )
    note(sim["note"])

    n = report["noise"]
    console.rule(Text(heads["noise"]))
    console.print(
        kv(
            None,
            {
                "noise rate": n["noise_rate"],
                "into denoise": n["denoise_in"],
                "dropped": n["dropped"],
                "flipped": n["flipped"],
                "expected label error (published)": n["expected_label_error_kept"],
                "noise rate from weights": n["weights_noise_rate"],
                "agreement filter retention": n["agreement_filter_retention"],
                "label_status": n["label_status"],
                "cyclic prompts": n.get("cyclic"),
                "budgeted selection": n.get("selection"),
            },
        )
    )
    for t in n["details"]:
        console.print(table(t["title"], t["columns"], t["rows"]))
    note(n["note"])

    ex = report["examples"]
    console.rule(Text(heads["examples"]))
    if ex["flipped"]:
        cols = ["source_id", "prompt", "chosen", "rejected", "p_hat", "reason"]
        console.print(
            table(f"flipped pairs ({flip_count(ex)})", cols, short(ex["flipped"], cols, 80))
        )
    if ex["dropped"]:
        cols = ["stage", "reason", "source_id", "detail", "chosen", "rejected", "text"]
        console.print(
            table(f"dropped rows ({ex['dropped_total']})", cols, short(ex["dropped"], cols, 60))
        )
    if ex["quarantined"]:
        cols = ["stage", "reason", "file", "row", "detail", "raw"]
        console.print(
            table(
                f"quarantined rows ({ex['quarantined_total']})",
                cols,
                short(ex["quarantined"], cols, 60),
            )
        )
    if not (ex["flipped"] or ex["dropped"] or ex["quarantined"]):
        console.print(Text("no flipped, dropped or quarantined rows"))

    rv = report.get("review") or {"summary": None, "tables": [], "note": "no review section"}
    console.rule(Text(heads["review"]))
    if rv["summary"] is not None:
        console.print(kv(None, rv["summary"]))
    for t in rv["tables"]:
        console.print(table(t["title"], t["columns"], t["rows"]))
    note(rv["note"])
