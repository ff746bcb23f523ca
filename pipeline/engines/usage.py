"""Token and cost accounting of the model calls, and the run's budget.

Every call :func:`pipeline.engines.base.run_cached` answers is counted in a
:class:`~pipeline.engines.base.CallStats` per stage and model: calls made / reused /
failed / refused by the budget, the engine's token counts, wall seconds. :func:`summary`
prices them from ``cost.prices`` (per million tokens, or per hour of wall time for a
local engine on a rented GPU); reused calls are priced as saved.

:class:`Budget` keeps the run's limits (``budget``, per run and per stage): before each
batch it admits the calls that fit even if each generates its full ``max_tokens``, so
``max_calls``, ``max_output_tokens`` and token-priced ``max_cost`` are never exceeded.

>>> from schemas.config import Price
>>> st = CallStats(made=2, prompt_tokens=1_000_000, output_tokens=500_000, seconds=1800)
>>> cost(st, Price(input_per_mtok=1.0, output_per_mtok=4.0, per_hour=2.0))
4.0
>>> cost(st, None) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.engines.base import CallStats, ChatRequest, Engine
from schemas.config import BudgetConfig, CostConfig, Limits, Price


def cost(stats: CallStats, price: Price | None, *, saved: bool = False) -> float | None:
    """What the calls made (or, ``saved``, the reused ones) cost at ``price``."""
    if price is None:
        return None
    pre = "saved_" if saved else ""
    p, o = getattr(stats, pre + "prompt_tokens"), getattr(stats, pre + "output_tokens")
    sec = getattr(stats, pre + "seconds")
    return (
        p * price.input_per_mtok / 1e6
        + o * price.output_per_mtok / 1e6
        + sec * price.per_hour / 3600
    )


def _row(stats: CallStats, price: Price | None) -> dict[str, Any]:
    d = stats.to_dict()
    c, s = cost(stats, price), cost(stats, price, saved=True)
    d["cost"] = None if c is None else round(c, 6)
    d["saved_cost"] = None if s is None else round(s, 6)
    busy = stats.seconds - stats.start_seconds
    d["output_tokens_per_s"] = round(stats.output_tokens / busy, 1) if busy > 0 else None
    return d


def summary(usage: dict[str, dict[str, CallStats]], cost_cfg: CostConfig) -> dict[str, Any]:
    """``{currency, stages: {stage: {model: row}}, total: row, unpriced: [model]}`` for the
    manifest, ``--json`` and the report. A row is the CallStats fields plus ``cost`` and
    ``saved_cost`` (null without a price; the total sums the priced models and names the
    others in ``unpriced``) and ``output_tokens_per_s``."""
    prices = cost_cfg.prices
    stages: dict[str, dict[str, Any]] = {}
    total = CallStats()
    spent, saved = 0.0, 0.0
    unpriced: set[str] = set()
    for stage, models in usage.items():
        stages[stage] = {}
        for model, st in models.items():
            row = _row(st, prices.get(model))
            stages[stage][model] = row
            total.add(st)
            if row["cost"] is None:
                unpriced.add(model)
            else:
                spent += row["cost"]
                saved += row["saved_cost"]
    tot = _row(total, None)
    tot["cost"] = round(spent, 6) if prices else None
    tot["saved_cost"] = round(saved, 6) if prices else None
    return {
        "currency": cost_cfg.currency,
        "stages": stages,
        "total": tot,
        "unpriced": sorted(unpriced),
    }


def stage_totals(usage: dict[str, dict[str, CallStats]]) -> dict[str, dict[str, Any]]:
    """Per stage, the calls of all its models summed (the manifest's ``calls``)."""
    out = {}
    for stage, models in usage.items():
        t = CallStats()
        for st in models.values():
            t.add(st)
        out[stage] = t.to_dict()
    return out


def reused_stage(stored: dict[str, dict[str, Any]]) -> dict[str, CallStats]:
    """The usage of a stage this run reused whole (its stored ``info.usage``): every call
    it made then is a call saved now."""
    out = {}
    for model, d in stored.items():
        st = CallStats.from_dict(d)
        n = st.requests - st.over_budget
        out[model] = CallStats(
            requests=n,
            reused=n,
            saved_prompt_tokens=st.prompt_tokens + st.saved_prompt_tokens,
            saved_output_tokens=st.output_tokens + st.saved_output_tokens,
            saved_seconds=st.seconds - st.start_seconds + st.saved_seconds,
        )
    return out


# ------------------------------------------------------------------------------- budget


def _prompt_tokens(req: ChatRequest, engine: Engine) -> int:
    n = engine.count_prompt_tokens(req)
    # no tokenizer (some servers): 1 token per 2 characters, above any real tokenizer's rate
    return n if n is not None else sum(len(c) for _, c in req.messages) // 2 + 8


@dataclass
class Budget:
    """The run's budget (``budget`` in config): what was made, in all and per stage."""

    cfg: BudgetConfig
    prices: dict[str, Price]
    spent: CallStats = field(default_factory=CallStats)
    spent_cost: float = 0.0
    stage_spent: dict[str, CallStats] = field(default_factory=dict)
    stage_cost: dict[str, float] = field(default_factory=dict)

    def gate(self, stage: str, model: str) -> _Gate:
        return _Gate(self, stage, model)


@dataclass
class _Gate:
    budget: Budget
    stage: str
    model: str

    def _scopes(self) -> list[tuple[str, Limits, CallStats, float]]:
        b = self.budget
        out = [("budget", b.cfg, b.spent, b.spent_cost)]
        lim = b.cfg.stages.get(self.stage)  # type: ignore[call-overload]
        if lim is not None:
            st = b.stage_spent.setdefault(self.stage, CallStats())
            out.append((f"budget.stages.{self.stage}", lim, st, b.stage_cost.get(self.stage, 0.0)))
        return out

    def admit(self, requests: Sequence[ChatRequest], engine: Engine) -> tuple[int, str]:
        """How many of the leading ``requests`` fit every limit even at their full
        ``max_tokens``; 0 and why when none does."""
        price = self.budget.prices.get(self.model)
        n_ok, why = len(requests), ""
        need_cost = any(lim.max_cost is not None for _, lim, _, _ in self._scopes())
        per_call_s = (
            self.budget.spent.seconds / self.budget.spent.made if self.budget.spent.made else 0.0
        )
        worst_out = [r.max_tokens * max(r.n, 1) for r in requests]
        worst_cost = (
            [
                _prompt_tokens(r, engine) * price.input_per_mtok / 1e6
                + o * price.output_per_mtok / 1e6
                + per_call_s * price.per_hour / 3600
                for r, o in zip(requests, worst_out)
            ]
            if need_cost and price is not None
            else [0.0] * len(requests)
        )
        for where, lim, spent, spent_cost in self._scopes():
            checks: list[tuple[str, float | None, float, list[float]]] = [
                ("max_calls", lim.max_calls, spent.made, [1.0] * len(requests)),
                ("max_output_tokens", lim.max_output_tokens, spent.output_tokens, worst_out),
                ("max_cost", lim.max_cost, spent_cost, worst_cost),
            ]
            for name, limit, used, each in checks:
                if limit is None:
                    continue
                k, acc = 0, used
                while k < n_ok and acc + each[k] <= limit + 1e-12:
                    acc += each[k]
                    k += 1
                if k < n_ok:
                    n_ok = k
                    why = (
                        f"{where}.{name} {limit:g}: {used:g} spent, the next call may need "
                        f"{each[k]:g} more"
                    )
        return n_ok, why

    def charge(self, made: CallStats) -> None:
        b = self.budget
        c = cost(made, b.prices.get(self.model)) or 0.0
        b.spent.add(made)
        b.spent_cost += c
        b.stage_spent.setdefault(self.stage, CallStats()).add(made)
        b.stage_cost[self.stage] = b.stage_cost.get(self.stage, 0.0) + c
