"""Judge statistics over a VOTES table (+ CANDIDATES for lengths), for the manifest/report.

Units: an **annotator** is one row value of ``votes.annotator`` (judge × template ×
persona × order, or an ingested annotator); a **judge** is an annotator without its
``|ab`` / ``|ba`` suffix, so its two presentation orders are one judge. A **pair** is
``(source_id, prompt_id, candidate_a, candidate_b)``. Verdicts are in the ``ab``
orientation (``a`` | ``b`` | ``tie``; null = no valid verdict). When an annotator has
several votes on one pair (samples at temperature > 0) its verdict there is the modal
one (none on a tie between modes).

- **position consistency** (per judge): share of pairs with a valid verdict in both
  orders where the two agree; with ``kappa_ab_ba`` (the same, chance-corrected) and
  ``first_position_win_rate`` (share of decisive verdicts won by the response shown
  first: 0.5 is unbiased).
- **majority agreement** (per annotator, leave-one-judge-out): share of its verdicts
  equal to the strict plurality verdict of the *other judges'* annotators on the pair
  (its own other order is left out too, or it would vote for itself).
- **Cohen's κ** between every two annotators over the pairs both judged validly
  (categories a / b / tie); ``mean_kappa_vs_other_judges`` per judge.
- **Krippendorff's α** (nominal) of the whole panel, units = pairs, missing verdicts
  allowed: α = 1 − (n − 1) · Σ_u (m_u² − Σ_c n_uc²)/(m_u − 1) / (n² − Σ_c n_c²) over
  units with m_u ≥ 2 values (Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability").
- **parse-failure rate** (rows with a ``parse_error``; ``cut_at_max_tokens`` of them were
  outputs the engine cut at its token limit) and null-verdict rate.
- **length bias**: share of decisive verdicts (not tie) on pairs of unequal length won
  by the longer response (length = characters of the candidate's text).

Undefined values (no data, or no variation for κ/α) are ``None``. Everything returned
is JSON-able; floats are rounded to 6 decimals.

>>> cohen_kappa(["a"] * 20 + ["a"] * 5 + ["b"] * 10 + ["b"] * 15,
...             ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15)
0.4
>>> round(krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["a", "b"]]), 4)
0.4444
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.annotate.judging import CUT

VERDICTS = ("a", "b", "tie")
ORDERS = ("ab", "ba")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _rate(num: int, den: int) -> float | None:
    return _r(num / den) if den else None


def cohen_kappa(x: Sequence[Hashable], y: Sequence[Hashable]) -> float | None:
    """Cohen's κ of two raters' labels on the same items (None if undefined)."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} labels vs {len(y)} labels")
    cx, cy = Counter(x), Counter(y)
    return kappa_from_counts(
        len(x), sum(a == b for a, b in zip(x, y)), [cx[c] * cy.get(c, 0) for c in cx]
    )


def kappa_from_counts(n: int, agreed: int, products: Iterable[int]) -> float | None:
    """Cohen's κ from counts: ``n`` items, ``agreed`` of them labelled alike, and per
    label the product of the two raters' counts of it (None if undefined)."""
    if n == 0:
        return None
    p_o = agreed / n
    p_e = sum(int(v) for v in products) / (n * n)
    if p_e >= 1.0:
        return None
    return _r((p_o - p_e) / (1.0 - p_e))


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's α for nominal data; ``units`` lists the values each unit received
    (missing values simply left out). Units with fewer than two values are not pairable
    and are ignored. None when undefined (fewer than two values, or a single category).
    """
    totals: Counter = Counter()
    disagree = 0.0
    for vals in units:
        m = len(vals)
        if m < 2:
            continue
        counts = Counter(vals)
        totals.update(counts)
        disagree += (m * m - sum(c * c for c in counts.values())) / (m - 1)
    n = sum(totals.values())
    expected = n * n - sum(c * c for c in totals.values())
    if n < 2 or expected == 0:
        return None
    return _r(1.0 - (n - 1) * disagree / expected)


def _modal(values: Sequence[str]) -> str | None:
    """The most frequent value; None on a tie between modes or no values."""
    if not values:
        return None
    top = Counter(values).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def judge_of(annotator: str, order: str | None) -> str:
    """The judge an annotator belongs to: the annotator without its ``|ab``/``|ba``."""
    if order in ORDERS and annotator.endswith(f"|{order}"):
        return annotator[: -len(order) - 1]
    return annotator


@dataclass
class _Tally:
    """One pass over the votes: per annotator its first order, rows, parse errors, null
    verdicts and cut answers, and its valid verdicts per pair."""

    order: dict[str, str | None] = field(default_factory=dict)
    raw: dict[str, dict[tuple, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    rows: Counter = field(default_factory=Counter)
    parse: Counter = field(default_factory=Counter)
    null: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    pairs: set[tuple] = field(default_factory=set)

    def add(self, r: dict[str, Any]) -> None:
        ann = r["annotator"]
        self.order.setdefault(ann, r["order"])
        pair = (r["source_id"], r["prompt_id"], r["candidate_a"], r["candidate_b"])
        self.pairs.add(pair)
        self.rows[ann] += 1
        self.parse[ann] += r["parse_error"] is not None
        self.cut[ann] += (r["parse_error"] or "").startswith(CUT)
        if r["verdict"] in VERDICTS:
            self.raw[ann][pair].append(r["verdict"])
        else:
            self.null[ann] += 1


_VOTE_COLUMNS = ["source_id", "prompt_id", "candidate_a", "candidate_b", "annotator"]
_VOTE_COLUMNS += ["order", "verdict", "parse_error"]


def compute_judge_stats(votes: pa.Table, candidates: pa.Table | None = None) -> dict[str, Any]:
    """Judge statistics of a VOTES table as a JSON-able dict (see the module docstring).

    Keys: ``n_votes``, ``n_pairs``, ``n_annotators``, ``parse_failure_rate``,
    ``null_verdict_rate``, ``krippendorff_alpha``, ``alpha_units``,
    ``longer_win_rate``, ``length_decisive_votes``, ``annotators`` (per annotator),
    ``judges`` (per judge), ``kappa`` (a list over annotator pairs).
    """
    t = _Tally()
    for r in votes.select(_VOTE_COLUMNS).to_pylist():
        t.add(r)
    length: dict[str, int] | None = None
    if candidates is not None:
        ids, texts = candidates.column("candidate_id").to_pylist(), candidates.column("text")
        length = {c: len(x or "") for c, x in zip(ids, texts.to_pylist())}
    annotators = sorted(t.rows)
    judge = {a: judge_of(a, t.order[a]) for a in annotators}
    # one verdict per (annotator, pair)
    verdict = {
        a: {p: v for p, vs in t.raw[a].items() if (v := _modal(vs)) is not None} for a in annotators
    }
    by_pair: dict[tuple, dict[str, str]] = defaultdict(dict)
    for a in annotators:
        for p, v in verdict[a].items():
            by_pair[p][a] = v
    entries = [_annotator_entry(a, t, judge, verdict[a], by_pair, length) for a in annotators]
    per_ann = {a: e for a, (e, _) in zip(annotators, entries)}
    kappas = _kappas(annotators, verdict)
    per_judge = {
        j: _judge_entry(j, annotators, judge, t.order, verdict, kappas)
        for j in sorted(set(judge.values()))
    }
    total = sum(t.rows.values())
    all_dec = sum(e["length_decisive"] for e in per_ann.values())
    all_long = sum(n for _, n in entries)
    return {
        "n_votes": total,
        "n_pairs": len(t.pairs),
        "n_annotators": len(annotators),
        "parse_failure_rate": _rate(sum(t.parse.values()), total),
        "null_verdict_rate": _rate(sum(t.null.values()), total),
        "krippendorff_alpha": krippendorff_alpha_nominal(
            list(v.values()) for v in by_pair.values()
        ),
        "alpha_units": sum(len(v) >= 2 for v in by_pair.values()),
        "longer_win_rate": _rate(all_long, all_dec),
        "length_decisive_votes": all_dec,
        "annotators": per_ann,
        "judges": per_judge,
        "kappa": kappas,
    }


def _annotator_entry(
    a: str,
    t: _Tally,
    judge: dict[str, str],
    verdict: dict[tuple, str],
    by_pair: dict[tuple, dict[str, str]],
    length: dict[str, int] | None,
) -> tuple[dict[str, Any], int]:
    """One annotator's entry, and the votes it gave the longer response (for the total)."""
    counts = Counter(verdict.values())
    agree = compared = 0
    for p, v in verdict.items():
        maj = _modal([w for b, w in by_pair[p].items() if judge[b] != judge[a]])
        if maj is not None:
            compared += 1
            agree += v == maj
    long_wins = decisive = 0
    for (_, _, ca, cb), v in verdict.items():
        la, lb = (length.get(ca), length.get(cb)) if length is not None else (None, None)
        if v == "tie" or la is None or lb is None or la == lb:
            continue
        decisive += 1
        long_wins += (v == "a") == (la > lb)
    n = t.rows[a]
    return {
        "judge": judge[a],
        "order": t.order[a],
        "votes": n,
        "valid": n - t.null[a],
        "parse_errors": t.parse[a],
        "cut_at_max_tokens": t.cut[a],
        "parse_failure_rate": _rate(t.parse[a], n),
        "null_verdict_rate": _rate(t.null[a], n),
        "verdicts": {k: counts.get(k, 0) for k in VERDICTS},
        "tie_rate": _rate(counts.get("tie", 0), sum(counts.values())),
        "majority_agreement": _rate(agree, compared),
        "majority_compared": compared,
        "longer_win_rate": _rate(long_wins, decisive),
        "length_decisive": decisive,
    }, long_wins


def _kappas(annotators: list[str], verdict: dict[str, dict[tuple, str]]) -> list[dict[str, Any]]:
    """Cohen's κ and the observed agreement of every pair of annotators."""
    out = []
    for a, b in itertools.combinations(annotators, 2):
        common = sorted(set(verdict[a]) & set(verdict[b]))
        xa = [verdict[a][p] for p in common]
        xb = [verdict[b][p] for p in common]
        out.append(
            {
                "annotator_1": a,
                "annotator_2": b,
                "n": len(common),
                "kappa": cohen_kappa(xa, xb),
                "observed_agreement": _rate(sum(u == v for u, v in zip(xa, xb)), len(common)),
            }
        )
    return out


def _judge_entry(
    j: str,
    annotators: list[str],
    judge: dict[str, str],
    order: dict[str, str | None],
    verdict: dict[str, dict[tuple, str]],
    kappas: list[dict[str, Any]],
) -> dict[str, Any]:
    """One judge's entry: its annotators (one per order), its position consistency and
    first-position win rate, and its mean κ against the other judges."""
    mine = [a for a in annotators if judge[a] == j]
    by_order = {order[a]: a for a in mine if order[a] in ORDERS}
    entry: dict[str, Any] = {
        "annotators": mine,
        "position_consistency": None,
        "position_pairs": 0,
        "kappa_ab_ba": None,
        "first_position_win_rate": None,
    }
    if "ab" in by_order and "ba" in by_order:
        vab, vba = verdict[by_order["ab"]], verdict[by_order["ba"]]
        common = sorted(set(vab) & set(vba))
        entry["position_pairs"] = len(common)
        entry["position_consistency"] = _rate(sum(vab[p] == vba[p] for p in common), len(common))
        entry["kappa_ab_ba"] = cohen_kappa([vab[p] for p in common], [vba[p] for p in common])
    first = dec = 0
    for o, a in by_order.items():
        for v in verdict[a].values():
            if v != "tie":
                dec += 1
                first += (v == "a") == (o == "ab")
    entry["first_position_win_rate"] = _rate(first, dec)
    cross = [
        k["kappa"]
        for k in kappas
        if k["kappa"] is not None
        and (judge[k["annotator_1"]] == j) != (judge[k["annotator_2"]] == j)
    ]
    entry["mean_kappa_vs_other_judges"] = _r(sum(cross) / len(cross)) if cross else None
    return entry


def compute_score_stats(scores: pa.Table) -> dict[str, Any]:
    """Per ``annotator/aspect`` of a SCORES table: rows, nulls, parse errors, mean, std.

    >>> t = pa.table({"candidate_id": ["c1", "c2", "c1"], "annotator": ["j"] * 3,
    ...               "aspect": ["h", "h", "x"], "score": [4.0, 2.0, None],
    ...               "raw_output": [None] * 3, "parse_error": [None, None, "bad"]})
    >>> s = compute_score_stats(t)
    >>> s["parse_failure_rate"], s["aspects"]["j/h"]["mean"], s["aspects"]["j/x"]["null_rate"]
    (0.333333, 3.0, 1.0)
    """
    groups: dict[str, list[tuple[float | None, str | None]]] = defaultdict(list)
    for r in scores.select(["annotator", "aspect", "score", "parse_error"]).to_pylist():
        groups[f"{r['annotator']}/{r['aspect']}"].append((r["score"], r["parse_error"]))
    out: dict[str, Any] = {}
    for k in sorted(groups):
        vals = [s for s, _ in groups[k] if s is not None]
        n = len(groups[k])
        mean = sum(vals) / len(vals) if vals else None
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5 if vals else None
        out[k] = {
            "rows": n,
            "null": n - len(vals),
            "null_rate": _rate(n - len(vals), n),
            "parse_errors": sum(e is not None for _, e in groups[k]),
            "mean": _r(mean),
            "std": _r(std),
        }
    total = scores.num_rows
    n_err = sum(v["parse_errors"] for v in out.values())
    return {"rows": total, "parse_failure_rate": _rate(n_err, total), "aspects": out}
