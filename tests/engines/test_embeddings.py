"""Embeddings: the real MiniLM from the wheel (loaded once), the cache, cosine similarity."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.embeddings import (
    CANDIDATE_EMBEDDINGS,
    PROMPT_EMBEDDINGS,
    EmbeddingCache,
    EmbeddingConfig,
    SentenceTransformerEmbedder,
    compute_embeddings,
    cosine_similarity_pairs,
    embed_texts,
    embedding_model_key,
    embeddings_matrix,
    embeddings_table,
    resolve_embedding_model,
)
from pipeline.stage import Reason
from schemas.errors import ConfigError
from schemas.tables import CANDIDATES, PAIRS, PROMPTS, check_table, from_rows

CFG = EmbeddingConfig()


def _prompts() -> pa.Table:
    return from_rows(
        [
            {
                "prompt_id": "p0",
                "source_id": "s",
                "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
                "source": "t",
                "meta": None,
            },
            {
                "prompt_id": "p1",
                "source_id": "s",
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Name a prime number."},
                ],
                "source": "t",
                "meta": None,
            },
        ],
        PROMPTS,
        "prompts",
    )


TEXTS = {
    "c0": "Put the egg in boiling water for about nine minutes.",
    "c1": "Boil the egg in hot water for roughly nine minutes.",
    "c2": "Seven is a prime number.",
    "c3": None,
}


def _candidates(texts: dict[str, str | None] = TEXTS) -> pa.Table:
    return from_rows(
        [
            {
                "prompt_id": "p0" if i < 2 else "p1",
                "source_id": "s",
                "candidate_id": c,
                "policy": "pol",
                "sample_index": i,
                "text": t,
                "finish_reason": "stop",
                "n_prompt_tokens": 3,
                "n_output_tokens": 3,
                "request_hash": None,
                "truncated": False,
                "error": None,
            }
            for i, (c, t) in enumerate(texts.items())
        ],
        CANDIDATES,
        "candidates",
    )


class HashEmbedder:
    """Deterministic unit vectors from text hashes; counts what it embeds."""

    def __init__(self, key: str, dim: int = 8):
        self.model_key, self.dim, self.seen = key, dim, []

    def encode(self, texts):
        self.seen.extend(texts)
        out = [
            np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], np.uint8).astype(
                np.float32
            )
            - 127.5
            for t in texts
        ]
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)


@pytest.fixture(scope="module")
def minilm():
    return SentenceTransformerEmbedder(CFG)


def test_minilm_vectors_normalised_and_meaningful(minilm, tmp_path):
    res = compute_embeddings(
        _prompts(), _candidates(), CFG, get_embedder=lambda: minilm, cache_dir=tmp_path
    )
    p = check_table(res.outputs["prompt_embeddings"], PROMPT_EMBEDDINGS, "prompt_embeddings")
    c = check_table(
        res.outputs["candidate_embeddings"], CANDIDATE_EMBEDDINGS, "candidate_embeddings"
    )
    assert p.num_rows == 2 and c.column("candidate_id").to_pylist() == ["c0", "c1", "c2"]
    _, mat = embeddings_matrix(c)
    assert mat.dtype == np.float32 and mat.shape == (3, 384)
    assert np.allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    sim = cosine_similarity_pairs(c, [("c0", "c1"), ("c0", "c2")])
    assert sim[0] > 0.8 and sim[1] < 0.5  # paraphrases vs unrelated answers
    # the vectors are MiniLM's own (normalised) sentence embeddings
    direct = minilm.st.encode([TEXTS["c2"]], normalize_embeddings=True)[0]
    assert np.allclose(mat[2], direct, atol=1e-5)
    assert res.counts.to_dict()["dropped"] == {Reason.EMPTY_OUTPUT.value: 1}
    assert res.counts.rows_in == 2 + 4 and res.counts.kept == 5
    assert res.info["dim"] == 384 and res.info["embedded"] == 5


def test_num_threads_is_applied_and_restored(minilm, monkeypatch):
    import torch

    before = torch.get_num_threads()
    seen = []
    real = minilm.st.encode
    monkeypatch.setattr(
        minilm.st, "encode", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k)
    )
    monkeypatch.setattr(minilm, "cfg", EmbeddingConfig(num_threads=1))
    vec = minilm.encode(["Seven is a prime number."])
    assert seen == [1] and torch.get_num_threads() == before
    assert vec.shape == (1, 384)


def test_cache_reuses_vectors_without_loading_the_model(minilm, tmp_path):
    first = compute_embeddings(
        _prompts(), _candidates(), CFG, get_embedder=lambda: minilm, cache_dir=tmp_path
    )

    def no_model():
        raise AssertionError("a fully cached rerun must not load the model")

    again = compute_embeddings(
        _prompts(), _candidates(), CFG, get_embedder=no_model, cache_dir=tmp_path
    )
    assert again.info["reused"] == 5 and again.info["embedded"] == 0
    for name in ("prompt_embeddings", "candidate_embeddings"):
        assert again.outputs[name].equals(first.outputs[name])
    # one new text: only it is embedded
    more = dict(TEXTS, c4="Two is the only even prime.")
    res = compute_embeddings(
        _prompts(), _candidates(more), CFG, get_embedder=lambda: minilm, cache_dir=tmp_path
    )
    assert res.info["embedded"] == 1 and res.info["reused"] == 5


def test_embed_texts_dedups_and_keys(tmp_path):
    emb = HashEmbedder("k1")
    cache = EmbeddingCache(tmp_path, "k1")
    vecs, stats = embed_texts(["a", "b", "a", "c"], lambda: emb, model_key="k1", cache=cache)
    assert emb.seen == ["a", "b", "c"] and vecs.shape == (4, 8)
    assert np.array_equal(vecs[0], vecs[2])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    assert stats["distinct"] == 3 and stats["embedded"] == 3
    with pytest.raises(Exception, match="does not match"):
        embed_texts(["zzz"], lambda: HashEmbedder("other"), model_key="k1", cache=cache)
    empty, _ = embed_texts([], lambda: emb, model_key="k1", cache=cache)
    assert empty.shape[0] == 0


def test_cache_compaction_keeps_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(EmbeddingCache, "MAX_SHARDS", 3)
    cache = EmbeddingCache(tmp_path, "k")
    rng = np.random.default_rng(0)
    written = {}
    for i in range(5):
        v = rng.normal(size=(2, 4)).astype(np.float32)
        hs = [f"h{i}a", f"h{i}b"]
        cache.put(hs, v)
        written.update(zip(hs, v))
    assert len(cache._shards()) <= 3
    got = cache.get(list(written) + ["missing"])
    assert set(got) == set(written)
    assert all(np.array_equal(got[h], written[h]) for h in written)
    assert not list(cache.dir.glob(".tmp-*"))


def test_cosine_similarity_pairs_table_and_edge_cases():
    emb = embeddings_table(
        ["x", "y", "z"], np.array([[1, 0], [0.6, 0.8], [0, 0]], np.float32), "candidate_id"
    )
    pairs = from_rows(
        [
            {
                "pair_id": "q",
                "prompt_id": "p",
                "source_id": "s",
                "chosen_id": "x",
                "rejected_id": "y",
                "p_hat": None,
                "disagreement": None,
                "n_votes": 0,
                "margin": None,
                "weight": None,
                "label_status": "unknown",
                "similarity": None,
                "flags": [],
                "decision": "keep",
                "reason": None,
                "score_chosen": None,
                "score_rejected": None,
                "curriculum_stage": None,
                "split": None,
            }
        ],
        PAIRS,
        "pairs",
    )
    assert cosine_similarity_pairs(emb, pairs) == [0.6]
    assert cosine_similarity_pairs(emb, [("x", "z"), ("x", "nope"), ("y", "y")]) == [
        None,
        None,
        1.0,
    ]
    assert cosine_similarity_pairs(
        embeddings_table([], np.zeros((0, 4)), "candidate_id"), [("a", "b")]
    ) == [None]


def test_config_and_model_resolution():
    assert resolve_embedding_model(CFG.model).endswith("model")
    with pytest.raises(ConfigError):
        resolve_embedding_model("embedded:nope")
    with pytest.raises(ValidationError):
        EmbeddingConfig(batch_sizes=3)
    # the key changes with max_seq_length and is stable otherwise
    assert embedding_model_key(CFG) == embedding_model_key(EmbeddingConfig())
    assert embedding_model_key(CFG) != embedding_model_key(EmbeddingConfig(max_seq_length=128))
