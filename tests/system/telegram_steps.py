"""Steps several Telegram system tests share: start the bot, sign up, hand over a key."""

from __future__ import annotations

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import BotProcess, Workspace, eventually
from tests.system.people import TelegramPerson

SERVING = r"telegram: serving @\w+ by polling"


async def start_bot(ws: Workspace) -> BotProcess:
    """``byokbot run`` on the work dir, once it polls the fake Telegram."""
    bot = await ws.start("run")
    await bot.wait_output(SERVING, within=30)
    return bot


async def restart_bot(ws: Workspace, bot: BotProcess) -> BotProcess:
    """kill -9 the whole process group, then ``byokbot run`` again on the same work dir."""
    await bot.kill()
    return await start_bot(ws)


def prompts(person: TelegramPerson) -> int:
    """How many ForceReply key prompts the bot sent this person."""
    return sum(
        1
        for c in person.server.calls
        if c.method == "sendMessage"
        and c.status == 200
        and str(c.params.get("chat_id")) == str(person.user_id)
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
    )


async def wait_prompts(person: TelegramPerson, count: int) -> None:
    await eventually(
        lambda: prompts(person) >= count, message=lambda: "\n---\n".join(person.texts())
    )


def deleted(telegram: FakeTelegramServer, message_id: int) -> bool:
    return any(int(c["message_id"]) == message_id for c in telegram.calls_to("deleteMessage"))


def llm_saw(llm: FakeLLMServer, text: str) -> bool:
    """Whether a chat request to the fake provider carried ``text`` in a user message."""
    return any(
        text in str(m.get("content", ""))
        for r in llm.requests
        for m in r.body.get("messages", [])
        if m.get("role") == "user"
    )


async def sign_up_byok(person: TelegramPerson) -> None:
    """/start, the BYOK plan, Anthropic: until the key prompt is open."""
    before = prompts(person)
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")
    person.press("Anthropic")
    await wait_prompts(person, before + 1)


async def sign_up_with_key(person: TelegramPerson, key: str) -> None:
    """Sign up on BYOK and hand over ``key`` as a reply to the prompt."""
    await sign_up_byok(person)
    person.reply_to_prompt(key)
    await person.wait_text("Key saved")
