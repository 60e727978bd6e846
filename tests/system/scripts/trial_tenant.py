"""Sign a person up for a plan's free trial and issue their agent's proxy token, as the bot does.

Run as its own process by the system tests (``python trial_tenant.py <plan> <user_id>``,
``BYOKBOT_CONFIG`` set); prints ``<tenant id> <token>``. Like ``managed_tenant.py``, it goes
through the program's own composition (``bot.app.App``): the sign-up, the trial a person gets
on picking the plan in chat, and the token the tenant's agent is started with.
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
        user = UserRef(Platform.TELEGRAM, user_id, "Ada")
        tenant = await tenants.sign_up(user, plan, dm_chat_id=None)
        if not await app.billing.start_trial(tenant.id, plan, [f"telegram:{user_id}"]):
            raise SystemExit("no trial was started")
        token = await app.proxy_tokens.issue(tenant.id)
        print(tenant.id, token.reveal(), flush=True)
    finally:
        await app.db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
