"""Both provider clients against the loopback fake: streaming, usage, errors, cancellation, keys."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

import httpx
import pytest

from core.llm import (
    BadResponse,
    ChatMessage,
    InvalidKey,
    LLMClient,
    LLMError,
    ModelNotFound,
    NetworkError,
    OutOfCredit,
    Overloaded,
    RateLimited,
    TextDelta,
    Timeout,
    Usage,
    make_client,
    new_http_client,
    tls_context,
    verify_key,
)
from core.secret import Secret
from tests.fakes.llm_server import FakeLLMServer

KINDS = ["anthropic", "openai-compatible"]
CANARY = "sk-ant-api03-" + "C4n4ry" * 15 + "xyz" + "AA"


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client(timeout=5.0) as client:
        yield client


def _url(fake: FakeLLMServer, kind: str) -> str:
    return fake.anthropic_url if kind == "anthropic" else fake.openai_url


def _client(fake: FakeLLMServer, kind: str, http: httpx.AsyncClient, key: str) -> LLMClient:
    return make_client(kind, _url(fake, kind), Secret(key), http=http)


async def _collect(client: LLMClient, text: str = "hello there") -> list[object]:
    messages = [ChatMessage("user", text)]
    return [
        item
        async for item in client.stream(
            messages, model="model-large", system="be brief", max_tokens=50
        )
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_yields_text_in_order_then_usage(
    fake: FakeLLMServer, http: httpx.AsyncClient, kind: str
) -> None:
    items = await _collect(_client(fake, kind, http, "sk-tenant-a"), "hello there")
    assert items == [
        TextDelta("echo: "),
        TextDelta("hello "),
        TextDelta("there"),
        Usage(2 if kind == "anthropic" else 4, 3),
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_request_carries_key_model_system_and_budget(
    fake: FakeLLMServer, http: httpx.AsyncClient, kind: str
) -> None:
    await _collect(_client(fake, kind, http, "sk-tenant-a"))
    [req] = fake.requests
    assert (req.kind, req.key, req.body["model"], req.body["max_tokens"]) == (
        kind,
        "sk-tenant-a",
        "model-large",
        50,
    )
    if kind == "anthropic":
        assert req.body["system"] == "be brief"
        assert req.body["messages"] == [{"role": "user", "content": "hello there"}]
    else:
        assert req.body["messages"][0] == {"role": "system", "content": "be brief"}
        assert req.body["stream_options"] == {"include_usage": True}


ERRORS = [
    ({"status": 401, "error_type": "authentication_error"}, InvalidKey, "invalid_key"),
    ({"status": 403, "error_type": "permission_error"}, InvalidKey, "invalid_key"),
    (
        {"status": 429, "error_type": "rate_limit_error", "retry_after": "7"},
        RateLimited,
        "rate_limited",
    ),
    ({"status": 429, "error_type": "insufficient_quota"}, OutOfCredit, "out_of_credit"),
    (
        {
            "status": 400,
            "error_type": "invalid_request_error",
            "message": "Your credit balance is too low",
        },
        OutOfCredit,
        "out_of_credit",
    ),
    ({"status": 529, "error_type": "overloaded_error"}, Overloaded, "overloaded"),
    ({"status": 503, "error_type": "service_unavailable"}, Overloaded, "overloaded"),
    ({"status": 500, "error_type": "whatever"}, Overloaded, "overloaded"),
    ({"status": 404, "error_type": "not_found_error"}, ModelNotFound, "model_not_found"),
    (
        {
            "status": 400,
            "error_type": "invalid_request_error",
            "message": "The model `x` does not exist",
        },
        ModelNotFound,
        "model_not_found",
    ),
    ({"status": 418, "error_type": "teapot"}, BadResponse, "bad_response"),
    ({"mode": "malformed"}, BadResponse, "bad_response"),
    ({"mode": "stream_error", "error_type": "overloaded_error"}, Overloaded, "overloaded"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("failure", "cls", "code"), ERRORS)
async def test_failures_are_classified(
    fake: FakeLLMServer,
    http: httpx.AsyncClient,
    kind: str,
    failure: dict[str, object],
    cls: type[LLMError],
    code: str,
) -> None:
    fake.fail(**failure)  # type: ignore[arg-type]
    with pytest.raises(cls) as info:
        await _collect(_client(fake, kind, http, "sk-x"))
    assert (type(info.value), info.value.code) == (cls, code)


async def test_rate_limit_carries_retry_after(fake: FakeLLMServer, http: httpx.AsyncClient) -> None:
    fake.fail(429, error_type="rate_limit_error", retry_after="12")
    with pytest.raises(RateLimited) as info:
        await _collect(_client(fake, "anthropic", http, "sk-x"))
    assert info.value.retry_after == 12.0


async def test_rate_limit_without_header_has_no_retry_after(
    fake: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    fake.fail(429, error_type="rate_limit_exceeded")
    with pytest.raises(RateLimited) as info:
        await _collect(_client(fake, "openai-compatible", http, "sk-x"))
    assert info.value.retry_after is None


@pytest.mark.parametrize("mode", ["stall", "stall_mid"])
async def test_stall_times_out(fake: FakeLLMServer, mode: str) -> None:
    fake.fail(mode=mode)
    async with new_http_client(timeout=0.3) as http:
        with pytest.raises(Timeout) as info:
            await _collect(_client(fake, "anthropic", http, "sk-x"))
    assert info.value.code == "timeout"


async def test_connection_refused_is_network_error(http: httpx.AsyncClient) -> None:
    client = make_client("openai-compatible", "http://127.0.0.1:9/v1", Secret("sk-x"), http=http)
    with pytest.raises(NetworkError) as info:
        await _collect(client)
    assert info.value.code == "network"


async def test_closing_the_stream_cancels_the_request(
    fake: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    fake.gate = asyncio.Event()
    stream = _client(fake, "anthropic", http, "sk-x").stream(
        [ChatMessage("user", "a b c")], model="m", system="", max_tokens=5
    )
    first = await anext(stream)
    await fake.mid_stream.wait()
    await stream.aclose()
    fake.gate.set()  # the fake notices the closed connection on its next write
    for _ in range(100):
        if fake.disconnects:
            break
        await asyncio.sleep(0.01)
    assert (first, fake.disconnects) == (TextDelta("echo: "), 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_verify_key_lists_models(fake: FakeLLMServer, kind: str) -> None:
    models = await verify_key(kind, _url(fake, kind), Secret("sk-live"), timeout=5)
    assert (models, fake.requests[0].key, fake.requests[0].path) == (
        ["model-large", "model-small"],
        "sk-live",
        "/v1/models",
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_verify_key_refuses_a_dead_key(fake: FakeLLMServer, kind: str) -> None:
    fake.valid_keys = {"sk-good"}
    with pytest.raises(InvalidKey):
        await verify_key(kind, _url(fake, kind), Secret("sk-dead"), timeout=5)


async def test_key_checks_build_the_ca_context_once_and_off_the_loop(
    fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading the CA bundle takes 20-30 ms of CPU: on the bot's loop, per key, it stalled every
    # chat (twelve people saving keys at once held Discord's deferrals past their 3 s).
    built: list[str] = []
    real = httpx.create_ssl_context

    def counting(*args: object, **kwargs: object) -> object:
        built.append(threading.current_thread().name)
        return real()

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    tls_context.cache_clear()
    try:
        await asyncio.gather(
            *(verify_key("anthropic", fake.anthropic_url, Secret("sk-x"), timeout=5) for _ in "ab")
        )
        await verify_key("anthropic", fake.anthropic_url, Secret("sk-y"), timeout=5)
    finally:
        tls_context.cache_clear()
    assert len(fake.requests) == 3
    assert built and len(built) <= 2  # two first checks racing may each build one
    assert threading.main_thread().name not in built


async def test_verify_key_reports_provider_trouble_as_such(fake: FakeLLMServer) -> None:
    fake.fail(529, error_type="overloaded_error")
    with pytest.raises(Overloaded):
        await verify_key("anthropic", fake.anthropic_url, Secret("sk-x"), timeout=5)


async def test_unknown_kind_is_refused(http: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="unknown provider kind"):
        make_client("gopher", "http://127.0.0.1", Secret("k"), http=http)


async def test_canary_key_never_in_errors_or_logs(
    fake: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    fake.valid_keys = {"sk-other"}  # the fake's 401 body echoes the key's first characters
    texts: list[str] = []
    async with new_http_client(timeout=0.5) as http:
        for kind in KINDS:
            client = _client(fake, kind, http, CANARY)
            with pytest.raises(InvalidKey) as info:
                await _collect(client)
            texts += [str(info.value), repr(info.value)]
            with pytest.raises(InvalidKey) as info:
                await verify_key(kind, _url(fake, kind), Secret(CANARY), http=http)
            texts += [str(info.value), repr(info.value)]
        fake.valid_keys = None
        fake.fail(mode="stall")
        with pytest.raises(Timeout) as timeout:
            await _collect(_client(fake, "anthropic", http, CANARY))
        texts.append(str(timeout.value))
    assert fake.keys() == [CANARY, CANARY, CANARY]
    haystack = "\n".join(texts) + caplog.text
    assert (CANARY in haystack, CANARY[:20] in haystack) == (False, False)
