"""The supervisor end to end: real forked workers, real clients, the loopback fake provider."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from core.config import AgentSettings
from core.errors import AgentUnavailable
from core.runtime.errors import ReplyFailed
from core.runtime.ports import Turn, UsageRecord
from core.runtime.supervisor import trim_turns
from tests.fakes.agents import eventually, rig


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_streamed_conversation_with_memory_and_usage(tmp_path: Path, kind: str) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one", kind=kind)
        chunks = [c async for c in r.sup.reply("t1", "chat", "hello agent")]
        second = await r.say("t1", "and again")
        assert chunks == ["echo: ", "hello ", "agent"]
        assert second == "echo: and again"
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "hello agent"),
            Turn("assistant", "echo: hello agent"),
            Turn("user", "and again"),
            Turn("assistant", "echo: and again"),
        ]
        sent = r.fake.requests[-1].body["messages"]
        non_system = [m for m in sent if m["role"] != "system"]
        assert non_system == [
            {"role": "user", "content": "hello agent"},
            {"role": "assistant", "content": "echo: hello agent"},
            {"role": "user", "content": "and again"},
        ]
        assert [u.output_tokens for u in r.usage.records] == [3, 3]
        assert r.usage.records[0] == UsageRecord(
            "t1", "model-large", r.usage.records[0].input_tokens, 3
        )
        assert len(r.pids("t1")) == 1


async def test_conversations_keep_separate_memory_and_reset_clears_one(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one")
        await r.say("t1", "in a", conversation="a")
        await r.say("t1", "in b", conversation="b")
        await r.sup.reset("t1", "a")
        assert (("t1", "a") in r.memory.turns, r.memory.turns[("t1", "b")][0]) == (
            False,
            Turn("user", "in b"),
        )


async def test_two_tenants_at_once_each_carry_their_own_key(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.fake.chunk_delay = 0.01
        r.tenant("alice", "sk-alice-key")
        r.tenant("bob", "sk-bob-key", kind="openai-compatible")

        async def talk(tenant: str) -> list[str]:
            return [await r.say(tenant, f"{tenant} {i}") for i in range(5)]

        alice, bob = await asyncio.gather(talk("alice"), talk("bob"))
        assert alice == [f"echo: alice {i}" for i in range(5)]
        assert bob == [f"echo: bob {i}" for i in range(5)]
        by_key = {(rec.kind, rec.key) for rec in r.fake.requests}
        assert by_key == {("anthropic", "sk-alice-key"), ("openai-compatible", "sk-bob-key")}
        for rec in r.fake.requests:
            who = "alice" if rec.key == "sk-alice-key" else "bob"
            assert rec.body["messages"][-1]["content"].startswith(who)
        assert set(r.pids("alice")).isdisjoint(r.pids("bob"))


async def test_one_tenant_answers_several_conversations_concurrently(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.fake.chunk_delay = 0.02
        r.tenant("t1", "sk-one")
        answers = await asyncio.gather(
            *(r.say("t1", f"m{i}", conversation=f"c{i}") for i in range(4))
        )
        assert (answers, len(r.pids("t1"))) == ([f"echo: m{i}" for i in range(4)], 1)


FAILURES = [
    ({"status": 401, "error_type": "authentication_error"}, "invalid_key", None),
    ({"status": 429, "error_type": "rate_limit_error", "retry_after": "30"}, "rate_limited", 30.0),
    ({"status": 402, "error_type": "billing"}, "out_of_credit", None),
    ({"status": 529, "error_type": "overloaded_error"}, "overloaded", None),
    ({"status": 404, "error_type": "not_found_error"}, "model_not_found", None),
    ({"mode": "malformed"}, "bad_response", None),
]


@pytest.mark.parametrize(("failure", "code", "retry_after"), FAILURES)
async def test_provider_failures_surface_as_reply_failed(
    tmp_path: Path, failure: dict[str, object], code: str, retry_after: float | None
) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one")
        await r.say("t1", "first")
        r.fake.fail(**failure)  # type: ignore[arg-type]
        with pytest.raises(ReplyFailed) as info:
            await r.say("t1", "second")
        assert (info.value.reason, info.value.retry_after) == (code, retry_after)
        assert isinstance(info.value, AgentUnavailable)
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "first"),
            Turn("assistant", "echo: first"),
        ]
        dead = [("t1", "k1", "invalid_key")] if code == "invalid_key" else []
        assert r.health.dead == dead
        assert await r.say("t1", "third") == "echo: third"


async def test_stalled_provider_times_out(tmp_path: Path) -> None:
    async with rig(tmp_path, settings=AgentSettings(request_timeout_seconds=1)) as r:
        r.tenant("t1", "sk-one")
        r.fake.fail(mode="stall_mid")
        with pytest.raises(ReplyFailed) as info:
            await r.say("t1", "hello")
        assert info.value.reason == "timeout"


async def test_unavailable_profile_is_passed_through(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        with pytest.raises(AgentUnavailable) as info:
            await r.say("nobody", "hi")
        assert (info.value.reason, r.sup.status()) == ("no_key", [])


async def test_kill_9_mid_stream_then_the_next_message_works(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one")
        await r.say("t1", "remember me")
        [pid] = r.pids("t1")
        r.fake.gate = asyncio.Event()
        stream = r.sup.reply("t1", "chat", "this will die")
        first = await anext(stream)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ReplyFailed) as info:
            async for _ in stream:
                pass
        r.fake.gate.set()
        r.fake.gate = None
        assert (first, info.value.reason) == ("echo: ", "crashed")
        assert await r.say("t1", "still there?") == "echo: still there?"
        assert r.pids("t1") != [pid]
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "remember me"),
            Turn("assistant", "echo: remember me"),
            Turn("user", "still there?"),
            Turn("assistant", "echo: still there?"),
        ]


async def test_repeated_crashes_back_off(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one")
        for _ in range(2):
            await r.say("t1", "hi")
            [pid] = r.pids("t1")
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: r.pids("t1") == [])
        with pytest.raises(ReplyFailed) as info:
            await r.say("t1", "too soon")
        assert (info.value.reason, info.value.retry_after) == ("restarting", 1.0)
        r.now[0] += 1.0
        assert await r.say("t1", "later") == "echo: later"


async def test_cancel_stops_a_reply_in_progress(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-one")
        r.fake.gate = asyncio.Event()
        stream = r.sup.reply("t1", "chat", "long answer please")
        first = await anext(stream)
        assert await r.sup.cancel("t1", "chat") is True
        rest = [c async for c in stream]
        r.fake.gate.set()
        await eventually(lambda: r.fake.disconnects == 1)
        assert (first, rest, r.fake.disconnects) == ("echo: ", [], 1)
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "long answer please"),
            Turn("assistant", "echo: "),
        ]
        assert await r.sup.cancel("t1", "chat") is False


async def test_idle_agents_stop_and_restart_on_demand(tmp_path: Path) -> None:
    # Recycling off: the clock jumps past its 5 s, and a recycled agent drains beside its fork.
    settings = AgentSettings(idle_timeout_seconds=60, recycle_after_idle_seconds=0)
    async with rig(tmp_path, settings=settings) as r:
        r.tenant("t1", "sk-one")
        r.tenant("t2", "sk-two")
        await r.say("t1", "hi")
        r.now[0] += 30
        await r.say("t2", "hi")
        [pid1] = r.pids("t1")
        r.now[0] += 31
        assert await r.sup.stop_idle() == 1
        assert (r.pids("t1"), len(r.pids("t2"))) == ([], 1)
        assert await _gone(pid1)
        assert await r.say("t1", "back") == "echo: back"
        assert len(r.pids("t1")) == 1
        r.now[0] += 61
        await r.sup.idle_job()
        assert r.sup.status() == []


async def test_live_agent_bound_stops_the_least_recently_used(tmp_path: Path) -> None:
    async with rig(tmp_path, settings=AgentSettings(max_live_agents=2)) as r:
        for t in ("t1", "t2", "t3"):
            r.tenant(t, f"sk-{t}")
        await r.say("t1", "a")
        r.now[0] += 1
        await r.say("t2", "b")
        r.now[0] += 1
        await r.say("t1", "c")  # t2 is now the least recently used
        r.now[0] += 1
        await r.say("t3", "d")
        assert sorted(s.tenant_id for s in r.sup.status()) == ["t1", "t3"]


async def test_bound_reached_with_every_agent_busy_says_busy(tmp_path: Path) -> None:
    async with rig(tmp_path, settings=AgentSettings(max_live_agents=1)) as r:
        r.tenant("t1", "sk-1")
        r.tenant("t2", "sk-2")
        r.fake.gate = asyncio.Event()
        stream = r.sup.reply("t1", "chat", "hold on")
        await anext(stream)
        with pytest.raises(ReplyFailed) as info:
            await r.say("t2", "me too")
        r.fake.gate.set()
        rest = "".join([c async for c in stream])
        assert (info.value.reason, rest) == ("busy", "hold on")


async def test_rotation_under_load_no_failures_and_old_key_retired(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.fake.chunk_delay = 0.005
        r.tenant("t1", "sk-old-key", key_id="k-old")
        stop = asyncio.Event()
        done: list[str] = []

        async def load(n: int) -> None:
            i = 0
            while not stop.is_set():
                text = f"w{n} m{i}"
                assert await r.say("t1", text, conversation=f"c{n}") == f"echo: {text}"
                done.append(text)
                i += 1

        workers = [asyncio.create_task(load(n)) for n in range(3)]
        await eventually(lambda: len(done) >= 10)
        [old_pid] = r.pids("t1")
        # Hold the old key's streams mid-reply so the swap happens with requests in flight.
        r.fake.gate_keys, r.fake.gate = {"sk-old-key"}, asyncio.Event()
        await r.fake.mid_stream.wait()
        r.rotate("t1", "sk-new-key", "k-new")
        await r.sup.reconfigure("t1")
        draining = [s for s in r.sup.status() if s.draining]
        fresh = await r.say("t1", "during the swap", conversation="fresh")
        assert (fresh, r.fake.keys()[-1]) == ("echo: during the swap", "sk-new-key")
        assert [(s.pid, s.key_id, s.in_flight > 0) for s in draining] == [(old_pid, "k-old", True)]
        r.fake.gate.set()
        await eventually(lambda: old_pid not in r.pids("t1"))
        mark = len(r.fake.requests)
        swapped_at = len(done)
        await eventually(lambda: len(done) >= swapped_at + 30)
        stop.set()
        await asyncio.gather(*workers)  # a failed request would raise here
        keys_before, keys_after = r.fake.keys()[:mark], r.fake.keys()[mark:]
        assert {"sk-old-key", "sk-new-key"} <= set(keys_before)
        assert (len(keys_after) >= 30, set(keys_after)) == (True, {"sk-new-key"})
        assert [s.key_id for s in r.sup.status()] == ["k-new"]
        assert await _gone(old_pid)


async def test_request_notices_a_changed_key_without_reconfigure(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-first", key_id="a")
        await r.say("t1", "one")
        r.rotate("t1", "sk-second", "b")
        await r.say("t1", "two")
        await eventually(lambda: len(r.sup.status()) == 1)
        assert (r.fake.keys(), [s.key_id for s in r.sup.status()]) == (
            ["sk-first", "sk-second"],
            ["b"],
        )


async def test_forget_kills_the_agent_and_reconfigure_to_unavailable_forgets(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        r.tenant("t1", "sk-1")
        r.tenant("t2", "sk-2")
        await r.say("t1", "hi")
        await r.say("t2", "hi")
        [pid1], [pid2] = r.pids("t1"), r.pids("t2")
        await r.sup.forget("t1")
        r.profiles.make_unavailable("t2", "paused")
        await r.sup.reconfigure("t2")
        assert (r.sup.status(), await _gone(pid1), await _gone(pid2)) == ([], True, True)


async def test_reconfigure_with_only_persona_changed_keeps_the_worker(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        p = r.tenant("t1", "sk-1")
        await r.say("t1", "hi")
        pids = r.pids("t1")
        from dataclasses import replace

        r.profiles.set(replace(p, persona="You are verbose.", model="model-small"))
        await r.sup.reconfigure("t1")
        await r.say("t1", "again")
        body = r.fake.requests[-1].body
        assert (r.pids("t1"), body["system"], body["model"]) == (
            pids,
            "You are verbose.",
            "model-small",
        )


def test_trim_keeps_newest_turns_within_budget_starting_with_user() -> None:
    turns = [Turn("user", "a" * 40), Turn("assistant", "b" * 40), Turn("user", "c" * 40)]
    assert trim_turns(turns, 1000) == turns
    assert trim_turns(turns, 28) == [Turn("user", "c" * 40)]  # the assistant turn alone is dropped
    assert trim_turns(turns, 1) == [Turn("user", "c" * 40)]  # the new message always goes


async def _gone(pid: int) -> bool:
    def dead() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    await eventually(dead)
    return dead()


async def test_warm_preloads_the_template(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with rig(tmp_path) as r:
        await r.sup.warm()
        r.tenant("t1", "sk-one")
        assert await r.say("t1", "warm") == "echo: warm"
    assert caplog.records == []


async def test_messages_in_one_conversation_are_answered_in_turn(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.fake.chunk_delay = 0.01
        r.tenant("t1", "sk-one")
        first, second = await asyncio.gather(r.say("t1", "one"), r.say("t1", "two"))
        assert (first, second) == ("echo: one", "echo: two")
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "one"),
            Turn("assistant", "echo: one"),
            Turn("user", "two"),
            Turn("assistant", "echo: two"),
        ]
        assert [len(req.body["messages"]) for req in r.fake.requests] == [1, 3]


async def test_an_agent_idle_after_a_reply_is_recycled_into_a_fresh_fork(tmp_path: Path) -> None:
    settings = AgentSettings(idle_timeout_seconds=600, recycle_after_idle_seconds=60)
    async with rig(tmp_path, settings=settings) as r:
        r.tenant("t1", "sk-one")
        assert await r.say("t1", "first") == "echo: first"
        [used] = r.pids("t1")
        r.now[0] += 30
        await r.sup.idle_job()
        assert r.pids("t1") == [used]  # not idle long enough yet
        r.now[0] += 31
        await r.sup.idle_job()
        await eventually(lambda: len(r.pids("t1")) == 1 and r.pids("t1") != [used])
        assert await _gone(used)
        [fresh] = r.pids("t1")
        # A fresh fork that has answered nothing is not recycled again.
        r.now[0] += 120
        await r.sup.idle_job()
        assert r.pids("t1") == [fresh]
        # It holds the same key, and the conversation goes on (the history is the supervisor's).
        assert await r.say("t1", "second") == "echo: second"
        assert r.pids("t1") == [fresh]
        assert r.fake.requests[-1].key == "sk-one"
        assert "first" in str(r.fake.requests[-1].body)
        # The idle timeout still counts from the last reply: recycling did not reset it.
        r.now[0] += 601
        await r.sup.idle_job()
        assert r.sup.status() == []


async def test_an_agent_is_recycled_from_its_reply_without_waiting_for_the_idle_job(
    tmp_path: Path,
) -> None:
    settings = AgentSettings(idle_timeout_seconds=600, recycle_after_idle_seconds=1)
    async with rig(tmp_path, settings=settings) as r:
        r.tenant("t1", "sk-one")
        assert await r.say("t1", "first") == "echo: first"
        [used] = r.pids("t1")
        # No idle_job call: the reply itself timed the swap.
        await eventually(lambda: len(r.pids("t1")) == 1 and r.pids("t1") != [used], tries=1000)
        assert await _gone(used)
        [fresh] = r.pids("t1")
        assert await r.say("t1", "second") == "echo: second"
        assert r.fake.requests[-1].key == "sk-one"
        assert "first" in str(r.fake.requests[-1].body)
        # The fresh one answered, so it is recycled after its own reply in turn.
        await eventually(lambda: len(r.pids("t1")) == 1 and r.pids("t1") != [fresh], tries=1000)


async def test_recycling_off_keeps_the_agent(tmp_path: Path) -> None:
    settings = AgentSettings(idle_timeout_seconds=600, recycle_after_idle_seconds=0)
    async with rig(tmp_path, settings=settings) as r:
        r.tenant("t1", "sk-one")
        await r.say("t1", "first")
        [used] = r.pids("t1")
        r.now[0] += 300
        await r.sup.idle_job()
        assert r.pids("t1") == [used]
