"""The annotators' sections: pairwise judges, rubric judges, reward models and
verifiers."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.config.base import _Frozen
from schemas.config.engines import ModelSpec


class JudgeSpec(_Frozen):
    name: str = "smollm2-judge"
    model: ModelSpec = Field(default_factory=ModelSpec)
    template: Literal["pairwise_v1"] = "pairwise_v1"
    persona: str | None = None  # a system prompt standing for a kind of user
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(48, ge=1)
    seed: int = 0
    structured: bool = True  # JSON schema through vLLM structured outputs
    samples: int = Field(1, ge=1)  # verdicts per call (use with temperature > 0): one vote each
    # multi-turn candidates: judge the last answer (earlier turns as context) or all of it
    multi_turn: Literal["last", "whole"] = "last"


class JudgeConfig(_Frozen):
    judges: list[JudgeSpec] = Field(default_factory=lambda: [JudgeSpec()])
    max_pairs_per_prompt: int = Field(3, ge=1)
    budget: int | None = None  # max judge calls in the stage (null: unbounded)
    batch_size: int = Field(64, ge=1)
    # all: every pair up to the cap; best_worst: per prompt only the pair (best, worst) by a
    # cheap first signal — the mean pointwise score from the rubric judges / reward models
    # (K calls per prompt instead of K(K-1)/2 pairs x 2 orders)
    # gpm: active judging in two rounds — round 1 judges seed_pairs_per_prompt pairs per
    # prompt, a GPM head (gpm.* training settings) trained on them picks per prompt the
    # max_pairs_per_prompt - seed_pairs_per_prompt unjudged pairs it is least sure of for
    # round 2 (needs embeddings; bench/gpm_eval.py --active measures what it buys)
    pair_selection: Literal["all", "best_worst", "gpm"] = "all"
    seed_pairs_per_prompt: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check_rounds(self) -> "JudgeConfig":
        if self.pair_selection == "gpm" and self.seed_pairs_per_prompt >= self.max_pairs_per_prompt:
            raise ValueError(
                f"judge: pair_selection 'gpm' judges seed_pairs_per_prompt "
                f"({self.seed_pairs_per_prompt}) pairs first and the rest of "
                f"max_pairs_per_prompt ({self.max_pairs_per_prompt}) by the GPM; "
                f"make max_pairs_per_prompt larger"
            )
        return self


DEFAULT_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
_ASPECT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RubricConfig(BaseModel):
    """One pointwise rubric judge: model, aspects, scale, persona."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "smollm2-rubric"
    model: ModelSpec = Field(default_factory=ModelSpec)
    # rubric_v1: integer scores per aspect as JSON; yesno_v1: "is the response correct
    # and helpful? Yes/No", scored P(Yes) in [0, 1] from the first token's logprobs
    # (aspect "correct"; a small judge reads better this way than pairwise, issue 13)
    template: Literal["rubric_v1", "yesno_v1"] = "rubric_v1"
    aspects: tuple[str, ...] = DEFAULT_ASPECTS
    descriptions: dict[str, str] = Field(default_factory=dict)  # override ASPECT_GUIDE
    persona: str | None = None  # a system prompt standing for a kind of user
    min_score: int = 1
    max_score: int = 5
    # <= 100 characters keep the rationale within ~100 tokens even when a small model
    # degenerates ("2.1.1.1..."), so with max_tokens 160 the JSON closes for up to 6 aspects
    rationale_max_chars: int = Field(100, ge=0)  # 0: no rationale asked
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(160, ge=1)
    seed: int = 0
    structured: bool = True  # JSON schema through vLLM structured outputs

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("aspects: give at least one aspect, e.g. ['helpfulness']")
        bad = [a for a in v if not _ASPECT_NAME.match(a) or a == "rationale"]
        if bad:
            raise ValueError(
                f"aspects: {bad} are not valid aspect names (lowercase snake_case, not 'rationale')"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"aspects: names must be unique, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _scale(self) -> "RubricConfig":
        if self.min_score >= self.max_score:
            raise ValueError(
                f"min_score ({self.min_score}) must be below max_score ({self.max_score})"
            )
        return self


class RubricsConfig(BaseModel):
    """The rubric stage: zero or more rubric judges (none: the stage is skipped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # null (auto): one Yes/No judge (template yesno_v1, P(Yes) from its logits) with the
    # model of each pairwise judge, named <judge>-yesno — how a small judge reads best
    # (measured on the embedded default, README); [] skips the stage; or list them
    judges: list[RubricConfig] | None = None
    budget: int | None = None  # max rubric calls in the stage (null: unbounded)
    batch_size: int = Field(64, ge=1)


class RewardModelSpec(BaseModel):
    """One reward model and the engine that runs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # HF id or local folder of a *ForSequenceClassification model
    name: str | None = None  # the annotator in SCORES; default: ``model``
    engine: Literal["vllm", "transformers"] = "vllm"
    dtype: str = "auto"  # "auto": float32 on CPU, the model's dtype on GPU
    max_model_len: int = Field(2048, ge=8)  # longer conversations get a null score
    batch_size: int = Field(8, ge=1)  # sequences per forward pass (transformers)
    engine_args: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM as is
    aspects: tuple[str, ...] | None = None  # head names; default from id2label / head_<i>

    @property
    def annotator(self) -> str:
        return self.name or self.model


class RewardsConfig(BaseModel):
    """The reward stage: zero or more reward models (none: the stage is skipped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[RewardModelSpec] = Field(default_factory=list)
    chunk_size: int = Field(256, ge=1)  # sequences per scorer call; the cache commits after each


VERIFIER_KINDS = ("exact_answer", "python_tests", "constraints")


class VerifyConfig(BaseModel):
    """Which verifiers run and the sandbox limits of ``python_tests``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: run whenever the input has prompts (a prompt without answer / tests /
    # constraints costs nothing); false: never
    enabled: bool | None = None
    kinds: tuple[Literal["exact_answer", "python_tests", "constraints"], ...] = VERIFIER_KINDS
    time_limit_s: float = Field(5.0, gt=0, le=600)
    memory_limit_mb: int = Field(512, ge=64)
    workers: int = Field(2, ge=1)
    answer_rel_tol: float = Field(1e-6, ge=0)
    answer_abs_tol: float = Field(1e-9, ge=0)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"kinds: {list(v)} names a verifier twice")
        return v
