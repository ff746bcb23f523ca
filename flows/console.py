"""The command line's terminal output: the stderr and stdout consoles, the one-line error
and exit, the run's progress display (:class:`flows.runtime.Progress`), and the tables of
a plan and of the rows per stage."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import PrefcurateError

err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the width
out = Console()


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


class _RichProgress:
    """The run's progress on stderr (:class:`flows.runtime.Progress`): a bar with rate and
    ETA per model and model stage, and one line per computed stage that ends with its rows
    and rows/s."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):  # a stage's rows/s when it is done, else requests/s
                rows = task.fields.get("rows")
                if rows is not None:
                    secs = max(task.finished_time or task.elapsed or 0.0, 1e-9)
                    return Text(f"{rows:,} rows, {rows / secs:,.0f} rows/s")
                return Text(f"{task.speed:.1f} req/s" if task.speed else "")

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err if console is None else console,
            transient=False,
        )

    def _start(self) -> None:
        if not self.progress.live.is_started:
            self.progress.start()

    def bar(self, label: str, total: int):
        self._start()
        task_id = self.progress.add_task(label, total=total)
        return lambda n: self.progress.advance(task_id, n)

    def stage(self, label: str):
        self._start()
        task_id = self.progress.add_task(label, total=None)

        def done(rows: int) -> None:
            n = max(int(rows), 1)
            self.progress.update(task_id, total=n, completed=n, rows=int(rows))

        return done

    def stop(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def _print_plan(cfg: Any, as_json: bool) -> None:
    """``run --plan``: the dry run of :func:`pipeline.dryrun.plan_run` (no model loads)."""
    from pipeline.dryrun import plan_run

    try:
        p = plan_run(cfg)
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(p, indent=2))
        return
    cols = ["stage", "model", "calls", "cached", "prompt_tokens_est", "max_output_tokens"]
    cols += ["max_cost"]
    t = Table(title=f"plan: {p['input']['rows']} {p['input']['kind']} from {p['input']['path']}")
    for c in cols:
        t.add_column(c)
    for row in p["stages"] + [{"stage": "total", "model": "", **p["total"]}]:
        t.add_row(*("–" if row.get(c) is None else str(row.get(c)) for c in cols))
    out.print(t)
    for name, b in p["budget"].items():
        verdict = "fits" if b["fits"] else "[bold yellow]may be reached[/] (the rest: over_budget)"
        out.print(f"{name} {b['limit']}: planned at most {b['planned']}; {verdict}")
    for note in p["notes"]:
        out.print(f"[dim]{note}[/]")


def _print_stages(stages: dict[str, Any]) -> None:
    from pipeline.stage import STAGE_COLUMNS, stage_count_rows

    t = Table(title="rows per stage")
    for col in STAGE_COLUMNS:
        t.add_column(col)
    for row in stage_count_rows(stages):
        t.add_row(*row)
    out.print(t)


def _print_summary(summary: dict[str, Any]) -> None:
    """A run's last lines: its model calls, tokens and cost, the version it published (or
    found identical), the report and the path."""
    verb = "published" if summary["created"] else "unchanged, already published as"
    tot = (summary.get("usage") or {}).get("total") or {}
    saved = tot.get("saved_prompt_tokens", 0) + tot.get("saved_output_tokens", 0)
    line = (
        f"model calls: {tot.get('made', 0)} made, {tot.get('reused', 0)} reused from cache; "
        f"tokens {tot.get('prompt_tokens', 0)} in / {tot.get('output_tokens', 0)} out, "
        f"{saved} saved"
    )
    if tot.get("cost") is not None:
        cur = summary["usage"].get("currency", "")
        line += f"; cost {tot['cost']:.4f} {cur} (saved {tot['saved_cost']:.4f})"
    if tot.get("over_budget"):
        line += f"; [bold yellow]{tot['over_budget']} calls over budget[/] (dropped over_budget)"
    out.print(f"{line}; {summary['seconds']} s")
    out.print(
        f"[bold green]{verb}[/] {summary['name']}@v{summary['version']} ({summary['rows']} pairs)"
    )
    if summary.get("report_html"):
        out.print(f"quality report: {summary['report_html']}")
    out.print(summary["path"])
