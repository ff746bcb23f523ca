"""The bodies of the flow's core stages: aggregate, margins and denoise as one run wires
them (the extra flags and annotations each adds from other modules), over tables, with
the run config. The Prefect tasks in ``flows/curate.py`` only read the inputs, key the
stage (``*_key``: the versions of every pipeline module the body calls and the config it
reads), call the body through ``run_stage`` and return the output's reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import generation, margins
from pipeline.aggregate import aggregation, length
from pipeline.annotate import injection, qualify
from pipeline.chain import aggregate_kwargs, denoise_p_model, gold_prefix
from pipeline.denoise import denoise
from pipeline.stage import StageResult
from schemas.config import RunConfig
from schemas.tables import VOTES

Key = tuple[int | list[int], Any]  # (the called modules' versions, the key's config part)


def model_maps(cfg: RunConfig) -> dict[str, dict[str, str] | None]:
    """``judge_models`` / ``policy_models`` of :func:`qualify_judges` (self-preference)."""
    judges = {j.name: j.model.model for j in [*cfg.judge.judges, *cfg.rubric_judges()]}
    policies = (
        {p.name: p.model.model for p in cfg.generate.policies}
        if cfg.input.kind == "prompts"
        else None
    )
    return {"judge_models": judges, "policy_models": policies}


def aggregate_key(cfg: RunConfig, label_annotators: list[str]) -> Key:
    """The aggregate stage's key parts (length control adds the candidates' lengths)."""
    versions = [aggregation.STAGE_VERSION, qualify.STAGE_VERSION]
    if cfg.aggregate.length_control != "off":
        versions.append(length.STAGE_VERSION)
    gold = gold_prefix(cfg)
    part = [cfg.aggregate.model_dump(mode="json"), sorted(label_annotators)]
    return versions, part + ([{"gold_prefix": gold}] if gold else [])


def aggregate_stage(
    vote_tables: list[pa.Table],
    candidates: pa.Table | None,
    cfg: RunConfig,
    label_annotators: list[str],
) -> StageResult:
    """Every annotator's votes → comparisons and scores (``aggregate_votes`` with the run's
    settings; ``candidates`` for length control, else None), plus the judges'
    qualification on the pairs a gold annotator decided."""
    votes = pa.concat_tables(vote_tables) if vote_tables else VOTES.empty_table()
    lengths = length.candidate_lengths(candidates) if candidates is not None else None
    res = aggregation.aggregate_votes(
        votes,
        label_annotators=set(label_annotators),
        lengths=lengths,
        gold_prefix=gold_prefix(cfg),
        **aggregate_kwargs(cfg.aggregate),
    )
    qual = qualify.qualify_judges(votes, exclude=label_annotators, **model_maps(cfg))
    if qual["gold_pairs"]:
        res.info["judge_qualification"] = qual
    return res


def flags_truncated(cfg: RunConfig) -> bool:
    """Whether the margins stage flags pairs with a truncated response."""
    return cfg.input.kind == "prompts" and cfg.generate.on_truncated == "flag"


def margins_key(cfg: RunConfig, with_gpm: bool) -> Key:
    """The margins stage's key parts: margins, the injection flags and (with a GPM) its
    cycles; the flag mode changes the output for the same candidates."""
    versions = [margins.STAGE_VERSION, injection.STAGE_VERSION]
    if with_gpm:
        from pipeline.gpm.model import STAGE_VERSION as GPM_VERSION

        versions.append(GPM_VERSION)
    part = cfg.margins.model_dump(mode="json")
    return versions, [part, "flag_truncated"] if flags_truncated(cfg) else part


def margins_stage(
    comparisons: pa.Table,
    scores: pa.Table,
    candidates: pa.Table,
    cfg: RunConfig,
    *,
    cycles: pa.Table | None = None,
    candidate_embeddings: pa.Table | None = None,
) -> StageResult:
    """Comparisons → oriented pairs with margins, flagged for text aimed at the judge,
    truncated responses (``generate.on_truncated: flag``), preference cycles (the GPM's
    ``cycles``) and indistinguishable responses (with embeddings)."""
    res = margins.compute_margins(comparisons, scores, cfg.margins)
    suspects = injection.suspect_candidates(candidates)  # flagged with or without judges
    res.outputs["pairs"], n_flagged = injection.flag_pairs(res.outputs["pairs"], suspects)
    res.info["injection_suspects"] = {
        "candidates": len(suspects),
        "pairs": n_flagged,
        "examples": dict(list(suspects.items())[:20]),
    }
    if flags_truncated(cfg):
        res.outputs["pairs"], res.info["truncated_pairs"] = generation.flag_truncated_pairs(
            res.outputs["pairs"], candidates
        )
    if cycles is not None:
        from pipeline.gpm.cycles import flag_cyclic_pairs, flag_cyclic_prompts

        cyc = flag_cyclic_prompts(cycles)
        res.outputs["pairs"] = flag_cyclic_pairs(res.outputs["pairs"], cyc)
        res.info["cyclic"] = cyc.counts
    if candidate_embeddings is not None:
        from pipeline.embeddings import cosine_similarity_pairs

        pairs_t = res.outputs["pairs"]
        sims = cosine_similarity_pairs(candidate_embeddings, pairs_t)
        res.outputs["pairs"] = margins.with_similarity(
            pairs_t, sims, cfg.margins.indistinguishable_tau
        )
        res.info["indistinguishable"] = sum(
            "indistinguishable" in f for f in res.outputs["pairs"].column("flags").to_pylist()
        )
    return res


def denoise_uses(cfg: RunConfig, have_agg: bool) -> tuple[bool, bool]:
    """(peer review runs if embeddings exist, the aggregate's posterior is read)."""
    posterior = cfg.denoise.method == "posterior"
    peer_review = cfg.denoise.peer_review is True or (
        cfg.denoise.peer_review is None and not posterior
    )
    return peer_review, have_agg and (posterior or cfg.denoise.judge_posterior)


def denoise_key(cfg: RunConfig, label_source: str | None) -> Key:
    """The denoise stage's key parts."""
    part = [cfg.denoise.model_dump(mode="json"), cfg.margins.model_dump(mode="json")]
    return denoise.STAGE_VERSION, [*part, label_source]


def denoise_stage(
    pairs_t: pa.Table,
    cfg: RunConfig,
    label_source: str | None,
    *,
    comparisons: pa.Table | None = None,
    embeddings: tuple[pa.Table, pa.Table] | None = None,
) -> StageResult:
    """Pairs → kept, flipped and dropped pairs (``denoise_pairs`` with the run's settings):
    ``comparisons`` give the aggregate's posterior (method ``posterior``, or the judges-only
    one for ``weights``); ``embeddings`` (candidates, prompts) feed the peer review."""
    # prompt runs: every pair is oriented by its own votes (annotator "aggregate")
    kw: dict[str, Any] = {
        "label_source": label_source if cfg.input.kind == "pairs" else [None] * pairs_t.num_rows
    }
    if comparisons is not None:
        p_model = denoise_p_model(pairs_t, comparisons, cfg.denoise)
        if p_model is not None:
            kw["p_model"] = p_model
    if embeddings is not None and pairs_t.num_rows:
        kw.update(_aligned(pairs_t, *embeddings))
    return denoise.denoise_pairs(pairs_t, cfg.denoise, cfg.margins, **kw)


def _aligned(pairs_t: pa.Table, cand: pa.Table, prompts: pa.Table) -> dict[str, np.ndarray]:
    from pipeline.embeddings import aligned_embeddings

    return {
        "emb_chosen": aligned_embeddings(cand, pairs_t.column("chosen_id").to_pylist()),
        "emb_rejected": aligned_embeddings(cand, pairs_t.column("rejected_id").to_pylist()),
        "emb_prompt": aligned_embeddings(
            prompts, pairs_t.column("prompt_id").to_pylist(), "prompt_id"
        ),
    }
