"""``prefcurate review export`` / ``import``: a published version's hard pairs to Label
Studio, and the answers back as votes for a new curation (issue 16).

Export reads the version's lineage (its run's finished stage outputs: margins, denoise and
pairs, the prompts and candidates), picks the pairs (:mod:`pipeline.review.pick`), and
creates — or finds, by title ``prefcurate <name>@v<N>`` — a Label Studio project whose
tasks carry the pair id and version; a task already there (by pair id) is not sent again.
What was sent is recorded in ``<data_root>/reviews/<name>/v<N>/export.json`` (no token).

Import reads every task back, maps the answers to VOTES (:mod:`pipeline.review.votes`),
writes them to ``<data_root>/reviews/<name>/v<N>/votes.parquet`` (replaced whole: a second
import never doubles a vote), and runs a new curation with the version's own config plus
``review.votes`` (and ``review.anchor`` when asked): only the aggregation and the stages
after it run again; every model call is reused from the cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.report.common import Lineage, default_run_root
from pipeline.review.pick import LABEL_CONFIG, build_tasks, choose, review_candidates
from pipeline.review.votes import annotations_to_votes
from pipeline.store import datasets as store
from schemas.config import RunConfig, config_from_dict
from schemas.errors import StoreError


def review_dir(root: str | Path, name: str, version: int) -> Path:
    return Path(root) / "reviews" / name / f"v{version}"


def project_title(name: str, version: int) -> str:
    return f"prefcurate {name}@v{version}"


def _config(manifest: dict[str, Any], root: str | Path, sets: list[str]) -> RunConfig:
    data = {**manifest["config"], "data_root": str(root)}
    return config_from_dict(data, sets, f"{manifest.get('name')}@v{manifest.get('version')}")


def _last(lineage: Lineage, name: str, ref: str) -> pa.Table:
    tables = lineage.tables(name)
    if not tables:
        raise StoreError(
            f"{ref}: the run's '{name}' stage output is gone (its run folder was removed); "
            f"rerun the curation to rebuild it, then export again"
        )
    return tables[-1]


def _stage_table(lineage: Lineage, stage: str, name: str, ref: str) -> pa.Table:
    t = lineage.table(stage, name)
    if t is None:
        raise StoreError(f"{ref}: no finished '{stage}' stage output to pick pairs from")
    return t


def plan_export(root: str | Path, ref: str, sets: list[str] = ()) -> dict[str, Any]:
    """The version, its config (with ``sets``) and the tasks a review of it would send."""
    v = store.resolve(root, ref)
    manifest = store.read_manifest(v.path)
    cfg = _config(manifest, root, list(sets))
    lineage = Lineage(manifest, default_run_root(v.path, manifest))
    margins = _stage_table(lineage, "margins", "pairs", ref)
    denoise = _stage_table(lineage, "denoise", "pairs", ref)
    dropped = [t for s in ("denoise", "pairs") if (t := lineage.table(s, "dropped")) is not None]
    drops = pa.concat_tables(dropped) if dropped else pa.table({"row_id": [], "reason": []})
    cands = review_candidates(margins, denoise, drops, cfg.review)
    chosen = choose(cands, cfg.review.budget)
    full = f"{v.name}@v{v.version}"
    tasks = build_tasks(
        chosen,
        _last(lineage, "prompts", ref),
        _last(lineage, "candidates", ref),
        full,
        cfg.review.seed,
    )
    return {
        "ref": full,
        "name": v.name,
        "version": v.version,
        "config": cfg,
        "worth": int(cands["worth"].sum()),
        "pairs": cands.height,
        "tasks": tasks,
        "missing_text": chosen.height - len(tasks),
    }


def export_review(root: str | Path, ref: str, client: Any, sets: list[str] = ()) -> dict:
    """Send the pairs of ``ref`` worth a look to Label Studio (idempotent)."""
    plan = plan_export(root, ref, sets)
    cfg: RunConfig = plan["config"]
    title = project_title(plan["name"], plan["version"])
    pid = client.find_project(title)
    created = pid is None
    if pid is None:
        pid = client.create_project(
            title,
            LABEL_CONFIG,
            description=f"Pairs of {plan['ref']} worth a human look (prefcurate review)",
            maximum_annotations=cfg.review.overlap,
        )
    have = client.task_ids_by(pid, "pair_id")
    new = [t for t in plan["tasks"] if t["data"]["pair_id"] not in have]
    n_new = client.import_tasks(pid, new) if new else 0
    out = {
        "ref": plan["ref"],
        "project_id": pid,
        "project_title": title,
        "project_created": created,
        "pairs_scored": plan["pairs"],
        "pairs_worth_a_look": plan["worth"],
        "budget": cfg.review.budget,
        "overlap": cfg.review.overlap,
        "select": list(cfg.review.select),
        "sent": n_new,
        "already_there": len(plan["tasks"]) - len(new),
        "missing_text": plan["missing_text"],
        "pairs": {t["data"]["pair_id"]: t["data"]["order"] for t in plan["tasks"]},
    }
    d = review_dir(root, plan["name"], plan["version"])
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / "export.json", json.dumps(out, indent=2).encode())
    out["path"] = str(d / "export.json")
    return out


def import_review(
    root: str | Path,
    ref: str,
    client: Any,
    *,
    anchor: bool = False,
    sets: list[str] = (),
    curate: bool = True,
) -> dict[str, Any]:
    """Read the answers of ``ref``'s review, write them as votes, and (``curate``) run a new
    curation with them; returns the votes file, the answer counts and the run's summary."""
    v = store.resolve(root, ref)
    full = f"{v.name}@v{v.version}"
    manifest = store.read_manifest(v.path)
    pid = client.find_project(project_title(v.name, v.version))
    if pid is None:
        raise StoreError(f"{full}: no Label Studio project; run `prefcurate review export {full}`")
    votes, info = annotations_to_votes(client.export_tasks(pid), full)
    d = review_dir(root, v.name, v.version)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "votes.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(votes, sink)
    _write_atomic(path, sink.getvalue().to_pybytes())
    out: dict[str, Any] = {"ref": full, "project_id": pid, "votes_path": str(path), **info}
    out["unanswered"] = info["unanswered"][:50]
    if not curate:
        return out
    if not votes.num_rows:
        out["curation"] = None
        out["note"] = "no answers yet: nothing to curate"
        return out
    cfg = _config(manifest, root, list(sets))
    files = tuple(f for f in cfg.review.votes if Path(f).resolve() != path.resolve())
    review = cfg.review.model_copy(update={"votes": (*files, str(path)), "anchor": anchor})
    cfg = cfg.model_copy(update={"review": review})
    from flows.curate import run_curation

    summary = run_curation(cfg.model_dump(mode="json"))
    summary.pop("report", None)
    out["curation"] = summary
    out["reviewed_version"] = v.version
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
