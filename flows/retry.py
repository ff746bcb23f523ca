"""The retry rule of the flow's tasks: only errors a retry can fix (connection failures,
timeouts, HTTP 5xx, OS errors that say "try again") are retried, and only by the tasks
made with :func:`model_task`; a ``KeyError`` in stage code fails at once."""

from __future__ import annotations

import errno
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EINTR,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


def is_transient(exc: BaseException | None) -> bool:
    """The allow-list of errors a retry can fix: connection failures and timeouts
    (builtins and httpx), HTTP 5xx, and OS errors that say "try again" (a full disk, a
    read-only or missing folder, a KeyError in stage code are not: retrying them only
    delays the error by a minute).

    >>> is_transient(ConnectionRefusedError()), is_transient(TimeoutError())
    (True, True)
    >>> is_transient(KeyError("x")), is_transient(OSError(errno.ENOSPC, "No space left"))
    (False, False)
    """
    if exc is None:
        return False
    try:
        import httpx

        if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code >= 500
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry only :func:`is_transient` errors. Model calls
    already made are in the request cache, so a retry repeats none of them."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # pragma: no cover - cannot read the state: do not guess
        return False
    return is_transient(exc if isinstance(exc, BaseException) else None)


def model_task(name: str, retries: int = 2, delay: int | tuple[int, ...] = (10, 60)) -> Any:
    """A task that calls models (or reads inputs, writes the store): errors on the
    allow-list of :func:`is_transient` are retried ``retries`` times, after ``delay``
    seconds; nothing else is."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=retries,
        retry_delay_seconds=list(delay) if isinstance(delay, tuple) else delay,
        retry_condition_fn=retry_transient,
    )
