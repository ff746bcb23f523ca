"""A small HTTP client for a Label Studio server (open source, 1.23): projects, tasks, answers.

Label Studio runs in its own virtual environment (``.venv-review``, made by
``scripts/install.sh``) and is reached over HTTP only, with ``httpx``:

- ``GET /health``: ``{"status": "UP"}`` once the server is ready (no auth);
- ``POST /api/token/refresh/`` ``{"refresh": PAT}`` → ``{"access": ...}``: a Personal
  Access Token (a JWT refresh token) is exchanged for a short-lived access token, sent as
  ``Authorization: Bearer <access>``; on a 401 the access token is refreshed once and the
  request retried. A token that is not a JWT is a legacy token, sent as
  ``Authorization: Token <key>`` (legacy tokens are off by default for new organisations);
- ``GET /api/projects/?title=...&page=N`` (paginated, ``next`` until null) and
  ``POST /api/projects/``;
- ``GET /api/tasks/?project=ID&page=N&page_size=M`` (``{"tasks": [...], "total": n}``, in
  task id order);
- ``POST /api/projects/ID/import`` (a JSON list of ``{"data": {...}}``; the community
  edition imports synchronously and answers ``task_count``);
- ``GET /api/projects/ID/export?exportType=JSON&download_all_tasks=true``: every task with
  its annotations;
- ``POST /api/tasks/ID/annotations/`` ``{"result": [...]}`` (as the token's user);
- ``GET /api/current-user/whoami``.

Every non-2xx answer raises :class:`ReviewError` (method, path, status, the start of the
body); a server that cannot be reached raises it with the command that starts one. The
token is never logged and never part of an error message (it is scrubbed from bodies too).

>>> ls = LabelStudio("http://127.0.0.1:8080/", "0123456789abcdef")
>>> ls
LabelStudio(url='http://127.0.0.1:8080', auth='legacy token')
>>> ls.close()
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import httpx

from schemas.errors import ConfigError, PrefcurateError

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
START_COMMAND = ".venv-review/bin/label-studio start --port 8080 --no-browser"
IMPORT_CHUNK = 500
PAGE_SIZE = 100  # the project list's maximum page size
TASK_PAGE_SIZE = 500
BODY_CHARS = 300
# annotation fields export_tasks keeps (pipeline.review.votes reads the first four)
ANNOTATION_KEYS = ("id", "completed_by", "result", "was_cancelled", "created_at", "updated_at")
LEGACY_401_HINT = (
    "a legacy token: they are off by default for new organisations, use a Personal Access "
    "Token (Account & Settings)"
)
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


class ReviewError(PrefcurateError):
    """Label Studio refused a request or could not be reached.

    ``status`` is the HTTP status (None when no answer came), ``method`` and ``path`` the
    request's.
    """

    def __init__(
        self, message: str, *, method: str = "", path: str = "", status: int | None = None
    ):
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status


def is_jwt(token: str) -> bool:
    """Whether ``token`` looks like a JWT (a Personal Access Token) rather than a legacy key:
    three dot-separated base64url parts whose first decodes to a JSON header with ``alg``.

    >>> header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    >>> is_jwt(f"{header}.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl")
    True
    >>> is_jwt("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")  # a legacy token (40 hex digits)
    False
    >>> is_jwt("a.b.c"), is_jwt(f"{header}.x"), is_jwt("")
    (False, False, False)
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.match(p) for p in parts):
        return False
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except ValueError:
        return False
    return isinstance(header, dict) and "alg" in header


class LabelStudio:
    """A Label Studio server at ``url`` used with ``token`` (a PAT or a legacy token).

    One ``httpx.Client`` per instance (``close()`` it, or use ``with``); ``timeout_s`` bounds
    every request.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._pat = is_jwt(token)
        self._access: str | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    @classmethod
    def from_env(cls, url: str | None = None) -> LabelStudio:
        """A client for ``url`` (else ``$LABEL_STUDIO_URL``, else ``http://127.0.0.1:8080``)
        with the token in ``$LABEL_STUDIO_API_KEY``; :class:`ConfigError` when it is unset."""
        token = os.environ.get(KEY_ENV, "").strip()
        if not token:
            raise ConfigError(
                f"{KEY_ENV} is not set: in Label Studio open Account & Settings → Personal "
                f"Access Token, create a token and export it as {KEY_ENV}"
            )
        return cls(url or os.environ.get(URL_ENV) or DEFAULT_URL, token)

    def __repr__(self) -> str:
        auth = "personal access token" if self._pat else "legacy token"
        return f"LabelStudio(url={self.url!r}, auth={auth!r})"

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- the API ---------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the server answers ``/health`` with ``UP``; False when it answers
        anything else or cannot be reached (no token needed)."""
        try:
            r = self._http.get("/health")
        except httpx.TransportError:
            return False
        try:
            return r.status_code == 200 and r.json().get("status") == "UP"
        except ValueError:
            return False

    def whoami(self) -> dict[str, Any]:
        """The token's user (``id``, ``username``, ``email``, ...)."""
        return self._json("GET", "/api/current-user/whoami")

    def find_project(self, title: str) -> int | None:
        """The id of the (first, newest) project titled exactly ``title``, or None."""
        page = 1
        while True:
            params = {"title": title, "page": page, "page_size": PAGE_SIZE}
            body = self._json("GET", "/api/projects/", params=params)
            for p in body.get("results", []):
                if p.get("title") == title:
                    return int(p["id"])
            if not body.get("next"):
                return None
            page += 1

    def create_project(
        self, title: str, label_config: str, description: str = "", maximum_annotations: int = 1
    ) -> int:
        """Create a project and return its id; with ``maximum_annotations`` > 1 every task
        (``overlap_cohort_percentage=100``) is shown to that many people."""
        body: dict[str, Any] = {
            "title": title,
            "label_config": label_config,
            "description": description,
            "maximum_annotations": maximum_annotations,
        }
        if maximum_annotations > 1:
            body["overlap_cohort_percentage"] = 100
        return int(self._json("POST", "/api/projects/", json=body)["id"])

    def task_ids_by(self, project_id: int, key: str = "pair_id") -> dict[str, int]:
        """``{data[key]: task id}`` over every task of the project (a task without ``key`` is
        left out)."""
        out: dict[str, int] = {}
        page, seen = 1, 0
        while True:
            params = {"project": project_id, "page": page, "page_size": TASK_PAGE_SIZE}
            body = self._json("GET", "/api/tasks/", params=params)
            tasks = body.get("tasks", [])
            for t in tasks:
                value = (t.get("data") or {}).get(key)
                if value is not None:
                    out[str(value)] = int(t["id"])
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return out
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Import ``tasks`` (each ``{"data": {...}}``) in chunks of at most 500; returns how
        many tasks were created."""
        created = 0
        for i in range(0, len(tasks), IMPORT_CHUNK):
            chunk = tasks[i : i + IMPORT_CHUNK]
            body = self._json("POST", f"/api/projects/{project_id}/import", json=chunk)
            if "task_count" not in body:
                raise ReviewError(
                    f"POST /api/projects/{project_id}/import answered without task_count "
                    f"(an asynchronous import?): {_short(json.dumps(body))}",
                    method="POST",
                    path=f"/api/projects/{project_id}/import",
                )
            created += int(body["task_count"])
        return created

    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project (``id``, ``data``, ``annotations``) with its annotations
        (``id``, ``completed_by`` as a user id, ``result``, ``was_cancelled``, times)."""
        params = {"exportType": "JSON", "download_all_tasks": "true"}
        tasks = self._json("GET", f"/api/projects/{project_id}/export", params=params)
        return [_task(t) for t in tasks]

    def add_annotation(self, task_id: int, result: list[dict[str, Any]]) -> int:
        """Annotate a task as the token's user; returns the annotation id."""
        body = self._json("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})
        return int(body["id"])

    # --- HTTP ------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON body of a successful request."""
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ReviewError(
                f"{method} {path}: HTTP {r.status_code} with a body that is not JSON: "
                f"{self._scrub(r.text)}",
                method=method,
                path=path,
                status=r.status_code,
            ) from None

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send with the token's header; a PAT's access token is refreshed once on a 401."""
        r = self._send(method, path, headers=self._auth_header(), **kw)
        if r.status_code == 401 and self._pat:
            self._access = None
            r = self._send(method, path, headers=self._auth_header(), **kw)
        hint = LEGACY_401_HINT if r.status_code == 401 and not self._pat else ""
        self._check(r, method, path, hint)
        return r

    def _auth_header(self) -> dict[str, str]:
        if not self._pat:
            return {"Authorization": f"Token {self._token}"}
        if self._access is None:
            self._access = self._refresh()
        return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self) -> str:
        """A new access token for the PAT."""
        path = "/api/token/refresh/"
        r = self._send("POST", path, json={"refresh": self._token})
        self._check(r, "POST", path, hint="the Personal Access Token was refused")
        try:
            return str(r.json()["access"])
        except (ValueError, KeyError):
            raise ReviewError(
                f"POST {path}: HTTP {r.status_code} without an access token",
                method="POST",
                path=path,
                status=r.status_code,
            ) from None

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ReviewError(
                f"Label Studio at {self.url} is not reachable ({exc}); start it with "
                f"`{START_COMMAND}` (installed by `bash scripts/install.sh`) and set "
                f"{URL_ENV} to its address",
                method=method,
                path=path,
            ) from None
        except httpx.TransportError as exc:
            raise ReviewError(
                f"{method} {path}: Label Studio at {self.url} did not answer "
                f"({type(exc).__name__}: {self._scrub(str(exc))})",
                method=method,
                path=path,
            ) from None

    def _check(self, r: httpx.Response, method: str, path: str, hint: str = "") -> None:
        """Raise :class:`ReviewError` for a non-2xx answer."""
        if 200 <= r.status_code < 300:
            return
        what = f" ({hint})" if hint else ""
        raise ReviewError(
            f"{method} {path}: HTTP {r.status_code}{what}: {self._scrub(r.text)}",
            method=method,
            path=path,
            status=r.status_code,
        )

    def _scrub(self, text: str) -> str:
        """The first 300 characters of ``text``, with the token and access token masked."""
        for secret in (self._token, self._access):
            if secret:
                text = text.replace(secret, "***")
        return _short(text)


def _short(text: str) -> str:
    """``text`` on one line (runs of whitespace as one space), cut to 300 characters."""
    return " ".join(text.split())[:BODY_CHARS]


def _task(t: dict[str, Any]) -> dict[str, Any]:
    """An exported task with its annotations trimmed to :data:`ANNOTATION_KEYS`
    (``completed_by`` as a user id even when the server expands it)."""
    anns = []
    for a in t.get("annotations") or []:
        ann = {k: a.get(k) for k in ANNOTATION_KEYS}
        if isinstance(ann["completed_by"], dict):
            ann["completed_by"] = ann["completed_by"].get("id")
        ann["was_cancelled"] = bool(ann["was_cancelled"])
        anns.append(ann)
    return {"id": t.get("id"), "data": t.get("data") or {}, "annotations": anns}
