"""Media as the agent reads it: image input on both APIs, the protocol, document text, transcripts."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from core.config import MediaSettings, parse_config
from core.errors import ConfigError
from core.llm import ChatMessage, ImageInput, make_client, new_http_client
from core.media import (
    MediaRefused,
    TranscriptionFailed,
    document_text,
    image_input,
    image_type,
    transcribe,
)
from core.runtime import protocol
from core.runtime.errors import ProtocolError
from core.secret import Secret
from tests.canaries import openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import OGG_VOICE, pdf, png


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_images_reach_the_provider_as_image_input(fake: FakeLLMServer, kind: str) -> None:
    image = png()
    url = fake.anthropic_url if kind == "anthropic" else fake.openai_url
    async with new_http_client(timeout=10) as http:
        client = make_client(kind, url, Secret("sk-test"), http=http)
        message = ChatMessage("user", "look", (image_input(image),))
        out = [item async for item in client.stream([message], model="m", system="", max_tokens=50)]
    assert "".join(getattr(i, "text", "") for i in out) == "echo: look (saw 1 image)"
    assert fake.images() == [(kind, "image/png", image)]
    content = fake.requests[-1].body["messages"][-1]["content"]
    texts = [b for b in content if b["type"] == "text"]
    assert texts == [{"type": "text", "text": "look"}]


def test_protocol_carries_images_only_when_there_are_some() -> None:
    img = ImageInput("image/jpeg", base64.b64encode(b"\xff\xd8\xff").decode())
    msg = protocol.Request(
        "1", (ChatMessage("user", "old"), ChatMessage("user", "new", (img,))), "m", "", 10
    )
    line = protocol.encode(msg)
    wire = json.loads(line)["messages"]
    assert "images" not in wire[0]
    assert wire[1]["images"] == [{"media_type": "image/jpeg", "data": img.data}]
    assert protocol.decode(line) == msg
    bad = json.loads(line)
    bad["messages"][1]["images"] = {"media_type": "image/png"}
    with pytest.raises(ProtocolError):
        protocol.decode(json.dumps(bad))


def test_image_type_is_read_from_the_bytes() -> None:
    assert image_type(png()) == "image/png"
    assert image_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert image_type(b"GIF89a...") == "image/gif"
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    with pytest.raises(MediaRefused) as refused:
        image_input(b"<svg/>")
    assert refused.value.reason == "image_type"


async def test_document_text_pdf_text_and_limits() -> None:
    limits = MediaSettings(max_document_pages=2, max_document_chars=200)
    assert "hello PDF" in await document_text("a.pdf", "", pdf("hello PDF"), limits)
    assert await document_text("a.py", "text/x-python", b"print(1)\n", limits) == "print(1)"
    cases = [
        (pdf("1", "2", "3"), "pdf_pages", {"pages": 3, "limit": 2}),
        (b"%PDF-1.4 broken", "pdf_unreadable", {}),
        (b"\x00\x01binary", "document_type", {}),
        (b"\xff\xfe\xfa", "document_type", {}),
        (b"   \n", "document_empty", {}),
        (b"x" * 201, "document_chars", {"chars": 201, "limit": 200}),
    ]
    for data, reason, details in cases:
        with pytest.raises(MediaRefused) as refused:
            await document_text("f", "", data, limits)
        assert (refused.value.reason, refused.value.details) == (reason, details)


async def test_transcription_posts_multipart_with_the_key(fake: FakeLLMServer) -> None:
    key = openai_key()
    text = await transcribe(
        fake.openai_url,
        Secret(key),
        OGG_VOICE,
        filename="voice.ogg",
        mime="audio/ogg",
        model="whisper-1",
        seconds=10,
    )
    assert text == fake.transcript
    (call,) = fake.requests
    assert (call.kind, call.key, call.body["model"], call.body["filename"]) == (
        "transcription",
        key,
        "whisper-1",
        "voice.ogg",
    )
    assert fake.transcriptions == [OGG_VOICE]


async def test_transcription_ignores_proxy_variables_in_the_environment(
    fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy named in the environment would see the key (and take the loopback metering
    proxy's traffic away): the voice note goes straight to its URL, as key checks do."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    key = openai_key()
    async with server:
        text = await transcribe(
            fake.openai_url,
            Secret(key),
            OGG_VOICE,
            filename="voice.ogg",
            mime="audio/ogg",
            model="whisper-1",
            seconds=10,
        )
    assert text == fake.transcript
    assert seen == []


async def test_transcription_failures_are_classified(fake: FakeLLMServer) -> None:
    fake.valid_keys = {"good"}

    async def run(key: str = "good") -> str:
        return await transcribe(
            fake.openai_url, Secret(key), b"x", filename="", mime="", model="w", seconds=5
        )

    for key, status, reason in (("bad", None, "invalid_key"), ("good", 429, "rate_limited")):
        if status is not None:
            fake.fail(status)
        with pytest.raises(TranscriptionFailed) as failed:
            await run(key)
        assert failed.value.reason == reason
    fake.transcript = "  "
    with pytest.raises(TranscriptionFailed) as failed:
        await run()
    assert failed.value.reason == "empty"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    with pytest.raises(TranscriptionFailed) as failed:
        await transcribe(
            "http://x/v1",
            Secret("k"),
            b"x",
            filename="",
            mime="",
            model="w",
            seconds=5,
            transport=httpx.MockTransport(refuse),
        )
    assert failed.value.reason == "network"


def test_media_config() -> None:
    cfg = parse_config({"media": {"max_image_bytes": 1000}}, source="t", base_dir=Path("."))
    assert cfg.media.max_image_bytes == 1000
    assert cfg.media.transcription_model == "whisper-1"
    with pytest.raises(ConfigError, match="media"):
        parse_config({"media": {"max_image_bytes": 0}}, source="t", base_dir=Path("."))
    with pytest.raises(ConfigError, match="media"):
        parse_config({"media": {"unknown": 1}}, source="t", base_dir=Path("."))
