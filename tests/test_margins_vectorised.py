"""The vectorised compute_margins agrees with the one-row reference oriented_row."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.margins import compute_margins, oriented_row
from schemas.config import MarginConfig
from schemas.tables import COMPARISONS, SCORES, from_rows

count = st.one_of(st.integers(0, 5).map(float), st.floats(0, 5))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            count,
            count,
            count,
            st.sampled_from([None, "a", "b"]),
            st.one_of(st.none(), st.floats(0, 1)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.floats(0.1, 3),
    st.floats(0.5, 6),
)
def test_vectorised_equals_reference(rows, lam, cap):
    cfg = MarginConfig(lam=lam, cap=cap)
    comps = []
    for i, (na, nb, nt, label, score) in enumerate(rows):
        nv = na + nb + nt
        comps.append(
            dict(
                prompt_id="p",
                source_id=f"s{i}",
                candidate_a=f"a{i}",
                candidate_b=f"b{i}",
                n_votes=int(round(nv)),
                n_a=na,
                n_b=nb,
                n_tie=nt,
                n_null=0,
                p_a=(na + 0.5 * nt) / nv if nv else None,
                label=label,
            )
        )
    scores = {f"a{i}": r[4] for i, r in enumerate(rows) if r[4] is not None}
    sc = from_rows(
        [
            {
                "candidate_id": k,
                "annotator": "x",
                "aspect": "w",
                "score": v,
                "raw_output": None,
                "parse_error": None,
            }
            for k, v in scores.items()
        ],
        SCORES,
        "scores",
    )
    got = compute_margins(from_rows(comps, COMPARISONS, "c"), sc, cfg).outputs["pairs"].to_pylist()
    for c, g in zip(comps, got):
        a_first = (
            c["label"] == "a" if c["label"] in ("a", "b") else (c["p_a"] is None or c["p_a"] >= 0.5)
        )
        ref = oriented_row(c, a_first, cfg, scores)
        for k, v in ref.items():
            if isinstance(v, float) and g[k] is not None:
                assert math.isclose(v, g[k], rel_tol=1e-9, abs_tol=1e-12), k
            else:
                assert g[k] == v, k
