"""Sign a person up for a managed plan and issue their agent's proxy token, as the bot does.

Run as its own process by the system tests (``python managed_tenant.py <plan> <user_id>``,
``BYOKBOT_CONFIG`` set); prints ``<tenant id> <token>``. It goes through the program's own
composition (``bot.app.App``), the path a sign-up in chat takes, minus the chat.
"""

from __future__ import annotations

import asyncio
import sys

from bot.app import App
from core.chat import Platform, UserRef
from core.config import load_config


async def main(plan: str, user_id: str) -> None:
    app = App(load_config(None), platforms=False)
    await app.open()
    try:
        tenants = app.services.tenants
        tenant = await tenants.sign_up(
            UserRef(Platform.TELEGRAM, user_id, "Ada"), plan, dm_chat_id=None
        )
        await tenants.activate(tenant.id, actor="system")
        token = await app.proxy_tokens.issue(tenant.id)
        print(tenant.id, token.reveal(), flush=True)
    finally:
        await app.db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
