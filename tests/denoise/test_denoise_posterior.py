"""The default denoiser (``denoise.method: posterior``) and the estimators behind it: the
EM's small-sample prior, label-correlated annotators, ties decided by the posterior and a
calibration that does not collapse onto the file's label."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.aggregate.aggregation import aggregate_votes
from pipeline.chain import aggregate_kwargs
from pipeline.denoise.denoise import (
    FLIPPED_LOW_CONFIDENCE,
    LOW_CONFIDENCE,
    denoise_pairs,
    judges_posterior,
)
from pipeline.margins import compute_margins, oriented_row
from schemas.config import AggregateConfig, DenoiseConfig, MarginConfig
from schemas.tables import PAIRS, VOTES, from_rows

MCFG = MarginConfig()
SRC = "file"


def pair(n_chosen: float, n_rejected: float, sid: str = "s") -> dict[str, Any]:
    n = n_chosen + n_rejected
    c = {
        "prompt_id": "p",
        "source_id": sid,
        "candidate_a": "x",
        "candidate_b": "y",
        "n_votes": int(n),
        "n_a": float(n_chosen),
        "n_b": float(n_rejected),
        "n_tie": 0.0,
        "n_null": 0,
        "p_a": n_chosen / n if n else None,
        "label": "a",
    }
    return oriented_row(c, True, MCFG, {})


def decide(rows: list[dict], p_model: list[float] | None = None, **kw: Any):
    t = from_rows(rows, PAIRS, "pairs")
    res = denoise_pairs(
        t,
        DenoiseConfig(**kw),
        MCFG,
        label_source=SRC,
        p_model=None if p_model is None else np.array(p_model),
    )
    assert res.counts.rows_in == len(rows)
    return res


@pytest.mark.parametrize(
    "q, decision, reason", [(0.9, "keep", None), (0.1, "flip", FLIPPED_LOW_CONFIDENCE)]
)
def test_a_raw_tie_is_decided_by_the_posterior(q: float, decision: str, reason) -> None:
    res = decide([pair(2, 2)], [q])
    out = res.outputs["pairs"].to_pylist()
    assert len(out) == 1 and out[0]["decision"] == decision and out[0]["reason"] == reason
    assert out[0]["weight"] == pytest.approx(max(q, 1 - q))


def test_a_tie_without_a_posterior_is_dropped_as_tie() -> None:
    res = decide([pair(2, 2)])  # q = the vote share, exactly 1/2
    assert res.counts.dropped == {"tie": 1}


def test_the_posterior_band_drops_what_it_cannot_decide() -> None:
    rows = [pair(3, 1, "k"), pair(3, 1, "d"), pair(3, 1, "f")]
    res = decide(rows, [0.8, 0.4, 0.2], flip_below=0.3, drop_below=0.5)
    out = {r["source_id"]: r["decision"] for r in res.outputs["pairs"].to_pylist()}
    assert out == {"k": "keep", "f": "flip"}
    assert res.counts.dropped == {LOW_CONFIDENCE: 1}
    assert res.dropped.column("source_id").to_pylist() == ["d"]


def test_p_model_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(Exception, match="p_model has 2 values for 1 pairs"):
        decide([pair(3, 1)], [0.5, 0.5])


# --------------------------------------------------------------------- through aggregation


def simulate(
    n: int, noise: float, accs: list[float], seed: int = 0, *, copier: float | None = None
) -> tuple[pa.Table, np.ndarray]:
    """Every pair voted on by the file's label and by annotators of accuracy ``accs``
    (and one that copies the label with probability ``copier``)."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < noise
    rows = []

    side = rng.random(n) < 0.5  # the label's side: a (True) or b, as canonical order has it

    def vote(i: int, name: str, says_label: bool) -> None:
        rows.append(
            dict(
                prompt_id=f"p{i}",
                source_id=f"s{i}",
                candidate_a="x" + str(i),
                candidate_b="y" + str(i),
                annotator=name,
                order=None,
                verdict="a" if says_label == side[i] else "b",
                prob_a=None,
                raw_output=None,
                parse_error=None,
            )
        )

    for i in range(n):
        vote(i, SRC, True)  # the file's label
        for j, acc in enumerate(accs):
            right = rng.random() < acc
            vote(i, f"ann{j}", right != wrong[i])
        if copier is not None:
            own = (rng.random() < 0.8) != wrong[i]
            vote(i, "copier", True if rng.random() < copier else own)
    return pa.Table.from_pylist(rows, schema=VOTES), wrong


def curate(votes: pa.Table, acfg: AggregateConfig, dcfg: DenoiseConfig | None = None):
    agg = aggregate_votes(
        votes, label_annotators={SRC}, **{**aggregate_kwargs(acfg), "method": "dawid_skene"}
    )
    pairs = compute_margins(agg.outputs["comparisons"], agg.outputs["scores"], MCFG).outputs[
        "pairs"
    ]
    den = denoise_pairs(
        pairs,
        dcfg or DenoiseConfig(),
        MCFG,
        label_source=SRC,
        p_model=judges_posterior(pairs, agg.outputs["comparisons"], "p_a"),
    )
    return agg, den


def flips(den) -> dict[str, bool]:
    return {r["source_id"]: r["decision"] == "flip" for r in den.outputs["pairs"].to_pylist()}


def test_calibration_does_not_collapse_onto_a_30_percent_wrong_label() -> None:
    votes, wrong = simulate(600, 0.3, [0.75, 0.75, 0.75, 0.75])
    agg, den = curate(votes, AggregateConfig())
    rel = agg.info["annotator_reliability"]
    assert 0.6 < rel[SRC] < 0.8  # the label's balanced accuracy, ~0.7 in truth
    f = flips(den)  # a dropped pair is missing: flagged, not flipped
    flagged = np.array([f.get(f"s{i}", True) for i in range(600)])
    flipped = np.array([f.get(f"s{i}", False) for i in range(600)])
    # the oracle flags about 74% of the wrong labels here (3 or 4 of 4 votes against)
    assert flagged[wrong].mean() > 0.7 and flipped[wrong].mean() > 0.5
    # (the oracle flips ~5% of the clean ones: 3 or 4 of 4 votes against them)
    assert flipped[~wrong].mean() < 0.07 and flagged[~wrong].mean() < 0.12


def test_a_label_copier_is_detected_and_split() -> None:
    votes, wrong = simulate(800, 0.3, [0.8, 0.75, 0.7], seed=1, copier=0.7)
    agg_off, den_off = curate(votes, AggregateConfig(label_correlation="off"))
    agg, den = curate(votes, AggregateConfig())
    assert list(agg.info["label_correlated"]) == ["copier"]
    assert agg.info["label_correlated"]["copier"]["z"] > 4
    assert "label_correlated" not in agg_off.info
    # the reported reliabilities are the refit's: the label (70% right) and its copier no
    # longer look near-perfect, as they do in the fit that treats them as independent
    rel, rel_off = agg.info["annotator_reliability"], agg_off.info["annotator_reliability"]
    assert rel_off[SRC] > 0.8 and 0.6 < rel[SRC] < 0.8
    assert set(agg.info["label_correlated"]["copier"]["reliability_given_label"]) == {"a", "b"}

    def kept_accuracy(den) -> float:
        out = den.outputs["pairs"].to_pylist()
        return np.mean([(r["decision"] == "flip") == wrong[int(r["source_id"][1:])] for r in out])

    assert kept_accuracy(den) > kept_accuracy(den_off) + 0.02


def test_honest_annotators_are_not_flagged() -> None:
    votes, _ = simulate(800, 0.3, [0.85, 0.75, 0.7, 0.6], seed=2)
    agg, _ = curate(votes, AggregateConfig())
    assert agg.info["label_correlated"] == {}


def test_small_file_prior_keeps_the_label_off_perfect_reliability() -> None:
    """10 pairs, one contradicted 3-0 by annotators that agree with the label elsewhere:
    the pair is flipped and no reliability sits on the boundary (the reliability probe's
    D13: the weights' EM fitted the label at 1.0 and kept such a pair)."""
    rows = []
    for i in range(10):
        against = i == 0
        for name in (SRC, "a1", "a2", "a3"):
            says_a = name == SRC or not against
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    source_id=f"s{i}",
                    candidate_a=f"x{i}",
                    candidate_b=f"y{i}",
                    annotator=name,
                    order=None,
                    verdict="a" if says_a else "b",
                    prob_a=None,
                    raw_output=None,
                    parse_error=None,
                )
            )
    votes = pa.Table.from_pylist(rows, schema=VOTES)
    agg_ml, _ = curate(votes, AggregateConfig(em_prior=None, label_correlation="off"))
    agg, den = curate(votes, AggregateConfig())
    assert flips(den)["s0"] is True
    assert max(agg_ml.info["annotator_reliability"].values()) > 0.99
    assert max(agg.info["annotator_reliability"].values()) < 0.95
