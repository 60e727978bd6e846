"""Fake Anthropic Messages and OpenAI-compatible chat-completions servers on loopback (aiohttp).

One server answers both APIs: ``anthropic_url`` for the Anthropic kind (``/v1/messages``) and
``openai_url`` (which ends in ``/v1``) for the OpenAI-compatible kind. Every request is recorded
with the key it carried; tests script failures (status codes, stalls, malformed streams) and
hold a stream open at a gate to act in the middle of a reply.

A request without ``"stream": true`` gets the provider's plain JSON reply (with its usage), as
the real APIs answer; gates and scripted failures hold or break it the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import FAKE_SHUTDOWN

Reply = Callable[[list[dict[str, Any]]], str]


@dataclass
class FakeCall:
    """A tool call the fake model makes: ``arguments`` as an object, or raw (maybe broken) JSON."""

    name: str
    arguments: dict[str, Any] | str
    id: str = ""


@dataclass
class ToolStep:
    """One step in which the fake model asks for tools (several calls: parallel), after ``text``."""

    calls: list[FakeCall]
    text: str = ""


ToolScript = Callable[[str, list[dict[str, Any]]], "ToolStep | None"]
"""Given the API kind and the request's messages, a ``ToolStep`` or None to answer in text."""


def tool_results(body: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(call id, content, is_error)`` of every tool result a request carried, either API.

    The OpenAI-compatible API has no error flag: a result is an error when it starts "Error:".
    """
    out: list[tuple[str, str, bool]] = []
    for m in body.get("messages", []):
        if m.get("role") == "tool":
            text = str(m.get("content", ""))
            out.append((str(m.get("tool_call_id")), text, text.startswith("Error:")))
        elif m.get("role") == "user" and isinstance(m.get("content"), list):
            for block in m["content"]:
                if block.get("type") == "tool_result":
                    content = block.get("content")
                    out.append(
                        (str(block["tool_use_id"]), str(content), bool(block.get("is_error")))
                    )
    return out


def tool_rounds(messages: list[dict[str, Any]]) -> int:
    """How many tool steps a conversation already holds (assistant turns that called tools)."""
    return sum(
        1
        for m in messages
        if m.get("role") == "assistant"
        and (
            m.get("tool_calls")
            or (
                isinstance(m.get("content"), list)
                and any(b.get("type") == "tool_use" for b in m["content"])
            )
        )
    )


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """Default answer: echoes the last user message, so tests can tell replies apart."""
    # A tool result is a user turn too (Anthropic), but not what the person wrote.
    last = next(
        (
            m["content"]
            for m in reversed(messages)
            if m["role"] == "user" and isinstance(m["content"], str)
        ),
        "",
    )
    for m in reversed(messages):
        if m["role"] != "user":
            continue
        if isinstance(m["content"], str):
            break
        seen = image_count(m["content"])
        if seen:  # a message with images: echo its text and say how many images came
            return f"echo: {content_text(m['content'])} (saw {seen} image{'s' * (seen > 1)})"
    return f"echo: {last}"


def image_count(content: Any) -> int:
    """Image blocks in one message's content (Anthropic ``image``, OpenAI ``image_url``)."""
    if not isinstance(content, list):
        return 0
    return sum(1 for b in content if b.get("type") in ("image", "image_url"))


def content_text(content: Any) -> str:
    """The text parts of a message's content (a plain string as it is)."""
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b.get("type") == "text")


def content_images(content: Any) -> list[tuple[str, bytes]]:
    """``(media type, bytes)`` of each image block in a message's content, decoded."""
    out: list[tuple[str, bytes]] = []
    for block in content if isinstance(content, list) else ():
        if block.get("type") == "image":
            source = block["source"]
            out.append((source["media_type"], base64.b64decode(source["data"])))
        elif block.get("type") == "image_url":
            url = block["image_url"]["url"]
            head, _, data = url.partition(",")
            out.append((head.removeprefix("data:").removesuffix(";base64"), base64.b64decode(data)))
    return out


@dataclass
class Recorded:
    """One request the fake received."""

    kind: str
    path: str
    key: str
    body: dict[str, Any]


@dataclass
class Failure:
    """A scripted failure for the next matching request(s)."""

    status: int = 500
    error_type: str = "api_error"
    message: str = "scripted failure"
    retry_after: str | None = None
    mode: str = "status"  # "status" | "stall" | "stall_mid" | "malformed" | "stream_error"
    times: int = 1


@dataclass
class FakeLLMServer:
    """The fake provider. Use ``async with FakeLLMServer() as fake``."""

    reply: Reply = echo_reply
    models: tuple[str, ...] = ("model-large", "model-small")
    valid_keys: set[str] | None = None
    chunk_delay: float = 0.0
    # Seconds GET /v1/models (the key check) takes: a provider slow to answer.
    models_delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    gate: asyncio.Event | None = None
    gate_keys: set[str] | None = None  # when set, only these keys wait at the gate
    mid_stream: asyncio.Event = field(default_factory=asyncio.Event)
    disconnects: int = 0
    # A model that always talks until cut off: the usage reports the largest output the
    # request allows (max_tokens / max_completion_tokens, times n), not the words sent.
    greedy: bool = False
    # Scripted tool calls (None: never call a tool); see ``ToolScript``.
    tool_script: ToolScript | None = None
    # Anthropic prompt-cache usage added to every reply's usage (message_start when streamed),
    # e.g. {"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 5000}.
    cache_usage: dict[str, int] = field(default_factory=dict)
    # What POST /v1/audio/transcriptions answers, and the audio files it was sent (bytes).
    transcript: str = "remind me to water the plants"
    # How long the audio "lasted": in the reply when response_format is verbose_json.
    transcript_seconds: float = 2.4
    transcriptions: list[bytes] = field(default_factory=list)
    # Serve over TLS with this context (the URLs then say https).
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None
    port: int = 0
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeLLMServer:
        app = web.Application()
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed.set()
        if self.gate is not None:
            self.gate.set()
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def anthropic_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}/v1"

    @property
    def _scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    def fail(self, status: int = 500, **kwargs: Any) -> None:
        """Script a failure for the next request (or ``times`` requests)."""
        self.failures.append(Failure(status=status, **kwargs))

    def keys(self, kind: str | None = None) -> list[str]:
        """Keys carried by the streamed chat requests, in arrival order."""
        return [r.key for r in self.requests if r.path != "/v1/models" and kind in (None, r.kind)]

    # --- handlers ---------------------------------------------------------------------------

    def _take_failure(self) -> Failure | None:
        if not self.failures:
            return None
        failure = self.failures[0]
        failure.times -= 1
        if failure.times <= 0:
            self.failures.pop(0)
        return failure

    def _refuse(self, key: str) -> web.Response | None:
        if self.valid_keys is not None and key not in self.valid_keys:
            body = {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": f"invalid x-api-key {key[:12]}***",
                },
            }
            return web.json_response(body, status=401)
        return None

    def images(self) -> list[tuple[str, str, bytes]]:
        """``(API kind, media type, bytes)`` of every image block the chat requests carried."""
        return [
            (r.kind, media_type, data)
            for r in self.requests
            for m in r.body.get("messages", [])
            for media_type, data in content_images(m.get("content"))
        ]

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's transcription endpoint: multipart ``file`` and ``model``, JSON ``text``."""
        key = _bearer(request)
        form = await request.post()
        upload = form.get("file")
        audio = upload.file.read() if isinstance(upload, web.FileField) else b""
        body = {
            "model": str(form.get("model", "")),
            "filename": upload.filename if isinstance(upload, web.FileField) else "",
            "bytes": len(audio),
            "response_format": str(form.get("response_format", "")),
        }
        self.requests.append(Recorded("transcription", request.path, key, body))
        refused = self._refuse(key)
        if refused is not None:
            return refused
        failure = self._take_failure()
        if failure is not None:
            return _error_response(failure)
        if not audio or not body["model"]:
            return web.json_response({"error": {"message": "file and model required"}}, status=400)
        if self.gate is not None and (self.gate_keys is None or key in self.gate_keys):
            await self.gate.wait()
        self.transcriptions.append(audio)
        if body["response_format"] == "verbose_json":
            return web.json_response(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": self.transcript_seconds,
                    "text": self.transcript,
                    "segments": [],
                }
            )
        return web.json_response({"text": self.transcript})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key") or _bearer(request)
        kind = "anthropic" if "x-api-key" in request.headers else "openai-compatible"
        self.requests.append(Recorded(kind, request.path, key, {}))
        if self.models_delay:
            await asyncio.sleep(self.models_delay)
        refused = self._refuse(key)
        if refused is not None:
            return refused
        failure = self._take_failure()
        if failure is not None:
            return _error_response(failure)
        return web.json_response({"data": [{"id": m, "type": "model"} for m in self.models]})

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key", "")
        body = await request.json()
        self.requests.append(Recorded("anthropic", request.path, key, body))
        refused = self._refuse(key)
        if refused is not None:
            return refused
        messages = list(body["messages"])
        step = self.tool_script("anthropic", messages) if self.tool_script else None
        if step is not None:
            return await self._anthropic_tools(request, key, step, messages)
        text = self.reply(messages)
        words = _split(text)
        n_in = sum(len(str(m["content"]).split()) for m in messages)

        def events() -> list[bytes]:
            out = [
                _sse(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": "msg_1",
                            "usage": {
                                "input_tokens": n_in,
                                "output_tokens": 1,
                                **self.cache_usage,
                            },
                        },
                    },
                )
            ]
            out.append(
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            out.append(_sse("ping", {"type": "ping"}))
            for w in words:
                out.append(
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": w},
                        },
                    )
                )
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            out.append(
                _sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": _allowed(body) if self.greedy else len(words)},
                    },
                )
            )
            out.append(_sse("message_stop", {"type": "message_stop"}))
            return out

        if body.get("stream") is not True:
            return await self._plain(
                request,
                key,
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model"),
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": n_in,
                        "output_tokens": _allowed(body) if self.greedy else len(words),
                        **self.cache_usage,
                    },
                },
            )
        return await self._stream(
            request,
            events(),
            3,
            key,
            error_event=lambda f: _sse(
                "error", {"type": "error", "error": {"type": f.error_type, "message": f.message}}
            ),
        )

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        key = _bearer(request)
        body = await request.json()
        self.requests.append(Recorded("openai-compatible", request.path, key, body))
        refused = self._refuse(key)
        if refused is not None:
            return refused
        messages = [m for m in body["messages"] if m["role"] != "system"]
        step = self.tool_script("openai-compatible", messages) if self.tool_script else None
        if step is not None:
            return await self._openai_tools(request, key, step, body)
        text = self.reply(messages)
        words = _split(text)
        n_in = sum(len(str(m["content"]).split()) for m in body["messages"])

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _data(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        n_out = _allowed(body) if self.greedy else len(words)
        if body.get("stream") is not True:
            return await self._plain(
                request,
                key,
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": n_in,
                        "completion_tokens": n_out,
                        "total_tokens": n_in + n_out,
                    },
                },
            )
        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk({"content": w}) for w in words]
        out.append(chunk({}, "stop"))
        if body.get("stream_options", {}).get("include_usage"):
            out.append(
                _data(
                    {
                        "id": "c1",
                        "choices": [],
                        "usage": {
                            "prompt_tokens": n_in,
                            "completion_tokens": n_out,
                            "total_tokens": n_in + n_out,
                        },
                    }
                )
            )
        out.append(b"data: [DONE]\n\n")
        return await self._stream(
            request,
            out,
            1,
            key,
            error_event=lambda f: _data(
                {"error": {"type": f.error_type, "message": f.message, "code": f.error_type}}
            ),
        )

    async def _anthropic_tools(
        self, request: web.Request, key: str, step: ToolStep, messages: list[dict[str, Any]]
    ) -> web.StreamResponse:
        """A tool_use turn: optional text block, then each call's input in two JSON pieces."""
        n_in = sum(len(str(m["content"]).split()) for m in messages)
        out = [
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {"id": "msg_t", "usage": {"input_tokens": n_in, "output_tokens": 1}},
                },
            )
        ]
        index = 0
        if step.text:
            out.append(
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            out.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": step.text},
                    },
                )
            )
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        for n, call in enumerate(step.calls):
            raw = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            cid = call.id or f"toolu_{len(self.requests)}_{n}"
            out.append(
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": cid,
                            "name": call.name,
                            "input": {},
                        },
                    },
                )
            )
            half = len(raw) // 2
            for piece in (raw[:half], raw[half:]):
                out.append(
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1
        out.append(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": 10 * len(step.calls)},
                },
            )
        )
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return await self._stream(
            request,
            out,
            1,
            key,
            error_event=lambda f: _sse(
                "error", {"type": "error", "error": {"type": f.error_type, "message": f.message}}
            ),
        )

    async def _openai_tools(
        self, request: web.Request, key: str, step: ToolStep, body: dict[str, Any]
    ) -> web.StreamResponse:
        """Parallel tool_calls deltas, interleaved by index as OpenAI streams them."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _data(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        out = [chunk({"role": "assistant", "content": None})]
        if step.text:
            out.append(chunk({"content": step.text}))
        raws = [
            c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)
            for c in step.calls
        ]
        for i, call in enumerate(step.calls):
            cid = call.id or f"call_{len(self.requests)}_{i}"
            head = {"index": i, "id": cid, "type": "function"}
            out.append(
                chunk({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
            )
        for part in (0, 1):  # each call's arguments in two pieces, calls interleaved
            for i, raw in enumerate(raws):
                half = len(raw) // 2
                piece = raw[:half] if part == 0 else raw[half:]
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        out.append(chunk({}, "tool_calls"))
        n_in = sum(len(str(m.get("content")).split()) for m in body["messages"])
        out.append(
            _data(
                {
                    "id": "c1",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": n_in,
                        "completion_tokens": 10 * len(step.calls),
                        "total_tokens": n_in + 10 * len(step.calls),
                    },
                }
            )
        )
        out.append(b"data: [DONE]\n\n")
        return await self._stream(
            request,
            out,
            1,
            key,
            error_event=lambda f: _data(
                {"error": {"type": f.error_type, "message": f.message, "code": f.error_type}}
            ),
        )

    async def _plain(
        self, request: web.Request, key: str, reply: dict[str, Any]
    ) -> web.StreamResponse:
        """A non-streaming reply; a gate holds it before it is sent (as if mid-generation)."""
        failure = self._take_failure()
        if failure is not None and failure.mode in ("status", "stream_error"):
            return _error_response(failure)
        if failure is not None and failure.mode in ("stall", "stall_mid"):
            self.mid_stream.set()
            await self._closed.wait()
            return web.Response(status=503)
        if failure is not None and failure.mode == "malformed":
            return web.Response(body=b"{not json", content_type="application/json")
        if self.gate is not None and (self.gate_keys is None or key in self.gate_keys):
            self.mid_stream.set()
            await self.gate.wait()
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)
        return web.json_response(reply)

    async def _stream(
        self,
        request: web.Request,
        events: list[bytes],
        first_text: int,
        key: str,
        *,
        error_event: Callable[[Failure], bytes],
    ) -> web.StreamResponse:
        """Send ``events``; gates hold after ``events[first_text]``, the first text delta."""
        failure = self._take_failure()
        if failure is not None and failure.mode == "status":
            return _error_response(failure)
        if failure is not None and failure.mode == "stall":
            await self._closed.wait()
            return web.Response(status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if failure is not None and failure.mode == "malformed":
                await response.write(events[0] + b"data: {not json\n\n")
                return response
            if failure is not None and failure.mode == "stream_error":
                await response.write(events[0] + error_event(failure))
                return response
            for i, event in enumerate(events):
                await response.write(event)
                held = self.gate_keys is None or key in self.gate_keys
                if i == first_text and self.gate is not None and held:
                    self.mid_stream.set()
                    await self.gate.wait()
                if i == first_text and failure is not None and failure.mode == "stall_mid":
                    self.mid_stream.set()
                    await self._closed.wait()
                    return response
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream: that is what cancellation looks like here.
            self.disconnects += 1
        return response


def _allowed(body: dict[str, Any]) -> int:
    """The most output tokens a request allows (what a greedy model bills)."""
    bounds = [
        v
        for k in ("max_tokens", "max_completion_tokens")
        if isinstance(v := body.get(k), int) and not isinstance(v, bool)
    ]
    n = body.get("n", 1)
    return max(bounds, default=1) * (n if isinstance(n, int) and n > 0 else 1)


def _bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    return value.removeprefix("Bearer ")


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _data(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _error_response(failure: Failure) -> web.Response:
    headers = {"retry-after": failure.retry_after} if failure.retry_after is not None else {}
    body = {
        "type": "error",
        "error": {
            "type": failure.error_type,
            "message": failure.message,
            "code": failure.error_type,
        },
    }
    return web.json_response(body, status=failure.status, headers=headers)
