"""A small web site on loopback for ``web_fetch`` tests, plus a SearXNG-style search endpoint.

It binds ``127.0.0.2`` by default, so a test can allow exactly that address
(``[tools.web_fetch] allow_networks = ["127.0.0.2/32"]``) while redirects to ``127.0.0.1``
and to the metadata address ``169.254.169.254`` must still be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import FAKE_SHUTDOWN

ARTICLE = """<!doctype html><html><head><title>Heliotrope facts</title>
<script>var tracking = "do not show this";</script><style>body{color:red}</style></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article><h1>Heliotrope facts</h1>
<p>The heliotrope is a flowering plant whose blossoms turn toward the sun. Its scent is often
compared to cherry pie and vanilla, which is why perfumers have prized it for centuries.</p>
<p>The secret word of this page is marzipan-lighthouse. Gardeners grow it in pots because it
does not survive frost.</p></article>
<footer>Copyright nobody</footer></body></html>"""


@dataclass
class FakeWebSite:
    """Routes: ``/page`` (an article), ``/plain``, ``/big``, ``/slow``, ``/redirect?to=URL``,
    ``/search?q=..&format=json`` (SearXNG JSON), ``/res/v1/web/search`` (Brave, ``brave_key``). Every request is recorded as (path, headers)."""

    host: str = "127.0.0.2"
    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    search_results: list[dict[str, Any]] = field(default_factory=list)
    brave_key: str = ""
    # Extra text in /page's article (a test puts a canary there: it must reach the model only).
    page_extra: str = ""
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeWebSite:
        app = web.Application()
        app.router.add_get("/page", self._page)
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/big", self._big)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/search", self._search)
        app.router.add_get("/res/v1/web/search", self._brave)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._closing.set()  # a /slow still held answers now, not 30 s into the teardown
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.path_qs, dict(request.headers)))

    async def _page(self, request: web.Request) -> web.Response:
        self._record(request)
        extra = f"<p>{self.page_extra}</p></article>" if self.page_extra else "</article>"
        return web.Response(text=ARTICLE.replace("</article>", extra), content_type="text/html")

    async def _plain(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(text="just plain text", content_type="text/plain")

    async def _big(self, request: web.Request) -> web.Response:
        self._record(request)
        body = "<html><body>" + "<p>word word word word</p>" * 200_000 + "</body></html>"
        return web.Response(text=body, content_type="text/html")

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), 30)
        return web.Response(text="late", content_type="text/plain")

    async def _redirect(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPFound(request.query["to"])

    async def _brave(self, request: web.Request) -> web.Response:
        """Brave's web search API: the key in ``X-Subscription-Token``, results under ``web``."""
        self._record(request)
        if request.headers.get("X-Subscription-Token") != self.brave_key:
            return web.json_response({"error": "bad token"}, status=401)
        results = [
            {"title": r["title"], "url": r["url"], "description": r.get("content", "")}
            for r in self.search_results
        ]
        return web.json_response({"web": {"results": results}})

    async def _search(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response(
            {"query": request.query.get("q", ""), "results": self.search_results}
        )
