"""One way to turn a conversation (a list of ``{role, content}`` messages) into text.

- :func:`render`: what a judge, a reward model and the embedder read, and what the
  report shows for a prompt: a lone user turn is its content; a longer conversation is one
  ``role: content`` line per message.
- :func:`contents`: the messages' contents alone (optionally of some roles), one per line:
  dedup and decontamination compare these, the report measures response lengths on them.
- Multi-turn candidates: :func:`follow_ups` (a prompt's later user turns, from its
  ``meta``), :func:`side` (a candidate's whole assistant side: its earlier turns, then
  its last answer) and :func:`shown` (the text a judge reads for a candidate: its answer,
  or for several turns a transcript that marks what is judged).

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

import json
from typing import Any


def render(messages: Any) -> str:
    """A conversation as one text (module docstring); a string is returned as is."""
    if messages is None or isinstance(messages, str):
        return messages or ""
    msgs = [m for m in messages if isinstance(m, dict)]
    if len(msgs) == 1 and msgs[0].get("role") == "user":
        return str(msgs[0].get("content") or "")
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in msgs)


def contents_column(prompts: Any) -> list[str]:
    """:func:`contents` of every row of a PROMPTS ``prompt`` column (list of messages),
    by columns.

    >>> import pyarrow as pa
    >>> contents_column(pa.array([[{"role": "user", "content": "a"},
    ...                            {"role": "assistant", "content": None}], None]))
    ['a\\n', '']
    """
    return contents_series(prompts).to_list()


def contents_series(column: Any, roles: tuple[str, ...] | None = None) -> Any:
    """:func:`contents` (of ``roles`` only, when given) of every row of a column of
    message lists, as a polars String series; a string column is returned as is (nulls
    as "")."""
    import polars as pl

    s = pl.Series("p", column)
    if s.dtype == pl.String:
        return s.fill_null("")
    content = pl.element().struct.field("content").fill_null("")
    if roles is not None:
        content = content.filter(pl.element().struct.field("role").is_in(list(roles)))
    return s.list.eval(content).list.join("\n").fill_null("")


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


def follow_ups(meta: str | None) -> list[str]:
    """The follow-up user turns kept in a PROMPTS row's ``meta`` JSON ([] when none).

    >>> follow_ups('{"follow_ups": ["and now?"], "lang": "en"}'), follow_ups(None)
    (['and now?'], [])
    """
    if not meta or "follow_ups" not in meta:
        return []
    value = json.loads(meta).get("follow_ups")
    return [str(t) for t in value] if isinstance(value, list) else []


def tools(meta: str | None) -> str | None:
    """The ``tools`` (OpenAI tool schemas) kept in a PROMPTS row's ``meta``, as canonical
    JSON text (what the engine gets and TRL's ``tools`` column holds); None when none.

    >>> tools('{"tools": [{"type": "function", "function": {"name": "f"}}]}')
    '[{"function": {"name": "f"}, "type": "function"}]'
    """
    if not meta or "tools" not in meta:
        return None
    value = json.loads(meta).get("tools")
    return json.dumps(value, sort_keys=True, ensure_ascii=False) if value else None


def side(history: Any, text: str | None) -> list[dict[str, str]]:
    """A candidate's assistant side: its earlier turns (``history``: its answers and the
    follow-up user turns), then its last answer ``text``.

    >>> side(None, "a")
    [{'role': 'assistant', 'content': 'a'}]
    >>> [m["role"] for m in side([{"role": "assistant", "content": "a1"},
    ...                           {"role": "user", "content": "u2"}], "a2")]
    ['assistant', 'user', 'assistant']
    """
    return [dict(m) for m in history or []] + [{"role": "assistant", "content": text or ""}]


LAST = (
    "The response continues the conversation over several turns; the earlier turns are "
    "context, judge only the assistant's last answer."
)
WHOLE = "The response continues the conversation over several turns; judge all of it."


def shown(history: Any, text: str | None, mode: str = "last") -> str:
    """What a judge reads for a candidate: its answer alone for one turn; for several, the
    transcript of its side with the judged part marked (``mode`` last: the last answer;
    whole: every assistant turn).

    >>> shown(None, "a")
    'a'
    >>> print(shown([{"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}],
    ...             "a2"))
    assistant (context): a1
    user (context): u2
    assistant (judged): a2
    """
    if not history:
        return text or ""
    lines = []
    for m in history:
        tag = "context" if mode == "last" or m["role"] != "assistant" else "judged"
        lines.append(f"{m['role']} ({tag}): {m['content']}")
    lines.append(f"assistant (judged): {text or ''}")
    return "\n".join(lines)


def histories(candidates: Any) -> list[Any]:
    """The ``history`` column of a CANDIDATES table (all null for a table built without it,
    as single-turn tables in tests are)."""
    if "history" in candidates.column_names:
        return candidates.column("history").to_pylist()
    return [None] * candidates.num_rows
