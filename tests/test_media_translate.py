"""Media on each platform become messages with ``attachments`` (kinds only).

Fed recorded payload shapes: Discord MESSAGE_CREATE, Slack ``file_share`` events, Telegram
updates.
"""

from __future__ import annotations

from typing import Any

from telegram import Bot, Update

from adapters.discord import translate as discord_t
from adapters.slack import translate as slack_t
from adapters.telegram import translate as telegram_t
from core.chat import AttachmentKind, EventKind

# -- Discord ------------------------------------------------------------------------------

BOT = "1300000000000000001"
ALICE = {"id": "1100000000000000001", "username": "alice", "global_name": "Alice", "bot": False}
CDN = "https://cdn.discordapp.com/attachments/1200000000000000003/1180000000000000001"


def discord_dm(content: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "id": "1700000000000000001",
        "type": 0,
        "channel_id": "1200000000000000003",
        "author": ALICE,
        "content": content,
        "mentions": [],
        "attachments": [],
        "flags": 0,
        **extra,
    }


PNG = {
    "id": "1180000000000000001",
    "filename": "cat.png",
    "size": 48213,
    "url": f"{CDN}/cat.png",
    "proxy_url": f"{CDN}/cat.png",
    "width": 800,
    "height": 600,
    "content_type": "image/png",
}
VOICE_CLIP = {
    "id": "1180000000000000002",
    "filename": "voice-message.ogg",
    "size": 9120,
    "url": f"{CDN}/voice-message.ogg",
    "proxy_url": f"{CDN}/voice-message.ogg",
    "content_type": "audio/ogg",
    "duration_secs": 3.2,
    "waveform": "AAAAGBgYGBgYAAAA",
}
PDF = {
    "id": "1180000000000000003",
    "filename": "report.pdf",
    "size": 120331,
    "url": f"{CDN}/report.pdf",
    "proxy_url": f"{CDN}/report.pdf",
    "content_type": "application/pdf",
}
STICKER = {"id": "749054660769218631", "name": "Wave", "format_type": 3}


def test_discord_photo_without_text_is_a_message_with_a_photo() -> None:
    event = discord_t.message_to_event(discord_dm(attachments=[PNG]), bot_id=BOT)
    assert event is not None
    assert (event.kind, event.text, event.attachments, event.addressed) == (
        EventKind.MESSAGE,
        "",
        (AttachmentKind.PHOTO,),
        True,
    )


def test_discord_voice_message_file_and_sticker() -> None:
    voice = discord_t.message_to_event(discord_dm(attachments=[VOICE_CLIP], flags=8192), bot_id=BOT)
    assert voice is not None and voice.attachments == (AttachmentKind.VOICE,)
    song = {**VOICE_CLIP, "filename": "song.mp3", "content_type": "audio/mpeg"}
    del song["waveform"], song["duration_secs"]
    audio = discord_t.message_to_event(discord_dm(attachments=[song]), bot_id=BOT)
    assert audio is not None and audio.attachments == (AttachmentKind.AUDIO,)
    pdf = discord_t.message_to_event(discord_dm(attachments=[PDF]), bot_id=BOT)
    assert pdf is not None and pdf.attachments == (AttachmentKind.DOCUMENT,)
    untyped = discord_t.message_to_event(
        discord_dm(attachments=[{**PDF, "content_type": None}]), bot_id=BOT
    )
    assert untyped is not None and untyped.attachments == (AttachmentKind.DOCUMENT,)
    sticker = discord_t.message_to_event(discord_dm(sticker_items=[STICKER]), bot_id=BOT)
    assert sticker is not None and sticker.attachments == (AttachmentKind.STICKER,)


def test_discord_caption_is_the_text_and_kinds_are_listed_once() -> None:
    event = discord_t.message_to_event(
        discord_dm("what is this?", attachments=[PNG, {**PNG, "id": "2"}, PDF]), bot_id=BOT
    )
    assert event is not None
    assert (event.text, event.attachments) == (
        "what is this?",
        (AttachmentKind.PHOTO, AttachmentKind.DOCUMENT),
    )
    # Nothing about the file itself reaches the event.
    assert "cat.png" not in repr(event) and "cdn.discordapp" not in repr(event)


def test_discord_media_in_a_guild_is_addressed_only_like_text() -> None:
    chatter = discord_t.message_to_event(
        discord_dm(attachments=[PNG], guild_id="1200000000000000001"), bot_id=BOT
    )
    assert chatter is not None and chatter.addressed is False
    assert discord_t.message_to_event(discord_dm(), bot_id=BOT) is None


# -- Slack --------------------------------------------------------------------------------

SLACK_BOT = "U0BOT"


def slack_file(**extra: Any) -> dict[str, Any]:
    return {
        "id": "F0123ABCD",
        "created": 1515449522,
        "timestamp": 1515449522,
        "name": "image.png",
        "title": "image.png",
        "mimetype": "image/png",
        "filetype": "png",
        "pretty_type": "PNG",
        "user": "U061F7AUR",
        "mode": "hosted",
        "url_private": "https://files.slack.com/files-pri/T061EG9R6-F0123ABCD/image.png",
        "size": 12345,
        **extra,
    }


def file_share(text: str, *files: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "subtype": "file_share",
        "text": text,
        "files": list(files),
        "upload": False,
        "user": "U061F7AUR",
        "display_as_bot": False,
        "ts": "1515449522.000016",
        "channel": "D0PNCRP9N",
        "event_ts": "1515449522.000016",
        "channel_type": "im",
    }


def test_slack_shared_image_without_text() -> None:
    event = slack_t.message_event(file_share("", slack_file()), bot_user_id=SLACK_BOT, event_id="e")
    assert event is not None
    assert (event.text, event.attachments, event.addressed) == (
        "",
        (AttachmentKind.PHOTO,),
        True,
    )
    assert "files.slack.com" not in repr(event)


def test_slack_audio_clip_document_and_caption() -> None:
    clip = slack_file(
        name="audio_message.webm", mimetype="audio/webm", filetype="webm", subtype="slack_audio"
    )
    pdf = slack_file(name="report.pdf", mimetype="application/pdf", filetype="pdf")
    voice = slack_t.message_event(file_share("", clip), bot_user_id=SLACK_BOT, event_id="e")
    assert voice is not None and voice.attachments == (AttachmentKind.VOICE,)
    both = slack_t.message_event(
        file_share("summarise this", pdf, slack_file()), bot_user_id=SLACK_BOT, event_id="e"
    )
    assert both is not None
    assert (both.text, both.attachments) == (
        "summarise this",
        (AttachmentKind.DOCUMENT, AttachmentKind.PHOTO),
    )
    plain = slack_t.message_event(
        {**file_share("hi"), "subtype": None, "files": []}, bot_user_id=SLACK_BOT, event_id="e"
    )
    assert plain is not None and plain.attachments == ()


# -- Telegram -----------------------------------------------------------------------------


def telegram_update(**media: Any) -> Update:
    body = {
        "update_id": 1001,
        "message": {
            "message_id": 7,
            "date": 1_780_000_000,
            "chat": {"id": 4242, "type": "private", "first_name": "Ada"},
            "from": {"id": 4242, "is_bot": False, "first_name": "Ada"},
            **media,
        },
    }
    update = Update.de_json(body, Bot("1:x"))
    assert update is not None
    return update


def _file(**extra: Any) -> dict[str, Any]:
    return {"file_id": "AgAD1", "file_unique_id": "u1", "file_size": 10, **extra}


def test_telegram_media_kinds_and_caption() -> None:
    cases = [
        ({"photo": [_file(width=90, height=67)]}, AttachmentKind.PHOTO),
        ({"voice": _file(duration=2)}, AttachmentKind.VOICE),
        ({"audio": _file(duration=200)}, AttachmentKind.AUDIO),
        ({"video_note": _file(length=240, duration=5)}, AttachmentKind.VIDEO),
        ({"document": _file(file_name="a.pdf")}, AttachmentKind.DOCUMENT),
        (
            {"animation": _file(width=1, height=1, duration=1), "document": _file()},
            AttachmentKind.VIDEO,
        ),
        (
            {
                "sticker": _file(
                    type="regular", width=512, height=512, is_animated=False, is_video=False
                )
            },
            AttachmentKind.STICKER,
        ),
    ]
    for media, kind in cases:
        event = telegram_t.to_event(telegram_update(**media), bot_id=1, bot_username="b")
        assert event is not None, media
        assert (event.kind, event.text, event.attachments) == (EventKind.MESSAGE, "", (kind,))
    captioned = telegram_t.to_event(
        telegram_update(photo=[_file(width=1, height=1)], caption="look"),
        bot_id=1,
        bot_username="b",
    )
    assert captioned is not None
    assert (captioned.text, captioned.attachments) == ("look", (AttachmentKind.PHOTO,))


def test_telegram_service_messages_are_still_not_events() -> None:
    joined = telegram_update(new_chat_members=[{"id": 5, "is_bot": False, "first_name": "B"}])
    assert telegram_t.to_event(joined, bot_id=1, bot_username="b") is None
    text = telegram_t.to_event(telegram_update(text="hi"), bot_id=1, bot_username="b")
    assert text is not None and text.attachments == ()


def test_telegram_voice_and_audio_carry_their_duration() -> None:
    voice = telegram_t.to_event(
        telegram_update(voice=_file(duration=2)), bot_id=1, bot_username="b"
    )
    song = telegram_t.to_event(
        telegram_update(audio=_file(duration=200)), bot_id=1, bot_username="b"
    )
    assert voice is not None and song is not None
    assert [f.seconds for f in voice.files] == [2.0]
    assert [f.seconds for f in song.files] == [200.0]


def test_a_discord_voice_message_carries_its_duration() -> None:
    voice = discord_t.message_to_event(discord_dm(attachments=[VOICE_CLIP], flags=8192), bot_id=BOT)
    photo = discord_t.message_to_event(discord_dm(attachments=[PNG]), bot_id=BOT)
    assert voice is not None and photo is not None
    assert [f.seconds for f in voice.files] == [3.2]
    assert [f.seconds for f in photo.files] == [None]
