"""The durable per-request cache (SQLite) and :func:`run_cached`, which answers requests
from it and makes only the missing calls, counted in :class:`CallStats`."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from pipeline.engines.protocol import ChatRequest, Completion, Engine, over_budget
from schemas.errors import EngineError

# the logger of pipeline.engines.base, where this code was: log lines read as before
log = logging.getLogger("prefcurate.pipeline.engines.base")


def request_cache_path(data_root: str | Path) -> Path:
    """Where a store's request cache lives: ``<data_root>/cache/requests.sqlite``."""
    return Path(data_root) / "cache" / "requests.sqlite"


class RequestCache:
    """Durable request → completion store (SQLite, WAL). Thread- and process-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=60, check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, "
            "engine TEXT, model TEXT, value TEXT NOT NULL, created REAL)"
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(keys)
        found: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT key, value FROM completions WHERE key IN ({marks})"
                for k, v in self._conn.execute(q, chunk):
                    found[k] = Completion.from_json(v)
        return found

    def put_many(self, items: list[tuple[str, str, str, Completion]]) -> None:
        """Store (key, engine kind, model, completion) rows in one durable transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                    [(k, e, m, c.to_json(), time.time()) for k, e, m, c in items],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class CallStats:
    """The model calls of one stage and model in one run.

    ``requests`` asked = ``reused`` (from the request cache, or duplicates) + ``made`` +
    ``over_budget`` (not made: a budget was reached); ``failed`` of the made ones came back
    with an error. Tokens are the engine's own counts (vLLM's token ids, the server's
    ``usage``) for the calls made; ``seconds`` their wall time (batches apportioned to
    their calls) plus engine start-up; ``saved_*`` the same for the reused calls: what
    the cache saved this run. ``untokened``: answered calls without a token count.
    """

    requests: int = 0
    reused: int = 0
    made: int = 0
    failed: int = 0
    over_budget: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    start_seconds: float = 0.0
    saved_prompt_tokens: int = 0
    saved_output_tokens: int = 0
    saved_seconds: float = 0.0
    untokened: int = 0

    def add(self, other: CallStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def count(self, comp: Completion, *, saved: bool) -> None:
        """Add one answered call's tokens and seconds (as saved when it was reused)."""
        p, o, sec = comp.n_prompt_tokens or 0, comp.output_tokens or 0, comp.seconds or 0.0
        if comp.error is None and (comp.n_prompt_tokens is None or comp.output_tokens is None):
            self.untokened += 1
        if saved:
            self.saved_prompt_tokens += p
            self.saved_output_tokens += o
            self.saved_seconds += sec
        else:
            self.prompt_tokens += p
            self.output_tokens += o
            self.seconds += sec

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("seconds", "start_seconds", "saved_seconds"):
            d[k] = round(d[k], 3)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallStats:
        """From :meth:`to_dict` (older records lack the token fields: zeros)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Gate(Protocol):
    """What :func:`run_cached` asks before each batch (a run's budget): how many of the
    leading ``requests`` may be made now (0: none, the budget is reached, and why), and it
    reports what each batch made."""

    def admit(self, requests: Sequence[ChatRequest], engine: Engine) -> tuple[int, str]: ...

    def charge(self, made: CallStats) -> None: ...


def run_cached(
    requests: Sequence[ChatRequest],
    *,
    engine_kind: str,
    model: str,
    get_engine: Callable[[], Engine],
    cache: RequestCache,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    gate: Gate | None = None,
) -> tuple[list[Completion], CallStats]:
    """Answer ``requests`` in order, from the cache where possible.

    The engine is only built (``get_engine()``) when a request is missing from the cache.
    Completions are committed after every batch. Completions with a retryable ``error``
    are returned but not cached, so the next run retries them. With a ``gate`` (a budget)
    each batch makes only the calls it admits; once it admits none, the remaining requests
    get an ``over_budget`` error (not cached: a rerun with a higher budget makes them).
    """
    keys = [r.key(engine_kind, model) for r in requests]
    stats = CallStats(requests=len(requests))
    results, missing_idx = _reuse(keys, cache, stats)
    if progress and stats.reused:
        progress(stats.reused)
    if not missing_idx:
        return [results[k] for k in keys], stats
    t0 = time.perf_counter()
    engine = get_engine()
    stats.start_seconds = time.perf_counter() - t0  # ~0 when the pool had it already
    stats.seconds += stats.start_seconds
    start = 0
    while start < len(missing_idx):
        chunk = missing_idx[start : start + batch_size]
        reqs = [requests[i] for i in chunk]
        if gate is not None:
            n_ok, why = gate.admit(reqs, engine)
            if n_ok <= 0:
                for i in missing_idx[start:]:
                    results[keys[i]] = over_budget(why)
                    stats.over_budget += 1
                if progress:
                    progress(len(missing_idx) - start)
                log.warning("budget reached (%s): %d calls not made", why, len(missing_idx) - start)
                break
            chunk, reqs = chunk[:n_ok], reqs[:n_ok]
        start += len(chunk)
        outs, made = _make_calls(engine, reqs)
        good = [(keys[i], engine_kind, model, c) for i, c in zip(chunk, outs) if c.final]
        if good:
            cache.put_many(good)
        for i, c in zip(chunk, outs):
            results[keys[i]] = c
        stats.add(made)
        if gate is not None:
            gate.charge(made)
        if progress:
            progress(len(chunk))
    return [results[k] for k in keys], stats


def _reuse(
    keys: list[str], cache: RequestCache, stats: CallStats
) -> tuple[dict[str, Completion], list[int]]:
    """The final answers ``cache`` holds for ``keys``, and the index of the first request of
    each key still to be made; ``stats`` counts the cached ones and the repeated keys as
    reused."""
    cached = cache.get_many(set(keys))
    results: dict[str, Completion] = {k: v for k, v in cached.items() if v.final}
    missing_idx: list[int] = []
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in results:
            stats.reused += 1
            stats.count(results[k], saved=True)
        elif k not in seen:
            missing_idx.append(i)
            seen.add(k)
        else:
            stats.reused += 1  # duplicate request within the batch: answered once
    return results, missing_idx


def _make_calls(engine: Engine, reqs: list[ChatRequest]) -> tuple[list[Completion], CallStats]:
    """One batch through the engine: its answers (each with its share of the batch's wall
    time; a batch that raised is one error answer per request) and what it made."""
    t0 = time.perf_counter()
    try:
        outs = engine.complete(reqs)
    except EngineError:
        raise
    except Exception as exc:  # one failed batch becomes error rows, retried later
        log.warning("engine batch failed: %s: %s", type(exc).__name__, exc)
        outs = [
            Completion(texts=[], finish_reasons=[], error=f"{type(exc).__name__}: {exc}"[:500])
            for _ in reqs
        ]
    share = (time.perf_counter() - t0) / max(len(outs), 1)
    made = CallStats()
    for c in outs:
        c.seconds = share
        made.made += 1
        made.failed += c.error is not None
        made.count(c, saved=False)
    return outs, made
