"""The bot's command hints in Discord's slash command syntax (``adapters.discord.syntax``)."""

from __future__ import annotations

import pytest

from adapters.discord import syntax, translate

REWRITE = syntax.from_definitions(
    translate.command_definitions(("anthropic", "openai")),
    {"plan": ("byok", "managed"), "name": ("model-large",)},
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Send /key add <provider> now", "Send /key add provider:<provider> now"),
        ("Send /key add anthropic to start", "Send /key add provider:anthropic to start"),
        (
            "/key rotate <provider>, /key remove <provider> or /key list.",
            "/key rotate provider:<provider>, /key remove provider:<provider> or /key list.",
        ),
        ("switch keys with /key rotate.", "switch keys with /key rotate."),
        ("e.g. /persona You are terse.", "e.g. /persona text:You are terse."),
        ("clear it with /persona clear.", "clear it with /persona text:clear."),
        ("you can also /plan to switch", "you can also /plan to switch"),
        ("with /plan byok.", "with /plan plan:byok."),
        (
            "/admin suspend <tenant> · /admin resume <tenant>",
            "/admin args:suspend <tenant> · /admin args:resume <tenant>",
        ),
        ("/link ABCD on the other app", "/link ABCD on the other app"),
        ("Send /start or /help.", "Send /start or /help."),
        ("see https://x.example/key add anthropic", "see https://x.example/key add anthropic"),
        ("/unknown add anthropic", "/unknown add anthropic"),
        ("/key add someone", "/key add someone"),
    ],
)
def test_hints_name_the_option(text: str, expected: str) -> None:
    assert REWRITE(text) == expected
