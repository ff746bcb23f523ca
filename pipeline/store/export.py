"""Exports of a published version in the formats other trainers read (issue 15).

Each format is a pure function over the PUBLISHED table; :func:`export_version` writes
the result beside the immutable version, under
``<root>/datasets/<name>/exports/v<N>-<format>/``: ``data.parquet``, ``data/`` (a
``datasets.save_to_disk`` copy) and a small ``manifest.json`` that names the source
version and its content key, the format, the rows and each file's sha256. Exporting the
same version twice finds the first export (same source content key) and writes nothing.

Formats (conversational: messages lists, as TRL reads them):

- ``trl-dpo``: today's pairwise table, TRL's ``prompt`` / ``chosen`` / ``rejected`` with
  ``margin`` and ``weight`` (and the pair's lineage ids).
- ``trl-kto``: unpaired rows for KTO, ``prompt`` / ``completion`` / ``label`` (True =
  desirable) plus ``weight``. Each published response appears once per prompt: desirable
  if it is chosen in more of its pairs than it is rejected in, undesirable if the
  reverse; a response chosen and rejected equally often is left out and counted as
  ``ambiguous`` in the export's manifest. ``weight`` is the mean weight of the pairs that
  gave it its label.
- ``rm-multi``: one row per (prompt, chosen response) with every response it was
  preferred to: ``chosen`` and ``rejected`` (a list of responses) with their
  ``margins`` and ``weights``, for reward models trained on several negatives.
- ``ranked``: one row per prompt, its responses ordered best first by the aggregated
  score (``score_chosen`` / ``score_rejected``; without scores, by wins minus losses over
  the published pairs), with ``scores``, ``candidate_ids`` and ``ranks``.

>>> import pyarrow as pa
>>> msg = lambda r, t: [{"role": r, "content": t}]
>>> data = pa.Table.from_pylist([
...     dict(prompt=msg("user", "q"), chosen=msg("assistant", "good"),
...          rejected=msg("assistant", "bad"), margin=1.0, weight=0.9, prompt_id="p",
...          pair_id="x", chosen_id="g", rejected_id="b", score_chosen=0.8,
...          score_rejected=0.2)])
>>> kto = to_trl_kto(data)
>>> [(r["completion"][0]["content"], r["label"]) for r in kto.to_pylist()]
[('good', True), ('bad', False)]
>>> to_ranked(data).column("candidate_ids").to_pylist()
[['g', 'b']]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import file_hash
from schemas.errors import StoreError
from schemas.tables import MESSAGES

FORMATS = ("trl-dpo", "trl-kto", "rm-multi", "ranked")
EXPORTS_DIR = "exports"
EXPORT_VERSION = 1

TRL_DPO = pa.schema(
    [
        pa.field("prompt", MESSAGES),
        pa.field("chosen", MESSAGES),
        pa.field("rejected", MESSAGES),
        pa.field("margin", pa.float64()),
        pa.field("weight", pa.float64()),
        pa.field("prompt_id", pa.string()),
        pa.field("pair_id", pa.string()),
        pa.field("chosen_id", pa.string()),
        pa.field("rejected_id", pa.string()),
    ]
)
TRL_KTO = pa.schema(
    [
        pa.field("prompt", MESSAGES),
        pa.field("completion", MESSAGES),
        pa.field("label", pa.bool_()),
        pa.field("weight", pa.float64()),
        pa.field("prompt_id", pa.string()),
        pa.field("candidate_id", pa.string()),
        pa.field("n_chosen", pa.int32()),
        pa.field("n_rejected", pa.int32()),
    ]
)
RM_MULTI = pa.schema(
    [
        pa.field("prompt", MESSAGES),
        pa.field("chosen", MESSAGES),
        pa.field("rejected", pa.list_(MESSAGES)),
        pa.field("margins", pa.list_(pa.float64())),
        pa.field("weights", pa.list_(pa.float64())),
        pa.field("prompt_id", pa.string()),
        pa.field("chosen_id", pa.string()),
        pa.field("rejected_ids", pa.list_(pa.string())),
    ]
)
RANKED = pa.schema(
    [
        pa.field("prompt", MESSAGES),
        pa.field("responses", pa.list_(MESSAGES)),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("ranks", pa.list_(pa.int32())),
        pa.field("candidate_ids", pa.list_(pa.string())),
        pa.field("prompt_id", pa.string()),
    ]
)
SCHEMAS = {"trl-dpo": TRL_DPO, "trl-kto": TRL_KTO, "rm-multi": RM_MULTI, "ranked": RANKED}


def to_trl_dpo(data: pa.Table) -> pa.Table:
    """The pairwise TRL table (module docstring)."""
    return data.select(TRL_DPO.names).cast(TRL_DPO)


def to_trl_kto(data: pa.Table) -> pa.Table:
    """Unpaired KTO rows (module docstring), in first-seen order."""
    return _kto(data)[0]


def _kto(data: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in data.to_pylist():
        for side, cid, is_chosen in (
            ("chosen", r["chosen_id"], True),
            ("rejected", r["rejected_id"], False),
        ):
            key = (r["prompt_id"], cid)
            e = seen.setdefault(
                key,
                {
                    "prompt": r["prompt"],
                    "completion": r[side],
                    "prompt_id": r["prompt_id"],
                    "candidate_id": cid,
                    "w": {True: [], False: []},
                },
            )
            e["w"][is_chosen].append(float(r["weight"]))
    rows, ambiguous = [], 0
    for e in seen.values():
        n_c, n_r = len(e["w"][True]), len(e["w"][False])
        if n_c == n_r:
            ambiguous += 1
            continue
        label = n_c > n_r
        ws = e["w"][label]
        rows.append(
            {
                "prompt": e["prompt"],
                "completion": e["completion"],
                "label": label,
                "weight": sum(ws) / len(ws),
                "prompt_id": e["prompt_id"],
                "candidate_id": e["candidate_id"],
                "n_chosen": n_c,
                "n_rejected": n_r,
            }
        )
    table = pa.Table.from_pylist(rows, schema=TRL_KTO) if rows else TRL_KTO.empty_table()
    return table, {"ambiguous": ambiguous}


def to_rm_multi(data: pa.Table) -> pa.Table:
    """One row per (prompt, chosen response) with all its rejected ones (module docstring)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in data.to_pylist():
        g = groups.setdefault(
            (r["prompt_id"], r["chosen_id"]),
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": [],
                "margins": [],
                "weights": [],
                "prompt_id": r["prompt_id"],
                "chosen_id": r["chosen_id"],
                "rejected_ids": [],
            },
        )
        if r["rejected_id"] in g["rejected_ids"]:
            continue
        g["rejected"].append(r["rejected"])
        g["margins"].append(float(r["margin"]))
        g["weights"].append(float(r["weight"]))
        g["rejected_ids"].append(r["rejected_id"])
    rows = list(groups.values())
    return pa.Table.from_pylist(rows, schema=RM_MULTI) if rows else RM_MULTI.empty_table()


def to_ranked(data: pa.Table) -> pa.Table:
    """Each prompt's responses ordered by aggregated score (module docstring)."""
    prompts: dict[str, dict[str, Any]] = {}
    for r in data.to_pylist():
        p = prompts.setdefault(r["prompt_id"], {"prompt": r["prompt"], "c": {}})
        for side, sc, sign in (("chosen", "score_chosen", 1), ("rejected", "score_rejected", -1)):
            cid = r[f"{side}_id"]
            c = p["c"].setdefault(cid, {"text": r[side], "score": None, "net": 0})
            if r.get(sc) is not None:
                c["score"] = float(r[sc])
            c["net"] += sign
    rows = []
    for pid, p in prompts.items():
        scored = all(c["score"] is not None for c in p["c"].values())
        key = (
            (lambda kv: (-kv[1]["score"], kv[0])) if scored else (lambda kv: (-kv[1]["net"], kv[0]))
        )
        order = sorted(p["c"].items(), key=key)
        rows.append(
            {
                "prompt": p["prompt"],
                "responses": [c["text"] for _, c in order],
                "scores": [c["score"] if scored else float(c["net"]) for _, c in order],
                "ranks": list(range(1, len(order) + 1)),
                "candidate_ids": [cid for cid, _ in order],
                "prompt_id": pid,
            }
        )
    return pa.Table.from_pylist(rows, schema=RANKED) if rows else RANKED.empty_table()


def convert(data: pa.Table, fmt: str) -> tuple[pa.Table, dict[str, Any]]:
    """The table of format ``fmt`` and the format's counts for the manifest."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "trl-kto":
        table, info = _kto(data)
        return table, info
    fn = {"trl-dpo": to_trl_dpo, "rm-multi": to_rm_multi, "ranked": to_ranked}[fmt]
    return fn(data), {}


def export_path(version_path: str | Path, fmt: str) -> Path:
    """``<root>/datasets/<name>/exports/v<N>-<fmt>`` for the version ``.../<name>/v<N>``."""
    vp = Path(version_path)
    return vp.parent / EXPORTS_DIR / f"{vp.name}-{fmt}"


def export_version(
    root: str | Path, ref: str, fmt: str, out: str | Path | None = None
) -> dict[str, Any]:
    """Write version ``ref`` (``name@vN``) in format ``fmt`` (atomically: a temporary
    folder renamed into place) and return the export's manifest plus ``path`` and
    ``created`` (False when an export of the same source content already exists)."""
    from pipeline.store import datasets as store
    from pipeline.store.stream import write_dataset

    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    v = store.resolve(root, ref)
    src_manifest = store.read_manifest(v.path)
    dest = Path(out) if out is not None else export_path(v.path, fmt)
    if (dest / "manifest.json").is_file():
        have = json.loads((dest / "manifest.json").read_text())
        if (
            have.get("source", {}).get("content_key") == src_manifest.get("content_key")
            and have.get("format") == fmt
        ):
            return {**have, "path": str(dest), "created": False}
        raise StoreError(
            f"{dest} holds another export ({have.get('source', {}).get('ref')}, "
            f"{have.get('format')}); pass --out elsewhere or remove it"
        )
    data = store.read_version_table(v.path, store.DATA_PARQUET)
    table, info = convert(data, fmt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        pq.write_table(table, tmp / "data.parquet")
        write_dataset(table, tmp / "data")
        files = {
            str(p.relative_to(tmp)): file_hash(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {
            "export_version": EXPORT_VERSION,
            "format": fmt,
            "source": {
                "ref": v.ref,
                "path": str(v.path),
                "content_key": src_manifest.get("content_key"),
                "rows": data.num_rows,
            },
            "rows": table.num_rows,
            "columns": table.schema.names,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
            **info,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        store.fsync_tree(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**manifest, "path": str(dest), "created": True}
