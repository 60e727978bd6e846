"""Streaming clients for the Anthropic Messages API and OpenAI-compatible chat completions.

Why httpx and our own SSE parser rather than the official ``anthropic``/``openai`` SDKs: the
agent runs as one process per tenant, forked from a pre-loaded template, with targets of 10 ms
cold start and 5 MiB unique memory when idle. httpx is already a dependency of the bot and is
imported once, in the template (~110 ms cold here), so a forked worker pays nothing for it.
Both SDKs are built on httpx *plus* pydantic models and their own client layers, so they can
only add import time and resident memory to every template and worker (they are not installed
here, so that extra cost is not measured). They also retry on their own, and we want a 429 to
reach the person with its retry-after rather than be retried silently while a chat waits.
Both wire protocols are small and stable: one POST with an SSE body each.

One ``httpx.AsyncClient`` per worker carries the tenant's key only in a header
(``x-api-key`` / ``Authorization: Bearer``), never in a URL. Cancellation is the caller
closing the async iterator (or cancelling its task): the response stream is closed with it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import math
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from core.llm.errors import (
    BadResponse,
    InvalidKey,
    LLMError,
    ModelNotFound,
    ModelNotInPlan,
    NetworkError,
    OutOfCredit,
    Overloaded,
    RateLimited,
    Timeout,
    UsageCapReached,
)
from core.llm.sse import iter_sse
from core.secret import Secret

log = logging.getLogger(__name__)

ANTHROPIC_VERSION: Final = "2023-06-01"
KINDS: Final = ("anthropic", "openai-compatible")


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image the person sent: ``media_type`` (``image/png``...) and its bytes in base64."""

    media_type: str
    data: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn sent to the model: ``role`` is "user" or "assistant".

    ``images`` go with the text as the model's image input (only on the newest user turn:
    the conversation memory keeps the text alone).
    """

    role: str
    content: str
    images: tuple[ImageInput, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: ``parameters`` is its arguments' JSON Schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for tool ``name``; ``arguments`` is None when its JSON did not parse."""

    id: str
    name: str
    arguments: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ToolTurn:
    """An assistant step that asked for tools: its text so far and the calls, in order."""

    text: str
    calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool answered to call ``call_id``; ``is_error`` marks a failure the model sees."""

    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ToolResults:
    """The results of one step's calls, sent back as the next user-side turn."""

    results: tuple[ToolResult, ...]


Turn = ChatMessage | ToolTurn | ToolResults


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the provider counted for the request (sent once, near the end of the stream)."""

    input_tokens: int
    output_tokens: int


StreamItem = TextDelta | Usage | ToolCall


def default_timeout(seconds: float) -> httpx.Timeout:
    """Connect/write/pool bounded at 10 s; ``seconds`` bounds each read, i.e. a stalled stream."""
    return httpx.Timeout(connect=min(10.0, seconds), read=seconds, write=10.0, pool=10.0)


# What httpx imports only at its first client or its first request, on the caller's thread.
HTTP_STACK: Final = (
    "httpcore",
    "httpcore._backends.anyio",
    "h11",
    "anyio",
    "anyio._backends._asyncio",
    "anyio.streams.tls",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.to_thread",
)


def warm_http() -> None:
    """Import httpx's transport stack and build the CA context before the first request.

    Otherwise the bot's first key check paid both on its event loop, with every chat waiting.
    """
    for name in HTTP_STACK:
        importlib.import_module(name)
    tls_context()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The CA-verifying context, built once per process.

    Loading the CA bundle costs 20-30 ms of CPU: on the bot's loop, once per key check, it
    stalled every chat for that long.
    """
    return httpx.create_ssl_context()


def new_http_client(*, timeout: float, verify: Any = True) -> httpx.AsyncClient:
    """The client the workers use: no proxy variables from the environment, bounded timeouts.

    ``verify`` accepts a pre-built ``ssl.SSLContext`` so forked workers reuse the template's
    (loading the CA bundle costs ~20 ms, far over the cold-start budget).
    """
    return httpx.AsyncClient(
        timeout=default_timeout(timeout), trust_env=False, verify=verify, follow_redirects=False
    )


class LLMClient(ABC):
    """A provider client bound to one base URL and one key."""

    kind: str = ""

    def __init__(self, *, base_url: str, api_key: Secret, http: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._http = http

    @abstractmethod
    def _headers(self) -> dict[str, str]: ...

    @abstractmethod
    def _stream_url(self) -> str: ...

    @abstractmethod
    def _models_url(self) -> str: ...

    @abstractmethod
    def _body(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        system: str,
        max_tokens: int,
        tools: Sequence[ToolSpec],
    ) -> dict[str, Any]: ...

    @abstractmethod
    def _parse(self, events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[StreamItem]: ...

    async def stream(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        system: str,
        max_tokens: int,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamItem]:
        """Stream one step of a reply.

        ``TextDelta`` items in order, a ``ToolCall`` for each tool the model asks for (once its
        arguments are complete), and a ``Usage`` when reported.

        Raises an ``LLMError`` subclass; close the iterator to cancel the request.
        """
        body = self._body(messages, model=model, system=system, max_tokens=max_tokens, tools=tools)
        request = self._http.build_request(
            "POST", self._stream_url(), json=body, headers=self._headers()
        )
        try:
            # Never follow a redirect, whatever the client was built with: the key would go
            # to whichever origin the provider (or something in between) names.
            response = await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise _transport_error(self.kind, exc) from None
        try:
            if response.status_code != 200:
                await _read_quietly(response)
                raise classify(self.kind, response)
            async for item in self._parse(_json_events(self.kind, response)):
                yield item
        except httpx.HTTPError as exc:
            raise _transport_error(self.kind, exc) from None
        finally:
            await response.aclose()

    async def list_models(self) -> list[str]:
        """Model ids the key can reach, sorted; raises ``LLMError`` like ``stream``."""
        try:
            response = await self._http.get(
                self._models_url(), headers=self._headers(), follow_redirects=False
            )
        except httpx.HTTPError as exc:
            raise _transport_error(self.kind, exc) from None
        if response.status_code != 200:
            raise classify(self.kind, response)
        try:
            data = response.json()["data"]
            return sorted({str(m["id"]) for m in data})
        except (ValueError, KeyError, TypeError):
            raise BadResponse(f"{self.kind}: model list not understood", status=200) from None


class AnthropicClient(LLMClient):
    """The Anthropic Messages API (``POST {base}/v1/messages``)."""

    kind = "anthropic"

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self._key.reveal(), "anthropic-version": ANTHROPIC_VERSION}

    def _stream_url(self) -> str:
        return f"{self._base}/v1/messages"

    def _models_url(self) -> str:
        return f"{self._base}/v1/models?limit=1000"

    def _body(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        system: str,
        max_tokens: int,
        tools: Sequence[ToolSpec],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "stream": True,
            "messages": [_anthropic_turn(m) for m in messages],
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in tools
            ]
        return body

    async def _parse(self, events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[StreamItem]:
        input_tokens = output_tokens = 0
        # index -> (id, name, argument JSON so far) of each tool_use block still open
        open_calls: dict[int, tuple[str, str, list[str]]] = {}
        async for name, data in events:
            kind = data.get("type", name) if isinstance(data, dict) else name
            if kind == "content_block_delta":
                delta = _get(self.kind, data, "delta")
                dtype = delta.get("type")
                if dtype == "text_delta" and delta.get("text"):
                    yield TextDelta(str(delta["text"]))
                elif dtype == "input_json_delta":
                    call = open_calls.get(_int(data.get("index"), -1))
                    if call is not None:
                        call[2].append(str(delta.get("partial_json") or ""))
            elif kind == "content_block_start":
                block = _get(self.kind, data, "content_block")
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    parts: list[str] = []
                    start = block.get("input")
                    if isinstance(start, dict) and start:
                        parts.append(json.dumps(start))
                    open_calls[_int(data.get("index"), -1)] = (
                        str(block.get("id") or ""),
                        str(block.get("name") or ""),
                        parts,
                    )
            elif kind == "content_block_stop":
                call = open_calls.pop(_int(data.get("index"), -1), None)
                if call is not None:
                    yield ToolCall(call[0], call[1], _arguments("".join(call[2])))
            elif kind == "message_start":
                usage = _get(self.kind, _get(self.kind, data, "message"), "usage", {})
                input_tokens = _int(usage.get("input_tokens"))
                output_tokens = _int(usage.get("output_tokens"))
            elif kind == "message_delta":
                usage = data.get("usage") or {}
                input_tokens = _int(usage.get("input_tokens"), input_tokens)
                output_tokens = _int(usage.get("output_tokens"), output_tokens)
            elif kind == "message_stop":
                yield Usage(input_tokens, output_tokens)
                return
            elif kind == "error":
                raise _error_from_body(self.kind, None, data, {})
        raise BadResponse(f"{self.kind}: stream ended before message_stop")


class OpenAICompatibleClient(LLMClient):
    """OpenAI-compatible chat completions (``POST {base}/chat/completions``).

    ``base_url`` includes the version segment (``https://api.openai.com/v1``), as every
    compatible server documents it.
    """

    kind = "openai-compatible"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    def _stream_url(self) -> str:
        return f"{self._base}/chat/completions"

    def _models_url(self) -> str:
        return f"{self._base}/models"

    def _body(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        system: str,
        max_tokens: int,
        tools: Sequence[ToolSpec],
    ) -> dict[str, Any]:
        wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for m in messages:
            wire.extend(_openai_turn(m))
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": wire,
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.parameters),
                    },
                }
                for t in tools
            ]
        return body

    async def _parse(self, events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[StreamItem]:
        usage: Usage | None = None
        finished = False
        # index -> [id, name, argument fragments]: parallel calls arrive interleaved by index
        calls: dict[int, list[Any]] = {}
        async for _name, data in events:
            if data == "[DONE]":
                break
            if not isinstance(data, dict):
                raise BadResponse(f"{self.kind}: stream chunk is not an object")
            if "error" in data:
                raise _error_from_body(self.kind, None, data, {})
            for choice in data.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    yield TextDelta(str(text))
                for piece in delta.get("tool_calls") or ():
                    if not isinstance(piece, dict):
                        continue
                    call = calls.setdefault(_int(piece.get("index"), len(calls)), ["", "", []])
                    if piece.get("id"):
                        call[0] = str(piece["id"])
                    fn = piece.get("function") or {}
                    if fn.get("name"):
                        call[1] += str(fn["name"])
                    if fn.get("arguments"):
                        call[2].append(str(fn["arguments"]))
                if choice.get("finish_reason"):
                    finished = True
            raw = data.get("usage")
            if isinstance(raw, dict):
                usage = Usage(_int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens")))
        else:
            # Some compatible servers omit [DONE]; a finish_reason still marks a whole reply.
            if not finished:
                raise BadResponse(f"{self.kind}: stream ended before [DONE]")
        for index in sorted(calls):
            cid, name, parts = calls[index]
            yield ToolCall(cid or f"call_{index}", name, _arguments("".join(parts)))
        yield usage or Usage(0, 0)


_CLIENTS: Final[Mapping[str, type[LLMClient]]] = {
    "anthropic": AnthropicClient,
    "openai-compatible": OpenAICompatibleClient,
}


def make_client(kind: str, base_url: str, api_key: Secret, *, http: httpx.AsyncClient) -> LLMClient:
    """The client for a provider kind ("anthropic" or "openai-compatible")."""
    try:
        cls = _CLIENTS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}") from None
    return cls(base_url=base_url, api_key=api_key, http=http)


async def verify_key(
    kind: str,
    base_url: str,
    key: Secret,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the intake API's contract; it becomes httpx's
    http: httpx.AsyncClient | None = None,
) -> list[str]:
    """Check a key with one cheap authenticated call (``GET /v1/models``) before storing it.

    Returns the model ids the key reaches; raises ``InvalidKey`` for a dead key and the other
    ``LLMError`` classes for everything else (so intake can say "try again later" instead of
    "wrong key" when the provider is down).
    """
    if http is not None:
        return await make_client(kind, base_url, key, http=http).list_models()
    # The first check builds the context off the loop; later ones find it cached.
    verify = await asyncio.to_thread(tls_context)
    async with new_http_client(timeout=timeout, verify=verify) as own:
        return await make_client(kind, base_url, key, http=own).list_models()


# --- helpers -------------------------------------------------------------------------------


def _arguments(raw: str) -> dict[str, Any] | None:
    """A tool call's arguments; ``{}`` for none, None when they are not a JSON object."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _anthropic_turn(m: Turn) -> dict[str, Any]:
    if isinstance(m, ChatMessage):
        if not m.images:
            return {"role": m.role, "content": m.content}
        parts: list[dict[str, Any]] = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": i.media_type, "data": i.data},
            }
            for i in m.images
        ]
        if m.content:
            parts.append({"type": "text", "text": m.content})
        return {"role": m.role, "content": parts}
    if isinstance(m, ToolTurn):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": m.text}] if m.text else []
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments or {}}
            for c in m.calls
        ]
        return {"role": "assistant", "content": blocks}
    results: list[dict[str, Any]] = []
    for r in m.results:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": r.call_id}
        block["content"] = r.content
        if r.is_error:
            block["is_error"] = True
        results.append(block)
    return {"role": "user", "content": results}


def _openai_turn(m: Turn) -> list[dict[str, Any]]:
    if isinstance(m, ChatMessage):
        if not m.images:
            return [{"role": m.role, "content": m.content}]
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        parts += [
            {"type": "image_url", "image_url": {"url": f"data:{i.media_type};base64,{i.data}"}}
            for i in m.images
        ]
        return [{"role": m.role, "content": parts}]
    if isinstance(m, ToolTurn):
        calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments or {})},
            }
            for c in m.calls
        ]
        return [{"role": "assistant", "content": m.text or None, "tool_calls": calls}]
    # The chat-completions API has no error flag on a tool message: the text says it.
    return [
        {
            "role": "tool",
            "tool_call_id": r.call_id,
            "content": f"Error: {r.content}" if r.is_error else r.content,
        }
        for r in m.results
    ]


async def _read_quietly(response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError:
        # The error status is what matters; a body cut short only loses the error type.
        log.debug("error body unreadable (status %s)", response.status_code)


async def _json_events(kind: str, response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    async for event in iter_sse(response.aiter_lines()):
        if event.data == "[DONE]":
            yield event.event, "[DONE]"
            continue
        try:
            yield event.event, json.loads(event.data)
        except ValueError:
            raise BadResponse(f"{kind}: stream event is not JSON", status=200) from None


def _get(kind: str, data: Any, key: str, default: Any = None) -> Any:
    if isinstance(data, dict) and key in data:
        return data[key]
    if default is not None:
        return default
    raise BadResponse(f"{kind}: stream event lacks {key!r}")


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _transport_error(kind: str, exc: httpx.HTTPError) -> LLMError:
    # The exception's text can include the URL; ours carries only its class name.
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"{kind}: no answer within the timeout ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return NetworkError(f"{kind}: connection failed ({type(exc).__name__})")
    return BadResponse(f"{kind}: {type(exc).__name__}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds) as a float; None when absent or a date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def classify(kind: str, response: httpx.Response) -> LLMError:
    """Turn a non-200 response into the matching ``LLMError``."""
    if response.is_redirect:
        return BadResponse(
            f"{kind}: HTTP {response.status_code} redirect (not followed; check the base URL)",
            status=response.status_code,
        )
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return _error_from_body(kind, response.status_code, body, response.headers)


_CREDIT_WORDS: Final = ("quota", "credit", "balance", "billing", "insufficient", "payment")


def _error_from_body(
    kind: str, status: int | None, body: Any, headers: Mapping[str, str]
) -> LLMError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {}
    etype = str(err.get("type") or err.get("code") or "")
    # Only used for matching, never copied into our message: providers echo key fragments.
    text = f"{etype} {err.get('code') or ''} {err.get('message') or ''}".lower()
    where = f"{kind}: HTTP {status}" if status is not None else f"{kind}: stream error"
    what = f"{where} ({etype})" if etype and etype.isprintable() and len(etype) < 60 else where
    code = str(err.get("code") or "")
    # The metering proxy's own refusals (core.proxy.wire), in either API's format.
    if "usage_cap_reached" in (etype, code):
        return UsageCapReached(what, status=status)
    if "model_not_in_plan" in (etype, code):
        return ModelNotInPlan(what, status=status)
    if status in (401, 403) or etype in ("authentication_error", "permission_error"):
        return InvalidKey(what, status=status)
    if status == 402 or any(w in text for w in _CREDIT_WORDS):
        return OutOfCredit(what, status=status)
    if status == 429 or etype in ("rate_limit_error", "rate_limit_exceeded"):
        return RateLimited(what, status=status, retry_after=retry_after_seconds(headers))
    if (
        status == 404
        or etype in ("not_found_error", "model_not_found")
        or ("model" in text and ("not found" in text or "does not exist" in text))
    ):
        return ModelNotFound(what, status=status)
    if status in (503, 529) or etype in ("overloaded_error", "api_error", "server_error"):
        return Overloaded(what, status=status)
    if status is not None and status >= 500:
        return Overloaded(what, status=status)
    return BadResponse(what, status=status)
