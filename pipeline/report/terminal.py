"""The report on a terminal: every section as rich tables."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.report.common import SECTIONS, flip_count, fmt, truncate
from pipeline.report.length import SHIFT_COLUMNS, shift_rows
from pipeline.report.sections import stage_rows

log = logging.getLogger(f"prefcurate.{__name__}")

# ---------------------------------------------------------------------------- terminal


def render_terminal(report: dict[str, Any], console: Any) -> None:
    """Print every section of ``report`` (a rule with its heading, then rich tables) on
    ``console``; text from the data is never interpreted as rich markup."""
    from rich.text import Text

    heads = dict(SECTIONS)
    console.print(Text(f"prefcurate quality report: {report['title']}", style="bold"))
    for key, write in _WRITERS:
        console.rule(Text(heads[key]))
        write(console, report)


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title) if title else None, title_justify="left")
    for c in columns:
        t.add_column(Text(str(c)), overflow="fold")
    for r in rows:
        t.add_row(*[Text(fmt(v)) for v in r])
    return t


def _kv(title: str | None, d: dict[str, Any]) -> Any:
    return _table(title, ["key", "value"], [[k, v] for k, v in d.items()])


def _stats(title: str | None, named: dict[str, dict[str, Any]]) -> Any:
    keys = ["n", "nulls", "mean", "std", "min", "median", "p95", "max"]
    return _table(
        title, ["column", *keys], [[n, *[s.get(k) for k in keys]] for n, s in named.items()]
    )


def _note(console: Any, text: str | None) -> None:
    from rich.text import Text

    if text:
        console.print(Text(f"note: {text}", style="yellow"))


def _short(rows: list[dict[str, Any]], cols: list[str], n: int) -> list[list[Any]]:
    return [[truncate(r[c], n) if isinstance(r[c], str) else r[c] for c in cols] for r in rows]


def _overview(console: Any, report: dict[str, Any]) -> None:
    ov = report["overview"]
    console.print(
        _kv(
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
        console.print(_table(ov["calls"]["title"], ov["calls"]["columns"], ov["calls"]["rows"]))


def _stages(console: Any, report: dict[str, Any]) -> None:
    st = report["stages"]
    console.print(
        _table(
            None, ["stage", "in", "kept", "out", "dropped", "quarantined", "reused"], stage_rows(st)
        )
    )


def _scores(console: Any, report: dict[str, Any]) -> None:
    from rich.text import Text

    sc = report["scores"]
    console.print(
        _stats(
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
            _table(
                "pointwise scores per annotator and aspect",
                cols,
                [[r[c] for c in cols] for r in sc["by_annotator"]],
            )
        )
    _note(console, sc["note"])


def _judges(console: Any, report: dict[str, Any]) -> None:
    j = report["judges"]
    if j["agreement"]:
        a = j["agreement"]
        k = len(a["annotators"])
        console.print(
            _table(
                "annotators",
                ["#", "annotator", "votes"],
                [[i + 1, n, a["votes"][n]] for i, n in enumerate(a["annotators"])],
            )
        )
        console.print(
            _table(
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
        console.print(_table(t["title"], t["columns"], t["rows"]))
    _note(console, j["note"])


def _hygiene(console: Any, report: dict[str, Any]) -> None:
    hy = report["hygiene"]
    if hy["dedup"] is not None:
        d = hy["dedup"]
        console.print(
            _kv(
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
            _kv(
                None,
                {
                    "benchmarks": c["benchmarks"] or "none",
                    "contaminated": c["contaminated"] or 0,
                    "left out": ", ".join(c["skipped"]) or "none",
                },
            )
        )
    _note(console, hy["note"])


def _length_bias(console: Any, report: dict[str, Any]) -> None:
    lb = report["length_bias"]
    console.print(
        _kv(
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
        console.print(_table("chosen − rejected length", list(SHIFT_COLUMNS), shift_rows(lb)))
    if lb.get("annotators"):
        cols = ["annotator", "votes", "longer_win_rate", "lc_longer_win_rate", "length_coef"]
        console.print(
            _table(
                "length effect per annotator (GLM)",
                cols,
                [[r.get(c) for c in cols] for r in lb["annotators"]],
            )
        )
    if lb.get("control"):
        console.print(
            _kv(
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
            _kv(
                None,
                {
                    "length balance": b["band"],
                    "chosen longer before → after": f"{fmt(b['chosen_longer_before'])} → "
                    f"{fmt(b['chosen_longer_after'])}",
                    "dropped": b["dropped"],
                },
            )
        )
    _note(console, lb["note"])


def _distributions(console: Any, report: dict[str, Any]) -> None:
    console.print(_stats(None, {c: v["stats"] for c, v in report["distributions"].items()}))


def _similarity(console: Any, report: dict[str, Any]) -> None:
    sim = report["similarity"]
    if sim["source"]:
        console.print(_stats(f"from {sim['source']}", {"similarity": sim["stats"]}))
    console.print(
        _kv("flags", {**sim["flags"], "indistinguishable share": sim["indistinguishable_share"]})
    )
    _note(console, sim["note"])


def _noise(console: Any, report: dict[str, Any]) -> None:
    n = report["noise"]
    console.print(
        _kv(
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
        console.print(_table(t["title"], t["columns"], t["rows"]))
    _note(console, n["note"])


def _examples(console: Any, report: dict[str, Any]) -> None:
    from rich.text import Text

    ex = report["examples"]
    if ex["flipped"]:
        cols = ["source_id", "prompt", "chosen", "rejected", "p_hat", "reason"]
        console.print(
            _table(f"flipped pairs ({flip_count(ex)})", cols, _short(ex["flipped"], cols, 80))
        )
    if ex["dropped"]:
        cols = ["stage", "reason", "source_id", "detail", "chosen", "rejected", "text"]
        console.print(
            _table(f"dropped rows ({ex['dropped_total']})", cols, _short(ex["dropped"], cols, 60))
        )
    if ex["quarantined"]:
        cols = ["stage", "reason", "file", "row", "detail", "raw"]
        console.print(
            _table(
                f"quarantined rows ({ex['quarantined_total']})",
                cols,
                _short(ex["quarantined"], cols, 60),
            )
        )
    if not (ex["flipped"] or ex["dropped"] or ex["quarantined"]):
        console.print(Text("no flipped, dropped or quarantined rows"))


def _review(console: Any, report: dict[str, Any]) -> None:
    rv = report.get("review") or {"summary": None, "tables": [], "note": "no review section"}
    if rv["summary"] is not None:
        console.print(_kv(None, rv["summary"]))
    for t in rv["tables"]:
        console.print(_table(t["title"], t["columns"], t["rows"]))
    _note(console, rv["note"])


# the terminal's order of the sections: the hygiene after the scores and the judges, not
# after the stages as in SECTIONS (and the HTML)
_WRITERS = [
    ("overview", _overview),
    ("stages", _stages),
    ("scores", _scores),
    ("judges", _judges),
    ("hygiene", _hygiene),
    ("length_bias", _length_bias),
    ("distributions", _distributions),
    ("similarity", _similarity),
    ("noise", _noise),
    ("examples", _examples),
    ("review", _review),
]
