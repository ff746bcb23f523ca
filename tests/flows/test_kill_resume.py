"""Kill the whole CLI with SIGKILL mid-generation and mid-judging, rerun, and prove that no
committed model call is ever made again and that nothing is lost.

The fake engine appends each answered request's cache key to ``$PREFCURATE_FAKE_CALL_LOG``
(one file per run here) and sleeps ``$PREFCURATE_FAKE_DELAY`` per request; ``run_cached``
commits the request cache after every batch of ``batch_size`` requests. So after a kill:

* committed = the keys in the request cache (SQLite, read after the kill);
* in flight = the keys the killed run logged but had not committed: at most one batch.

Exact claims checked: a later run never calls a committed key again (0 duplicate calls);
the only keys called twice are in-flight ones; every key of the uninterrupted reference
run is answered and cached, and no other; the published dataset equals the reference's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipeline.store import datasets as store

REPO = Path(__file__).resolve().parents[2]
BATCH = 4
N_PROMPTS = 16
N_SAMPLES = 3
PAIRS_PER_PROMPT = 2
N_GEN = N_PROMPTS  # one request per prompt (n samples each)
N_JUDGE = N_PROMPTS * PAIRS_PER_PROMPT * 2  # both orders
KEY_LEN = 32  # ChatRequest.key() length; each log line is KEY_LEN + 1 bytes

pytestmark = pytest.mark.timeout(600)  # target < 90 s on an idle 2-core machine
_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """If the test fails midway, stop the runs it started (their process groups)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _write_inputs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Question {i}: explain topic {i * 7} briefly."})
            + "\n"
            for i in range(N_PROMPTS)
        )
    )
    cfg = root / "run.yaml"
    cfg.write_text(f"""name: killed
data_root: {root / "data"}
input: {{kind: prompts, path: {prompts}, limit: null}}
generate:
  batch_size: {BATCH}
  policies:
    - {{name: pol, model: {{engine: fake, model: fake-policy}}, n: {N_SAMPLES}, seed: 3}}
rubrics: {{judges: []}}
judge:
  batch_size: {BATCH}
  max_pairs_per_prompt: {PAIRS_PER_PROMPT}
  judges:
    - {{name: judge, model: {{engine: fake, model: fake-judge}}, seed: 5}}
""")
    return cfg


def _start(cfg: Path, call_log: Path, prefect_home: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PREFCURATE_FAKE_CALL_LOG": str(call_log),
        "PREFCURATE_FAKE_DELAY": "0.05",
        "PREFECT_HOME": str(prefect_home),
        "PYTHONPATH": str(REPO),
        # SIGABRT (sent by _finish to a run past its deadline) dumps every thread's stack
        "PYTHONFAULTHANDLER": "1",
    }
    # output to files (a full pipe would stall the run); its own session, so that SIGKILL
    # reaches the CLI and the Prefect server it spawns
    with (
        open(call_log.with_suffix(".out"), "w") as out,
        open(call_log.with_suffix(".err"), "w") as err,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(cfg), "--json"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    proc.call_log = call_log  # type: ignore[attr-defined]
    _STARTED.append(proc)
    return proc


def _stderr(proc: subprocess.Popen, n: int = 3000) -> str:
    return proc.call_log.with_suffix(".err").read_text(errors="replace")[-n:]


def _finish(proc: subprocess.Popen, timeout_s: float = 300) -> dict:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)  # faulthandler: the stacks of the stuck run
        try:
            proc.wait(timeout=30)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run did not finish in {timeout_s} s; its stderr: {_stderr(proc, 30000)}")
    assert proc.returncode == 0, _stderr(proc)
    return json.loads(proc.call_log.with_suffix(".out").read_text())


def _lines(log: Path) -> int:
    try:
        return log.stat().st_size // (KEY_LEN + 1)
    except FileNotFoundError:
        return 0


def _kill_at(proc: subprocess.Popen, log: Path, n_lines: int, deadline_s: float = 300) -> None:
    """SIGKILL the run's process group as soon as its call log has ``n_lines`` lines."""
    end = time.monotonic() + deadline_s
    while _lines(log) < n_lines:
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended before the kill point ({_lines(log)} < {n_lines} "
                f"calls): {_stderr(proc)}"
            )
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"kill point of {n_lines} calls not reached in {deadline_s} s")
        time.sleep(0.003)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.monotonic() + 30  # the Prefect server child went with it
    while _group_alive(proc.pid):
        assert time.monotonic() < end, "a process of the killed run survived"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of group ``pgid`` remains (Linux /proc)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _calls(log: Path) -> list[str]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    assert all(len(x) == KEY_LEN for x in lines), "torn line in the call log"
    return lines


def _cache(root: Path) -> dict[str, str]:
    """key -> model of every committed completion."""
    conn = sqlite3.connect(root / "data" / "cache" / "requests.sqlite")
    try:
        return dict(conn.execute("SELECT key, model FROM completions"))
    finally:
        conn.close()


def _versions_dir(root: Path) -> Path:
    return root / "data" / "datasets" / "killed"


def _rows(version_path: str) -> list[dict]:
    rows = pl.read_parquet(Path(version_path) / "data.parquet").to_dicts()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_sigkill_mid_generation_and_mid_judging_then_resume(tmp_path):
    t_ref = time.monotonic()
    ref_root, root = tmp_path / "reference", tmp_path / "killed"
    ref_cfg, cfg = _write_inputs(ref_root), _write_inputs(root)
    # The uninterrupted reference runs first, alone (its own store, cache and Prefect home:
    # run beside the killed runs it once hung past 300 s on a loaded CI machine); the killed
    # runs share one Prefect home (its SQLite survives SIGKILL, and a fresh one costs ~5 s
    # of migrations per run).
    reference = _finish(_start(ref_cfg, ref_root / "calls.log", ref_root / "prefect"))
    t0 = time.monotonic()
    logs = [root / f"calls-{i}.log" for i in range(3)]

    # run 1: killed mid-generation, in the second batch
    _kill_at(_start(cfg, logs[0], root / "prefect"), logs[0], BATCH + 2)
    committed1 = _cache(root)
    calls1 = _calls(logs[0])
    assert not list(_versions_dir(root).glob("v*"))
    gen_done1 = set(committed1)
    assert 0 < len(gen_done1) < N_GEN, "the kill did not land mid-generation"
    inflight1 = set(calls1) - set(committed1)
    assert len(inflight1) <= BATCH

    t1 = time.monotonic()
    # run 2: redoes generation from the cache, killed mid-judging
    gen_left = N_GEN - len(gen_done1)
    _kill_at(_start(cfg, logs[1], root / "prefect"), logs[1], gen_left + BATCH + 2)
    committed2 = _cache(root)
    calls2 = _calls(logs[1])
    judge_done2 = {k for k, m in committed2.items() if m == "fake-judge"}
    assert 0 < len(judge_done2) < N_JUDGE, "the kill did not land mid-judging"
    assert len({k for k, m in committed2.items() if m == "fake-policy"}) == N_GEN
    inflight2 = set(calls2) - set(committed2)
    assert len(inflight2) <= BATCH
    assert not list(_versions_dir(root).glob("v*"))

    t2 = time.monotonic()
    # run 3: to completion
    summary = _finish(_start(cfg, logs[2], root / "prefect"))
    calls3 = _calls(logs[2])
    t3 = time.monotonic()
    ref_calls = _calls(ref_root / "calls.log")
    final = _cache(root)

    # --- zero duplicate calls: a committed request is never called again
    assert not set(calls2) & set(committed1)
    assert not set(calls3) & set(committed2)
    for calls in (calls1, calls2, calls3, ref_calls):
        assert len(calls) == len(set(calls))  # no run calls a request twice
    counts = Counter(calls1 + calls2 + calls3)
    repeated = {k for k, c in counts.items() if c > 1}
    assert repeated <= inflight1 | inflight2  # only the batches in flight at a kill
    # --- nothing lost, nothing extra: the same requests as the uninterrupted run
    assert set(counts) == set(final) == set(ref_calls)
    assert len(ref_calls) == N_GEN + N_JUDGE
    assert summary["calls"].get("generate", {}).get("made", 0) == 0  # finished in run 2
    assert summary["stages"]["generate"]["reused"] and not summary["stages"]["judge"]["reused"]
    j = summary["calls"]["judge"]
    assert {k: j[k] for k in ("requests", "made", "reused", "failed")} == {
        "requests": N_JUDGE,
        "made": len(calls3),
        "reused": N_JUDGE - len(calls3),
        "failed": 0,
    }
    # the calls answered before the kill are reused: their tokens are tokens saved
    assert (j["saved_output_tokens"] > 0) == (j["reused"] > 0)
    assert (j["output_tokens"] > 0) == (j["made"] > 0)

    # --- the published version: complete, alone, identical to the reference
    vdir = Path(summary["path"])
    assert summary["version"] == 1 and summary["created"]
    assert sorted(p.name for p in _versions_dir(root).iterdir()) == [".lock", "v1"]
    assert store.verify_version(vdir) == []  # every file hashed in the manifest, no extra
    assert _rows(summary["path"]) == _rows(reference["path"])
    assert summary["rows"] == reference["rows"] > 0
    manifest, ref_manifest = store.read_manifest(vdir), store.read_manifest(reference["path"])
    for stage, c in manifest["stages"].items():
        assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values()), (
            stage
        )
        assert {k: c[k] for k in ("in", "kept", "dropped", "quarantined")} == {
            k: ref_manifest["stages"][stage][k] for k in ("in", "kept", "dropped", "quarantined")
        }, stage
    print(
        f"\nkill/resume: {len(repeated)} in-flight re-calls "
        f"({len(inflight1)} + {len(inflight2)} in flight at the kills), "
        f"0 re-calls of committed requests; runs took {t1 - t0:.1f} / {t2 - t1:.1f} / "
        f"{t3 - t2:.1f} s after the reference's {t0 - t_ref:.1f} s"
    )


@pytest.mark.parametrize("seed", [7])
def test_sigkill_at_random_moments_after_the_model_stages(tmp_path, seed):
    """SIGKILL at seeded random moments once every model call is made (embed, aggregate,
    margins, denoise, pairs, publish, report), rerun: no model call repeated, no version
    half-written or duplicated, the dataset equals the uninterrupted run's."""
    import random

    rng = random.Random(seed)
    ref_root, root = tmp_path / "reference", tmp_path / "killed"
    ref_cfg, cfg = _write_inputs(ref_root), _write_inputs(root)
    reference = _finish(_start(ref_cfg, ref_root / "calls.log", ref_root / "prefect"))
    total = N_GEN + N_JUDGE
    delays = []
    for i in range(3):
        log = root / f"calls-{i}.log"
        proc = _start(cfg, log, root / "prefect")
        db = root / "data" / "cache" / "requests.sqlite"
        need = total - (len(_cache(root)) if db.exists() else 0)  # calls still to make
        end = time.monotonic() + 300
        while _lines(log) < need and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 8.0)
        delays.append(round(delay, 2))
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # whatever was visible after the kill: only complete, verifiable versions
        for v in _versions_dir(root).glob("v*"):
            assert store.verify_version(v) == [], v
        assert len(_cache(root)) == total  # every call committed before the kill
    final_log = root / "calls-final.log"
    summary = _finish(_start(cfg, final_log, root / "prefect"))
    assert _calls(final_log) == []  # zero model calls repeated after the kills
    names = sorted(p.name for p in _versions_dir(root).iterdir() if not p.name.startswith("."))
    assert names == ["v1"], names  # a killed publish left nothing half-written or doubled
    assert store.verify_version(summary["path"]) == []
    assert _rows(summary["path"]) == _rows(reference["path"])
    print(f"\nrandom kills after {delays} s past the last model call; final run made 0 calls")
