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

The pieces: :mod:`pipeline.report.common` (constants, numerics, lineage),
:mod:`~pipeline.report.sections`, :mod:`~pipeline.report.length`,
:mod:`~pipeline.report.examples`, :mod:`~pipeline.report.judges` and
:mod:`~pipeline.report.review` (the sections as data),
:mod:`~pipeline.report.plots`, :mod:`~pipeline.report.html` and
:mod:`~pipeline.report.terminal` (the renderers); this module assembles and writes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.report.common import REPORT_VERSION, REPORTS_DIR, SECTIONS, Lineage, default_run_root
from pipeline.report.examples import section_examples
from pipeline.report.html import render_html
from pipeline.report.judges import section_judges
from pipeline.report.length import section_length
from pipeline.report.review import section_review
from pipeline.report.sections import (
    section_distributions,
    section_hygiene,
    section_noise,
    section_overview,
    section_scores,
    section_similarity,
    section_stages,
)
from pipeline.report.terminal import render_terminal

__all__ = [
    "SECTIONS",
    "build_report",
    "default_report_path",
    "render_html",
    "render_terminal",
    "report_from_tables",
    "stored_report",
    "write_report",
]

log = logging.getLogger(f"prefcurate.{__name__}")

# ---------------------------------------------------------------------------- public API


def report_from_tables(
    manifest: dict[str, Any],
    data: pa.Table,
    dropped: pa.Table,
    quarantine: pa.Table,
    *,
    version_path: str | Path | None = None,
    run_root: str | Path | None = None,
    max_examples: int = 5,
) -> dict[str, Any]:
    """The report dict from a manifest and the three tables (usable before publishing).

    ``run_root`` (``<data_root>/runs/<name>``) is where the run's stage outputs are looked
    up for candidate texts, votes and pointwise scores; None: no lineage (those parts of the
    report say so). Column sets may be wider or narrower than PUBLISHED: missing optional
    columns only blank their statistic.
    """
    lin = Lineage(manifest, Path(run_root) if run_root is not None else None)
    vp = Path(version_path) if version_path is not None else None
    rep = {
        "report_version": REPORT_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": f"{manifest.get('name') or 'dataset'}"
        f"{'@v' + str(manifest['version']) if manifest.get('version') else ''}",
        "lineage": {
            "run_root": str(run_root) if run_root is not None else None,
            "stages_found": sorted(lin.dirs),
        },
        "overview": section_overview(manifest, vp),
        "stages": section_stages(manifest),
        "hygiene": section_hygiene(manifest),
        "scores": section_scores(data, lin),
        "judges": section_judges(manifest, lin),
        "length_bias": section_length(data, manifest, lin),
        "distributions": section_distributions(data),
        "similarity": section_similarity(data, lin, manifest),
        "noise": section_noise(manifest, data),
        "examples": section_examples(data, dropped, quarantine, lin, max_examples),
        "review": section_review(manifest, lin, data, vp),
    }
    # one count of flips: the published flipped pairs, and how many denoise flipped (a
    # flipped pair can still be left out by pair building or selection)
    rep["examples"]["flipped_by_denoise"] = rep["noise"].get("flipped")
    return rep


def build_report(
    version_path: str | Path,
    *,
    run_root: str | Path | None = None,
    lineage: bool = True,
    max_examples: int = 5,
) -> dict[str, Any]:
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
    tables = [
        read_version_table(vp, f) for f in (DATA_PARQUET, DROPPED_PARQUET, QUARANTINE_PARQUET)
    ]
    if lineage and run_root is None:
        run_root = default_run_root(vp, manifest)
    return report_from_tables(
        manifest,
        *tables,
        version_path=vp,
        run_root=run_root if lineage else None,
        max_examples=max_examples,
    )


def default_report_path(version_path: str | Path) -> Path:
    """``<root>/datasets/<name>/reports/v<N>.html`` for ``<root>/datasets/<name>/v<N>``."""
    vp = Path(version_path)
    return vp.parent / REPORTS_DIR / f"{vp.name}.html"


def write_report(
    version_path: str | Path,
    out_path: str | Path | None = None,
    *,
    report: dict[str, Any] | None = None,
) -> Path:
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


def stored_report(
    data_root: str | Path, name: str, data: pa.Table, dropped: pa.Table, quarantine: pa.Table
) -> Any:
    """The report a publish stores beside the data: a function of (manifest, version
    path), since only the publish knows them. A report that fails to render becomes a
    page saying so: a report must never cost the user their dataset."""

    def html(manifest: dict[str, Any], path: Path) -> str:
        try:
            run_root = Path(data_root) / "runs" / name
            report = report_from_tables(
                manifest, data, dropped, quarantine, version_path=path, run_root=run_root
            )
            return render_html(report)
        except Exception as exc:
            log.warning("quality report not rendered: %s: %s", type(exc).__name__, exc)
            return (
                f"<!doctype html><p>quality report not rendered: "
                f"{type(exc).__name__}; run prefcurate report {name}</p>"
            )

    return html
