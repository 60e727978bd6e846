"""Downloading a file a person attached, by URL, within a size limit (Slack, Discord).

The host must be one the platform serves files from (or the configured API's, so tests can
point at a loopback fake): a token is only ever sent where the platform expects it, and a
redirect is not followed (it could lead the token elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import aiohttp

from core.ports import FileTooLarge, FileUnavailable

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


async def fetch(
    url: str,
    limit: int,
    *,
    hosts: Iterable[str],
    headers: Mapping[str, str] | None = None,
    seconds: float = 60.0,
) -> bytes:
    """At most ``limit`` bytes of ``url``; ``FileTooLarge`` past it, ``FileUnavailable`` else."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.hostname.lower() not in {h.lower() for h in hosts}:
        log.warning("file URL on an unexpected host refused")
        raise FileUnavailable("unexpected host")
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost"):
        raise FileUnavailable("not https")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
            session.get(url, headers=dict(headers or {}), allow_redirects=False) as response,
        ):
            if response.status != 200:
                log.warning("file download: HTTP %s", response.status)
                raise FileUnavailable(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise FileTooLarge(response.content_length)
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise FileTooLarge(None)
            return bytes(data)
    except aiohttp.ClientError as exc:
        log.warning("file download failed: %s", type(exc).__name__)
        raise FileUnavailable(type(exc).__name__) from None
    except TimeoutError:
        raise FileUnavailable("timeout") from None
