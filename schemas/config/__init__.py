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
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

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
from schemas.config.base import (
    SECRET_WORDS,
    _Frozen,
    config_hash,
    merge_secrets,
    redact,
    split_secrets,
)
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
from schemas.config.pairs import AggregateConfig, DenoiseConfig, MarginConfig, PairsConfig
from schemas.config.review import HUMAN_PREFIX, REVIEW_CRITERIA, ReviewConfig
from schemas.errors import ConfigError

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


class RunConfig(_Frozen):
    # the dataset's name; null: the input file's stem (the embedded default's name for
    # the built-in prompt sets)
    name: str | None = None
    data_root: str = Field("data", min_length=1)  # "" would write into the current folder
    cache_dir: str | None = None  # default: $PREFCURATE_CACHE or ~/.cache/prefcurate
    input: InputConfig = Field(default_factory=InputConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    # p_hat from the posterior: Spearman with the true vote share at the oracle's level on
    # the dense scenario of bench/noise_matrix.py (0.34 vs 0.33; the raw share 0.25)
    margins: MarginConfig = Field(default_factory=lambda: MarginConfig(p_source="posterior"))
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    rubrics: RubricsConfig = Field(default_factory=RubricsConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    embed: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    gpm: GPMConfig = Field(default_factory=GPMConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    # publish even when every call of a model stage failed (an outage): off, the run stops
    # with an error; a stage with any failed call is never marked complete either way,
    # so the next run makes exactly the failed calls again
    allow_partial: bool = False

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # --set name=2024 is a name, not a number
        if v is not None and (
            not isinstance(v, str) or not DATASET_NAME_RE.fullmatch(v) or ".." in v
        ):
            raise ValueError(f"invalid dataset name {v!r}: {DATASET_NAME_RULE}")
        return v

    @property
    def dataset_name(self) -> str:
        """``name``, or one derived from the input: the file's stem (made a valid name),
        ``mtbench-smollm2`` for the built-in prompt sets."""
        if self.name:
            return self.name
        stem = Path(self.input.path.rstrip("/")).stem if self.input.path else ""
        builtin = all(
            p.partition(":")[0] in ("mtbench", "mtbench2", "verifiable")
            for p in self.input.path.split("+")
        )
        if builtin or not stem:
            return "mtbench-smollm2"
        clean = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:100].replace("..", ".")
        return clean if clean and clean[0].isalnum() else "dataset"

    def rubric_judges(self) -> list[RubricConfig]:
        """The rubric judges: as listed, or (``rubrics.judges: null``) one Yes/No judge
        per pairwise judge, with its model."""
        if self.rubrics.judges is not None:
            return list(self.rubrics.judges)
        return [
            RubricConfig(name=f"{j.name}-yesno", model=j.model, template="yesno_v1", seed=j.seed)
            for j in self.judge.judges
        ]

    def embeddings_on(self) -> bool:
        """Embeddings are on for prompt curation and off for given pairs (a pairs run with
        no judges then loads no model at all), unless ``embed.enabled`` says; anything that
        needs them (CRM peer review, GPM pair selection or head, a selection budget) turns
        them on."""
        if self.embed.enabled is not None:
            return self.embed.enabled
        return (
            self.input.kind == "prompts"
            or self.denoise.peer_review is True
            or self.judge.pair_selection == "gpm"
            or self.gpm.enabled
            or self.select.budget is not None
        )

    def chat_models(self) -> dict[str, list[ModelSpec]]:
        """The chat models each model stage of this config calls (its policies, judges,
        rubric judges), by stage name."""
        out: dict[str, list[ModelSpec]] = {}
        if self.input.kind == "prompts":
            out["generate"] = [p.model for p in self.generate.policies]
        if self.rubric_judges():  # the flow runs them with or without pairwise judges
            out["rubric"] = [r.model for r in self.rubric_judges()]
        if self.judge.judges:
            out["judge"] = [j.model for j in self.judge.judges]
            if self.judge.pair_selection == "gpm":
                out["judge_gpm"] = list(out["judge"])
        return out

    def dedup_near_on(self) -> bool:
        """Near-duplicate dedup: as ``dedup.near`` says; unset, on for prompts and off for
        a pairs file (its near-duplicate prompts carry different, labelled pairs)."""
        return self.dedup.near if self.dedup.near is not None else self.input.kind != "pairs"

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        # checks across sections: a config that cannot work fails here, before any call
        needs = [
            name
            for name, on in (
                (
                    "judge.pair_selection: gpm",
                    bool(self.judge.judges) and self.judge.pair_selection == "gpm",
                ),
                ("gpm.enabled", self.gpm.enabled),
                ("select.budget", self.select.budget is not None),
            )
            if on
        ]
        if needs and self.embed.enabled is False:
            raise ValueError(
                f"{needs[0]} needs embeddings: set embed.enabled: true (or leave it unset)"
            )
        if (
            self.judge.pair_selection == "best_worst"
            and self.judge.judges
            and not self.rubric_judges()
            and not self.rewards.models
        ):
            raise ValueError(
                "judge.pair_selection: best_worst needs a first signal: "
                "configure rubrics.judges (or leave it null) or rewards.models"
            )
        names = [p.name for p in self.generate.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"generate.policies: policy names must be unique, got {names}")
        jn = [j.name for j in self.judge.judges]
        if len(set(jn)) != len(jn):
            raise ValueError(f"judge.judges: judge names must be unique, got {jn}")
        self._check_cost()
        return self

    def _check_cost(self) -> None:
        """Prices name models the run calls; a cost budget has a price for every model
        it would spend on; budgets are kept in this process (not in scale-out shards)."""
        used = {m.model for specs in self.chat_models().values() for m in specs}
        for name in self.cost.prices:
            if name not in used:
                raise ValueError(
                    f"cost.prices.{name}: no policy or judge of this config uses model "
                    f"{name!r} (models called: {sorted(used)})"
                )
        b = self.budget
        for stage in b.stages:
            if stage not in self.chat_models():
                raise ValueError(f"budget.stages.{stage}: this config has no {stage} stage")
        priced = [
            (f"budget.stages.{st}.max_cost", self.chat_models()[st])
            for st, lim in b.stages.items()
            if lim.max_cost is not None
        ]
        if b.max_cost is not None:
            priced.append(("budget.max_cost", [m for v in self.chat_models().values() for m in v]))
        for where, specs in priced:
            missing = sorted({m.model for m in specs} - set(self.cost.prices))
            if missing:
                raise ValueError(
                    f"{where} needs a price for every model it spends on: add "
                    f"cost.prices.{missing[0]} (input_per_mtok, output_per_mtok or per_hour)"
                )
        if b.on() and self.runner.kind != "thread":
            raise ValueError(
                "budget: a budget is kept by the run's own process; scale-out shards "
                "(runner.kind dask or ray) would spend around it: use runner.kind: thread"
            )


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        full = f"{prefix}{name}"
        keys.append(full)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, full + "."))
        args = getattr(ann, "__args__", ()) or ()
        for a in args:  # list[PolicyConfig] -> policies.0.<field>
            if isinstance(a, type) and issubclass(a, BaseModel):
                keys.extend(_known_keys(a, full + ".0."))
    return keys


def _hint(key: str) -> str:
    norm = ".".join("0" if p.isdigit() else p for p in key.split("."))
    close = difflib.get_close_matches(norm, _known_keys(RunConfig), n=1, cutoff=0.6)
    if close:
        suggestion = close[0]
        # put the user's own list indices back into the suggestion
        parts, sparts = key.split("."), suggestion.split(".")
        if len(parts) == len(sparts):
            sparts = [p if p.isdigit() else s for p, s in zip(parts, sparts)]
        return f" (did you mean '{'.'.join(sparts)}'?)"
    return ""


def _list_slot(cur: list, part: str, key: str) -> int:
    """The index ``part`` of list ``cur``: an existing entry, or the next one (appended);
    a gap is an error (it would fill the list with default entries)."""
    idx = int(part)
    if idx > len(cur):
        raise ConfigError(
            f"--set {key}: index {idx} is past the end of a list of "
            f"{len(cur)} entr{'y' if len(cur) == 1 else 'ies'}; add entries in "
            f"order (the next one is index {len(cur)})"
        )
    return idx


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(cur, list):
            idx = _list_slot(cur, part, key)
            while len(cur) <= idx:
                cur.append({})
            if not isinstance(cur[idx], (dict, list)):
                cur[idx] = {}
            cur = cur[idx]
            continue
        if part not in cur or not isinstance(cur[part], (dict, list)):
            cur[part] = [] if nxt.isdigit() else {}
        cur = cur[part]
    last = parts[-1]
    if isinstance(cur, list):
        idx = _list_slot(cur, last, key)
        while len(cur) <= idx:
            cur.append({})
        cur[idx] = value
    else:
        cur[last] = value


def _errors_to_message(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'{_hint(loc)}")
        elif not loc:  # a check across sections: its message names the keys
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"'{loc}': {err['msg']} (got {err.get('input')!r})")
    return (
        f"invalid configuration ({origin}): " + "; ".join(lines)
        if len(lines) > 1
        else lines[0]
        if origin == "--set"
        else f"{origin}: {lines[0]}"
    )


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (so ``3`` is an int, ``[a]`` a list)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r} (example: --set input.limit=2)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = safe_yaml(raw, f"--set {key}") if raw.strip() else ""
    except ConfigError as exc:
        if "expands to more" in str(exc) or "nests deeper" in str(exc):
            raise
        value = raw
    return key, value


DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DATASET_NAME_RULE = (
    "a dataset name is 1-100 characters from [A-Za-z0-9._-], starts with a "
    "letter or digit, and contains no '..' or '/'"
)
MAX_YAML_NODES = 100_000  # nodes after alias expansion; a real run config has < 1,000
MAX_YAML_DEPTH = 64


def safe_yaml(text: str, where: str) -> Any:
    r"""``yaml.safe_load`` with alias expansion bounded: the document is composed first (an
    alias is a shared node there, no copy), its expanded size and depth are counted with
    memoisation, and a document that would expand past :data:`MAX_YAML_NODES` nodes or
    nest deeper than :data:`MAX_YAML_DEPTH` is refused before it is built (a 1 KB
    "billion laughs" config held the CLI for > 90 s and 5.6 GB).

    >>> safe_yaml("a: &x [1, 2]\nb: *x", "t")
    {'a': [1, 2], 'b': [1, 2]}
    >>> bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    ...     f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    ...     for i in range(8))
    >>> safe_yaml(bomb, "bomb.yaml")
    Traceback (most recent call last):
    schemas.errors.ConfigError: bomb.yaml: the YAML expands to more than 100000 nodes ...
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{where} is not valid YAML (only plain YAML is accepted, no python tags): {exc}"
        ) from exc
    if root is None:
        return None
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: the YAML nests deeper than {MAX_YAML_DEPTH} levels")
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = MAX_YAML_NODES + 1  # a cycle counts as too big
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(c, depth + 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        sizes[key] = min(n, MAX_YAML_NODES + 1)
        return sizes[key]

    if size(root, 0) > MAX_YAML_NODES:
        raise ConfigError(
            f"{where}: the YAML expands to more than {MAX_YAML_NODES} nodes "
            f"(aliases); write the values out or shorten the config"
        )
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{where} is not valid YAML (only plain YAML is accepted, no python tags): {exc}"
        ) from exc


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a RunConfig from an optional YAML file and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = safe_yaml(p.read_text(encoding="utf-8"), f"config file {p}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p}: top level must be a mapping, got {type(loaded).__name__}"
            )
        data = loaded
        origin = str(p)
    return config_from_dict(data, overrides, origin)


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), origin: str = "config"
) -> RunConfig:
    """A RunConfig from config data (a YAML file's, or a published version's manifest) and
    ``key=value`` overrides; every error a ConfigError naming ``origin`` or the override."""
    if overrides:
        # Materialise defaults so that list overrides (policies.0.n) patch a real entry.
        try:
            base = RunConfig.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise ConfigError(_errors_to_message(exc, origin)) from None
        for item in overrides:
            key, value = parse_override(item)
            try:
                _set_dotted(base, key, value)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"--set {item}: cannot apply (is '{key}' a list index?)"
                ) from None
            try:
                RunConfig.model_validate(base)
            except ValidationError as exc:
                # a check across sections waits for the last --set (a later one may fix it)
                if any(err["loc"] for err in exc.errors()):
                    raise ConfigError(_errors_to_message(exc, "--set")) from None
        data = base
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_errors_to_message(exc, origin)) from None


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain JSON data, secrets redacted."""
    return redact(cfg.model_dump(mode="json"))
