"""A prompt's verifier targets (``answer``, ``tests``, ``constraints`` in its ``meta``):
their validation (:func:`validate_targets`, which ingest uses to quarantine a row) and
the targets by verifier kind (:func:`prompt_targets`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.annotate.verify_answers import expected_number, normalize_text
from pipeline.annotate.verify_constraints import MIN_MAX, validate_constraint

TARGET_FIELD = {"exact_answer": "answer", "python_tests": "tests", "constraints": "constraints"}


def validate_targets(meta: dict[str, Any]) -> list[str]:
    """The problems of a prompt row's targets (``answer``, ``tests``, ``constraints``),
    each naming its field; [] when they are fine or absent. Ingest quarantines a row
    with problems.

    >>> validate_targets({"answer": 42, "tests": "assert f(1) == 2"})
    []
    >>> for p in validate_targets({"answer": True, "tests": "assert f(1 == 2"}): print(p)
    answer: expected a string or a number, got bool
    tests: does not compile: '(' was never closed (line 1)
    """
    if not isinstance(meta, dict):
        return [f"meta: expected an object, got {type(meta).__name__}"]
    problems: list[str] = []
    if "answer" in meta and meta["answer"] is not None:
        a = meta["answer"]
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            problems.append(f"answer: expected a string or a number, got {type(a).__name__}")
        elif isinstance(a, float) and not math.isfinite(a):
            problems.append(f"answer: {a} is not a finite number")
        elif isinstance(a, str) and not a.strip():
            problems.append("answer: empty string (give the expected final answer)")
        elif isinstance(a, str) and expected_number(a) is None and not normalize_text(a):
            problems.append(
                f"answer: {a!r} has nothing left to compare after normalisation "
                f"(punctuation and articles are ignored)"
            )
    if "tests" in meta and meta["tests"] is not None:
        t = meta["tests"]
        if not isinstance(t, str) or not t.strip():
            problems.append(f"tests: expected non-empty Python test code, got {t!r:.40}")
        else:
            try:
                compile(t, "<tests>", "exec")  # compiled only: nothing runs here
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                line = getattr(exc, "lineno", None)
                msg = getattr(exc, "msg", str(exc))
                problems.append(
                    f"tests: does not compile: {msg}" + (f" (line {line})" if line else "")
                )
    if "constraints" in meta and meta["constraints"] is not None:
        cs = meta["constraints"]
        if not isinstance(cs, list) or not cs:
            problems.append(
                "constraints: expected a non-empty list of objects like "
                '{"type": "max_words", "value": 50}, got '
                f"{type(cs).__name__}"
            )
        else:
            for i, c in enumerate(cs):
                problems.extend(validate_constraint(i, c))
            if not problems:
                vals = {c["type"]: c.get("value") for c in cs}
                for lo, hi in MIN_MAX:
                    if lo in vals and hi in vals and vals[lo] > vals[hi]:
                        problems.append(
                            f"constraints: {lo}={vals[lo]} > {hi}={vals[hi]} cannot both hold"
                        )
    return problems


def prompt_targets(meta: str | dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """``({kind: target}, problems)`` of a prompt's ``meta`` (JSON text or a dict); a
    kind whose target has a problem is left out."""
    if meta is None:
        return {}, []
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            return {}, [f"meta: not valid JSON ({exc.msg})"]
    if not isinstance(meta, dict):
        return {}, [f"meta: expected an object, got {type(meta).__name__}"]
    problems = validate_targets(meta)
    bad = {p.split(":")[0].split("[")[0].split(".")[0] for p in problems}
    out = {
        kind: meta[field]
        for kind, field in TARGET_FIELD.items()
        if meta.get(field) is not None and field not in bad
    }
    return out, problems
