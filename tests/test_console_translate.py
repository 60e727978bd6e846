"""The console's pure translation, and small core value types."""

from __future__ import annotations

import pickle

import pytest

from adapters.console.translate import render, to_event
from core.chat import Button, ChatRef, EventKind, Platform, Reply, UserRef
from core.dedup import InMemoryDeduplicator
from core.secret import Secret

USER = UserRef(Platform.CONSOLE, "local", "me")
CHAT = ChatRef(Platform.CONSOLE, "local", is_direct=True)


def test_lines_become_commands_buttons_and_messages() -> None:
    buttons = [Button("BYOK", "t|plan:byok"), Button("Managed", "t|plan:managed")]
    cmd = to_event("/Key add  anthropic\n", user=USER, chat=CHAT, buttons=[], seq=1)
    assert cmd is not None
    assert (cmd.kind, cmd.command, cmd.args) == (EventKind.COMMAND, "key", ("add", "anthropic"))
    press = to_event("2", user=USER, chat=CHAT, buttons=buttons, seq=2)
    assert press is not None
    assert (press.kind, press.payload) == (EventKind.BUTTON, "t|plan:managed")
    out_of_range = to_event("3", user=USER, chat=CHAT, buttons=buttons, seq=3)
    assert out_of_range is not None
    assert (out_of_range.kind, out_of_range.text) == (EventKind.MESSAGE, "3")
    assert to_event("   \n", user=USER, chat=CHAT, buttons=buttons, seq=4) is None
    msg = to_event("héllo 👋\n", user=USER, chat=CHAT, buttons=[], seq=5)
    assert msg is not None
    assert (msg.kind, msg.text, msg.addressed) == (EventKind.MESSAGE, "héllo 👋", True)


def test_render_numbers_buttons_and_hides_links() -> None:
    reply = Reply(
        "Pick one:", buttons=((Button("A", "a"), Button("B", "b")), (Button("DM", "@open-dm"),))
    )
    text, buttons = render(reply)
    assert text == "Pick one:\n  [1] A\n  [2] B\n(type a number to choose)"
    assert [b.payload for b in buttons] == ["a", "b"]
    assert render(Reply("plain")) == ("plain", [])


def test_secret_never_shows_itself() -> None:
    s = Secret("sk-ant-api03-xyz")
    assert "sk-ant" not in f"{s} {s!r} {s:>30} {[s]}"
    assert s.reveal() == "sk-ant-api03-xyz"
    assert s == Secret("sk-ant-api03-xyz")
    assert s != Secret("other")
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)


async def test_deduplicator_remembers_within_its_window() -> None:
    dedup = InMemoryDeduplicator(max_items=3, ttl_seconds=3600)
    assert await dedup.first_time("a") is True
    assert await dedup.first_time("a") is False
    for k in ("b", "c", "d"):
        assert await dedup.first_time(k) is True
    assert await dedup.first_time("a") is True  # evicted by the bound
    expired = InMemoryDeduplicator(ttl_seconds=0)
    assert await expired.first_time("x") is True
    assert await expired.first_time("x") is True
