"""The proxy's upstream client: HTTP/1.1 keep-alive connections on asyncio protocols.

Why not aiohttp's client (which the proxy keeps for transcription's multipart form): per call
it builds a request object, a URL, header multidicts, tracing hooks and a stream reader with
its own flow control — measured with py-spy, the largest share of the proxy's CPU per request.
Here a call is one pre-built header block and the body in one write; the reply is parsed by
llhttp (``httptools``, the parser uvicorn serves with) and its body handed over as read.

What it does not do, on purpose: redirects (never followed: they would carry the platform's
key elsewhere), proxies from the environment, decompression (identity is asked for), HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

# Reading from the upstream pauses while this much is buffered and not yet relayed.
_HIGH_WATER: Final = 256 * 1024
# An idle connection is not reused after this long: servers close theirs (aiohttp's default).
KEEPALIVE_SECONDS: Final = 15.0


class UpstreamError(Exception):
    """The upstream could not be reached, or its reply broke off; the text names the kind only."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where calls to one upstream endpoint go, and their headers, as bytes built once."""

    host: str
    port: int
    tls: bool
    # Request line and headers up to Content-Length; it holds the platform's key: no repr.
    head: bytes = field(repr=False)

    @classmethod
    def of(cls, url: str, headers: Mapping[str, str]) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("upstream URL must be http(s)://host/...")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            shown = f"{shown}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {shown}"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0") or ":" in name:
                raise ValueError("upstream header names and values must be single lines")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        return cls(host, port, tls, head)


class Reply:
    """One upstream reply: its status and headers, then its body as it arrives.

    Leave it with ``release()`` (or ``async with``): the connection goes back to the pool when
    the reply was read to its end, and is closed otherwise. ``close()`` gives up on it at once,
    waking a pending read with ``UpstreamError``.
    """

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers  # lower-case names

    async def readany(self) -> bytes:
        """Whatever of the body has arrived (waiting for some); ``b""`` once it has all come."""
        return await self._conn.readany()

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._conn.readany():
            parts.append(chunk)
        return b"".join(parts)

    def at_eof(self) -> bool:
        """The whole body has arrived and been read: the next ``readany`` returns ``b""``."""
        return self._conn.complete and not self._conn.buffer

    def close(self) -> None:
        self._conn.abort(UpstreamError("closed"))

    def release(self) -> None:
        self._conn.finish()

    async def __aenter__(self) -> Reply:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Connection(asyncio.Protocol):
    """One connection to an upstream, carrying one call at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int, bool]) -> None:
        self._pool = pool
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.lost = False
        self.busy = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.buffer: list[bytes] = []
        self._buffered = 0
        self.headers_done = False
        self.complete = False
        self._keep_alive = False
        self.error: BaseException | None = None
        self.received = False  # any byte of this call's reply yet

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete:
            # Bytes no call asked for (or after the reply's end): never reuse this connection.
            self.abort(UpstreamError("unexpected data"))
            return
        self.received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort(UpstreamError("malformed reply"))

    def eof_received(self) -> bool:
        return False  # close the connection; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy and not self.complete and self.error is None:
            if self.headers_done and self._until_close():
                self.complete = True  # a body without length ends when the connection does
            else:
                self.error = UpstreamError(type(exc).__name__ if exc else "connection closed")
        self._wake()
        self._pool._lost(self)

    # --- llhttp callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # noqa: S101 - called by the parser
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.buffer.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None  # noqa: S101 - called by the parser
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # --- the call ------------------------------------------------------------------------

    def _until_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        await self._waiter

    async def call(self, target: Target, body: bytes) -> Reply:
        """Send the request; returns once the reply's headers are in."""
        self.send(target, body)
        return await self.reply()

    def send(self, target: Target, body: bytes) -> None:
        assert self._transport is not None  # noqa: S101 - connected by the pool
        self._reset()
        self.busy = True
        self._parser = httptools.HttpResponseParser(self)
        self._transport.write(b"%s%d\r\n\r\n%s" % (target.head, len(body), body))

    async def reply(self) -> Reply:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        return Reply(self)

    async def readany(self) -> bytes:
        while not self.buffer:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()
        buffer = self.buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        self.buffer = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def finish(self) -> None:
        """The caller is done with the reply: pool the connection if it can carry another."""
        if not self.busy:
            return
        reusable = (
            self.complete and self._keep_alive and not self.lost and self.error is None
        ) and not self.buffer
        self.busy = False
        self._parser = None
        if reusable:
            self.idle_since = self._loop.time()
            self._pool._release(self)
        else:
            self.abort(None)

    def abort(self, error: BaseException | None) -> None:
        if error is not None and self.error is None and not self.complete:
            self.error = error
        self._wake()
        if self._transport is not None and not self.lost:
            self.lost = True
            self._transport.abort()  # connection_lost follows, and tells the pool


class Call:
    """A POST under way (``UpstreamPool.start``): ``reply()`` once, or ``cancel()``."""

    __slots__ = ("_body", "_conn", "_pool", "_target", "_task")

    def __init__(
        self, pool: UpstreamPool, target: Target, body: bytes, conn: _Connection | None
    ) -> None:
        self._pool, self._target, self._body, self._conn = pool, target, body, conn
        self._task: asyncio.Task[Reply] | None = None

    async def reply(self) -> Reply:
        """The reply once its headers are in; ``UpstreamError`` if it cannot be had."""
        if self._task is not None:
            return await self._task
        return await self._pool._call(self._target, self._body, self._conn)

    def cancel(self) -> None:
        """Abandon the call: its connection is closed, whenever it is open (never reused)."""
        if self._conn is not None:
            self._conn.abort(None)
        if self._task is not None:
            _drop(self._task)

    def run_ahead(self) -> None:
        """Without a kept connection, open one now, in a task, rather than at ``reply()``."""
        if self._conn is None and self._task is None:
            self._task = asyncio.ensure_future(self._pool._call(self._target, self._body, None))


def _drop(task: asyncio.Task[Reply]) -> None:
    def close(t: asyncio.Task[Reply]) -> None:
        if not t.cancelled() and t.exception() is None:
            t.result().close()

    task.add_done_callback(close)
    task.cancel()


class UpstreamPool:
    """Keep-alive connections to the upstreams, at most ``limit`` open at once.

    ``ssl_context``: for ``https`` targets; the system's trust store by default (it honours
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, as Python's ``ssl`` does).
    """

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._keepalive = keepalive_seconds
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        self._closed = False

    async def post(self, target: Target, body: bytes) -> Reply:
        """POST ``body`` to ``target``; the reply once its headers are in.

        Raises ``UpstreamError`` when the upstream cannot be reached or drops the call.
        """
        return await self.start(target, body).reply()

    def start(self, target: Target, body: bytes) -> Call:
        """Start a POST: on a kept connection its request goes out before this returns."""
        conn = self._take_idle((target.host, target.port, target.tls))
        if conn is not None:
            conn.send(target, body)
        return Call(self, target, body, conn)

    async def _call(self, target: Target, body: bytes, sent: _Connection | None) -> Reply:
        if sent is not None:
            try:
                return await sent.reply()
            except UpstreamError:
                sent.abort(None)
                if sent.received:
                    raise
            except BaseException:
                sent.abort(None)
                raise
            # A kept connection the upstream closed as the call went out (its idle timeout):
            # it read nothing of it, so the call goes again, once, on a new connection.
        conn = await self._acquire(target)
        try:
            return await conn.call(target, body)
        except BaseException:
            conn.abort(None)
            raise

    def _take_idle(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self._keepalive:
                return conn
            self._forget(conn)
        return None

    async def _acquire(self, target: Target) -> _Connection:
        """A new connection to ``target``, or a kept one freed while waiting at the limit."""
        key = (target.host, target.port, target.tls)
        loop = asyncio.get_running_loop()
        first = True
        while True:
            if self._closed:
                raise UpstreamError("pool closed")
            if not first and (conn := self._take_idle(key)) is not None:
                return conn
            first = False
            if not self._limit or self._open < self._limit:
                break
            if self._close_an_idle_one():
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(target, key)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, target: Target, key: tuple[str, int, bool]) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamError("connect timeout") from None
        except OSError as exc:  # refused, unreachable, name unknown, TLS (SSLError)
            raise UpstreamError(type(exc).__name__) from None
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort(None)
            return
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        """Close ``conn`` (taken off the idle list), counting it closed at once."""
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
        conn.abort(None)

    def _close_an_idle_one(self) -> bool:
        """At the limit: make room by closing an idle connection to another upstream."""
        for idle in self._idle.values():
            if idle:
                self._forget(idle.pop(0))
                return True
        return False

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection, idle or carrying a call."""
        self._closed = True
        for conn in list(self._all):
            conn.abort(UpstreamError("pool closed"))
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        # Let the transports' connection_lost run before the loop may close.
        await asyncio.sleep(0)
