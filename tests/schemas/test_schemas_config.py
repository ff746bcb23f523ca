"""Tests for schemas.tables (check_table, conform, from_rows) and schemas.config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas.config import (
    PolicyConfig,
    RunConfig,
    config_hash,
    load_config,
    parse_override,
    redact,
    resolved_dict,
)
from schemas.errors import ConfigError, PrefcurateError, SchemaError
from schemas.tables import (
    CANDIDATES,
    MESSAGES,
    PROMPTS,
    SCHEMAS,
    SCORES,
    check_table,
    conform,
    empty,
    from_rows,
    schema_fingerprint,
)

# --------------------------------------------------------------------------- helpers


def prompt_rows(content: Any = "hi", n: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": f"p{i}",
            "source_id": f"s{i}",
            "prompt": [{"role": "user", "content": content}],
            "source": "t",
            "meta": None,
        }
        for i in range(n)
    ]


def prompts_table(content: Any = "hi", n: int = 2) -> pa.Table:
    """A PROMPTS table built without checks, so tests can plant bad values in it."""
    return pa.Table.from_pylist(prompt_rows(content, n), schema=PROMPTS)


def candidate_row(i: int = 0, **over: Any) -> dict[str, Any]:
    row = {
        "prompt_id": "p",
        "source_id": "s",
        "candidate_id": f"c{i}",
        "policy": "pol",
        "sample_index": i,
        "text": f"t{i}",
        "finish_reason": "stop",
        "n_prompt_tokens": 3,
        "n_output_tokens": 1,
        "request_hash": "h",
        "truncated": False,
        "error": None,
    }
    row.update(over)
    return row


def write_yaml(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------- check_table


def test_check_table_accepts_a_good_table_and_returns_it() -> None:
    t = prompts_table()
    assert check_table(t, PROMPTS, "prompts") is t


@pytest.mark.parametrize("schema_name", sorted(SCHEMAS))
def test_empty_tables_pass_their_own_schema(schema_name: str) -> None:
    schema = SCHEMAS[schema_name]
    assert check_table(empty(schema), schema, schema_name).num_rows == 0


def test_missing_column_names_table_and_column() -> None:
    t = prompts_table().drop_columns(["source"])
    with pytest.raises(SchemaError, match=r"table 'prompts': missing column 'source'") as e:
        check_table(t, PROMPTS, "prompts")
    assert (e.value.table, e.value.column) == ("prompts", "source")
    assert isinstance(e.value, PrefcurateError)


def test_extra_column_names_table_and_column() -> None:
    t = prompts_table().append_column("oops", pa.array(["x", "y"]))
    with pytest.raises(SchemaError, match=r"unexpected column 'oops'") as e:
        check_table(t, PROMPTS, "prompts")
    assert (e.value.table, e.value.column) == ("prompts", "oops")


def test_columns_out_of_order() -> None:
    t = prompts_table()
    t = t.select(["source_id", "prompt_id", "prompt", "source", "meta"])
    with pytest.raises(SchemaError, match="out of order"):
        check_table(t, PROMPTS, "prompts")


@pytest.mark.parametrize(
    "column, array",
    [
        ("sample_index", pa.array([0, 1], pa.int64())),
        ("text", pa.array(["a", "b"], pa.large_string())),
        ("truncated", pa.array([0, 1], pa.int8())),
    ],
)
def test_wrong_type_names_column(column: str, array: pa.Array) -> None:
    t = pa.Table.from_pylist([candidate_row(0), candidate_row(1)], schema=CANDIDATES)
    t = t.set_column(t.schema.get_field_index(column), column, array)
    with pytest.raises(SchemaError, match=rf"column '{column}' has type") as e:
        check_table(t, CANDIDATES, "candidates")
    assert (e.value.table, e.value.column) == ("candidates", column)


def test_null_in_non_nullable_column() -> None:
    t = pa.Table.from_pylist([candidate_row(0), candidate_row(1, policy=None)], schema=CANDIDATES)
    with pytest.raises(SchemaError, match=r"column 'policy' is not nullable but has 1 null") as e:
        check_table(t, CANDIDATES, "candidates")
    assert e.value.column == "policy"


def test_null_allowed_in_nullable_column() -> None:
    t = pa.Table.from_pylist([candidate_row(0, text=None, error="boom")], schema=CANDIDATES)
    assert check_table(t, CANDIDATES, "candidates").num_rows == 1


@pytest.mark.parametrize(
    "field, value, path", [("content", None, "prompt[].content"), ("role", None, "prompt[].role")]
)
def test_null_nested_field_names_the_path(field: str, value: Any, path: str) -> None:
    rows = prompt_rows()
    rows[1]["prompt"] = [
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "fine", field: value},
    ]
    t = pa.Table.from_pylist(rows, schema=PROMPTS)
    with pytest.raises(SchemaError, match=r"nested field") as e:
        check_table(t, PROMPTS, "prompts")
    assert (e.value.table, e.value.column) == ("prompts", path)


def test_nested_check_respects_slices() -> None:
    """A nested null outside the slice of the table is not reported."""
    rows = prompt_rows(n=3)
    rows[0]["prompt"] = [{"role": "user", "content": None}]
    t = pa.Table.from_pylist(rows, schema=PROMPTS)
    assert check_table(t.slice(1), PROMPTS, "prompts").num_rows == 2
    with pytest.raises(SchemaError):
        check_table(t, PROMPTS, "prompts")


# --------------------------------------------------------------------------- conform


def test_conform_casts_loose_types_and_reorders() -> None:
    loose = pa.table(
        {
            "error": pa.array([None], pa.large_string()),
            "prompt_id": pa.array(["p"], pa.large_string()),
            "source_id": pa.array(["s"], pa.large_string()),
            "candidate_id": pa.array(["c"], pa.large_string()),
            "policy": pa.array(["pol"], pa.large_string()),
            "sample_index": pa.array([2], pa.int64()),
            "text": pa.array(["hello"], pa.large_string()),
            "finish_reason": pa.array(["stop"], pa.large_string()),
            "n_prompt_tokens": pa.array([5], pa.int64()),
            "n_output_tokens": pa.array([None], pa.int64()),
            "request_hash": pa.array(["h"], pa.large_string()),
            "truncated": pa.array([False]),
            "ignored_extra": pa.array([1]),
        }
    )
    out = conform(loose, CANDIDATES, "candidates")
    assert out.schema.equals(CANDIDATES)
    assert out.to_pylist()[0]["sample_index"] == 2
    assert out.to_pylist()[0]["text"] == "hello"


def test_conform_casts_nested_large_types() -> None:
    msgs = pa.array(
        [[{"role": "user", "content": "hi"}]],
        pa.large_list(pa.struct([("role", pa.large_string()), ("content", pa.large_string())])),
    )
    t = pa.table(
        {
            "prompt_id": ["p"],
            "source_id": ["s"],
            "prompt": msgs,
            "source": ["x"],
            "meta": pa.array([None], pa.null()),
        }
    )
    out = conform(t, PROMPTS, "prompts")
    assert out.schema.field("prompt").type.equals(MESSAGES)
    assert out.column("prompt").to_pylist() == [[{"role": "user", "content": "hi"}]]


def test_conform_missing_column() -> None:
    with pytest.raises(SchemaError, match="missing column 'prompt_id'") as e:
        conform(pa.table({"x": [1]}), PROMPTS, "prompts")
    assert e.value.column == "prompt_id"


def test_conform_uncastable_value_names_column() -> None:
    t = pa.Table.from_pylist([candidate_row(0)], schema=CANDIDATES)
    t = t.set_column(4, "sample_index", pa.array([2**40], pa.int64()))  # overflows int32
    with pytest.raises(SchemaError, match="'sample_index'") as e:
        conform(t, CANDIDATES, "candidates")
    assert e.value.column == "sample_index"


def test_conform_still_checks_nulls() -> None:
    t = pa.Table.from_pylist([candidate_row(0, candidate_id=None)], schema=CANDIDATES)
    with pytest.raises(SchemaError, match="'candidate_id' is not nullable"):
        conform(t, CANDIDATES, "candidates")


# --------------------------------------------------------------------------- from_rows


def test_from_rows_round_trip_and_empty() -> None:
    t = from_rows([candidate_row(0), candidate_row(1)], CANDIDATES, "candidates")
    assert t.schema.equals(CANDIDATES) and t.num_rows == 2
    assert from_rows([], CANDIDATES, "candidates").schema.equals(CANDIDATES)


@pytest.mark.parametrize(
    "row, column",
    [
        (candidate_row(0, sample_index="zero"), None),  # wrong type: Arrow refuses it
        (candidate_row(0, truncated="yes"), None),
        ({k: v for k, v in candidate_row(0).items() if k != "policy"}, "policy"),  # missing key
        (candidate_row(0, candidate_id=None), "candidate_id"),
    ],
)
def test_from_rows_bad_rows_raise_schema_error(row: dict[str, Any], column: str | None) -> None:
    with pytest.raises(SchemaError, match="table 'candidates'") as e:
        from_rows([candidate_row(1), row], CANDIDATES, "candidates")
    assert e.value.table == "candidates" and e.value.column == column


def test_from_rows_nested_null() -> None:
    with pytest.raises(SchemaError, match=r"prompt\[\]\.content"):
        from_rows(prompt_rows(content=None), PROMPTS, "prompts")


def test_from_rows_rejects_unknown_keys() -> None:
    row = {"candidate_id": "c", "annotator": "x", "aspect": "winrate", "scor": 0.5}
    with pytest.raises(SchemaError, match="scor"):
        from_rows([row], SCORES, "scores")


def test_schema_fingerprint_is_stable_and_distinguishes() -> None:
    assert schema_fingerprint(PROMPTS) == schema_fingerprint(PROMPTS)
    fps = {schema_fingerprint(s) for s in SCHEMAS.values()}
    assert len(fps) == len(SCHEMAS)
    loose = pa.schema([pa.field(f.name, f.type, True) for f in PROMPTS])
    assert schema_fingerprint(loose) != schema_fingerprint(PROMPTS)


# --------------------------------------------------------------------------- config: loading


def test_defaults_load() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.input.limit is None and len(cfg.generate.policies) == 1
    assert cfg.generate.policies[0].n == 4 and cfg.denoise.on_contradicted == "keep"
    assert cfg.aggregate.method == cfg.aggregate.judges_method == "auto"


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.input.limit = 3  # type: ignore[misc]


def test_empty_yaml_file_is_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "")) == RunConfig()


def test_yaml_file_then_set_overrides(tmp_path: Path) -> None:
    p = write_yaml(
        tmp_path, "name: mine\ninput:\n  limit: 5\n  path: a.jsonl\nmargins:\n  cap: 2.0\n"
    )
    cfg = load_config(p)
    assert (cfg.name, cfg.input.limit, cfg.input.path, cfg.margins.cap) == (
        "mine",
        5,
        "a.jsonl",
        2.0,
    )
    cfg = load_config(p, ["input.limit=2", "margins.lam=0.5"])
    assert cfg.input.limit == 2  # --set beats the file
    assert cfg.input.path == "a.jsonl" and cfg.name == "mine" and cfg.margins.cap == 2.0
    assert cfg.margins.lam == 0.5


def test_later_set_beats_earlier_set() -> None:
    assert load_config(None, ["input.limit=2", "input.limit=7"]).input.limit == 7


@pytest.mark.parametrize(
    "item, check",
    [
        ("generate.policies.0.n=3", lambda c: c.generate.policies[0].n == 3),
        ("generate.policies.0.stop=[a, b]", lambda c: c.generate.policies[0].stop == ["a", "b"]),
        ("input.limit=null", lambda c: c.input.limit is None),
        (
            "judge.judges.0.persona=a terse expert",
            lambda c: c.judge.judges[0].persona == "a terse expert",
        ),
        ("denoise.drop_contested=true", lambda c: c.denoise.drop_contested is True),
        (
            "generate.policies.1.name=second",
            lambda c: [p.name for p in c.generate.policies] == ["smollm2", "second"],
        ),
    ],
)
def test_set_overrides(item: str, check: Any) -> None:
    assert check(load_config(None, [item]))


def test_list_index_override_patches_the_file_entry(tmp_path: Path) -> None:
    p = write_yaml(
        tmp_path,
        "generate:\n  policies:\n    - name: a\n      n: 2\n"
        "    - name: b\n      temperature: 0.1\n",
    )
    cfg = load_config(p, ["generate.policies.1.n=3"])
    a, b = cfg.generate.policies
    assert (a.name, a.n, b.name, b.n, b.temperature) == ("a", 2, "b", 3, 0.1)


def test_unknown_key_in_yaml_has_hint(tmp_path: Path) -> None:
    p = write_yaml(tmp_path, "input:\n  limt: 2\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'input\.limt' \(did you mean "
        r"'input\.limit'\?\)",
    ) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_unknown_key_in_list_entry_keeps_user_index(tmp_path: Path) -> None:
    p = write_yaml(
        tmp_path, "generate:\n  policies:\n    - name: a\n    - name: b\n      temprature: 0.3\n"
    )
    with pytest.raises(ConfigError, match=r"did you mean 'generate\.policies\.1\.temperature'"):
        load_config(p)


@pytest.mark.parametrize(
    "item, hint",
    [
        ("input.limt=2", "input.limit"),
        ("margins.lamda=2", "margins.lam"),
        ("generate.policies.0.temprature=0.2", "generate.policies.0.temperature"),
    ],
)
def test_unknown_key_in_set_has_hint(item: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="did you mean") as e:
        load_config(None, [item])
    assert f"unknown key '{item.split('=')[0]}'" in str(e.value)
    assert f"'{hint}'" in str(e.value)


@pytest.mark.parametrize(
    "item, key",
    [
        ("generate.policies.0.n=0", "generate.policies.0.n"),
        ("generate.policies.0.top_p=1.5", "generate.policies.0.top_p"),
        ("margins.contested_band=0.5", "margins.contested_band"),
        ("denoise.on_contradicted=ignore", "denoise.on_contradicted"),
        ("input.limit=many", "input.limit"),
    ],
)
def test_invalid_value_names_the_key(item: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert f"'{key}'" in str(e.value)


def test_invalid_value_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    p = write_yaml(tmp_path, "generate:\n  policies:\n    - n: 0\n")
    with pytest.raises(ConfigError, match=r"'generate\.policies\.0\.n'") as e:
        load_config(p)
    assert str(p) in str(e.value) and "(got 0)" in str(e.value)


def test_python_tag_is_rejected_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = write_yaml(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert not marker.exists()


def test_python_tag_in_set_value_stays_a_string(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cfg = load_config(None, [f"input.source=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists() and cfg.input.source.startswith("!!python")


@pytest.mark.parametrize(
    "text, kind", [("- a\n- b\n", "list"), ("42\n", "int"), ("just text\n", "str")]
)
def test_non_mapping_yaml_is_rejected(tmp_path: Path, text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"top level must be a mapping, got {kind}"):
        load_config(write_yaml(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("item", ["input.limit", "=3", "generate.policies.x=1"])
def test_malformed_set_items(item: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, [item])


def test_parse_override_values_are_yaml() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a= x=y ") == ("a", "x=y")
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=[1, 2]") == ("a", [1, 2])


@pytest.mark.parametrize("where", ["generate.policies", "judge.judges"])
def test_duplicate_names_rejected(tmp_path: Path, where: str) -> None:
    section, key = where.split(".")
    p = write_yaml(tmp_path, f"{section}:\n  {key}:\n    - name: x\n    - name: x\n")
    with pytest.raises(ConfigError, match="must be unique"):
        load_config(p)


def test_duplicate_policy_names_via_set() -> None:
    with pytest.raises(ConfigError, match="policy names must be unique"):
        load_config(None, ["generate.policies.1.n=2"])  # a second default 'smollm2'


# --------------------------------------------------------------------------- config: redact


def test_redact_hides_api_key_but_keeps_api_key_env() -> None:
    data = {
        "model": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY", "base_url": "http://x"},
        "list": [{"Authorization": "Bearer t", "secret": None}],
        "password": 3,
    }
    out = redact(data)
    assert out["model"] == {
        "api_key": "***",
        "api_key_env": "OPENAI_API_KEY",
        "base_url": "http://x",
    }
    assert out["list"] == [{"Authorization": "***", "secret": None}]
    assert out["password"] == "***"
    assert data["model"]["api_key"] == "sk-123"  # the input is not modified


def test_resolved_dict_keeps_api_key_env_and_is_json_data() -> None:
    cfg = load_config(None, ["generate.policies.0.model.api_key_env=MY_KEY"])
    d = resolved_dict(cfg)
    assert d["generate"]["policies"][0]["model"]["api_key_env"] == "MY_KEY"
    assert d["input"]["limit"] is None
    assert config_hash(d) == config_hash(
        resolved_dict(load_config(None, ["generate.policies.0.model.api_key_env=MY_KEY"]))
    )


def test_resolved_dict_keeps_max_tokens() -> None:
    d = resolved_dict(load_config(None))
    assert d["generate"]["policies"][0]["max_tokens"] == 128
    assert d["judge"]["judges"][0]["max_tokens"] == 48
    a = resolved_dict(load_config(None, ["generate.policies.0.max_tokens=64"]))
    assert config_hash(a) != config_hash(d)


def test_engine_key_ignores_structured_backend() -> None:
    a = PolicyConfig().model
    b = a.model_copy(update={"structured_backend": "xgrammar"})
    c = a.model_copy(update={"dtype": "float16"})
    assert a.engine_key() == b.engine_key() != c.engine_key()


def test_cross_section_checks_fail_at_load_and_wait_for_the_last_set() -> None:
    """A config that cannot work is refused by load_config (before Prefect or any model),
    and a check across sections is made after every --set is applied, so a later --set
    can satisfy it."""
    from schemas.config import load_config
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="best_worst needs a first signal"):
        load_config(None, ["judge.pair_selection=best_worst", "rubrics.judges=[]"])
    ok = load_config(
        None,
        ["judge.pair_selection=best_worst", "rubrics.judges=[]", "rewards.models=[{model: /m}]"],
    )
    assert ok.judge.pair_selection == "best_worst"
    with pytest.raises(ConfigError, match="select.budget needs embeddings") as exc:
        load_config(None, ["select.budget=0.5", "embed.enabled=false"])
    assert "got {" not in str(exc.value)  # names the keys, does not dump the config


def test_set_list_index_must_exist_or_be_the_next_one() -> None:
    from schemas.config import load_config
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="index 5 is past the end of a list of 1 entry"):
        load_config(None, ["generate.policies.5.n=2"])
    cfg = load_config(None, ["judge.judges.1.name=j2", "judge.judges.1.model.model=m"])
    assert [j.name for j in cfg.judge.judges] == ["smollm2-judge", "j2"]
