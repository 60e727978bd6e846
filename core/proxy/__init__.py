"""The managed plan's metering proxy: scoped tokens in, platform keys out, every token counted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.proxy.config import (
    ModelRoute,
    ProxySettings,
    UpstreamSettings,
    load_upstream_keys,
    parse_proxy,
)
from core.proxy.wire import MODEL_NOT_IN_PLAN, USAGE_CAP_REACHED

if TYPE_CHECKING:
    from core.proxy.server import ProxyServer


def __getattr__(name: str) -> Any:
    # The server (aiohttp, the budget, the ORM) loads on first use: reading the [proxy] table
    # at every command's start must not pay for it.
    if name == "ProxyServer":
        from core.proxy.server import ProxyServer

        return ProxyServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODEL_NOT_IN_PLAN",
    "USAGE_CAP_REACHED",
    "ModelRoute",
    "ProxyServer",
    "ProxySettings",
    "UpstreamSettings",
    "load_upstream_keys",
    "parse_proxy",
]
