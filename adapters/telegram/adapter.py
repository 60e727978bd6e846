"""The Telegram adapter: python-telegram-bot's ``Application`` wired to the neutral chat model.

It translates and delivers; it decides nothing. Errors from the SDK are wrapped::

    TelegramAdapterError          anything the Telegram side refused or could not do
    ├── TelegramLoginError        the token was rejected at start (getMe)
    ├── TelegramUnavailable       network trouble, timeouts, server errors
    ├── TelegramPollingConflict   another process polls this bot (409 Conflict at start)
    ├── TelegramRateLimited       429 still answered after the configured retries
    ├── TelegramRequestRejected   400: Telegram refused the request (bad chat, bad markup...)
    │   └── MessageGone           the message to edit was deleted (or is too old to edit)
    └── ChatUnreachable           403: the person blocked the bot or never started it

``send``/``respond`` do not raise ``ChatUnreachable``: they mark the chat unreachable, log it
and return None, because a blocked bot is an expected, permanent condition of one chat and must
not break a broadcast or a flow. A later update from that chat clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from aiohttp import web
from telegram import BotCommand, InputFile, LabeledPrice, Message, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ContextTypes,
    ExtBot,
    TypeHandler,
)

from adapters.telegram import translate
from adapters.telegram.config import TelegramConfig, parse
from adapters.telegram.pacing import FloodLimits, FloodScheduler, Priority, granted
from core.chat import (
    ChatRef,
    Document,
    Event,
    EventKind,
    FileRef,
    MessageRef,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)
from core.config import Config, PlatformSettings
from core.dedup import Deduplicator, InMemoryDeduplicator
from core.errors import ConfigError
from core.inbox import InboxPort, MemoryInbox
from core.logs import RedactingFilter, register_secret
from core.ports import EventHandler, FileTooLarge, FileUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# Opt in to python-telegram-bot 23's timedelta durations now: without it every RetryAfter (a
# 429) emits a PTBDeprecationWarning, which the test suite turns into an error.
os.environ.setdefault("PTB_TIMEDELTA", "true")

COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("start", "Sign up or resume"),
    ("help", "What I can do"),
    ("plan", "Choose or change your plan"),
    ("key", "Add, replace or remove your API key"),
    ("model", "Pick the model"),
    ("persona", "Set your agent's persona"),
    ("reset", "Forget this conversation"),
    ("new", "Start a new conversation"),
    ("history", "Recent conversations, switch or export"),
    ("compact", "Summarise this conversation so far"),
    ("stop", "Stop the reply in progress"),
    ("memory", "What your agent remembers about you"),
    ("tasks", "Your scheduled reminders"),
    ("timezone", "Your time zone for reminders"),
    ("mcp", "Your MCP servers (tools)"),
    ("status", "Your plan, key and agent"),
    ("usage", "Usage this month"),
    ("pause", "Pause your agent"),
    ("resume", "Resume your agent"),
    ("link", "Link another chat account"),
    ("cancel", "Cancel a pending request"),
    ("whoami", "Your id for the admin list"),
    ("delete", "Delete your account and data"),
    ("admin", "Operator commands"),
)
"""The command menu sent with ``setMyCommands`` (the composition root may pass its own)."""

ALLOWED_UPDATES: Final = (
    "message",
    "edited_message",
    "callback_query",
    "my_chat_member",
    "pre_checkout_query",
)
_CONFLICT: Final = (
    "another process is polling this bot (Telegram answered 409 Conflict); stop it first, "
    "or use webhook mode to run several processes"
)
_WEBHOOK_MAX_BODY: Final = 1 << 20  # Telegram updates are a few KiB; refuse anything huge.


# ----- errors ------------------------------------------------------------------------------


class TelegramAdapterError(Exception):
    """Root of the Telegram adapter's errors. Messages never contain the token or user text."""


class TelegramLoginError(TelegramAdapterError):
    """Telegram rejected the bot token."""


class TelegramUnavailable(TelegramAdapterError):
    """The Bot API could not be reached or timed out."""


class TelegramPollingConflict(TelegramAdapterError):
    """Another process is polling this bot; Telegram serves one poller per token."""


class TelegramRateLimited(TelegramAdapterError):
    """Flood control outlasted the configured retries."""


class TelegramRequestRejected(TelegramAdapterError):
    """Telegram answered 400 Bad Request."""


class MessageGone(TelegramRequestRejected):
    """The message to edit is no longer there to edit: deleted, or too old."""


# Telegram's wording (400) for an edit of a message that cannot be edited any more.
_GONE: Final = ("message to edit not found", "message can't be edited", "message_id_invalid")


class ChatUnreachable(TelegramAdapterError):
    """The bot may not write to this chat (blocked, never started, removed from the group)."""

    def __init__(self, chat_id: str, reason: str) -> None:
        super().__init__(f"chat {chat_id} is unreachable: {reason}")
        self.chat_id = chat_id


# ----- token redaction ---------------------------------------------------------------------

# The loggers that can print the token: httpx logs request URLs (".../bot<TOKEN>/sendMessage"),
# python-telegram-bot's Bot repr and InvalidToken message contain it. ``configure_logging``
# redacts at the root handler; these logger-level filters also cover an embedding application
# (or a test) that set up its own handlers.
_SDK_FILTER: Final = RedactingFilter()


def _guard_loggers() -> None:
    names = ["httpx", "httpcore", "telegram", __name__]
    names += [
        n for n in logging.root.manager.loggerDict if n.startswith(("telegram.", "httpcore."))
    ]
    for name in names:
        logger = logging.getLogger(name)
        if _SDK_FILTER not in logger.filters:
            logger.addFilter(_SDK_FILTER)


# ----- the adapter -------------------------------------------------------------------------


class TelegramAdapter:
    """Serves one Telegram bot (polling or webhook) and implements ``Messenger`` on it.

    Args:
        config: the parsed ``[telegram]`` table; ``config.token`` must be set.
        clock: monotonic seconds, for stream pacing (tests pass a manual clock).
        dedup: remembers processed ``update_id`` values (one per process by default); only
            used when no ``inbox`` is given.
        inbox: where every update is recorded before its offset is confirmed (or its webhook
            answered); the app passes the database's durable inbox.
        commands: the ``setMyCommands`` menu as ``(command, description)`` pairs.
        typing_refresh: seconds between "typing..." actions while a reply is awaited
            (Telegram shows one for about five seconds).
        sleep: waits until a paced stream update is due (tests pass a controllable one).
        limits: the flood windows of the outbound scheduler (Telegram's by default); they
            count real time, not ``clock``.
    """

    platform = Platform.TELEGRAM

    def __init__(
        self,
        config: TelegramConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        dedup: Deduplicator | None = None,
        inbox: InboxPort | None = None,
        commands: Sequence[tuple[str, str]] = COMMANDS,
        typing_refresh: float = 4.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: FloodLimits | None = None,
    ) -> None:
        if config.token is None:
            raise ValueError(f"{config.token_env} is not set")
        self.config = config
        self._clock = clock
        self._inbox: InboxPort = inbox or MemoryInbox(dedup or InMemoryDeduplicator())
        self._poller: asyncio.Task[None] | None = None
        self._commands = tuple(commands)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._handler: EventHandler | None = None
        self._bot_id = 0
        self._bot_username = ""
        self._unreachable: set[str] = set()
        self._next_edit: dict[str, float] = {}
        # One scheduler for every request of this bot: Telegram's limits are per bot.
        self._scheduler = FloodScheduler(
            limits
            or FloodLimits.of(
                chat_burst=config.chat_burst,
                chat_seconds=config.chat_seconds,
                group_per_minute=config.group_per_minute,
                bot_per_second=config.bot_per_second,
            ),
            retries=config.rate_limit_retries,
        )
        self._live: dict[str, int] = {}  # streams in progress, by chat
        self._typing_at: dict[str, float] = {}
        self._typing_refresh = typing_refresh
        self._sleep = sleep
        self._drafts_ok = config.stream_drafts
        self._draft_seq = 0
        self._webhook: web.AppRunner | None = None
        self._failed: asyncio.Future[Exception] | None = None
        self._conflict_fatal_until = 0.0
        self._poll_failing = False  # the last getUpdates failed: not connected (``/readyz``)
        register_secret(config.token.reveal(), label="telegram bot token")
        if config.webhook_secret is not None:
            register_secret(config.webhook_secret.reveal(), label="telegram webhook secret")
        _guard_loggers()

    def __repr__(self) -> str:
        # python-telegram-bot's Bot repr shows the token; ours must not.
        return f"TelegramAdapter(mode={self.config.mode!r}, bot={self._bot_username!r})"

    # ----- lifecycle -----------------------------------------------------------------------

    @property
    def messenger(self) -> TelegramAdapter:
        return self

    @property
    def bot_username(self) -> str:
        return self._bot_username

    @property
    def unreachable_chats(self) -> frozenset[str]:
        """Chats that answered 403 (blocked or never started) since their last update."""
        return frozenset(self._unreachable)

    def deep_link(self, start: str = "") -> str:
        """The link that opens the bot's DM, sending ``/start <start>`` on first use."""
        return translate.deep_link(self._bot_username, start)

    def _build_app(self) -> Application[Any, Any, Any, Any, Any, Any]:
        cfg = self.config
        if cfg.token is None:
            raise TelegramLoginError(f"{cfg.token_env} is not set")
        builder = (
            ApplicationBuilder()
            .token(cfg.token.reveal())
            .base_url(cfg.api_base_url)
            .base_file_url(cfg.file_base_url)
            .rate_limiter(self._scheduler)
            .concurrent_updates(True)
            .get_updates_read_timeout(cfg.poll_timeout + 10.0)
            .job_queue(None)
        )
        app = builder.build()
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_error)
        return app

    async def start(self, handler: EventHandler) -> None:
        """Log in (getMe), publish the command menu, then poll or serve the webhook."""
        if self._app is not None:
            return
        cfg = self.config
        self._handler = handler
        app = await self._log_in()
        self._failed = asyncio.get_running_loop().create_future()
        try:
            if cfg.sync_commands and self._commands:
                await app.bot.set_my_commands([BotCommand(c, d) for c, d in self._commands])
            await app.start()
            if cfg.mode == "webhook":
                await self._start_webhook(app)
            else:
                if app.updater is None:
                    raise TelegramAdapterError("python-telegram-bot built no updater")
                await self._check_sole_poller(app)
                # A second poller may also show up as a 409 in the first polls (on the real
                # server the newest request wins, so the probe above can pass): still ours to
                # refuse while we are starting.
                self._conflict_fatal_until = self._clock() + cfg.poll_timeout + 15.0
                # Our own loop rather than the SDK's updater: the updater confirms an update
                # (the next offset) before it is handled, so a crash would lose it.
                await app.bot.delete_webhook(drop_pending_updates=cfg.drop_pending_updates)
                self._poller = asyncio.create_task(self._poll(app))
        except (TelegramError, TelegramAdapterError, OSError) as exc:
            await self.stop()
            if isinstance(exc, TelegramAdapterError):
                raise
            if isinstance(exc, OSError):  # the webhook port is taken, or not ours to bind
                raise TelegramAdapterError(
                    f"cannot listen on {cfg.webhook_listen}:{cfg.webhook_port}: {exc.strerror}"
                ) from None
            raise self._wrap(exc, "start-up") from None
        log.info("telegram: serving @%s by %s", self._bot_username, cfg.mode)

    async def _log_in(self) -> Application[Any, Any, Any, Any, Any, Any]:
        """Build the application and call ``getMe``; the adapter can send from then on."""
        cfg = self.config
        app = self._build_app()
        try:
            await app.initialize()
        except InvalidToken:
            raise TelegramLoginError(
                f"Telegram rejected the bot token in {cfg.token_env} (or api_base_url "
                f"{cfg.api_base_url} is not a Bot API server)"
            ) from None
        except TelegramError as exc:
            raise TelegramUnavailable(
                f"cannot reach the Bot API at {cfg.api_base_url} ({type(exc).__name__})"
            ) from None
        self._app = app
        self._bot_id = app.bot.id
        self._bot_username = app.bot.username
        return app

    async def open_for_sending(self) -> None:
        """Log in to send only (``byokbot admin`` notices): no polling, webhook or menu."""
        if self._app is None:
            await self._log_in()

    async def _check_sole_poller(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Refuse to start beside another poller of the same bot (Telegram answers 409).

        One short ``getUpdates`` without an offset: it confirms nothing, so no update is lost.
        """
        try:
            await app.bot.get_updates(timeout=0, limit=1)
        except Conflict as exc:
            if "webhook" in exc.message.lower():
                return  # a webhook is registered: start_polling removes it
            raise TelegramPollingConflict(_CONFLICT) from None

    def _on_poll_error(self, exc: TelegramError) -> None:
        """python-telegram-bot retries every polling error; we decide what to say about it."""
        if isinstance(exc, Conflict) and "webhook" not in exc.message.lower():
            failed = self._failed
            if self._clock() < self._conflict_fatal_until and failed is not None:
                if not failed.done():
                    failed.set_result(TelegramPollingConflict(_CONFLICT))
                return
            log.warning("telegram: another process is polling this bot too (409 Conflict)")
            return
        log.warning("telegram: polling failed, retrying: %s", type(exc).__name__)

    async def failure(self) -> Exception:
        """Returns when this adapter cannot go on serving (another poller took the bot)."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return await self._failed

    async def _start_webhook(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Serve ``POST /<webhook_path>`` and register the public URL with ``setWebhook``.

        Our own small aiohttp server rather than python-telegram-bot's, so the secret token is
        compared in constant time (the SDK compares with ``!=``) and its DEBUG log never
        echoes a wrong token.
        """
        cfg = self.config
        secret = cfg.webhook_secret
        if secret is None:
            raise TelegramAdapterError(f"{cfg.webhook_secret_env} is not set")
        web_app = web.Application(client_max_size=_WEBHOOK_MAX_BODY)
        web_app.router.add_post(f"/{cfg.webhook_path}", self._on_webhook)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        self._webhook = runner
        await web.TCPSite(runner, cfg.webhook_listen, cfg.webhook_port).start()
        await app.bot.set_webhook(
            url=cfg.webhook_public_url,
            secret_token=secret.reveal(),
            allowed_updates=ALLOWED_UPDATES,
            drop_pending_updates=cfg.drop_pending_updates,
        )

    async def _on_webhook(self, request: web.Request) -> web.Response:
        secret = self.config.webhook_secret
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if secret is None or not hmac.compare_digest(given.encode(), secret.reveal().encode()):
            log.info("telegram: webhook request without the right secret token refused")
            return web.Response(status=403)
        if request.content_type != "application/json":
            return web.Response(status=415)
        app = self._app
        if app is None:
            return web.Response(status=503)
        try:
            data = await request.json()
            update = Update.de_json(data, app.bot) if isinstance(data, dict) else None
        except ValueError:
            update = None
        if update is None:
            log.info("telegram: webhook body is not an update; refused")
            return web.Response(status=400)
        try:
            fresh = await self._accept([update])
        except Exception as exc:  # noqa: BLE001 - any storage failure: Telegram must retry
            log.warning("telegram: webhook update not recorded (%s); answered 503", exc)
            return web.Response(status=503)
        # The 200 goes out only now that the update is in the inbox; the application's update
        # queue feeds the same handler as polling does.
        for u in fresh:
            await app.update_queue.put(u)
        return web.Response(status=200)

    async def _poll(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Long-poll ``getUpdates``; the offset moves past a batch only once it is recorded."""
        cfg = self.config
        offset: int | None = None
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                updates = await app.bot.get_updates(
                    offset=offset, timeout=cfg.poll_timeout, allowed_updates=ALLOWED_UPDATES
                )
            except TelegramError as exc:
                self._poll_failing = True
                self._on_poll_error(exc)
                delay = min(max(delay * 2, 1.0), 30.0)
                continue
            self._poll_failing = False
            if not updates:
                delay = 0.0
                continue
            try:
                fresh = await self._accept(updates)
            except Exception as exc:  # noqa: BLE001 - any storage failure: do not confirm
                log.warning(
                    "telegram: %d update(s) not recorded (%s); not confirmed, retrying",
                    len(updates),
                    exc,
                )
                delay = min(max(delay * 2, 0.5), 10.0)
                continue
            delay = 0.0
            # The next getUpdates confirms them; the inbox holds them if we die first.
            offset = max(u.update_id for u in updates) + 1
            for u in fresh:
                await app.update_queue.put(u)

    def is_connected(self) -> bool:
        """Whether updates can reach us: the last poll got through, or the webhook is set."""
        if self._app is None:
            return False
        if self.config.mode == "webhook":
            return self._webhook is not None
        return self._poller is not None and not self._poller.done() and not self._poll_failing

    async def _accept(self, updates: Sequence[Update]) -> list[Update]:
        """Record the updates that carry an event; return those to handle (new or eventless)."""
        events: dict[int, Event] = {}
        for u in updates:
            if translate.reachability(u) is not None:
                continue
            event = self._translate(u)
            if event is not None:
                events[u.update_id] = event
        fresh = {e.event_id for e in await self._inbox.record(list(events.values()))}
        out: list[Update] = []
        for u in updates:
            event = events.get(u.update_id)
            if event is not None and event.event_id not in fresh:
                log.info("telegram: update %s was delivered again; ignored", u.update_id)
                continue
            out.append(u)
        return out

    async def stop(self) -> None:
        """Stop polling or the webhook server, then the application; safe to call twice."""
        app, self._app = self._app, None
        webhook, self._webhook = self._webhook, None
        if webhook is not None:
            await webhook.cleanup()
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if app is None:
            return
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()

    @property
    def _bot(self) -> ExtBot[Any]:
        if self._app is None:
            raise TelegramUnavailable("the Telegram adapter is not started")
        bot: ExtBot[Any] = self._app.bot
        return bot

    # ----- incoming ------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Only new updates get here: the poll loop and the webhook recorded them (``_accept``).
        membership = translate.reachability(update)
        if membership is not None:
            chat_id, reachable = membership
            log.info("telegram: chat %s is now %s", chat_id, "open" if reachable else "closed")
            if reachable:
                self._unreachable.discard(chat_id)
            else:
                self._unreachable.add(chat_id)
            return
        event = self._translate(update)
        if event is None:
            return
        self._unreachable.discard(event.chat.id)
        handler = self._handler
        if handler is None:  # stop() raced with a last update
            return
        log.debug("telegram: update %s -> %s", update.update_id, event.kind.value)
        query = update.callback_query
        if query is not None:
            # Answer first: the person's spinner stops at once, whatever the handler does.
            try:
                await query.answer()
            except TelegramError as exc:
                # Too late (older than ~15 s) or already answered; the press still counts.
                log.info("telegram: callback answer refused: %s", type(exc).__name__)
        try:
            outcome = await handler(event)
        finally:
            self._inbox.finish(event)
        checkout = update.pre_checkout_query
        if checkout is not None:
            # Telegram waits 10 s for this answer; the router checked tenant and plan.
            ok = not outcome.refused
            try:
                await checkout.answer(ok=ok, error_message=None if ok else outcome.error)
            except TelegramError as exc:
                log.warning("telegram: pre-checkout answer refused: %s", type(exc).__name__)

    def _translate(self, update: Update) -> Event | None:
        event = translate.to_event(update, bot_id=self._bot_id, bot_username=self._bot_username)
        if event is None:
            return None
        # Update ids count per bot: two bots sharing a database must not take each other's
        # deliveries for redeliveries.
        return dataclasses.replace(
            event, event_id=f"telegram:{self._bot_id}:update:{update.update_id}"
        )

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        uid = update.update_id if isinstance(update, Update) else None
        log.error("telegram: handling update %s failed", uid, exc_info=context.error)

    # ----- calls ---------------------------------------------------------------------------

    def _wrap(self, exc: TelegramError, what: str, chat_id: str | None = None) -> Exception:
        if isinstance(exc, Forbidden):
            if chat_id is not None:
                self._unreachable.add(chat_id)
                return ChatUnreachable(chat_id, exc.message)
            return TelegramRequestRejected(f"{what}: {exc.message}")
        if isinstance(exc, RetryAfter):
            # Already counted by the scheduler, which sees every 429 (retried or not).
            return TelegramRateLimited(f"{what}: flood control ({exc})")
        if isinstance(exc, BadRequest):
            return TelegramRequestRejected(f"{what}: {exc.message}")
        if isinstance(exc, InvalidToken):
            return TelegramLoginError(f"{what}: the bot token was rejected")
        if isinstance(exc, NetworkError):
            return TelegramUnavailable(f"{what}: {type(exc).__name__}")
        return TelegramAdapterError(f"{what}: {type(exc).__name__}")

    async def _call(self, what: str, chat_id: str | None, call: Awaitable[T]) -> T:
        try:
            return await call
        except TelegramError as exc:
            raise self._wrap(exc, what, chat_id) from None

    async def _send_text(self, chat: ChatRef, out: translate.Outgoing, **extra: Any) -> MessageRef:
        """Send one part, following a group that became a supergroup (``ChatMigrated``)."""
        kwargs = {**out.kwargs, **extra}
        if chat.thread_id is not None:
            kwargs["message_thread_id"] = int(chat.thread_id)
        try:
            msg = await self._send_message(chat.id, kwargs, out.plain)
        except ChatMigrated as exc:
            moved = ChatRef(chat.platform, str(exc.new_chat_id), chat.is_direct, chat.thread_id)
            log.info("telegram: chat %s is now %s; sending there", chat.id, moved.id)
            chat = moved
            try:
                msg = await self._send_message(chat.id, kwargs, out.plain)
            except ChatMigrated as again:
                raise self._wrap(again, "sendMessage", chat.id) from None
        return MessageRef(chat, str(msg.message_id))

    async def _send_message(self, chat_id: str, kwargs: dict[str, Any], plain: str) -> Message:
        """``sendMessage``; if Telegram cannot parse our HTML, the plain text instead."""
        try:
            return await self._bot.send_message(chat_id=chat_id, **kwargs)
        except ChatMigrated:
            raise
        except BadRequest as exc:
            if "parse_mode" not in kwargs or "entities" not in exc.message.lower():
                raise self._wrap(exc, "sendMessage", chat_id) from None
            log.info("telegram: formatting refused (%s); sending plain text", exc.message)
        except TelegramError as exc:
            raise self._wrap(exc, "sendMessage", chat_id) from None
        kwargs = {k: v for k, v in kwargs.items() if k != "parse_mode"}
        kwargs["text"] = plain
        return await self._call("sendMessage", chat_id, self._bot.send_message(chat_id, **kwargs))

    async def _edit_text(self, message: MessageRef, out: translate.Outgoing) -> None:
        kwargs = {k: v for k, v in out.kwargs.items() if k != "protect_content"}
        chat_id, mid = message.chat.id, int(message.id)
        try:
            await self._bot.edit_message_text(chat_id=chat_id, message_id=mid, **kwargs)
        except BadRequest as exc:
            text = exc.message.lower()
            if "not modified" in text:
                return
            if any(gone in text for gone in _GONE):
                raise MessageGone(f"editMessageText: {exc.message}") from None
            if "parse_mode" not in kwargs or "entities" not in text:
                raise self._wrap(exc, "editMessageText", chat_id) from None
            log.info("telegram: formatting refused (%s); editing in plain text", exc.message)
            kwargs.pop("parse_mode")
            kwargs["text"] = out.plain
            await self._call(
                "editMessageText",
                chat_id,
                self._bot.edit_message_text(chat_id=chat_id, message_id=mid, **kwargs),
            )
        except TelegramError as exc:
            raise self._wrap(exc, "editMessageText", chat_id) from None

    # ----- Messenger -----------------------------------------------------------------------

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        """Answer in the event's chat, quoting the person's message in a group."""
        return await self._deliver(event.chat, reply, quote=_quote(event))

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        """Post to a chat; None (logged) when the chat is unreachable (403).

        A chat that answered 403 is not tried again until an update arrives from it (the
        person unblocked the bot and wrote, or the bot was added back to the group).
        """
        if chat.id in self._unreachable:
            log.info("telegram: chat %s is unreachable; not sending", chat.id)
            return None
        return await self._deliver(chat, reply)

    async def _deliver(
        self, chat: ChatRef, reply: Reply, *, quote: ReplyParameters | None = None
    ) -> MessageRef | None:
        parts = translate.outgoing(reply, bot_username=self._bot_username)
        last: MessageRef | None = None
        try:
            if reply.image is not None:
                # A short text rides along as the caption; a long one follows the photo.
                caption = parts[0] if len(parts) == 1 else None
                if caption is not None and (
                    translate.utf16_len(caption.plain) > translate.CAPTION_LIMIT
                ):
                    caption = None
                last = await self._send_photo(chat, reply.image, caption)
                if caption is not None:
                    return last
            for i, part in enumerate(parts):
                extra = {"reply_parameters": quote} if quote is not None and i == 0 else {}
                last = await self._send_text(chat, part, **extra)
            if reply.document is not None:
                last = await self._send_document(chat, reply.document)
        except ChatUnreachable as exc:
            log.info("telegram: %s; marked unreachable", exc)
            return None
        return last

    async def _send_photo(
        self, chat: ChatRef, image: bytes, caption: translate.Outgoing | None
    ) -> MessageRef:
        kwargs: dict[str, Any] = {}
        if caption is not None:
            kwargs = dict(caption.kwargs)
            kwargs["caption"] = kwargs.pop("text")
        if chat.thread_id is not None:
            kwargs["message_thread_id"] = int(chat.thread_id)
        msg = await self._call(
            "sendPhoto", chat.id, self._bot.send_photo(chat.id, photo=image, **kwargs)
        )
        return MessageRef(chat, str(msg.message_id))

    async def _send_document(self, chat: ChatRef, document: Document) -> MessageRef:
        kwargs: dict[str, Any] = {}
        if chat.thread_id is not None:
            kwargs["message_thread_id"] = int(chat.thread_id)
        msg = await self._call(
            "sendDocument",
            chat.id,
            self._bot.send_document(
                chat.id,
                document=InputFile(document.content, filename=document.filename),
                **kwargs,
            ),
        )
        return MessageRef(chat, str(msg.message_id))

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        """Replace a message's text and buttons; overflow beyond 4096 goes to new messages."""
        parts = translate.outgoing(reply, bot_username=self._bot_username)
        await self._edit_text(message, parts[0])
        for part in parts[1:]:
            await self._send_text(message.chat, part)

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        """Delete a message; False (logged without content) when Telegram refuses."""
        try:
            await self._bot.delete_message(chat_id=chat.id, message_id=int(message_id))
        except (BadRequest, Forbidden) as exc:
            log.info(
                "telegram: could not delete message %s in chat %s: %s",
                message_id,
                chat.id,
                exc.message,
            )
            return False
        except TelegramError as exc:
            log.warning(
                "telegram: deleting message %s in chat %s failed: %s",
                message_id,
                chat.id,
                type(exc).__name__,
            )
            return False
        return True

    async def download(self, file: FileRef, limit: int) -> bytes:
        """getFile, then the file URL (which carries the token: it stays in this process)."""
        if file.size is not None and file.size > limit:
            raise FileTooLarge(file.size)
        try:
            found = await self._bot.get_file(file.ref)
            if found.file_size is not None and found.file_size > limit:
                raise FileTooLarge(found.file_size)
            if not found.file_path:
                raise FileUnavailable("no file path")  # over the Bot API's 20 MB
            data = bytes(await found.download_as_bytearray())
        except TelegramError as exc:
            log.warning("telegram: download failed: %s", type(exc).__name__)
            raise FileUnavailable(type(exc).__name__) from None
        if len(data) > limit:
            raise FileTooLarge(len(data))
        return data

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        """The person's DM, or None if they never started the bot or blocked it.

        Telegram has no side-effect-free check, so this sends a "typing" action, which the
        person sees only as the bot getting ready to write to them.
        """
        chat = ChatRef(Platform.TELEGRAM, user.id, is_direct=True)
        try:
            await self._bot.send_chat_action(chat_id=user.id, action=ChatAction.TYPING)
        except (Forbidden, BadRequest) as exc:
            self._unreachable.add(user.id)
            log.info("telegram: no DM with user %s: %s", user.id, exc.message)
            return None
        except TelegramError as exc:
            raise self._wrap(exc, "sendChatAction", user.id) from None
        self._unreachable.discard(user.id)
        return chat

    async def ask_secret(self, event: Event, request: SecretRequest) -> MessageRef | bool:
        """Ask in the person's DM with ForceReply and ``protect_content``, from any chat.

        The answer arrives as a DM message replying to the returned prompt; the flow, knowing
        a secret is awaited, deletes it. False when the DM is closed (never started, blocked).
        """
        chat_id = event.user.id
        try:
            sent = await self._bot.send_message(chat_id=chat_id, **translate.secret_prompt(request))
        except (Forbidden, BadRequest) as exc:
            self._unreachable.add(chat_id)
            log.info("telegram: cannot ask user %s privately: %s", chat_id, exc.message)
            return False
        except TelegramError as exc:
            raise self._wrap(exc, "sendMessage", chat_id) from None
        return MessageRef(ChatRef(Platform.TELEGRAM, chat_id, is_direct=True), str(sent.message_id))

    # ----- Telegram Stars ------------------------------------------------------------------

    async def stars_invoice_link(
        self, *, title: str, description: str, payload: str, stars: int, period_seconds: int
    ) -> str:
        """A Stars subscription invoice link (currency XTR, no provider token)."""
        link: str = await self._call(
            "createInvoiceLink",
            None,
            self._bot.create_invoice_link(
                title=title[:32],
                description=description[:255],
                payload=payload,
                currency="XTR",
                prices=[LabeledPrice(title[:32], stars)],
                subscription_period=period_seconds,
            ),
        )
        return link

    async def refund_stars(self, user_id: str, charge_id: str) -> None:
        await self._call(
            "refundStarPayment",
            None,
            self._bot.refund_star_payment(
                user_id=int(user_id), telegram_payment_charge_id=charge_id
            ),
        )

    async def typing(self, chat: ChatRef) -> None:
        """Show "typing..." for a few seconds; failures are logged, never raised.

        Telegram shows the indicator for about five seconds, so a second call within
        ``typing_refresh - 0.5`` seconds (the flow's, then the stream's) sends nothing.
        """
        now = self._clock()
        if now - self._typing_at.get(chat.id, -1e9) < self._typing_refresh - 0.5:
            return
        self._typing_at[chat.id] = now
        kwargs: dict[str, Any] = {}
        if chat.thread_id is not None:
            kwargs["message_thread_id"] = int(chat.thread_id)
        try:
            await self._bot.send_chat_action(chat_id=chat.id, action=ChatAction.TYPING, **kwargs)
        except Forbidden as exc:
            self._unreachable.add(chat.id)
            log.info("telegram: typing in chat %s refused: %s", chat.id, exc.message)
        except TelegramError as exc:
            log.info("telegram: typing in chat %s failed: %s", chat.id, type(exc).__name__)

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        """Show a reply as it arrives; see ``_Stream``. Returns the last message sent."""
        chat = event.chat
        use_drafts = chat.is_direct and self._drafts_ok and chat.thread_id is None
        stream = _Stream(self, chat, use_drafts=use_drafts, quote=_quote(event))
        self._live[chat.id] = self._live.get(chat.id, 0) + 1
        # Typing goes beside the text, never ahead of it: the first chunk must not wait for a
        # chat action's answer.
        keep_typing = asyncio.create_task(self._keep_typing(chat, stream.started))
        try:
            async for delta in chunks:
                await stream.feed(delta)
        except Exception:
            keep_typing.cancel()
            # Keep what was shown (drafts vanish, so persist them) and let the flow explain.
            with contextlib.suppress(TelegramAdapterError):
                await stream.finish()
            raise
        finally:
            keep_typing.cancel()
            stream.abandon()  # if the turn itself was cancelled, no paced update fires later
            left = self._live.get(chat.id, 1) - 1
            if left > 0:
                self._live[chat.id] = left
            else:
                self._live.pop(chat.id, None)
        return await stream.finish()

    async def _keep_typing(self, chat: ChatRef, started: asyncio.Event) -> None:
        while not started.is_set():
            await self.typing(chat)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), self._typing_refresh)
                return

    def _interval(self, chat: ChatRef) -> float:
        """Seconds until a stream's next intermediate update: longer when the bot is busy.

        Edits share what the windows leave after their reserve for first answers; half of
        that is planned for, so first answers and final texts rarely wait.
        """
        cfg = self.config
        base = cfg.edit_interval if chat.is_direct else cfg.group_edit_interval
        limits = self._scheduler.limits
        bot = limits.bot
        per_second = (bot.limit - bot.reserve) / bot.seconds / 2
        interval = max(base, sum(self._live.values()) / per_second)
        if not chat.is_direct:
            group = limits.group
            share = group.seconds / max(group.limit - group.reserve, 1)
            interval = max(interval, (self._live.get(chat.id, 1) - 1) * share)
        return interval

    def _new_draft_id(self) -> int:
        self._draft_seq += 1
        return self._draft_seq


def _quote(event: Event) -> ReplyParameters | None:
    """In a group, answers quote the message they answer, so busy chats stay readable."""
    if event.chat.is_direct or event.message_id is None:
        return None
    if event.kind not in (EventKind.MESSAGE, EventKind.COMMAND):
        return None
    # The message may be gone (the leak guard deletes it): send the answer anyway.
    return ReplyParameters(int(event.message_id), allow_sending_without_reply=True)


class _Stream:
    """One streamed reply: paced drafts (private chats) or edits of one message per part.

    The text is split at Telegram's limit between words: a full part is committed as its own
    message and the stream continues in a new one. Intermediate states are shown at most once
    per ``interval`` per chat; text that arrived too early for its turn is shown when the turn
    comes even if nothing more arrives (the model may pause); the final state of every part is
    always shown. A lock keeps the delayed update and the next chunk from racing.
    """

    def __init__(
        self,
        adapter: TelegramAdapter,
        chat: ChatRef,
        *,
        use_drafts: bool,
        quote: ReplyParameters | None,
    ) -> None:
        self.a, self.chat, self.use_drafts = adapter, chat, use_drafts
        self.quote = quote  # for the first message only
        self.buf = ""
        self.shown = ""
        self.message: MessageRef | None = None
        self.last: MessageRef | None = None
        self.draft_id = adapter._new_draft_id()
        self.started = asyncio.Event()
        self.lock = asyncio.Lock()
        self.flusher: asyncio.Task[None] | None = None
        self.sending = False  # an update is on its way: not to be cancelled
        self.failed: TelegramAdapterError | None = None  # a first message that failed

    def _part(self, text: str) -> translate.Outgoing:
        return translate.Outgoing(
            {"text": translate.render_markdown(text), "parse_mode": ParseMode.HTML}, text
        )

    async def feed(self, delta: str) -> None:
        # An update whose slot is free now goes out at once; one that must wait for its slot
        # goes from a background task that sends the latest text when its turn comes
        # (coalesced), so the agent's stream is read at its own pace meanwhile, and a reply
        # that ends before its first update's turn sends only its final text.
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        self.buf += delta
        if translate.utf16_len(self.buf) > translate.MESSAGE_LIMIT:
            async with self.lock:
                while translate.utf16_len(self.buf) > translate.MESSAGE_LIMIT:
                    head, self.buf = translate.split_once(self.buf)
                    await self._commit(head)
        if not self.buf.strip() or self.buf == self.shown:
            return
        pending = self.flusher is not None and not self.flusher.done()
        if pending and self.sending:
            return  # the next update is due after this one anyway
        if not self.started.is_set():
            # The first visible text goes at once, ahead of other streams' edits.
            delay, priority = 0.0, Priority.HIGH
        else:
            due = self.a._next_edit.get(self.chat.id, 0.0)
            delay, priority = max(due - self.a._clock(), 0.0), Priority.LOW
        slot = self.a._scheduler.try_acquire(self.chat.id, priority) if delay <= 0 else None
        if slot is None:
            if not pending:  # else the pending update will carry this text too
                self.flusher = asyncio.create_task(self._flush_later(delay, priority))
            return
        if pending and self.flusher is not None:
            self.flusher.cancel()  # still waiting for its time: this update replaces it
        with granted(slot):
            async with self.lock:
                await self._update(self.buf)

    async def _update(self, text: str) -> None:
        """Show an intermediate state; a failed draft or edit does not end the reply.

        The next update or the final text shows it (the scheduler has retried already). A first
        message that failed does end it: its answer may be lost with the message already in the
        chat, and another would show the text twice.
        """
        creating = not self.use_drafts and self.message is None
        try:
            await self._show(text)
        except (TelegramUnavailable, TelegramRateLimited) as exc:
            if creating:
                raise
            log.info("telegram: a stream update failed: %s", exc)
        self._paced()

    def _paced(self) -> None:
        # The clock is read after the send: a send the scheduler held must not make every
        # later chunk due at once.
        self.a._next_edit[self.chat.id] = self.a._clock() + self.a._interval(self.chat)

    async def _flush_later(self, delay: float, priority: Priority) -> None:
        if delay > 0:
            await self.a._sleep(delay)
        slot = await self.a._scheduler.acquire(self.chat.id, priority)
        with granted(slot):
            async with self.lock:
                # Whatever arrived while waiting for the slot goes in the same update.
                text = self.buf
                if (
                    not text.strip()
                    or text == self.shown
                    or translate.utf16_len(text) > translate.MESSAGE_LIMIT
                ):
                    return
                # From here the update is not cancelled: a message whose answer is cut off
                # may be in the chat already.
                self.sending = True
                try:
                    await self._update(text)
                except TelegramAdapterError as exc:
                    self.failed = exc  # raised by finish(): the flow explains it
                finally:
                    self.sending = False

    async def _settle(self) -> None:
        """Drop an update still waiting for its turn; let one being sent finish."""
        flusher = self.flusher
        if flusher is None or flusher.done():
            return
        if not self.sending:
            flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher

    def abandon(self) -> None:
        """Cancel a pending paced update: the stream ended, or its turn was cancelled."""
        if self.flusher is not None and not self.flusher.done() and not self.sending:
            self.flusher.cancel()

    async def finish(self) -> MessageRef | None:
        await self._settle()
        async with self.lock:
            if self.failed is not None:
                failed, self.failed = self.failed, None
                raise failed
            if self.buf.strip():
                await self._commit(self.buf)
            self.buf = ""
            return self.last

    async def _show(self, text: str) -> None:
        self.started.set()
        if self.use_drafts:
            try:
                await self._draft(text)
                self.shown = text
                return
            except TelegramRequestRejected as exc:
                # An older self-hosted Bot API server, or drafts refused: edit messages instead.
                log.info("telegram: drafts unavailable (%s); streaming by edits", exc)
                self.a._drafts_ok = False
                self.use_drafts = False
        if self.message is not None:
            try:
                await self.a._edit_text(self.message, self._part(text))
            except MessageGone:
                # The person deleted the message the answer was growing in: it goes on in a
                # new one rather than being lost.
                log.info("telegram: a streamed message was deleted; continuing in a new one")
                self.message = None
        if self.message is None:
            self.message = await self._send(text)
        self.shown = text

    async def _send(self, text: str) -> MessageRef:
        quote, self.quote = self.quote, None
        extra = {"reply_parameters": quote} if quote is not None else {}
        return await self.a._send_text(self.chat, self._part(text), **extra)

    async def _draft(self, text: str) -> None:
        bot, cid = self.a._bot, int(self.chat.id)
        html = translate.render_markdown(text)
        try:
            await bot.send_message_draft(cid, self.draft_id, text=html, parse_mode=ParseMode.HTML)
        except InvalidToken:
            # A 404 for this method alone: a Bot API server older than drafts (python-telegram-bot
            # reports any 404 as InvalidToken; the token itself worked a moment ago).
            raise TelegramRequestRejected("sendMessageDraft: not supported by the server") from None
        except BadRequest as exc:
            if "entities" not in exc.message.lower():
                raise self.a._wrap(exc, "sendMessageDraft", self.chat.id) from None
            await self.a._call(
                "sendMessageDraft", self.chat.id, bot.send_message_draft(cid, self.draft_id, text)
            )
        except TelegramError as exc:
            raise self.a._wrap(exc, "sendMessageDraft", self.chat.id) from None

    async def _commit(self, text: str) -> None:
        """Show ``text`` as the final state of the current part and start a new part."""
        self.started.set()
        if not self.use_drafts and self.message is not None:
            try:
                if text != self.shown:
                    await self.a._edit_text(self.message, self._part(text))
                self.last = self.message
            except MessageGone:
                log.info("telegram: a streamed message was deleted; sending its text anew")
                self.message = None
        if self.use_drafts or self.message is None:
            self.last = await self._send(text)
        self.message, self.shown = None, ""
        self.draft_id = self.a._new_draft_id()


def build(
    settings: PlatformSettings,
    env: Mapping[str, str],
    *,
    config: Config | None = None,
    dedup: Deduplicator | None = None,
    inbox: InboxPort | None = None,
) -> TelegramAdapter:
    """The adapter for ``[telegram]``.

    ``config`` (the whole configuration) only names the file in error messages; ``dedup``
    remembers handled updates (the app passes the database's, shared by replicas); ``inbox``
    records each update before it is confirmed (the app passes the durable inbox).

    Raises:
        ConfigError: a bad setting in ``[telegram]``, or the token variable is unset: an
            enabled platform that cannot start stops start-up rather than staying off.
    """
    source = config.source if config is not None else "config.toml"
    parsed = parse(settings, env, source=source)
    if parsed.token is None:
        raise ConfigError(
            f"{source}: [telegram] is enabled but {parsed.token_env} is not set "
            "(export the bot token, or set enabled = false)"
        )
    return TelegramAdapter(parsed, dedup=dedup, inbox=inbox)
