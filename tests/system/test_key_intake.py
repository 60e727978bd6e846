"""A key request on Telegram does not capture the person's next messages (issue 10, defect 3).

While a key is awaited, only a reply to the key prompt, or a message with a key's shape, is
taken as the key; anything else goes to the agent with a note that the request is still open.
``/cancel`` and the Cancel button end a pending flow.
"""

from __future__ import annotations

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import (
    deleted,
    llm_saw,
    prompts,
    sign_up_byok,
    sign_up_with_key,
    start_bot,
    wait_prompts,
)

QUESTION = "never mind, what is the capital of France?"
STILL_OPEN = r"(?i)key request is still open"


async def test_a_question_while_a_key_is_awaited_reaches_the_agent(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first, second = anthropic_key(), anthropic_key()
    canaries.add(first, second)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, first)

    ada.send("/key rotate anthropic")
    await wait_prompts(ada, 2)
    question = ada.send(QUESTION)
    await ada.wait_text(f"echo: {QUESTION}", within=30)
    assert llm_saw(llm, QUESTION)
    assert llm.keys("anthropic")[-1] == first
    assert not deleted(telegram, question)
    await ada.wait_text(STILL_OPEN)
    assert "doesn't look like a valid" not in ada.everything()

    # The reply to the prompt is still the key, and is deleted the moment it is read.
    key_msg = ada.reply_to_prompt(second)
    await ada.wait_text("Key rotated")
    await telegram.wait_for(lambda: deleted(telegram, key_msg))
    ada.send("and now?")
    await ada.wait_text("echo: and now?", within=30)
    assert llm.keys("anthropic")[-1] == second


async def test_a_key_shaped_message_while_a_key_is_awaited_is_the_key(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_byok(ada)
    pasted = ada.send(key)  # pasted without replying to the prompt
    await ada.wait_text("Key saved")
    await telegram.wait_for(lambda: deleted(telegram, pasted))
    assert not llm_saw(llm, key)


async def test_cancel_ends_a_pending_key_request(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first = anthropic_key()
    canaries.add(first)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, first)

    ada.send("/key rotate anthropic")
    await wait_prompts(ada, 2)
    ada.send("/cancel")
    await ada.wait_text(r"(?i)key request cancelled")
    # A reply to the old prompt is an ordinary message now: it reaches the agent, untouched.
    reply = ada.reply_to_prompt("this is not a key")
    await ada.wait_text("echo: this is not a key", within=30)
    assert not deleted(telegram, reply)
    ada.send("/cancel")
    await ada.wait_text(r"(?i)nothing to cancel")

    # The Cancel button under a new prompt does the same.
    ada.send("/key rotate anthropic")
    await wait_prompts(ada, 3)
    # The Cancel button comes in its own message right after the prompt: press the new one.
    await eventually(
        lambda: sum(label == "Cancel" for _, label, _ in ada.buttons()) >= 3,
        message=lambda: repr(ada.buttons()),
    )
    cancelled = len([t for t in ada.texts() if "cancelled" in t.lower()])
    ada.press("Cancel")
    await eventually(
        lambda: len([t for t in ada.texts() if "cancelled" in t.lower()]) > cancelled,
        message=lambda: "\n---\n".join(ada.texts()),
    )
    ada.reply_to_prompt("hello again")
    await ada.wait_text("echo: hello again", within=30)
    assert prompts(ada) == 3
    assert llm.keys("anthropic")[-1] == first


async def test_cancel_ends_a_pending_delete_confirmation(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first = anthropic_key()
    canaries.add(first)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, first)
    ada.send("/delete")
    await ada.wait_text("(?i)are you sure")
    ada.send("/cancel")
    await ada.wait_text("Nothing was deleted")
    ada.press("Yes, erase")
    await ada.wait_text("(?i)no longer does anything")
    ada.send("still mine?")
    await ada.wait_text("echo: still mine?", within=30)
