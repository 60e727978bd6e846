"""The strict fake Discord refuses what real Discord refuses (the system suite relies on it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_server import FakeDiscord


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(strict=True, interaction_window=0.5) as server:
        yield server


class _Gateway:
    """Stands in for the bot's gateway connection, so the fake can dispatch to it."""

    def __init__(self, session: aiohttp.ClientSession, fake: FakeDiscord) -> None:
        self.session, self.fake = session, fake

    async def __aenter__(self) -> _Gateway:
        self.ws = await self.session.ws_connect(self.fake.gateway_url)
        await self.ws.receive_json()  # HELLO
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()


async def _post(
    session: aiohttp.ClientSession, fake: FakeDiscord, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with session.post(fake.api_base + path, json=body) as resp:
        return resp.status, await resp.json()


async def _interaction(fake: FakeDiscord, kind: str = "slash") -> dict[str, Any]:
    user = fake.user("42", "ada")
    payload = (
        fake.slash(user, "key")
        if kind == "slash"
        else fake.modal_submit(user, "k:tok", {"secret": "x"}, channel_id=None)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    return payload


def _callback(payload: dict[str, Any]) -> str:
    return f"/interactions/{payload['id']}/{payload['token']}/callback"


def _modal(label: str, placeholder: str = "") -> dict[str, Any]:
    field: dict[str, Any] = {"type": 4, "custom_id": "secret", "style": 1, "label": label}
    if placeholder:
        field["placeholder"] = placeholder
    return {
        "type": 9,
        "data": {
            "custom_id": "k:t",
            "title": "Key",
            "components": [{"type": 1, "components": [field]}],
        },
    }


async def test_one_callback_then_follow_ups(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session, _Gateway(session, fake):
        payload = await _interaction(fake)
        webhook = f"/webhooks/{payload['application_id']}/{payload['token']}"
        status, body = await _post(session, fake, webhook, {"content": "too early"})
        assert (status, body["code"]) == (404, 10015)
        status, _ = await _post(
            session, fake, _callback(payload), {"type": 4, "data": {"content": "hi"}}
        )
        assert status == 200
        status, body = await _post(
            session, fake, _callback(payload), {"type": 4, "data": {"content": "again"}}
        )
        assert (status, body["code"]) == (400, 40060)
        status, _ = await _post(session, fake, webhook, {"content": "follow-up"})
        assert status == 200


async def test_a_late_callback_is_an_unknown_interaction(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session, _Gateway(session, fake):
        payload = await _interaction(fake)
        await asyncio.sleep(0.6)
        status, body = await _post(session, fake, _callback(payload), {"type": 5})
        assert (status, body["code"]) == (404, 10062)


async def test_modals_answer_only_commands_and_fit_the_limits(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session, _Gateway(session, fake):
        submitted = await _interaction(fake, "modal")
        status, body = await _post(session, fake, _callback(submitted), _modal("Key"))
        assert (status, body["code"]) == (400, 50035)

        long_label = await _interaction(fake)
        status, body = await _post(session, fake, _callback(long_label), _modal("x" * 46))
        assert status == 400
        field = body["errors"]["data"]["components"]["0"]["components"]["0"]
        assert field["label"]["_errors"][0]["message"] == "Must be 45 or fewer in length."

        long_placeholder = await _interaction(fake)
        status, body = await _post(
            session, fake, _callback(long_placeholder), _modal("Key", "p" * 101)
        )
        assert status == 400 and "placeholder" in str(body["errors"])

        fine = await _interaction(fake)
        status, _ = await _post(session, fake, _callback(fine), _modal("x" * 45, "p" * 100))
        assert status == 200
        assert fake.open_modals["42"].inputs[0]["label"] == "x" * 45


async def test_a_bot_cannot_delete_a_persons_dm(fake: FakeDiscord) -> None:
    user = fake.user("42", "ada")
    async with aiohttp.ClientSession() as session, _Gateway(session, fake):
        dm = fake.message(user, "my key", channel_id=None)
        await fake.dispatch("MESSAGE_CREATE", dm)
        url = f"{fake.api_base}/channels/{dm['channel_id']}/messages/{dm['id']}"
        async with session.delete(url) as resp:
            assert (resp.status, (await resp.json())["code"]) == (403, 50003)
        in_server = fake.message(user, "my key", channel_id="900000000000000004")
        await fake.dispatch("MESSAGE_CREATE", in_server)
        async with session.delete(
            f"{fake.api_base}/channels/900000000000000004/messages/{in_server['id']}"
        ) as resp:
            assert resp.status == 204
