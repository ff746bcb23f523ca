"""A real Label Studio server for the tests, started once per session from ``.venv-review``.

Test modules import the fixture: ``from ls_server import label_studio``. The server runs
``label-studio start`` in its own process group, with a fresh data dir and HOME under a
pytest tmp dir and a minimal environment (Label Studio reads many bare variable names:
``HOST``, ``PORT``, ``USERNAME``, ``DEBUG``, ...). Its first start runs every migration
(minutes on a small machine), so the fixture is session-scoped and waits up to 600 s.

Tokens: the admin user is made by ``label-studio start`` itself (``LABEL_STUDIO_USERNAME`` /
``LABEL_STUDIO_PASSWORD``); then a short script under the server's Django settings (same
data dir, and the same ``SECRET_KEY``: given in the environment) adds a reviewer to the
organisation and issues a Personal Access Token for each user as the ``POST /api/token/``
view does (``jwt_auth.models.LSAPIToken.for_user(user).get_full_jwt()``). The tokens
travel on the script's stdout only.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.review.labelstudio import LabelStudio

REPO = Path(__file__).resolve().parents[1]
LS_BIN = REPO / ".venv-review" / "bin" / "label-studio"
LS_PYTHON = REPO / ".venv-review" / "bin" / "python"
START_TIMEOUT_S = 600.0
ADMIN_EMAIL = "admin@prefcurate.test"
REVIEWER_EMAIL = "reviewer@prefcurate.test"
_MARK = "PREFCURATE-TOKENS "

# Run by .venv-review/bin/python with DJANGO_SETTINGS_MODULE set (as label_studio.server does).
TOKENS_SCRIPT = f"""
import json, os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
import django
django.setup()
from jwt_auth.models import LSAPIToken
from users.models import User

admin = User.objects.get(email=os.environ["PREFCURATE_ADMIN_EMAIL"])
org = admin.active_organization
reviewer, _ = User.objects.get_or_create(email=os.environ["PREFCURATE_REVIEWER_EMAIL"])
reviewer.username = "reviewer"
reviewer.set_unusable_password()
reviewer.save()
org.add_user(reviewer)
reviewer.active_organization = org
reviewer.save(update_fields=["active_organization"])
out = {{
    "admin_id": admin.id,
    "reviewer_id": reviewer.id,
    "admin_token": LSAPIToken.for_user(admin).get_full_jwt(),
    "reviewer_token": LSAPIToken.for_user(reviewer).get_full_jwt(),
}}
print({_MARK!r} + json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class LabelStudioServer:
    """A running server: its URL, the users' ids and Personal Access Tokens."""

    url: str
    admin_id: int
    reviewer_id: int
    admin_token: str = field(repr=False)
    reviewer_token: str = field(repr=False)
    data_dir: Path
    log_path: Path
    start_s: float  # from the process start to /health answering UP

    def client(self, token: str | None = None) -> LabelStudio:
        """A client for the server (the admin's token unless told otherwise)."""
        return LabelStudio(self.url, self.admin_token if token is None else token)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(root: Path, password: str) -> dict[str, str]:
    """A minimal environment for a headless first start under ``root``."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(root),
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": password,
        # the key that signs the PATs, given rather than generated: two of the server's
        # processes starting at once each generate one (both land in data/.env, the
        # token script reads the first, the server may sign with the second: "Token
        # is invalid", seen once in a clean clone)
        "SECRET_KEY": secrets.token_urlsafe(50),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def wait_up(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> float:
    """Seconds until ``url``/health answers UP; fails the test if the process dies or the
    time runs out."""
    t0 = time.monotonic()
    probe = LabelStudio(url, "", timeout_s=5.0)
    try:
        while not probe.health():
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() - t0 > timeout_s:
                pytest.fail(f"label-studio not up at {url} after {timeout_s:.0f} s:\n{_tail(log)}")
            time.sleep(1.0)
    finally:
        probe.close()
    return time.monotonic() - t0


def make_tokens(env: dict[str, str]) -> dict:
    """Add the reviewer and issue both users' PATs (see :data:`TOKENS_SCRIPT`)."""
    env = {
        **env,
        "DJANGO_SETTINGS_MODULE": "label_studio.core.settings.label_studio",
        "PREFCURATE_ADMIN_EMAIL": ADMIN_EMAIL,
        "PREFCURATE_REVIEWER_EMAIL": REVIEWER_EMAIL,
    }
    out = subprocess.run(
        [str(LS_PYTHON), "-c", TOKENS_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith(_MARK)]
    if out.returncode != 0 or not lines:
        pytest.fail(
            f"could not issue Label Studio tokens (rc {out.returncode}):\n{out.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(_MARK) :])


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children left in the group after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A Label Studio server for the session, with an admin and a reviewer (PATs)."""
    if not LS_BIN.exists():
        pytest.fail(
            f"{LS_BIN} is missing: Label Studio lives in its own venv (.venv-review); "
            f"run `bash scripts/install.sh` (without PREFCURATE_NO_REVIEW=1)"
        )
    root = tmp_path_factory.mktemp("label-studio")
    env = server_env(root, secrets.token_urlsafe(16))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "label-studio.log"
    cmd = [str(LS_BIN), "start", "--port", str(port), "--internal-host", "127.0.0.1"]
    cmd += ["--no-browser", "--data-dir", env["LABEL_STUDIO_BASE_DATA_DIR"]]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        start_s = wait_up(proc, url, log, START_TIMEOUT_S)
        tokens = make_tokens(env)
        yield LabelStudioServer(
            url=url,
            data_dir=Path(env["LABEL_STUDIO_BASE_DATA_DIR"]),
            log_path=log,
            start_s=start_s,
            **tokens,
        )
    finally:
        stop(proc)
