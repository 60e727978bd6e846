"""The readiness checks of a running ``byokbot``: what ``/readyz`` asks of each process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.db.migrate import safe_url
from core.db.status import migration_problem, ping
from core.health import Readiness

if TYPE_CHECKING:
    from bot.app import App


def readiness_checks(app: App) -> list[Readiness]:
    """Database, migrations, adapters, scheduler (and the in-process proxy when enabled)."""

    async def database() -> str | None:
        try:
            await ping(app.db)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"{safe_url(app.db.url)} unreachable ({type(exc).__name__})"
        return None

    async def migrations() -> str | None:
        return await migration_problem(app.db)

    async def adapters() -> str | None:
        if not app.serving:
            return "not started" if not app.adapters else "an adapter failed"
        down = [
            a.platform.value
            for a in app.adapters
            # Optional: an adapter that can tell whether its connection is up says so.
            if getattr(a, "is_connected", None) is not None and not a.is_connected()  # type: ignore[attr-defined]
        ]
        return f"disconnected: {', '.join(down)}" if down else None

    async def scheduler() -> str | None:
        sched = getattr(app, "scheduler", None)
        return None if sched is not None and sched.running else "not running"

    checks = [
        Readiness("database", database),
        Readiness("migrations", migrations),
        Readiness("adapters", adapters),
        Readiness("scheduler", scheduler),
    ]
    if app.config.proxy.enabled:

        async def proxy() -> str | None:
            return None if app.proxy_server is not None else "not listening"

        checks.append(Readiness("proxy", proxy))
    return checks
