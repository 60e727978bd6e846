"""``name_commands``: the core's texts in the syntax of a platform with one slash command."""

from __future__ import annotations

import re

import pytest

from bot import texts
from core.chat import name_commands


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Send /start to begin.", "Send /byok start to begin."),
        ("Use /key add <provider>, /key rotate", "Use /byok key add <provider>, /byok key rotate"),
        ("“/plan byok” (/help)", "“/byok plan byok” (/byok help)"),
        ("/byok key add x", "/byok key add x"),  # already in Slack's syntax: unchanged
        ("$15/mo, in/out, 24/7", "$15/mo, in/out, 24/7"),
        ("https://slack.com/app_redirect?app=A1 and /v1/models", None),
    ],
)
def test_commands_are_named_with_the_slash_command(text: str, expected: str | None) -> None:
    assert name_commands(text, "/byok") == (text if expected is None else expected)


def test_it_is_idempotent_and_covers_the_help() -> None:
    once = name_commands(texts.HELP, "/ai")
    assert name_commands(once, "/ai") == once
    assert "/ai key add <provider>" in once and "/ai start" in once
    assert not re.findall(r"(?<![\w/])(?<!/ai )/(?!ai\b)[a-z]+", once), once
