"""Embeddings and what needs them: the embedding model, the GPM head and budgeted
selection."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"


class EmbeddingConfig(BaseModel):
    """Which sentence-transformers model embeds prompts and candidates, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = EMBEDDED_MINILM  # "embedded:all-minilm-l6-v2", a local folder or an HF id
    batch_size: int = Field(64, ge=1)
    max_seq_length: int | None = Field(None, ge=8)  # None: the model's own (MiniLM: 256)
    device: str | None = None  # None: cuda if available, else cpu
    # torch CPU threads while encoding (None: torch's default). On a shared 2-core machine
    # 1 thread was 2-5x faster than 2 (no OpenMP spinning against other processes).
    # torch's setting is process-wide: it is restored after each encode call.
    num_threads: int | None = Field(None, ge=1)
    cache: bool = True  # the on-disk embedding cache (per model and text hash)
    # None: on for prompt curation (similarity flags, reward heads), off for given pairs
    enabled: bool | None = None


class GPMConfig(BaseModel):
    """The GPM head, its training, and its use as the ``gpm`` annotator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    k: int = Field(4, ge=1)  # blocks: preference embeddings live in R^{2k}
    tau: float = Field(0.1, gt=0)  # P(i > j) = sigmoid(s / tau)
    joint: bool = True  # the prompt embedding enters each response's embedding too
    hidden: int = Field(0, ge=0)  # 0: the linear map of the paper; > 0: one GELU layer
    input_dims: int | None = Field(64, ge=1)  # PCA of the frozen embeddings (None: keep)
    loss: Literal["soft", "margin"] = "soft"  # BCE vs p_hat, or the GPM margin loss
    margin_scale: float = Field(0.1, ge=0)  # margin (logit units) -> s units
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    threads: int = Field(1, ge=1)  # torch CPU threads while training
    prior: float = Field(0.5, gt=0)  # training label p_hat = (n_a + tie/2 + a) / (S + 2a)
    folds: int = Field(2, ge=1)  # cross-fitting by prompt; 1 = train once, score in sample
    tie_band: float = Field(0.05, ge=0, lt=0.5)  # |P - 0.5| < band -> verdict "tie"
    cycle_band: float = Field(0.05, ge=0, lt=0.5)  # an edge of a cycle needs P > 0.5 + band
    annotator: str = "gpm"


class SelectConfig(BaseModel):
    """``select: {budget: N | fraction}`` and the quality / coverage trade-off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int | float | None = None  # None: keep every pair; int: pairs; float: fraction
    coverage_tradeoff: float = Field(0.5, ge=0, le=1)  # α: 0 quality only, 1 coverage first
    clusters: int = Field(256, ge=1)  # coverage clients: U itself when |U| <= clusters
    neighbours: int = Field(32, ge=1)  # centroids kept per prompt (sparse similarities)
    kmeans_iters: int = Field(8, ge=1)
    kmeans_sample: int = Field(10_000, ge=1)
    coverage_sample: int = Field(1000, ge=1)  # prompts sampled to report coverage
    seed: int = 0

    @field_validator("budget", mode="before")
    @classmethod
    def _check_budget(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(
                "select.budget must be a number of pairs (int) or a fraction "
                "(float in (0, 1]), not a boolean"
            )
        if isinstance(v, float) and not (0.0 < v <= 1.0):
            raise ValueError(
                f"select.budget {v} as a float is a fraction of the pairs and "
                f"must lie in (0, 1]; give an int for a number of pairs"
            )
        if isinstance(v, int) and v < 0:
            raise ValueError(f"select.budget must be >= 0 pairs, got {v}")
        return v
