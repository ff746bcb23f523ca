"""``prefcurate`` command line: run a curation, inspect the dataset store."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

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
review_app = typer.Typer(
    no_args_is_help=True,
    help="Human review in Label Studio ($LABEL_STUDIO_URL, token in $LABEL_STUDIO_API_KEY).",
)
app.add_typer(review_app, name="review")
err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the width
out = Console()


SERVER_MARKER = "prefect.server.api.server:create_app"  # the ephemeral API server's argv


def reap_orphan_servers() -> list[int]:
    """Stop the Prefect API servers that a killed prefcurate CLI left behind.

    The CLI marks its environment with ``PREFCURATE_CLI_PID``; Prefect's ephemeral server
    (a uvicorn subprocess) inherits it. A server whose CLI is gone (kill -9 skips Prefect's
    own clean-up; one held 290 MB and a port minutes later) is sent SIGTERM, then SIGKILL.
    Returns the pids stopped. Linux /proc only; elsewhere nothing happens."""
    import signal

    from pipeline.store.datasets import pid_alive as _alive

    stopped = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes()
            if SERVER_MARKER.encode() not in cmd:
                continue
            env = dict(
                x.split(b"=", 1) for x in (d / "environ").read_bytes().split(b"\0") if b"=" in x
            )
        except OSError:
            continue
        owner = env.get(b"PREFCURATE_CLI_PID")
        if owner is None or not owner.isdigit() or _alive(int(owner)):
            continue
        pid = int(d.name)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                if not _alive(pid):
                    break
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stopped.append(pid)
    return stopped


def _prefect_env(verbose: bool = False) -> None:
    """Ephemeral Prefect with a project-local home and no telemetry, unless set by the user.

    Without ``-v`` Prefect's own logging is kept to critical messages: the CLI prints a
    one-line error itself (Prefect would add a traceback for every failed task)."""
    os.environ["PREFCURATE_CLI_PID"] = str(os.getpid())  # marks our Prefect server
    for pid in reap_orphan_servers():
        err.print(f"stopped an orphaned Prefect API server (pid {pid}) of a killed run")
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # vLLM logs to stdout by default, and its worker processes inherit that: stdout is
    # the --json document's alone
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # every project logger is under "prefcurate": attached to Prefect's API handler, its
    # records show in the Prefect UI with the run's own logs (outside a run: not sent)
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "prefcurate")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def check_data_root(root: str) -> None:
    """Fail before any work when ``data_root`` cannot hold the run: a file, a folder that
    cannot be created or written (read-only, no permission), named in one line."""
    p = Path(root)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"data_root {root}: is a file, not a folder; pass another --set data_root=..."
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"data_root {root}: cannot write there ({exc.strerror or exc}); "
            f"pass another --set data_root=..."
        ) from None


def _model_problem(name: str) -> str | None:
    """Why a model name can be neither a local folder nor a usable hub id, or None."""
    if name.startswith("embedded:") or Path(name).expanduser().exists():
        return None
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return "no such folder"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return (
                "no such folder, and not in the local Hugging Face cache (the CLI runs "
                "offline: HF_HUB_OFFLINE=1)"
            )
    return None


def check_models(cfg: Any) -> None:
    """Fail before any work when a model the run will load locally is missing: a path
    that does not exist, or (offline) a hub id that is not in the cache."""
    specs: list[tuple[str, str]] = []
    if cfg.input.kind == "prompts":
        specs += [
            (f"generate.policies.{i}", p.model.model)
            for i, p in enumerate(cfg.generate.policies)
            if p.model.engine == "vllm"
        ]
    specs += [
        (f"judge.judges.{i}", j.model.model)
        for i, j in enumerate(cfg.judge.judges)
        if j.model.engine == "vllm"
    ]
    specs += [
        (f"rubrics ({r.name})", r.model.model)
        for r in cfg.rubric_judges()
        if r.model.engine == "vllm"
    ]
    specs += [(f"rewards.models.{i}", m.model) for i, m in enumerate(cfg.rewards.models)]
    if cfg.embeddings_on():
        specs.append(("embed", cfg.embed.model))
    for where, name in specs:
        problem = _model_problem(name)
        if problem:
            raise ConfigError(f"{where}: model '{name}': {problem}")


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
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("prefcurate").setLevel(logging.INFO)
    # the stage modules' own loggers (prefcurate.pipeline.*) stay at warnings without -v
    logging.getLogger("prefcurate.pipeline").setLevel(logging.INFO if verbose else logging.WARNING)
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
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
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


def _review_sets(
    set_: list[str], budget: Optional[int], overlap: Optional[int], select: Optional[str]
) -> list[str]:
    return (
        list(set_)
        + ([f"review.budget={budget}"] if budget is not None else [])
        + ([f"review.overlap={overlap}"] if overlap is not None else [])
        + ([f"review.select=[{select}]"] if select else [])
    )


@review_app.command("export")
def review_export(
    ref: str = typer.Argument(..., help="NAME or NAME@vN"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    budget: Optional[int] = typer.Option(None, help="pairs to send (review.budget)"),
    overlap: Optional[int] = typer.Option(None, help="people per pair (review.overlap)"),
    select: Optional[str] = typer.Option(
        None, help="criteria, comma-separated: contested,flipped,low_confidence,disagreement,cyclic"
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (review.*)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send the version's pairs most worth a human look to a Label Studio project (found
    or created by title; a pair already there is not sent again)."""
    from flows.review import export_review
    from pipeline.review.labelstudio import LabelStudio

    try:
        res = export_review(
            root, ref, LabelStudio.from_env(), _review_sets(set_, budget, overlap, select)
        )
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    out.print(
        f"[bold green]review[/] {res['ref']}: {res['sent']} pair(s) sent, "
        f"{res['already_there']} already there, to project {res['project_id']} "
        f"'{res['project_title']}' ({res['pairs_worth_a_look']} of {res['pairs_scored']} "
        f"pairs worth a look; budget {res['budget']}, {res['overlap']} per pair)"
    )


@review_app.command("import")
def review_import(
    ref: str = typer.Argument(..., help="NAME or NAME@vN (the reviewed version)"),
    root: Path = typer.Option(Path("data"), help="Store root (data_root)"),
    anchor: bool = typer.Option(
        False, "--anchor", help="human majorities as gold anchors (review.anchor)"
    ),
    no_curate: bool = typer.Option(False, "--no-curate", help="write the votes, run nothing"),
    set_: list[str] = typer.Option([], "--set", help="Override a config key of the new run"),
    as_json: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Read the reviewers' answers back as votes (human:<user id>) and curate a new version
    from the reviewed one's config plus those votes (model calls reused from the cache)."""
    _prefect_env(verbose)
    from flows.review import import_review
    from pipeline.review.labelstudio import LabelStudio

    try:
        res = import_review(
            root, ref, LabelStudio.from_env(), anchor=anchor, sets=set_, curate=not no_curate
        )
    except PrefcurateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    out.print(
        f"[bold green]imported[/] {res['votes']} vote(s) from {res['humans']} reviewer(s) on "
        f"{res['answered_pairs']} pair(s) of {res['ref']}; {res['unanswered_pairs']} "
        f"unanswered; votes: {res['votes_path']}"
    )
    cur = res.get("curation")
    if cur:
        verb = "published" if cur["created"] else "unchanged, already published as"
        out.print(f"{verb} {cur['name']}@v{cur['version']}: {cur['path']}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
