"""The live key check is no oracle: through ``byokbot run``, one person hits the hourly bound."""

from __future__ import annotations

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import prompts, sign_up_byok, start_bot, wait_prompts


def _checks(llm: FakeLLMServer) -> int:
    return sum(1 for r in llm.requests if r.path == "/v1/models")


BOUND = "at most 4 keys per person per hour"


async def _wait_count(person: TelegramPerson, text: str, count: int) -> None:
    await eventually(
        lambda: sum(text in t for t in person.texts()) >= count,
        message=lambda: "\n---\n".join(person.texts()),
    )


async def test_one_person_opening_sessions_hits_the_hourly_bound(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"core": {"live_checks_per_hour": 4, "live_checks_per_hour_total": 100}})
    llm.valid_keys = set()  # every key the attacker tries is somebody else's, refused
    await start_bot(tg_ws)
    await sign_up_byok(ada)

    tried = 0
    for session in range(3):  # 3 tries per session, sessions opened again and again
        if session:
            before = prompts(ada)
            ada.send("/key add anthropic")
            await wait_prompts(ada, before + 1)
        for _ in range(3):
            guess = anthropic_key()
            canaries.add(guess)
            ada.reply_to_prompt(guess)
            tried += 1
            if tried <= 4:
                await _wait_count(ada, "refused that key", tried)
                assert _checks(llm) == tried
            else:
                break
        if tried > 4:
            break

    await _wait_count(ada, BOUND, 1)
    refusal = await ada.wait_text(BOUND)
    assert "Try again in 60 minute(s)" in refusal or "Try again in 59 minute(s)" in refusal
    assert _checks(llm) == 4

    # More sessions change nothing: the provider is not asked again.
    before = prompts(ada)
    ada.send("/key add anthropic")
    await wait_prompts(ada, before + 1)
    guess = anthropic_key()
    canaries.add(guess)
    ada.reply_to_prompt(guess)
    await _wait_count(ada, BOUND, 2)
    assert _checks(llm) == 4
