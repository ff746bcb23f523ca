"""Stable content hashes used for ids, request keys and cache keys.

>>> stable_hash("a", 1) == stable_hash("a", 1)
True
>>> len(prompt_id([{"role": "user", "content": "hi"}]))
16
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    """SHA-256 over the canonical JSON of ``parts`` (sorted keys), hex, truncated."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable id of a conversation: hash of its (role, content) messages."""
    return stable_hash([[m["role"], m["content"]] for m in messages])


def candidate_id(prompt_id_: str, policy: str, sample_index: int, text: str | None) -> str:
    """Stable id of a candidate response."""
    return stable_hash(prompt_id_, policy, sample_index, text)


def pair_id(prompt_id_: str, chosen_id: str, rejected_id: str) -> str:
    return stable_hash(prompt_id_, chosen_id, rejected_id)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (full hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tree_hash(path: str | Path) -> str:
    """Hash of a file, or of every file under a directory (relative names + contents)."""
    p = Path(path)
    if p.is_file():
        return file_hash(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()
