"""The agent line protocol: one JSON object per line between the supervisor and an agent.

Documented for operators in ``docs/agent-protocol.md``. Supervisor -> agent: ``configure``
(exactly once, first), ``request``, ``cancel``, ``confirmed``, ``task_result`` (version 2:
the answer to a ``task``); end of input means "finish what is in flight, then exit".
Agent -> supervisor: ``ready`` (once, after ``configure``), ``chunk``, ``usage``, ``tool``,
``note``, ``task`` and ``confirm`` (version 2), ``error``, ``done``. Every reply ends with
exactly one ``error`` or ``done`` for its id.

Version 2 adds tools: ``configure.tools`` (their settings), ``request.tools`` (the names
offered for this request) and ``request.notes`` (the person's long-term notes), and the
``tool``/``note`` events; ``configure.mcp`` (the tenant's MCP servers with their tokens),
``request.tools`` entries ``mcp:<server>``, and the ``confirm`` (agent) / ``confirmed``
(supervisor) exchange before an MCP tool that is not read-only runs. Unknown fields are
ignored, so a version-1 agent keeps working: it just never uses tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from core.llm import ChatMessage, ImageInput
from core.runtime.errors import ProtocolError
from core.secret import Secret

VERSION: Final = 2
MAX_LINE: Final = 16 * 1024 * 1024
"""Longest line an agent accepts (a request carries the whole trimmed conversation)."""
MAX_AGENT_LINE: Final = 1024 * 1024
"""Longest line the supervisor reads from an agent: a chunk is a few tokens, so a longer line
is a flood (the agent is killed as broken); it also bounds what one agent makes the bot buffer."""


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """``configure.tools`` (version 2): how the agent's built-in tools behave.

    ``allow_networks`` are CIDRs web_fetch may reach although they are not public (tests;
    empty in production). ``search_backend`` is "" when no web_search backend is configured.
    """

    max_steps: int = 8
    fetch_max_bytes: int = 2_000_000
    fetch_timeout: float = 15.0
    fetch_max_redirects: int = 5
    fetch_max_chars: int = 20_000
    allow_networks: tuple[str, ...] = ()
    search_backend: str = ""
    search_url: str = ""
    search_key: Secret | None = None
    search_max_results: int = 5
    max_notes: int = 100
    max_note_chars: int = 500


@dataclass(frozen=True, slots=True)
class McpServer:
    """``configure.mcp``: one remote MCP server (streamable HTTP) of the tenant, with its token.

    The token travels like the API key: only on this pipe, only to this tenant's agent.
    """

    name: str
    url: str
    token: Secret


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
    tools: ToolConfig = ToolConfig()
    mcp: tuple[McpServer, ...] = ()
    confirm_timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class Note:
    """One long-term note about the person: a short id and its text."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Request:
    """Answer ``messages`` (oldest first, ending with the user's) with ``model``."""

    id: str
    messages: tuple[ChatMessage, ...]
    model: str
    system: str
    max_tokens: int
    tools: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop request ``id``; the agent still ends it with ``done``."""

    id: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The person's answer to ``confirm`` ``call`` of request ``id``: run it, or refuse it."""

    id: str
    call: str
    allow: bool


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
class ToolEvent:
    """Request ``id`` runs (``state`` "start") or finished ("end") tool ``name``.

    ``target`` is what the status line names (a host, a query; may be ""); ``call`` the
    model's call id; ``failed`` whether the tool's result was an error (on "end").
    """

    id: str
    call: str
    name: str
    state: str
    target: str = ""
    failed: bool = False


@dataclass(frozen=True, slots=True)
class NoteEvent:
    """Request ``id`` remembered (``op`` "add", with ``text``) or forgot ("forget") a note.

    byokbot stores it encrypted and sends the notes with every later request.
    """

    id: str
    op: str
    note: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Request ``id`` scheduled ``prompt`` at ``when`` (an ISO local time or a 5-field cron).

    byokbot validates and stores it, answers with a ``task_result`` carrying the same ``ref``
    (so the model learns whether it was kept, and why not), and at the time runs the prompt in
    the same chat.
    """

    id: str
    when: str
    prompt: str
    ref: str = ""


@dataclass(frozen=True, slots=True)
class TaskResult:
    """byokbot's answer to request ``id``'s ``task`` event ``ref``: kept (``ok``) or not.

    ``message`` is what the model should know: the next run, or why the task was refused.
    """

    id: str
    ref: str
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """Request ``id`` asks to run ``tool`` of MCP server ``name`` (``mcp:<server>``).

    The tool is not annotated read-only: byokbot asks the person (Allow / Deny) and answers
    ``confirmed``.

    ``call`` is the agent's id for this question; ``arguments`` the call's JSON, shortened.
    """

    id: str
    call: str
    name: str
    tool: str
    arguments: str = ""


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


ToAgent = Configure | Request | Cancel | Confirmed | TaskResult
FromAgent = Ready | Chunk | UsageReport | ToolEvent | NoteEvent | TaskEvent | Confirm | Error | Done
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
                "tools": _tool_config(msg.tools),
                "mcp": [{"name": m.name, "url": m.url, "token": m.token.reveal()} for m in msg.mcp],
                "confirm_timeout": msg.confirm_timeout,
            }
        case Request():
            obj = {
                "type": "request",
                "id": msg.id,
                "messages": [_message(m) for m in msg.messages],
                "model": msg.model,
                "system": msg.system,
                "max_tokens": msg.max_tokens,
                "tools": list(msg.tools),
                "notes": [{"id": n.id, "text": n.text} for n in msg.notes],
            }
        case Cancel():
            obj = {"type": "cancel", "id": msg.id}
        case Confirmed():
            obj = {"type": "confirmed", "id": msg.id, "call": msg.call, "allow": msg.allow}
        case Confirm():
            obj = {
                "type": "confirm",
                "id": msg.id,
                "call": msg.call,
                "name": msg.name,
                "tool": msg.tool,
                "arguments": msg.arguments,
            }
        case Ready():
            obj = {"type": "ready", "version": msg.version, "pid": msg.pid}
        case Chunk():
            obj = {"type": "chunk", "id": msg.id, "text": msg.text}
        case UsageReport():
            obj = {"type": "usage", "id": msg.id, "input": msg.input, "output": msg.output}
        case ToolEvent():
            obj = {
                "type": "tool",
                "id": msg.id,
                "call": msg.call,
                "name": msg.name,
                "state": msg.state,
                "target": msg.target,
                "failed": msg.failed,
            }
        case NoteEvent():
            obj = {"type": "note", "id": msg.id, "op": msg.op, "note": msg.note, "text": msg.text}
        case TaskEvent():
            obj = {
                "type": "task",
                "id": msg.id,
                "when": msg.when,
                "prompt": msg.prompt,
                "ref": msg.ref,
            }
        case TaskResult():
            obj = {
                "type": "task_result",
                "id": msg.id,
                "ref": msg.ref,
                "ok": msg.ok,
                "message": msg.message,
            }
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


def _message(m: ChatMessage) -> dict[str, Any]:
    obj: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:  # only then: a version-1 agent never sees the field it would ignore anyway
        obj["images"] = [{"media_type": i.media_type, "data": i.data} for i in m.images]
    return obj


def _parse_message(m: Any) -> ChatMessage:
    images = m.get("images") or [] if isinstance(m, dict) else []
    if not isinstance(images, list):
        raise ProtocolError("request message images must be a list")
    return ChatMessage(
        _str(m, "role"),
        _str(m, "content"),
        tuple(ImageInput(_str(i, "media_type"), _str(i, "data")) for i in images),
    )


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
                    tools=_parse_tool_config(obj.get("tools")),
                    mcp=_parse_mcp(obj.get("mcp")),
                    confirm_timeout=float(obj.get("confirm_timeout", 120.0)),
                )
            case "request":
                raw = obj["messages"]
                if not isinstance(raw, list):
                    raise ProtocolError("request.messages must be a list")
                messages = tuple(_parse_message(m) for m in raw)
                tools = obj.get("tools") or []
                notes = obj.get("notes") or []
                if not isinstance(tools, list) or not isinstance(notes, list):
                    raise ProtocolError("request.tools and request.notes must be lists")
                return Request(
                    id=_str(obj, "id"),
                    messages=messages,
                    model=_str(obj, "model"),
                    system=_str(obj, "system"),
                    max_tokens=int(_num(obj, "max_tokens")),
                    tools=tuple(str(t) for t in tools),
                    notes=tuple(Note(_str(n, "id"), _str(n, "text")) for n in notes),
                )
            case "cancel":
                return Cancel(_str(obj, "id"))
            case "confirmed":
                allow = obj["allow"]
                if not isinstance(allow, bool):
                    raise ProtocolError("confirmed.allow must be true or false")
                return Confirmed(_str(obj, "id"), _str(obj, "call"), allow)
            case "confirm":
                return Confirm(
                    _str(obj, "id"),
                    _str(obj, "call"),
                    _str(obj, "name"),
                    _str(obj, "tool"),
                    str(obj.get("arguments", "")),
                )
            case "ready":
                return Ready(pid=int(_num(obj, "pid")), version=int(obj.get("version", VERSION)))
            case "chunk":
                return Chunk(_str(obj, "id"), _str(obj, "text"))
            case "usage":
                return UsageReport(
                    _str(obj, "id"), int(_num(obj, "input")), int(_num(obj, "output"))
                )
            case "tool":
                state = _str(obj, "state")
                if state not in ("start", "end"):
                    raise ProtocolError("tool.state must be start or end")
                return ToolEvent(
                    _str(obj, "id"),
                    str(obj.get("call", "")),
                    _str(obj, "name"),
                    state,
                    str(obj.get("target", "")),
                    bool(obj.get("failed", False)),
                )
            case "note":
                op = _str(obj, "op")
                if op not in ("add", "forget"):
                    raise ProtocolError("note.op must be add or forget")
                return NoteEvent(_str(obj, "id"), op, _str(obj, "note"), str(obj.get("text", "")))
            case "task":
                return TaskEvent(
                    _str(obj, "id"), _str(obj, "when"), _str(obj, "prompt"), str(obj.get("ref", ""))
                )
            case "task_result":
                ok = obj.get("ok")
                if not isinstance(ok, bool):
                    raise ProtocolError("task_result.ok must be true or false")
                return TaskResult(_str(obj, "id"), _str(obj, "ref"), ok, _str(obj, "message"))
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
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("a message is missing a field") from None
    raise ProtocolError("unknown message type")


def _tool_config(t: ToolConfig) -> dict[str, Any]:
    return {
        "max_steps": t.max_steps,
        "fetch_max_bytes": t.fetch_max_bytes,
        "fetch_timeout": t.fetch_timeout,
        "fetch_max_redirects": t.fetch_max_redirects,
        "fetch_max_chars": t.fetch_max_chars,
        "allow_networks": list(t.allow_networks),
        "search_backend": t.search_backend,
        "search_url": t.search_url,
        "search_key": t.search_key.reveal() if t.search_key is not None else None,
        "search_max_results": t.search_max_results,
        "max_notes": t.max_notes,
        "max_note_chars": t.max_note_chars,
    }


def _parse_tool_config(raw: Any) -> ToolConfig:
    """``configure.tools``; absent (a version-1 supervisor) means the defaults."""
    if raw is None:
        return ToolConfig()
    if not isinstance(raw, dict):
        raise ProtocolError("configure.tools must be an object")
    d = ToolConfig()
    key = raw.get("search_key")
    nets = raw.get("allow_networks", [])
    if not isinstance(nets, list) or not all(isinstance(n, str) for n in nets):
        raise ProtocolError("configure.tools.allow_networks must be a list of strings")
    return ToolConfig(
        max_steps=int(raw.get("max_steps", d.max_steps)),
        fetch_max_bytes=int(raw.get("fetch_max_bytes", d.fetch_max_bytes)),
        fetch_timeout=float(raw.get("fetch_timeout", d.fetch_timeout)),
        fetch_max_redirects=int(raw.get("fetch_max_redirects", d.fetch_max_redirects)),
        fetch_max_chars=int(raw.get("fetch_max_chars", d.fetch_max_chars)),
        allow_networks=tuple(nets),
        search_backend=str(raw.get("search_backend") or ""),
        search_url=str(raw.get("search_url") or ""),
        search_key=Secret(key) if isinstance(key, str) and key else None,
        search_max_results=int(raw.get("search_max_results", d.search_max_results)),
        max_notes=int(raw.get("max_notes", d.max_notes)),
        max_note_chars=int(raw.get("max_note_chars", d.max_note_chars)),
    )


def _parse_mcp(raw: Any) -> tuple[McpServer, ...]:
    """``configure.mcp``; absent (an older supervisor) means none."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError("configure.mcp must be a list")
    return tuple(McpServer(_str(m, "name"), _str(m, "url"), Secret(_str(m, "token"))) for m in raw)


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
