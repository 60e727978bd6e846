"""``web_fetch``: the readable text of a web page, with size, time and redirect bounds.

SSRF: every hop's host is resolved here, every address it resolves to must be public
(``ipaddress``'s ``is_global``: no private, loopback, link-local — so no 169.254.169.254 —,
shared, unique-local IPv6 or reserved ranges; an IPv4-mapped IPv6 address is judged as its
IPv4 address), and the request then goes to the checked address itself, with the name only in
the ``Host`` header and TLS's SNI (so the certificate is still checked against the name). No
second lookup happens between check and connect, so DNS rebinding cannot slip past.
Redirects are followed by hand, each one checked the same way. ``allow_networks`` (config,
empty in production) lets tests reach a loopback site.

The page is turned into text by trafilatura (main-content extraction, maintained, Apache-2.0),
imported at the first fetch: it costs ~25 MiB and ~0.2 s, which an idle agent must not pay.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any, Final

import httpx

from core.llm import ToolSpec
from core.runtime import protocol
from core.runtime.tools import ToolContext, ToolFailed, string_arg

USER_AGENT: Final = "byokbot-agent/1 (+web_fetch)"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_TEXT_TYPES: Final = ("text/plain", "text/markdown", "application/json", "text/csv")


class Refused(ToolFailed):
    """The URL may not be fetched (scheme, credentials, or a non-public address)."""


@functools.cache
def _networks(
    allowed: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def is_public(ip: IPAddress, allowed: tuple[str, ...] = ()) -> bool:
    """Whether ``ip`` may be fetched: a global unicast address, or inside ``allowed``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _networks(allowed)):
        return True
    return ip.is_global and not ip.is_multicast


async def resolve_checked(host: str, port: int, allowed: tuple[str, ...] = ()) -> IPAddress:
    """The address to connect to for ``host``; ``Refused`` if any address it has is not public.

    Refusing when *any* address is private (not only the first) keeps a name that resolves to
    both a public and a private address from reaching the private one on a retry.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise ToolFailed(f"the host {host} could not be found") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise ToolFailed(f"the host {host} could not be found")
    for ip in addresses:
        if not is_public(ip, allowed):
            raise Refused(f"{host} is a private or internal address; it cannot be fetched")
    return addresses[0]


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise Refused("only http:// and https:// pages can be fetched")
    if not url.host:
        raise Refused("the URL has no host")
    if url.userinfo:
        raise Refused("URLs with a user name or password cannot be fetched")


def _parse(raw: str) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL:
        raise ToolFailed("that is not a valid URL") from None
    if not url.scheme and not url.host:
        url = httpx.URL("https://" + raw)  # "example.com/page" as people write it
    _check_url(url)
    return url


def _client(ctx: ToolContext) -> httpx.AsyncClient:
    client = ctx.cache.get("web_fetch")
    if client is None:
        from core.runtime.worker import ssl_context  # shared with the template

        client = httpx.AsyncClient(
            trust_env=False,
            verify=ssl_context(),
            follow_redirects=False,
            timeout=httpx.Timeout(ctx.config.fetch_timeout),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=0),
        )
        ctx.cache["web_fetch"] = client
    assert isinstance(client, httpx.AsyncClient)  # noqa: S101 - only this module stores it
    return client


async def fetch(url: str, ctx: ToolContext) -> tuple[str, str, str, bool]:
    """``(final URL, content type, text, truncated)`` after checked redirects."""
    cfg = ctx.config
    current = _parse(url)
    http = _client(ctx)
    async with asyncio.timeout(cfg.fetch_timeout):
        for _hop in range(cfg.fetch_max_redirects + 1):
            port = current.port or (443 if current.scheme == "https" else 80)
            ip = await resolve_checked(current.host, port, cfg.allow_networks)
            host_header = current.netloc.decode("ascii")
            extensions = {"sni_hostname": current.host} if current.scheme == "https" else {}
            request = http.build_request(
                "GET",
                current.copy_with(host=str(ip)),
                headers={
                    "Host": host_header,
                    "User-Agent": USER_AGENT,
                    "Accept": "text/html,text/plain;q=0.9,*/*;q=0.5",
                },
                extensions=extensions,
            )
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise ToolFailed(
                    f"{current.host} could not be reached ({type(exc).__name__})"
                ) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        raise ToolFailed(f"HTTP {response.status_code} without a Location")
                    current = current.join(location)
                    _check_url(current)
                    continue
                if response.status_code >= 400:
                    raise ToolFailed(f"the page answered HTTP {response.status_code}")
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                charset = response.charset_encoding or ""
                body = bytearray()
                truncated = False
                try:
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > cfg.fetch_max_bytes:
                            del body[cfg.fetch_max_bytes :]
                            truncated = True
                            break
                except httpx.HTTPError as exc:
                    raise ToolFailed(f"reading the page failed ({type(exc).__name__})") from None
                return str(current), ctype, _decode(bytes(body), charset), truncated
            finally:
                await response.aclose()
    raise ToolFailed(f"more than {cfg.fetch_max_redirects} redirects")


def html_to_text(html: str, url: str) -> str:
    """The page's main text (trafilatura), or all its text when it finds no main content."""
    import trafilatura  # lazily: see the module docstring

    text = trafilatura.extract(html, url=url, include_comments=False, favor_recall=True)
    if not text:
        text = trafilatura.html2txt(html)
    return str(text or "").strip()


def _decode(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


class WebFetch:
    name: Final = "web_fetch"
    spec: Final = ToolSpec(
        "web_fetch",
        "Fetch a web page (http or https URL) and return its readable text. Use it when the "
        "person gives a link or the answer needs a specific page.",
        {
            "type": "object",
            "properties": {"url": {"type": "string", "description": "The page's full URL."}},
            "required": ["url"],
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        raw = args.get("url")
        if not isinstance(raw, str):
            return ""
        try:
            url = httpx.URL(raw if "://" in raw else "https://" + raw)
        except httpx.InvalidURL:
            return ""
        return url.host[:80]

    def available(self, config: protocol.ToolConfig) -> bool:
        return True

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        url = string_arg(args, "url", limit=4000)
        try:
            final, ctype, body, truncated = await fetch(url, ctx)
        except TimeoutError:
            raise ToolFailed(f"the page took longer than {ctx.config.fetch_timeout:g} s") from None
        if ctype in ("text/html", "application/xhtml+xml", ""):
            loop = asyncio.get_running_loop()
            # Parsing a big page takes a while: off the loop, so other chats keep streaming.
            text = await loop.run_in_executor(None, html_to_text, body, final)
        elif ctype.startswith("text/") or ctype in _TEXT_TYPES:
            text = body
        else:
            raise ToolFailed(f"the page is {ctype}, not text or HTML")
        limit = ctx.config.fetch_max_chars
        if len(text) > limit:
            text, truncated = text[:limit], True
        note = "\n[truncated]" if truncated else ""
        return f"URL: {final}\n\n{text or '(the page has no readable text)'}{note}"


WEB_FETCH = WebFetch()
