"""``prefcurate review``: send a version's pairs most worth a human look to Label Studio,
and read the reviewers' answers back as votes for a new curation (:mod:`flows.review`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from flows.console import _fail, out
from flows.preflight import _prefect_env
from schemas.errors import PrefcurateError

review_app = typer.Typer(
    no_args_is_help=True,
    help="Human review in Label Studio ($LABEL_STUDIO_URL, token in $LABEL_STUDIO_API_KEY).",
)


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
