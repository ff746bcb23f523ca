"""The canonical JSON behind every id and request key: the fast path equals json.dumps."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.hashing import _canonical, stable_hash

PART = st.one_of(
    st.text(),  # any code point, surrogates included
    st.integers(min_value=-(10**30), max_value=10**30),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.text(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(PART, max_size=6))
def test_canonical_json_is_json_dumps(parts):
    parts = tuple(parts)
    want = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert _canonical(parts) == want


def test_ids_did_not_change():
    # values computed with the json.dumps-only implementation (commit 1c653a4)
    assert stable_hash("p", "policy", 3, 'say "hi"\n') == "a4f83c70ae6c2bc4"
    assert stable_hash("a", 1, None) == "0ae764bffd3a17b6"
    assert stable_hash("x") == "cd65ea2c2ad99e94"
