"""The core chain's arguments in one place: aggregate → margins → denoise, as the flow
runs it. The flow's tasks call each stage through these helpers, and the benchmarks call
:func:`run_core_chain`, so a bench always measures exactly the product's defaults.

>>> from schemas.config import RunConfig
>>> sorted(aggregate_kwargs(RunConfig().aggregate))[:3]
['class_prior', 'class_prior_lr', 'correlation_z']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.aggregate.aggregation import aggregate_votes
from pipeline.denoise.denoise import denoise_pairs, judges_posterior
from pipeline.margins import compute_margins
from pipeline.stage import StageResult
from schemas.config import HUMAN_PREFIX, AggregateConfig, DenoiseConfig, RunConfig


def aggregate_kwargs(acfg: AggregateConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`aggregate_votes` for an ``aggregate`` config."""
    return {
        "method": acfg.method,
        "use_logprobs": acfg.use_logprobs,
        "judges_method": acfg.judges_method,
        "prior": acfg.em_prior,
        "verifier_prior": acfg.verifier_prior,
        "class_prior": acfg.class_prior,
        "class_prior_lr": acfg.class_prior_lr,
        "label_correlation": acfg.label_correlation,
        "correlation_z": acfg.correlation_z,
        "length_control": acfg.length_control,
        "length_min_diff": acfg.length_min_diff,
        "length_z": acfg.length_z,
    }


def gold_prefix(cfg: RunConfig) -> str | None:
    """The annotators that are gold anchors in the aggregation: the reviewers
    (``human:*``) when ``review.anchor`` is on, else none."""
    return HUMAN_PREFIX if cfg.review.anchor else None


def denoise_p_model(
    pairs: pa.Table, comparisons: pa.Table, dcfg: DenoiseConfig
) -> np.ndarray | None:
    """``p_model`` for :func:`denoise_pairs`: the posterior over every annotator
    (``p_a``) for method ``posterior``, the judges-only one (``p_a_judges``) for method
    ``weights`` with ``judge_posterior``, else None."""
    if dcfg.method == "posterior":
        return judges_posterior(pairs, comparisons, "p_a")
    if dcfg.judge_posterior:
        return judges_posterior(pairs, comparisons, "p_a_judges")
    return None


@dataclass
class CoreChain:
    aggregate: StageResult
    margins: StageResult
    denoise: StageResult


def run_core_chain(
    votes: pa.Table,
    cfg: RunConfig,
    *,
    label_annotators: set[str] | frozenset[str] = frozenset(),
    label_source: str | Sequence[str | None] | None = None,
    embeddings: Callable[[pa.Table], dict[str, np.ndarray]] | None = None,
) -> CoreChain:
    """aggregate → margins → denoise on a VOTES table with ``cfg``'s settings, as the flow
    runs them (without the stage store). ``embeddings``: given the margins' pairs, the
    ``emb_chosen`` / ``emb_rejected`` / ``emb_prompt`` arrays aligned with them (only
    used when peer review would run)."""
    agg = aggregate_votes(
        votes,
        label_annotators=set(label_annotators),
        gold_prefix=gold_prefix(cfg),
        **aggregate_kwargs(cfg.aggregate),
    )
    comps = agg.outputs["comparisons"]
    mar = compute_margins(comps, agg.outputs["scores"], cfg.margins)
    pairs = mar.outputs["pairs"]
    kw: dict[str, Any] = {"label_source": label_source}
    p_model = denoise_p_model(pairs, comps, cfg.denoise)
    if p_model is not None:
        kw["p_model"] = p_model
    if embeddings is not None and pairs.num_rows:
        kw.update(embeddings(pairs))
    den = denoise_pairs(pairs, cfg.denoise, cfg.margins, **kw)
    return CoreChain(agg, mar, den)
