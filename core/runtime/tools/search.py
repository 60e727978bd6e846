"""``web_search``: a query through the operator's search backend (SearXNG or Brave).

The backend's URL comes from the operator's config (``[tools.web_search]``) and its key, if
any, from the environment the control plane read it from; both reach the agent in
``configure``. Without a backend the tool is not offered at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import httpx

from core.llm import ToolSpec
from core.runtime import protocol
from core.runtime.tools import ToolContext, ToolFailed, string_arg


def _results(backend: str, data: Any) -> list[tuple[str, str, str]]:
    """``(title, url, snippet)`` from either backend's JSON."""
    if not isinstance(data, dict):
        return []
    if backend == "brave":
        web = data.get("web")
        raw = web.get("results") if isinstance(web, dict) else None
        snippet = "description"
    else:
        raw = data.get("results")
        snippet = "content"
    out = []
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            out.append(
                (str(item.get("title") or ""), item["url"], str(item.get(snippet) or "")[:400])
            )
    return out


class WebSearch:
    name: Final = "web_search"
    spec: Final = ToolSpec(
        "web_search",
        "Search the web and return the top results (title, URL, snippet). Use it for current "
        "events or facts you are unsure of; then web_fetch a result to read it.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        query = args.get("query")
        return query.strip()[:60] if isinstance(query, str) else ""

    def available(self, config: protocol.ToolConfig) -> bool:
        return bool(config.search_backend and config.search_url)

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        query = string_arg(args, "query", limit=400)
        cfg = ctx.config
        n = cfg.search_max_results
        headers = {"Accept": "application/json"}
        if cfg.search_backend == "brave":
            url = cfg.search_url
            params: dict[str, str | int] = {"q": query, "count": n}
            if cfg.search_key is not None:
                headers["X-Subscription-Token"] = cfg.search_key.reveal()
        else:
            url = cfg.search_url.rstrip("/") + "/search"
            params = {"q": query, "format": "json"}
            if cfg.search_key is not None:
                headers["Authorization"] = f"Bearer {cfg.search_key.reveal()}"
        try:
            response = await ctx.http.get(
                url, params=params, headers=headers, timeout=cfg.fetch_timeout
            )
        except httpx.HTTPError as exc:
            # Only the class name: the exception's text can carry the URL.
            raise ToolFailed(f"the search service is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ToolFailed(f"the search service answered HTTP {response.status_code}")
        try:
            found = _results(cfg.search_backend, response.json())[:n]
        except ValueError:
            raise ToolFailed("the search service's answer was not JSON") from None
        if not found:
            return f"No results for {query!r}."
        return "\n\n".join(
            f"{i}. {title}\n{link}\n{snippet}".rstrip()
            for i, (title, link, snippet) in enumerate(found, 1)
        )


WEB_SEARCH = WebSearch()
