"""Which models answer and what their calls may cost: ModelSpec (a model and its
engine), the generate stage's policies, where calls run (runner), prices and budgets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.config.base import _Frozen, config_hash

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ModelSpec(_Frozen):
    """Which model answers, and through which engine."""

    model: str = EMBEDDED_MODEL  # HF id / local path / "embedded:smollm2-135m-instruct"
    engine: Literal["vllm", "openai", "fake"] = "vllm"
    dtype: str = "auto"  # the embedded default on CPU resolves "auto" to float32
    max_model_len: int = 2048
    engine_args: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM as is
    base_url: str | None = None  # openai engine: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_concurrency: int = Field(16, ge=1)  # openai engine: requests in flight
    timeout_s: float = Field(120.0, gt=0)  # openai engine: per request
    max_retries: int = Field(5, ge=0)  # openai engine: on 429 / 5xx / connection errors
    structured_backend: str = "guidance"  # vLLM structured-outputs backend for judges

    def engine_key(self) -> str:
        """Identity of the engine instance (two specs with the same key share it)."""
        return config_hash(self.model_dump(exclude={"structured_backend"}))

    def cache_identity(self) -> str:
        """The model's name in request-cache keys. A served model (engine ``openai``) is
        named with its server, without any credentials in the URL: two servers that
        serve the same model name are different models to the cache.

        >>> ModelSpec(model="m", engine="openai", base_url="http://u:pw@h:8000/v1/").cache_identity()
        'm@http://h:8000/v1'
        >>> ModelSpec(model="m").cache_identity()
        'm'
        """
        if self.engine != "openai" or not self.base_url:
            return self.model
        from urllib.parse import urlsplit

        u = urlsplit(self.base_url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        return f"{self.model}@{u.scheme}://{host}{port}{u.path.rstrip('/')}"


class PolicyConfig(_Frozen):
    name: str = "smollm2"
    model: ModelSpec = Field(default_factory=ModelSpec)
    system_prompt: str | None = None
    n: int = Field(4, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)


class GenerateConfig(_Frozen):
    policies: list[PolicyConfig] = Field(default_factory=lambda: [PolicyConfig()])
    batch_size: int = Field(64, ge=1)  # requests per engine call; the cache commits after each
    # a sample cut at max_tokens (finish reason "length"): drop (reason truncated), keep,
    # or flag (kept; its pairs carry the flag "truncated")
    on_truncated: Literal["drop", "keep", "flag"] = "drop"


class RunnerConfig(_Frozen):
    """Where model calls run: this process (thread), or shards on a Dask / Ray cluster."""

    kind: Literal["thread", "dask", "ray"] = "thread"
    workers: int = Field(2, ge=1)  # dask: local worker processes (each starts its engine)
    shards: int | None = None  # request shards per model stage (default: workers)


class Price(_Frozen):
    """What one model's calls cost: per million prompt (input) and output tokens (APIs),
    and/or per hour of wall time (a local engine on a rented GPU)."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    per_hour: float = Field(0.0, ge=0)


class CostConfig(_Frozen):
    """Prices by model name (the ``model`` of a policy or judge); a run without them
    reports tokens and seconds only."""

    currency: str = "USD"
    prices: dict[str, Price] = Field(default_factory=dict)


class Limits(_Frozen):
    """Limits on the model calls made (cache hits are free): calls, generated tokens
    (all samples), cost in ``cost.currency``. null: no limit."""

    max_calls: int | None = Field(None, ge=0)
    max_output_tokens: int | None = Field(None, ge=0)
    max_cost: float | None = Field(None, ge=0)

    def any(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_output_tokens, self.max_cost))


MODEL_STAGES = ("generate", "judge", "rubric", "judge_gpm")  # the stages that call chat models


class BudgetConfig(Limits):
    """A budget for the whole run, and optionally per model stage. Reached, the run makes
    no new calls, finishes the rows it can and drops the rest ``over_budget``; a rerun with
    a higher budget makes only the missing calls. A call is made only when it fits even if
    it generates its full ``max_tokens`` (so a budget is never exceeded), except for
    ``per_hour`` prices, which are known only afterwards (one batch may overshoot)."""

    stages: dict[Literal["generate", "judge", "rubric", "judge_gpm"], Limits] = Field(
        default_factory=dict
    )

    def on(self) -> bool:
        return self.any() or any(v.any() for v in self.stages.values())
