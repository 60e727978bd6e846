"""The agent line protocol: one JSON object per line between the supervisor and an agent.

Documented for operators in ``docs/agent-protocol.md``. Supervisor -> agent: ``configure``
(exactly once, first), ``request``, ``cancel``; end of input means "finish what is in flight,
then exit". Agent -> supervisor: ``ready`` (once, after ``configure``), ``chunk``, ``usage``,
``error``, ``done``. Every reply ends with exactly one ``error`` or ``done`` for its id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from core.llm import ChatMessage
from core.runtime.errors import ProtocolError
from core.secret import Secret

VERSION: Final = 1
MAX_LINE: Final = 16 * 1024 * 1024
"""Longest line an agent accepts (a request carries the whole trimmed conversation)."""
MAX_AGENT_LINE: Final = 1024 * 1024
"""Longest line the supervisor reads from an agent: a chunk is a few tokens, so a longer line
is a flood (the agent is killed as broken); it also bounds what one agent makes the bot buffer."""


@dataclass(frozen=True, slots=True)
class Configure:
    """Sent once, first: the provider, the key, and the limits the agent applies to itself."""

    provider_kind: str
    base_url: str
    api_key: Secret
    workdir: str
    request_timeout: float
    memory_limit_mb: int
    max_open_files: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Request:
    """Answer ``messages`` (oldest first, ending with the user's) with ``model``."""

    id: str
    messages: tuple[ChatMessage, ...]
    model: str
    system: str
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop request ``id``; the agent still ends it with ``done``."""

    id: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The agent applied ``configure`` and takes requests; ``pid`` is its process id."""

    pid: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next piece of request ``id``'s reply."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Tokens the provider counted for request ``id``."""

    id: str
    input: int
    output: int


@dataclass(frozen=True, slots=True)
class Error:
    """Request ``id`` failed; ``code`` is an LLM error code, ``retry_after`` seconds or None."""

    id: str
    code: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """Request ``id`` is finished (completely, or cut short by ``cancel``)."""

    id: str


ToAgent = Configure | Request | Cancel
FromAgent = Ready | Chunk | UsageReport | Error | Done
Message = ToAgent | FromAgent


def encode(msg: Message) -> bytes:
    """One protocol line, newline-terminated. ``configure`` reveals the key: pipes only."""
    obj: dict[str, Any]
    match msg:
        case Configure():
            obj = {
                "type": "configure",
                "version": msg.version,
                "provider_kind": msg.provider_kind,
                "base_url": msg.base_url,
                "api_key": msg.api_key.reveal(),
                "workdir": msg.workdir,
                "request_timeout": msg.request_timeout,
                "memory_limit_mb": msg.memory_limit_mb,
                "max_open_files": msg.max_open_files,
            }
        case Request():
            obj = {
                "type": "request",
                "id": msg.id,
                "messages": [{"role": m.role, "content": m.content} for m in msg.messages],
                "model": msg.model,
                "system": msg.system,
                "max_tokens": msg.max_tokens,
            }
        case Cancel():
            obj = {"type": "cancel", "id": msg.id}
        case Ready():
            obj = {"type": "ready", "version": msg.version, "pid": msg.pid}
        case Chunk():
            obj = {"type": "chunk", "id": msg.id, "text": msg.text}
        case UsageReport():
            obj = {"type": "usage", "id": msg.id, "input": msg.input, "output": msg.output}
        case Error():
            obj = {
                "type": "error",
                "id": msg.id,
                "code": msg.code,
                "message": msg.message,
                "retry_after": msg.retry_after,
            }
        case Done():
            obj = {"type": "done", "id": msg.id}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse one line; raises ``ProtocolError`` (whose text never quotes the line)."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("line is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("line is not a JSON object")
    kind = obj.get("type")
    try:
        match kind:
            case "configure":
                return Configure(
                    provider_kind=_str(obj, "provider_kind"),
                    base_url=_str(obj, "base_url"),
                    api_key=Secret(_str(obj, "api_key")),
                    workdir=_str(obj, "workdir"),
                    request_timeout=float(_num(obj, "request_timeout")),
                    memory_limit_mb=int(_num(obj, "memory_limit_mb")),
                    max_open_files=int(_num(obj, "max_open_files")),
                    version=int(_num(obj, "version")),
                )
            case "request":
                raw = obj["messages"]
                if not isinstance(raw, list):
                    raise ProtocolError("request.messages must be a list")
                messages = tuple(ChatMessage(_str(m, "role"), _str(m, "content")) for m in raw)
                return Request(
                    id=_str(obj, "id"),
                    messages=messages,
                    model=_str(obj, "model"),
                    system=_str(obj, "system"),
                    max_tokens=int(_num(obj, "max_tokens")),
                )
            case "cancel":
                return Cancel(_str(obj, "id"))
            case "ready":
                return Ready(pid=int(_num(obj, "pid")), version=int(obj.get("version", VERSION)))
            case "chunk":
                return Chunk(_str(obj, "id"), _str(obj, "text"))
            case "usage":
                return UsageReport(
                    _str(obj, "id"), int(_num(obj, "input")), int(_num(obj, "output"))
                )
            case "error":
                retry = obj.get("retry_after")
                if retry is not None and (
                    isinstance(retry, bool) or not isinstance(retry, int | float)
                ):
                    raise ProtocolError("error.retry_after must be a number or null")
                return Error(
                    _str(obj, "id"),
                    _str(obj, "code"),
                    str(obj.get("message", "")),
                    None if retry is None else float(retry),
                )
            case "done":
                return Done(_str(obj, "id"))
    except (KeyError, TypeError):
        raise ProtocolError("a message is missing a field") from None
    raise ProtocolError("unknown message type")


def _str(obj: Any, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _num(obj: Any, key: str) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{key} must be a number")
    return value
