"""The two wire formats as the proxy sees them: error bodies, metering, aggregation.

Pure functions and small accumulators, no I/O: ``server.py`` feeds them parsed SSE events (a
streamed request) or the JSON reply (a non-streaming one, forwarded as such). The folders
(``AnthropicMessage``, ``OpenAICompletion``) rebuild a reply object from a stream; the proxy no
longer needs them, they stay for callers that do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

ANTHROPIC: Final = "anthropic"
OPENAI: Final = "openai-compatible"

# Error ``type`` the proxy itself emits, by meaning. ``core.llm.classify`` maps the statuses:
# 401 -> InvalidKey, 402 -> OutOfCredit, 404 -> ModelNotFound, 429 -> RateLimited, 5xx ->
# Overloaded, other 4xx -> BadResponse.
MODEL_NOT_IN_PLAN: Final = "model_not_in_plan"
USAGE_CAP_REACHED: Final = "usage_cap_reached"

# Anthropic names its error types; OpenAI-compatible servers use a ``type`` plus a ``code``.
_OPENAI_TYPES: Final = {
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "invalid_request_error": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    MODEL_NOT_IN_PLAN: ("invalid_request_error", MODEL_NOT_IN_PLAN),
    USAGE_CAP_REACHED: ("insufficient_quota", USAGE_CAP_REACHED),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
    "timeout_error": ("server_error", "timeout"),
}

# What a mid-stream error event means as a status, for a client that wanted plain JSON.
_STATUS_OF_TYPE: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
}


def error_body(api: str, error_type: str, message: str) -> dict[str, Any]:
    """An error in the client's own API format."""
    if api == ANTHROPIC:
        return {"type": "error", "error": {"type": error_type, "message": message}}
    otype, code = _OPENAI_TYPES.get(error_type, (error_type, None))
    return {"error": {"message": message, "type": otype, "param": None, "code": code}}


def upstream_error_type(body: Any) -> str:
    """The provider's error type from an error body (``error.type``, else ``error.code``)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "api_error"
    etype = err.get("type") or err.get("code")
    if isinstance(etype, str) and etype.isprintable() and 0 < len(etype) < 60:
        return etype
    return "api_error"


def upstream_error_code(body: Any) -> str | None:
    """The OpenAI-style ``error.code`` (kept because clients classify by it)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, str) and code.isprintable() and 0 < len(code) < 60:
        return code
    return None


def sanitized_error(api: str, body: Any, status: int | None) -> dict[str, Any]:
    """The upstream's error with its status and type kept and its free text replaced.

    Providers echo fragments of the key that was refused in the message, so it never reaches
    the tenant; the type (and the OpenAI ``code``) is what clients classify by.
    """
    etype = upstream_error_type(body)
    where = f"HTTP {status}" if status is not None else "stream error"
    message = f"upstream provider error ({where}, {etype})"
    if api == ANTHROPIC:
        return {"type": "error", "error": {"type": etype, "message": message}}
    return {
        "error": {
            "message": message,
            "type": etype,
            "param": None,
            "code": upstream_error_code(body),
        }
    }


def status_of_stream_error(body: Any) -> int:
    """An HTTP status for an error that arrived inside a stream."""
    return _STATUS_OF_TYPE.get(upstream_error_type(body), 502)


def as_json(body: Any) -> bytes:
    """Compact JSON; orjson (several times faster), the standard library for what it refuses."""
    try:
        return orjson.dumps(body)
    except TypeError:  # integers beyond 64 bits, lone surrogates
        return json.dumps(body, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Any:
    """``json.loads``, by orjson; the standard library for what orjson alone refuses.

    orjson is stricter (no NaN, no integers beyond 64 bits, no lone surrogates); falling back
    keeps what is accepted exactly as before. Raises ``ValueError`` for invalid JSON.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


@dataclass
class Meter:
    """Usage seen so far in one upstream stream (complete once ``final`` is set)."""

    input_tokens: int = 0
    output_tokens: int = 0
    deltas: int = 0
    final: bool = False
    reported_input: bool = False
    # Anthropic prompt caching: tokens written to and read from the cache (beside input).
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    # The reply's usage could not be read although the provider may have billed it.
    unknown: bool = False
    # The stream's last event went by (Anthropic's message_stop, OpenAI's [DONE]): nothing
    # can change the figures any more. ``final`` alone is not that: some OpenAI-compatible
    # servers put running usage in every chunk.
    ended: bool = False

    def _cache(self, usage: dict[str, Any]) -> None:
        self.cache_write_tokens = _int(
            usage.get("cache_creation_input_tokens"), self.cache_write_tokens
        )
        self.cache_read_tokens = _int(usage.get("cache_read_input_tokens"), self.cache_read_tokens)

    def feed_reply(self, api: str, data: dict[str, Any]) -> bool:
        """A non-streaming reply's ``usage``; False when it has none (or is an error)."""
        usage = data.get("usage")
        if not isinstance(usage, dict):
            return False
        if api == ANTHROPIC:
            self.input_tokens = _int(usage.get("input_tokens"))
            self.output_tokens = _int(usage.get("output_tokens"))
            self._cache(usage)
        else:
            self.input_tokens = _int(usage.get("prompt_tokens"))
            self.output_tokens = _int(usage.get("completion_tokens"))
        self.reported_input = self.final = True
        return True

    def feed(self, api: str, data: Any) -> None:
        if not isinstance(data, dict):
            if data == "[DONE]":
                self.ended = True
            return
        if api == ANTHROPIC:
            kind = data.get("type")
            if kind == "content_block_delta":
                self.deltas += 1
            elif kind == "message_start":
                usage = (data.get("message") or {}).get("usage") or {}
                self.input_tokens = _int(usage.get("input_tokens"))
                self.output_tokens = _int(usage.get("output_tokens"))
                self._cache(usage)
                self.reported_input = True
            elif kind == "message_delta":
                usage = data.get("usage") or {}
                self.input_tokens = _int(usage.get("input_tokens"), self.input_tokens)
                self.output_tokens = _int(usage.get("output_tokens"), self.output_tokens)
                self._cache(usage)
            elif kind == "message_stop":
                self.final = self.ended = True
            return
        for choice in data.get("choices") or ():
            if (choice.get("delta") or {}).get("content") or (choice.get("delta") or {}).get(
                "tool_calls"
            ):
                self.deltas += 1
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _int(usage.get("prompt_tokens"))
            self.output_tokens = _int(usage.get("completion_tokens"))
            self.reported_input = True
            self.final = True

    def billed(self, input_estimate: int) -> tuple[int, int]:
        """(input, output) tokens to charge: the provider's figures when it sent them.

        A stream cut short (client gone, upstream broke) is charged what is known: the
        reported input (else the estimate, because the provider bills the prompt anyway) and
        the larger of the reported output and one token per delta seen.
        """
        if self.final:
            return self.input_tokens, self.output_tokens
        if not self.reported_input and self.deltas == 0:
            return 0, 0
        inp = self.input_tokens if self.reported_input else input_estimate
        return inp, max(self.output_tokens, self.deltas)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass
class AnthropicMessage:
    """Folds an Anthropic Messages stream back into the non-streaming ``message`` object."""

    message: dict[str, Any] = field(default_factory=dict)
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    partial_json: dict[int, list[str]] = field(default_factory=dict)

    def feed(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start":
            self.message = dict(data.get("message") or {})
        elif kind == "content_block_start":
            self.blocks[_int(data.get("index"))] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            index = _int(data.get("index"))
            block = self.blocks.setdefault(index, {"type": "text", "text": ""})
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif dtype == "input_json_delta":
                self.partial_json.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif dtype == "signature_delta":
                block["signature"] = str(delta.get("signature", ""))
        elif kind == "content_block_stop":
            index = _int(data.get("index"))
            parts = self.partial_json.pop(index, None)
            if parts is not None and index in self.blocks:
                text = "".join(parts)
                try:
                    self.blocks[index]["input"] = json.loads(text) if text else {}
                except ValueError:
                    self.blocks[index]["input"] = {}
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self.message[key] = delta[key]
            usage = data.get("usage") or {}
            merged = dict(self.message.get("usage") or {})
            merged.update({k: v for k, v in usage.items() if v is not None})
            self.message["usage"] = merged

    def result(self) -> dict[str, Any]:
        out = dict(self.message)
        out.setdefault("type", "message")
        out.setdefault("role", "assistant")
        out["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        out.setdefault("stop_reason", None)
        out.setdefault("stop_sequence", None)
        return out


@dataclass
class OpenAICompletion:
    """Folds chat-completion chunks back into the non-streaming ``chat.completion`` object."""

    head: dict[str, Any] = field(default_factory=dict)
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None

    def feed(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in data and key not in self.head:
                self.head[key] = data[key]
        for choice in data.get("choices") or ():
            index = _int(choice.get("index"))
            slot = self.choices.setdefault(
                index,
                {
                    "index": index,
                    "message": {"role": "assistant", "content": None},
                    "finish_reason": None,
                },
            )
            delta = choice.get("delta") or {}
            message = slot["message"]
            if delta.get("content"):
                message["content"] = (message["content"] or "") + str(delta["content"])
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", [])
                i = _int(call.get("index"))
                while len(calls) <= i:
                    calls.append(
                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                target = calls[i]
                if call.get("id"):
                    target["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    target["function"]["name"] += str(fn["name"])
                if fn.get("arguments"):
                    target["function"]["arguments"] += str(fn["arguments"])
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"object": "chat.completion", **self.head}
        out["choices"] = [self.choices[i] for i in sorted(self.choices)]
        if self.usage is not None:
            out["usage"] = self.usage
        return out
