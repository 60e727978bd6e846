"""Unit tests of adapters.telegram.translate on recorded Bot API payloads."""

from __future__ import annotations

import html
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from telegram import Update

from adapters.telegram import translate
from core.chat import (
    OPEN_DM_PAYLOAD,
    Button,
    ButtonStyle,
    ChatRef,
    Event,
    EventKind,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)

BOT_ID = 777000111
BOT = "byok_test_bot"
ADA = {"id": 42, "is_bot": False, "first_name": "Ada", "last_name": "L", "username": "ada"}
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "BYOK", "username": BOT}


def update(body: dict[str, Any], update_id: int = 900) -> Update:
    return Update.de_json({"update_id": update_id, **body}, None)


def private(text: str, **extra: Any) -> dict[str, Any]:
    msg = {
        "message_id": 11,
        "date": 1780000000,
        "chat": {"id": 42, "type": "private", "first_name": "Ada"},
        "from": ADA,
        "text": text,
        **extra,
    }
    return {"message": msg}


def group(text: str, **extra: Any) -> dict[str, Any]:
    msg = {
        "message_id": 12,
        "date": 1780000000,
        "chat": {"id": -100555, "type": "supergroup", "title": "Team"},
        "from": ADA,
        "text": text,
        **extra,
    }
    return {"message": msg}


def event(body: dict[str, Any], update_id: int = 900) -> Event | None:
    return translate.to_event(update(body, update_id), bot_id=BOT_ID, bot_username=BOT)


ADA_REF = UserRef(Platform.TELEGRAM, "42", "Ada L")
DM = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
GROUP = ChatRef(Platform.TELEGRAM, "-100555", is_direct=False)


# ----- incoming ----------------------------------------------------------------------------


def test_dm_text_is_an_addressed_message() -> None:
    assert event(private("hello there")) == Event(
        EventKind.MESSAGE,
        ADA_REF,
        DM,
        text="hello there",
        message_id="11",
        event_id="telegram:update:900",
    )


def test_command_with_args() -> None:
    body = private(
        "/key add anthropic", entities=[{"type": "bot_command", "offset": 0, "length": 4}]
    )
    assert event(body) == Event(
        EventKind.COMMAND,
        ADA_REF,
        DM,
        text="/key add anthropic",
        command="key",
        args=("add", "anthropic"),
        message_id="11",
        event_id="telegram:update:900",
    )


def test_deep_link_start_payload() -> None:
    got = event(private("/start key_7f3a"))
    assert got is not None
    assert (got.kind, got.command, got.args) == (EventKind.COMMAND, "start", ("key_7f3a",))


def test_group_command_with_our_bot_suffix_and_upper_case() -> None:
    got = event(group("/Plan@BYOK_Test_Bot managed"))
    assert got is not None
    assert (got.kind, got.command, got.args, got.chat) == (
        EventKind.COMMAND,
        "plan",
        ("managed",),
        GROUP,
    )


def test_group_command_for_another_bot_is_an_unaddressed_message() -> None:
    got = event(group("/plan@other_bot"))
    assert got is not None
    assert (got.kind, got.addressed, got.text) == (EventKind.MESSAGE, False, "/plan@other_bot")


def test_group_message_without_mention_is_delivered_unaddressed() -> None:
    got = event(group("sk-ant-api03-looks-like-a-key"))
    assert got is not None
    assert (got.kind, got.addressed, got.message_id, got.text) == (
        EventKind.MESSAGE,
        False,
        "12",
        "sk-ant-api03-looks-like-a-key",
    )


def test_group_mention_is_addressed_and_stripped() -> None:
    body = group(
        "@byok_test_bot what is 2+2?", entities=[{"type": "mention", "offset": 0, "length": 14}]
    )
    got = event(body)
    assert got is not None
    assert (got.addressed, got.text) == (True, "what is 2+2?")


def test_group_mention_of_someone_else_is_not_addressed() -> None:
    body = group("@bob look", entities=[{"type": "mention", "offset": 0, "length": 4}])
    got = event(body)
    assert got is not None
    assert (got.addressed, got.text) == (False, "@bob look")


def test_group_reply_to_the_bot_is_addressed() -> None:
    replied = {
        "message_id": 5,
        "date": 1780000000,
        "chat": {"id": -100555, "type": "supergroup", "title": "Team"},
        "from": BOT_USER,
        "text": "earlier answer",
    }
    got = event(group("and then?", reply_to_message=replied))
    assert got is not None
    assert (got.addressed, got.text, got.reply_to) == (True, "and then?", "5")


def test_dm_reply_to_the_bot_carries_the_replied_message_id() -> None:
    prompt = {
        "message_id": 7,
        "date": 1780000000,
        "chat": {"id": 42, "type": "private", "first_name": "Ada"},
        "from": BOT_USER,
        "text": "Your Anthropic API key",
    }
    got = event(private("sk-ant-...", reply_to_message=prompt))
    assert got is not None and got.reply_to == "7"
    # A reply to someone else's message (a forwarded one, one's own) is no answer to a prompt.
    own = {**prompt, "from": ADA}
    got = event(private("see above", reply_to_message=own))
    assert got is not None and got.reply_to is None
    got = event(private("plain"))
    assert got is not None and got.reply_to is None


def test_forum_topic_root_is_not_a_reply_to_the_bot() -> None:
    root = {
        "message_id": 3,
        "date": 1780000000,
        "chat": {"id": -100555, "type": "supergroup", "title": "Team", "is_forum": True},
        "from": BOT_USER,
        "forum_topic_created": {"name": "Agents", "icon_color": 7322096},
    }
    body = group("chatting in a topic", reply_to_message=root)
    body["message"].update(message_thread_id=3, is_topic_message=True)
    got = event(body)
    assert got is not None
    assert (got.addressed, got.chat.thread_id, got.reply_to) == (False, "3", None)


def test_edited_message_reaches_only_the_leak_guard() -> None:
    body = {
        "edited_message": {
            "message_id": 11,
            "date": 1780000000,
            "edit_date": 1780000100,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"},
            "from": ADA,
            "text": "/key sk-ant-api03-x",
        }
    }
    got = event(body)
    assert got is not None
    assert (got.kind, got.addressed, got.text) == (EventKind.MESSAGE, False, "/key sk-ant-api03-x")


def test_other_bots_never_address_ours() -> None:
    other = {"id": 555, "is_bot": True, "first_name": "Echo", "username": "echo_bot"}
    for text in ("/plan@byok_test_bot byok", "@byok_test_bot hello"):
        body = group(text, **{"from": other})
        got = event(body)
        assert got is not None
        assert (got.kind, got.addressed, got.text) == (EventKind.MESSAGE, False, text)


def test_caption_is_read_as_text() -> None:
    body = group("")
    del body["message"]["text"]
    body["message"]["photo"] = [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]
    body["message"]["caption"] = "my key sk-proj-abc"
    got = event(body)
    assert got is not None
    assert (got.kind, got.text, got.addressed) == (EventKind.MESSAGE, "my key sk-proj-abc", False)


def test_sticker_and_service_messages_are_ignored() -> None:
    body = private("")
    del body["message"]["text"]
    body["message"]["new_chat_members"] = [ADA]
    assert event(body) is None


def test_button_press() -> None:
    body = {
        "callback_query": {
            "id": "4411",
            "from": ADA,
            "chat_instance": "-77",
            "data": "ab12cd34:plan:byok",
            "message": {
                "message_id": 31,
                "date": 1780000000,
                "chat": {"id": -100555, "type": "supergroup", "title": "Team"},
                "from": BOT_USER,
                "text": "Pick a plan",
            },
        }
    }
    assert event(body, 901) == Event(
        EventKind.BUTTON,
        ADA_REF,
        GROUP,
        payload="ab12cd34:plan:byok",
        message_id="31",
        event_id="telegram:update:901",
    )


def test_game_callback_without_data_is_ignored() -> None:
    body = {
        "callback_query": {
            "id": "1",
            "from": ADA,
            "chat_instance": "x",
            "game_short_name": "g",
        }
    }
    assert event(body) is None


def membership(status: str) -> Update:
    return update(
        {
            "my_chat_member": {
                "chat": {"id": 42, "type": "private", "first_name": "Ada"},
                "from": ADA,
                "date": 1780000000,
                "old_chat_member": {"status": "member", "user": BOT_USER},
                "new_chat_member": (
                    {"status": status, "user": BOT_USER, "until_date": 0}
                    if status == "kicked"
                    else {"status": status, "user": BOT_USER}
                ),
            }
        }
    )


def test_blocking_and_unblocking_the_bot() -> None:
    assert translate.reachability(membership("kicked")) == ("42", False)
    assert translate.reachability(membership("member")) == ("42", True)
    assert translate.reachability(update(private("hi"))) is None
    assert translate.to_event(membership("kicked"), bot_id=BOT_ID, bot_username=BOT) is None


# ----- outgoing ----------------------------------------------------------------------------


def test_buttons_become_an_inline_keyboard() -> None:
    reply = Reply(
        "Pick a plan",
        buttons=(
            (Button("BYOK", "t:plan:byok", ButtonStyle.PRIMARY), Button("Managed", "t:plan:m")),
            (Button("Open DM", "@open-dm:key"), Button("Docs", "https://example.org/docs")),
            (Button("Start", OPEN_DM_PAYLOAD),),
        ),
    )
    (out,) = translate.outgoing(reply, bot_username=BOT)
    markup = out.kwargs["reply_markup"].to_dict()
    assert markup == {
        "inline_keyboard": [
            [
                {"text": "BYOK", "callback_data": "t:plan:byok", "style": "primary"},
                {"text": "Managed", "callback_data": "t:plan:m"},
            ],
            [
                {"text": "Open DM", "url": "https://t.me/byok_test_bot?start=key"},
                {"text": "Docs", "url": "https://example.org/docs"},
            ],
            [{"text": "Start", "url": "https://t.me/byok_test_bot"}],
        ]
    }
    assert out.kwargs["text"] == "Pick a plan"


def test_payload_over_64_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="65 bytes"):
        translate.outgoing(Reply("x", buttons=((Button("b", "p" * 65),),)), bot_username=BOT)


def test_sensitive_reply_is_protected() -> None:
    (out,) = translate.outgoing(Reply("fingerprint ab:cd", sensitive=True), bot_username=BOT)
    assert out.kwargs == {"text": "fingerprint ab:cd", "protect_content": True}


def test_markdown_reply_is_html_with_plain_fallback() -> None:
    (out,) = translate.outgoing(Reply("**Hi** <you>", format=TextFormat.MARKDOWN), bot_username=BOT)
    assert out.kwargs == {"text": "<b>Hi</b> &lt;you&gt;", "parse_mode": "HTML"}
    assert out.plain == "**Hi** <you>"


def test_long_reply_is_split_with_buttons_on_the_last_part() -> None:
    text = ("word " * 1000).strip()  # 4999 characters
    parts = translate.outgoing(
        Reply(text, buttons=((Button("ok", "ok"),),)), bot_username=BOT, limit=4096
    )
    assert [len(p.kwargs["text"]) for p in parts] == [4094, 904]
    assert ["reply_markup" in p.kwargs for p in parts] == [False, True]
    assert " ".join(p.kwargs["text"] for p in parts) == text


def test_secret_prompt_uses_force_reply_and_protection() -> None:
    request = SecretRequest(
        token="tok-never-shown",
        provider="anthropic",
        title="Anthropic API key",
        prompt="Reply with your key <only here>.",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    kwargs = translate.secret_prompt(request)
    assert kwargs["text"] == "<b>Anthropic API key</b>\n\nReply with your key &lt;only here&gt;."
    assert kwargs["protect_content"] is True
    assert kwargs["reply_markup"].to_dict() == {
        "force_reply": True,
        "selective": True,
        "input_field_placeholder": "Anthropic API key",
    }
    assert "tok-never-shown" not in str(kwargs)


# ----- splitting ---------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_lines_then_spaces() -> None:
    text = "aaaa bbbb\n\ncccc dddd\neeee"
    assert translate.split_text(text, 16) == ["aaaa bbbb", "cccc dddd\neeee"]
    assert translate.split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]


def test_split_never_breaks_a_word_unless_it_is_longer_than_the_limit() -> None:
    words = [f"w{i:03d}" for i in range(300)]
    parts = translate.split_text(" ".join(words), 100)
    assert all(len(p) <= 100 for p in parts)
    assert " ".join(parts).split() == words
    assert translate.split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_split_counts_utf16_units() -> None:
    text = "\U0001f600" * 6  # each emoji is two UTF-16 units
    assert translate.split_text(text, 4) == ["\U0001f600" * 2] * 3


def test_split_closes_and_reopens_a_code_fence() -> None:
    code = "\n".join(f"line {i}" for i in range(30))
    parts = translate.split_text(f"intro\n```python\n{code}\n```\nafter", 120)
    assert all(translate.utf16_len(p) <= 120 for p in parts)
    assert parts[0].startswith("intro\n```python\n")
    for part in parts:
        assert part.count("```") % 2 == 0
    assert all(p.startswith("```python\n") for p in parts[1:-1])
    rendered = [translate.render_markdown(p) for p in parts]
    assert all(r.count("<pre>") == r.count("</pre>") for r in rendered)


def test_split_keeps_inline_markup_whole() -> None:
    text = "aaaa bbbb cccc **dd ee** ff"
    assert translate.split_text(text, 24) == ["aaaa bbbb cccc", "**dd ee** ff"]
    assert translate.split_text("x y z `a b` w", 9) == ["x y z", "`a b` w"]


def test_split_keeps_code_indentation() -> None:
    code = "```python\n" + "\n".join(f"    line_{i} = {i}" for i in range(12)) + "\n```"
    parts = translate.split_text(code, 100)
    body = [line for p in parts for line in p.split("\n") if not line.startswith("```")]
    assert body == [f"    line_{i} = {i}" for i in range(12)]


def test_split_empty_text_gives_nothing() -> None:
    assert translate.split_text("") == []


# ----- Markdown ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("plain & <tags>", "plain &amp; &lt;tags&gt;"),
        ("**bold** and *it* and _it_", "<b>bold</b> and <i>it</i> and <i>it</i>"),
        ("~~gone~~ `a<b`", "<s>gone</s> <code>a&lt;b</code>"),
        ("# Title\n- one\n* two", "<b>Title</b>\n\u2022 one\n\u2022 two"),
        ("[site](https://x.org/a_b?q=1&r=2)", '<a href="https://x.org/a_b?q=1&amp;r=2">site</a>'),
        ("[`code`](https://x.org)", '<a href="https://x.org"><code>code</code></a>'),
        (
            "```python\nif a < b:\n    pass\n```",
            '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>',
        ),
        ("```\nunterminated <", "<pre><code>unterminated &lt;</code></pre>"),
        ("2 * 3 * 4 and snake_case_name", "2 * 3 * 4 and snake_case_name"),
        ("**unbalanced", "**unbalanced"),
        ("https://x.org/a_b_c", "https://x.org/a_b_c"),
        ("nul\x00byte", "nulbyte"),
        (
            "> quoted **line**\n> second\nafter",
            "<blockquote>quoted <b>line</b>\nsecond</blockquote>\nafter",
        ),
        ("a > b and 1 < 2", "a &gt; b and 1 &lt; 2"),
    ],
)
def test_render_markdown(markdown: str, expected: str) -> None:
    assert translate.render_markdown(markdown) == expected


def test_deep_link_quotes_the_payload() -> None:
    assert translate.deep_link(BOT, "a b") == "https://t.me/byok_test_bot?start=a%20b"
    assert translate.deep_link(BOT) == "https://t.me/byok_test_bot"


def test_render_markdown_never_produces_unbalanced_tags_or_longer_text() -> None:
    # Deterministic fuzzing over the characters Markdown and HTML care about.
    rng = random.Random(20261128)
    alphabet = ["*", "**", "_", "__", "~~", "`", "```", "[", "]", "(", ")", "<", ">", "&", "#"]
    alphabet += ["\n", " ", "a", "b", "https://x.org/a_b", "> ", "- ", "\U0001f600"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        out = translate.render_markdown(text)
        for tag in ("b", "i", "s", "code", "pre", "a", "blockquote"):
            opened = len(re.findall(rf"<{tag}[ >]", out))
            assert opened == out.count(f"</{tag}>"), (text, out)
        visible = html.unescape(re.sub(r"<[^>]+>", "", out))
        assert translate.utf16_len(visible) <= translate.utf16_len(text), (text, out)


def test_text_link_targets_reach_the_leak_guard() -> None:
    body = private(
        "see the doc",
        entities=[
            {"type": "text_link", "offset": 8, "length": 3, "url": "https://ex.test/?k=sk-ant-x"},
            {"type": "bold", "offset": 0, "length": 3},
        ],
    )
    got = event(body)
    assert got is not None
    assert got.links == ("https://ex.test/?k=sk-ant-x",)
    assert "sk-ant" not in repr(got)
    caption = {
        "message": {
            "message_id": 13,
            "date": 1780000000,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"},
            "from": ADA,
            "photo": [{"file_id": "p", "file_unique_id": "u", "width": 1, "height": 1}],
            "caption": "look",
            "caption_entities": [
                {"type": "text_link", "offset": 0, "length": 4, "url": "https://ex.test/c"}
            ],
        }
    }
    got = event(caption)
    assert got is not None
    assert got.links == ("https://ex.test/c",)
    plain = event(private("no links"))
    assert plain is not None and plain.links == ()
