"""The scenario generators of bench/scenarios.py and their Bayes-optimal oracle: noise
rates as asked, an oracle that is calibrated and beats the floors where it should, and
files the product reads in the simulated frame (bench/noise_matrix.py relies on all of
it)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import noise_matrix as M
from bench import scenarios as S

LABELLED = [s for s in S.SCENARIOS if s not in ("judges_only", "length_judges")]


def _se(p: float, n: int) -> float:
    return float(np.sqrt(max(p * (1 - p), 1e-4) / n))


@pytest.mark.parametrize("name", LABELLED)
def test_label_noise_matches_request(name):
    n = 20_000
    for noise in (0.1, 0.4):
        sim = S.simulate(name, n, noise, seed=3)
        wrong = float(np.mean(~sim.label_right))
        assert abs(wrong - noise) < 4 * _se(noise, n), (name, noise, wrong)
        # the population agrees with the truth on ~80% of the pairs
        assert abs(float(sim.share_better.mean()) - S.POP_ACCURACY) < 0.01


def test_instance_dependent_noise_hits_close_pairs():
    sim = S.simulate("instance_dependent", 20_000, 0.25, seed=0)
    close, far = sim.g < np.quantile(sim.g, 1 / 3), sim.g > np.quantile(sim.g, 2 / 3)
    wrong = ~sim.label_right
    assert wrong[close].mean() > 0.35 > 0.1 > wrong[far].mean()
    # annotators are near chance on close pairs, good on far ones
    right = sim.v_code == np.where(sim.better_a, S.CODE_A, S.CODE_B)[sim.v_item]
    assert right[close[sim.v_item]].mean() < 0.62 < 0.85 < right[far[sim.v_item]].mean()


def truth_code_of(sim):
    return np.where(sim.better_a, S.CODE_A, S.CODE_B)[sim.v_item]


def test_annotators_vote_as_specified():
    sim = S.simulate("sparse", 20_000, 0.2, seed=1)
    truth_code = np.where(sim.better_a, S.CODE_A, S.CODE_B)[sim.v_item]
    for j, a in enumerate(sim.annotators):
        mine = sim.v_annot == j
        if mine.sum() < 2000:
            continue
        acc = float(np.mean(sim.v_code[mine] == truth_code[mine]))
        assert abs(acc - a.alpha) < 4 * _se(a.alpha, int(mine.sum())), (a, acc)
    k = np.bincount(sim.v_item, minlength=sim.n)
    assert k.min() >= 2 and k.max() <= 5
    # judges_only: noise is the mean error of the three judges
    jo = S.simulate("judges_only", 20_000, 0.3, seed=0)
    assert [round(a.alpha, 3) for a in jo.annotators[:3]] == [0.775, 0.7, 0.625]
    assert not jo.has_label
    # length_confound: length says nothing about quality, yet every annotator favours it
    lc = S.simulate("length_confound", 20_000, 0.2, seed=0)
    longer_a = lc.len_a > lc.len_b
    assert abs(float(np.mean(longer_a == lc.better_a)) - 0.5) < 0.02
    said_longer = lc.v_code == np.where(longer_a, S.CODE_A, S.CODE_B)[lc.v_item]
    right = lc.v_code == truth_code_of(lc)
    wrong = ~right & (lc.v_code != S.CODE_TIE)
    assert said_longer[wrong].mean() > 0.65  # errors go to the longer response (0.5 if not)
    # ties scenario: ties exist and concentrate on close pairs
    t = S.simulate("ties", 20_000, 0.2, seed=0)
    tie = t.v_code == S.CODE_TIE
    close = t.g[t.v_item] < np.median(t.g)
    assert 0.05 < tie.mean() < 0.25 and tie[close].mean() > 2 * tie[~close].mean()


@pytest.mark.parametrize(
    "name",
    [
        "dense",
        "label_copier",
        "instance_dependent",
        "imbalance",
        "imbalance_hidden",
        "length_biased",
        "ties",
        "adversarial",
        "judges_only",
        "length_confound",
        "length_judges",
    ],
)
def test_oracle_is_calibrated(name):
    sim = S.simulate(name, 8000, 0.3, seed=7)
    post = S.oracle(sim)
    if sim.has_label:
        q, hit = post.label_right(sim), sim.label_right
    else:
        q, hit = post.p_a, sim.better_a
    assert abs(q.mean() - hit.mean()) < 3 * _se(float(hit.mean()), sim.n)
    bins = np.minimum((q * 10).astype(int), 9)
    for b in range(10):
        m = bins == b
        if m.sum() >= 150:
            p = float(q[m].mean())
            assert abs(p - hit[m].mean()) < 4 * _se(p, int(m.sum())) + 0.01, (name, b)
    # a proper score: the oracle's log loss beats a constant forecast
    ll = -np.mean(np.where(hit, np.log(q + 1e-12), np.log(1 - q + 1e-12)))
    base = hit.mean()
    ll0 = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert ll < ll0


@pytest.mark.parametrize("name", ["adversarial", "label_copier", "imbalance", "imbalance_hidden"])
def test_oracle_beats_majority_and_plain_ds(name):
    sim = S.simulate(name, 5000, 0.3, seed=2)
    post = S.oracle(sim)
    oracle_acc = float(np.mean((post.p_a > 0.5) == sim.better_a))
    n_a, n_b, _ = M._counts_with_label(sim)
    maj_a = np.where(n_a == n_b, sim.label_a, n_a > n_b)
    maj_acc = float(np.mean(maj_a == sim.better_a))
    ds = M.method_plain_ds(sim)
    ds_acc = float(np.mean(ds.final_a == sim.better_a))  # keep / flip, drop keeps the label
    assert oracle_acc > maj_acc + 0.01, (oracle_acc, maj_acc)
    assert oracle_acc > ds_acc - 0.005, (oracle_acc, ds_acc)


def test_decision_rule():
    sim = S.simulate("sparse", 6, 0.2, seed=0)
    sim.label_a = np.array([True, True, True, False, False, False])
    p_a = np.array([0.1, 0.5, 0.9, 0.1, 0.5, 0.9])  # q = 0.1 0.5 0.9 0.9 0.5 0.1
    r = M.from_posterior(sim, p_a)
    assert r.decision.tolist() == [M.FLIP, M.DROP, M.KEEP, M.KEEP, M.DROP, M.FLIP]
    assert r.final_a.tolist()[:1] == [False] and r.final_a.tolist()[5] is True
    assert np.allclose(r.p_hat[[0, 2, 3, 5]], 0.9)


def test_pairs_file_is_read_in_the_simulated_frame(tmp_path):
    from pipeline.ingest.stage import ingest_pairs

    sim = S.simulate("dense", 40, 0.3, seed=0)
    path = S.write_pairs_jsonl(sim, tmp_path / f"{S.LABEL_ANNOTATOR}.jsonl")
    res = ingest_pairs(str(path), limit=None)
    assert res.counts.kept == sim.n and not res.counts.quarantined
    votes = res.outputs["votes"]
    assert votes.num_rows == sim.v_item.size + sim.n
    rows = S.pairs_rows(sim)
    for i, r in enumerate(rows):
        la = bool(sim.label_a[i])
        assert (len(r["chosen"]), len(r["rejected"])) == (
            (sim.len_a[i], sim.len_b[i]) if la else (sim.len_b[i], sim.len_a[i])
        )
    lab = votes.filter(
        np.array([a == S.LABEL_ANNOTATOR for a in votes.column("annotator").to_pylist()])
    )
    # the product's canonical candidate_a is the simulation's position a
    assert [v == "a" for v in lab.column("verdict").to_pylist()] == sim.label_a.tolist()
    tbl = S.votes_table(S.simulate("judges_only", 30, 0.2, seed=0))
    assert set(tbl.column("order").to_pylist()) == {"ab", "ba"}
    # a hidden frame: the product's canonical a is position b where the pair is swapped
    hid = S.simulate("imbalance_hidden", 60, 0.2, seed=0)
    assert 10 < hid.swapped.sum() < 50
    res = ingest_pairs(str(S.write_pairs_jsonl(hid, tmp_path / "source.jsonl")), limit=None)
    v = res.outputs["votes"]
    lab = v.filter(np.array([a == S.LABEL_ANNOTATOR for a in v.column("annotator").to_pylist()]))
    assert [x == "a" for x in lab.column("verdict").to_pylist()] == (
        hid.label_a != hid.swapped
    ).tolist()


def test_run_default_accounts_for_every_pair():
    sim = S.simulate("label_copier", 300, 0.3, seed=0)
    out = M.run_default(sim)
    assert set(out) == set(sim.ids)
    assert {o["decision"] for o in out.values()} <= {"keep", "flip", "drop"}
    r = M.method_default(sim)
    s = M.score(sim, r)
    assert 0.0 < s["kept"] <= 1.0 and s["acc"] > 0.75
    assert out.info["frame_aligned"] == 1.0
