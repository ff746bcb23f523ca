"""The report's HTML building blocks: escaping, tables of rows, of statistics and of
key / value pairs, and notes; every value from the data is escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from pipeline.report.common import fmt


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def html_table(columns: list[str], rows: list[list[Any]], text_cols: Iterable[str] = ()) -> str:
    tc = set(text_cols)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
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
                f'<td class="{cls}">{esc(fmt(v))}</td>' if cls else f"<td>{esc(fmt(v))}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def titled_table(t: dict[str, Any]) -> str:
    """A section's table given as data (``title``, ``columns``, ``rows``), with its
    heading."""
    return f"<h3>{esc(t['title'])}</h3>" + html_table(t["columns"], t["rows"])


def stats_table(named: dict[str, dict[str, Any]]) -> str:
    keys = ["n", "nulls", "mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max"]
    return html_table(["column", *keys], [[n, *[s.get(k) for k in keys]] for n, s in named.items()])


def kv_table(d: dict[str, Any]) -> str:
    return html_table(["key", "value"], [[k, v] for k, v in d.items()])


def note(text: str | None) -> str:
    return f'<p class="note">{esc(text)}</p>' if text else ""
