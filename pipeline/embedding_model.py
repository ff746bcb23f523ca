"""The embedding model: what the embed stage needs from one (:class:`Embedder`), which
model a config names and the key of the vectors it produces (without loading it), and
the sentence-transformers implementation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.engines.embedded import EMBEDDED_PREFIX, minilm_path
from pipeline.hashing import stable_hash, tree_hash
from schemas.config import EMBEDDED_MINILM, EmbeddingConfig
from schemas.errors import ConfigError, EngineError


class Embedder(Protocol):
    """What the stage needs from a model: L2-normalised float32 vectors for texts."""

    model_key: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def resolve_embedding_model(model: str) -> str:
    """``embedded:all-minilm-l6-v2`` → the folder inside the wheel; others unchanged."""
    if model == EMBEDDED_MINILM:
        return str(minilm_path())
    if model.startswith(EMBEDDED_PREFIX):
        raise ConfigError(
            f"unknown embedded embedding model '{model}'; the embedded one is '{EMBEDDED_MINILM}'"
        )
    return model


def embedding_model_key(cfg: EmbeddingConfig) -> str:
    """Identity of the vectors a config produces, computed without loading the model."""
    path = resolve_embedding_model(cfg.model)
    ident = tree_hash(path) if Path(path).exists() else path
    return stable_hash(ident, cfg.max_seq_length, "l2", length=24)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model; vectors are L2-normalised float32."""

    def __init__(self, cfg: EmbeddingConfig, model_key: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_embedding_model(cfg.model)
        self.cfg = cfg
        self.model_key = model_key or embedding_model_key(cfg)
        device = cfg.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.st = SentenceTransformer(path, device=device)
        except Exception as exc:
            raise EngineError(
                f"sentence-transformers could not load '{cfg.model}' ({path}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if cfg.max_seq_length is not None:
            self.st.max_seq_length = cfg.max_seq_length
        get_dim = (
            getattr(self.st, "get_embedding_dimension", None)
            or self.st.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        before = torch.get_num_threads()
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        try:
            vecs = self.st.encode(
                list(texts),
                batch_size=self.cfg.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        finally:
            if self.cfg.num_threads:
                torch.set_num_threads(before)
        return np.asarray(vecs, dtype=np.float32)  # unit vectors: normalize_embeddings
