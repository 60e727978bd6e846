"""Pure translation between Slack payloads and the neutral chat model (no I/O, no SDK calls).

Incoming: slash commands, Events API events (``message``, ``app_mention``,
``app_home_opened``), Block Kit actions and modal submissions become ``Event``s.
Outgoing: ``Reply`` becomes ``chat.postMessage`` keyword arguments (Block Kit), a modal,
or an App Home view. The few interface labels below ("Save", "API key", the home tab's
shortcut buttons) are Slack chrome the core never sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

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

BUTTON_PREFIX: Final = "byok:"
"""Action ids of buttons that came from a ``Reply``; their value is the button payload."""
SHORTCUT_PREFIX: Final = "byok_cmd:"
"""Action ids of the App Home shortcut buttons; their value is a command line."""
LINK_ACTION: Final = "byok_link"
"""A URL button (the link to the app's DM); Slack still reports the press, which is ignored."""
SECRET_OPEN_ACTION: Final = "byok_secret_open"  # noqa: S105 - an id
"""The DM button that opens the key modal when no trigger id was at hand."""
SECRET_CALLBACK: Final = "byok_secret"  # noqa: S105 - an id
SECRET_BLOCK: Final = "byok_secret_block"  # noqa: S105 - an id
SECRET_INPUT: Final = "byok_secret_input"  # noqa: S105 - an id

THINKING: Final = "_thinking…_"
MODAL_SUBMIT: Final = "Save"
MODAL_CLOSE: Final = "Cancel"
MODAL_LABEL: Final = "API key"
MODAL_CHECKING: Final = "Checking your key…"
MODAL_DONE: Final = "Done. You can close this window."
OPEN_MODAL_LABEL: Final = "Enter key privately"
FORM_IN_DM: Final = "I've sent you a button in our DM: press it to enter your key privately."
MODAL_OPEN_FAILED: Final = "The form didn't open in time. Press *Enter key privately* again."
HOME_COMMANDS: Final = ("status", "usage")
"""Asked on the person's behalf when they open the Home tab; the answers are the tab."""
HOME_SHORTCUTS: Final = (
    ("Plan", "plan"),
    ("Add key", "key add"),
    ("Model", "model"),
    ("Usage", "usage"),
    ("Help", "help"),
)

SECTION_LIMIT: Final = 3000
"""Characters in one section block's text (Slack's limit)."""
_MODAL_TITLE_LIMIT: Final = 24
_BUTTON_LABEL_LIMIT: Final = 75
_BUTTONS_PER_BLOCK: Final = 25
_VIEW_BLOCK_LIMIT: Final = 100
_OPEN_VALUE_PROMPT_LIMIT: Final = 1200

# Message subtypes that carry a person's own words; every other subtype (joins, bot posts,
# deletions, topic changes) is not something a person said to the bot.
_PERSON_SUBTYPES: Final = frozenset({None, "file_share", "thread_broadcast", "me_message"})
_LINK: Final = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|[^>]*)?>")
_BOLD: Final = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_ITALIC: Final = re.compile(r"(?<![*\w])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![*\w])")
_STRIKE: Final = re.compile(r"~~(.+?)~~")
_MD_LINK: Final = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_HEADING: Final = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_BULLET: Final = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)
_CODE: Final = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)


# ---------------------------------------------------------------------------- incoming


def unescape(text: str) -> str:
    """Undo Slack's escaping of ``&``, ``<`` and ``>`` in message text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escape(text: str) -> str:
    """Escape the three characters Slack treats as control sequences in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def incoming_text(raw: str, *, bot_user_id: str) -> tuple[str, bool]:
    """Plain text of a Slack message and whether it mentions the bot (mention removed)."""
    mention = re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>") if bot_user_id else None
    mentioned = bool(mention and mention.search(raw))
    if mention:
        raw = mention.sub("", raw)
    text = _LINK.sub(lambda m: m.group(1), raw)
    return unescape(text).strip(), mentioned


def parse_command_line(text: str) -> tuple[str, tuple[str, ...]]:
    """``"Key add anthropic"`` -> ``("key", ("add", "anthropic"))``; nothing -> ``help``."""
    parts = text.split()
    if not parts:
        return "help", ()
    return parts[0].lstrip("/").lower(), tuple(parts[1:])


def _user(user_id: str, name: str = "") -> UserRef:
    return UserRef(platform=Platform.SLACK, id=user_id, name=name)


def command_event(form: Mapping[str, Any], *, is_direct: bool) -> Event:
    """A slash command (form fields ``command``, ``text``, ``user_id``, ``channel_id``...)."""
    text = unescape(str(form.get("text", ""))).strip()
    command, args = parse_command_line(text)
    return Event(
        kind=EventKind.COMMAND,
        user=_user(str(form["user_id"]), str(form.get("user_name", ""))),
        chat=ChatRef(platform=Platform.SLACK, id=str(form["channel_id"]), is_direct=is_direct),
        text=f"{form.get('command', '')} {text}".strip(),
        command=command,
        args=args,
        event_id=f"command:{form.get('trigger_id', '')}",
    )


def attachments(message: Mapping[str, Any]) -> tuple[AttachmentKind, ...]:
    """The kinds of the files shared with a message (``files``, subtype ``file_share``).

    A clip recorded in Slack is ``slack_audio`` (a voice message) or ``slack_video``.
    """
    found: list[AttachmentKind] = []
    for item in message.get("files") or ():
        family = str(item.get("mimetype") or "").partition("/")[0]
        if family == "image":
            found.append(AttachmentKind.PHOTO)
        elif family == "audio" or item.get("subtype") == "slack_audio":
            voice = item.get("subtype") == "slack_audio"
            found.append(AttachmentKind.VOICE if voice else AttachmentKind.AUDIO)
        elif family == "video":
            found.append(AttachmentKind.VIDEO)
        else:
            found.append(AttachmentKind.DOCUMENT)
    return tuple(dict.fromkeys(found))


def files(message: Mapping[str, Any]) -> tuple[FileRef, ...]:
    """The shared files the bot can download (``url_private``, fetched with the bot token)."""
    found: list[FileRef] = []
    for item in message.get("files") or ():
        url = item.get("url_private")
        if not isinstance(url, str) or not url:
            continue
        (kind,) = attachments({"files": [item]})
        size = item.get("size")
        found.append(
            FileRef(
                kind,
                url,
                str(item.get("name") or ""),
                str(item.get("mimetype") or ""),
                size if isinstance(size, int) else None,
            )
        )
    return tuple(found)


def message_event(event: Mapping[str, Any], *, bot_user_id: str, event_id: str) -> Event | None:
    """A ``message`` or ``app_mention`` event, or None when it is not a person speaking.

    Edits (``message_changed``) come through unaddressed so the leak guard sees a key
    pasted by editing, without the edit reaching the agent as a new message.
    """
    subtype = event.get("subtype")
    edited = subtype == "message_changed"
    if edited:
        inner: Mapping[str, Any] = event.get("message") or {}
    elif subtype in _PERSON_SUBTYPES:
        inner = event
    else:
        return None
    user_id = inner.get("user")
    if not user_id or inner.get("bot_id") or user_id == bot_user_id:
        return None
    channel = str(event.get("channel", ""))
    ts = str(inner.get("ts", ""))
    if not channel or not ts:
        return None
    is_direct = event.get("channel_type") == "im"
    text, mentioned = incoming_text(str(inner.get("text", "")), bot_user_id=bot_user_id)
    mentioned = mentioned or event.get("type") == "app_mention"
    in_bot_thread = bool(bot_user_id) and inner.get("parent_user_id") == bot_user_id
    addressed = not edited and (is_direct or mentioned or in_bot_thread)
    thread_ts = inner.get("thread_ts")
    if addressed and not is_direct:
        thread_ts = thread_ts or ts  # answers in a channel go into a thread under the message
    return Event(
        kind=EventKind.MESSAGE,
        user=_user(str(user_id)),
        chat=ChatRef(
            platform=Platform.SLACK,
            id=channel,
            is_direct=is_direct,
            thread_id=str(thread_ts) if thread_ts else None,
        ),
        text=text,
        message_id=ts,
        addressed=addressed,
        event_id=event_id,
        attachments=attachments(inner),
        files=files(inner),
    )


def message_dedup_key(event: Mapping[str, Any]) -> str:
    """One key per message, so its ``message`` and ``app_mention`` events count once."""
    inner = event.get("message") if event.get("subtype") == "message_changed" else event
    ts = (inner or {}).get("ts", "")
    suffix = f":edit:{event.get('event_ts', '')}" if inner is not event else ""
    return f"slack:message:{event.get('channel', '')}:{ts}{suffix}"


def home_opened(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(user, channel)`` when ``app_home_opened`` is about the Home tab, else None."""
    if event.get("tab") != "home" or not event.get("user"):
        return None
    return str(event["user"]), str(event.get("channel", ""))


def home_events(user_id: str, channel: str, *, event_id: str) -> tuple[Event, ...]:
    """The commands whose answers make up the Home tab (``HOME_COMMANDS``), in order."""
    return tuple(
        Event(
            kind=EventKind.COMMAND,
            user=_user(user_id),
            chat=ChatRef(platform=Platform.SLACK, id=channel, is_direct=True),
            text=command,
            command=command,
            event_id=f"{event_id}:{command}",
        )
        for command in HOME_COMMANDS
    )


def action_channel(body: Mapping[str, Any]) -> str | None:
    """The channel a Block Kit action happened in; None for views (App Home, modals)."""
    channel = body.get("channel") or {}
    container = body.get("container") or {}
    found = channel.get("id") or container.get("channel_id")
    return str(found) if found else None


def action_is_ephemeral(body: Mapping[str, Any]) -> bool:
    return bool((body.get("container") or {}).get("is_ephemeral"))


def action_event(body: Mapping[str, Any], *, chat: ChatRef) -> Event | None:
    """A press on one of our buttons: BUTTON with its payload, or a home shortcut COMMAND."""
    actions = body.get("actions") or []
    if not actions:
        return None
    action = actions[0]
    action_id = str(action.get("action_id", ""))
    user = body.get("user") or {}
    ref = _user(str(user.get("id", "")), str(user.get("username") or user.get("name") or ""))
    message_ts = (body.get("container") or {}).get("message_ts")
    event_id = f"action:{body.get('trigger_id') or action.get('action_ts', '')}"
    value = str(action.get("value", ""))
    if action_id.startswith(BUTTON_PREFIX):
        return Event(
            kind=EventKind.BUTTON,
            user=ref,
            chat=chat,
            payload=value,
            message_id=str(message_ts) if message_ts else None,
            event_id=event_id,
        )
    if action_id.startswith(SHORTCUT_PREFIX):
        command, args = parse_command_line(value)
        return Event(
            kind=EventKind.COMMAND,
            user=ref,
            chat=chat,
            text=value,
            command=command,
            args=args,
            event_id=event_id,
        )
    return None


def secret_event(body: Mapping[str, Any], *, chat: ChatRef) -> Event | None:
    """A ``view_submission`` of the key modal: the value is read here and nowhere else."""
    view = body.get("view") or {}
    if view.get("callback_id") != SECRET_CALLBACK:
        return None
    meta = parse_metadata(str(view.get("private_metadata", "")))
    values = ((view.get("state") or {}).get("values") or {}).get(SECRET_BLOCK) or {}
    raw = (values.get(SECRET_INPUT) or {}).get("value") or ""
    user = body.get("user") or {}
    return Event(
        kind=EventKind.SECRET,
        user=_user(str(user.get("id", "")), str(user.get("username") or "")),
        chat=chat,
        secret=Secret(str(raw).strip()),
        intake_token=meta.get("t", ""),
        via_modal=True,
        event_id=f"view:{view.get('id', '')}:{body.get('trigger_id', '')}",
    )


def secret_closed_event(body: Mapping[str, Any], *, chat: ChatRef) -> Event | None:
    """A ``view_closed`` of the key modal: the person dropped the request without saving.

    It becomes the core's ``SECRET_CANCELLED`` for the modal's intake token: that request ends
    (and only that one) and the person's next DM is an ordinary message again.
    """
    view = body.get("view") or {}
    if view.get("callback_id") != SECRET_CALLBACK:
        return None
    meta = parse_metadata(str(view.get("private_metadata", "")))
    user = body.get("user") or {}
    return Event(
        kind=EventKind.SECRET_CANCELLED,
        user=_user(str(user.get("id", "")), str(user.get("username") or "")),
        chat=chat,
        intake_token=meta.get("t", ""),
        event_id=f"view_closed:{view.get('id', '')}",
    )


# ---------------------------------------------------------------------------- outgoing


def to_mrkdwn(markdown: str) -> str:
    """Common Markdown to Slack mrkdwn; code spans are kept verbatim, the rest escaped.

    Escaping ``<`` and ``>`` also stops text from an agent pinging ``<!channel>``.
    """
    out: list[str] = []
    last = 0
    for m in _CODE.finditer(markdown):
        out.append(_mrkdwn_prose(markdown[last : m.start()]))
        out.append(escape(m.group(0)))
        last = m.end()
    out.append(_mrkdwn_prose(markdown[last:]))
    return "".join(out)


def _mrkdwn_prose(text: str) -> str:
    text = escape(text)
    text = _MD_LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", text)
    text = _HEADING.sub(lambda m: f"\x00{m.group(1)}\x00", text)
    text = _BOLD.sub(lambda m: f"\x00{m.group(1) or m.group(2)}\x00", text)
    text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    text = _BULLET.sub(lambda m: f"{m.group(1)}• ", text)
    return text.replace("\x00", "*")


def render_text(text: str, fmt: TextFormat) -> str:
    """The ``text`` field for a reply: mrkdwn for Markdown, escaped literal text otherwise."""
    return to_mrkdwn(text) if fmt is TextFormat.MARKDOWN else escape(text)


def split_text(text: str, limit: int) -> list[str]:
    """Split at ``limit`` characters, at a line break or space where one exists."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = rest.rfind(" ", 0, limit + 1)
        head = rest[:cut].rstrip() if cut > 0 else ""
        if not head:
            cut, head = limit, rest[:limit]
        parts.append(head)
        rest = rest[cut:].lstrip()
    parts.append(rest)
    return parts


def dm_link(*, team_id: str, app_id: str) -> str:
    """A link that opens the person's DM with the app (``app_redirect``)."""
    return f"https://slack.com/app_redirect?app={app_id}&team={team_id}"


def button_element(button: Button, action_id: str, *, dm_url: str = "") -> dict[str, Any]:
    """A Block Kit button; the ``OPEN_DM_PAYLOAD`` button becomes a link to the app's DM."""
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": button.label[:_BUTTON_LABEL_LIMIT], "emoji": True},
    }
    if is_open_dm(button.payload) and dm_url:
        element["action_id"] = f"{LINK_ACTION}:{action_id}"
        element["url"] = dm_url
    elif is_link(button.payload):  # a checkout page: Slack opens it, and still sends an action
        element["action_id"] = f"{LINK_ACTION}:{action_id}"
        element["url"] = button.payload
    else:
        element["value"] = button.payload
    if button.style is not ButtonStyle.DEFAULT:
        element["style"] = button.style.value
    return element


def button_blocks(
    rows: Sequence[Sequence[Button]],
    *,
    prefix: str = BUTTON_PREFIX,
    tag: str = "r",
    dm_url: str = "",
) -> list[dict[str, Any]]:
    """One ``actions`` block per row (Slack caps a block at 25 elements)."""
    blocks: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        for start in range(0, len(row), _BUTTONS_PER_BLOCK):
            chunk = row[start : start + _BUTTONS_PER_BLOCK]
            block_id = f"byok_{tag}{i}_{start}"
            blocks.append(
                {
                    "type": "actions",
                    "block_id": block_id,
                    "elements": [
                        button_element(b, f"{prefix}{tag}{i}:{start + j}", dm_url=dm_url)
                        for j, b in enumerate(chunk)
                    ],
                }
            )
    return blocks


def text_blocks(text: str, fmt: TextFormat) -> list[dict[str, Any]]:
    """Section blocks for the text; ``plain_text`` objects need no escaping."""
    if not text:
        return []
    if fmt is TextFormat.MARKDOWN:
        return [
            {"type": "section", "text": {"type": "mrkdwn", "text": part}}
            for part in split_text(to_mrkdwn(text), SECTION_LIMIT)
        ]
    return [
        {"type": "section", "text": {"type": "plain_text", "text": part, "emoji": True}}
        for part in split_text(text, SECTION_LIMIT)
    ]


def reply_blocks(
    reply: Reply, *, plain: bool = False, tag: str = "r", dm_url: str = ""
) -> list[dict[str, Any]]:
    fmt = TextFormat.PLAIN if plain else reply.format
    return text_blocks(reply.text, fmt) + button_blocks(reply.buttons, tag=tag, dm_url=dm_url)


def message_kwargs(reply: Reply, *, plain: bool = False, dm_url: str = "") -> dict[str, Any]:
    """Keyword arguments for ``chat.postMessage``/``chat.update``/``chat.postEphemeral``.

    ``plain`` renders Markdown as literal text: the fallback when Slack refuses the blocks.
    """
    fmt = TextFormat.PLAIN if plain else reply.format
    return {
        "text": render_text(reply.text, fmt) or " ",
        "blocks": reply_blocks(reply, plain=plain, dm_url=dm_url),
    }


def stream_kwargs(text: str) -> dict[str, Any]:
    """A streamed (Markdown) reply is sent as ``text`` only: cheaper to re-send on each edit."""
    return {"text": to_mrkdwn(text) if text else THINKING, "blocks": []}


def encode_metadata(request: SecretRequest) -> str:
    """What the modal carries back in ``private_metadata`` (never shown to anyone)."""
    return json.dumps({"t": request.token, "p": request.provider}, separators=(",", ":"))


def parse_metadata(raw: str) -> dict[str, str]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def secret_modal(
    request: SecretRequest, *, error: str | None = None, prompt: str | None = None
) -> dict[str, Any]:
    """The key intake modal; ``error`` re-shows it after a slow check refused the key."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "plain_text", "text": prompt or request.prompt}},
    ]
    if error:
        blocks.append({"type": "context", "elements": [{"type": "plain_text", "text": error}]})
    blocks.append(
        {
            "type": "input",
            "block_id": SECRET_BLOCK,
            "label": {"type": "plain_text", "text": MODAL_LABEL},
            "element": {
                "type": "plain_text_input",
                "action_id": SECRET_INPUT,
                "min_length": 1,
                "max_length": 3000,
            },
        }
    )
    return {
        "type": "modal",
        "callback_id": SECRET_CALLBACK,
        "private_metadata": encode_metadata(request),
        "title": {"type": "plain_text", "text": request.title[:_MODAL_TITLE_LIMIT] or "Key"},
        "submit": {"type": "plain_text", "text": MODAL_SUBMIT},
        "close": {"type": "plain_text", "text": MODAL_CLOSE},
        "notify_on_close": True,  # closing it unsaved must end the intake (view_closed)
        "blocks": blocks,
    }


def notice_modal(title: str, text: str) -> dict[str, Any]:
    """A modal with one line and no input (the slow-check and finished states)."""
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": title[:_MODAL_TITLE_LIMIT] or "Key"},
        "close": {"type": "plain_text", "text": MODAL_CLOSE},
        "blocks": [{"type": "section", "text": {"type": "plain_text", "text": text}}],
    }


def secret_open_value(request: SecretRequest) -> str:
    """The DM button's value: enough to open the modal later, from any replica."""
    data = {
        "t": request.token,
        "p": request.provider,
        "ti": request.title,
        "pr": request.prompt[:_OPEN_VALUE_PROMPT_LIMIT],
    }
    return json.dumps(data, separators=(",", ":"))


def secret_open_message(request: SecretRequest) -> dict[str, Any]:
    """The DM that stands in for a modal when the event gave no trigger id to open one."""
    button = {
        "type": "button",
        "action_id": SECRET_OPEN_ACTION,
        "style": "primary",
        "text": {"type": "plain_text", "text": OPEN_MODAL_LABEL},
        "value": secret_open_value(request),
    }
    return {
        "text": escape(request.prompt),
        "blocks": [
            {"type": "section", "text": {"type": "plain_text", "text": request.prompt}},
            {"type": "actions", "block_id": "byok_secret_open", "elements": [button]},
        ],
    }


def modal_errors(message: str) -> dict[str, Any]:
    """The ``view_submission`` acknowledgement that shows ``message`` under the input."""
    return {"response_action": "errors", "errors": {SECRET_BLOCK: message}}


def home_view(replies: Sequence[Reply], *, dm_url: str = "") -> dict[str, Any]:
    """The App Home tab: the answers to ``HOME_COMMANDS`` followed by shortcut buttons."""
    blocks: list[dict[str, Any]] = []
    shown: list[Reply] = []
    for n, reply in enumerate(replies):
        if reply in shown:  # e.g. "you need an account" from both status and usage
            continue
        if shown:
            blocks.append({"type": "divider"})
        shown.append(reply)
        blocks.extend(reply_blocks(reply, tag=f"h{n}_", dm_url=dm_url))
    shortcuts = tuple(Button(label=label, payload=line) for label, line in HOME_SHORTCUTS)
    blocks.append({"type": "divider"})
    blocks.extend(button_blocks((shortcuts,), prefix=SHORTCUT_PREFIX, tag="s"))
    if len(blocks) > _VIEW_BLOCK_LIMIT:
        blocks = blocks[: _VIEW_BLOCK_LIMIT - 2] + blocks[-2:]
    return {"type": "home", "blocks": blocks}
