"""``prefcurate`` command line: run a curation, inspect the dataset store."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from flows.cli_review import review_app
from flows.console import _fail, _print_plan, _print_stages, _print_summary, _RichProgress, err, out
from flows.preflight import _prefect_env, check_data_root, check_models
from schemas.errors import ConfigError, PrefcurateError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="prefcurate: curate preference data for DPO and reward models.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Inspect the versioned dataset store.")
app.add_typer(datasets_app, name="datasets")
judges_app = typer.Typer(no_args_is_help=True, help="Qualify the judges of a config.")
app.add_typer(judges_app, name="judges")
app.add_typer(review_app, name="review")


@app.command()
def run(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML run config (default: the embedded default)"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key: --set input.limit=2 (repeatable)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout"),
    runner: Optional[str] = typer.Option(
        None, "--runner", help="thread | dask | ray (same as --set runner.kind=...)"
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="runner workers"),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Publish even when every call of a model stage failed"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every stage"),
    plan: bool = typer.Option(
        False, "--plan", help="Print the calls, tokens and cost each stage would make; run nothing"
    ),
) -> None:
    """Run a curation (ingest → … → publish) and print where the dataset version is."""
    _prefect_env(verbose)
    set_ = (
        list(set_)
        + ([f"runner.kind={runner}"] if runner else [])
        + ([f"runner.workers={workers}"] if workers else [])
        + (["allow_partial=true"] if allow_partial else [])
    )
    _logging(verbose, stages=True)
    from schemas.config import load_config

    try:
        cfg = load_config(config, set_)
    except PrefcurateError as exc:
        _fail(exc)
    try:
        check_data_root(cfg.data_root)
        check_models(cfg)
    except PrefcurateError as exc:
        _fail(exc)
    if plan:  # after the same checks as a run: a config that cannot work fails here too
        _print_plan(cfg, as_json)
        return
    summary = _run(cfg, verbose)
    if summary.get("partial"):
        err.print(
            "[bold yellow]partial:[/] rows with failed model calls were quarantined "
            "and left out ("
            + ", ".join(f"{k}: {v}" for k, v in summary["partial"].items())
            + "); rerun to make exactly those calls again"
        )
    if as_json:
        summary.pop("report", None)
        print(json.dumps(summary, indent=2, default=str))
        return
    _print_stages(summary["stages"])
    _print_summary(summary)


def _logging(verbose: bool, stages: bool = False) -> None:
    """Logs on stderr: warnings, or everything with ``-v``; with ``stages`` the flow's
    own ``prefcurate`` logger says what each stage did (its stage modules'
    ``prefcurate.pipeline.*`` loggers stay at warnings without ``-v``)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if stages:
        logging.getLogger("prefcurate").setLevel(logging.INFO)
        logging.getLogger("prefcurate.pipeline").setLevel(
            logging.INFO if verbose else logging.WARNING
        )


def _run(cfg: Any, verbose: bool) -> dict[str, Any]:
    """Run the curation with this command's engines and progress display; a project
    error or an error of the environment is one line (``-v``: the traceback)."""
    from flows.curate import Runtime, run_curation

    prog = _RichProgress()
    runtime = Runtime(progress=prog)  # this command's engines and progress display
    t0 = time.time()
    try:
        summary = run_curation(cfg.model_dump(mode="json"), runtime)
    except PrefcurateError as exc:
        prog.stop()
        _fail(exc)
    except OSError as exc:  # the environment (disk full, read-only, a file for a folder)
        prog.stop()
        if verbose:
            raise
        _fail(
            ConfigError(
                f"{exc.filename or cfg.data_root}: {exc.strerror or exc} "
                f"(errno {exc.errno}); nothing was published (-v: the traceback)"
            )
        )
    finally:
        prog.stop()
        runtime.close()
    summary["seconds"] = round(time.time() - t0, 1)
    return summary


@judges_app.command("qualify")
def judges_qualify(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config"),
    gold: Optional[Path] = typer.Option(
        None, "--gold", help="A pairs file whose chosen responses are right"
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key"),
    as_json: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure each judge on pairs whose answer is known (verifier-decided pairs of the
    config's input, or a gold pairs file) and print the table; publishes nothing."""
    _prefect_env(verbose)
    _logging(verbose)
    from schemas.config import load_config

    try:
        cfg = load_config(config, set_)
        check_data_root(cfg.data_root)
        if gold is not None and not gold.exists():
            raise ConfigError(f"--gold {gold}: file not found")
        from flows.qualify import qualify_run

        q = qualify_run(cfg.model_dump(mode="json"), str(gold) if gold else None)
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(q, indent=2, default=str))
        return
    from pipeline.report.judges import qualification_table

    t = qualification_table("judges", q)
    if t is None:
        err.print(
            f"no judge verdict on a gold pair ({q['gold_pairs']} gold pairs): give "
            f"prompts with answer / tests / constraints, or --gold FILE"
        )
        raise typer.Exit(1)
    table = Table(title=t["title"])
    for c in t["columns"]:
        table.add_column(c)
    for r in t["rows"]:
        table.add_row(*["–" if v is None else str(v) for v in r])
    out.print(table)
    for w in q.get("warnings") or []:
        out.print(f"[yellow]warning:[/] {w}")


@datasets_app.command("list")
def datasets_list(
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List datasets and their versions."""
    from pipeline.store import datasets as store

    rows = []
    for name in store.list_datasets(root):
        versions = store.list_versions(root, name)
        rows.append(
            {"name": name, "versions": versions, "latest": versions[-1] if versions else None}
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"datasets in {root}")
    t.add_column("name")
    t.add_column("versions")
    t.add_column("latest")
    for r in rows:
        t.add_row(
            r["name"],
            ", ".join(f"v{v}" for v in r["versions"]),
            f"v{r['latest']}" if r["latest"] else "",
        )
    out.print(t)


@datasets_app.command("show")
def datasets_show(
    ref: str = typer.Argument(..., help="NAME or NAME@vN"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show one version: path, rows, per-stage counts, problems found re-hashing files."""
    from pipeline.store import datasets as store

    try:
        v = store.resolve(root, ref)
        manifest = store.read_manifest(v.path)
    except PrefcurateError as exc:
        _fail(exc)
    problems = store.verify_version(v.path)
    info = {
        "name": v.name,
        "version": v.version,
        "path": str(v.path),
        "created_at": manifest.get("created_at"),
        "rows": manifest.get("rows"),
        "parent_version": manifest.get("parent_version"),
        "config_hash": manifest.get("config_hash"),
        "models": manifest.get("models"),
        "stages": manifest.get("stages"),
        "integrity_problems": problems,
    }
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    out.print(f"[bold]{v.name}@v{v.version}[/]  {v.path}")
    out.print(
        f"created {info['created_at']}  parent v{info['parent_version']}  "
        f"rows {info['rows']}  models {info['models']}"
    )
    _print_stages({k: {**c, "reused": False} for k, c in (info["stages"] or {}).items()})
    out.print("integrity: " + ("ok" if not problems else "; ".join(problems)))


@app.command()
def report(
    ref: str = typer.Argument(..., help="NAME or NAME@vN"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    html: Optional[Path] = typer.Option(
        None, "--html", help="HTML path (default <root>/datasets/<name>/reports/v<N>.html)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per-stage data-quality report: terminal tables and one self-contained HTML file."""
    from pipeline.report.build import build_report, render_terminal, write_report
    from pipeline.store import datasets as store

    try:
        v = store.resolve(root, ref)
        rep = build_report(v.path)
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
        return
    render_terminal(rep, out)
    out.print(f"HTML report: {write_report(v.path, html, report=rep)}")


@app.command()
def export(
    ref: str = typer.Argument(..., help="NAME or NAME@vN"),
    fmt: str = typer.Option(..., "--format", "-f", help="trl-dpo | trl-kto | rm-multi | ranked"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", help="Folder (default <root>/datasets/<name>/exports/v<N>-<format>)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a published version in another trainer's format (a new folder with its own
    manifest pointing at the source version; the version itself is never touched)."""
    from pipeline.store.export import export_version

    try:
        res = export_version(root, ref, fmt, out_dir)
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    verb = "exported" if res["created"] else "already exported"
    out.print(
        f"[bold green]{verb}[/] {res['source']['ref']} as {res['format']} ({res['rows']} rows)"
    )
    out.print(res["path"])


@datasets_app.command("diff")
def datasets_diff(
    a: str = typer.Argument(..., help="NAME@vA"),
    b: str = typer.Argument(..., help="NAME@vB"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pairs added / removed / changed decision, drop reasons and margin shift."""
    from pipeline.store.diff import diff_versions, render_diff_terminal

    try:
        d = diff_versions(root, a, b)
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(d, indent=2, default=str))
    else:
        render_diff_terminal(d, out)


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    set_: list[str] = typer.Option([], "--set", help="Override a config key"),
    cron: str = typer.Option(..., "--cron", help='cron schedule, e.g. "0 3 * * *"'),
    name: Optional[str] = typer.Option(None, "--name", help="deployment name"),
) -> None:
    """Register the curation as a Prefect deployment on a cron schedule and serve it.

    Needs a Prefect server: `prefect server start --host 127.0.0.1` and
    `export PREFECT_API_URL=http://127.0.0.1:4200/api`.
    """
    _prefect_env(True)
    from flows.schedule import serve_curation
    from schemas.config import load_config

    try:
        cfg = load_config(config, set_)
        data = cfg.model_dump(mode="json")
        data["data_root"] = str(Path(cfg.data_root).resolve())  # runs start elsewhere
        if cfg.input.path != "mtbench" and Path(cfg.input.path).exists():
            data["input"]["path"] = str(Path(cfg.input.path).resolve())
        serve_curation(data, cron, name or cfg.dataset_name)
    except PrefcurateError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
