"""The health listener: ``/healthz``, ``/readyz`` and ``/metrics`` on a small HTTP server.

``/healthz`` answers 200 while the event loop runs (a liveness probe: restart me if not).
``/readyz`` runs every readiness check and answers 200 ``ready`` or 503 naming each failing
check, one per line (a readiness probe: send me no traffic while not). Checks are per process,
so each replica behind a load balancer answers for itself. ``/metrics`` is Prometheus' text
format from ``core.metrics.REGISTRY``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.metrics import REGISTRY

log = logging.getLogger("byokbot.health")

# A check answers None when it passes, else one line saying what is wrong (no secret in it).
Check = Callable[[], Awaitable[str | None]]
CHECK_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Readiness:
    """One named readiness check."""

    name: str
    check: Check


async def run_checks(checks: Sequence[Readiness]) -> list[tuple[str, str | None]]:
    """Every check, concurrently, each bounded by ``CHECK_TIMEOUT``; ``(name, problem)``."""

    async def one(r: Readiness) -> tuple[str, str | None]:
        try:
            return r.name, await asyncio.wait_for(r.check(), CHECK_TIMEOUT)
        except TimeoutError:
            return r.name, f"no answer within {CHECK_TIMEOUT:g} s"
        except Exception as exc:  # noqa: BLE001 - a failing check is an answer, not a crash
            return r.name, type(exc).__name__

    return list(await asyncio.gather(*(one(r) for r in checks)))


class HealthServer:
    """Serves the three endpoints on ``host:port`` until ``stop``."""

    def __init__(self, host: str, port: int, checks: Sequence[Readiness]) -> None:
        self.host, self.port = host, port
        self.checks = list(checks)
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._app = app

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        results = await run_checks(self.checks)
        failing = [(n, p) for n, p in results if p is not None]
        if failing:
            body = "".join(f"{name}: {problem}\n" for name, problem in failing)
            return web.Response(status=503, text=body)
        return web.Response(text="ready\n" + "".join(f"{n}: ok\n" for n, _ in results))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
