"""What the metering proxy forwards: a checked body, the output bound it reserves, allow-lists.

Metering sees tokens only, so anything whose cost is not in the stream's token usage, or
whose output is not bounded by a field the proxy reads, is refused with a 400 before a cent is
reserved. Per API:

* **Body fields.** Only the fields in ``ANTHROPIC_FIELDS`` / ``OPENAI_FIELDS`` are accepted;
  any other top-level field is a 400 naming it (e.g. Anthropic ``mcp_servers``, ``container``,
  ``service_tier``; OpenAI ``web_search_options``, ``audio``, ``modalities``, ``prediction``,
  ``store``, ``service_tier``, ``max_output_tokens``). A field set to ``null`` counts as absent.
* **Tools.** Anthropic: client tools only (no ``type``, or ``"custom"``): server tools such as
  ``web_search_20250305``, ``web_fetch_*`` or ``code_execution_*`` bill per use. OpenAI:
  ``"function"`` and ``"custom"`` tools only.
* **Headers.** Nothing the client sends is forwarded except ``anthropic-version``, which must
  be one of ``ANTHROPIC_VERSIONS``; a request carrying ``anthropic-beta`` is refused (betas
  enable server tools, longer outputs and pricier contexts). OpenAI gets no client header.
* **Output bound.** Every output-bounding field (Anthropic ``max_tokens``; OpenAI
  ``max_tokens`` and ``max_completion_tokens``) must be an integer from 1 to
  ``MAX_OUTPUT_TOKENS``; the reservation covers the largest of them times ``n`` (OpenAI, 1 to
  ``MAX_CHOICES``). With none set, ``default_max_tokens`` is reserved and sent as ``max_tokens``.
* **Shape.** The body is a JSON object nested at most ``MAX_JSON_DEPTH`` deep (checked on the
  raw bytes before parsing, so a 200k-deep array costs a scan, not a recursion), in UTF-8,
  and every known field has its documented type. Each violation is a 400
  ``invalid_request_error`` in the client's API format, with a message ``"<field>: <problem>"``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

from core.proxy.wire import ANTHROPIC, OPENAI, loads

MAX_JSON_DEPTH: Final = 64
MAX_OUTPUT_TOKENS: Final = 1_000_000
MAX_CHOICES: Final = 128
ANTHROPIC_VERSIONS: Final = frozenset({"2023-06-01"})
ANTHROPIC_TOOL_TYPES: Final = frozenset({"custom"})
OPENAI_TOOL_TYPES: Final = frozenset({"function", "custom"})

_NOT_BRACKETS: Final = bytes(range(256)).translate(None, b"[]{}")
_SIGNS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 / -1 as signed bytes


class BadRequest(ValueError):
    """A body the proxy does not forward; ``str()`` is the message for the client."""


Check = Callable[[str, Any], None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, v: Any) -> None:
    if not (_is_int(v) or isinstance(v, float)):
        raise BadRequest(f"{name}: must be a number")


def _integer(name: str, v: Any) -> None:
    if not _is_int(v):
        raise BadRequest(f"{name}: must be an integer")


def _bounded(low: int, high: int) -> Check:
    def within(name: str, v: Any) -> None:
        if not _is_int(v) or not low <= v <= high:
            raise BadRequest(f"{name}: must be an integer from {low} to {high}")

    return within


def _string(name: str, v: Any) -> None:
    if not isinstance(v, str):
        raise BadRequest(f"{name}: must be a string")


def _boolean(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise BadRequest(f"{name}: must be true or false")


def _object(name: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise BadRequest(f"{name}: must be an object")


def _strings(name: str, v: Any) -> None:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise BadRequest(f"{name}: must be a list of strings")


def _string_or_strings(name: str, v: Any) -> None:
    if not isinstance(v, str):
        _strings(name, v)


def _string_or_object(name: str, v: Any) -> None:
    if not isinstance(v, str | dict):
        raise BadRequest(f"{name}: must be a string or an object")


def _string_or_blocks(name: str, v: Any) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(b, dict) for b in v):
        raise BadRequest(f"{name}: must be a string or a list of objects")


def _messages(name: str, v: Any) -> None:
    if not isinstance(v, list) or not v:
        raise BadRequest(f"{name}: must be a non-empty list")
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"{name}.{i}: must be an object with a string role")
        if m.get("content") is not None:
            _string_or_blocks(f"{name}.{i}.content", m["content"])


def _tools(allowed: frozenset[str], *, untyped: bool) -> Check:
    def tools(name: str, v: Any) -> None:
        if not isinstance(v, list):
            raise BadRequest(f"{name}: must be a list")
        for i, tool in enumerate(v):
            if not isinstance(tool, dict):
                raise BadRequest(f"{name}.{i}: must be an object")
            kind = tool.get("type")
            if kind is None and untyped:
                continue
            if kind not in allowed:
                shown = kind[:60] if isinstance(kind, str) else type(kind).__name__
                raise BadRequest(
                    f"{name}.{i}.type: {shown!r} is not available on the managed plan "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                )

    return tools


def _stream_options(name: str, v: Any) -> None:
    _object(name, v)
    for key, value in v.items():
        if key not in ("include_usage", "include_obfuscation"):
            raise BadRequest(f"{name}.{str(key)[:60]}: not supported")
        _boolean(f"{name}.{key}", value)


_OUTPUT: Final = _bounded(1, MAX_OUTPUT_TOKENS)

ANTHROPIC_FIELDS: Final[Mapping[str, Check]] = {
    "model": _string,
    "messages": _messages,
    "max_tokens": _OUTPUT,
    "system": _string_or_blocks,
    "stream": _boolean,
    "temperature": _number,
    "top_p": _number,
    "top_k": _integer,
    "stop_sequences": _strings,
    "metadata": _object,
    "tools": _tools(ANTHROPIC_TOOL_TYPES, untyped=True),
    "tool_choice": _object,
    "thinking": _object,
}

OPENAI_FIELDS: Final[Mapping[str, Check]] = {
    "model": _string,
    "messages": _messages,
    "max_tokens": _OUTPUT,
    "max_completion_tokens": _OUTPUT,
    "n": _bounded(1, MAX_CHOICES),
    "stream": _boolean,
    "stream_options": _stream_options,
    "temperature": _number,
    "top_p": _number,
    "presence_penalty": _number,
    "frequency_penalty": _number,
    "stop": _string_or_strings,
    "logit_bias": _object,
    "logprobs": _boolean,
    "top_logprobs": _bounded(0, 20),
    "seed": _integer,
    "user": _string,
    "tools": _tools(OPENAI_TOOL_TYPES, untyped=False),
    "tool_choice": _string_or_object,
    "parallel_tool_calls": _boolean,
    "response_format": _object,
    "reasoning_effort": _string,
    "verbosity": _string,
    "functions": _tools(frozenset(), untyped=True),
    "function_call": _string_or_object,
    "prompt_cache_key": _string,
    "safety_identifier": _string,
}

# The fields that bound the output of one choice; the reservation covers the largest, times n.
OUTPUT_FIELDS: Final = {ANTHROPIC: ("max_tokens",), OPENAI: ("max_tokens", "max_completion_tokens")}


@dataclass(frozen=True, slots=True)
class Checked:
    """A body fit to forward, and the most output tokens it can produce (all choices)."""

    body: dict[str, Any]
    max_output: int


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects more than ``limit`` deep.

    Runs on the bytes, before parsing, at C speed: with at most ``limit`` brackets it cannot
    be deeper; otherwise string contents are cut out (escaped backslashes and quotes first),
    the remaining brackets become +1/-1 and the deepest point is their largest running sum.
    About a millisecond per 100 kB, tens of milliseconds for 4 MB of brackets (parsing those
    costs more). Unbalanced text is left to the JSON parser to refuse.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    signs = b"".join(text.split(b'"')[::2]).translate(_SIGNS, _NOT_BRACKETS)
    if b"\x01" * (limit + 1) in signs:  # the plain bomb, found without summing
        return True
    return max(accumulate(array("b", signs)), default=0) > limit


def parse(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; ``BadRequest`` for anything else."""
    if too_deep(raw):
        raise BadRequest(f"body: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        body = loads(raw.decode("utf-8") if not raw.isascii() else raw)
    except UnicodeDecodeError:
        raise BadRequest("body: not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise BadRequest("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return body


def check(
    api: str, body: dict[str, Any], headers: Mapping[str, str], *, default_max_tokens: int
) -> Checked:
    """Validate ``body`` and the client's headers against the API's allow-lists.

    Returns the body to forward (nulls dropped; ``max_tokens`` set to ``default_max_tokens``
    when no output bound was given) and the largest output it allows, every choice counted.
    """
    if api == ANTHROPIC:
        if "anthropic-beta" in headers:
            raise BadRequest("anthropic-beta: beta features are not available on the managed plan")
        version = headers.get("anthropic-version")
        if version is not None and version not in ANTHROPIC_VERSIONS:
            raise BadRequest(
                f"anthropic-version: must be one of {', '.join(sorted(ANTHROPIC_VERSIONS))}"
            )
    fields = ANTHROPIC_FIELDS if api == ANTHROPIC else OPENAI_FIELDS
    body = {k: v for k, v in body.items() if v is not None}
    for name in ("model", "messages"):
        if name not in body:
            raise BadRequest(f"{name}: field required")
    for name, value in body.items():
        validate = fields.get(name)
        if validate is None:
            shown = name[:60] if name.isprintable() else repr(name[:60])
            raise BadRequest(f"{shown}: not supported by the managed plan's proxy")
        validate(name, value)
    per_choice = max((body[f] for f in OUTPUT_FIELDS[api] if f in body), default=0)
    if per_choice == 0:
        # Reserve what we send: the bound on output has to be real for the cap to hold.
        per_choice = body["max_tokens"] = default_max_tokens
    return Checked(body, per_choice * body.get("n", 1))
