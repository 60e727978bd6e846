"""Usage alerts of the managed plan, delivered as a DM to every reachable identity of a tenant."""

from __future__ import annotations

import logging

from bot import texts
from bot.flows.base import Services
from core.budget import Caps, Spend
from core.chat import ChatRef, Platform, Reply

log = logging.getLogger("byokbot.alerts")


def cap_text(spent: Spend, cap: Caps) -> str:
    """``1,234 of 5,000,000 tokens, $0.12 of $30.00`` (only the capped dimensions)."""
    parts = []
    if cap.tokens is not None:
        parts.append(f"{spent.tokens:,} of {cap.tokens:,} tokens")
    if cap.usd is not None:
        parts.append(f"${spent.usd:,.2f} of ${cap.usd:,.2f}")
    return ", ".join(parts)


class DirectMessageAlerts:
    """The ``AlertSink`` of the budget: tells the tenant at 50%, 80% and 100% of the cap."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def alert(self, tenant_id: str, threshold_pct: int, spent: Spend, cap: Caps) -> None:
        template = texts.USAGE_ALERT_FULL if threshold_pct >= 100 else texts.USAGE_ALERT
        text = template.format(
            pct=threshold_pct, used=cap_text(spent, cap), resets=spent.resets_on.isoformat()
        )
        for tid, platform, chat_id in await self._services.tenants.dm_targets():
            if tid != tenant_id:
                continue
            messenger = self._services.messengers.get(Platform(platform))
            if messenger is None:
                continue
            try:
                await messenger.send(ChatRef(Platform(platform), chat_id, True), Reply(text))
            except Exception:
                log.warning("usage alert not delivered on %s", platform, exc_info=True)
