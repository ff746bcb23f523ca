"""From a YAML file, config data and ``--set`` overrides to a RunConfig: YAML read
with alias expansion bounded, dotted overrides applied, and validation errors turned
into one ConfigError (an unknown key with a did-you-mean hint)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from schemas.config.base import redact
from schemas.config.run import RunConfig
from schemas.errors import ConfigError


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
