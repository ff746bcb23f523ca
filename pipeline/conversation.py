"""One way to turn a conversation (a list of ``{role, content}`` messages) into text.

- :func:`render`: what a judge, a reward model and the embedder read, and what the
  report shows for a prompt: a lone user turn is its content; a longer conversation is one
  ``role: content`` line per message.
- :func:`contents`: the messages' contents alone (optionally of some roles), one per line:
  dedup and decontamination compare these, the report measures response lengths on them.

>>> render([{"role": "user", "content": "hi"}])
'hi'
>>> render([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
'system: be brief\\nuser: hi'
>>> contents([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
...          roles=("assistant",))
'a'
>>> contents("plain text"), contents(None)
('plain text', '')
"""

from __future__ import annotations

from typing import Any


def render(messages: Any) -> str:
    """A conversation as one text (module docstring); a string is returned as is."""
    if messages is None or isinstance(messages, str):
        return messages or ""
    msgs = [m for m in messages if isinstance(m, dict)]
    if len(msgs) == 1 and msgs[0].get("role") == "user":
        return str(msgs[0].get("content") or "")
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in msgs)


def contents(messages: Any, roles: tuple[str, ...] | None = None) -> str:
    """The contents of ``messages`` (of ``roles`` only, when given), one per line."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    parts = []
    for m in messages:
        if isinstance(m, dict):
            if roles is None or m.get("role") in roles:
                parts.append(str(m.get("content") or ""))
        else:
            parts.append(str(m))
    return "\n".join(parts)
