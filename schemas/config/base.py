"""What every config module shares: the frozen base model that refuses unknown keys,
the config hash, and secret redaction (split / merge / redact)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SECRET_WORDS = {
    "key",
    "apikey",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "credentials",
}


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/@\s]+)@")


def _is_secret_key(k: Any) -> bool:
    kl = str(k).lower()
    return bool(set(re.split(r"[_\-.\s]+", kl)) & SECRET_WORDS) and not kl.endswith("_env")


def split_secrets(obj: Any, path: tuple = ()) -> tuple[Any, dict[str, Any]]:
    """The config with every secret replaced, and the secrets by their JSON path.

    Secrets are the values of secret-looking keys (``api_key``, ``token``, ``password``…;
    not ``api_key_env``, which names an environment variable) anywhere in the config,
    ``engine_args`` included, and the user-info part of any URL
    (``http://user:pw@host`` → ``http://***@host``). :func:`redact` is the first half;
    :func:`merge_secrets` puts them back.

    >>> pub, sec = split_secrets({"m": {"base_url": "http://u:pw@h/v1", "api_key_env": "K",
    ...                                 "engine_args": {"extra": {"token": "t"}}}})
    >>> pub
    {'m': {'base_url': 'http://***@h/v1', 'api_key_env': 'K',
           'engine_args': {'extra': {'token': '***'}}}}
    >>> merge_secrets(pub, sec) == {"m": {"base_url": "http://u:pw@h/v1", "api_key_env": "K",
    ...                                   "engine_args": {"extra": {"token": "t"}}}}
    True
    """
    secrets: dict[str, Any] = {}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            here = path + (str(k),)
            if _is_secret_key(k) and v is not None and not isinstance(v, (dict, list)):
                out[k] = "***"
                secrets[json.dumps(here)] = v
            else:
                out[k], sub = split_secrets(v, here)
                secrets.update(sub)
        return out, secrets
    if isinstance(obj, list):
        out_l = []
        for i, v in enumerate(obj):
            x, sub = split_secrets(v, path + (i,))
            out_l.append(x)
            secrets.update(sub)
        return out_l, secrets
    if isinstance(obj, str) and _USERINFO.search(obj):
        secrets[json.dumps(path)] = obj
        return _USERINFO.sub(r"\1***@", obj), secrets
    return obj, secrets


def merge_secrets(public: Any, secrets: dict[str, Any]) -> Any:
    """Undo :func:`split_secrets` (a deep copy of ``public`` with the secrets back)."""
    out = json.loads(json.dumps(public))
    for key, value in secrets.items():
        path = json.loads(key)
        node = out
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return out


def redact(obj: Any) -> Any:
    """The config with secrets replaced by '***' (see :func:`split_secrets`): what the
    manifest, the card and Prefect's database hold."""
    return split_secrets(obj)[0]


def config_hash(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
