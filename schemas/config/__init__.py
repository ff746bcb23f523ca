"""The run configuration: one frozen pydantic model per stage, composed into RunConfig.

Precedence: defaults in code < YAML file < ``--set dotted.key=value`` overrides. Unknown
keys are errors with a did-you-mean hint. YAML is read with ``yaml.safe_load`` only.

>>> cfg = load_config(None, ["input.limit=2", "generate.policies.0.n=3"])
>>> cfg.input.limit, cfg.generate.policies[0].n
(2, 3)
>>> load_config(None, ["input.limt=2"])
Traceback (most recent call last):
...
schemas.errors.ConfigError: unknown key 'input.limt' (did you mean 'input.limit'?)

The package re-exports every name; the parts: ``base`` (the frozen base model, the
config hash, secrets), the sections by role (``engines``: models, policies, runner, cost
and budget; ``ingest``: input, dedup, decontaminate; ``annotate``: judges, rubrics,
rewards, verify; ``embed``: embeddings, GPM, select; ``pairs``: aggregate, margins,
denoise, pairs; ``review``), ``run`` (RunConfig and its checks across sections) and
``load`` (YAML and ``--set`` to a RunConfig, the error messages).
"""

from __future__ import annotations

from schemas.config.annotate import (
    DEFAULT_ASPECTS,
    VERIFIER_KINDS,
    JudgeConfig,
    JudgeSpec,
    RewardModelSpec,
    RewardsConfig,
    RubricConfig,
    RubricsConfig,
    VerifyConfig,
)
from schemas.config.base import SECRET_WORDS, config_hash, merge_secrets, redact, split_secrets
from schemas.config.embed import EMBEDDED_MINILM, EmbeddingConfig, GPMConfig, SelectConfig
from schemas.config.engines import (
    EMBEDDED_MODEL,
    MODEL_STAGES,
    BudgetConfig,
    CostConfig,
    GenerateConfig,
    Limits,
    ModelSpec,
    PolicyConfig,
    Price,
    RunnerConfig,
)
from schemas.config.ingest import (
    SHIPPED_BENCHMARKS,
    BenchmarkFile,
    DecontaminateConfig,
    DedupConfig,
    InputConfig,
)
from schemas.config.load import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    config_from_dict,
    load_config,
    parse_override,
    resolved_dict,
    safe_yaml,
)
from schemas.config.pairs import AggregateConfig, DenoiseConfig, MarginConfig, PairsConfig
from schemas.config.review import HUMAN_PREFIX, REVIEW_CRITERIA, ReviewConfig
from schemas.config.run import DATASET_NAME_RE, DATASET_NAME_RULE, RunConfig

__all__ = [
    "AggregateConfig",
    "BenchmarkFile",
    "BudgetConfig",
    "CostConfig",
    "DATASET_NAME_RE",
    "DATASET_NAME_RULE",
    "DEFAULT_ASPECTS",
    "DecontaminateConfig",
    "DedupConfig",
    "DenoiseConfig",
    "EMBEDDED_MINILM",
    "EMBEDDED_MODEL",
    "EmbeddingConfig",
    "GPMConfig",
    "GenerateConfig",
    "HUMAN_PREFIX",
    "InputConfig",
    "JudgeConfig",
    "JudgeSpec",
    "Limits",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "MODEL_STAGES",
    "MarginConfig",
    "ModelSpec",
    "PairsConfig",
    "PolicyConfig",
    "Price",
    "REVIEW_CRITERIA",
    "ReviewConfig",
    "RewardModelSpec",
    "RewardsConfig",
    "RubricConfig",
    "RubricsConfig",
    "RunConfig",
    "RunnerConfig",
    "SECRET_WORDS",
    "SHIPPED_BENCHMARKS",
    "SelectConfig",
    "VERIFIER_KINDS",
    "VerifyConfig",
    "config_from_dict",
    "config_hash",
    "load_config",
    "merge_secrets",
    "parse_override",
    "redact",
    "resolved_dict",
    "safe_yaml",
    "split_secrets",
]
