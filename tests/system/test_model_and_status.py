"""``/model`` and ``/status`` on Telegram through ``byokbot run`` (defects 2.12 and 2.8).

``/model`` offers only the chat models among the ids a provider's ``/v1/models`` lists, the
current one first, and a choice reaches the provider. ``/status`` says what the account's state
is and which model answers (the provider's default by name), and counts attempts in words.
"""

from __future__ import annotations

from typing import Any

from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson

# What OpenAI's /v1/models lists beside its chat models (sorted, as the API returns them).
NOT_CHAT = (
    "dall-e-3",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-tts",
    "gpt-4o-realtime-preview",
    "gpt-image-1",
    "omni-moderation-latest",
    "text-embedding-3-large",
    "text-embedding-3-small",
    "tts-1",
    "tts-1-hd",
    "whisper-1",
)


async def start_bot(ws: Workspace) -> None:
    bot = await ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)


def _prompts(person: TelegramPerson) -> int:
    return sum(
        1
        for c in person.server.calls
        if c.method == "sendMessage"
        and str(c.params.get("chat_id")) == str(person.user_id)
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
    )


async def sign_up(person: TelegramPerson, provider: str) -> None:
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")
    person.press(provider)
    await eventually(
        within=30,
        predicate=lambda: _prompts(person) >= 1,
        message=lambda: "\n".join(person.texts()),
    )


def newest_keyboard(telegram: FakeTelegramServer, person: TelegramPerson, text: str) -> list[str]:
    """Button labels, in order, of the newest bot message containing ``text``."""
    for call in reversed(telegram.calls):
        params: dict[str, Any] = call.params
        if (
            call.method == "sendMessage"
            and str(params.get("chat_id")) == str(person.user_id)
            and text in str(params.get("text", ""))
        ):
            rows = params.get("reply_markup", {}).get("inline_keyboard", [])
            return [b["text"] for row in rows for b in row]
    raise AssertionError(f"no message with {text!r}")


async def test_model_lists_chat_models_only_current_first(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    llm.models = tuple(sorted((*NOT_CHAT, "model-large", "model-small", "model-tiny")))
    key = openai_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up(ada, "OpenAI")
    ada.reply_to_prompt(key)
    await ada.wait_text("Key saved")

    ada.send("/model")
    shown = await ada.wait_text("Current model")
    labels = newest_keyboard(telegram, ada, "Current model")
    assert labels == ["model-large (openai)", "model-small (openai)", "model-tiny (openai)"]
    assert "Current model: model-large" in shown, shown

    ada.press("model-tiny")
    await ada.wait_text("Model set to model-tiny")
    ada.send("/model")
    await ada.wait_text("Current model: model-tiny")
    labels = newest_keyboard(telegram, ada, "Current model: model-tiny")
    assert labels == ["model-tiny (openai)", "model-large (openai)", "model-small (openai)"]

    ada.send("which model are you?")
    await ada.wait_text(r"echo: which model are you\?", within=30)
    chat = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    assert (chat[-1].key, chat[-1].body["model"]) == (key, "model-tiny")


async def test_status_names_the_state_and_the_model_and_counts_attempts(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up(ada, "Anthropic")

    ada.send("/status")
    before = await ada.wait_text("Plan:")
    assert "trial" not in before.lower(), before
    assert "default" not in before.lower(), before
    assert "Account: waiting for your API key" in before, before
    assert "Model: none until you add a key" in before, before

    ada.reply_to_prompt("sk-ant-not-a-key")
    first = await ada.wait_text("doesn't look like")
    assert "2 more times" in first and "time(s)" not in first, first
    ada.reply_to_prompt("sk-ant-still-not-a-key")
    await eventually(
        within=30,
        predicate=lambda: "1 more time " in "\n".join(ada.texts()),
        message=lambda: "\n".join(ada.texts()),
    )

    ada.reply_to_prompt(key)
    await ada.wait_text("Key saved")
    ada.send("/status")
    await eventually(within=30, predicate=lambda: sum("Plan:" in t for t in ada.texts()) >= 2)
    after = [t for t in ada.texts() if "Plan:" in t][-1]
    assert "Account: active" in after, after
    assert "Model: model-large (Anthropic's default)" in after, after
    assert "default" not in after.replace("Anthropic's default", ""), after
