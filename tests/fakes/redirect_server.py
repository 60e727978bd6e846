"""An upstream that answers every request with a redirect, and the origin it points to.

``RedirectingUpstream`` answers any method on any path with ``status`` (307 by default) and a
``Location`` on ``target``, a second loopback server that records every request it receives
(method, path, headers). A client that never follows redirects leaves ``target.requests``
empty; one that follows them hands the other origin its headers, keys included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes import FAKE_SHUTDOWN


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingOrigin:
    """Records whatever reaches it and answers 200 ``{}``."""

    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append(
            Seen(request.method, request.path, dict(request.headers), await request.read())
        )
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class RedirectingUpstream:
    """Answers everything with a redirect to the same path on ``target``."""

    target: RecordingOrigin
    status: int = 307
    hits: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        return web.Response(
            status=self.status, headers={"Location": f"{self.target.url}{request.path_qs}"}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
