"""Config loading refuses what could hang or leak: YAML alias bombs (in the file and in
--set), before any stage runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.config import load_config
from schemas.errors import ConfigError

BOMB = (
    "generate:\n  policies:\n    - name: p\n      model:\n        model: m\n"
    "        engine_args:\n          a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"          {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
)


def test_alias_bomb_in_engine_args_is_refused_fast(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert len(BOMB) < 1200
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(p)
    assert time.monotonic() - t0 < 5  # not a timing benchmark: the old loader never returned


def test_alias_bomb_in_set_is_refused() -> None:
    value = (
        "{a: &a [x, x, x, x, x, x, x, x, x], "
        + ", ".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]"
            for i in range(8)
        )
        + "}"
    )
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(None, [f"generate.policies.0.model.engine_args={value}"])


def test_ordinary_anchors_still_work(tmp_path: Path) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text("input: &inp {kind: pairs, path: x.jsonl, limit: null}\njudge: {judges: []}\n")
    assert load_config(p).input.kind == "pairs"
