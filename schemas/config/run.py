"""RunConfig: every section composed into one model, the dataset's name, and the
checks across sections (``_check``), which fail a config that cannot work."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from schemas.config.annotate import (
    JudgeConfig,
    RewardsConfig,
    RubricConfig,
    RubricsConfig,
    VerifyConfig,
)
from schemas.config.base import _Frozen
from schemas.config.embed import EmbeddingConfig, GPMConfig, SelectConfig
from schemas.config.engines import BudgetConfig, CostConfig, GenerateConfig, ModelSpec, RunnerConfig
from schemas.config.ingest import DecontaminateConfig, DedupConfig, InputConfig
from schemas.config.pairs import AggregateConfig, DenoiseConfig, MarginConfig, PairsConfig
from schemas.config.review import ReviewConfig

DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DATASET_NAME_RULE = (
    "a dataset name is 1-100 characters from [A-Za-z0-9._-], starts with a "
    "letter or digit, and contains no '..' or '/'"
)


class RunConfig(_Frozen):
    # the dataset's name; null: the input file's stem (the embedded default's name for
    # the built-in prompt sets)
    name: str | None = None
    data_root: str = Field("data", min_length=1)  # "" would write into the current folder
    cache_dir: str | None = None  # default: $PREFCURATE_CACHE or ~/.cache/prefcurate
    input: InputConfig = Field(default_factory=InputConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    # p_hat from the posterior: Spearman with the true vote share at the oracle's level on
    # the dense scenario of bench/noise_matrix.py (0.34 vs 0.33; the raw share 0.25)
    margins: MarginConfig = Field(default_factory=lambda: MarginConfig(p_source="posterior"))
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    rubrics: RubricsConfig = Field(default_factory=RubricsConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    embed: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    gpm: GPMConfig = Field(default_factory=GPMConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    # publish even when every call of a model stage failed (an outage): off, the run stops
    # with an error; a stage with any failed call is never marked complete either way,
    # so the next run makes exactly the failed calls again
    allow_partial: bool = False

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # --set name=2024 is a name, not a number
        if v is not None and (
            not isinstance(v, str) or not DATASET_NAME_RE.fullmatch(v) or ".." in v
        ):
            raise ValueError(f"invalid dataset name {v!r}: {DATASET_NAME_RULE}")
        return v

    @property
    def dataset_name(self) -> str:
        """``name``, or one derived from the input: the file's stem (made a valid name),
        ``mtbench-smollm2`` for the built-in prompt sets."""
        if self.name:
            return self.name
        stem = Path(self.input.path.rstrip("/")).stem if self.input.path else ""
        builtin = all(
            p.partition(":")[0] in ("mtbench", "mtbench2", "verifiable")
            for p in self.input.path.split("+")
        )
        if builtin or not stem:
            return "mtbench-smollm2"
        clean = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:100].replace("..", ".")
        return clean if clean and clean[0].isalnum() else "dataset"

    def rubric_judges(self) -> list[RubricConfig]:
        """The rubric judges: as listed, or (``rubrics.judges: null``) one Yes/No judge
        per pairwise judge, with its model."""
        if self.rubrics.judges is not None:
            return list(self.rubrics.judges)
        return [
            RubricConfig(name=f"{j.name}-yesno", model=j.model, template="yesno_v1", seed=j.seed)
            for j in self.judge.judges
        ]

    def embeddings_on(self) -> bool:
        """Embeddings are on for prompt curation and off for given pairs (a pairs run with
        no judges then loads no model at all), unless ``embed.enabled`` says; anything that
        needs them (CRM peer review, GPM pair selection or head, a selection budget) turns
        them on."""
        if self.embed.enabled is not None:
            return self.embed.enabled
        return (
            self.input.kind == "prompts"
            or self.denoise.peer_review is True
            or self.judge.pair_selection == "gpm"
            or self.gpm.enabled
            or self.select.budget is not None
        )

    def chat_models(self) -> dict[str, list[ModelSpec]]:
        """The chat models each model stage of this config calls (its policies, judges,
        rubric judges), by stage name."""
        out: dict[str, list[ModelSpec]] = {}
        if self.input.kind == "prompts":
            out["generate"] = [p.model for p in self.generate.policies]
        if self.rubric_judges():  # the flow runs them with or without pairwise judges
            out["rubric"] = [r.model for r in self.rubric_judges()]
        if self.judge.judges:
            out["judge"] = [j.model for j in self.judge.judges]
            if self.judge.pair_selection == "gpm":
                out["judge_gpm"] = list(out["judge"])
        return out

    def dedup_near_on(self) -> bool:
        """Near-duplicate dedup: as ``dedup.near`` says; unset, on for prompts and off for
        a pairs file (its near-duplicate prompts carry different, labelled pairs)."""
        return self.dedup.near if self.dedup.near is not None else self.input.kind != "pairs"

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        # checks across sections: a config that cannot work fails here, before any call
        needs = [
            name
            for name, on in (
                (
                    "judge.pair_selection: gpm",
                    bool(self.judge.judges) and self.judge.pair_selection == "gpm",
                ),
                ("gpm.enabled", self.gpm.enabled),
                ("select.budget", self.select.budget is not None),
            )
            if on
        ]
        if needs and self.embed.enabled is False:
            raise ValueError(
                f"{needs[0]} needs embeddings: set embed.enabled: true (or leave it unset)"
            )
        if (
            self.judge.pair_selection == "best_worst"
            and self.judge.judges
            and not self.rubric_judges()
            and not self.rewards.models
        ):
            raise ValueError(
                "judge.pair_selection: best_worst needs a first signal: "
                "configure rubrics.judges (or leave it null) or rewards.models"
            )
        names = [p.name for p in self.generate.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"generate.policies: policy names must be unique, got {names}")
        jn = [j.name for j in self.judge.judges]
        if len(set(jn)) != len(jn):
            raise ValueError(f"judge.judges: judge names must be unique, got {jn}")
        self._check_cost()
        return self

    def _check_cost(self) -> None:
        """Prices name models the run calls; a cost budget has a price for every model
        it would spend on; budgets are kept in this process (not in scale-out shards)."""
        used = {m.model for specs in self.chat_models().values() for m in specs}
        for name in self.cost.prices:
            if name not in used:
                raise ValueError(
                    f"cost.prices.{name}: no policy or judge of this config uses model "
                    f"{name!r} (models called: {sorted(used)})"
                )
        b = self.budget
        for stage in b.stages:
            if stage not in self.chat_models():
                raise ValueError(f"budget.stages.{stage}: this config has no {stage} stage")
        priced = [
            (f"budget.stages.{st}.max_cost", self.chat_models()[st])
            for st, lim in b.stages.items()
            if lim.max_cost is not None
        ]
        if b.max_cost is not None:
            priced.append(("budget.max_cost", [m for v in self.chat_models().values() for m in v]))
        for where, specs in priced:
            missing = sorted({m.model for m in specs} - set(self.cost.prices))
            if missing:
                raise ValueError(
                    f"{where} needs a price for every model it spends on: add "
                    f"cost.prices.{missing[0]} (input_per_mtok, output_per_mtok or per_hour)"
                )
        if b.on() and self.runner.kind != "thread":
            raise ValueError(
                "budget: a budget is kept by the run's own process; scale-out shards "
                "(runner.kind dask or ray) would spend around it: use runner.kind: thread"
            )
