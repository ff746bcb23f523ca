"""Verifier annotators: check each candidate against its prompt's targets → scores + votes.

Input: PROMPTS (the targets are fields of ``meta``, below) and CANDIDATES. Output:
``scores`` (SCORES: one row per (candidate, verifier kind that applies to its prompt),
annotator ``verifier:<kind>``, aspect ``correct``, score 1.0 pass / 0.0 fail / null when
the check itself could not run, ``raw_output`` the reason, ``parse_error`` that null
score's reason) and ``votes`` (VOTES: per prompt and kind, every pair of candidates where
one passes and the other fails, verdict for the passing one, ``prob_a`` 1.0 / 0.0,
``order`` null; both pass or both fail: no vote). Row unit: one candidate. Kept: a
candidate with text (checked by each kind its prompt has a target for; a prompt without
targets is counted in ``info``). Dropped: ``request_failed`` (the candidate has an
``error``), ``empty_output`` (no text).

Format → check → parse like the other annotators: :func:`build_verify_jobs` pairs
candidates with targets, :func:`run_verify_jobs` checks them (``exact_answer`` and
``constraints`` in process, pure; ``python_tests`` in a sandboxed subprocess, see
:mod:`pipeline.annotate.sandbox`), :func:`make_verifier_outputs` builds the tables.

The pieces: the kinds' checkers in :mod:`~pipeline.annotate.verify_answers`,
:mod:`~pipeline.annotate.verify_constraints` and :mod:`~pipeline.annotate.verify_code`,
the targets' validation in :mod:`~pipeline.annotate.verify_targets`; this module builds
the jobs, runs them and makes the tables, and re-exports the names they had here.

**Targets** (optional fields of a prompt row; ingest keeps them in ``meta`` and checks
them with :func:`validate_targets`):

- ``answer``: the expected final answer, a string or a number. The final answer of a
  response is found by :func:`extract_final_answer`: the last ``\\boxed{...}``, else the
  text after the last "answer:" / "answer is" / "final answer:", else the right-hand side
  of a last line ending in ``= X``, else (numeric answers) the last number that is not
  one of the prompt's own numbers (a response that restates the question, "There are
  300 cm in 3 m", ends on one), or (text answers) the last non-empty line. Numbers
  compare numerically (relative tolerance 1e-6): thousands separators (``1,234``),
  fractions (``3/4``, ``\\frac{3}{4}``), a leading currency sign and, when the expected
  answer has none, a unit (``42 apples``, ``50%``) are understood; when both give a
  unit, the units must match (no unit conversion: ``5 km`` is not ``5000 m``; ``50%``
  is not ``0.5``). Text compares after normalisation: case, punctuation, articles (a,
  an, the), LaTeX ``\\text{}`` and extra whitespace are ignored.
- ``tests``: Python test code run after the response's code (its ```` ```python ````
  blocks, else its untagged fenced blocks, else the whole text when it has no fence);
  top-level ``assert`` statements and ``test*`` functions (called in order). A pass is
  a run that ends without an exception within the time and memory limits.
- ``constraints``: a list of objects ``{"type": ..., "value": ...}`` (IFEval style), all
  of which must hold; see :data:`CONSTRAINTS`. Text matching is case-insensitive unless
  ``"case_sensitive": true``; words are whitespace-separated.

>>> extract_final_answer("6 x 7 is... so the answer is **42**.")
('42', 'answer_marker')
>>> check_exact_answer("So we get \\\\boxed{\\\\frac{3}{4}}", "0.75").passed
True
>>> check_constraints("hello world", [{"type": "max_words", "value": 1}])
Verdict(passed=False, reason='0/1 constraints met; failed: max_words: 2 words > 1')
>>> validate_targets({"constraints": [{"type": "max_word", "value": 5}]})[0][:50]
"constraints[0].type: unknown constraint 'max_word'"
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import pyarrow as pa

from pipeline.annotate.sandbox import sandbox_layers
from pipeline.annotate.verify_answers import (
    check_exact_answer,
    extract_final_answer,
    normalize_text,
    parse_number,
    prompt_numbers,
)
from pipeline.annotate.verify_code import check_python_tests, extract_code, sandbox_limits
from pipeline.annotate.verify_common import MAX_TEXT_CHARS, Verdict
from pipeline.annotate.verify_constraints import CONSTRAINTS, REGEX_TIMEOUT_S, check_constraints
from pipeline.annotate.verify_targets import TARGET_FIELD, prompt_targets, validate_targets
from pipeline.stage import Reason, StageCounts, StageResult, dropped_table
from schemas.config import VERIFIER_KINDS as KINDS
from schemas.config import VerifyConfig
from schemas.errors import PrefcurateError
from schemas.tables import SCORES, VOTES, from_rows

__all__ = [
    "ASPECT",
    "CONSTRAINTS",
    "MAX_TEXT_CHARS",
    "REGEX_TIMEOUT_S",
    "STAGE",
    "STAGE_VERSION",
    "TARGET_FIELD",
    "Kind",
    "Verdict",
    "VerifyConfig",
    "VerifyJob",
    "build_verify_jobs",
    "build_votes",
    "check_constraints",
    "check_exact_answer",
    "extract_code",
    "extract_final_answer",
    "make_verifier_outputs",
    "normalize_text",
    "parse_number",
    "prompt_numbers",
    "prompt_targets",
    "run_verify_jobs",
    "sandbox_limits",
    "validate_targets",
    "verifier_annotator",
    "verify_candidates",
]

log = logging.getLogger(f"prefcurate.{__name__}")

STAGE = "verify"
STAGE_VERSION = 1
ASPECT = "correct"

Kind = Literal["exact_answer", "python_tests", "constraints"]


def verifier_annotator(kind: str) -> str:
    """The annotator name of a verifier kind: ``verifier:<kind>``."""
    return f"verifier:{kind}"


# --------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class VerifyJob:
    prompt_id: str
    source_id: str
    candidate_id: str
    kind: str
    text: str
    target: Any
    prompt_numbers: tuple[float, ...] = ()  # numbers in the request (exact_answer)


def _targets_by_prompt(
    prompts: pa.Table,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], dict[str, tuple[float, ...]]]:
    """Per prompt: its targets by kind, the problems of its invalid targets (logged; those
    targets are skipped) and, when it has an ``answer``, the numbers of its request."""
    targets: dict[str, dict[str, Any]] = {}
    invalid: dict[str, list[str]] = {}
    numbers: dict[str, tuple[float, ...]] = {}
    pids = prompts.column("prompt_id").to_pylist()
    convs = prompts.column("prompt") if "prompt" in prompts.column_names else None
    for i, (pid, meta) in enumerate(zip(pids, prompts.column("meta").to_pylist())):
        t, problems = prompt_targets(meta)
        targets[pid] = t
        if "exact_answer" in t:  # the conversation only where it is needed
            numbers[pid] = prompt_numbers(convs[i].as_py() if convs is not None else None)
        if problems:
            invalid[pid] = problems
    if invalid:
        log.warning(
            "verify: %d prompt(s) have invalid targets (ingest should have "
            "quarantined them); those targets are skipped: %s",
            len(invalid),
            dict(itertools.islice(invalid.items(), 3)),
        )
    return targets, invalid, numbers


def _drop(r: dict[str, Any], reason: Reason, detail: str) -> dict[str, Any]:
    return dict(source_id=r["source_id"], row_id=r["candidate_id"], reason=reason, detail=detail)


def build_verify_jobs(
    prompts: pa.Table, candidates: pa.Table, cfg: VerifyConfig
) -> tuple[list[VerifyJob], list[dict], dict[str, Any]]:
    """One job per (candidate, enabled kind with a valid target on its prompt).

    Returns (jobs sorted by prompt, candidate, kind; dropped rows; info). Candidates with
    an ``error`` are dropped ``request_failed``, those without text ``empty_output``.
    """
    targets, invalid, numbers = _targets_by_prompt(prompts)
    jobs, drops = [], []
    no_target = 0
    kind_order = {k: i for i, k in enumerate(cfg.kinds)}
    rows = candidates.select(
        ["prompt_id", "source_id", "candidate_id", "text", "error"]
    ).to_pylist()
    for r in rows:
        if r["prompt_id"] not in targets:
            raise PrefcurateError(
                f"verify: candidate {r['candidate_id']} belongs to prompt {r['prompt_id']}, "
                f"which is not in the prompts table; pass the prompts the candidates were "
                f"generated from"
            )
        if r["error"] is not None:
            drops.append(
                _drop(
                    r, Reason.REQUEST_FAILED, f"verify: candidate has an error: {r['error'][:200]}"
                )
            )
            continue
        if r["text"] is None or not r["text"].strip():
            drops.append(_drop(r, Reason.EMPTY_OUTPUT, "verify: candidate has no text"))
            continue
        kinds = [k for k in cfg.kinds if k in targets[r["prompt_id"]]]
        if not kinds:
            no_target += 1
        for k in kinds:
            jobs.append(
                VerifyJob(
                    r["prompt_id"],
                    r["source_id"],
                    r["candidate_id"],
                    k,
                    r["text"],
                    targets[r["prompt_id"]][k],
                    numbers.get(r["prompt_id"], ()) if k == "exact_answer" else (),
                )
            )
    jobs.sort(key=lambda j: (j.prompt_id, j.candidate_id, kind_order[j.kind]))
    info = {
        "candidates_without_target": no_target,
        "prompts_with_targets": sum(1 for t in targets.values() if any(k in t for k in cfg.kinds)),
        "invalid_targets": invalid,
    }
    return jobs, drops, info


def run_verify_jobs(
    jobs: Sequence[VerifyJob],
    cfg: VerifyConfig,
    *,
    sandbox: Callable[[list[tuple[str, str]]], list[Any]] | None = None,
) -> list[Verdict]:
    """A verdict per job, in order. ``python_tests`` jobs run in the sandbox, identical
    (code, tests) once; ``sandbox`` replaces :func:`sandbox.run_many` (tests)."""
    out: list[Verdict | None] = [None] * len(jobs)
    tests_at: list[int] = []
    for i, j in enumerate(jobs):
        if j.kind == "exact_answer":
            out[i] = check_exact_answer(
                j.text,
                j.target,
                rel_tol=cfg.answer_rel_tol,
                abs_tol=cfg.answer_abs_tol,
                prompt_numbers=j.prompt_numbers,
            )
        elif j.kind == "constraints":
            out[i] = check_constraints(j.text, j.target)
        elif j.kind == "python_tests":
            tests_at.append(i)
        else:
            raise PrefcurateError(
                f"verify: unknown verifier kind {j.kind!r} (known: {', '.join(KINDS)})"
            )
    tested = check_python_tests([(jobs[i].text, jobs[i].target) for i in tests_at], cfg, sandbox)
    for i, v in zip(tests_at, tested, strict=True):
        out[i] = v
    return [v for v in out if v is not None]


def build_votes(scored: Sequence[tuple[VerifyJob, Verdict]]) -> list[dict[str, Any]]:
    """VOTES rows: per (prompt, kind), pass ≻ fail for each pair with one pass and one
    fail, in the canonical orientation ``candidate_a < candidate_b``; no vote when both
    pass, both fail, or either could not be checked.

    >>> j = lambda c: VerifyJob("p", "s", c, "exact_answer", "", 1)
    >>> [(v["candidate_a"], v["candidate_b"], v["verdict"]) for v in build_votes(
    ...     [(j("y"), Verdict(True, "")), (j("x"), Verdict(False, "")),
    ...      (j("z"), Verdict(False, ""))])]
    [('x', 'y', 'b'), ('y', 'z', 'a')]
    """
    groups: dict[tuple[str, str, str], list[tuple[str, Verdict]]] = {}
    for job, v in scored:
        groups.setdefault((job.prompt_id, job.source_id, job.kind), []).append(
            (job.candidate_id, v)
        )
    rows = []
    for (pid, sid, kind), members in groups.items():
        best: dict[str, Verdict] = {}
        for cid, v in members:
            best[cid] = v
        for a, b in itertools.combinations(sorted(best), 2):
            va, vb = best[a], best[b]
            if va.passed is None or vb.passed is None or va.passed == vb.passed:
                continue
            loser, lv = (b, vb) if va.passed else (a, va)
            rows.append(
                {
                    "prompt_id": pid,
                    "source_id": sid,
                    "candidate_a": a,
                    "candidate_b": b,
                    "annotator": verifier_annotator(kind),
                    "order": None,
                    "verdict": "a" if va.passed else "b",
                    "prob_a": 1.0 if va.passed else 0.0,
                    "raw_output": f"{'a' if va.passed else 'b'} passes, {loser} fails: {lv.reason}"[
                        :500
                    ],
                    "parse_error": None,
                }
            )
    kind_rank = {verifier_annotator(k): i for i, k in enumerate(KINDS)}
    rows.sort(
        key=lambda r: (
            r["prompt_id"],
            kind_rank.get(r["annotator"], 99),
            r["annotator"],
            r["candidate_a"],
            r["candidate_b"],
        )
    )
    return rows


def make_verifier_outputs(
    jobs: Sequence[VerifyJob],
    verdicts: Sequence[Verdict],
    drops: list[dict],
    info: dict[str, Any],
    n_candidates: int,
) -> StageResult:
    """SCORES and VOTES rows from the verdicts; counts and ``info``.

    ``info``: ``checks`` per kind (``pass``/``fail``/``unchecked``), ``votes`` per kind,
    and the job-building info (``candidates_without_target``, ``prompts_with_targets``,
    ``invalid_targets``).
    """
    scored = list(zip(jobs, verdicts, strict=True))
    score_rows = [
        {
            "candidate_id": j.candidate_id,
            "annotator": verifier_annotator(j.kind),
            "aspect": ASPECT,
            "score": None if v.passed is None else float(v.passed),
            "raw_output": v.reason,
            "parse_error": v.reason if v.passed is None else None,
        }
        for j, v in scored
    ]
    vote_rows = build_votes(scored)
    checks: dict[str, dict[str, int]] = {}
    for j, v in scored:
        c = checks.setdefault(j.kind, {"pass": 0, "fail": 0, "unchecked": 0})
        c["pass" if v.passed else "unchecked" if v.passed is None else "fail"] += 1
    n_votes = Counter(r["annotator"].split(":", 1)[1] for r in vote_rows)
    counts = StageCounts(
        rows_in=n_candidates,
        kept=n_candidates - len(drops),
        dropped=dict(Counter(str(d["reason"]) for d in drops)),
        rows_out=len(score_rows),
    )
    return StageResult(
        STAGE,
        {
            "scores": from_rows(score_rows, SCORES, "scores"),
            "votes": from_rows(vote_rows, VOTES, "votes"),
        },
        counts,
        dropped_table(STAGE, drops),
        info={**info, "checks": checks, "votes": dict(sorted(n_votes.items()))},
    )


def verify_candidates(
    prompts: pa.Table,
    candidates: pa.Table,
    cfg: VerifyConfig | None = None,
    *,
    sandbox: Callable[[list[tuple[str, str]]], list[Any]] | None = None,
) -> StageResult:
    """The verify stage: build jobs, check them, build SCORES and VOTES (module docstring).

    >>> p = pa.table({"prompt_id": ["p"], "meta": ['{"answer": 4}']})
    >>> c = pa.table({"prompt_id": ["p"] * 3, "source_id": ["s"] * 3,
    ...               "candidate_id": ["c1", "c2", "c3"], "text": ["2+2 = 4", "5", None],
    ...               "error": [None, None, None]})
    >>> res = verify_candidates(p, c, VerifyConfig(kinds=("exact_answer",)))
    >>> res.outputs["scores"].column("score").to_pylist(), res.counts.dropped
    ([1.0, 0.0], {'empty_output': 1})
    >>> res.outputs["votes"].select(["candidate_a", "candidate_b", "verdict"]).to_pylist()
    [{'candidate_a': 'c1', 'candidate_b': 'c2', 'verdict': 'a'}]
    """
    cfg = cfg or VerifyConfig()
    jobs, drops, info = build_verify_jobs(prompts, candidates, cfg)
    verdicts = run_verify_jobs(jobs, cfg, sandbox=sandbox)
    if sandbox is None and any(j.kind == "python_tests" for j in jobs):
        info = {**info, "sandbox": sandbox_layers(sandbox_limits(cfg))}
    return make_verifier_outputs(jobs, verdicts, drops, info, candidates.num_rows)
