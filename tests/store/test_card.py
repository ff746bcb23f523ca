"""The dataset card (issue 15, item 6): YAML front matter that the hub and `datasets` read
(licences, size, configs, features of PUBLISHED), every model with its role and licence as
the local files say, the input's source, licence and citation. No model is loaded."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard

from pipeline.store.card import dataset_card, folder_license, model_license, size_category
from schemas.config import RunConfig
from schemas.tables import PUBLISHED

STAGES = {
    "ingest": {"in": 3, "kept": 2, "dropped": {"limit": 1}, "quarantined": {}, "reused": False},
    "judge": {"in": 2, "kept": 2, "dropped": {}, "quarantined": {}},
}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep, "the front matter is not closed"
    return yaml.safe_load(head)


def _model_dir(root: Path, name: str, readme: str | None = None, license_file: str | None = None):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    if readme is not None:
        (d / "README.md").write_text(readme)
    if license_file is not None:
        (d / "LICENSE").write_text(license_file)
    return str(d)


def _cfg(**over) -> RunConfig:
    return RunConfig.model_validate({"name": "demo", **over})


def _rows(card: str, role: str) -> list[str]:
    return [ln for ln in card.splitlines() if ln.startswith(f"| {role} |")]


def test_front_matter_has_the_hub_keys():
    meta = _front_matter(dataset_card("demo", "", _cfg(), STAGES, 12))
    assert list(meta) == [
        "pretty_name",
        "license",
        "size_categories",
        "task_categories",
        "tags",
        "configs",
        "dataset_info",
    ]
    assert meta["pretty_name"] == "demo"
    assert isinstance(meta["license"], list) and meta["license"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"]
    assert {"dpo", "preference", "prefcurate", "synthetic"} <= set(meta["tags"])
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data.parquet"}]}
    ]
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_examples": 12}]


def test_datasets_reads_the_features_of_the_published_schema():
    card = DatasetCard(dataset_card("demo", "", _cfg(), STAGES, 7))
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(card.data)
    assert list(infos) == ["default"]
    assert infos["default"].features == datasets.Features.from_arrow_schema(PUBLISHED)
    assert infos["default"].splits["train"].num_examples == 7
    configs = datasets.utils.metadata.MetadataConfigs.from_dataset_card_data(card.data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data.parquet"}]


def test_load_dataset_reads_a_folder_with_the_card(tmp_path):
    row = {f.name: None for f in PUBLISHED}
    msg = [{"role": "user", "content": "hi"}]
    row.update(prompt=msg, chosen=msg, rejected=msg, flags=[], flipped=False, n_votes=1)
    row.update({k: 0.5 for k in ("margin", "weight", "p_hat", "disagreement")})
    row.update({k: "x" for k in ("source_id", "prompt_id", "pair_id", "chosen_id")})
    row.update({k: "x" for k in ("rejected_id", "chosen_policy", "rejected_policy")})
    row.update(label_status="given", decision="keep")
    pq.write_table(pa.Table.from_pylist([row, row], schema=PUBLISHED), tmp_path / "data.parquet")
    (tmp_path / "dropped.parquet").write_bytes(b"not the data")  # configs point past it
    (tmp_path / "README.md").write_text(dataset_card("demo", "", _cfg(), STAGES, 2))
    ds = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".hf"))
    assert ds.num_rows == 2
    assert ds.features == datasets.Features.from_arrow_schema(PUBLISHED)


@pytest.mark.parametrize(
    ("n", "bucket"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1000, "1K<n<10K"),
        (9_999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (250_000, "100K<n<1M"),
        (3_000_000, "1M<n<10M"),
        (10**13, "n>1T"),
    ],
)
def test_size_category(n, bucket):
    assert size_category(n) == bucket
    assert _front_matter(dataset_card("d", "", _cfg(), {}, n))["size_categories"] == [bucket]


def test_licence_lookup_on_local_folders(tmp_path):
    fm = _model_dir(tmp_path, "fm", readme="---\nlicense: mit\ntags: [x]\n---\n# m\n")
    lic = _model_dir(tmp_path, "lic", readme="# no front matter\n", license_file="\nMIT License\n")
    bad = _model_dir(tmp_path, "bad", readme="---\nlicense: [unclosed\n---\n")
    bare = _model_dir(tmp_path, "bare")
    assert folder_license(Path(fm)) == "mit" and model_license(fm) == "mit"
    assert model_license(lic) == "MIT License"
    assert model_license(bad) == "unknown"  # a broken README never raises
    assert folder_license(Path(bare)) is None and model_license(bare) == "unknown"
    assert model_license("no-such-org/no-such-model") == "unknown"  # not in the HF cache
    assert model_license("embedded:no-such-model") == "unknown"


def test_the_embedded_models_licences_come_from_their_wheels():
    assert model_license("embedded:all-minilm-l6-v2") == "apache-2.0"  # the model's README
    assert model_license("embedded:smollm2-135m-instruct") == "Apache-2.0"  # wheel metadata


def test_every_model_is_listed_with_its_role_and_licence(tmp_path):
    mit = _model_dir(tmp_path, "mit-model", readme="---\nlicense: mit\n---\n")
    gpl = _model_dir(tmp_path, "embedder", readme="---\nlicense: gpl-3.0\n---\n")
    spec = {"model": mit, "engine": "fake"}
    cfg = _cfg(
        input={"path": "prompts.jsonl", "source": "my-prompts", "license": "CC-BY-4.0"},
        generate={"policies": [{"name": "p1", "model": spec}, {"name": "p2", "model": spec}]},
        judge={"judges": [{"name": "j1", "model": spec}]},
        rewards={"models": [{"model": mit, "name": "rm1"}]},
        embed={"model": gpl},
    )
    card = dataset_card("demo", "", cfg, STAGES, 5)
    assert _rows(card, "generator") == [
        f"| generator | p1 | {mit} | mit |",
        f"| generator | p2 | {mit} | mit |",
    ]
    assert _rows(card, "pairwise judge") == [f"| pairwise judge | j1 | {mit} | mit |"]
    assert _rows(card, "rubric judge") == [f"| rubric judge | j1-yesno | {mit} | mit |"]
    assert _rows(card, "reward model") == [f"| reward model | rm1 | {mit} | mit |"]
    assert _rows(card, "embedding model") == [f"| embedding model | embed | {gpl} | gpl-3.0 |"]
    # the input's licence first, then the models' whose outputs are in the data, deduplicated
    assert _front_matter(card)["license"] == ["cc-by-4.0", "mit"]
    assert "- input: `prompts` from `prompts.jsonl` (source `my-prompts`)" in card
    assert "- input licence: CC-BY-4.0" in card


def test_a_pairs_input_lists_no_generator_and_no_rubric_judge_when_off(tmp_path):
    mit = _model_dir(tmp_path, "judge", readme="---\nlicense: mit\n---\n")
    cfg = _cfg(
        input={"kind": "pairs", "path": "pairs.jsonl"},
        judge={"judges": [{"name": "j1", "model": {"model": mit}}]},
        rubrics={"judges": []},
    )
    card = dataset_card("demo", "", cfg, STAGES, 5)
    assert _rows(card, "generator") == [] and _rows(card, "rubric judge") == []
    assert _rows(card, "pairwise judge") == [f"| pairwise judge | j1 | {mit} | mit |"]
    assert _rows(card, "embedding model") == []  # off for given pairs
    meta = _front_matter(card)
    assert "synthetic" not in meta["tags"]
    assert meta["license"] == ["unknown", "mit"]  # the input's licence was not given


def test_a_card_without_models_or_licences_says_unknown():
    cfg = _cfg(input={"kind": "pairs", "path": "pairs.jsonl"}, judge={"judges": []})
    card = dataset_card("demo", "", cfg, STAGES, 5)
    assert "None: the pairs and their votes are the input's own." in card
    assert _front_matter(card)["license"] == ["unknown"]
    assert "- input licence: unknown (not given: set `input.license`)" in card


def test_steps_loading_and_citation():
    bib = "@article{mt,\n  title = {MT-Bench},\n}"
    card = dataset_card("demo", "", _cfg(input={"citation": bib}), STAGES, 2)
    assert "| ingest | 3 | 2 | limit=1 | 0 |" in card and "| judge | 2 | 2 | 0 | 0 |" in card
    assert "datasets.load_from_disk('<this folder>/data')" in card
    assert "polars.read_parquet('<this folder>/data.parquet')" in card
    cite = card.split("## How to cite", 1)[1]
    assert "@software{prefcurate," in cite and "```bibtex\n" + bib + "\n```" in cite
    assert "The input:" not in dataset_card("demo", "", _cfg(), STAGES, 2)
