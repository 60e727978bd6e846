"""Pure translation between Discord payloads and the neutral chat model, both ways.

Inputs are Discord's own JSON shapes (an INTERACTION_CREATE or MESSAGE_CREATE ``d``), so the
unit tests feed recorded payloads. Outputs are ``core.chat.Event`` values, slash command
definitions, and the discord.py ``View``/``Modal`` objects a ``Reply`` or ``SecretRequest``
becomes. Nothing here does I/O.

Custom ids carry everything an interaction needs, so buttons and modals keep working after a
restart (no in-memory view registry): ``b:<payload>`` is a button, ``s:<token>`` opens the
secret modal, ``k:<token>`` is the modal itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import discord

from core.chat import (
    AttachmentKind,
    Button,
    ButtonStyle,
    ChatRef,
    Event,
    EventKind,
    FileRef,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
    is_link,
    is_open_dm,
)
from core.secret import Secret

MESSAGE_LIMIT: Final = 2000
BUTTON_PREFIX: Final = "b:"
OPEN_SECRET_PREFIX: Final = "s:"  # noqa: S105 - a custom id prefix
MODAL_PREFIX: Final = "k:"
SECRET_FIELD: Final = "secret"  # noqa: S105 - a form field name

# Interaction types (Discord API).
PING, APPLICATION_COMMAND, COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING = 1, 2, 3
# Message types that carry something a person typed: DEFAULT and REPLY.
_TEXT_MESSAGE_TYPES: Final = frozenset({0, 19})
# Channel types that are private with the bot: DM and group DM.
_DIRECT_CHANNEL_TYPES: Final = frozenset({1, 3})

_STYLES: Final = {
    ButtonStyle.DEFAULT: discord.ButtonStyle.secondary,
    ButtonStyle.PRIMARY: discord.ButtonStyle.primary,
    ButtonStyle.DANGER: discord.ButtonStyle.danger,
}

# Slash command descriptions are Discord metadata, shown in the command picker.
_SIMPLE_COMMANDS: Final = (
    ("start", "Sign up or see where you left off"),
    ("help", "What this bot can do"),
    ("status", "Your plan, key and agent at a glance"),
    ("usage", "Your usage this month"),
    ("reset", "Make your agent forget this conversation"),
    ("stop", "Stop the reply in progress"),
    ("pause", "Pause your agent"),
    ("resume", "Resume your agent"),
    ("memory", "What your agent remembers about you"),
    ("tasks", "Your scheduled reminders and tasks"),
    ("new", "Start a new conversation (the old one stays in /history)"),
    ("compact", "Summarise this conversation so far to free up context"),
    ("cancel", "Drop a pending key request or confirmation"),
    ("whoami", "Your id, as an operator's admin list names you"),
    ("delete", "Erase your account and everything stored for it"),
)


def _opt(
    name: str,
    description: str,
    *,
    required: bool = False,
    autocomplete: bool = False,
    choices: Sequence[str] = (),
) -> dict[str, Any]:
    opt: dict[str, Any] = {
        "type": STRING,
        "name": name,
        "description": description,
        "required": required,
    }
    if choices:
        opt["choices"] = [{"name": c, "value": c} for c in choices[:25]]
    elif autocomplete:
        opt["autocomplete"] = True
    return opt


def _command(name: str, description: str, options: list[dict[str, Any]]) -> dict[str, Any]:
    # contexts 0 (guild) and 1 (DM with the bot): every command works in both.
    return {
        "type": 1,
        "name": name,
        "description": description,
        "options": options,
        "contexts": [0, 1],
        "integration_types": [0],
    }


def command_definitions(providers: Sequence[str]) -> list[dict[str, Any]]:
    """The whole command set as Discord application command JSON, in a stable order."""
    provider = _opt("provider", "Which provider", required=True, choices=providers)
    key_subs = [
        {
            "type": SUB_COMMAND,
            "name": "add",
            "description": "Add a provider key",
            "options": [provider],
        },
        {
            "type": SUB_COMMAND,
            "name": "rotate",
            "description": "Replace a provider key",
            "options": [provider],
        },
        {
            "type": SUB_COMMAND,
            "name": "remove",
            "description": "Remove a provider key",
            "options": [provider],
        },
        {"type": SUB_COMMAND, "name": "list", "description": "List your keys", "options": []},
    ]
    server = _opt("name", "The server's short name, e.g. github", required=True)
    mcp_subs = [
        {
            "type": SUB_COMMAND,
            "name": "add",
            "description": "Connect an MCP server (its token is asked privately)",
            "options": [server, _opt("url", "https://server/mcp", required=True)],
        },
        {
            "type": SUB_COMMAND,
            "name": "rotate",
            "description": "Replace an MCP server's token",
            "options": [server],
        },
        {
            "type": SUB_COMMAND,
            "name": "remove",
            "description": "Remove an MCP server and its token",
            "options": [server],
        },
        {
            "type": SUB_COMMAND,
            "name": "list",
            "description": "List your MCP servers",
            "options": [],
        },
    ]
    defs = [_command(n, d, []) for n, d in _SIMPLE_COMMANDS]
    defs += [
        _command("plan", "See or choose a plan", [_opt("plan", "Plan id", autocomplete=True)]),
        _command("key", "Manage your provider keys", key_subs),
        _command("mcp", "Your MCP servers: their tools for your agent", mcp_subs),
        _command("model", "See or choose a model", [_opt("name", "Model", autocomplete=True)]),
        _command("persona", "See or set your agent's persona", [_opt("text", "New persona")]),
        _command("link", "Link this account to another platform", [_opt("code", "Link code")]),
        _command(
            "timezone", "Your time zone for scheduled tasks", [_opt("zone", "e.g. Europe/Paris")]
        ),
        _command(
            "history",
            "Your recent conversations: switch back, or export this one",
            [_opt("args", "export, or a conversation's number")],
        ),
        _command("admin", "Operator commands", [_opt("args", "e.g. tenants, suspend <id>")]),
    ]
    return sorted(defs, key=lambda d: d["name"])


def _canonical_option(opt: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        opt.get("type"),
        opt.get("name"),
        opt.get("description"),
        bool(opt.get("required", False)),
        bool(opt.get("autocomplete", False)),
        tuple((c["name"], c["value"]) for c in opt.get("choices") or ()),
        tuple(_canonical_option(o) for o in opt.get("options") or ()),
    )


def canonical_commands(defs: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The parts of command definitions we set, normalised so local and remote compare equal."""
    return sorted(
        (
            d.get("name"),
            d.get("type", 1),
            d.get("description"),
            tuple(sorted(d.get("contexts") or ())),
            tuple(_canonical_option(o) for o in d.get("options") or ()),
        )
        for d in defs
    )


# -- inbound ----------------------------------------------------------------------------------


def _user(payload: Mapping[str, Any]) -> UserRef:
    raw = (payload.get("member") or {}).get("user") or payload.get("user") or payload["author"]
    name = raw.get("global_name") or raw.get("username") or ""
    return UserRef(platform=Platform.DISCORD, id=str(raw["id"]), name=str(name))


def _chat(payload: Mapping[str, Any]) -> ChatRef:
    channel = payload.get("channel") or {}
    direct = "guild_id" not in payload and channel.get("type", 1) in _DIRECT_CHANNEL_TYPES
    channel_id = payload.get("channel_id") or channel.get("id")
    return ChatRef(platform=Platform.DISCORD, id=str(channel_id), is_direct=direct)


def _flatten(options: Iterable[Mapping[str, Any]]) -> list[str]:
    """Sub-command names and option values, in order, as words."""
    words: list[str] = []
    for opt in options:
        if opt.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
            words.append(str(opt["name"]))
            words += _flatten(opt.get("options") or ())
        elif "value" in opt:
            words += str(opt["value"]).split()
    return words


def interaction_to_event(payload: Mapping[str, Any]) -> Event | None:
    """An INTERACTION_CREATE payload as an Event; None for what the adapter answers itself.

    Autocomplete, the "open the secret form" button and unknown custom ids give None.
    """
    kind = payload.get("type")
    data = payload.get("data") or {}
    user, chat = _user(payload), _chat(payload)
    event_id = f"discord:interaction:{payload['id']}"
    if kind == APPLICATION_COMMAND:
        name = str(data["name"]).lower()
        words = _flatten(data.get("options") or ())
        text = " ".join(["/" + name, *words])
        return Event(
            kind=EventKind.COMMAND,
            command=name,
            args=tuple(words),
            text=text,
            user=user,
            chat=chat,
            event_id=event_id,
        )
    if kind == COMPONENT:
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith(BUTTON_PREFIX):
            return None
        message_id = (payload.get("message") or {}).get("id")
        return Event(
            kind=EventKind.BUTTON,
            payload=custom_id[len(BUTTON_PREFIX) :],
            message_id=str(message_id) if message_id is not None else None,
            user=user,
            chat=chat,
            event_id=event_id,
        )
    if kind == MODAL_SUBMIT:
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith(MODAL_PREFIX):
            return None
        value = modal_value(data, SECRET_FIELD)
        return Event(
            kind=EventKind.SECRET,
            secret=Secret(value.strip()),
            intake_token=custom_id[len(MODAL_PREFIX) :],
            via_modal=True,
            user=user,
            chat=chat,
            event_id=event_id,
        )
    return None


def modal_value(data: Mapping[str, Any], field: str) -> str:
    """The value of one text input in a modal submission (rows, or labels in newer clients)."""
    stack = list(data.get("components") or ())
    while stack:
        comp = stack.pop(0)
        if comp.get("custom_id") == field and "value" in comp:
            return str(comp["value"])
        stack += list(comp.get("components") or ())
        if "component" in comp:
            stack.append(comp["component"])
    return ""


def focused_option(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (name, typed text) of the option an AUTOCOMPLETE interaction asks about."""
    stack = list(data.get("options") or ())
    while stack:
        opt = stack.pop(0)
        if opt.get("focused"):
            return str(opt["name"]), str(opt.get("value", ""))
        stack += list(opt.get("options") or ())
    return None


def autocomplete_choices(current: str, candidates: Iterable[str]) -> list[str]:
    """At most 25 candidates containing what was typed, prefix matches first."""
    needle = current.lower()
    hits = [c for c in candidates if needle in c.lower()]
    hits.sort(key=lambda c: (not c.lower().startswith(needle), c))
    return hits[:25]


def _mention_pattern(bot_id: str) -> re.Pattern[str]:
    return re.compile(rf"<@!?{re.escape(bot_id)}>")


# Message flag IS_VOICE_MESSAGE: the attachment was recorded in the client.
_VOICE_MESSAGE_FLAG: Final = 1 << 13


def attachments(payload: Mapping[str, Any]) -> tuple[AttachmentKind, ...]:
    """The kinds of media on a MESSAGE_CREATE (``attachments`` and ``sticker_items``)."""
    voice = bool(int(payload.get("flags") or 0) & _VOICE_MESSAGE_FLAG)
    found: list[AttachmentKind] = []
    for item in payload.get("attachments") or ():
        family = str(item.get("content_type") or "").partition("/")[0]
        if family == "image":
            found.append(AttachmentKind.PHOTO)
        elif family == "audio":
            voice_clip = voice or "waveform" in item
            found.append(AttachmentKind.VOICE if voice_clip else AttachmentKind.AUDIO)
        elif family == "video":
            found.append(AttachmentKind.VIDEO)
        else:
            found.append(AttachmentKind.DOCUMENT)
    if payload.get("sticker_items") or payload.get("stickers"):
        found.append(AttachmentKind.STICKER)
    return tuple(dict.fromkeys(found))


def files(payload: Mapping[str, Any]) -> tuple[FileRef, ...]:
    """The attachments the bot can download (their CDN ``url``), in order."""
    found: list[FileRef] = []
    voice = bool(int(payload.get("flags") or 0) & _VOICE_MESSAGE_FLAG)
    for item in payload.get("attachments") or ():
        url = item.get("url")
        if not isinstance(url, str) or not url:
            continue
        (kind,) = attachments({"attachments": [item], "flags": _VOICE_MESSAGE_FLAG * voice})
        size = item.get("size")
        # A voice message's length, as the client recorded it (Discord's duration_secs).
        secs = item.get("duration_secs")
        found.append(
            FileRef(
                kind,
                url,
                str(item.get("filename") or ""),
                str(item.get("content_type") or ""),
                size if isinstance(size, int) else None,
                float(secs)
                if isinstance(secs, int | float) and not isinstance(secs, bool) and secs >= 0
                else None,
            )
        )
    return tuple(found)


def message_to_event(
    payload: Mapping[str, Any], *, bot_id: str, agent_channels: Iterable[str] = ()
) -> Event | None:
    """A MESSAGE_CREATE payload as a MESSAGE event; None for bots, system messages, nothing.

    Attachments and stickers come through as ``attachments`` (the text, possibly empty, is
    their caption), so the person hears that the agent cannot read them yet.

    In guild channels ``addressed`` is true for a mention of the bot, a reply to one of its
    messages, or a channel the operator gave to the agent; the mention is removed from the text.
    Unaddressed messages are still events: the leak guard must see them.
    """
    author = payload.get("author") or {}
    if author.get("bot") or payload.get("webhook_id") or str(author.get("id")) == bot_id:
        return None
    if payload.get("type", 0) not in _TEXT_MESSAGE_TYPES:
        return None
    content = str(payload.get("content") or "")
    direct = "guild_id" not in payload
    pattern = _mention_pattern(bot_id)
    mentioned = bool(pattern.search(content)) or any(
        str(m.get("id")) == bot_id for m in payload.get("mentions") or ()
    )
    referenced = payload.get("referenced_message") or {}
    replied = str((referenced.get("author") or {}).get("id")) == bot_id
    channel_id = str(payload["channel_id"])
    addressed = direct or mentioned or replied or channel_id in set(agent_channels)
    text = " ".join(pattern.sub(" ", content).split()) if mentioned else content.strip()
    media = attachments(payload)
    if not text and not media:
        return None
    return Event(
        kind=EventKind.MESSAGE,
        user=_user(payload),
        chat=ChatRef(platform=Platform.DISCORD, id=channel_id, is_direct=direct),
        text=text,
        message_id=str(payload["id"]),
        addressed=addressed,
        event_id=f"discord:message:{payload['id']}",
        attachments=media,
        files=files(payload),
    )


def edit_to_event(payload: Mapping[str, Any], *, bot_id: str) -> Event | None:
    """A MESSAGE_UPDATE as a MESSAGE event that is never ``addressed``.

    An edit is not a new message for the agent; it is delivered so the leak guard sees a key
    pasted by editing. Updates without ``edited_timestamp`` (link previews) are not edits.
    """
    edited = payload.get("edited_timestamp")
    if not edited:
        return None
    event = message_to_event(payload, bot_id=bot_id)
    if event is None:
        return None
    return replace(event, addressed=False, event_id=f"discord:edit:{payload['id']}:{edited}")


# -- outbound ---------------------------------------------------------------------------------


def render(reply: Reply) -> str:
    """The message text: Markdown passes through (Discord renders it), plain text is escaped."""
    if reply.format == TextFormat.MARKDOWN:
        return reply.text
    return discord.utils.escape_markdown(reply.text)


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at a newline or space, never inside a word.

    A single word longer than the limit (a URL, a code line) is the one case cut hard.
    """
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = window.rfind("\n")
        if cut <= 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not pieces:
        pieces.append(rest)
    return pieces


class StaticView(discord.ui.View):
    """A view that is only rendered, never registered: presses arrive as raw interactions.

    Reporting itself finished keeps discord.py from storing one view per message forever.
    """

    def is_finished(self) -> bool:
        return True


class SecretModal(discord.ui.Modal):
    """The key form; the submission arrives as a raw interaction (see ``StaticView``)."""

    def is_finished(self) -> bool:
        return True


def to_view(buttons: Sequence[Sequence[Button]], *, bot_id: str = "") -> StaticView | None:
    """Button rows as a view (Discord shows at most 5 rows of 5 buttons).

    The ``OPEN_DM_PAYLOAD`` button becomes a link to the bot's profile, where "Message"
    opens the DM.
    """
    if not buttons:
        return None
    view = StaticView(timeout=None)
    for row_number, row in enumerate(buttons[:5]):
        for button in row[:5]:
            label = _truncate(button.label, 80)
            item: discord.ui.Button[StaticView]
            if is_open_dm(button.payload):
                item = discord.ui.Button(
                    label=label, url=f"https://discord.com/users/{bot_id}", row=row_number
                )
            elif is_link(button.payload):
                item = discord.ui.Button(label=label, url=button.payload, row=row_number)
            else:
                item = discord.ui.Button(
                    label=label,
                    custom_id=BUTTON_PREFIX + button.payload,
                    style=_STYLES[button.style],
                    row=row_number,
                )
            view.add_item(item)
    return view


def secret_button(request: SecretRequest) -> StaticView:
    """One button that opens the key form, for when no interaction can show it directly."""
    return form_button(request.token, request.title)


def form_button(token: str, label: str) -> StaticView:
    """A button that opens the key form of intake ``token`` (first time or again)."""
    view = StaticView(timeout=None)
    view.add_item(
        discord.ui.Button(
            label=_truncate(label, 80),
            custom_id=OPEN_SECRET_PREFIX + token,
            style=discord.ButtonStyle.primary,
        )
    )
    return view


# Discord's limits for a modal: title and field label 45 characters, placeholder 100.
MODAL_TITLE_LIMIT: Final = 45
FIELD_LABEL_LIMIT: Final = 45
PLACEHOLDER_LIMIT: Final = 100


def secret_modal(token: str, *, title: str, prompt: str, label: str = "") -> SecretModal:
    """The modal with one short text input; the intake token rides in its custom id.

    The field is labelled ``label`` (else ``title``) and the prompt is its placeholder; the
    texts are written to fit, cutting is only the last resort for operator-named providers.
    """
    modal = SecretModal(
        title=_truncate(title, MODAL_TITLE_LIMIT), custom_id=MODAL_PREFIX + token, timeout=None
    )
    modal.add_item(
        discord.ui.TextInput(
            label=_truncate(label or title, FIELD_LABEL_LIMIT),
            custom_id=SECRET_FIELD,
            style=discord.TextStyle.short,
            placeholder=_truncate(prompt, PLACEHOLDER_LIMIT) if prompt else None,
            required=True,
            min_length=1,
            max_length=4000,
        )
    )
    return modal


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
