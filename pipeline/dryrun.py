"""``prefcurate run --plan``: how many model calls, tokens and (at most) what cost each
stage of a config would spend, from the config and the input, without loading a model.

Exact where the input decides: ingest runs (pure), the generation requests are built for
real and looked up in the request cache (a cached call costs nothing). Estimated after
that, because the judges' work depends on texts not generated yet: every sample is
assumed to survive (duplicates, truncation and dedup only lower the counts), a response
is as long as its ``max_tokens``, and a token is 4 characters (no tokenizer is loaded).
Output tokens are upper bounds (``max_tokens`` × samples), so the costs are too; prices
per hour of wall time cannot be planned.

>>> from schemas.config import RunConfig
>>> plan = plan_run(RunConfig.model_validate({"input": {"path": "mtbench:2"}}))
>>> [(s["stage"], s["calls"]) for s in plan["stages"]]
[('generate', 2), ('rubric', 8), ('judge', 12)]
"""

from __future__ import annotations

import math
from typing import Any

from schemas.config import RunConfig

CHARS_PER_TOKEN = 4


def _tok(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _msgs_tok(messages: Any) -> int:
    return sum(_tok(str(m[1] if isinstance(m, tuple) else m["content"])) + 4 for m in messages)


def _row(stage: str, model: str, calls: int, prompt_tok: int, out_tok: int, cfg: RunConfig,
         cached: int | None = None) -> dict[str, Any]:  # fmt: skip
    price = cfg.cost.prices.get(model)
    cost = None
    if price is not None and not price.per_hour:
        paid = (calls - (cached or 0)) / calls if calls else 0.0  # cached calls are free
        cost = round(
            paid * (prompt_tok * price.input_per_mtok + out_tok * price.output_per_mtok) / 1e6, 6
        )
    return {
        "stage": stage,
        "model": model,
        "calls": calls,
        "cached": cached,
        "prompt_tokens_est": prompt_tok,
        "max_output_tokens": out_tok,
        "max_cost": cost,
    }


def _cached(cfg: RunConfig, reqs: list[Any]) -> int | None:
    """How many of the generation requests the request cache already answers (None: no
    cache file yet; a plan never creates one)."""
    from pipeline.engines.base import RequestCache, request_cache_path

    path = request_cache_path(cfg.data_root)
    if not path.exists():
        return None
    cache = RequestCache(path)
    try:
        specs = {p.name: p.model for p in cfg.generate.policies}
        keys = [
            r.request.key(specs[r.policy].engine, specs[r.policy].cache_identity()) for r in reqs
        ]
        have = cache.get_many(set(keys))
        return sum(1 for k in keys if k in have and have[k].final)
    finally:
        cache.close()


def plan_run(cfg: RunConfig) -> dict[str, Any]:
    """The plan of a run of ``cfg`` (module docstring): ``{input, stages, total, budget,
    notes}``."""
    from pipeline.ingest.stage import ingest_pairs, ingest_prompts

    inp = cfg.input
    fn = ingest_prompts if inp.kind == "prompts" else ingest_pairs
    ing = fn(inp.path, source=inp.source, limit=inp.limit)
    prompts = ing.outputs["prompts"]
    n_prompts = prompts.num_rows
    p_tok = [_msgs_tok(c) for c in prompts.column("prompt").to_pylist()]
    notes = [
        "judge and rubric calls assume every sample survives (duplicates, truncation, "
        "dedup and decontamination only lower them) and responses of max_tokens length",
        f"tokens are estimated at {CHARS_PER_TOKEN} characters each; output tokens and "
        "costs are upper bounds; chat-template tokens (e.g. a default system prompt) are "
        "not counted (the embedded default's generation prompts: 779 estimated, 1,459 "
        "measured)",
    ]
    if inp.kind == "prompts":
        stages = _generation_rows(cfg, prompts, p_tok)
        k = sum(p.n for p in cfg.generate.policies)
        resp_tok = max((p.max_tokens for p in cfg.generate.policies), default=0)
        pairs_per_prompt = [math.comb(k, 2)] * n_prompts
        n_cands = k * n_prompts
    else:
        stages, cands, k = [], ing.outputs["candidates"], 2
        resp_tok = max((_tok(t or "") for t in cands.column("text").to_pylist()), default=0)
        n_cands = cands.num_rows
        pairs_per_prompt = [1] * (n_cands // 2)
        notes.append("a pairs file: each of its pairs is judged; no generation")
    mean_prompt = sum(p_tok) // max(n_prompts, 1)
    stages += _judge_rows(cfg, k, pairs_per_prompt, mean_prompt + 2 * resp_tok)
    # the rubric stage runs before the judges: its rows come right after generation's
    n_gen = len([s for s in stages if s["stage"] == "generate"])
    stages[n_gen:n_gen] = _rubric_rows(cfg, n_cands, mean_prompt + resp_tok)
    total = {
        key: sum(s[key] for s in stages)
        for key in ("calls", "prompt_tokens_est", "max_output_tokens")
    }
    hourly = sorted({m for m, p in cfg.cost.prices.items() if p.per_hour})
    if hourly:
        notes.append(f"priced per hour, not estimated: {', '.join(hourly)}")
    costs = [s["max_cost"] for s in stages if s["max_cost"] is not None]
    total["max_cost"] = round(sum(costs), 6) if costs else None
    return {
        "input": {
            "kind": inp.kind,
            "path": inp.path,
            "rows": n_prompts,
            "quarantined": dict(ing.counts.quarantined),
        },
        "stages": stages,
        "total": total,
        "budget": _budget_check(cfg, stages, total),
        "notes": notes,
    }


def _generation_rows(cfg: RunConfig, prompts: Any, p_tok: list[int]) -> list[dict[str, Any]]:
    """One plan row per policy: its first-turn calls plus one per follow-up turn and
    sample (a later turn's prompt: the longest prompt and two answers, at most)."""
    from pipeline import conversation, generation

    reqs = generation.build_generation_requests(prompts, list(cfg.generate.policies))
    turns = sum(len(conversation.follow_ups(m)) for m in prompts.column("meta").to_pylist())
    rows = []
    for pol in cfg.generate.policies:
        mine = [r for r in reqs if r.policy == pol.name]
        calls = len(mine) + pol.n * turns
        ptok = sum(_msgs_tok(r.request.messages) for r in mine) + pol.n * turns * (
            max(p_tok, default=0) + 2 * pol.max_tokens
        )
        out_tok = pol.max_tokens * (pol.n * len(mine) + pol.n * turns)
        rows.append(
            _row("generate", pol.model.model, calls, ptok, out_tok, cfg, _cached(cfg, mine))
        )
    return rows


def _judge_rows(
    cfg: RunConfig, k: int, pairs_per_prompt: list[int], content_tok: int
) -> list[dict[str, Any]]:
    """One plan row per judge and round: both orders of each pair it sees (within the
    judge budget); ``content_tok``: a request's prompt and two responses."""
    from pipeline.annotate.judging import format_pairwise

    j, rows = cfg.judge, []
    if not j.judges:
        return rows
    for stage, cap in _judge_rounds(cfg, k):
        n_pairs = sum(min(cap, c) for c in pairs_per_prompt)
        calls = n_pairs * len(j.judges) * 2
        if j.budget is not None:
            calls = min(calls, (j.budget // (2 * len(j.judges))) * 2 * len(j.judges))
        for judge in j.judges:
            mine = calls // len(j.judges)
            probe = format_pairwise(judge, [{"role": "user", "content": ""}], "", "")
            per = _msgs_tok(probe.messages) + content_tok
            out_tok = mine * judge.max_tokens * judge.samples
            rows.append(_row(stage, judge.model.model, mine, mine * per, out_tok, cfg))
    return rows


def _rubric_rows(cfg: RunConfig, n_cands: int, content_tok: int) -> list[dict[str, Any]]:
    """One plan row per rubric judge: a call per candidate (within the rubric budget);
    ``content_tok``: a request's prompt and response."""
    from pipeline.annotate.rubrics import format_rubric, format_yesno

    rows = []
    for r in cfg.rubric_judges():
        calls = n_cands
        if cfg.rubrics.budget is not None:
            calls = min(calls, cfg.rubrics.budget)
        fmt = format_yesno if r.template == "yesno_v1" else format_rubric
        probe = fmt(r, [{"role": "user", "content": ""}], "")  # the real request's shape
        per = _msgs_tok(probe.messages) + content_tok
        out_tok = calls * probe.max_tokens * probe.n  # (a Yes/No judge asks for 3 tokens)
        rows.append(_row("rubric", r.model.model, calls, calls * per, out_tok, cfg))
    return rows


def _judge_rounds(cfg: RunConfig, k: int) -> list[tuple[str, int]]:
    """(stage, pairs per prompt) of the judge rounds."""
    j = cfg.judge
    if j.pair_selection == "best_worst":
        return [("judge", 1)]
    if j.pair_selection == "gpm":
        return [
            ("judge", j.seed_pairs_per_prompt),
            ("judge_gpm", max(j.max_pairs_per_prompt - j.seed_pairs_per_prompt, 0)),
        ]
    return [("judge", j.max_pairs_per_prompt)]


def _budget_check(cfg: RunConfig, stages: list[dict], total: dict) -> dict[str, Any]:
    """For each configured limit: what the plan needs and whether it fits (upper bounds:
    "may exceed" means the run may stop there and drop the rest ``over_budget``)."""
    out: dict[str, Any] = {}
    scopes = [("budget", cfg.budget, total)]
    for st, lim in cfg.budget.stages.items():
        rows = [s for s in stages if s["stage"] == st]
        scopes.append((f"budget.stages.{st}", lim, {
            "calls": sum(s["calls"] for s in rows),
            "max_output_tokens": sum(s["max_output_tokens"] for s in rows),
            "max_cost": sum(s["max_cost"] or 0 for s in rows),
        }))  # fmt: skip
    for where, lim, need in scopes:
        for name, key in (("max_calls", "calls"), ("max_output_tokens", "max_output_tokens"),
                          ("max_cost", "max_cost")):  # fmt: skip
            limit = getattr(lim, name)
            if limit is None:
                continue
            n = need.get(key) or 0
            unknown = name == "max_cost" and any(p.per_hour for p in cfg.cost.prices.values())
            out[f"{where}.{name}"] = {
                "limit": limit,
                "planned": n,
                "fits": None if unknown else n <= limit,  # None: per-hour prices unplanned
            }
    return out
