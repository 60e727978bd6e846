"""The proxy's upstream client against real servers on loopback, on asyncio's loop and uvloop.

An aiohttp server for well-formed replies (kept connections, chunked streams, limits, TLS); a
raw asyncio server for what a broken upstream does (a reply cut off, a kept connection closed
as a call goes out, a body without length, bytes that are not HTTP).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from core.proxy.upstream import Target, UpstreamError, UpstreamPool
from tests.certs import self_signed

KEY = "sk-ant-api03-" + "C4nary" * 10 + "AA"


class Upstream:
    """An aiohttp upstream that records the connections its requests came on."""

    def __init__(self) -> None:
        self.peers: list[object] = []
        self.active = 0
        self.most_active = 0
        self.gate = asyncio.Event()
        self.gate.set()
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        self.app = app
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else 0)
        assert request.headers["x-api-key"] == KEY
        body = await request.read()
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        kind = request.query.get("kind", "stream")
        if kind == "json":
            return web.json_response({"echo": len(body)})
        if kind == "close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if kind == "big":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 16384)
            await response.write_eof()
            return response
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: {i}\n\n".encode())
        await response.write_eof()
        return response

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def target(self, kind: str = "stream", scheme: str = "http") -> Target:
        return Target.of(
            f"{scheme}://127.0.0.1:{self.port}/v1/messages?kind={kind}",
            {"x-api-key": KEY, "content-type": "application/json"},
        )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    up.gate.set()
    await up.runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(limit=100, connect_timeout=5)
    yield p
    await p.close()


async def test_calls_share_a_kept_connection_and_stream_their_body(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    for _ in range(3):
        async with await pool.post(upstream.target(), b'{"a": 1}') as reply:
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/event-stream"
            assert await reply.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert reply.at_eof()
    async with await pool.post(upstream.target("json"), b"12345") as reply:
        assert (reply.status, await reply.read()) == (200, b'{"echo": 5}')
    assert len(upstream.peers) == 4
    assert len(set(upstream.peers)) == 1


async def test_a_reply_left_unread_or_marked_close_is_not_reused(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    reply = await pool.post(upstream.target(), b"{}")
    reply.release()  # before its body was read: the connection cannot carry another call
    async with await pool.post(upstream.target("close"), b"{}") as reply:
        assert await reply.read() == b"bye"
    async with await pool.post(upstream.target(), b"{}") as reply:
        await reply.read()
    assert len(set(upstream.peers)) == 3


async def test_a_large_body_arrives_whole_though_read_slowly(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    async with await pool.post(upstream.target("big"), b"{}") as reply:
        got = 0
        while chunk := await reply.readany():
            got += len(chunk)
            await asyncio.sleep(0.01)  # the upstream is paused past the high-water mark
    assert got == 64 * 16384


async def test_the_connection_limit_holds_and_every_waiting_call_gets_its_turn(
    upstream: Upstream,
) -> None:
    pool = UpstreamPool(limit=2, connect_timeout=5)
    upstream.gate.clear()

    async def call() -> bytes:
        async with await pool.post(upstream.target("json"), b"{}") as reply:
            return await reply.read()

    try:
        calls = [asyncio.create_task(call()) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert upstream.active == 2
        upstream.gate.set()
        assert await asyncio.gather(*calls) == [b'{"echo": 2}'] * 6
        assert upstream.most_active == 2
        assert len(set(upstream.peers)) == 2
    finally:
        await pool.close()


async def test_a_call_cancelled_while_waiting_frees_its_place(upstream: Upstream) -> None:
    pool = UpstreamPool(limit=1, connect_timeout=5)
    upstream.gate.clear()
    try:
        first = asyncio.create_task(pool.post(upstream.target("json"), b"{}"))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(pool.post(upstream.target("json"), b"{}"))
        await asyncio.sleep(0.05)
        first.cancel()  # mid-call: its connection is closed, not reused
        waiting.cancel()
        await asyncio.gather(first, waiting, return_exceptions=True)
        upstream.gate.set()
        async with await asyncio.wait_for(pool.post(upstream.target("json"), b"{}"), 5) as r:
            assert await r.read() == b'{"echo": 2}'
    finally:
        await pool.close()


async def test_an_unreachable_upstream_is_an_upstream_error(pool: UpstreamPool) -> None:
    with socket_closed() as port, pytest.raises(UpstreamError) as caught:
        await pool.post(Target.of(f"http://127.0.0.1:{port}/v1/messages", {}), b"{}")
    assert "ConnectionRefusedError" in str(caught.value)


async def test_close_wakes_a_read_waiting_for_the_body(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    done = asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: 0\n\n")
        await done.wait()
        return response

    up = Upstream()
    up.app.router.add_post("/hold", hold)
    await up.start()
    try:
        reply = await pool.post(Target.of(f"http://127.0.0.1:{up.port}/hold", {}), b"{}")
        assert await reply.readany() == b"data: 0\n\n"
        reading = asyncio.create_task(reply.readany())
        await asyncio.sleep(0.05)
        reply.close()  # the proxy's idle watchdog does this
        with pytest.raises(UpstreamError):
            await asyncio.wait_for(reading, 2)
        reply.release()
    finally:
        done.set()
        await up.runner.cleanup()


# --- a raw upstream, for what a broken one does ----------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Raw:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        finally:
            writer.close()

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def target(self) -> Target:
        return Target.of(f"http://127.0.0.1:{self.port}/v1/messages", {"x-api-key": KEY})


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_the_request_goes_out_as_one_head_with_the_body(pool: UpstreamPool) -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        seen.append(await read_request(r))
        w.write(OK)
        await w.drain()

    async with Raw(handler) as raw, await pool.post(raw.target(), b'{"x":1}') as reply:
        assert await reply.read() == b"ok"
    assert seen == [
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-api-key: %s\r\n"
        b'Content-Length: 7\r\n\r\n{"x":1}' % (raw.port, KEY.encode())
    ]


async def test_a_kept_connection_closed_as_the_call_went_out_is_retried_on_a_new_one(
    pool: UpstreamPool,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(OK)
        await w.drain()
        if n == 1:
            await r.read(1)  # the second call arrives: closed unanswered (an idle timeout)
            return
        await read_request(r)
        w.write(OK)
        await w.drain()

    async with Raw(handler) as raw:
        for _ in range(2):
            async with await pool.post(raw.target(), b"{}") as reply:
                assert await reply.read() == b"ok"
    assert raw.connections == 2


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry(
    pool: UpstreamPool,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)

    async with Raw(handler) as raw:
        with pytest.raises(UpstreamError):
            await pool.post(raw.target(), b"{}")
    assert raw.connections == 1


async def test_a_body_cut_off_mid_chunk_is_an_error(pool: UpstreamPool) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
        w.write(b"20\r\ndata: 1")
        await w.drain()

    async with Raw(handler) as raw:
        reply = await pool.post(raw.target(), b"{}")
        got = b""

        async def read_all() -> None:
            nonlocal got
            while chunk := await reply.readany():
                got += chunk

        with pytest.raises(UpstreamError):
            await read_all()
        assert got.startswith(b"data: 0\n\n")
        reply.release()


async def test_a_body_without_length_ends_with_the_connection(pool: UpstreamPool) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await w.drain()

    async with Raw(handler) as raw, await pool.post(raw.target(), b"{}") as reply:
        assert await reply.read() == b"all of it"


async def test_bytes_that_are_not_http_are_an_error(pool: UpstreamPool) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async with Raw(handler) as raw:
        with pytest.raises(UpstreamError, match="malformed"):
            await pool.post(raw.target(), b"{}")


# --- TLS ------------------------------------------------------------------------------------


async def test_https_upstreams_are_verified(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    up = Upstream()
    await up.start(server_tls)
    trusting = UpstreamPool(
        limit=10, connect_timeout=5, ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    default = UpstreamPool(limit=10, connect_timeout=5)
    try:
        for _ in range(2):
            async with await trusting.post(up.target(scheme="https"), b"{}") as reply:
                assert await reply.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(set(up.peers)) == 1
        with pytest.raises(UpstreamError, match="SSLCertVerificationError"):
            await default.post(up.target(scheme="https"), b"{}")
    finally:
        await trusting.close()
        await default.close()
        await up.runner.cleanup()


# --- targets --------------------------------------------------------------------------------


def test_a_target_keeps_its_key_out_of_its_repr_and_refuses_split_headers() -> None:
    target = Target.of("https://api.anthropic.com/v1/messages", {"x-api-key": KEY})
    assert KEY not in repr(target)
    assert target.head.startswith(b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n")
    assert (target.host, target.port, target.tls) == ("api.anthropic.com", 443, True)
    for bad in ({"x-api-key": KEY + "\r\nX-Evil: 1"}, {"x\nname": "v"}):
        with pytest.raises(ValueError, match="single lines"):
            Target.of("https://api.anthropic.com/v1/messages", bad)
    with pytest.raises(ValueError, match="http"):
        Target.of("ftp://example.com/", {})
    assert Target.of("http://[::1]:8080/x", {}).head.startswith(
        b"POST /x HTTP/1.1\r\nHost: [::1]:8080\r\n"
    )


class socket_closed:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_call_started_on_a_kept_connection_is_sent_at_once_and_cancel_closes_it(
    pool: UpstreamPool,
) -> None:
    arrived = asyncio.Event()
    closed = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(OK)
        await w.drain()
        if n == 1:
            await read_request(r)
            arrived.set()
            if not await r.read(1):
                closed.set()
            return
        await read_request(r)
        w.write(OK)
        await w.drain()

    async with Raw(handler) as raw:
        async with await pool.post(raw.target(), b"{}") as reply:
            assert await reply.read() == b"ok"
        call = pool.start(raw.target(), b"{}")  # the kept connection: written before this returns
        await asyncio.wait_for(arrived.wait(), 2)
        call.cancel()  # e.g. its reservation was refused
        await asyncio.wait_for(closed.wait(), 2)
        async with await pool.post(raw.target(), b"{}") as reply:  # on a new connection
            assert await reply.read() == b"ok"
    assert raw.connections == 2


async def test_a_call_run_ahead_without_a_kept_connection_connects_in_the_background(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    upstream.gate.clear()
    call = pool.start(upstream.target("json"), b"{}")
    call.run_ahead()
    for _ in range(100):
        if upstream.active:
            break
        await asyncio.sleep(0.01)
    assert upstream.active == 1  # it went out without anyone awaiting its reply
    upstream.gate.set()
    async with await call.reply() as reply:
        assert await reply.read() == b'{"echo": 2}'
    dropped = pool.start(upstream.target("json"), b"{}")
    dropped.run_ahead()
    dropped.cancel()
    await asyncio.sleep(0.1)
    async with await pool.post(upstream.target("json"), b"{}") as reply:
        assert reply.status == 200
