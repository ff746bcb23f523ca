"""Tests for Dawid–Skene EM (pipeline/aggregate/em.py) and the EM methods of aggregate_votes.

Synthetic annotators with known truth; crowd-kit (test-only dependency) as the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from crowdkit.aggregation import DawidSkene, OneCoinDawidSkene
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.aggregate.aggregation import aggregate_votes
from pipeline.aggregate.em import EMResult, fit_dawid_skene, fit_one_coin
from schemas.errors import SchemaError
from schemas.tables import COMPARISONS, VOTES, check_table, from_rows

PROPS = settings(max_examples=60, deadline=None)
# crowd-kit 1.4.2 under pandas 3 warns about its own in-place calls; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The (inplace|copy) keyword")
FITS = {"dawid_skene": (fit_dawid_skene, DawidSkene), "one_coin": (fit_one_coin, OneCoinDawidSkene)}
A, B, TIE = 0, 1, 2

# --------------------------------------------------------------------------- helpers


def synth(
    n_items: int,
    acc: np.ndarray,
    *,
    votes_per_item: tuple[int, int] = (1, 6),
    prior_a: float = 0.4,
    seed: int = 0,
    repeats: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Votes (item, annotator, label ∈ {a, b}) from annotators with per-class accuracy
    ``acc[w, c]`` = P(says c | truth c); each item gets a random subset of annotators
    (with ``repeats`` an annotator may vote twice on an item)."""
    rng = np.random.default_rng(seed)
    n_annot = acc.shape[0]
    truth = (rng.random(n_items) >= prior_a).astype(np.int64)  # 0 = a, 1 = b
    k = rng.integers(votes_per_item[0], votes_per_item[1] + 1, n_items)
    item = np.repeat(np.arange(n_items), k)
    if repeats:
        annot = rng.integers(0, n_annot, item.size)
    else:  # distinct annotators per item: the first k of a random permutation
        perm = np.argsort(rng.random((n_items, n_annot)), axis=1)
        annot = perm[item, np.arange(item.size) - np.repeat(np.cumsum(k) - k, k)]
    right = rng.random(item.size) < acc[annot, truth[item]]
    label = np.where(right, truth[item], 1 - truth[item])
    return item, annot, label, truth


def crowdkit_posterior(
    cls: type, item: np.ndarray, annot: np.ndarray, label: np.ndarray, n_items: int, **kw: Any
) -> tuple[np.ndarray, Any]:
    df = pd.DataFrame({"task": item, "worker": annot, "label": label})
    model = cls(**kw).fit(df)
    return model.probas_.reindex(index=np.arange(n_items), columns=[A, B]).to_numpy(), model


def vote(
    verdict: str | None,
    annotator: str,
    a: str = "x",
    b: str = "y",
    prob_a: float | None = None,
    order: str | None = None,
) -> dict[str, Any]:
    return {
        "prompt_id": "p",
        "source_id": "s",
        "candidate_a": a,
        "candidate_b": b,
        "annotator": annotator,
        "order": order,
        "verdict": verdict,
        "prob_a": prob_a,
        "raw_output": None,
        "parse_error": None if verdict else "no verdict",
    }


def votes_from_codes(
    item: np.ndarray, annot: np.ndarray, label: np.ndarray, names: list[str] | None = None
) -> Any:
    names = names or [f"w{w}" for w in range(int(annot.max()) + 1)]
    return from_rows(
        [
            vote(("a", "b", "tie")[lab], names[w], a=f"c{i:04d}a", b=f"c{i:04d}b")
            for i, w, lab in zip(item.tolist(), annot.tolist(), label.tolist())
        ],
        VOTES,
        "votes",
    )


def check_posterior(res: EMResult, n_items: int) -> None:
    p = res.posterior
    assert p.shape == (n_items, 2)
    assert np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(p <= 1)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.all(np.isfinite(res.history))


# Asymmetric confusion matrices: acc[w, c] = P(says c | truth c), plus a spammer.
ACC = np.array(
    [
        [0.9, 0.6],
        [0.7, 0.95],
        [0.8, 0.8],
        [0.6, 0.75],
        [0.95, 0.55],
        [0.5, 0.5],
        [0.85, 0.7],
        [0.65, 0.9],
    ]
)

# =========================================================================== crowd-kit


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin"])
@pytest.mark.parametrize("seed, repeats", [(0, False), (2, True)])
def test_same_iterations_match_crowdkit(method: str, seed: int, repeats: bool) -> None:
    """Same init (majority), same number of iterations: the same EM up to rounding."""
    ours, theirs = FITS[method]
    item, annot, label, _ = synth(1000, ACC, seed=seed, repeats=repeats)
    res = ours(item, annot, label, tol=-np.inf, max_iter=15)
    ref, model = crowdkit_posterior(theirs, item, annot, label, 1000, n_iter=15, tol=-np.inf)
    assert res.n_iter == len(model.loss_history_) == 15 and not res.converged
    # crowd-kit floors its returned posteriors at 1e-10 (in place, in its loss), we do not
    assert np.abs(res.posterior - ref).max() < 1e-9
    assert np.array_equal(res.labels(), ref.argmax(axis=1))
    assert np.allclose(res.priors, model.priors_.reindex([A, B]).to_numpy(), atol=1e-9)
    if method == "one_coin":
        assert np.allclose(res.skills, model.skills_.reindex(range(len(ACC))).to_numpy(), atol=1e-9)
    else:
        err = model.errors_  # index (worker, observed label), columns true label
        for (w, k), row in err.iterrows():
            assert np.allclose(res.confusion[w, k], row[[A, B]].to_numpy(), atol=1e-9)


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin"])
def test_three_classes_match_crowdkit(method: str) -> None:
    """The code is written for C classes: with tie as a third *class*, as crowd-kit has it."""
    ours, theirs = FITS[method]
    rng = np.random.default_rng(6)
    n, n_annot = 400, 5
    truth = rng.integers(0, 3, n)
    item = np.repeat(np.arange(n), 4)
    annot = rng.integers(0, n_annot, item.size)
    right = rng.random(item.size) < np.linspace(0.5, 0.9, n_annot)[annot]
    label = np.where(right, truth[item], rng.integers(0, 3, item.size))
    res = ours(item, annot, label, n_classes=3, tol=-np.inf, max_iter=10)
    df = pd.DataFrame({"task": item, "worker": annot, "label": label})
    model = theirs(n_iter=10, tol=-np.inf).fit(df)
    ref = model.probas_.reindex(index=np.arange(n), columns=[0, 1, 2]).to_numpy()
    assert res.posterior.shape == (n, 3) and np.abs(res.posterior - ref).max() < 1e-9


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin"])
@pytest.mark.parametrize("seed", [3])
def test_default_settings_match_crowdkit(method: str, seed: int) -> None:
    """Each library with its own defaults (tol 1e-5 on the same per-vote loss, at most 100
    iterations): the same stopping iteration, hence the same labels and posteriors."""
    ours, theirs = FITS[method]
    item, annot, label, _ = synth(1000, ACC, seed=seed)
    res = ours(item, annot, label)
    ref, model = crowdkit_posterior(theirs, item, annot, label, 1000)
    assert res.converged and res.n_iter == len(model.loss_history_) < 100
    assert np.allclose(res.history, model.loss_history_, rtol=0, atol=1e-9)
    assert np.array_equal(res.labels(), ref.argmax(axis=1))
    assert np.abs(res.posterior - ref).max() < 1e-9
    # tol 1e-5 stops near, not at, EM's fixed point (what tol 1e-12 reaches): the labels
    # agree, the posteriors are close on average; the worst item can still be a few % off
    full = ours(item, annot, label, tol=1e-12, max_iter=2000)
    assert (res.labels() == full.labels()).mean() >= 0.99
    diff = np.abs(res.posterior - full.posterior)[:, A]
    assert diff.mean() < 0.01 and diff.max() < 0.1


# =========================================================================== recovery


def test_spammer_and_adversary_ds_beats_majority() -> None:
    # three decent annotators, a spammer (coin flips) and an adversary (mostly wrong,
    # consistently): majority is barely better than chance, DS reads the adversary backwards.
    # (With as many adversaries as good annotators the model is symmetric and EM may land on
    # the flipped solution: no method can tell those apart without a majority of good votes.)
    acc = np.array([[0.8, 0.75], [0.7, 0.75], [0.75, 0.7], [0.5, 0.5], [0.1, 0.15]])
    item, annot, label, truth = synth(600, acc, votes_per_item=(5, 5), seed=8)
    majority = np.bincount(item, weights=(label == A)) / np.bincount(item)
    maj_acc = ((majority < 0.5).astype(int) == truth).mean()
    res = fit_dawid_skene(item, annot, label)
    ds_acc = (res.labels() == truth).mean()
    assert ds_acc >= 0.88 and ds_acc > maj_acc + 0.15
    rel = res.reliability()
    assert rel[3] == pytest.approx(0.5, abs=0.1)  # spammer: chance
    assert rel[4] < 0.25  # adversary: reliably wrong, which DS uses
    assert min(rel[:3]) > 0.65
    oc = fit_one_coin(item, annot, label)
    assert (oc.labels() == truth).mean() >= 0.88
    assert oc.skills[4] < 0.25 and oc.skills[3] == pytest.approx(0.5, abs=0.1)


def test_position_biased_annotator_has_chance_reliability() -> None:
    acc = np.array([[0.8, 0.8], [0.75, 0.8], [0.85, 0.7], [1.0, 0.0]])  # w3 always says a
    item, annot, label, truth = synth(800, acc, votes_per_item=(4, 4), prior_a=0.5, seed=11)
    assert np.all(label[annot == 3] == A)
    res = fit_dawid_skene(item, annot, label)
    rel = res.reliability()
    assert rel[3] == pytest.approx(0.5, abs=0.02) and rel[3] < min(rel[:3]) - 0.2
    assert res.confusion[3, A] == pytest.approx([1.0, 1.0])  # says a whatever the truth
    assert (res.labels() == truth).mean() > 0.85  # what 3 annotators of ~0.78 allow
    # One-coin cannot represent "says a whatever the truth": its likelihood is higher with
    # w3 an expert and every item "a" (log 1 for w3's votes), and EM goes there — as
    # crowd-kit's OneCoinDawidSkene does on the same votes. Split by order (as the
    # pipeline's annotators are), the bias cancels: test_position_bias_through_aggregate.
    oc = fit_one_coin(item, annot, label)
    ref, model = crowdkit_posterior(OneCoinDawidSkene, item, annot, label, 800)
    assert oc.skills[3] == pytest.approx(1.0) and (oc.labels() == A).all()
    assert np.allclose(oc.skills, model.skills_.sort_index().to_numpy())


def test_position_bias_through_aggregate_votes() -> None:
    """Annotators split by order: a judge that always picks the first response says "a" in
    order ab and "b" in order ba; both halves get chance reliability under Dawid–Skene.

    (One-coin cannot model a constant annotator even split by order: "all b, the ab half
    always wrong, the ba half always right" fits its votes perfectly and EM collapses
    there, as in test_position_biased_annotator_has_chance_reliability.)"""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(300):
        t = "a" if rng.random() < 0.5 else "b"
        for j, acc in (("g1", 0.85), ("g2", 0.8), ("g3", 0.75)):
            rows.append(
                vote(
                    t if rng.random() < acc else ({"a": "b", "b": "a"}[t]), j, a=f"x{i}", b=f"y{i}"
                )
            )
        rows.append(vote("a", "biased|t|p|ab", a=f"x{i}", b=f"y{i}", order="ab"))
        rows.append(vote("b", "biased|t|p|ba", a=f"x{i}", b=f"y{i}", order="ba"))
    res = aggregate_votes(from_rows(rows, VOTES, "votes"), method="dawid_skene")
    rel = res.info["annotator_reliability"]
    assert rel["biased|t|p|ab"] == pytest.approx(0.5, abs=0.02)
    assert rel["biased|t|p|ba"] == pytest.approx(0.5, abs=0.02)
    assert min(rel["g1"], rel["g2"], rel["g3"]) > 0.65
    assert res.info["position_consistency"]["biased|t|p"]["consistency"] == 0.0


def test_ties_are_observations_with_their_own_row() -> None:
    # w0 is accurate; w1 answers "a" when the truth is a and "tie" when it is b, so its tie
    # is evidence for b (majority would read it as ½); w2 is noisy.
    rng = np.random.default_rng(2)
    n = 400
    truth = rng.integers(0, 2, n)
    item = np.repeat(np.arange(n), 3)
    annot = np.tile([0, 1, 2], n)
    lab0 = np.where(rng.random(n) < 0.8, truth, 1 - truth)
    lab1 = np.where(truth == A, A, TIE)
    lab2 = np.where(rng.random(n) < 0.6, truth, 1 - truth)
    label = np.stack([lab0, lab1, lab2], axis=1).ravel()
    res = fit_dawid_skene(item, annot, label)
    assert res.confusion.shape == (3, 3, 2)
    assert np.allclose(res.confusion.sum(axis=1), 1.0)  # a distribution over labels per class
    assert res.confusion[1, TIE, B] > 0.95 and res.confusion[1, TIE, A] < 0.05
    assert (res.labels() == truth).mean() == 1.0  # w1's answers reveal the truth
    assert res.posterior[lab1 == TIE, B].min() > 0.9  # where w1 said tie: firmly b
    # crowd-kit's loss dips at iteration 6 here (96% right there); the ELBO still gains, so
    # EM goes on (module docstring, "Stop")
    assert np.diff(res.history)[:6].min() < 0 and res.n_iter > 20 and res.converged
    assert np.all(np.diff(res.elbo) > -1e-9)
    oc = fit_one_coin(item, annot, label)
    assert oc.confusion.shape == (3, 3, 2)
    assert oc.confusion[0, TIE, A] == pytest.approx((1 - oc.skills[0]) / 2)
    check_posterior(oc, n)


def test_tie_only_item_starts_at_half() -> None:
    res = fit_dawid_skene(
        np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([TIE, A, A]), max_iter=1
    )
    assert res.n_iter == 1 and not res.converged
    check_posterior(res, 2)


# =========================================================================== edge cases


def test_empty_input() -> None:
    e = np.zeros(0, dtype=np.int64)
    for fit in (fit_dawid_skene, fit_one_coin):
        res = fit(e, e, e)
        assert res.posterior.shape == (0, 2) and res.n_iter == 0 and res.history == []
        res = fit(e, e, e, n_items=2, n_annotators=1)
        assert np.allclose(res.posterior, 0.5) and np.isnan(res.reliability()).all()


def test_one_item_one_annotator_single_vote() -> None:
    for fit in (fit_dawid_skene, fit_one_coin):
        res = fit(np.array([0]), np.array([0]), np.array([B]))
        check_posterior(res, 1)
        assert res.labels().tolist() == [B] and res.converged


def test_one_annotator_many_items() -> None:
    label = np.array([A, B, A, A, B])
    res = fit_dawid_skene(np.arange(5), np.zeros(5, int), label)
    check_posterior(res, 5)
    assert res.labels().tolist() == label.tolist()


def test_annotator_with_a_single_vote() -> None:
    item, annot, label, truth = synth(200, ACC[:4], votes_per_item=(3, 3), seed=9)
    item = np.append(item, 0)
    annot = np.append(annot, 4)  # w4 votes once
    label = np.append(label, 1 - truth[0])
    res = fit_dawid_skene(item, annot, label)
    check_posterior(res, 200)
    assert res.confusion.shape == (5, 2, 2) and np.all(np.isfinite(res.confusion[4]))
    assert (res.labels() == truth).mean() > 0.8


@pytest.mark.parametrize("lab", [A, B])
def test_all_votes_identical(lab: int) -> None:
    item = np.repeat(np.arange(5), 3)
    annot = np.tile(np.arange(3), 5)
    for fit in (fit_dawid_skene, fit_one_coin):
        res = fit(item, annot, np.full(15, lab))
        check_posterior(res, 5)
        assert np.all(res.labels() == lab) and res.converged
        assert res.posterior[:, lab].min() > 0.99


def test_items_without_votes_take_the_prior() -> None:
    item, annot, label, _ = synth(100, ACC, seed=1)
    res = fit_dawid_skene(item, annot, label, n_items=103)
    check_posterior(res, 103)
    # their posterior is the prior of the last E-step (π moves a little in the last M-step)
    assert np.allclose(res.posterior[100:], res.posterior[100]) and np.allclose(
        res.posterior[100], res.priors, atol=1e-3
    )
    # the extra items change nothing for the others
    base = fit_dawid_skene(item, annot, label)
    assert np.allclose(res.posterior[:100], base.posterior) and res.n_iter == base.n_iter


def test_vote_order_does_not_matter() -> None:
    item, annot, label, _ = synth(300, ACC, seed=2)
    perm = np.random.default_rng(0).permutation(item.size)
    a = fit_dawid_skene(item, annot, label)
    b = fit_dawid_skene(item[perm], annot[perm], label[perm])
    assert np.allclose(a.posterior, b.posterior, atol=1e-12) and a.n_iter == b.n_iter


def test_weights_split_votes() -> None:
    item, annot, label, _ = synth(200, ACC, seed=3)
    hard = fit_dawid_skene(item, annot, label)
    # a vote split in two halves of the same label is the same vote
    two = fit_dawid_skene(
        np.tile(item, 2), np.tile(annot, 2), np.tile(label, 2), weight=np.full(2 * item.size, 0.5)
    )
    assert np.allclose(hard.posterior, two.posterior, atol=1e-9)
    # zero-weight rows are no observation
    zero = fit_dawid_skene(
        np.append(item, 0),
        np.append(annot, 0),
        np.append(label, B),
        weight=np.append(np.ones(item.size), 0.0),
    )
    assert np.allclose(hard.posterior, zero.posterior)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"item": [0, -1], "annotator": [0, 0], "label": [0, 0]}, "item codes"),
        ({"item": [0, 1], "annotator": [0, 0], "label": [0, 3], "n_labels": 3}, "label codes"),
        ({"item": [0.5], "annotator": [0], "label": [0]}, "integer codes"),
        ({"item": [0, 1], "annotator": [0], "label": [0, 0]}, "same length"),
        ({"item": [0], "annotator": [0], "label": [0], "weight": [-1.0]}, "weight"),
        ({"item": [0], "annotator": [0], "label": [0], "max_iter": 0}, "max_iter"),
        ({"item": [0], "annotator": [0], "label": [0], "n_classes": 1}, "n_classes"),
    ],
)
def test_bad_inputs(kwargs: dict[str, Any], match: str) -> None:
    args = [np.asarray(kwargs.pop(k)) for k in ("item", "annotator", "label")]
    if "weight" in kwargs:
        kwargs["weight"] = np.asarray(kwargs["weight"])
    with pytest.raises(ValueError, match=match):
        fit_dawid_skene(*args, **kwargs)


# =========================================================================== properties

# weights: 0 (no observation) or ≥ 1e-3 — the 1e-10 floors are in vote units, so votes all
# weighing ~1e-100 would be swamped by them (soft votes from logprobs weigh 1 in all)
VOTE_CODES = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 3),
        st.integers(0, 2),
        st.one_of(st.just(0.0), st.floats(1e-3, 1.0)),
    ),
    max_size=25,
)


@PROPS
@given(VOTE_CODES, st.booleans(), st.booleans())
@example([], False, False)
@example([(0, 0, 2, 1.0)], True, False)
def test_em_properties(
    rows: list[tuple[int, int, int, float]], one_coin: bool, weighted: bool
) -> None:
    item, annot, label, w = (
        (np.array(x) for x in zip(*rows))
        if rows
        else (np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    )
    fit = fit_one_coin if one_coin else fit_dawid_skene
    res = fit(
        item, annot, label, weight=w if weighted else None, n_items=6, n_annotators=4, n_labels=3
    )
    check_posterior(res, 6)
    assert np.all(np.isfinite(res.priors)) and res.priors.sum() == pytest.approx(1.0)
    rel = res.reliability()
    assert np.all((rel[~np.isnan(rel)] >= 0) & (rel[~np.isnan(rel)] <= 1))
    assert 0 <= res.n_iter <= 100
    # EM never lowers the ELBO (up to the 1e-10 floors)
    assert len(res.elbo) == len(res.history) == res.n_iter
    assert np.all(np.diff(res.elbo) > -1e-8)


# =========================================================================== aggregate_votes

AGG_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["x|y", "x|z", "y|z"]),
        st.sampled_from(["j1|ab", "j1|ba", "j2", "src"]),
        st.sampled_from(["a", "b", "tie", None]),
        st.one_of(st.none(), st.floats(0.0, 1.0)),
    ),
    max_size=14,
)


@PROPS
@given(AGG_ROWS, st.sampled_from(["dawid_skene", "one_coin"]), st.booleans())
@example([], "dawid_skene", False)
def test_aggregate_em_invariants(
    rows: list[tuple[str, str, str | None, float | None]], method: str, use_logprobs: bool
) -> None:
    v = from_rows(
        [vote(d, ann, *pair.split("|"), prob_a=p if d else None) for pair, ann, d, p in rows],
        VOTES,
        "votes",
    )
    res = aggregate_votes(v, label_annotators={"src"}, method=method, use_logprobs=use_logprobs)
    maj = aggregate_votes(v, label_annotators={"src"}, use_logprobs=use_logprobs)
    c = res.counts
    assert c.rows_in == len(rows) == c.kept + sum(c.dropped.values())
    assert res.dropped.num_rows == sum(d is None for _, _, d, _ in rows)
    check_table(res.outputs["comparisons"], COMPARISONS, "comparisons")
    comps, mcomps = (r.outputs["comparisons"].to_pylist() for r in (res, maj))
    assert len(comps) == len(mcomps) == len({pair for pair, *_ in rows})
    for r, m in zip(comps, mcomps):
        assert {k: r[k] for k in r if k != "p_a"} == {k: m[k] for k in m if k != "p_a"}
        if r["n_votes"]:
            assert 0.0 <= r["p_a"] <= 1.0 and np.isfinite(r["p_a"])
        else:
            assert r["p_a"] is None
    assert set(res.info["annotator_reliability"]) == {ann for _, ann, _, _ in rows}
    for x in res.info["annotator_reliability"].values():
        assert x is None or 0.0 <= x <= 1.0
    for s in res.outputs["scores"].column("score").to_pylist():
        assert s is None or 0.0 <= s <= 1.0


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin"])
def test_aggregate_em_counts_nulls_and_label_annotator(method: str) -> None:
    v = from_rows(
        [
            vote("a", "src"),
            vote("a", "j1"),
            vote("b", "j2"),
            vote("tie", "j3"),
            vote(None, "j4"),
            vote("b", "j1", a="u", b="w"),
            vote(None, "j2", a="u", b="z"),
        ],
        VOTES,
        "votes",
    )
    res = aggregate_votes(v, label_annotators={"src"}, method=method)
    maj = aggregate_votes(v, label_annotators={"src"})
    comps = res.outputs["comparisons"]
    check_table(comps, COMPARISONS, "comparisons")
    for r, m in zip(comps.to_pylist(), maj.outputs["comparisons"].to_pylist()):
        assert {k: r[k] for k in r if k != "p_a"} == {k: m[k] for k in m if k != "p_a"}
        assert (r["p_a"] is None) == (m["p_a"] is None)
        if r["p_a"] is not None:
            assert 0.0 <= r["p_a"] <= 1.0
    by_pair = {(r["candidate_a"], r["candidate_b"]): r for r in comps.to_pylist()}
    assert by_pair[("u", "z")]["p_a"] is None  # only a null vote
    assert by_pair[("x", "y")]["label"] == "a" and by_pair[("x", "y")]["n_tie"] == 1.0
    assert res.counts.dropped == {"null_verdict": 2} and res.dropped.num_rows == 2
    assert res.counts.kept == 5
    rel = res.info["annotator_reliability"]
    assert set(rel) == {"src", "j1", "j2", "j3", "j4"} and rel["j4"] is None
    assert all(0.0 <= x <= 1.0 for k, x in rel.items() if k != "j4")
    assert res.info["method"] == method and isinstance(res.info["n_iter"], int)
    assert res.info["converged"] is True


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin"])
def test_aggregate_em_matches_em_on_codes(method: str) -> None:
    item, annot, label, _ = synth(150, ACC, seed=4)
    res = aggregate_votes(votes_from_codes(item, annot, label), method=method)
    fit = FITS[method][0]
    direct = fit(item, annot, label)  # same first-seen coding of items and annotators here
    comps = res.outputs["comparisons"].to_pylist()
    assert [c["candidate_a"] for c in comps] == [f"c{i:04d}a" for i in range(150)]
    assert np.allclose([c["p_a"] for c in comps], direct.posterior[:, A], atol=1e-12)
    names = [f"w{w}" for w in range(len(ACC))]
    order = list(dict.fromkeys(annot.tolist()))  # first-seen annotator order
    rel = res.info["annotator_reliability"]
    assert np.allclose([rel[names[w]] for w in order], [direct.reliability()[w] for w in order])


def test_aggregate_em_recovers_truth_better_than_majority() -> None:
    acc = np.array([[0.8, 0.75], [0.7, 0.75], [0.75, 0.7], [0.5, 0.5], [0.1, 0.15]])
    item, annot, label, truth = synth(400, acc, votes_per_item=(5, 5), seed=9)
    v = votes_from_codes(item, annot, label)

    def accuracy(method: str) -> float:
        p = np.array(
            aggregate_votes(v, method=method).outputs["comparisons"].column("p_a").to_pylist()
        )
        return float(((p < 0.5).astype(int) == truth).mean())

    assert accuracy("dawid_skene") >= 0.88
    assert accuracy("dawid_skene") > accuracy("majority") + 0.15


def test_aggregate_em_soft_votes() -> None:
    hard = [
        vote("a", "j1"),
        vote("b", "j2"),
        vote("a", "j1", a="u", b="w"),
        vote("a", "j2", a="u", b="w"),
    ]
    soft = [dict(r, prob_a=1.0 if r["verdict"] == "a" else 0.0) for r in hard]
    t_hard, t_soft = from_rows(hard, VOTES, "votes"), from_rows(soft, VOTES, "votes")
    p = lambda t, lp: aggregate_votes(t, method="dawid_skene", use_logprobs=lp)  # noqa: E731
    want = p(t_hard, True).outputs["comparisons"].column("p_a").to_pylist()
    assert p(t_soft, True).outputs["comparisons"].column("p_a").to_pylist() == pytest.approx(want)
    assert p(t_soft, False).outputs["comparisons"].column("p_a").to_pylist() == pytest.approx(want)
    mid = [dict(r, prob_a=0.6) for r in hard]  # a soft vote that barely prefers a
    c = p(from_rows(mid, VOTES, "votes"), True).outputs["comparisons"].to_pylist()
    assert all(0.0 < r["p_a"] < 1.0 for r in c)
    assert c[0]["n_a"] == pytest.approx(1.2)  # raw (soft) counts as for majority


def test_aggregate_em_empty_and_all_null() -> None:
    for method in ("dawid_skene", "one_coin"):
        res = aggregate_votes(VOTES.empty_table(), method=method)
        assert res.outputs["comparisons"].num_rows == 0
        assert res.info["annotator_reliability"] == {} and res.info["n_iter"] == 0
        res = aggregate_votes(
            from_rows([vote(None, "j1"), vote(None, "j2")], VOTES, "v"), method=method
        )
        assert res.outputs["comparisons"].column("p_a").to_pylist() == [None]
        assert res.info["annotator_reliability"] == {"j1": None, "j2": None}


def test_aggregate_em_rejects_unknown_verdicts() -> None:
    v = from_rows([vote("a", "j1"), vote("A>B", "j2")], VOTES, "votes")
    with pytest.raises(SchemaError, match="verdict"):
        aggregate_votes(v, method="dawid_skene")


def test_aggregate_unknown_method_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown aggregation method 'em'.*dawid_skene"):
        aggregate_votes(VOTES.empty_table(), method="em")


# =========================================================================== auto method


def test_auto_method_needs_three_judges_and_fits_judges_only_posterior() -> None:
    """auto: Dawid–Skene with ≥ 3 distinct judges (both orders of one judge count once),
    else majority; the judges-only posterior leaves the label annotator out."""
    item, annot, label, truth = synth(300, ACC[:3], votes_per_item=(3, 3), seed=4)
    judges = ["j0|t|p|ab", "j0|t|p|ba", "j1|t|p|ab"]  # two judges in three annotators
    v = votes_from_codes(item, annot, label, names=judges)
    res = aggregate_votes(v, method="auto", judges_method="auto")
    assert res.info["method"] == "majority" and res.info["judges_method"] is None
    assert res.outputs["comparisons"].column("p_a_judges").null_count == 300
    # the same votes with a third judge (and a label annotator) switch the EM on
    src = votes_from_codes(np.arange(300), np.zeros(300, int), truth, names=["src"])
    three = votes_from_codes(item, annot, label, names=["j0|t|p|ab", "j1|t|p|ab", "j2|t|p|ab"])
    both = pa.concat_tables([three, src])
    res = aggregate_votes(both, label_annotators={"src"}, method="auto", judges_method="auto")
    assert res.info["method"] == res.info["judges_method"] == "dawid_skene"
    comps = res.outputs["comparisons"]
    judges_only = aggregate_votes(three, method="dawid_skene").outputs["comparisons"]
    # same comparisons in the same order: the label's vote is not in p_a_judges
    assert np.allclose(
        comps.column("p_a_judges").to_numpy(), judges_only.column("p_a").to_numpy(), atol=1e-9
    )
    assert not np.allclose(comps.column("p_a").to_numpy(), judges_only.column("p_a").to_numpy())
    # a label annotator does not count as a judge for judges_method
    res = aggregate_votes(
        pa.concat_tables([v, src]), label_annotators={"src"}, method="auto", judges_method="auto"
    )
    assert res.info["method"] == "dawid_skene" and res.info["judges_method"] is None


# =========================================================================== class prior


def test_tested_class_prior_keeps_half_unless_the_data_reject_it() -> None:
    acc = np.tile([0.8, 0.8], (6, 1))
    for prior_a, want in ((0.5, "symmetric"), (0.85, "estimated")):
        item, annot, label, truth = synth(1500, acc, prior_a=prior_a, seed=7, votes_per_item=(2, 4))
        res = aggregate_votes(
            votes_from_codes(item, annot, label),
            method="dawid_skene",
            prior=(2.0, 1.0),
            class_prior="tested",
        )
        test = res.info["class_prior_test"]
        assert test["chosen"] == want, test
        assert res.info["priors"]["a"] == pytest.approx(
            0.5 if want == "symmetric" else test["estimated"]["a"]
        )
        if want == "estimated":
            assert 0.8 < test["estimated"]["a"] < 0.9 and test["statistic"] > 30
            p_a = np.array(res.outputs["comparisons"].column("p_a").to_pylist())
            sym = aggregate_votes(
                votes_from_codes(item, annot, label),
                method="dawid_skene",
                prior=(2.0, 1.0),
                class_prior="symmetric",
            )
            p_sym = np.array(sym.outputs["comparisons"].column("p_a").to_pylist())
            # comparisons are in item order (c0000a|c0000b, ...): the fitted prior is right
            # more often than the symmetric one on the items it decides differently
            is_a = truth == 0
            assert np.mean((p_a > 0.5) == is_a) > np.mean((p_sym > 0.5) == is_a)


def test_gold_items_anchor_the_reliabilities():
    """Two annotators that are wrong 80% of the time outvote one good one; without gold, EM
    cannot tell the panel from its mirror image and sides with the majority. Twenty gold
    items (known classes) teach EM who is right: their posteriors stay fixed, and the other
    items are decided with the good annotator and the two inverted ones."""
    rng = np.random.default_rng(0)
    n = 200
    truth = rng.integers(0, 2, n)
    item = np.repeat(np.arange(n), 3)
    annot = np.tile([0, 1, 2], n)

    def says(accuracy: float) -> np.ndarray:
        return np.where(rng.random(n) < accuracy, truth, 1 - truth)

    label = np.stack([says(0.85), says(0.2), says(0.2)], axis=1).ravel()
    plain = fit_dawid_skene(item, annot, label, prior=(2.0, 1.0))
    gold = np.full((n, 2), np.nan)
    g = np.arange(20)
    gold[g] = np.eye(2)[truth[g]]
    anchored = fit_dawid_skene(item, annot, label, prior=(2.0, 1.0), gold=gold)
    rest = np.arange(20, n)
    acc_plain = (plain.labels()[rest] == truth[rest]).mean()
    acc_gold = (anchored.labels()[rest] == truth[rest]).mean()
    assert acc_plain < 0.5 < 0.8 < acc_gold
    assert np.array_equal(anchored.posterior[g], gold[g])  # gold stays fixed
    assert anchored.reliability()[0] > 0.75 > 0.3 > anchored.reliability()[1]
    oc = fit_one_coin(item, annot, label, gold=gold)
    assert (oc.labels()[rest] == truth[rest]).mean() > 0.8
    with pytest.raises(ValueError, match="gold must have shape"):
        fit_dawid_skene(item, annot, label, gold=gold[:5])
