"""The Discord adapter: discord.py gateway + REST wired to the router, and the Messenger port.

Every interaction is acknowledged inside Discord's 3-second window: the handler starts at once,
and if it has not answered after ``defer_after`` seconds the adapter defers (a "thinking"
state, ephemeral outside DMs). Follow-ups go through the interaction's webhook while its
15-minute token lives, then through the channel (or a DM for personal replies).

Errors::

    DiscordError               root of everything this package raises
    ├── DiscordLoginError      the token was refused or the gateway could not be reached
    └── DiscordSendError       Discord refused to show, edit or deliver something
        └── _InteractionGone   (internal) the interaction is unknown, expired or answered
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord import syntax, translate
from adapters.discord.config import DiscordConfig
from core import filefetch
from core.chat import (
    ChatRef,
    Event,
    EventKind,
    FileRef,
    MessageRef,
    Outcome,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)
from core.config import Config
from core.dedup import Deduplicator, InMemoryDeduplicator
from core.inbox import InboxPort, MemoryInbox
from core.logs import register_secret
from core.metrics import PLATFORM_RETRIES
from core.pacing import Key, OutboundScheduler, Priority, Window, with_retries
from core.ports import EventHandler, FileTooLarge

_log = logging.getLogger(__name__)

# Discord invalidates an interaction token after 15 minutes; stop using it a little earlier.
INTERACTION_TOKEN_LIFETIME: Final = 14.5 * 60
# A typing indicator lasts 10 seconds; refresh it while the first chunk is awaited.
TYPING_REFRESH: Final = 8.0
_REMEMBERED: Final = 2000

# Discord's limits for the bot's messages, with a margin (the windows are a little longer).
# Creating and editing messages are separate per-channel buckets of 5 per 5 s; all requests
# share the global 50 per second. Edits leave one slot of their window to final texts.
DISCORD_WINDOWS: Final = {
    "global": Window(45, 1.05, reserve=10),
    "post": Window(5, 5.3, reserve=0),
    "edit": Window(5, 5.3, reserve=1),
}
# discord.py sets no request timeout: an edit without an answer this long is tried again.
EDIT_TIMEOUT: Final = 5.0
_RETRIES: Final = 3
_RETRIED_STATUSES: Final = frozenset({500, 502, 503, 504, 524})


class DiscordError(Exception):
    """Root of the Discord adapter's errors."""


class DiscordLoginError(DiscordError):
    """The bot token was refused or the gateway could not be reached."""


class DiscordSendError(DiscordError):
    """Discord refused to show, edit or deliver something."""


class _InteractionGone(DiscordSendError):
    """The interaction can no longer be answered (unknown, expired or already answered)."""


# Unknown interaction, unknown webhook, invalid webhook token, already acknowledged.
_UNKNOWN_INTERACTION: Final = 10062
_GONE_CODES: Final = frozenset({_UNKNOWN_INTERACTION, 10015, 50027, 40060})


@dataclass(frozen=True, slots=True)
class CommandCatalog:
    """What slash command choices and autocomplete offer; the composition root fills it in."""

    providers: tuple[str, ...] = ("anthropic", "openai", "moonshot")
    plans: tuple[str, ...] = ("byok", "managed")
    models: tuple[str, ...] = ()


def catalog_from_config(config: Config) -> CommandCatalog:
    """Providers, plans and every model the configuration names, for choices and autocomplete."""
    models: dict[str, None] = {}
    for provider in config.providers.values():
        for model in (provider.default_model, *provider.models):
            models.setdefault(model, None)
    for plan in config.plans.values():
        for model in plan.models:
            models.setdefault(model, None)
    return CommandCatalog(
        providers=tuple(config.providers),
        plans=tuple(p.id for p in config.offered_plans),
        models=tuple(models),
    )


@dataclass(slots=True)
class _Live:
    """An interaction the adapter may still answer through."""

    interaction: discord.Interaction[Any]
    created: float
    answered: bool = False
    gone: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class _WebhookMessage:
    """A message sent through an interaction webhook (ephemeral ones can only be edited so)."""

    interaction: discord.Interaction[Any]
    created: float
    original: bool


# -- log redaction ----------------------------------------------------------------------------

_GATEWAY_EVENT_MSG: Final = "For Shard ID %s: WebSocket Event: %s"
_REDACTIONS: Final = (
    # Our custom ids carry intake tokens; interaction webhooks carry interaction tokens.
    (re.compile(r"(?<![A-Za-z0-9])([ks]):[A-Za-z0-9_.:\-]{6,}"), r"\1:***"),
    (re.compile(r"(/webhooks/\d+/)[^/\s?'\"]+"), r"\1***"),
    (re.compile(r"(/interactions/\d+/)[^/\s?'\"]+"), r"\1***"),
)


class _DiscordLogFilter(logging.Filter):
    """Keeps message contents, modal values and interaction tokens out of discord.py's logs.

    discord.py logs every gateway event in full at DEBUG: a key pasted in a channel or typed
    into a modal would land in the log. Gateway events are reduced to their op, type and
    sequence number; other records have tokens masked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == _GATEWAY_EVENT_MSG and isinstance(args, tuple) and len(args) == 2:
            frame = args[1]
            if isinstance(frame, Mapping):
                summary = f"op={frame.get('op')} t={frame.get('t')} s={frame.get('s')}"
                record.args = (args[0], summary)
            return True
        text = record.getMessage()
        redacted = redact(text)
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


def redact(text: str) -> str:
    """Mask intake tokens in custom ids and interaction tokens in webhook URLs."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_LOG_FILTER: Final = _DiscordLogFilter()
_FILTERED_LOGGERS: Final = (
    "discord.gateway",
    "discord.http",
    "discord.webhook.async_",
    "discord.ui.view",
    "discord.state",
    "discord.client",
    "discord.interactions",
)


def install_log_filter() -> None:
    """Attach the redacting filter to discord.py's loggers (idempotent)."""
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


# -- the client ---------------------------------------------------------------------------


class _Forwarding:
    """The gateway events the adapter handles (no command tree: interactions arrive raw)."""

    _adapter: DiscordAdapter

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter._on_message(message)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        await self._adapter._on_interaction(interaction)

    async def on_raw_message_edit(self, update: discord.RawMessageUpdateEvent) -> None:
        await self._adapter._on_edit(update.message)


class _Client(_Forwarding, discord.Client):
    """A plain client, one gateway connection (unsharded, or one shard of ``shard_count``)."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter


class _ShardedClient(_Forwarding, discord.AutoShardedClient):
    """Several shards of ``shard_count`` in this process (``shard_ids``)."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter


def _make_client(adapter: DiscordAdapter, cfg: DiscordConfig, **options: Any) -> discord.Client:
    if len(cfg.shard_ids) > 1:
        return _ShardedClient(
            adapter, shard_ids=list(cfg.shard_ids), shard_count=cfg.shard_count, **options
        )
    if cfg.shard_ids:
        return _Client(adapter, shard_id=cfg.shard_ids[0], shard_count=cfg.shard_count, **options)
    return _Client(adapter, **options)


def _intents(cfg: DiscordConfig) -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True  # channel and thread cache; interactions from guilds
    intents.guild_messages = True  # mentions, agent channels and the leak guard
    intents.dm_messages = True  # agent chat in DMs
    # Privileged: without it guild messages arrive empty unless they mention the bot, so the
    # leak guard cannot see keys pasted in channels.
    intents.message_content = cfg.message_content_intent
    return intents


_CDN_HOSTS: Final = ("cdn.discordapp.com", "media.discordapp.net")


class DiscordAdapter:
    """``ChatAdapter`` and ``Messenger`` for Discord."""

    platform = Platform.DISCORD

    def __init__(
        self,
        config: DiscordConfig,
        *,
        catalog: CommandCatalog | None = None,
        dedup: Deduplicator | None = None,
        inbox: InboxPort | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        guild_ready_timeout: float = 2.0,
        ready_timeout: float = 60.0,
        typing_refresh: float = TYPING_REFRESH,
    ) -> None:
        self._cfg = config
        self._catalog = catalog or CommandCatalog()
        self._syntax = syntax.from_definitions(
            translate.command_definitions(self._catalog.providers),
            {"plan": self._catalog.plans, "name": self._catalog.models},
        )
        self._dedup = dedup or InMemoryDeduplicator()
        # The gateway does not redeliver, so deduplication stays with ``dedup``; the inbox
        # marks each turn pending until it ends, so a crash leaves a note to resend.
        self._inbox: InboxPort = inbox or MemoryInbox()
        self._clock = clock
        self._sleep = sleep
        self._guild_ready_timeout = guild_ready_timeout
        self._ready_timeout = ready_timeout
        self.typing_refresh = typing_refresh
        self._client: discord.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._handler: EventHandler | None = None
        self._live: dict[str, _Live] = {}
        self._webhook_messages: OrderedDict[str, _WebhookMessage] = OrderedDict()
        self._pending_secrets: OrderedDict[str, SecretRequest] = OrderedDict()
        # One scheduler for every streamed message of this bot: Discord's limits are per bot.
        self.scheduler = OutboundScheduler(DISCORD_WINDOWS)  # real time: its timers are the loop's
        self._live_streams: dict[str, int] = {}  # streams being shown, by channel
        self.edit_timeout = EDIT_TIMEOUT
        self.messenger = self

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def _bot_id(self) -> str:
        user = self._client.user if self._client is not None else None
        return str(user.id) if user is not None else ""

    @property
    def client(self) -> discord.Client:
        if self._client is None:
            raise DiscordError("the Discord adapter is not started")
        return self._client

    async def start(self, handler: EventHandler) -> None:
        """Log in, sync slash commands if they changed, connect and wait for READY."""
        if self._client is not None:
            raise DiscordError("the Discord adapter is already started")
        install_log_filter()
        register_secret(self._cfg.token.reveal(), label="discord bot token")
        # discord.py keeps its endpoints on classes: one Discord adapter per process.
        Route.BASE = self._cfg.api_base_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self._cfg.gateway_url)
        self._handler = handler
        client = _make_client(
            self,
            self._cfg,
            intents=_intents(self._cfg),
            allowed_mentions=discord.AllowedMentions.none(),
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            max_messages=None,
            guild_ready_timeout=self._guild_ready_timeout,
        )
        self._client = client
        try:
            await client.login(self._cfg.token.reveal())
        except discord.LoginFailure:
            await self._close()
            raise DiscordLoginError(
                f"Discord refused the bot token in ${self._cfg.token_env}"
            ) from None
        except discord.HTTPException as exc:
            await self._close()
            raise DiscordLoginError(f"Discord login failed: HTTP {exc.status}") from None
        # Replicas split the shards: the one serving shard 0 (DMs) registers the commands.
        if self._cfg.sync_commands and self._cfg.serves_dms:
            try:
                await self.sync_commands()
            except discord.HTTPException as exc:
                # The commands registered before keep working; serve rather than stay down.
                _log.error(
                    "discord: slash command sync refused: HTTP %s code %s", exc.status, exc.code
                )
        self._task = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, self._task}, timeout=self._ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            failure = self._task.exception() if self._task in done else None
            await self._close()
            reason = type(failure).__name__ if failure else "no READY in time"
            raise DiscordLoginError(f"Discord gateway connection failed ({reason})")
        _log.info("discord: connected as bot %s", client.user.id if client.user else "?")

    def is_connected(self) -> bool:
        """Whether the gateway connection is up (down while discord.py reconnects)."""
        client = self._client
        if client is None or client.is_closed() or not client.is_ready():
            return False
        if isinstance(client, discord.AutoShardedClient):
            return all(not shard.is_closed() for shard in client.shards.values())
        ws = client.ws
        return ws is not None and ws.open

    async def open_for_sending(self) -> None:
        """Log in over REST to send only (``byokbot admin`` notices): no gateway connection."""
        if self._client is not None:
            return
        install_log_filter()
        register_secret(self._cfg.token.reveal(), label="discord bot token")
        Route.BASE = self._cfg.api_base_url
        client = _Client(
            self,
            intents=_intents(self._cfg),
            allowed_mentions=discord.AllowedMentions.none(),
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            max_messages=None,
        )
        self._client = client
        try:
            await client.login(self._cfg.token.reveal())
        except discord.LoginFailure:
            await self._close()
            raise DiscordLoginError(
                f"Discord refused the bot token in ${self._cfg.token_env}"
            ) from None
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            await self._close()
            raise DiscordError(
                f"cannot reach Discord at {self._cfg.api_base_url} ({type(exc).__name__})"
            ) from None

    async def stop(self) -> None:
        """Close the gateway and HTTP session; idempotent."""
        await self._close()

    async def _close(self) -> None:
        client, task = self._client, self._task
        self._client, self._task = None, None
        self.scheduler.close()
        if client is not None:
            await client.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def sync_commands(self) -> bool:
        """Upload the slash commands where they differ from Discord's copy; True if uploaded."""
        client = self.client
        app_id = client.application_id
        if app_id is None:
            raise DiscordError("no application id after login")
        local = translate.command_definitions(self._catalog.providers)
        wanted = translate.canonical_commands(local)
        uploaded = False
        scopes: Sequence[str | None] = self._cfg.guild_ids or (None,)
        for guild in scopes:
            if guild is None:
                remote = await client.http.get_global_commands(app_id)
            else:
                remote = await client.http.get_guild_commands(app_id, int(guild))
            if translate.canonical_commands(remote) == wanted:
                _log.info("discord: slash commands unchanged (%s)", guild or "global")
                continue
            if guild is None:
                await client.http.bulk_upsert_global_commands(app_id, local)
            else:
                await client.http.bulk_upsert_guild_commands(app_id, int(guild), local)
            _log.info("discord: slash commands synced (%s)", guild or "global")
            uploaded = True
        return uploaded

    # -- inbound -----------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> Outcome | None:
        """Call the handler; a failure there is logged (type only: messages may hold input)."""
        handler = self._handler
        if handler is None:
            raise DiscordError("the Discord adapter is not started")
        recorded = await self._record(event)
        try:
            return await handler(event)
        except Exception as exc:  # noqa: BLE001 - the router is the catch-all; this is the net
            _log.error("discord: handler failed for %s: %s", event.event_id, type(exc).__name__)
            return None
        finally:
            if recorded:
                self._inbox.finish(event)

    async def _record(self, event: Event) -> bool:
        """Put the turn in the inbox; a storage failure only costs the crash note."""
        if not event.event_id:
            return False
        try:
            return bool(await self._inbox.record([event]))
        except Exception as exc:  # noqa: BLE001 - the turn goes on without the record
            _log.warning("discord: %s not recorded in the inbox (%s)", event.event_id, exc)
            return False

    async def _on_message(self, message: discord.Message) -> None:
        if self._handler is None or self._client is None or self._client.user is None:
            return
        if not await self._dedup.first_time(f"discord:message:{message.id}"):
            return
        event = translate.message_to_event(
            message_payload(message),
            bot_id=str(self._client.user.id),
            agent_channels=self._cfg.agent_channels,
        )
        if event is not None:
            await self._dispatch(event)

    async def _on_edit(self, message: discord.Message) -> None:
        if self._handler is None or self._client is None or self._client.user is None:
            return
        event = translate.edit_to_event(message_payload(message), bot_id=str(self._client.user.id))
        if event is not None and await self._dedup.first_time(event.event_id):
            await self._dispatch(event)

    async def _on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        if self._handler is None:
            return
        # Discord's 3 s run from here at the latest: the window to defer in is counted from
        # now, not from after the duplicate check (a database write that may wait its turn).
        received = self._clock()
        # A gateway resume can replay an interaction: it is answered once only.
        if not await self._dedup.first_time(f"discord:interaction:{interaction.id}"):
            _log.info("discord: interaction %s seen again, ignored", interaction.id)
            return
        payload = interaction_payload(interaction)
        data = payload["data"]
        if interaction.type is discord.InteractionType.autocomplete:
            await self._autocomplete(interaction, data)
            return
        custom_id = str(data.get("custom_id", ""))
        if interaction.type is discord.InteractionType.component and custom_id.startswith(
            translate.OPEN_SECRET_PREFIX
        ):
            await self._open_secret_form(interaction, custom_id)
            return
        event = translate.interaction_to_event(payload)
        if event is None:
            if not interaction.response.is_done():
                await self._guard(interaction.response.defer(), "acknowledge")
            return
        live = _Live(interaction=interaction, created=received)
        self._live[event.event_id] = live
        try:
            outcome = await self._run_within_window(event, live)
            if outcome is not None and outcome.secret_error:
                # The modal closed on submit: while the request is open, a button reopens it.
                reopen = None
                if outcome.secret_retry and event.intake_token:
                    request = self._pending_secrets.get(event.intake_token)
                    label = request.title if request else "API key"
                    reopen = translate.form_button(event.intake_token, label)
                await self._answer_ephemeral(live, event, outcome.secret_error, reopen)
            async with live.lock:
                if not live.answered and not live.gone:
                    # Nothing was said: acknowledge so Discord shows no failure.
                    await self._defer(live, event)
                    command = interaction.type is discord.InteractionType.application_command
                    if command and not live.gone:
                        await self._guard(interaction.delete_original_response(), "clear thinking")
        finally:
            self._live.pop(event.event_id, None)

    async def _run_within_window(self, event: Event, live: _Live) -> Outcome | None:
        task = asyncio.create_task(self._dispatch(event))
        left = self._cfg.defer_after - (self._clock() - live.created)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, left))
        if not done:
            async with live.lock:
                if not live.answered and not live.gone:
                    await self._defer(live, event)
        return await task

    async def _defer(self, live: _Live, event: Event) -> None:
        """Acknowledge without answering yet; caller holds ``live.lock``."""
        interaction = live.interaction
        if interaction.type is discord.InteractionType.component:
            # A deferred update shows nothing; answers come as follow-ups with their own flags.
            deferral = interaction.response.defer()
        else:
            # The deferred answer's visibility is fixed now: private outside DMs.
            deferral = interaction.response.defer(ephemeral=not event.chat.is_direct, thinking=True)
        try:
            await deferral
        except discord.HTTPException as exc:
            _log.warning("discord: defer failed: HTTP %s code %s", exc.status, exc.code)
            if exc.code == _UNKNOWN_INTERACTION:
                # Past Discord's 3 s: it would refuse the follow-ups too; answers go by message.
                live.gone = True
        live.answered = True

    async def _guard(self, call: Awaitable[Any], what: str) -> bool:
        try:
            await call
        except discord.HTTPException as exc:
            _log.warning("discord: %s failed: HTTP %s code %s", what, exc.status, exc.code)
            return False
        return True

    async def _answer_ephemeral(
        self, live: _Live, event: Event, text: str, view: discord.ui.View | None = None
    ) -> None:
        """A refused secret's reason: privately through the interaction, else in the DM."""
        reply = Reply(text=text, sensitive=True)
        piece = self._render(reply)
        async with live.lock:
            if self._alive(live):
                try:
                    await self._via_interaction(live, reply, piece, view, None)
                    return
                except _InteractionGone as exc:
                    _log.info("discord: interaction unusable (%s); answering in the DM", exc)
                    live.gone = True
                except DiscordSendError as exc:
                    _log.warning("discord: could not show a refused secret's reason: %s", exc)
                    return
        dm = await self.open_dm(event.user)
        if dm is None:
            _log.info("discord: no DM with %s for a refused secret's reason", event.user.id)
            return
        try:
            await self._post(dm, piece, view, None)
        except DiscordSendError as exc:
            _log.warning("discord: could not show a refused secret's reason: %s", exc)

    async def _autocomplete(self, interaction: discord.Interaction[Any], data: Any) -> None:
        focused = translate.focused_option(data)
        candidates: Sequence[str] = ()
        if focused is not None:
            candidates = {
                "provider": self._catalog.providers,
                "plan": self._catalog.plans,
                "name": self._catalog.models,
            }.get(focused[0], ())
        typed = focused[1] if focused else ""
        choices = [
            app_commands.Choice(name=c[:100], value=c)
            for c in translate.autocomplete_choices(typed, candidates)
        ]
        await self._guard(interaction.response.autocomplete(choices), "autocomplete")

    async def _open_secret_form(
        self, interaction: discord.Interaction[Any], custom_id: str
    ) -> None:
        token = custom_id[len(translate.OPEN_SECRET_PREFIX) :]
        request = self._pending_secrets.get(token)
        # After a restart the prompt is gone; the form still works and the router checks the
        # token (an expired one gets its clear answer when submitted).
        title = request.title if request else "API key"
        prompt = request.prompt if request else ""
        label = request.label if request else ""
        modal = translate.secret_modal(token, title=title, prompt=prompt, label=label)
        await self._guard(interaction.response.send_modal(modal), "open secret form")

    # -- Messenger ---------------------------------------------------------------------------

    def _render(self, reply: Reply) -> str:
        """The message text; the bot's own texts name commands in Discord's slash syntax."""
        if reply.format is TextFormat.PLAIN:
            reply = replace(reply, text=self._syntax(reply.text))
        return translate.render(reply)

    def _alive(self, live: _Live | None) -> bool:
        return (
            live is not None
            and not live.gone
            and self._clock() - live.created < INTERACTION_TOKEN_LIFETIME
        )

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        """Answer an event: through its interaction or its chat.

        Through an interaction the answer is ephemeral when sensitive, and always in a server
        channel. Without a usable interaction (a message event, a token past its 15 minutes,
        an interaction Discord no longer knows), personal replies (sensitive ones, and every
        answer to a command, button or form in a server) go to the DM and the others to the
        chat, as a reply to the person's message in servers.
        """
        live = self._live.get(event.event_id)
        pieces = translate.split_text(self._render(reply))
        first: MessageRef | None = None
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            view = translate.to_view(reply.buttons, bot_id=self._bot_id) if last else None
            file = _file(reply) if last else None
            ref: MessageRef | None = None
            if live is not None and self._alive(live):
                try:
                    async with live.lock:
                        ref = await self._via_interaction(live, reply, piece, view, file)
                except _InteractionGone as exc:
                    _log.info("discord: interaction unusable (%s); answering in the chat", exc)
                    live.gone = True
            if ref is None:
                personal = reply.sensitive or event.kind is not EventKind.MESSAGE
                if personal and not event.chat.is_direct:
                    # No ephemeral message outside interactions: personal replies go to the DM.
                    dm = await self.open_dm(event.user)
                    if dm is None:
                        _log.info("discord: no DM with %s for a personal reply", event.user.id)
                        return None
                    ref = await self._post(dm, piece, view, file)
                else:
                    quote = event.message_id if n == 0 and not event.chat.is_direct else None
                    if event.kind is not EventKind.MESSAGE:
                        quote = None
                    ref = await self._post(event.chat, piece, view, file, reply_to=quote)
            first = first or ref
        return first

    async def _via_interaction(
        self,
        live: _Live,
        reply: Reply,
        piece: str,
        view: discord.ui.View | None,
        file: discord.File | None,
    ) -> MessageRef:
        """One message through the interaction; caller holds ``live.lock``."""
        interaction = live.interaction
        chat = _interaction_chat(interaction)
        # In a server channel a command, button or form is one person's business: every
        # answer to it is ephemeral (onboarding, status, keys, the /delete confirmation).
        kwargs: dict[str, Any] = {"ephemeral": reply.sensitive or not chat.is_direct}
        if view is not None:
            kwargs["view"] = view
        if file is not None:
            kwargs["file"] = file
        try:
            if not live.answered:
                response = await interaction.response.send_message(piece, **kwargs)
                live.answered = True
                mid = str(response.message_id or "@original")
                self._remember(mid, _WebhookMessage(interaction, live.created, original=True))
                return MessageRef(chat=chat, id=mid)
            message = await interaction.followup.send(piece, wait=True, **kwargs)
        except discord.HTTPException as exc:
            if exc.code in _GONE_CODES:
                raise _InteractionGone(f"HTTP {exc.status} code {exc.code}") from exc
            raise DiscordSendError(f"interaction answer refused: HTTP {exc.status}") from exc
        mid = str(message.id)
        self._remember(mid, _WebhookMessage(interaction, live.created, original=False))
        return MessageRef(chat=chat, id=mid)

    def _remember(self, mid: str, record: _WebhookMessage) -> None:
        self._webhook_messages[mid] = record
        while len(self._webhook_messages) > _REMEMBERED:
            self._webhook_messages.popitem(last=False)

    async def _post(
        self,
        chat: ChatRef,
        text: str,
        view: discord.ui.View | None,
        file: discord.File | None,
        *,
        reply_to: str | None = None,
    ) -> MessageRef:
        kwargs: dict[str, Any] = {}
        if view is not None:
            kwargs["view"] = view
        if file is not None:
            kwargs["file"] = file
        channel_id = int(chat.thread_id or chat.id)
        if reply_to is not None:
            kwargs["reference"] = discord.MessageReference(
                message_id=int(reply_to), channel_id=channel_id, fail_if_not_exists=False
            )
        channel = self.client.get_partial_messageable(channel_id)
        try:
            message = await channel.send(text, **kwargs)
        except discord.HTTPException as exc:
            raise DiscordSendError(f"message refused: HTTP {exc.status} code {exc.code}") from exc
        return MessageRef(chat=chat, id=str(message.id))

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        """Post to a channel or DM (split at 2000 characters; buttons on the last piece)."""
        pieces = translate.split_text(self._render(reply))
        first: MessageRef | None = None
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            view = translate.to_view(reply.buttons, bot_id=self._bot_id) if last else None
            ref = await self._post(chat, piece, view, _file(reply) if last else None)
            first = first or ref
        return first

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        """Replace a message's text and buttons (text beyond 2000 characters is cut)."""
        text = translate.split_text(self._render(reply))[0]
        view = translate.to_view(reply.buttons, bot_id=self._bot_id)
        record = self._webhook_messages.get(message.id)
        try:
            if record is not None and self._clock() - record.created < INTERACTION_TOKEN_LIFETIME:
                if record.original:
                    await record.interaction.edit_original_response(content=text, view=view)
                else:
                    await record.interaction.followup.edit_message(
                        int(message.id), content=text, view=view
                    )
                return
            channel = self.client.get_partial_messageable(
                int(message.chat.thread_id or message.chat.id)
            )
            await channel.get_partial_message(int(message.id)).edit(content=text, view=view)
        except discord.HTTPException as exc:
            raise DiscordSendError(f"edit refused: HTTP {exc.status} code {exc.code}") from exc

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        """Delete a message; False (logged at INFO, no content) when Discord refuses."""
        try:
            await self.client.http.delete_message(int(chat.thread_id or chat.id), int(message_id))
        except (discord.Forbidden, discord.NotFound) as exc:
            _log.info(
                "discord: could not delete message %s in %s: HTTP %s code %s",
                message_id,
                chat.id,
                exc.status,
                exc.code,
            )
            return False
        except discord.HTTPException as exc:
            raise DiscordSendError(f"delete failed: HTTP {exc.status} code {exc.code}") from exc
        return True

    async def download(self, file: FileRef, limit: int) -> bytes:
        """An attachment from Discord's CDN (or the configured API host, for tests)."""
        if file.size is not None and file.size > limit:
            raise FileTooLarge(file.size)
        api_host = urlsplit(self._cfg.api_base_url).hostname or ""
        return await filefetch.fetch(file.ref, limit, hosts=(*_CDN_HOSTS, api_host))

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        """The DM channel with a person; None when Discord will not open one."""
        try:
            channel = await self.client.create_dm(discord.Object(id=int(user.id)))
        except discord.HTTPException as exc:
            _log.info("discord: cannot open a DM with %s: HTTP %s", user.id, exc.status)
            return None
        return ChatRef(platform=Platform.DISCORD, id=str(channel.id), is_direct=True)

    async def typing(self, chat: ChatRef) -> None:
        """Show "typing…" in a channel for up to 10 seconds."""
        await self._guard(
            self.client.http.send_typing(int(chat.thread_id or chat.id)), "typing indicator"
        )

    async def ask_secret(self, event: Event, request: SecretRequest) -> bool:
        """Open the key modal from the event's interaction, or offer a button that opens it.

        A modal can only be the first answer to a command or button press; otherwise (already
        deferred, a modal submission, a plain message) the person gets a button, ephemeral
        under the interaction or in their DM, and the modal opens from that. False when the
        person cannot be reached privately (no interaction and no DM).
        """
        self._pending_secrets[request.token] = request
        while len(self._pending_secrets) > _REMEMBERED:
            self._pending_secrets.popitem(last=False)
        live = self._live.get(event.event_id)
        prompt = discord.utils.escape_markdown(request.prompt)
        if live is not None and self._alive(live):
            try:
                async with live.lock:
                    await self._secret_via_interaction(live, request, prompt)
                    return True
            except _InteractionGone as exc:
                _log.info("discord: interaction unusable (%s); offering the key form by DM", exc)
                live.gone = True
        dm = event.chat if event.chat.is_direct else await self.open_dm(event.user)
        if dm is None:
            return False
        try:
            await self._post(dm, prompt, translate.secret_button(request), None)
        except DiscordSendError:
            # Discord refuses DMs to people who closed them to server members.
            _log.info("discord: cannot DM %s the key form", event.user.id)
            return False
        return True

    async def _secret_via_interaction(
        self, live: _Live, request: SecretRequest, prompt: str
    ) -> None:
        """The modal as the first answer, else a private button; caller holds ``live.lock``."""
        modal_ok = live.interaction.type in (
            discord.InteractionType.application_command,
            discord.InteractionType.component,
        )
        if modal_ok and not live.answered:
            modal = translate.secret_modal(
                request.token, title=request.title, prompt=request.prompt, label=request.label
            )
            try:
                await live.interaction.response.send_modal(modal)
            except discord.HTTPException as exc:
                if exc.code in _GONE_CODES:
                    raise _InteractionGone(f"HTTP {exc.status} code {exc.code}") from exc
                raise DiscordSendError(f"modal refused: HTTP {exc.status}") from exc
            live.answered = True
            return
        button = translate.secret_button(request)
        await self._via_interaction(live, Reply(prompt, sensitive=True), prompt, button, None)

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        """Show a streamed reply: typing first, then one message edited at the channel's pace.

        Text beyond 2000 characters continues in a new message, cut between words. If the
        iterator raises, the text received so far stays shown and the error propagates.
        """
        streamer = _Stream(self, event)
        return await streamer.run(chunks)

    # -- pacing ------------------------------------------------------------------------------

    @staticmethod
    def _keys(channel_id: str, kind: str) -> tuple[Key, ...]:
        return (("global", ""), (kind, channel_id))

    def _stream_interval(self, channel_id: str) -> float:
        """Seconds between two intermediate edits of one stream.

        Longer when the channel or the bot is busy, so every live stream gets its share of
        the edit budget.
        """
        edit, bot = DISCORD_WINDOWS["edit"], DISCORD_WINDOWS["global"]
        in_channel = self._live_streams.get(channel_id, 1)
        everywhere = sum(self._live_streams.values())
        return max(
            self._cfg.edit_interval,
            in_channel * edit.low_share,
            everywhere * bot.low_share * 2,
        )

    async def _edit_retried(self, message: MessageRef, reply: Reply) -> None:
        """An edit, tried again after a timeout or a server error.

        Repeating an edit is harmless; discord.py itself waits out 429s and retries some 5xx.
        """

        async def once() -> None:
            async with asyncio.timeout(self.edit_timeout):
                await self.edit(message, reply)

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, TimeoutError | aiohttp.ClientError | ConnectionError):
                return True
            cause = exc.__cause__
            return (
                isinstance(exc, DiscordSendError)
                and isinstance(cause, discord.HTTPException)
                and cause.status in _RETRIED_STATUSES
            )

        def counted(exc: BaseException, attempt: int) -> None:
            PLATFORM_RETRIES.labels("discord").inc()
            _log.info("discord: an edit failed (%s); retry %d", type(exc).__name__, attempt)

        await with_retries(once, retryable=retryable, retries=_RETRIES, on_retry=counted)


class _Stream:
    """One streamed reply: accumulates chunks, shows them paced, splits at the limit.

    Every message call takes a slot from the bot's scheduler first: a new message (the
    reply's first visible text) at HIGH priority, an intermediate edit at LOW and no sooner
    than the stream's interval after its last one, the final text at HIGH. The text is read
    once the slot is granted, so whatever arrived while waiting goes in one edit (coalesced).
    A failed intermediate edit does not end the reply: the next one or the final text shows it.
    """

    def __init__(self, adapter: DiscordAdapter, event: Event) -> None:
        self.adapter = adapter
        self.event = event
        self.channel = event.chat.thread_id or event.chat.id
        self.full = ""
        self.start = 0  # where the current message's text begins in ``full``
        self.shown = ""  # what the current message shows
        self.current: MessageRef | None = None
        self.first: MessageRef | None = None
        self.last: MessageRef | None = None
        self.changed = asyncio.Event()
        self.last_edit: float | None = None

    async def run(self, chunks: AsyncIterator[str]) -> MessageRef | None:
        adapter = self.adapter
        await adapter.typing(self.event.chat)
        live = adapter._live_streams
        live[self.channel] = live.get(self.channel, 0) + 1
        reader = asyncio.create_task(self._read(chunks))
        try:
            while True:
                try:
                    async with asyncio.timeout(adapter.typing_refresh):
                        await self.changed.wait()
                except TimeoutError:
                    if self.current is None and not reader.done():
                        await adapter.typing(self.event.chat)
                    continue
                self.changed.clear()
                if self.full[self.start :] != self.shown:
                    if self.current is not None and not reader.done():
                        await self._wait_turn(reader)
                    await self._show(final=reader.done())
                if reader.done() and not self.changed.is_set():
                    break
            # Whatever arrived during the last edit is shown before an error propagates.
            if self.full[self.start :] != self.shown:
                await self._show(final=True)
            reader.result()
        finally:
            left = live.get(self.channel, 1) - 1
            if left > 0:
                live[self.channel] = left
            else:
                live.pop(self.channel, None)
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return self.last

    async def _wait_turn(self, reader: asyncio.Task[None]) -> None:
        """Sleep until this stream's next edit is due; the reader keeps reading meanwhile.

        The end of the stream cuts the wait short: the final text goes at once.
        """
        if self.last_edit is None:
            return
        adapter = self.adapter
        due = self.last_edit + adapter._stream_interval(self.channel) - adapter._clock()
        if due > 0:
            await asyncio.wait([reader], timeout=due)

    async def _read(self, chunks: AsyncIterator[str]) -> None:
        try:
            async for chunk in chunks:
                self.full += chunk
                self.changed.set()
        finally:
            self.changed.set()

    async def _show(self, *, final: bool) -> None:
        """Bring the messages up to date with ``full`` (one call per message touched)."""
        while len(self.full[self.start :]) > translate.MESSAGE_LIMIT:
            segment = self.full[self.start :]
            head = translate.split_text(segment)[0]
            await self._put(head, final=True)
            consumed = len(segment) - len(segment[len(head) :].lstrip())
            self.start += consumed
            self.current, self.shown = None, ""
        if self.current is None:
            await self._put(None, final=final)
            return
        if self.full[self.start :].strip() and self.full[self.start :] != self.shown:
            await self._put(None, final=final)

    async def _put(self, text: str | None, *, final: bool) -> None:
        """Create or edit the current message with ``text``.

        None: the latest text, read once the scheduler lets the call go.
        """
        adapter = self.adapter
        creating = self.current is None
        kind = "post" if creating else "edit"
        priority = Priority.HIGH if creating or final else Priority.LOW
        async with adapter.scheduler.slot(adapter._keys(self.channel, kind), priority):
            if text is None:
                text = self.full[self.start :]
                if len(text) > translate.MESSAGE_LIMIT:
                    text = translate.split_text(text)[0]
            if not text.strip() or text == self.shown:
                return
            reply = Reply(text=text, format=TextFormat.MARKDOWN)
            if self.current is None:
                if self.first is None:
                    ref = await adapter.respond(self.event, reply)
                else:
                    ref = await adapter.send(
                        self.last.chat if self.last else self.event.chat, reply
                    )
                self.first = self.first or ref
                self.current = ref
            else:
                try:
                    await adapter._edit_retried(self.current, reply)
                except (DiscordSendError, TimeoutError, aiohttp.ClientError) as exc:
                    if final:
                        raise
                    _log.info("discord: a stream edit failed (%s); the next one shows it", exc)
                    self.last_edit = adapter._clock()
                    return
            self.shown = text
            self.last = self.current or self.last
            self.last_edit = adapter._clock()


# -- SDK objects as Discord payloads (what translate.py reads) ------------------------------


def interaction_payload(interaction: discord.Interaction[Any]) -> dict[str, Any]:
    """The parts of an INTERACTION_CREATE that ``translate`` reads, in Discord's own shape."""
    user = interaction.user
    payload: dict[str, Any] = {
        "id": str(interaction.id),
        "type": interaction.type.value,
        "data": dict(interaction.data or {}),
        "channel_id": str(interaction.channel_id),
        "channel": {"type": getattr(getattr(interaction.channel, "type", None), "value", 1)},
        "user": {"id": str(user.id), "username": user.name, "global_name": user.global_name},
    }
    if interaction.guild_id is not None:
        payload["guild_id"] = str(interaction.guild_id)
    if interaction.message is not None:
        payload["message"] = {"id": str(interaction.message.id)}
    return payload


def message_payload(message: discord.Message) -> dict[str, Any]:
    """The parts of a MESSAGE_CREATE that ``translate`` reads, in Discord's own shape."""
    author = message.author
    payload: dict[str, Any] = {
        "id": str(message.id),
        "type": message.type.value,
        "channel_id": str(message.channel.id),
        "content": message.content,
        "edited_timestamp": message.edited_at.isoformat() if message.edited_at else None,
        "author": {
            "id": str(author.id),
            "username": author.name,
            "global_name": author.global_name,
            "bot": author.bot,
        },
        "mentions": [{"id": str(m.id)} for m in message.mentions],
        "flags": message.flags.value,
        # What tells the kind apart, and where the bot downloads it from (the CDN URL is
        # signed, no token): an agent never sees the URL, only what the bot made of the file.
        "attachments": [
            {
                "content_type": a.content_type or "",
                "filename": a.filename,
                "size": a.size,
                "url": a.url,
                **({"waveform": a.waveform} if a.waveform else {}),
            }
            for a in message.attachments
        ],
        "sticker_items": [{"id": str(s.id)} for s in message.stickers],
    }
    if message.webhook_id is not None:
        payload["webhook_id"] = str(message.webhook_id)
    guild_id = message.guild.id if message.guild else getattr(message.channel, "guild_id", None)
    if guild_id is not None:
        payload["guild_id"] = str(guild_id)
    resolved = message.reference.resolved if message.reference else None
    if isinstance(resolved, discord.Message):
        payload["referenced_message"] = {"author": {"id": str(resolved.author.id)}}
    return payload


def _interaction_chat(interaction: discord.Interaction[Any]) -> ChatRef:
    return ChatRef(
        platform=Platform.DISCORD,
        id=str(interaction.channel_id),
        is_direct=interaction.guild_id is None,
    )


def _file(reply: Reply) -> discord.File | None:
    if reply.image is not None:
        return discord.File(io.BytesIO(reply.image), filename="image.png")
    if reply.document is not None:
        return discord.File(io.BytesIO(reply.document.content), filename=reply.document.filename)
    return None
