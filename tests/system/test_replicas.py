"""Two ``byokbot run`` replicas on one PostgreSQL behind nginx (issue 16, item 4).

Telegram (the fake, with ``WebhookPusher``) POSTs every update to nginx, which hands them to
the replicas in turn: consecutive updates of one person land on different processes. Needs
``BYOKBOT_TEST_PG_URL`` (``.ci/run`` starts a throwaway PostgreSQL) and nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot import texts
from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, eventually
from tests.system.managed_support import enable_proxy, free_port
from tests.system.people import TelegramPerson
from tests.system.replica_fixtures import (
    Nginx,
    Replicas,
    WebhookPusher,
    pg_url,
    replica_spaces,
)
from tests.system.telegram_steps import llm_saw, prompts, sign_up_byok

__all__ = ["pg_url"]  # the fixture, imported for pytest

SECRET = "replica-webhook-secret-0123456789"
LEASE = {"inbox": {"lease_seconds": 2}}


class Cluster:
    def __init__(self, replicas: Replicas, nginx: Nginx, pusher: WebhookPusher) -> None:
        self.replicas = replicas
        self.nginx = nginx
        self.pusher = pusher

    def replica_of(self, update_id: int) -> int:
        return self.replicas.by_address(self.pusher.served_by[update_id])


async def _cluster(
    tmp_path: Path,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    pg: str,
    canaries: CanaryScan,
    extra: dict[str, dict[str, object]] | None = None,
) -> AsyncIterator[Cluster]:
    replicas = replica_spaces(tmp_path, llm, telegram, pg, canaries, SECRET, extra)
    async with _cluster_of(tmp_path, telegram, replicas) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def _cluster_of(
    tmp_path: Path, telegram: FakeTelegramServer, replicas: Replicas
) -> AsyncIterator[Cluster]:
    nginx = Nginx(tmp_path / "nginx", (replicas.ports[0], replicas.ports[1]))
    pusher = WebhookPusher(telegram, "", SECRET)
    try:
        await replicas.start()
        await nginx.start()
        pusher.url = nginx.url
        pusher.start()
        yield Cluster(replicas, nginx, pusher)
    finally:
        await pusher.stop()
        await nginx.stop()
        for ws in replicas.spaces:
            await ws.close()


@pytest.fixture
async def cluster(
    tmp_path: Path,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    pg_url: str,
    canaries: CanaryScan,
) -> AsyncIterator[Cluster]:
    async for c in _cluster(tmp_path, llm, telegram, pg_url, canaries, LEASE):
        yield c


def _last_update(telegram: FakeTelegramServer) -> int:
    return max(telegram.pushed)


async def _sign_up_across(
    cluster: Cluster, telegram: FakeTelegramServer, person: TelegramPerson, key: str
) -> None:
    """Sign up with the key pasted on the replica that did not ask for it."""
    await sign_up_byok(person)
    asked_on = cluster.replica_of(_last_update(telegram))  # the Anthropic press: the prompt
    # nginx alternates: the next update (the pasted key) goes to the other replica.
    person.reply_to_prompt(key)
    await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
    assert cluster.replica_of(_last_update(telegram)) != asked_on
    await person.wait_text("Key saved", within=30)


async def test_the_key_prompt_on_one_replica_and_the_key_pasted_on_the_other_work_together(
    cluster: Cluster,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    # The person talks first, so both replicas have looked them up (and cached "no flow").
    ada.send("/help")
    ada.send("/help")
    await eventually(lambda: len(ada.texts()) >= 2)
    await _sign_up_across(cluster, telegram, ada, key)
    assert not any("revoke" in t.lower() for t in ada.texts()), ada.texts()

    for line in ("first on one", "second on the other"):
        ada.send(line)
        await ada.wait_text(f"echo: {line}", within=60)
    assert llm_saw(llm, "second on the other")
    assert set(llm.keys("anthropic")) <= {key} and llm.keys("anthropic")
    served = {cluster.replica_of(u) for u in telegram.pushed}
    assert served == {0, 1}, cluster.pusher.served_by
    for bot in cluster.replicas.bots:
        assert bot.returncode is None
        assert "Traceback" not in bot.stderr(), bot.stderr()


async def test_a_suspension_on_one_replica_is_seen_by_the_other_within_a_second(
    cluster: Cluster,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    op = TelegramPerson(telegram, 900, "Op", "op")
    await _sign_up_across(cluster, telegram, ada, key)
    # Both replicas look Ada up now (and keep her tenant in their cache for 5 seconds).
    ada.send("/help")
    ada.send("/help")
    await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
    await eventually(lambda: sum("/start" in t for t in ada.texts()) >= 2)

    op.send(f"/admin suspend telegram:{ada.user_id} unpaid")
    suspended_on = None
    await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
    suspended_on = cluster.replica_of(_last_update(telegram))
    await op.wait_text("Suspended", within=30)
    # The bound the issue sets: within one second every replica knows.
    await asyncio.sleep(1.0)
    before = len(llm.requests)
    lines = ["are you there", "hello again"]
    for line in lines:
        ada.send(line)
    await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
    others = {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]}
    assert others == {0, 1}, (suspended_on, cluster.pusher.served_by)
    await eventually(
        lambda: sum(t.startswith("Your account is suspended") for t in ada.texts()) >= 2,
        message=lambda: "\n---\n".join(ada.texts()),
    )
    assert len(llm.requests) == before
    assert not any(t == f"echo: {line}" for t in ada.texts() for line in lines)


async def test_a_grant_on_one_replica_is_honoured_by_the_other_at_once(
    tmp_path: Path,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    pg_url: str,
    canaries: CanaryScan,
    ada: TelegramPerson,
) -> None:
    replicas = replica_spaces(tmp_path, llm, telegram, pg_url, canaries, SECRET, LEASE)
    for ws in replicas.spaces:
        enable_proxy(ws, llm, canaries, managed_trial=False)
    async with _cluster_of(tmp_path, telegram, replicas) as cluster:
        op = TelegramPerson(telegram, 900, "Op", "op")
        ada.send("/start")
        await ada.wait_text("Pick a plan")
        ada.press("Managed")
        await ada.wait_text("given out by the operators")
        # Both replicas read Ada's (missing) subscription and keep it for a few seconds.
        for line in ("one", "two"):
            ada.send(line)
        await eventually(lambda: sum("isn't paid for" in t for t in ada.texts()) >= 2)
        assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}

        op.send(f"/admin comp telegram:{ada.user_id} managed 30")
        await op.wait_text("has the managed plan until")
        lines = ["paid on one", "paid on the other"]
        for line in lines:
            ada.send(line)
        await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
        assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}
        for line in lines:
            try:
                await ada.wait_text(f"^echo: {line}$", within=30)
            except AssertionError as exc:
                logs = "\n".join(b.stderr()[-3000:] for b in cluster.replicas.bots)
                raise AssertionError(f"{exc}\nreplicas:\n{logs}") from None
        assert sum("isn't paid for" in t for t in ada.texts()) == 2
        for bot in cluster.replicas.bots:
            assert "Traceback" not in bot.stderr(), bot.stderr()


async def test_a_rotation_or_removal_on_one_replica_reaches_the_agents_of_both(
    cluster: Cluster,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first, second = anthropic_key(), anthropic_key()
    canaries.add(first, second)
    await _sign_up_across(cluster, telegram, ada, first)
    # Both replicas answer her, so both run an agent holding the first key.
    for line in ("warm one", "warm two"):
        ada.send(line)
        await ada.wait_text(f"echo: {line}", within=60)
    assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}
    assert set(llm.keys("anthropic")) == {first}

    ada.send("/key rotate anthropic")
    await eventually(lambda: prompts(ada) >= 2, message=lambda: "\n".join(ada.texts()))
    ada.reply_to_prompt(second)
    await ada.wait_text("(?i)key rotated", within=30)
    before = len(llm.requests)
    lines = ["after one", "after two"]
    for line in lines:
        ada.send(line)
        await ada.wait_text(f"echo: {line}", within=60)
    assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}
    # Every request after the rotation, from either replica, carried the new key.
    after = [r.key for r in llm.requests[before:] if r.path != "/v1/models"]
    assert after and set(after) == {second}, after

    # Removed on one replica: neither replica's agent uses the key any more.
    ada.send("/key remove anthropic")
    await ada.wait_text("Removed your Anthropic key", within=30)
    before = len(llm.requests)
    lines = ["removed one", "removed two"]
    for line in lines:
        ada.send(line)
    await eventually(lambda: cluster.pusher.delivered(_last_update(telegram)))
    assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}
    await eventually(
        lambda: sum("has no API key" in t for t in ada.texts()) >= 2,
        within=30,
        message=lambda: "\n---\n".join(ada.texts()[-4:]),
    )
    assert not [r for r in llm.requests[before:] if r.path != "/v1/models"]
    for bot in cluster.replicas.bots:
        assert "Traceback" not in bot.stderr(), bot.stderr()


async def test_a_persona_set_on_one_replica_is_in_the_other_s_next_request(
    cluster: Cluster,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    """Each replica keeps her agent's profile in memory; the change feed drops it at once."""
    key = anthropic_key()
    canaries.add(key)
    await _sign_up_across(cluster, telegram, ada, key)
    for line in ("warm one", "warm two"):
        ada.send(line)
        await ada.wait_text(f"echo: {line}", within=60)
    assert {cluster.replica_of(u) for u in list(telegram.pushed)[-2:]} == {0, 1}

    ada.send("/persona You are a ship's cat named Biscuit.")
    await ada.wait_text("(?i)persona", within=30)
    set_on = cluster.replica_of(_last_update(telegram))
    before = len(llm.requests)
    ada.send("who are you")  # nginx alternates: the replica that did not take the persona
    await ada.wait_text("echo: who are you", within=60)
    assert cluster.replica_of(_last_update(telegram)) != set_on
    asked = [r for r in llm.requests[before:] if r.path != "/v1/models"]
    assert asked and all("Biscuit" in str(r.body.get("system", "")) for r in asked), asked


def _job_runs(text: str, job: str) -> float:
    m = re.search(rf'^byokbot_job_runs_total\{{job="{job}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_background_job_runs_once_per_interval_across_replicas(
    tmp_path: Path,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    pg_url: str,
    canaries: CanaryScan,
) -> None:
    health = [free_port(), free_port()]
    replicas = replica_spaces(
        tmp_path,
        llm,
        telegram,
        pg_url,
        canaries,
        SECRET,
        {"billing": {"check_interval_seconds": 1}},
    )
    for ws, port in zip(replicas.spaces, health, strict=True):
        ws.configure({"health": {"listen": f"127.0.0.1:{port}"}})
    try:
        await replicas.start()

        async def total() -> float:
            runs = 0.0
            async with aiohttp.ClientSession() as http:
                for port in health:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        runs += _job_runs(await resp.text(), "billing")
            return runs

        per_replica: list[float] = []

        async def both_ran() -> bool:
            per_replica.clear()
            async with aiohttp.ClientSession() as http:
                for port in health:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        per_replica.append(_job_runs(await resp.text(), "billing"))
            return sum(per_replica) > 0

        await eventually(both_ran, within=30)
        start, t0 = await total(), time.monotonic()
        await asyncio.sleep(8.0)  # the window the runs are counted over
        end, t1 = await total(), time.monotonic()
        # Each run holds the job's lease for 0.8 s of the database's time: across both
        # replicas at most one run per 0.8 s (without the lease: one per second on each).
        window = t1 - t0
        assert end - start <= window / 0.8 + 1, (start, end, window)
        assert end - start >= 1
        for bot in replicas.bots:
            assert "Traceback" not in bot.stderr(), bot.stderr()
    finally:
        for ws in replicas.spaces:
            await ws.close()


def _answered(person: TelegramPerson, line: str) -> bool:
    shown = person.texts()
    return f"echo: {line}" in shown or texts.INBOX_RESEND in shown


async def test_kill_9_of_one_replica_mid_stream_loses_and_doubles_nothing(
    cluster: Cluster,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await _sign_up_across(cluster, telegram, ada, key)

    llm.gate = asyncio.Event()  # replies stop after their first words
    ada.send("one in flight")
    held = _last_update(telegram)
    await eventually(lambda: cluster.pusher.delivered(held))
    victim = cluster.replica_of(held)
    await eventually(lambda: llm_saw(llm, "one in flight"))
    await cluster.replicas.bots[victim].kill()
    llm.gate.set()
    # More while it is gone: nginx finds the dead replica refusing and tries the other.
    later = ["after the kill", "and one more"]
    for line in later:
        ada.send(line)

    survivor = cluster.replicas.bots[1 - victim]
    for line in ["one in flight", *later]:
        await eventually(
            lambda t=line: _answered(ada, t),  # type: ignore[misc]
            within=60,
            message=lambda: "\n---\n".join(ada.texts()),
        )
    for line in later:
        assert ada.texts().count(f"echo: {line}") == 1, ada.texts()
    # The turn the dead replica held: taken over once (answered or the person asked to resend).
    shown = ada.texts()
    assert shown.count("echo: one in flight") + shown.count(texts.INBOX_RESEND) == 1, shown
    assert survivor.returncode is None
    assert "Traceback" not in survivor.stderr(), survivor.stderr()
    assert prompts(ada) == 1
