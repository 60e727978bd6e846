"""The managed plan's metering proxy: scoped tokens in, platform keys out, every token counted."""

from __future__ import annotations

from core.proxy.config import (
    ModelRoute,
    ProxySettings,
    UpstreamSettings,
    load_upstream_keys,
    parse_proxy,
)
from core.proxy.server import ProxyServer
from core.proxy.wire import MODEL_NOT_IN_PLAN, USAGE_CAP_REACHED

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
