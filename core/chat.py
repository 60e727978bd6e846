"""The neutral chat model: what adapters translate platform traffic into, and replies out of.

Every platform speaks these types to the router and flows; no platform SDK type crosses this line.
IDs are ``str`` everywhere.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from core.secret import Secret


class Platform(StrEnum):
    """A chat platform byokbot serves."""

    CONSOLE = "console"
    TELEGRAM = "telegram"
    DISCORD = "discord"
    SLACK = "slack"


@dataclass(frozen=True, slots=True)
class UserRef:
    """A person on one platform."""

    platform: Platform
    id: str
    name: str = ""

    @property
    def identity(self) -> str:
        """The stable ``platform:user_id`` string used for tenants and admin lists."""
        return f"{self.platform.value}:{self.id}"


@dataclass(frozen=True, slots=True)
class ChatRef:
    """A conversation: a DM (``is_direct``), a group, a channel, or a thread within one."""

    platform: Platform
    id: str
    is_direct: bool
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message the bot sent, so it can be edited or deleted later."""

    chat: ChatRef
    id: str


class EventKind(StrEnum):
    """What a person did."""

    MESSAGE = "message"
    COMMAND = "command"
    BUTTON = "button"
    SECRET = "secret"  # noqa: S105 - an event kind, not a password
    # The person closed a private form without submitting it (a Slack modal's view_closed):
    # the intake it was opened for ends, as with /cancel.
    SECRET_CANCELLED = "secret_cancelled"  # noqa: S105 - an event kind, not a password
    # In-chat payments (Telegram Stars): the platform asks whether to accept a checkout
    # (answered through ``Outcome``), then reports the charge.
    PAYMENT_CHECK = "payment_check"
    PAYMENT = "payment"


@dataclass(frozen=True, slots=True)
class PaymentInfo:
    """A checkout to approve (PAYMENT_CHECK) or a charge made (PAYMENT), in the payer's chat.

    ``amount`` is in the currency's smallest unit (Stars are whole: currency ``XTR``);
    ``payload`` is what the bot put in the invoice; ``charge_id`` the platform's charge id.
    """

    currency: str
    amount: int
    payload: str
    charge_id: str = ""
    provider_charge_id: str = ""
    expires_at: datetime | None = None
    recurring: bool = False


class AttachmentKind(StrEnum):
    """What a person attached to a message.

    ``Event.attachments`` lists the kinds; ``Event.files`` how to fetch each (``FileRef``).
    """

    PHOTO = "photo"
    VOICE = "voice"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file a person attached, as the adapter can fetch it again (``Messenger.download``).

    ``ref`` is the platform's handle (a Telegram ``file_id``, a Discord attachment URL, a
    Slack ``url_private``): never a credential, and the bytes are fetched by the control
    plane with its own token, so no agent ever sees a platform URL or token. ``size`` is
    what the platform says (None when it does not), checked before any download; ``seconds``
    likewise a voice note's or audio file's duration (the metering proxy reserves by it).
    """

    kind: AttachmentKind
    ref: str = field(repr=False)
    name: str = ""
    mime: str = ""
    size: int | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a person did, translated from a platform update.

    ``text`` is a plain message or the raw command text; ``command``/``args`` a parsed command
    (lower-case, without the slash or bot name); ``payload`` a button's payload; ``secret`` and
    ``intake_token`` a secret submitted through a private form (modal, hidden prompt).
    ``addressed`` is true where the bot is meant: always in a DM, in a group only for a mention
    or a reply to the bot. ``via_modal`` says a refused secret is shown inside the form.
    ``reply_to`` is the id of the bot's message this one replies to (Telegram's
    ``reply_to_message``), so a flow can tell an answer to its prompt from a new message.
    A SECRET_CANCELLED event carries the closed form's ``intake_token``.
    ``attachments`` lists the kinds of media the message carried (its ``text`` is then the
    caption, possibly empty); ``files`` the ones the adapter can download, in order.
    ``links`` are link targets the message carries but does not show (Telegram ``text_link``
    entities): the leak guard reads them too.
    """

    kind: EventKind
    user: UserRef
    chat: ChatRef
    # A DM reply can be the awaited key itself, so a repr (a traceback, a debug print) never
    # shows what a person typed.
    text: str = field(default="", repr=False)
    command: str = ""
    args: tuple[str, ...] = ()
    payload: str = ""
    secret: Secret | None = field(default=None, repr=False)
    intake_token: str = field(default="", repr=False)
    message_id: str | None = None
    addressed: bool = True
    via_modal: bool = False
    event_id: str = ""
    reply_to: str | None = None
    attachments: tuple[AttachmentKind, ...] = ()
    files: tuple[FileRef, ...] = field(default=(), repr=False)
    links: tuple[str, ...] = field(default=(), repr=False)
    payment: PaymentInfo | None = None

    @property
    def conversation_key(self) -> str:
        """The key of the per-conversation lock and persisted flow state."""
        return f"{self.user.identity}@{self.chat.id}"


class ButtonStyle(StrEnum):
    """How prominent a button is, where the platform can show it."""

    DEFAULT = "default"
    PRIMARY = "primary"
    DANGER = "danger"


@dataclass(frozen=True, slots=True)
class Button:
    """A button; ``payload`` comes back in an ``Event`` of kind BUTTON (at most 64 bytes).

    A payload that is an ``http(s)://`` URL makes a link button (a checkout page, say).
    """

    label: str
    payload: str
    style: ButtonStyle = ButtonStyle.DEFAULT


class TextFormat(StrEnum):
    """How ``Reply.text`` is to be read by the adapter."""

    PLAIN = "plain"
    MARKDOWN = "markdown"


@dataclass(frozen=True, slots=True)
class SecretRequest:
    """Ask the person for a secret through the platform's most private channel.

    ``token`` is the intake session's one-time token; adapters carry it inside the form (modal
    custom id) and return it in the SECRET event; it is not a secret on its own (useless
    without the bound user) but is never shown in chat. ``label`` is the form field's short
    name (Discord allows 45 characters); without it adapters use ``title``.
    """

    token: str = field(repr=False)
    provider: str
    title: str
    prompt: str
    expires_at: datetime
    label: str = ""


@dataclass(frozen=True, slots=True)
class Document:
    """A file to send with a reply (``/history export``): its name and bytes."""

    filename: str
    content: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Reply:
    """Something to show a person.

    ``sensitive`` marks personal information: ephemeral where the platform has it, otherwise
    sent only to a DM by the flow. ``buttons`` are rows of buttons. ``image`` is a PNG the
    adapter may attach where the platform shows images; ``document`` a file it attaches.
    """

    text: str
    buttons: tuple[tuple[Button, ...], ...] = ()
    sensitive: bool = False
    format: TextFormat = TextFormat.PLAIN
    image: bytes | None = field(default=None, repr=False)
    document: Document | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the router tells an adapter about one event, beyond the replies it sent.

    ``secret_error`` is set when a submitted secret was refused: modal adapters show it inside
    the form (Slack ``response_action: errors``) instead of a message. ``refused`` says the
    event was bad input and was answered with an explanation (the CLI exits non-zero on it).
    ``secret_retry`` says a refused secret's request is still open, so the adapter may offer
    the private form again (a hidden prompt, a button that reopens the modal) with the same
    token; when False the request has ended and the answer says what to do next.
    """

    handled: bool = True
    secret_error: str | None = None
    refused: bool = False
    secret_retry: bool = False
    # A refused PAYMENT_CHECK: why, in words the platform shows the payer.
    error: str | None = None


OPEN_DM_PAYLOAD = "@open-dm"
"""A button with this payload is rendered as a link that opens a DM with the bot.

``"@open-dm:<start>"`` also carries a start parameter where the platform has deep links
(Telegram's ``/start <start>``).
"""


def is_open_dm(payload: str) -> bool:
    """Whether a button payload asks for an open-a-DM link."""
    return payload == OPEN_DM_PAYLOAD or payload.startswith(OPEN_DM_PAYLOAD + ":")


def is_link(payload: str) -> bool:
    """Whether a button payload is a URL to open rather than data to send back."""
    return payload.startswith(("https://", "http://"))


def button_owner_tag(user: UserRef) -> str:
    """A short tag bound to one person, prefixed to button payloads so others cannot press them."""
    return hashlib.sha256(user.identity.encode()).hexdigest()[:8]


# A command named in a text: ``/key`` after a space, a quote or a bracket, not inside a URL,
# a path (``/v1/models``) or a price (``$15/mo``).
_COMMAND_NAMED = re.compile(r"(?<![\w/:.\-])/([a-z][a-z0-9_-]*)(?![\w-]|/|\.\w)")


def name_commands(text: str, command: str) -> str:
    """Name the bot's commands in ``text`` as a platform with one slash command spells them.

    Texts write commands the way Telegram, Discord and the console take them (``/key add``);
    a Slack app has one slash command, so there that is ``/byok key add`` (``command`` is
    ``"/byok"``). ``command`` itself is left alone, so applying this twice changes nothing.
    """
    own = command.lstrip("/")

    def rename(found: re.Match[str]) -> str:
        name = found.group(1)
        return found.group(0) if name == own else f"{command} {name}"

    return _COMMAND_NAMED.sub(rename, text)
