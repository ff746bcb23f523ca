"""Verifier annotators (pipeline.annotate.verify) and the code sandbox (…annotate.sandbox).

The safety tests run real subprocesses with small limits (256 MB; 1 s for the timeout
test); the whole file takes about 20 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.annotate import sandbox as sbx
from pipeline.annotate.sandbox import SandboxLimits, run_many, run_python, sandbox_layers
from pipeline.annotate.verify import (
    CONSTRAINTS,
    Verdict,
    VerifyConfig,
    VerifyJob,
    build_votes,
    check_constraints,
    check_exact_answer,
    extract_code,
    extract_final_answer,
    normalize_text,
    prompt_numbers,
    prompt_targets,
    validate_targets,
    verify_candidates,
)
from schemas.tables import SCORES, VOTES, check_table

# generous wall time: only the timeout test needs a short one, and a loaded 2-core machine
# can slow a run down several-fold
FAST = SandboxLimits(time_s=10.0, memory_mb=256)


# --------------------------------------------------------------------------- exact answers


@pytest.mark.parametrize(
    "text,expected,ok",
    [
        ("The answer is 42.", 42, True),
        ("\\boxed{42}", "42", True),
        ("so $\\boxed{\\dfrac{3}{4}}$", "3/4", True),
        ("We get 3/4", 0.75, True),
        ("Total: 1,234,567 people", 1234567, True),
        ("Answer: 1,234", "1234", True),
        ("6 x 7 = 42", 42, True),
        ("I think 41. No wait, 42", 42, True),
        ("It costs $5.00", 5, True),
        ("Final Answer: 50%", 50, True),
        ("The distance is 5 km", "5 km", True),
        ("The distance is 5", "5 km", True),  # no unit stated: the number decides
        ("The distance is 5 miles", "5 km", False),  # both give units: they must match
        ("answer: 12 dogs", "12 cats", False),
        ("Answer: 0.333", "1/3", False),
        ("Answer: 0.33333333", "1/3", True),  # within the relative tolerance
        ("answer: \u22127", -7, True),  # unicode minus
        ("The answer is 1e3", 1000, True),
        ("answer is 10 apples, since 2*5", 10, True),  # first number of the marked answer
        ("The answer is: \n\n 17", 17, True),  # marker on its own line
        ("\\boxed{x = 5}", 5, True),
        ("Step 1: 3*4 = 12\nStep 2: 12+1 = 13\nTherefore 13 is the answer", 13, True),
        ("First \\boxed{3}, then corrected: \\boxed{4}", 4, True),  # the last box wins
        ("The answer is 4, not 5.", 4, True),  # a marker beats the last number
        ("no numbers here", 5, False),
        ("", 5, False),
        ("The answer is **Paris**.", "paris", True),
        ("**Final answer:** B", "(B)", True),
        ("Paris", "Paris", True),
        ("\\boxed{\\text{Paris}}", "Paris", True),
        ("The capital is Paris.", "Paris", False),  # unmarked text: the whole last line
        ("Answer: the Eiffel Tower!", "eiffel tower", True),
    ],
)
def test_exact_answer(text, expected, ok):
    v = check_exact_answer(text, expected)
    assert v.passed is ok, v.reason
    assert v.reason


@pytest.mark.parametrize(
    "text,numeric,want",
    [
        ("x = 3\ny = 4\nSo x + y = 7", True, ("7", "equals")),
        ("The total is 12 apples.", True, ("12 apples", "last_number")),
        ("\\boxed{\\frac{1}{2}} and more text", True, ("\\frac{1}{2}", "boxed")),
        ("\\boxed{a{b}c}", False, ("a{b}c", "boxed")),  # balanced braces
        ("To answer this we add: 2 + 2 makes 4", True, ("4", "last_number")),  # not a marker
        ("Answer: see below\nit is 9", True, ("9", "last_number")),  # marker without number
        ("Answer: Paris.", False, ("Paris", "answer_marker")),
        ("Hmm.\nBlue", False, ("Blue", "last_line")),
        ("   ", True, None),
        ("words only", True, None),
    ],
)
def test_extract_final_answer(text, numeric, want):
    assert extract_final_answer(text, numeric=numeric) == want


@pytest.mark.parametrize(
    "text,avoid,want",
    [
        ("There are 300 centimeters in 3 meters.", (3,), "300 centimeters"),
        ("7 plus 5 makes 12, as 7 + 5 shows", (7, 5), "12"),
        ("5 times 1 is 5", (5, 1), "5"),  # every number is the prompt's: the last one
        ("There are 300 centimeters in 3 meters.", (), "3 meters"),
    ],
)
def test_last_number_skips_the_prompts_numbers(text, avoid, want):
    assert extract_final_answer(text, avoid=avoid) == (want, "last_number")


def test_prompt_numbers_reach_the_checker():
    p = pa.table(
        {
            "prompt_id": ["p"],
            "source_id": ["s"],
            "prompt": [
                [
                    {"role": "system", "content": "Be brief, 1 line."},
                    {"role": "user", "content": "How many cm are in 3 m?"},
                ]
            ],
            "meta": [json.dumps({"answer": 300})],
        }
    )
    c = _cands(
        [
            ("p", "a", "There are 300 centimeters in 3 meters."),
            ("p", "b", "There are 30 centimeters in 3 meters."),
        ]
    )
    res = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    assert res.outputs["scores"].column("score").to_pylist() == [1.0, 0.0]
    assert prompt_numbers(p.column("prompt").to_pylist()[0]) == (3.0,)  # user turns only


def test_normalize_text():
    assert normalize_text("  The  **Eiffel** Tower! ") == "eiffel tower"
    assert normalize_text("An apple.") == "apple"


def test_exact_answer_tolerance_is_configurable():
    p = _prompts({"p": {"answer": 3.14159}})
    c = _cands([("p", "c1", "pi is about 3.14")])
    strict = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    loose = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",), answer_rel_tol=1e-3))
    assert strict.outputs["scores"].column("score").to_pylist() == [0.0]
    assert loose.outputs["scores"].column("score").to_pylist() == [1.0]


# --------------------------------------------------------------------------- code extraction


@pytest.mark.parametrize(
    "text,want",
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
        ("Use this:\n```py\na = 1\n```\nand\n```python\nb = 2\n```\nbye", "a = 1\n\nb = 2\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("```bash\nls\n```\n```python\nx = 1\n```", "x = 1\n"),
        ("```bash\nls\n```", ""),
        ("def f(): return 1", "def f(): return 1"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off: to the end
    ],
)
def test_extract_code(text, want):
    assert extract_code(text) == want


# --------------------------------------------------------------------------- constraints


@pytest.mark.parametrize(
    "text,constraint,ok",
    [
        ("one two three", {"type": "max_words", "value": 3}, True),
        ("one two three four", {"type": "max_words", "value": 3}, False),
        ("one two", {"type": "min_words", "value": 3}, False),
        ("  abc  ", {"type": "max_chars", "value": 3}, True),
        ("abcd", {"type": "max_chars", "value": 3}, False),
        ("ab", {"type": "min_chars", "value": 3}, False),
        ("I love Python", {"type": "must_include", "value": "python"}, True),
        (
            "I love Python",
            {"type": "must_include", "value": "python", "case_sensitive": True},
            False,
        ),
        ("I love Python", {"type": "must_include", "value": ["love", "java"]}, False),
        ("I love Python", {"type": "must_not_include", "value": ["java", "rust"]}, True),
        ("I love Python", {"type": "must_not_include", "value": "LOVE"}, False),
        ("  Dear Sir, hello", {"type": "starts_with", "value": "dear sir"}, True),
        ("Hello there", {"type": "starts_with", "value": "Dear"}, False),
        (
            "Thanks. Any other questions?",
            {"type": "ends_with", "value": "any other questions?"},
            True,
        ),
        ("Thanks.", {"type": "ends_with", "value": "Bye"}, False),
        ('{"a": [1, 2]}', {"type": "json"}, True),
        ('```json\n{"a": 1}\n```', {"type": "json"}, True),
        ("{'a': 1}", {"type": "json"}, False),
        ("all lower case, 123.", {"type": "lowercase"}, True),
        ("Not lower", {"type": "lowercase"}, False),
        ("LOUD 1 2 3", {"type": "uppercase"}, True),
        ("no commas here", {"type": "no_commas"}, True),
        ("one, two", {"type": "no_commas"}, False),
        ("Intro\n- a\n* b\n+ c\n**bold** not a bullet", {"type": "n_bullets", "value": 3}, True),
        ("- a\n- b", {"type": "n_bullets", "value": 3}, False),
        (
            "para one\nstill one\n\npara two\n \n\npara three",
            {"type": "n_paragraphs", "value": 3},
            True,
        ),
        ("just one", {"type": "n_paragraphs", "value": 2}, False),
        ("Order #1234 shipped", {"type": "regex", "value": r"#\d{4}\b"}, True),
        ("ORDER", {"type": "regex", "value": "order"}, True),  # case-insensitive by default
        ("ORDER", {"type": "regex", "value": "order", "case_sensitive": True}, False),
    ],
)
def test_constraint(text, constraint, ok):
    v = check_constraints(text, [constraint])
    assert v.passed is ok, v.reason
    assert validate_targets({"constraints": [constraint]}) == []


def test_constraints_all_must_hold_and_reason_names_failures():
    v = check_constraints(
        "Hello World, friends",
        [
            {"type": "lowercase"},
            {"type": "max_words", "value": 2},
            {"type": "must_include", "value": "hello"},
        ],
    )
    assert v.passed is False
    assert v.reason == (
        "1/3 constraints met; failed: lowercase: has uppercase letters; max_words: 3 words > 2"
    )


def test_every_constraint_type_is_documented_and_checked():
    for typ, spec in CONSTRAINTS.items():
        c = {"type": typ}
        if spec.value == "count":
            c["value"] = 1
        elif spec.value in ("text", "texts"):
            c["value"] = "x"
        elif spec.value == "regex":
            c["value"] = "x"
        assert validate_targets({"constraints": [c]}) == [], typ
        assert check_constraints("x", [c]).passed is not None, typ


# --------------------------------------------------------------------------- target validation


@pytest.mark.parametrize(
    "meta,problem",
    [
        ({"answer": True}, "answer: expected a string or a number, got bool"),
        ({"answer": [1]}, "answer: expected a string or a number, got list"),
        ({"answer": "  "}, "answer: empty string"),
        ({"answer": "?!"}, "answer: '?!' has nothing left to compare"),
        ({"tests": ""}, "tests: expected non-empty Python test code"),
        ({"tests": "assert f(1 == 2"}, "tests: does not compile: '(' was never closed (line 1)"),
        ({"constraints": {"type": "json"}}, "constraints: expected a non-empty list"),
        ({"constraints": []}, "constraints: expected a non-empty list"),
        ({"constraints": ["max_words"]}, "constraints[0]: expected an object"),
        ({"constraints": [{"value": 3}]}, "constraints[0].type: missing or not a string"),
        (
            {"constraints": [{"type": "json"}, {"type": "foo"}]},
            "constraints[1].type: unknown constraint 'foo' (known: max_words, min_words",
        ),
        (
            {"constraints": [{"type": "max_words", "value": "50"}]},
            "constraints[0].value: max_words needs an integer >= 0, got '50'",
        ),
        (
            {"constraints": [{"type": "max_words", "value": -1}]},
            "constraints[0].value: max_words needs an integer >= 0",
        ),
        (
            {"constraints": [{"type": "max_words", "valeu": 5}]},
            "constraints[0]: unknown key 'valeu' for max_words (allowed: type, value)",
        ),
        (
            {"constraints": [{"type": "json", "value": 1}]},
            "constraints[0]: unknown key 'value' for json (allowed: type)",
        ),
        (
            {"constraints": [{"type": "must_include", "value": ""}]},
            "constraints[0].value: must_include needs a non-empty string or a list",
        ),
        (
            {"constraints": [{"type": "starts_with", "value": 3}]},
            "constraints[0].value: starts_with needs a non-empty string",
        ),
        (
            {"constraints": [{"type": "must_include", "value": "a", "case_sensitive": "yes"}]},
            "constraints[0].case_sensitive: expected true or false",
        ),
        (
            {"constraints": [{"type": "regex", "value": "(unclosed"}]},
            "constraints[0].value: invalid regular expression '(unclosed'",
        ),
        (
            {"constraints": [{"type": "min_words", "value": 9}, {"type": "max_words", "value": 3}]},
            "constraints: min_words=9 > max_words=3 cannot both hold",
        ),
    ],
)
def test_validate_targets_names_the_field(meta, problem):
    problems = validate_targets(meta)
    assert any(p.startswith(problem) for p in problems), problems


def test_validate_targets_accepts_good_and_absent_targets():
    assert validate_targets({}) == []
    assert validate_targets({"lang": "en", "answer": None}) == []
    assert (
        validate_targets(
            {
                "answer": "3/4",
                "tests": "assert f(1) == 2\n",
                "constraints": [
                    {"type": "max_words", "value": 50},
                    {"type": "must_include", "value": ["a", "b"]},
                ],
            }
        )
        == []
    )
    assert validate_targets("not a dict") == ["meta: expected an object, got str"]


def test_prompt_targets_skips_only_the_bad_kind():
    targets, problems = prompt_targets(json.dumps({"answer": 4, "tests": "def (:"}))
    assert targets == {"exact_answer": 4} and problems[0].startswith("tests:")
    assert prompt_targets("{not json")[0] == {}
    assert prompt_targets(None) == ({}, [])


# --------------------------------------------------------------------------- stage: helpers


def _prompts(metas: dict[str, dict | None]) -> pa.Table:
    ids = list(metas)
    return pa.table(
        {
            "prompt_id": ids,
            "source_id": [f"s-{p}" for p in ids],
            "meta": [None if m is None else json.dumps(m) for m in metas.values()],
        }
    )


def _cands(rows: list[tuple], errors: dict[str, str] | None = None) -> pa.Table:
    errors = errors or {}
    return pa.table(
        {
            "prompt_id": [r[0] for r in rows],
            "source_id": [f"s-{r[0]}" for r in rows],
            "candidate_id": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "error": [errors.get(r[1]) for r in rows],
        }
    )


def _votes(res) -> list[tuple]:
    return [
        (v["annotator"], v["candidate_a"], v["candidate_b"], v["verdict"], v["prob_a"])
        for v in res.outputs["votes"].to_pylist()
    ]


# --------------------------------------------------------------------------- stage: votes


def test_votes_pass_beats_fail_in_canonical_order():
    p = _prompts({"p": {"answer": 10}})
    c = _cands(
        [
            ("p", "c3", "answer: 10"),
            ("p", "c1", "answer: 9"),
            ("p", "c2", "answer: 10"),
            ("p", "c4", "answer: 8"),
        ]
    )
    res = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    # pass: c2, c3; fail: c1, c4. Both-pass (c2,c3) and both-fail (c1,c4) get no vote.
    assert _votes(res) == [
        ("verifier:exact_answer", "c1", "c2", "b", 0.0),
        ("verifier:exact_answer", "c1", "c3", "b", 0.0),
        ("verifier:exact_answer", "c2", "c4", "a", 1.0),
        ("verifier:exact_answer", "c3", "c4", "a", 1.0),
    ]
    votes = check_table(res.outputs["votes"], VOTES, "votes").to_pylist()
    assert all(v["order"] is None and v["parse_error"] is None for v in votes)
    assert all(v["candidate_a"] < v["candidate_b"] for v in votes)
    assert votes[0]["raw_output"].startswith("b passes, c1 fails: expected 10, got 9")
    assert res.info["votes"] == {"exact_answer": 4}


@pytest.mark.parametrize(
    "texts,n_votes",
    [
        (["answer: 1", "answer: 1"], 0),  # both pass
        (["answer: 2", "answer: 3"], 0),  # both fail
        (["answer: 1"], 0),  # single candidate
        (["answer: 1", "answer: 2"], 1),
    ],
)
def test_no_vote_without_a_pass_fail_split(texts, n_votes):
    p = _prompts({"p": {"answer": 1}})
    c = _cands([("p", f"c{i}", t) for i, t in enumerate(texts)])
    res = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    assert res.outputs["votes"].num_rows == n_votes


def test_unchecked_verdict_is_a_null_score_and_no_vote():
    j = lambda c: VerifyJob("p", "s", c, "python_tests", "", "")  # noqa: E731
    rows = build_votes([(j("a"), Verdict(True, "ok")), (j("b"), Verdict(None, "sandbox down"))])
    assert rows == []
    p = _prompts({"p": {"tests": "assert f() == 1"}})
    c = _cands([("p", "a", "def f(): return 1"), ("p", "b", "def f(): return 2")])

    def broken_sandbox(jobs):
        return [sbx.SandboxResult("error", "could not start the sandbox", 0.0) for _ in jobs]

    res = verify_candidates(p, c, VerifyConfig(kinds=("python_tests",)), sandbox=broken_sandbox)
    s = res.outputs["scores"].to_pylist()
    assert [r["score"] for r in s] == [None, None]
    assert s[0]["parse_error"] == "could not start the sandbox"
    assert res.outputs["votes"].num_rows == 0
    assert res.info["checks"] == {"python_tests": {"pass": 0, "fail": 0, "unchecked": 2}}


def test_each_kind_votes_separately():
    p = _prompts({"p": {"answer": 3, "constraints": [{"type": "max_words", "value": 2}]}})
    c = _cands([("p", "a", "answer: 3"), ("p", "b", "the answer is definitely 4")])
    res = verify_candidates(p, c)
    assert [
        (r["candidate_id"], r["annotator"], r["score"]) for r in res.outputs["scores"].to_pylist()
    ] == [
        ("a", "verifier:exact_answer", 1.0),
        ("a", "verifier:constraints", 1.0),
        ("b", "verifier:exact_answer", 0.0),
        ("b", "verifier:constraints", 0.0),
    ]
    assert _votes(res) == [
        ("verifier:exact_answer", "a", "b", "a", 1.0),
        ("verifier:constraints", "a", "b", "a", 1.0),
    ]
    assert set(res.outputs["scores"].column("aspect").to_pylist()) == {"correct"}


def test_config_rejects_unknown_or_repeated_kinds():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        VerifyConfig(kinds=("exact_answer", "exact_answer"))
    with pytest.raises(ValidationError):
        VerifyConfig(kinds=("unit_tests",))
    with pytest.raises(ValidationError):
        VerifyConfig(nope=1)


def test_disabled_kinds_are_not_run():
    p = _prompts({"p": {"answer": 3, "tests": "assert False"}})
    c = _cands([("p", "a", "answer: 3")])
    res = verify_candidates(
        p,
        c,
        VerifyConfig(kinds=("exact_answer",)),
        sandbox=lambda jobs: pytest.fail("sandbox called"),
    )
    assert res.outputs["scores"].column("annotator").to_pylist() == ["verifier:exact_answer"]


# --------------------------------------------------------------------------- stage: accounting


def test_accounting_and_drop_reasons():
    p = _prompts({"p": {"answer": 1}, "q": None, "r": {"answer": True}})
    c = _cands(
        [
            ("p", "ok", "answer: 1"),
            ("p", "err", None),
            ("p", "blank", "   "),
            ("p", "none", None),
            ("q", "free", "hello"),
            ("r", "bad-target", "1"),
        ],
        errors={"err": "HTTP 500"},
    )
    res = verify_candidates(p, c)
    assert res.counts.to_dict() == {
        "in": 6,
        "kept": 3,
        "dropped": {"request_failed": 1, "empty_output": 2},
        "quarantined": {},
        "out": 1,
    }
    d = res.dropped.to_pylist()
    assert [(r["row_id"], r["reason"], r["stage"]) for r in d] == [
        ("err", "request_failed", "verify"),
        ("blank", "empty_output", "verify"),
        ("none", "empty_output", "verify"),
    ]
    assert "HTTP 500" in d[0]["detail"]
    assert res.info["candidates_without_target"] == 2  # q (no meta) and r (invalid answer)
    assert res.info["prompts_with_targets"] == 1
    assert list(res.info["invalid_targets"]) == ["r"]
    assert "sandbox" not in res.info  # no python_tests job
    check_table(res.outputs["scores"], SCORES, "scores")


def test_empty_input():
    res = verify_candidates(_prompts({}), _cands([]))
    assert res.counts.to_dict()["in"] == 0
    assert res.outputs["scores"].num_rows == 0 and res.outputs["votes"].num_rows == 0
    check_table(res.outputs["votes"], VOTES, "votes")


def test_unknown_prompt_is_an_error():
    from schemas.errors import PrefcurateError

    with pytest.raises(PrefcurateError, match="not in the prompts table"):
        verify_candidates(_prompts({}), _cands([("p", "c", "x")]))


def test_output_order_does_not_depend_on_input_order():
    p = _prompts({"p": {"answer": 5}, "q": {"constraints": [{"type": "lowercase"}]}})
    rows = [("p", f"c{i}", f"answer: {i}") for i in range(4, 7)] + [
        ("q", f"d{i}", "abc" if i % 2 else "ABC") for i in range(4)
    ]
    a = verify_candidates(p, _cands(rows))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    b = verify_candidates(p, _cands(shuffled))
    assert a.outputs["scores"].equals(b.outputs["scores"])
    assert a.outputs["votes"].equals(b.outputs["votes"])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["p", "q"]), st.one_of(st.none(), st.integers(0, 3)), st.booleans()
        ),
        max_size=8,
    )
)
def test_accounting_property(rows):
    p = _prompts({"p": {"answer": 1}, "q": None})
    cands = [
        (pid, f"c{i}", None if n is None else f"answer: {n}") for i, (pid, n, _) in enumerate(rows)
    ]
    errors = {f"c{i}": "boom" for i, (_, _, e) in enumerate(rows) if e}
    res = verify_candidates(p, _cands(cands, errors))
    c = res.counts
    assert c.rows_in == len(rows) == c.kept + sum(c.dropped.values())
    votes = res.outputs["votes"].to_pylist()
    assert all(v["candidate_a"] < v["candidate_b"] for v in votes)
    score = {r["candidate_id"]: r["score"] for r in res.outputs["scores"].to_pylist()}
    for v in votes:  # every vote is pass ≻ fail
        win, lose = (
            (v["candidate_a"], v["candidate_b"])
            if v["verdict"] == "a"
            else (v["candidate_b"], v["candidate_a"])
        )
        assert score[win] == 1.0 and score[lose] == 0.0


# --------------------------------------------------------------------------- python_tests


def test_python_tests_through_the_stage():
    tests = "assert add(2, 3) == 5\ndef test_neg():\n    assert add(-1, 1) == 0\n"
    p = _prompts({"p": {"tests": tests}})
    c = _cands(
        [
            ("p", "good", "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"),
            ("p", "bad", "```python\ndef add(a, b):\n    return a - b\n```"),
            ("p", "prose", "I would add the numbers."),
            ("p", "good2", "def add(a, b):\n    return b + a"),
        ]
    )
    cfg = VerifyConfig(kinds=("python_tests",), time_limit_s=10.0, memory_limit_mb=256)
    res = verify_candidates(p, c, cfg)
    s = {
        r["candidate_id"]: (r["score"], r["raw_output"]) for r in res.outputs["scores"].to_pylist()
    }
    assert s["good"][0] == 1.0 and s["good2"][0] == 1.0
    assert s["bad"] == (0.0, "AssertionError (tests line 1: assert add(2, 3) == 5)")
    assert s["prose"][0] == 0.0 and "does not compile" in s["prose"][1]
    assert res.info["sandbox"]["audit_hook"] is True
    assert sorted((v[1], v[2], v[3]) for v in _votes(res)) == [
        ("bad", "good", "b"),
        ("bad", "good2", "b"),
        ("good", "prose", "a"),
        ("good2", "prose", "a"),
    ]


# --------------------------------------------------------------------------- sandbox safety


def _still_fine():
    """The pipeline process is unharmed: same limits, same directory, sandbox still works."""
    assert resource.getrlimit(resource.RLIMIT_AS) == _LIMITS_AT_START
    assert os.getcwd() == _CWD_AT_START
    assert run_python("x = 1", "assert x == 1", FAST).passed


_LIMITS_AT_START = resource.getrlimit(resource.RLIMIT_AS)
_CWD_AT_START = os.getcwd()


def test_sandbox_passes_and_reports_failures():
    assert run_python("def f(x):\n    return 2 * x", "assert f(2) == 4", FAST).passed
    r = run_python("def f(x):\n    return 1 / x", "assert f(0) == 0", FAST)
    assert r.status == "failed"
    assert r.reason == (
        "ZeroDivisionError: division by zero (tests line 1: assert f(0) == 0;"
        " response line 2: return 1 / x)"
    )
    r = run_python(
        "x = 1", "def test_a():\n    assert x == 1\ndef test_b():\n    assert x == 2", FAST
    )
    assert r.status == "failed" and "tests line 4" in r.reason
    r = run_python("x = 1", "assert (", FAST)
    assert r.status == "error" and r.reason.startswith("the tests do not compile")
    # common stdlib modules (namedtuple, dataclasses: they use sys._getframe) still work
    assert run_python(
        "from collections import namedtuple\nimport dataclasses, enum, typing\n"
        "P = namedtuple('P', 'x y')",
        "assert P(1, 2).y == 2",
        FAST,
    ).passed


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass", "", SandboxLimits(time_s=1.0, memory_mb=256))
    assert r.status == "failed" and r.reason == "timeout after 1.0 s"
    assert time.monotonic() - t0 < 5
    _still_fine()


@pytest.mark.parametrize(
    "code",
    [
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
        "x = bytearray(10 ** 11)",
        "s = 'x'\nwhile True:\n    s = s + s",
    ],
)
def test_unbounded_allocation_hits_the_memory_limit(code):
    r = run_python(code, "", FAST)
    assert r.status == "failed" and r.reason.startswith("memory limit (256 MB)"), r.reason
    _still_fine()


def test_huge_output_hits_the_file_size_limit():
    r = run_python(
        "while True:\n    print('x' * 10000)",
        "",
        SandboxLimits(time_s=10.0, memory_mb=256, file_size_mb=1),
    )
    assert r.status == "failed" and "File too large" in r.reason


@pytest.mark.parametrize(
    "how",
    [
        "open({p!r}, 'w').write('pwned')",
        "import pathlib\npathlib.Path({p!r}).write_text('pwned')",
        "import os\nfd = os.open({p!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'pwned')",
        "import os\nos.symlink({p!r}, 'link')\nopen('link', 'w').write('pwned')",
        "import os\nos.chdir(os.path.dirname({p!r}))\nopen(os.path.basename({p!r}), 'w')",
        # caught by the code: still a fail
        "try:\n    open({p!r}, 'w').write('pwned')\nexcept OSError:\n    pass",
    ],
)
def test_writing_outside_the_temp_dir_fails(tmp_path, how):
    target = tmp_path / "escaped.txt"
    r = run_python(how.format(p=str(target)), "", FAST)
    assert r.status == "failed" and r.reason.startswith("blocked:"), r.reason
    assert not target.exists()
    _still_fine()


def test_changing_files_outside_the_temp_dir_fails(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("data")
    for code in (
        "import os\nos.remove({p!r})",
        "import os\nos.rename({p!r}, 'stolen')",
        "import os\nos.chmod({p!r}, 0)",
        "import shutil\nshutil.rmtree({d!r})",
        "import os\nos.truncate({p!r}, 0)",
    ):
        r = run_python(code.format(p=str(victim), d=str(tmp_path)), "", FAST)
        assert r.status == "failed" and r.reason.startswith("blocked:"), (code, r.reason)
    assert victim.read_text() == "data" and (victim.stat().st_mode & 0o777) != 0


def test_writing_inside_the_temp_dir_works():
    code = (
        "import tempfile\nopen('local.txt', 'w').write('ok')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('ok')\n"
    )
    r = run_python(code, "assert open('local.txt').read() == 'ok'", FAST)
    assert r.passed, r.reason


def test_temp_dir_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(sbx.tempfile, "tempdir", str(tmp_path))
    r = run_python("import os\nos.mkdir('sub')\nopen('sub/f', 'w').write('x')", "", FAST)
    assert r.passed, r.reason
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    yield srv, srv.getsockname()[1]
    srv.close()


def _no_connection(srv):
    with pytest.raises(socket.timeout):
        srv.accept()


@pytest.mark.parametrize(
    "how",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
        "import socket\ntry:\n    socket.socket().connect(('127.0.0.1', {port}))\n"
        "except OSError:\n    pass",
    ],
)
def test_network_is_refused(listener, how):
    srv, port = listener
    r = run_python(how.format(port=port), "", FAST)
    assert r.status == "failed" and r.reason.startswith("blocked: socket."), r.reason
    _no_connection(srv)
    _still_fine()


@pytest.mark.skipif(sbx.netns_prefix() is None, reason="unshare does not work here")
def test_network_namespace_alone_blocks_loopback(listener):
    """With the audit hook off, the empty network namespace still stops the connection."""
    srv, port = listener
    limits = SandboxLimits(time_s=10.0, memory_mb=256, audit_hook=False)
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
    r = run_python(code, "", limits)
    assert r.status == "failed" and "Network is unreachable" in r.reason, r.reason
    _no_connection(srv)


@pytest.mark.parametrize(
    "how,reason",
    [
        ("import os\nos.system('touch {m}')", "os.system"),
        (
            "import subprocess\nsubprocess.run(['touch', '{m}'])",
            "ImportError: [sandbox] import _posixsubprocess is not allowed",
        ),
        ("import os\nos.execv('/usr/bin/touch', ['touch', '{m}'])", "os.exec"),
        ("import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{m}'], {{}})", "os.posix_spawn"),
        ("import os\nif os.fork() == 0:\n    open('{m}', 'w')", "os.fork"),
        ("import pty\npty.spawn(['touch', '{m}'])", "pty.spawn"),
        (
            "import ctypes\nctypes.CDLL(None).system(b'touch {m}')",
            "ImportError: [sandbox] import ctypes is not allowed",
        ),
        ("import os\nos.kill(os.getppid(), 9)", "os.kill of another process"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
    ],
)
def test_new_processes_are_refused(tmp_path, how, reason):
    marker = tmp_path / "ran.txt"
    r = run_python(how.format(m=marker), "", FAST)
    want = reason if reason.startswith("ImportError") else f"blocked: {reason}"
    assert r.status == "failed" and r.reason.startswith(want), r.reason
    assert not marker.exists()
    _still_fine()


def test_an_optional_import_that_fails_is_not_a_violation():
    code = "try:\n    import ctypes\nexcept ImportError:\n    ctypes = None"
    assert run_python(code, "assert ctypes is None", FAST).passed


def test_env_secrets_are_not_inherited(monkeypatch):
    secret = "s3cr3t-token-4711"
    monkeypatch.setenv("PREFCURATE_TEST_SECRET", secret)
    code = (
        "import os\ndef leak():\n"
        "    found = os.environ.get('PREFCURATE_TEST_SECRET', '')\n"
        "    try:\n"
        "        found += open(f'/proc/{os.getppid()}/environ', 'rb').read().decode()\n"
        "    except OSError:\n"
        "        pass\n"
        "    return found\n"
    )
    r = run_python(code, f"assert {secret!r} in leak()", FAST)
    assert r.status == "failed" and secret not in r.reason
    r = run_python(
        "import os\nENV = dict(os.environ)",
        "assert set(ENV) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL'}, ENV\n"
        "assert 'PREFCURATE_TEST_SECRET' not in ENV",
        FAST,
    )
    assert r.passed, r.reason


@pytest.mark.parametrize(
    "code",
    [
        "import builtins\nbuiltins.exec = lambda *a, **k: None",
        "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')",
        "import builtins\nbuiltins.callable = lambda x: False",
        'import json\njson.dumps = lambda *a, **k: \'{"status": "passed", "reason": ""}\'',
        "import sys\ndef tracer(frame, event, arg):\n    return tracer\nsys.settrace(tracer)",
    ],
)
def test_monkeypatching_the_runner_does_not_forge_a_pass(code):
    r = run_python(code, "def test_x():\n    assert False", FAST)
    assert r.status == "failed", r.reason


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print('passed')\nimport os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n    try:\n"
        '        os.write(fd, b\'0\' * 32 + b\' {"status": "passed", "reason": "x"}\\n\')\n'
        "    except OSError:\n        pass\nos._exit(0)",
        # a fake report line in the real format, with a guessed token
        "import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n    try:\n"
        "        os.write(fd, b'0' * 32 + b' passed 6f6b\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)",
    ],
)
def test_exiting_early_or_faking_a_report_is_a_fail(code):
    r = run_python(code, "assert False", FAST)
    assert r.status == "failed", r.reason


def test_process_group_is_killed(tmp_path):
    """With the hook off (fork allowed), a child left behind is killed with its group."""
    late = tmp_path / "late.txt"
    code = (
        f"import os, time\nif os.fork() == 0:\n    time.sleep(0.6)\n"
        f"    open({str(late)!r}, 'w').write('still alive')\n    os._exit(0)\n"
    )
    r = run_python(code, "", SandboxLimits(time_s=10.0, memory_mb=256, audit_hook=False))
    assert r.passed, r.reason
    time.sleep(1.0)
    assert not late.exists()


def test_run_many_keeps_job_order():
    jobs = [(f"x = {i}", f"assert x == {i if i % 2 else -1}") for i in range(5)]
    assert [r.status for r in run_many(jobs, FAST, workers=2)] == [
        "failed",
        "passed",
        "failed",
        "passed",
        "failed",
    ]


def test_layers_and_limits_are_reported():
    layers = sandbox_layers(FAST)
    assert layers["audit_hook"] is True and "RLIMIT_AS" in layers["rlimits"]
    with pytest.raises(Exception, match="time_s"):
        SandboxLimits(time_s=0)
    with pytest.raises(Exception, match="memory_mb"):
        SandboxLimits(memory_mb=8)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
    reason="needs root and a system Python readable by nobody",
)
def test_privileges_dropped_when_possible(tmp_path):
    limits = SandboxLimits(time_s=10.0, memory_mb=256, python="/usr/bin/python3")
    if sandbox_layers(limits)["drop_privileges"] is None:
        pytest.skip("/usr/bin/python3 cannot run as nobody here")
    r = run_python("import os\nUID = os.getuid()", "assert UID != 0, UID", limits)
    assert r.passed, r.reason
    # the kernel refuses what the (disabled) audit hook would have refused
    target = tmp_path / "root-only.txt"
    os.chmod(tmp_path, 0o755)
    no_hook = SandboxLimits(time_s=10.0, memory_mb=256, python="/usr/bin/python3", audit_hook=False)
    r = run_python(f"open({str(target)!r}, 'w')", "", no_hook)
    assert r.status == "failed" and "Permission denied" in r.reason, r.reason
    assert not target.exists()
