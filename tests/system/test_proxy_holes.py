"""Issue 12 through the real program: ``byokbot proxy`` as a subprocess, spoken to over HTTP.

The database is migrated by ``byokbot db upgrade``; a managed tenant and its agent's scoped
token come from ``scripts/managed_tenant.py`` run as its own process (the bot's sign-up path,
minus the chat); suspension is ``byokbot admin suspend`` as an operator types it. The test
sees only HTTP answers, what reached the loopback fakes, exit codes and output.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.redirect_server import RecordingOrigin, RedirectingUpstream
from tests.system.harness import BotProcess, CanaryScan, Workspace

SCRIPT = Path(__file__).with_name("scripts") / "managed_tenant.py"
TOKEN_CAP = 20_000
AUDIO_LIMIT = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    ws: Workspace
    process: BotProcess
    url: str
    tenant: str
    token: str
    http: httpx.AsyncClient

    async def anthropic(
        self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(
            f"{self.url}/v1/messages",
            content=content,
            headers={"x-api-key": self.token, **(headers or {})},
        )

    async def transcribe(
        self,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        *,
        token: str | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        url = f"{self.url}/v1/audio/transcriptions"
        if content is not None:
            return await self.http.post(url, content=content, headers=headers)
        return await self.http.post(url, files=files, data=data, headers=headers)

    async def openai(self, body: dict[str, Any] | bytes) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(
            f"{self.url}/v1/chat/completions",
            content=content,
            headers={"Authorization": f"Bearer {self.token}"},
        )


def claude(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sys",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello"}],
        **extra,
    }


def gpt(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-sys", "messages": [{"role": "user", "content": "hello"}], **extra}


@pytest.fixture
async def redirect() -> AsyncIterator[tuple[RedirectingUpstream, RecordingOrigin]]:
    origin = RecordingOrigin()
    await origin.start()
    upstream = RedirectingUpstream(origin)
    await upstream.start()
    try:
        yield upstream, origin
    finally:
        await upstream.stop()
        await origin.stop()


@pytest.fixture
async def proxy(
    ws: Workspace,
    llm: FakeLLMServer,
    canaries: CanaryScan,
    redirect: tuple[RedirectingUpstream, RecordingOrigin],
) -> AsyncIterator[Proxy]:
    keys = {"PX_ANTHROPIC": anthropic_key(), "PX_OPENAI": openai_key()}
    canaries.add(*keys.values())
    llm.valid_keys = set(keys.values())
    llm.chunk_delay = 0.0
    ws.env.update(keys)
    port = free_port()
    ws.configure(
        {
            "plans.managed": {
                "name": "Managed",
                "price_usd": 39,
                "byok": False,
                "models": ["claude-sys", "gpt-sys", "claude-moved"],
                "requests_per_minute": 1000,
                "monthly_token_cap": TOKEN_CAP,
            },
            "proxy": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "token_cache_seconds": 30,
                "default_max_tokens": 100,
            },
            "proxy.upstreams.up-a": {
                "kind": "anthropic",
                "base_url": llm.anthropic_url,
                "key_env": "PX_ANTHROPIC",
            },
            "proxy.upstreams.up-o": {
                "kind": "openai-compatible",
                "base_url": llm.openai_url,
                "key_env": "PX_OPENAI",
            },
            "proxy.upstreams.moved": {
                "kind": "anthropic",
                "base_url": redirect[0].url,
                "key_env": "PX_ANTHROPIC",
            },
            'proxy.models."claude-sys"': {
                "upstream": "up-a",
                "upstream_model": "model-large",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
            },
            'proxy.models."gpt-sys"': {
                "upstream": "up-o",
                "upstream_model": "model-small",
                "input_usd_per_mtok": 0.4,
                "output_usd_per_mtok": 1.6,
            },
            'proxy.models."claude-moved"': {
                "upstream": "moved",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
            },
            "proxy.transcription": {"upstream": "up-o"},
            "media": {"max_audio_bytes": AUDIO_LIMIT},
        }
    )
    migrated = await ws.cli("db", "upgrade")
    assert migrated.returncode == 0, migrated.output
    made = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "managed",
        "4242",
        cwd=ws.root,
        env=ws.environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await made.communicate()
    assert made.returncode == 0, err.decode()
    tenant, token = out.decode().split()
    process = await ws.start("proxy")
    await process.wait_output(r"metering proxy on")
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(trust_env=False, timeout=20) as http:
        for _ in range(100):  # the line is printed as the listener starts
            try:
                await http.get(url)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        yield Proxy(ws, process, url, tenant, token, http)
    assert process.returncode is None, process.output()
    assert "Traceback" not in process.output()
    assert await process.terminate() == 0


def error_of(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body["error"]["type"], body["error"]["message"]


async def test_caps_cover_n_and_every_output_bound_and_server_tools_are_refused(
    proxy: Proxy, llm: FakeLLMServer
) -> None:
    llm.greedy = True  # bills the most output each request allows
    assert (await proxy.anthropic(claude())).status_code == 200
    # 8 choices x 3,000 tokens is more than the whole month's cap: refused, nothing sent.
    r = await proxy.openai(gpt(max_tokens=1, max_completion_tokens=3_000, n=8))
    assert error_of(r)[:2] == (402, "insufficient_quota")
    r = await proxy.anthropic(claude(tools=[{"type": "web_search_20250305", "name": "w"}]))
    assert error_of(r)[:2] == (400, "invalid_request_error")
    assert "web_search_20250305" in error_of(r)[2]
    r = await proxy.anthropic(claude(), {"anthropic-beta": "context-1m-2025-08-07"})
    assert error_of(r)[:2] == (400, "invalid_request_error")
    r = await proxy.openai(gpt(web_search_options={}))
    assert error_of(r)[:2] == (400, "invalid_request_error")
    assert len(llm.requests) == 1
    # What fits is admitted and billed in full: 2 choices x 200.
    assert (await proxy.openai(gpt(max_completion_tokens=200, n=2))).status_code == 200
    assert llm.requests[-1].body["n"] == 2


async def test_an_upstream_redirect_is_an_error_and_the_key_goes_nowhere(
    proxy: Proxy, redirect: tuple[RedirectingUpstream, RecordingOrigin]
) -> None:
    upstream, origin = redirect
    r = await proxy.anthropic({**claude(), "model": "claude-moved"})
    assert error_of(r) == (
        502,
        "api_error",
        "upstream provider answered with a redirect (not followed)",
    )
    assert upstream.hits == 1
    assert origin.requests == []
    assert "redirect (HTTP 307); not followed" in proxy.process.output()


BAD_BODIES = [
    ("anthropic", b"[" * 200_000 + b"]" * 200_000),
    ("anthropic", b'{"model":' * 200_000),
    ("openai", json.dumps(gpt(stream_options=[1])).encode()),
    ("openai", json.dumps(gpt(stream_options="yes", stream=True)).encode()),
    ("anthropic", b'{"model": "claude-sys", "messages": "\xff"}'),
    ("anthropic", json.dumps(claude(max_tokens=-1)).encode()),
    ("anthropic", json.dumps(claude(max_tokens="many")).encode()),
    ("anthropic", json.dumps(claude(messages={"role": "user"})).encode()),
    ("openai", json.dumps(gpt(model=7)).encode()),
    ("openai", json.dumps(gpt(n="8")).encode()),
    ("openai", b"not json at all"),
]


async def test_malformed_bodies_get_a_json_400_and_the_proxy_lives_on(
    proxy: Proxy, llm: FakeLLMServer
) -> None:
    for api, raw in BAD_BODIES:
        r = await (proxy.anthropic(raw) if api == "anthropic" else proxy.openai(raw))
        assert r.status_code == 400, (raw[:60], r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert llm.requests == []
    assert (await proxy.anthropic(claude())).status_code == 200  # still serving


async def test_the_next_request_after_a_streamed_reply_is_judged_on_that_replys_real_usage(
    proxy: Proxy, llm: FakeLLMServer
) -> None:
    # The upstream keeps the connection open a while after its last event, as a provider may.
    llm.chunk_delay = 0.5
    big = claude(max_tokens=TOKEN_CAP * 3 // 5, stream=True)  # reserves 60 % of the month
    async with proxy.http.stream(
        "POST",
        f"{proxy.url}/v1/messages",
        content=json.dumps(big).encode(),
        headers={"x-api-key": proxy.token},
    ) as first:
        assert first.status_code == 200
        async for line in first.aiter_lines():
            if "message_stop" in line:
                break
        else:
            raise AssertionError("the reply never ended")
        # The client has the whole reply (a few tokens): its 60 % reservation is over, so a
        # second such request fits while the first connection is still open.
        second = await proxy.anthropic(claude(max_tokens=TOKEN_CAP * 3 // 5))
        assert second.status_code == 200, second.text[:300]


async def test_a_suspension_from_the_cli_stops_the_token_within_a_second(proxy: Proxy) -> None:
    assert (await proxy.anthropic(claude())).status_code == 200  # now cached for 30 s
    done = await proxy.ws.cli("admin", "suspend", proxy.tenant, "abuse")
    assert done.returncode == 0, done.output
    committed = time.monotonic()
    while True:
        r = await proxy.anthropic(claude())
        if r.status_code == 401:
            break
        assert r.status_code == 200
        assert time.monotonic() - committed < 1.0, "a suspended tenant's token still works"
        await asyncio.sleep(0.05)
    assert error_of(r)[:2] == (401, "authentication_error")


async def test_the_transcription_route_admits_a_voice_note_and_refuses_bad_ones_clearly(
    proxy: Proxy, llm: FakeLLMServer
) -> None:
    voice = {"file": ("voice.ogg", b"OggS" + bytes(2000), "audio/ogg")}
    r = await proxy.transcribe(voice, {"model": "whisper-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": llm.transcript}
    heard = [x for x in llm.requests if x.kind == "transcription"]
    assert [x.key for x in heard] == [proxy.ws.env["PX_OPENAI"]]  # the platform's key
    assert heard[0].body["response_format"] == "verbose_json"
    r = await proxy.transcribe(voice, {"response_format": "verbose_json"})
    assert r.json()["duration"] == llm.transcript_seconds

    refusals = [
        (await proxy.transcribe(voice, token="byok-not-a-token"), 401, "invalid_request_error"),
        (
            await proxy.transcribe({"file": ("big.ogg", bytes(AUDIO_LIMIT + 1), "audio/ogg")}),
            413,
            "invalid_request_error",
        ),
        (
            await proxy.transcribe({"model": (None, "whisper-1")}),  # a form without the file
            400,
            "invalid_request_error",
        ),
        (await proxy.transcribe(content=b'{"file": "x"}'), 400, "invalid_request_error"),
        (await proxy.transcribe(voice, {"stream": "true"}), 400, "invalid_request_error"),
        (await proxy.transcribe(voice, {"response_format": "srt"}), 400, "invalid_request_error"),
    ]
    messages = []
    for r, status, kind in refusals:
        assert r.headers["content-type"].startswith("application/json")
        assert error_of(r)[:2] == (status, kind), r.text
        messages.append(error_of(r)[2])
    assert messages == [
        "invalid or revoked proxy token",
        f"audio file larger than {AUDIO_LIMIT} bytes",
        "file: field required (the audio)",
        "body: must be multipart/form-data with a file",
        "stream: not supported by the managed plan's proxy",
        "response_format: must be json or verbose_json",
    ]
    assert len([x for x in llm.requests if x.kind == "transcription"]) == 2
