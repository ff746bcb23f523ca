"""The built-in verifiable prompt set (input path ``verifiable``): prompts with checkable
targets, generated deterministically, so that the embedded default has pairs a verifier
decides.

Each row is a prompt row as a prompts file would hold it: ``id``, ``prompt`` and one
target field — ``answer`` (arithmetic and unit conversions, checked by the
``exact_answer`` verifier), ``tests`` (a small Python function, checked by
``python_tests``) or ``constraints`` (IFEval-style formatting, checked by
``constraints``) — plus ``category``. The set is small and easy on purpose: the embedded
model (SmolLM2-135M) passes some samples and fails others, which is what a pair needs.

>>> rows = list(verifiable_rows())
>>> len(rows), len({r["id"] for r in rows})
(24, 24)
>>> rows[0]["id"], rows[0]["answer"]
('verifiable-arith-01', '12')
>>> sorted({r["category"] for r in rows})
['arithmetic', 'code', 'format', 'units']
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

VERIFIABLE = "verifiable"
VERSION = 1  # bump when a prompt or target changes: the ingest stage is keyed on it

_ARITH = [
    (7, "+", 5),
    (9, "+", 8),
    (15, "-", 6),
    (6, "*", 7),
    (23, "+", 19),
    (12, "*", 3),
    (40, "-", 17),
    (8, "*", 9),
]
_UNITS = [
    ("meters", "centimeters", 3, 100),
    ("hours", "minutes", 2, 60),
    ("kilograms", "grams", 4, 1000),
    ("minutes", "seconds", 5, 60),
]
_CODE = [
    (
        "add",
        "add(a, b)",
        "returns the sum of a and b",
        "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(10, 5) == 15",
    ),
    (
        "is_even",
        "is_even(n)",
        "returns True if the integer n is even and False otherwise",
        "assert is_even(4) is True\nassert is_even(7) is False\nassert is_even(0) is True",
    ),
    (
        "reverse_string",
        "reverse_string(s)",
        "returns the string s reversed",
        "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''",
    ),
    (
        "largest",
        "largest(xs)",
        "returns the largest number in the non-empty list xs",
        "assert largest([3, 9, 2]) == 9\nassert largest([-5, -2]) == -2",
    ),
]
_FORMAT: list[tuple[str, list[dict[str, Any]]]] = [
    ("Write one sentence about the sea using only lowercase letters.", [{"type": "lowercase"}]),
    ("Describe a cat in at most 12 words.", [{"type": "max_words", "value": 12}]),
    (
        "Write a short sentence that includes the word 'banana'.",
        [{"type": "must_include", "value": "banana"}],
    ),
    (
        "List exactly three fruits as a bulleted list, one per line starting with '- '.",
        [{"type": "n_bullets", "value": 3}],
    ),
    (
        'Reply with a JSON object with a single key "color" whose value is a colour name. '
        "Output only the JSON.",
        [{"type": "json"}],
    ),
    (
        "Write a sentence about the weather that does not use the word 'rain'.",
        [{"type": "must_not_include", "value": "rain"}],
    ),
    (
        "Write two sentences about trees, with at least 15 words in total.",
        [{"type": "min_words", "value": 15}],
    ),
    ("Answer in fewer than 60 characters: what is the sun?", [{"type": "max_chars", "value": 60}]),
]
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_OP_WORD = {"+": "plus", "-": "minus", "*": "times"}


def verifiable_rows() -> Iterator[dict[str, Any]]:
    """The built-in verifiable prompts, in a fixed order (see the module docstring)."""
    for i, (a, op, b) in enumerate(_ARITH, 1):
        yield {
            "id": f"verifiable-arith-{i:02d}",
            "category": "arithmetic",
            "prompt": f"What is {a} {_OP_WORD[op]} {b}? Give the final answer as a number.",
            "answer": str(_OPS[op](a, b)),
        }
    for i, (src, dst, x, factor) in enumerate(_UNITS, 1):
        yield {
            "id": f"verifiable-units-{i:02d}",
            "category": "units",
            "prompt": f"How many {dst} are in {x} {src}? Give the final answer as a number.",
            "answer": str(x * factor),
        }
    for i, (name, sig, does, tests) in enumerate(_CODE, 1):
        yield {
            "id": f"verifiable-code-{i:02d}",
            "category": "code",
            "prompt": f"Write a Python function `{sig}` that {does}. Reply with the code "
            f"in a ```python block.",
            "tests": tests,
        }
    for i, (text, constraints) in enumerate(_FORMAT, 1):
        yield {
            "id": f"verifiable-format-{i:02d}",
            "category": "format",
            "prompt": text,
            "constraints": constraints,
        }
