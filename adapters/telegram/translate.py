"""Pure translation between Telegram updates and the neutral chat model, and back.

Nothing here does I/O: ``to_event`` reads a python-telegram-bot ``Update``; ``outgoing`` turns
a ``Reply`` into ``send_message`` keyword arguments (split at Telegram's limit, Markdown
rendered to Telegram HTML with a plain-text twin for the fallback); ``render_markdown`` and
``split_once`` are used by streaming too.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import quote

from telegram import (
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    Update,
)
from telegram.constants import ChatType, KeyboardButtonStyle, ParseMode

from core.chat import (
    OPEN_DM_PAYLOAD,
    AttachmentKind,
    Button,
    ButtonStyle,
    ChatRef,
    Event,
    EventKind,
    FileRef,
    PaymentInfo,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)

MESSAGE_LIMIT: Final = 4096
"""Telegram's message length, in UTF-16 code units after entity parsing."""
CAPTION_LIMIT: Final = 1024
CALLBACK_DATA_LIMIT: Final = 64

_COMMAND: Final = re.compile(r"/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?", re.DOTALL)
_STYLES: Final = {
    ButtonStyle.PRIMARY: KeyboardButtonStyle.PRIMARY.value,
    ButtonStyle.DANGER: KeyboardButtonStyle.DANGER.value,
}


def event_id(update_id: int) -> str:
    """The delivery key of one update, used for deduplication and in ``Event.event_id``."""
    return f"telegram:update:{update_id}"


def _user_ref(user: Any) -> UserRef:
    return UserRef(Platform.TELEGRAM, str(user.id), user.full_name or user.username or "")


def _chat_ref(message: Message) -> ChatRef:
    thread = str(message.message_thread_id) if message.is_topic_message else None
    return ChatRef(
        Platform.TELEGRAM,
        str(message.chat.id),
        is_direct=message.chat.type == ChatType.PRIVATE,
        thread_id=thread,
    )


def _is_reply_to_bot(message: Message, bot_id: int) -> bool:
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.id != bot_id:
        return False
    # In a forum topic every message "replies" to the topic's first message; that is no reply.
    return not (message.is_topic_message and replied.message_id == message.message_thread_id)


def _mentions_bot(message: Message, bot_id: int, bot_username: str) -> bool:
    entities = (
        message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
        if message.text
        else message.parse_caption_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
    )
    for entity, text in entities.items():
        if entity.type == MessageEntity.MENTION and text.lower() == f"@{bot_username}".lower():
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot_id:
            return True
    return False


def _strip_mention(text: str, bot_username: str) -> str:
    stripped = re.sub(rf"@{re.escape(bot_username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip()


def _hidden_links(message: Message) -> tuple[str, ...]:
    """The targets of ``text_link`` entities: a URL behind a label can hide a key."""
    entities = message.entities or message.caption_entities or ()
    return tuple(e.url for e in entities if e.type == MessageEntity.TEXT_LINK and e.url)


def attachments(message: Message) -> tuple[AttachmentKind, ...]:
    """The kinds of media on a message (a GIF is an animation *and* a document: one video)."""
    found: list[AttachmentKind] = []
    if message.photo:
        found.append(AttachmentKind.PHOTO)
    if message.voice is not None:
        found.append(AttachmentKind.VOICE)
    if message.audio is not None:
        found.append(AttachmentKind.AUDIO)
    if message.video is not None or message.video_note is not None or message.animation is not None:
        found.append(AttachmentKind.VIDEO)
    if message.document is not None and message.animation is None:
        found.append(AttachmentKind.DOCUMENT)
    if message.sticker is not None:
        found.append(AttachmentKind.STICKER)
    return tuple(found)


def _seconds(duration: object) -> float | None:
    """A Bot API duration (a timedelta under PTB's opt-in, else whole seconds) in seconds."""
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
        return float(duration)
    return None


def files(message: Message) -> tuple[FileRef, ...]:
    """The downloadable media of a message: the largest photo size, a voice note, a file."""
    found: list[FileRef] = []
    if message.photo:
        best = max(message.photo, key=lambda p: p.width * p.height)
        found.append(FileRef(AttachmentKind.PHOTO, best.file_id, "", "", best.file_size))
    if message.voice is not None:
        v = message.voice
        found.append(
            FileRef(
                AttachmentKind.VOICE,
                v.file_id,
                "voice.ogg",
                v.mime_type or "",
                v.file_size,
                _seconds(v.duration),
            )
        )
    if message.audio is not None:
        a = message.audio
        name = a.file_name or "audio"
        found.append(
            FileRef(
                AttachmentKind.AUDIO,
                a.file_id,
                name,
                a.mime_type or "",
                a.file_size,
                _seconds(a.duration),
            )
        )
    if message.document is not None and message.animation is None:
        d = message.document
        name = d.file_name or ""
        found.append(
            FileRef(AttachmentKind.DOCUMENT, d.file_id, name, d.mime_type or "", d.file_size)
        )
    return tuple(found)


def to_event(update: Update, *, bot_id: int, bot_username: str) -> Event | None:
    """Translate one update, or None for what the bot does not act on (joins, pins...).

    A photo, voice note, file or sticker is a message with ``attachments`` (the caption, if
    any, as its text), so the person hears that the agent cannot read it yet.

    Edited messages and messages from other bots come through as unaddressed messages: the
    leak guard must see a key edited into a message or posted by a bot, but neither is a new
    request to the agent.
    """
    eid = event_id(update.update_id)
    checkout = update.pre_checkout_query
    if checkout is not None:
        user = _user_ref(checkout.from_user)
        return Event(
            EventKind.PAYMENT_CHECK,
            user,
            ChatRef(Platform.TELEGRAM, user.id, is_direct=True),
            event_id=eid,
            payment=PaymentInfo(
                currency=checkout.currency,
                amount=checkout.total_amount,
                payload=checkout.invoice_payload,
                charge_id=checkout.id,  # the query's id, answered with answerPreCheckoutQuery
            ),
        )
    paid = update.message.successful_payment if update.message is not None else None
    if paid is not None and update.message is not None and update.message.from_user is not None:
        user = _user_ref(update.message.from_user)
        return Event(
            EventKind.PAYMENT,
            user,
            _chat_ref(update.message),
            event_id=eid,
            message_id=str(update.message.message_id),
            payment=PaymentInfo(
                currency=paid.currency,
                amount=paid.total_amount,
                payload=paid.invoice_payload,
                charge_id=paid.telegram_payment_charge_id,
                provider_charge_id=paid.provider_payment_charge_id,
                expires_at=paid.subscription_expiration_date,
                recurring=bool(paid.is_recurring),
            ),
        )
    query = update.callback_query
    if query is not None:
        if query.data is None:  # a game button; byokbot sends none
            return None
        user = _user_ref(query.from_user)
        if query.message is not None:
            chat = ChatRef(
                Platform.TELEGRAM,
                str(query.message.chat.id),
                is_direct=query.message.chat.type == ChatType.PRIVATE,
            )
            mid: str | None = str(query.message.message_id)
        else:
            chat, mid = ChatRef(Platform.TELEGRAM, user.id, is_direct=True), None
        return Event(EventKind.BUTTON, user, chat, payload=query.data, message_id=mid, event_id=eid)
    edited = update.message is None
    message = update.message or update.edited_message
    if message is None or message.from_user is None:
        return None
    media = attachments(message) if message.text is None else ()
    text = message.text if message.text is not None else message.caption
    if text is None and not media:
        return None
    text = text or ""
    user = _user_ref(message.from_user)
    chat = _chat_ref(message)
    common: dict[str, Any] = {
        "message_id": str(message.message_id),
        "event_id": eid,
        "attachments": media,
        "files": files(message) if media else (),
    }
    links = _hidden_links(message)
    if links:
        common["links"] = links
    if _is_reply_to_bot(message, bot_id) and message.reply_to_message is not None:
        # A reply to the bot's key prompt is the awaited key (the flow compares the id).
        common["reply_to"] = str(message.reply_to_message.message_id)
    match = _COMMAND.fullmatch(text.strip()) if message.text is not None else None
    if match and not edited and not message.from_user.is_bot:
        target = match.group(2)
        if target is None or target.lower() == bot_username.lower():
            return Event(
                EventKind.COMMAND,
                user,
                chat,
                text=text,
                command=match.group(1).lower(),
                args=tuple((match.group(3) or "").split()),
                **common,
            )
        # A command for another bot in the same group: only the leak guard looks at it.
        return Event(EventKind.MESSAGE, user, chat, text=text, addressed=False, **common)
    if edited or message.from_user.is_bot:
        # Other bots never drive ours (no bot-to-bot loops); the leak guard still sees them.
        return Event(EventKind.MESSAGE, user, chat, text=text, addressed=False, **common)
    if chat.is_direct:
        return Event(EventKind.MESSAGE, user, chat, text=text, **common)
    mentioned = _mentions_bot(message, bot_id, bot_username)
    addressed = mentioned or _is_reply_to_bot(message, bot_id)
    if mentioned:
        text = _strip_mention(text, bot_username)
    return Event(EventKind.MESSAGE, user, chat, text=text, addressed=addressed, **common)


def reachability(update: Update) -> tuple[str, bool] | None:
    """``(chat id, reachable)`` when the bot's own membership changed, else None.

    Telegram reports a person blocking the bot (or the bot removed from a group) as the bot's
    status becoming ``kicked``/``left``, and unblocking or re-adding as ``member``.
    """
    change = update.my_chat_member
    if change is None:
        return None
    status = change.new_chat_member.status
    return str(change.chat.id), status not in ("kicked", "left")


# ----- outgoing ----------------------------------------------------------------------------


def deep_link(bot_username: str, start: str = "") -> str:
    """The t.me link that opens the bot's DM (and sends ``/start <start>`` when given)."""
    base = f"https://t.me/{bot_username}"
    return f"{base}?start={quote(start, safe='')}" if start else base


def _button(button: Button, *, bot_username: str) -> InlineKeyboardButton:
    # ``OPEN_DM_PAYLOAD`` (optionally ``:<start parameter>``) opens the bot's DM; an https
    # payload is a plain link. Everything else is callback data.
    style = _STYLES.get(button.style)
    payload = button.payload
    if payload == OPEN_DM_PAYLOAD or payload.startswith(OPEN_DM_PAYLOAD + ":"):
        start = payload.partition(":")[2]
        return InlineKeyboardButton(button.label, url=deep_link(bot_username, start), style=style)
    if payload.startswith(("https://", "http://")):
        return InlineKeyboardButton(button.label, url=payload, style=style)
    if len(payload.encode()) > CALLBACK_DATA_LIMIT:
        raise ValueError(f"button payload is {len(payload.encode())} bytes; Telegram allows 64")
    return InlineKeyboardButton(button.label, callback_data=payload, style=style)


def keyboard(
    rows: tuple[tuple[Button, ...], ...], *, bot_username: str
) -> InlineKeyboardMarkup | None:
    """Inline keyboard for ``Reply.buttons``; None when there are none."""
    built = [[_button(b, bot_username=bot_username) for b in row] for row in rows if row]
    return InlineKeyboardMarkup(built) if built else None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: ``kwargs`` for ``send_message``; ``plain`` if HTML is refused."""

    kwargs: dict[str, Any]
    plain: str


def outgoing(reply: Reply, *, bot_username: str, limit: int = MESSAGE_LIMIT) -> list[Outgoing]:
    """A reply as one or more ``send_message`` calls (without ``chat_id``).

    Long text is split between words; the buttons go on the last part. Sensitive replies are
    sent with ``protect_content`` so they cannot be forwarded or saved.
    """
    parts = split_text(reply.text, limit) or [""]
    markup = keyboard(reply.buttons, bot_username=bot_username)
    out: list[Outgoing] = []
    for i, part in enumerate(parts):
        kwargs: dict[str, Any] = {"text": part}
        if reply.format == TextFormat.MARKDOWN:
            kwargs = {"text": render_markdown(part), "parse_mode": ParseMode.HTML}
        if reply.sensitive:
            kwargs["protect_content"] = True
        if markup is not None and i == len(parts) - 1:
            kwargs["reply_markup"] = markup
        out.append(Outgoing(kwargs, part))
    return out


def secret_prompt(request: SecretRequest) -> dict[str, Any]:
    """``send_message`` kwargs for a secret request: ForceReply, protected, HTML-escaped."""
    title = html.escape(request.title)
    body = html.escape(request.prompt)
    return {
        "text": f"<b>{title}</b>\n\n{body}" if title else body,
        "parse_mode": ParseMode.HTML,
        "protect_content": True,
        "reply_markup": ForceReply(selective=True, input_field_placeholder=request.title[:64]),
    }


# ----- length and splitting ----------------------------------------------------------------


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The largest index ``i`` with ``utf16_len(text[:i]) <= limit``."""
    i = min(len(text), limit)
    while utf16_len(text[:i]) > limit:
        i -= max(1, (utf16_len(text[:i]) - limit) // 2)
    return i


def _open_fence(text: str) -> str | None:
    """The opening line of a code fence left open at the end of ``text``, else None."""
    opening: str | None = None
    for m in re.finditer(r"^```[^\n]*$", text, re.MULTILINE):
        opening = m.group(0) if opening is None else None
    return opening


def split_once(text: str, limit: int = MESSAGE_LIMIT) -> tuple[str, str]:
    """Cut ``text`` into a head within ``limit`` and the rest, between words.

    Prefers a paragraph break, then a line break, then a space, and among those a cut that
    leaves no bold, strike or inline code span open; a single word longer than the limit is
    cut hard. A code fence open at the cut is closed in the head and reopened in the rest, so
    each part renders on its own (indentation inside it is kept).
    """
    if utf16_len(text) <= limit:
        return text, ""
    # Room to close a code fence at the cut ("\n```") and to reopen it in the rest.
    reserve = 0
    if "```" in text:
        reserve = 8 + len(_open_fence(text[: _fit(text, limit)]) or "")
    window = max(1, _fit(text, max(1, limit - reserve)))
    head, rest = _cut(text, window)
    fence = _open_fence(head)
    if fence is not None:
        head, rest = f"{head}\n```", f"{fence}\n{rest}"
    return head, rest


def _cut(text: str, window: int) -> tuple[str, str]:
    """Cut within ``text[:window]`` at the best separator, keeping inline markup whole."""
    floor = window // 2
    fallback: tuple[str, str] | None = None
    for sep in ("\n\n", "\n", " "):
        end = window
        for _ in range(64):  # bounded: look at the last few candidates only
            cut = text.rfind(sep, floor, end)
            if cut <= 0:
                break
            rest = text[cut + len(sep) :]
            pair = text[:cut].rstrip(), rest.lstrip(" ") if sep == " " else rest.lstrip("\n")
            if _balanced(pair[0]):
                return pair
            fallback = fallback or pair
            end = cut
    # No clean break: the first candidate, or a hard cut through a word longer than the limit.
    return fallback or (text[:window], text[window:])


def _balanced(text: str) -> bool:
    """True if no bold, strike or inline code span is left open (code blocks aside)."""
    text = re.sub(r"```.*?(?:```|\Z)", "", text, flags=re.DOTALL)
    if text.count("`") % 2:
        return False
    text = re.sub(r"`[^`]*`", "", text)
    return text.count("**") % 2 == 0 and text.count("~~") % 2 == 0


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """All the parts of ``text``, each within ``limit``; empty text gives no parts."""
    parts: list[str] = []
    rest = text
    while rest:
        head, rest = split_once(rest, limit)
        if head:
            parts.append(head)
    return parts


# ----- Markdown to Telegram HTML -----------------------------------------------------------

_FENCE: Final = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_INLINE_CODE: Final = re.compile(r"`([^`\n]+)`")
_LINK: Final = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_QUOTE_BLOCK: Final = re.compile(r"(?:^&gt;[ \t]?.*(?:\n|$))+", re.MULTILINE)
_INLINE_RULES: Final = (
    (re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE), r"<b>\1</b>"),
    (re.compile(r"^([ \t]*)[-*][ \t]+", re.MULTILINE), "\\1\u2022 "),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL), r"<b>\1</b>"),
    (re.compile(r"(?<![\w_])__(?=\S)(.+?)(?<=\S)__(?![\w_])", re.DOTALL), r"<b>\1</b>"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"<s>\1</s>"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"), r"<i>\1</i>"),
    (re.compile(r"(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])"), r"<i>\1</i>"),
)


def _blockquote(match: re.Match[str]) -> str:
    block = match.group(0)
    lines = [re.sub(r"^&gt;[ \t]?", "", line) for line in block.rstrip("\n").split("\n")]
    tail = "\n" if block.endswith("\n") else ""
    return "<blockquote>" + "\n".join(lines) + "</blockquote>" + tail


def _inline(text: str, held: list[str]) -> str:
    def hold(fragment: str) -> str:
        held.append(fragment)
        return f"\x00{len(held) - 1}\x00"

    text = _INLINE_CODE.sub(lambda m: hold(f"<code>{html.escape(m.group(1))}</code>"), text)
    text = _LINK.sub(
        lambda m: hold(
            f'<a href="{html.escape(m.group(2), quote=True)}">{_inline(m.group(1), held)}</a>'
        ),
        text,
    )
    text = html.escape(text, quote=False)
    text = _QUOTE_BLOCK.sub(_blockquote, text)
    for pattern, replacement in _INLINE_RULES:
        text = pattern.sub(replacement, text)
    return text


def _render_inline(text: str) -> str:
    held: list[str] = []
    out = _inline(text, held)
    # Held fragments may hold placeholders themselves (code inside a link's text).
    while "\x00" in out:
        out = re.sub(r"\x00(\d+)\x00", lambda m: held[int(m.group(1))], out)
    return out


def render_markdown(text: str) -> str:
    """Render a model's Markdown as Telegram HTML.

    Everything is escaped first and only balanced tags are produced; markers without a partner
    stay literal. An unclosed code fence (a reply still streaming) renders as code to the end.
    """
    text = text.replace("\x00", "")
    out: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        out.append(_render_inline(text[pos : m.start()]))
        lang, code = m.group(1), m.group(2).rstrip("\n")
        attr = f' class="language-{lang}"' if lang else ""
        out.append(f"<pre><code{attr}>{html.escape(code, quote=False)}</code></pre>")
        pos = m.end()
    out.append(_render_inline(text[pos:]))
    return "".join(out)
