"""Row validation for ingest: the checks of one raw row's values (texts, messages,
responses, votes, verifier targets), the CANDIDATES and VOTES rows it becomes, and the
quarantine row of a rejected one, each naming its file, row and field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline import hashing
from pipeline.annotate.verify import validate_targets
from pipeline.stage import Reason

ROLES = ("system", "user", "assistant")
PREFERRED = ("chosen", "rejected", "tie")
# Fields with a meaning of their own; every other field of a row goes into ``meta``.
RESERVED = frozenset({"prompt", "messages", "chosen", "rejected", "id", "votes"})
MAX_RAW = 2000
TARGET_FIELDS = ("answer", "tests", "constraints")  # verifier targets (annotate/verify.py)


class _Reject(Exception):
    """A row is malformed: why (a Reason) and what exactly (field and problem)."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.sid: str | None = None  # the row's source_id, set by check_row


@dataclass
class _Row:
    row: int  # 1-based data row; the line number for JSON lines
    raw: str  # raw text, clipped, for the quarantine table
    value: Any = None
    error: _Reject | None = None


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _utf8_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip(text: str, n: int = MAX_RAW) -> str:
    return text[:n].replace("\x00", "\\x00")


def _safe_json(obj: Any) -> str:
    """JSON text of ``obj`` that is always valid UTF-8 (non-JSON values via ``str``)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, default=str)
        return text if _utf8_ok(text) else json.dumps(obj, default=str)
    except (TypeError, ValueError, RecursionError):
        return '"<row not representable as JSON>"'


def _bad_text(value: Any) -> str | None:
    """The first string (key or value) in ``value`` holding NUL or a lone surrogate.

    Only the fields the pipeline uses are checked; other fields go into ``meta`` as JSON
    text, which escapes NUL and lone surrogates.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return f"field '{path}': text contains a NUL character"
            if not _utf8_ok(v):
                return f"field '{path}': text is not valid UTF-8 (lone surrogate)"
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                key = k if isinstance(k, str) else str(k)
                if "\x00" in key or not _utf8_ok(key):
                    return f"field name {_short(key)} is not valid text"
                stack.append((f"{path}.{key}" if path else key, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def _check_text(text: str, field: str) -> str:
    if "\x00" in text or not _utf8_ok(text):
        raise _Reject(Reason.INVALID_TEXT, f"field '{field}': text contains NUL or invalid UTF-8")
    if not text.strip():
        what = "empty" if not text else "whitespace-only"
        raise _Reject(Reason.EMPTY_TEXT, f"field '{field}': {what} text")
    return text


def _messages(value: Any, field: str, *, allow_empty: bool = False) -> list[dict[str, str]]:
    """Check a list of ``{role, content}`` messages; return clean copies."""
    if not isinstance(value, list):
        raise _Reject(
            Reason.WRONG_TYPE, f"field '{field}': expected a list of messages, got {_tname(value)}"
        )
    if not value and not allow_empty:
        raise _Reject(Reason.EMPTY_TEXT, f"field '{field}': empty list of messages")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise _Reject(
                Reason.WRONG_TYPE,
                f"field '{where}': expected an object with 'role' and 'content', got {_tname(m)}",
            )
        for key in ("role", "content"):
            if m.get(key) is None:
                raise _Reject(Reason.MISSING_FIELD, f"field '{where}.{key}' is missing")
        role, content = m["role"], m["content"]
        if not isinstance(role, str):
            raise _Reject(
                Reason.WRONG_TYPE, f"field '{where}.role': expected string, got {_tname(role)}"
            )
        if role not in ROLES:
            raise _Reject(
                Reason.UNKNOWN_ROLE,
                f"field '{where}.role': {_short(role)} is not one of {', '.join(ROLES)}",
            )
        if not isinstance(content, str):
            raise _Reject(
                Reason.WRONG_TYPE,
                f"field '{where}.content': expected string, got {_tname(content)}",
            )
        out.append({"role": role, "content": _check_text(content, f"{where}.content")})
    return out


def _prompt_messages(value: Any, field: str, *, allow_empty: bool = False) -> list[dict[str, str]]:
    """A prompt string (one user message) or a list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": _check_text(value, field)}]
    if isinstance(value, list):
        return _messages(value, field, allow_empty=allow_empty)
    raise _Reject(
        Reason.WRONG_TYPE,
        f"field '{field}': expected string or list of messages, got {_tname(value)}",
    )


def _response(value: Any, field: str) -> tuple[str, list[dict[str, str]]]:
    """A response string, or messages ending with the assistant's: (text, prior messages)."""
    if isinstance(value, str):
        return _check_text(value, field), []
    if isinstance(value, list):
        msgs = _messages(value, field)
        if msgs[-1]["role"] != "assistant":
            raise _Reject(
                Reason.WRONG_TYPE,
                f"field '{field}': the last message has role "
                f"{msgs[-1]['role']!r}, expected 'assistant'",
            )
        return msgs[-1]["content"], msgs[:-1]
    raise _Reject(
        Reason.WRONG_TYPE,
        f"field '{field}': expected string or list of messages, got {_tname(value)}",
    )


def _votes(value: Any, label_annotator: str) -> list[tuple[str, str]]:
    """Check ``votes``: a list of ``{annotator, preferred}``; return (annotator, preferred)."""
    if value is None:
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:  # a Parquet / JSON string column holding the list as JSON text (as CSV does)
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise _Reject(
                Reason.WRONG_TYPE, f"field 'votes': a string that is not a JSON list ({exc})"
            ) from None
    if not isinstance(value, list):
        raise _Reject(
            Reason.WRONG_TYPE,
            "field 'votes': expected a list of {annotator, "
            f"preferred}} objects, got {_tname(value)}",
        )
    out: list[tuple[str, str]] = []
    seen = {label_annotator}
    for i, e in enumerate(value):
        where = f"votes[{i}]"
        if not isinstance(e, dict):
            raise _Reject(
                Reason.WRONG_TYPE,
                f"field '{where}': expected an object with "
                f"'annotator' and 'preferred', got {_tname(e)}",
            )
        for key in ("annotator", "preferred"):
            if e.get(key) is None:
                raise _Reject(Reason.MISSING_FIELD, f"field '{where}.{key}' is missing")
        ann, pref = e["annotator"], e["preferred"]
        if not isinstance(ann, str):
            raise _Reject(
                Reason.WRONG_TYPE, f"field '{where}.annotator': expected string, got {_tname(ann)}"
            )
        _check_text(ann, f"{where}.annotator")
        if ann in seen:
            why = (
                "is also the source name that casts the file's own label vote; pass "
                "another --set input.source=..."
                if ann == label_annotator
                else "votes twice on this pair"
            )
            raise _Reject(Reason.INVALID_VALUE, f"field '{where}.annotator': {_short(ann)} {why}")
        seen.add(ann)
        if pref not in PREFERRED:
            raise _Reject(
                Reason.INVALID_VALUE,
                f"field '{where}.preferred': expected "
                f"'chosen', 'rejected' or 'tie', got "
                f"{_short(pref)}",
            )
        out.append((ann, pref))
    return out


def _source_id(value: dict[str, Any], fallback: str) -> str:
    sid = value.get("id")
    if sid is None:
        return fallback
    if isinstance(sid, bool) or not isinstance(sid, (str, int)):
        raise _Reject(
            Reason.WRONG_TYPE, f"field 'id': expected string or integer, got {_tname(sid)}"
        )
    if isinstance(sid, str) and not sid.strip():
        raise _Reject(Reason.EMPTY_TEXT, "field 'id': empty or whitespace-only id")
    return str(sid)


def _meta(value: dict[str, Any]) -> str | None:
    extra = {str(k): v for k, v in value.items() if k not in RESERVED and v is not None}
    return _safe_json(extra) if extra else None


def _check_turns(value: dict[str, Any], messages: list[dict[str, str]]) -> None:
    """``follow_ups``: a list of non-empty strings after a conversation that ends with a
    user turn; ``tools``: a list of objects (OpenAI tool schemas)."""
    fu = value.get("follow_ups")
    if fu is not None:
        if not isinstance(fu, list) or not all(isinstance(t, str) for t in fu):
            raise _Reject(
                Reason.WRONG_TYPE,
                f"field 'follow_ups': expected a list of strings, got {_tname(fu)}",
            )
        for i, t in enumerate(fu):
            _check_text(t, f"follow_ups[{i}]")
        if fu and messages[-1]["role"] != "user":
            raise _Reject(
                Reason.INVALID_VALUE,
                "field 'follow_ups': the prompt must end with a user turn to be followed up",
            )
    tools = value.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise _Reject(
            Reason.WRONG_TYPE,
            f"field 'tools': expected a list of tool objects, got {_tname(tools)}",
        )


def _parse_prompt_row(value: dict[str, Any]) -> list[dict[str, str]]:
    if value.get("prompt") is not None:
        msgs = _prompt_messages(value["prompt"], "prompt")
        _check_turns(value, msgs)
        return msgs
    if value.get("messages") is not None:
        msgs = _messages(value["messages"], "messages")
        _check_turns(value, msgs)
        return msgs
    raise _Reject(
        Reason.MISSING_FIELD,
        "row has neither 'prompt' nor 'messages' (expected a "
        "prompt string or a list of {role, content} messages)",
    )


@dataclass
class _Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    votes: list[tuple[str, str]]


def _parse_pair_row(value: dict[str, Any], label_annotator: str) -> _Pair:
    for key in ("chosen", "rejected"):
        if value.get(key) is None:
            raise _Reject(Reason.MISSING_FIELD, f"field '{key}' is missing")
    chosen, c_prior = _response(value["chosen"], "chosen")
    rejected, r_prior = _response(value["rejected"], "rejected")
    if c_prior != r_prior:
        raise _Reject(
            Reason.WRONG_TYPE,
            "fields 'chosen' and 'rejected' disagree on the "
            f"messages before the response ({len(c_prior)} vs "
            f"{len(r_prior)} prior messages, not equal)",
        )
    if value.get("prompt") is None:
        if not c_prior:
            raise _Reject(
                Reason.MISSING_FIELD,
                "field 'prompt' is missing (and 'chosen' / "
                "'rejected' hold no prior messages to use)",
            )
        prompt: list[dict[str, str]] = []
    else:
        prompt = _prompt_messages(value["prompt"], "prompt", allow_empty=True)
    conversation = prompt + c_prior
    if not conversation:
        raise _Reject(Reason.EMPTY_TEXT, "field 'prompt': empty list of messages")
    if chosen.strip() == rejected.strip():
        raise _Reject(
            Reason.IDENTICAL_PAIR, "fields 'chosen' and 'rejected' hold the same response text"
        )
    return _Pair(conversation, chosen, rejected, _votes(value.get("votes"), label_annotator))


def _vote(pid: str, sid: str, a: str, b: str, annotator: str, verdict: str) -> dict[str, Any]:
    return {
        "prompt_id": pid,
        "source_id": sid,
        "candidate_a": a,
        "candidate_b": b,
        "annotator": annotator,
        "order": None,
        "verdict": verdict,
        "prob_a": None,
        "raw_output": None,
        "parse_error": None,
    }


def _candidate(pid: str, sid: str, policy: str, text: str) -> dict[str, Any]:
    return {
        "prompt_id": pid,
        "source_id": sid,
        "candidate_id": hashing.candidate_id(pid, policy, 0, text),
        "policy": policy,
        "sample_index": 0,
        "text": text,
        "finish_reason": None,
        "n_prompt_tokens": None,
        "n_output_tokens": None,
        "request_hash": None,
        "truncated": False,
        "error": None,
    }


def check_row(
    r: _Row, kind: str, name: str, base: str
) -> tuple[str, dict[str, Any], list[dict[str, str]], _Pair | None]:
    """One row's checks that need no other row: (source_id, value, prompt messages, the
    pair for ``kind == "pairs"``), or a :class:`_Reject` carrying the row's source_id."""
    sid = hashing.stable_hash(base, r.row)
    try:
        if r.error is not None:
            raise r.error
        value = r.value
        bad = _bad_text({k: v for k, v in value.items() if k in RESERVED})
        if bad is not None:
            raise _Reject(Reason.INVALID_TEXT, bad)
        sid = _source_id(value, sid)
        pair = None
        if kind == "prompts":
            messages = _parse_prompt_row(value)
        else:
            pair = _parse_pair_row(value, name)
            messages = pair.prompt
        problems = (
            validate_targets(value) if any(value.get(k) is not None for k in TARGET_FIELDS) else []
        )
        if problems:
            raise _Reject(Reason.INVALID_TARGET, "; ".join(problems))
    except _Reject as rej:
        rej.sid = sid
        raise
    return sid, value, messages, pair


def duplicate_id(sid: str, first_row: int) -> _Reject:
    rej = _Reject(
        Reason.DUPLICATE_ID,
        f"field 'id': {_short(sid)} already seen at row {first_row}; the first is kept",
    )
    rej.sid = sid
    return rej


def quarantine_row(rej: _Reject, file: str, r: _Row) -> dict[str, Any]:
    return {
        "source_id": rej.sid,
        "file": file,
        "row": r.row,
        "reason": rej.reason,
        "detail": rej.detail[:1000],
        "raw": r.raw,
    }
