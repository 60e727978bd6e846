"""Core dispatch overhead: a platform event in -> the request to the tenant's agent out.

Drives ``Router.dispatch`` with ordinary chat messages from many signed-up tenants at once,
on SQLite, with an agent port that only timestamps the moment the request reaches it (no LLM
time, no agent process) and a messenger that does nothing. Baseline in the same run: the same
agent port called straight from a bare handler (dict lookup + call), so the ratio shows what
the router, its lock, rate limit, leak guard and tenant lookup add. Targets (PERFORMANCE.md):
p50 <= 0.2 ms, p99 <= 2 ms at 200 concurrent chats, >= 2,000 updates/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _common import machine, median, pct, table

from bot.app import App
from core.chat import ChatRef, Event, EventKind, MessageRef, Platform, Reply, SecretRequest, UserRef
from core.config import parse_config


class StampingAgents:
    """The agent port: records when each request arrives and answers with one chunk."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def reply(
        self, tenant_id: str, conversation: str, text: str, **_: object
    ) -> AsyncIterator[str]:
        self.arrived[text] = time.perf_counter()
        yield "ok"

    async def cancel(self, tenant_id: str, conversation: str) -> bool:
        return False

    async def reset(self, tenant_id: str, conversation: str) -> None:
        return None

    async def reconfigure(self, tenant_id: str) -> None:
        return None

    async def forget(self, tenant_id: str) -> None:
        return None


class NullMessenger:
    """Accepts every reply and drains streams, like a platform with no latency."""

    platform = Platform.TELEGRAM

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        return None

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        return None

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        return None

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        return True

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        return None

    async def ask_secret(self, event: Event, request: SecretRequest) -> bool:
        return False

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        async for _ in chunks:
            pass
        return None

    async def typing(self, chat: ChatRef) -> None:
        return None


def _event(uid: str, text: str) -> Event:
    user = UserRef(Platform.TELEGRAM, uid, "bench")
    return Event(
        EventKind.MESSAGE,
        user,
        ChatRef(Platform.TELEGRAM, uid, True),
        text=text,
        message_id=text,
        event_id=text,
    )


async def _measure(
    handler, chats: int, per_chat: int, agents: StampingAgents
) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    started: dict[str, float] = {}

    async def one_chat(c: int) -> None:
        for i in range(per_chat):
            text = f"m-{c}-{i}"
            started[text] = time.perf_counter()
            await handler(_event(str(c), text))

    t0 = time.perf_counter()
    await asyncio.gather(*(one_chat(c) for c in range(chats)))
    elapsed = time.perf_counter() - t0
    lat = [(agents.arrived[t] - s) * 1000 for t, s in started.items()]
    agents.arrived.clear()
    return lat, chats * per_chat / elapsed


async def main(quick: bool) -> None:
    chats, per_chat = (200, 5) if quick else (200, 25)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            {
                "core": {
                    "database_url": f"sqlite+aiosqlite:///{tmp}/b.db",
                    "messages_per_minute": 100_000,
                    "verify_keys_live": False,
                }
            },
            source="bench",
            base_dir=Path(tmp),
        )
        env = {"BYOKBOT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
        agents = StampingAgents()
        app = App(config, env=env, agents=agents, platforms=False)
        await app.open()
        app.services.messengers[Platform.TELEGRAM] = NullMessenger()  # type: ignore[index]
        billing = app.services.billing
        for c in range(chats):
            tenant = await app.services.tenants.sign_up(
                UserRef(Platform.TELEGRAM, str(c), "bench"), "managed", dm_chat_id=str(c)
            )
            if billing is not None:
                # Managed is never free: an operator's grant, as `/admin comp` gives.
                await billing.grant(tenant.id, "managed", 30, actor="bench")

        async def bare(event: Event) -> None:
            # The baseline: what any handler must do at least - look up and call the agent.
            handlers = {EventKind.MESSAGE: agents.reply}
            async for _ in handlers[event.kind]("t", event.chat.id, event.text):
                pass

        await _measure(bare, chats, 1, agents)  # warm-up
        await _measure(app.router.dispatch, chats, 1, agents)
        base_lat, base_rate = await _measure(bare, chats, per_chat, agents)
        lat, rate = await _measure(app.router.dispatch, chats, per_chat, agents)
        await app.stop()
    print(f"machine: {machine()}")
    print(f"{chats} concurrent chats x {per_chat} messages, SQLite (WAL)\n")
    print(
        table(
            ["path", "p50 ms", "p99 ms", "updates/s"],
            [
                [
                    "baseline: bare handler",
                    f"{median(base_lat):.3f}",
                    f"{pct(base_lat, 99):.3f}",
                    f"{base_rate:,.0f}",
                ],
                ["router.dispatch", f"{median(lat):.3f}", f"{pct(lat, 99):.3f}", f"{rate:,.0f}"],
            ],
        )
    )
    print(
        f"\nrouter / baseline: p50 x{median(lat) / median(base_lat):.1f}, "
        f"throughput x{rate / base_rate:.2f}"
    )
    print("targets: p50 <= 0.2 ms, p99 <= 2 ms at 200 concurrent chats, >= 2,000 updates/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages (CI)")
    asyncio.run(main(parser.parse_args().quick))
