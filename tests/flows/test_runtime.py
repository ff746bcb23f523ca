"""flows/runtime.py: one Runtime object, passed in explicitly, instead of module-level
registries of contexts, engines, secrets and progress bars."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import flows.curate
import flows.qualify
import flows.runtime
import flows.shards
import flows.tasks
from flows.curate import curate, run_curation
from flows.runtime import Runtime
from pipeline.engines.embedded import default_cache_dir
from schemas.config import load_config
from tests.fake_run import FAKE_RUN


def _fake(tmp_path, examples, *extra):
    return load_config(
        None,
        [
            f"data_root={tmp_path}",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=2",
            *FAKE_RUN,
            *extra,
        ],
    ).model_dump(mode="json")


@pytest.mark.parametrize(
    "module", [flows.runtime, flows.curate, flows.tasks, flows.shards, flows.qualify]
)
def test_no_module_level_registry(module):
    """No mutable dict, list or set assigned at module level (``__all__`` aside): state
    lives in a Runtime or a RunContext."""
    tree = ast.parse(Path(module.__file__).read_text())
    assigned = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        assigned |= {t.id for t in targets if isinstance(t, ast.Name)}
    found = [
        name
        for name in sorted(assigned - {"__all__"})
        if isinstance(getattr(module, name), (dict, list, set))
    ]
    for node in tree.body:  # nor one at class level (a registry shared by every instance)
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name)
            found += [
                f"{node.name}.{k}"
                for k, v in vars(cls).items()
                if isinstance(v, (dict, list, set)) and not k.startswith("__")
            ]
    assert found == []
    assert "SECRETS" not in vars(module) and "_CONTEXTS" not in vars(module)


def test_runs_given_one_runtime_share_its_engines(tmp_path, examples):
    rt = Runtime()
    try:
        curate(_fake(tmp_path / "a", examples), runtime=rt)
        pool = rt.pool(default_cache_dir())
        first = dict(pool._engines)
        assert len(first) == 2  # the fake policy and the fake judge, started once
        curate(_fake(tmp_path / "b", examples), runtime=rt)
        assert {k: id(v) for k, v in pool._engines.items()} == {k: id(v) for k, v in first.items()}
    finally:
        rt.close()
    assert rt.pool(default_cache_dir())._engines == {}  # closed: a later run starts afresh


def test_a_run_without_runtime_owns_and_closes_its_own(tmp_path, examples, monkeypatch):
    closed = []
    real_close = Runtime.close

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Runtime, "close", close)
    summary = curate(_fake(tmp_path, examples))
    assert summary["created"] and len(closed) == 1
    rt = Runtime()
    curate(_fake(tmp_path / "x", examples), runtime=rt)
    assert len(closed) == 1  # a lent runtime is its owner's to close
    rt.close()


def test_secrets_reach_the_run_through_the_runtime_only_once(tmp_path, examples, monkeypatch):
    """A secret in the config (a URL's user info) goes to the flow through the runtime,
    never as a Prefect parameter, and the runtime forgets it after the run."""
    seen = {}
    real = flows.curate.RunConfig.model_validate

    def spy(config, *a, **k):
        cfg = real(config, *a, **k)
        seen.setdefault("cfgs", []).append(cfg)
        return cfg

    monkeypatch.setattr(flows.curate.RunConfig, "model_validate", spy)
    params = {}
    real_serialize = type(curate).serialize_parameters

    def serialize(self, parameters):
        out = real_serialize(self, parameters)
        params.update(out)
        return out

    monkeypatch.setattr(type(curate), "serialize_parameters", serialize)
    cfg = _fake(tmp_path, examples, "judge.judges.0.model.base_url=http://user:pw0rd@h/v1")
    rt = Runtime()
    run_curation(cfg, rt)
    assert "pw0rd" not in repr(params) and params["runtime"] == "<Runtime>"
    assert any(c.judge.judges[0].model.base_url == "http://user:pw0rd@h/v1" for c in seen["cfgs"])
    assert rt._secrets == {}
    rt.close()


def test_keep_and_take_secrets():
    rt = Runtime()
    ref = rt.keep_secrets({"a": 1})
    copy = pickle.loads(pickle.dumps(rt))  # what a Dask or Ray worker would receive
    assert isinstance(copy, Runtime) and copy._secrets == {} and copy._pools == {}
    assert rt.take_secrets(ref) == {"a": 1}
    assert rt.take_secrets(ref) == {}


class _Recorder:
    """A Progress that records what the run showed."""

    def __init__(self):
        self.bars, self.stages = [], {}

    def bar(self, label, total):
        self.bars.append((label, total))
        return lambda n: None

    def stage(self, label):
        def done(rows):
            self.stages[label] = rows

        return done


def test_every_computed_stage_reports_its_rows(tmp_path, examples):
    rec = _Recorder()
    rt = Runtime(progress=rec)
    try:
        summary = curate(_fake(tmp_path, examples), runtime=rt)
        assert set(rec.stages) == set(summary["stages"]) | {"publish"}  # one line each...
        for stage, rows in rec.stages.items():  # ... with its rows in (publish: rows out)
            assert rows == (
                summary["rows"] if stage == "publish" else summary["stages"][stage]["in"]
            )
        assert {label.split(" ")[0] for label, _ in rec.bars} >= {"generate", "judge"}
        rec.stages.clear()
        curate(_fake(tmp_path, examples), runtime=rt)
        assert set(rec.stages) == {"publish"}  # all reused: only publish looks again
    finally:
        rt.close()


def test_the_cli_display_shows_rows_per_second():
    from rich.console import Console

    from flows import console as cli_console

    console = Console(record=True, width=160, force_terminal=False)
    prog = cli_console._RichProgress(console)
    done = prog.stage("aggregate")
    done(1_000_000)
    prog.stop()
    text = console.export_text()
    assert "aggregate" in text and "1,000,000 rows" in text and "rows/s" in text
