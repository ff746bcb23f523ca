"""The report as one self-contained HTML page (inline CSS and PNGs, no script): the page,
its style and its figures; each section's markup is in :mod:`~pipeline.report.html_sections`,
the tables and escaping in :mod:`~pipeline.report.html_tables`."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.report.common import SECTIONS, fmt
from pipeline.report.html_sections import section_html
from pipeline.report.html_tables import esc
from pipeline.report.plots import PLOTS, to_png

__all__ = ["esc", "fmt", "render_html", "section_html"]

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


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page of ``report``: inline CSS, inline PNG plots, no script,
    no external resource; every value from the data is HTML-escaped."""
    title = f"prefcurate quality report: {report.get('title', '')}"
    nav = " ".join(f'<a href="#{k}">{esc(h)}</a>' for k, h in SECTIONS)
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
                f'alt="{esc(caption)}" src="data:image/png;base64,{png}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
        body.append(
            f'<section id="{key}"><h2>{esc(heading)}</h2>\n'
            f"{section_html(key, report)}\n{''.join(figs)}</section>"
        )
    ov = report.get("overview", {})
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(ov.get('path') or '')} · generated "
        f"{esc(report.get('generated_at'))}</p></header><nav>{nav}</nav><main>"
        + "\n".join(body)
        + "</main></body></html>\n"
    )
