"""The Slack adapter: slack-bolt's ``AsyncApp`` in Socket Mode or HTTP mode, wired to one handler.

Every request is acknowledged first and handled in a task the adapter tracks (so ``stop``
can wait for them); the key modal's submission is the exception, because its answer
(``response_action: errors``) must travel in the acknowledgement itself.

Errors::

    SlackAdapterError           root of everything this package raises
    ├── SlackStartError         the token was refused or the listener could not start
    └── SlackDeliveryError      Slack refused a Web API call (``method``, ``error`` code)

Logging: the SDK prints raw payloads (including a submitted key) at DEBUG, so its logger
``adapters.slack.sdk`` is set to INFO unless the operator configured it explicitly; then the
redacting filter of ``core.logs`` is what hides key shapes and the registered tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import translate
from adapters.slack.config import SlackConfig, parse
from adapters.slack.throttle import CountedRateLimitRetryHandler
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
    name_commands,
)
from core.config import Config, PlatformSettings
from core.dedup import Deduplicator, InMemoryDeduplicator
from core.errors import ConfigError
from core.inbox import InboxPort, MemoryInbox
from core.logs import register_secret
from core.metrics import PLATFORM_RETRIES
from core.pacing import Key, OutboundScheduler, Priority, Slot, Window, with_retries
from core.ports import ChatAdapter, EventHandler, FileTooLarge, Messenger

_log = logging.getLogger("adapters.slack")
_sdk_log = logging.getLogger("adapters.slack.sdk")

_BLOCK_ERRORS: Final = frozenset({"invalid_blocks", "invalid_blocks_format", "invalid_attachments"})
_RETRY_LIMIT: Final = 3
_CONNECT_TIMEOUT: Final = 30.0
_ACK_BUDGET: Final = 2.5
# Slack's limits for a streamed reply, with a margin (the windows are a little longer):
# chat.postMessage about 1 a second per channel with short bursts (5 in 5 s), chat.update the
# same per channel and 50 a minute in the workspace (Tier 3). Edits leave room for final texts.
SLACK_WINDOWS: Final = {
    "post": Window(5, 5.3),
    "edit": Window(5, 5.3, reserve=1),
    "update": Window(50, 61.0, reserve=12),
}
# An update without an answer this long is tried again (repeating one is harmless).
UPDATE_TIMEOUT: Final = 5.0
"""Seconds the key check may take before the modal is acknowledged with a "checking" view."""


# chat.postEphemeral's answers when the person cannot be reached in that channel.
_NOT_THERE: Final = frozenset(
    {"user_not_in_channel", "channel_not_found", "not_in_channel", "is_archived"}
)
# chat.update's answers for a message that is not there to update any more.
_GONE: Final = frozenset({"message_not_found", "cant_update_message"})


class SlackAdapterError(Exception):
    """Root of the Slack adapter's errors. Messages carry method names and codes, no content."""


class SlackStartError(SlackAdapterError):
    """Slack refused the token, or the HTTP listener could not bind."""


class SlackDeliveryError(SlackAdapterError):
    """Slack refused a Web API call; ``error`` is Slack's code (``channel_not_found``...)."""

    def __init__(self, method: str, error: str, *, transient: bool = False) -> None:
        super().__init__(f"Slack {method} failed: {error}")
        self.method = method
        self.error = error
        self.transient = transient  # a 5xx or a lost answer: trying again may work


@dataclass(slots=True)
class _Context:
    """What the adapter remembers about one event while the handler works on it."""

    origin: str
    trigger_id: str = ""
    response_url: str = ""
    ephemeral: bool = False
    home: bool = False
    home_replies: list[Reply] = field(default_factory=list)
    # A key form's answers the DM did not take: the form shows them instead.
    undelivered: list[Reply] = field(default_factory=list)


@dataclass(slots=True)
class _Stream:
    """One reply being streamed: the message being written and what it shows."""

    chat: ChatRef
    current: MessageRef
    previous: MessageRef | None = None
    pending: str = ""
    shown: str = ""
    last_edit: float | None = None
    timer: asyncio.Future[None] | None = None
    flushing: bool = False  # an intermediate update is on its way
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_FILE_HOST: Final = "files.slack.com"


class SlackAdapter:
    """``ChatAdapter`` and ``Messenger`` for Slack (its ``messenger`` is itself)."""

    platform = Platform.SLACK

    def __init__(
        self,
        config: SlackConfig,
        *,
        dedup: Deduplicator | None = None,
        inbox: InboxPort | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ack_budget: float = _ACK_BUDGET,
    ) -> None:
        if config.bot_token is None:
            raise SlackStartError(f"{config.bot_token_env} is not set")
        self.config = config
        self.messenger: Messenger = self
        self._dedup: Deduplicator = dedup or InMemoryDeduplicator()
        # Slack's retries are caught by ``dedup``; the inbox keeps each turn pending until it
        # ends, so a crash leaves a note to resend.
        self._inbox: InboxPort = inbox or MemoryInbox()
        self._monotonic = monotonic
        self._sleep = sleep
        self._ack_budget = ack_budget
        self._handler: EventHandler | None = None
        self._client: AsyncWebClient | None = None
        self._user_client: AsyncWebClient | None = None
        self._app: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._contexts: dict[str, _Context] = {}
        self._dm_channels: dict[str, str] = {}
        self._home_channels: dict[str, str] = {}
        self._refresh_ids = itertools.count(1)
        self.bot_user_id = ""
        self.team_id = ""
        self.app_id = ""
        self.http_port: int | None = None
        # One scheduler for every streamed message: Slack's limits are per workspace app.
        self.scheduler = OutboundScheduler(SLACK_WINDOWS)  # real time: its timers are the loop's
        self._live_streams: dict[str, int] = {}  # streams being shown, by channel
        self.update_timeout = UPDATE_TIMEOUT

    # ------------------------------------------------------------------ lifecycle

    async def start(self, handler: EventHandler) -> None:
        """Check the token (``auth.test``), register listeners, then connect or listen."""
        cfg = self.config
        if cfg.bot_token is None or (cfg.mode == "socket" and cfg.app_token is None):
            raise SlackStartError(f"a Slack token is missing: {cfg.missing_env()}")
        if _sdk_log.level == logging.NOTSET:
            # Unless the operator set it on purpose, root DEBUG must not turn on payload dumps.
            _sdk_log.setLevel(logging.INFO)
        self._handler = handler
        self._app = self._build_app(cfg.bot_token.reveal())
        self._client = self._app.client
        if cfg.user_token is not None:
            self._user_client = self._point(
                AsyncWebClient(token=cfg.user_token.reveal(), logger=_sdk_log)
            )
        try:
            auth = await self._client.auth_test()
        except SlackApiError as exc:
            raise SlackStartError(
                f"Slack refused the bot token in {cfg.bot_token_env}: {_code(exc)}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, SlackRequestError) as exc:
            raise SlackStartError(f"cannot reach Slack at {cfg.api_base_url}: {exc}") from None
        self.bot_user_id = str(auth.get("user_id", ""))
        self.team_id = str(auth.get("team_id", ""))
        if cfg.mode == "socket":
            app_token = cfg.app_token.reveal() if cfg.app_token else ""
            self._socket = AsyncSocketModeHandler(
                self._app, app_token, logger=_sdk_log, web_client=self._client
            )
            # The SDK retries a refused app token forever; ask once here so start-up fails
            # clearly, and hand it the URL this call returned.
            try:
                opened = await self._client.apps_connections_open(app_token=app_token)
            except SlackApiError as exc:
                await self._socket.close_async()  # type: ignore[no-untyped-call]
                raise SlackStartError(
                    f"Slack refused the app token in {cfg.app_token_env}: {_code(exc)}"
                ) from None
            self._socket.client.wss_uri = str(opened.get("url", "")) or None
            try:
                await asyncio.wait_for(
                    self._socket.connect_async(),  # type: ignore[no-untyped-call]
                    _CONNECT_TIMEOUT,
                )
            except TimeoutError:
                await self._socket.close_async()  # type: ignore[no-untyped-call]
                raise SlackStartError("cannot open the Socket Mode connection") from None
            _log.info("Slack connected in socket mode as %s", self.bot_user_id)
        else:
            await self._listen()
            _log.info(
                "Slack listening on http://%s:%s%s", cfg.listen_host, self.http_port, cfg.path
            )

    def is_connected(self) -> bool:
        """Socket Mode: the link is open (down while the SDK reconnects); HTTP: serving."""
        if self._runner is not None:
            return True
        if self._socket is None:
            return False
        client = self._socket.client
        session = client.current_session
        return not client.closed and session is not None and not session.closed

    async def open_for_sending(self) -> None:
        """Check the bot token to send only (``byokbot admin`` notices): no socket, no server."""
        cfg = self.config
        if cfg.bot_token is None:
            raise SlackStartError(f"a Slack token is missing: {cfg.bot_token_env}")
        self._client = self._point(AsyncWebClient(token=cfg.bot_token.reveal(), logger=_sdk_log))
        try:
            auth = await self._client.auth_test()
        except SlackApiError as exc:
            raise SlackStartError(
                f"Slack refused the bot token in {cfg.bot_token_env}: {_code(exc)}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, SlackRequestError) as exc:
            raise SlackStartError(f"cannot reach Slack at {cfg.api_base_url}: {exc}") from None
        self.bot_user_id = str(auth.get("user_id", ""))
        self.team_id = str(auth.get("team_id", ""))

    async def stop(self) -> None:
        """Stop taking requests, let handlers in flight finish briefly, then cancel them."""
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._handler = None

    async def drain(self) -> None:
        """Wait until every event taken so far is handled (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _point(self, client: AsyncWebClient) -> AsyncWebClient:
        """Aim a Web API client at the configured API, with our retry policy."""
        client.base_url = self.config.api_base_url
        client.retry_handlers = [
            AsyncConnectionErrorRetryHandler(max_retry_count=1),
            CountedRateLimitRetryHandler(max_retry_count=_RETRY_LIMIT),
        ]
        return client

    def _build_app(self, bot_token: str) -> AsyncApp:
        cfg = self.config
        # Given a ``client``, bolt still reads SLACK_BOT_TOKEN from the environment and warns
        # that it is unused; given the token, it builds its own client, which we then aim.
        app = AsyncApp(
            token=bot_token,
            logger=_sdk_log,
            signing_secret=cfg.signing_secret.reveal() if cfg.signing_secret else "",
            process_before_response=False,
            # Bolt logs the whole body of a request it refuses (a person's message, a modal
            # value) at INFO; the HTTP endpoint checks signatures itself (``_signed``).
            request_verification_enabled=False,
        )
        self._point(app.client)
        app.use(self._note_app_id)
        app.command(cfg.command)(self._on_command)
        app.action(re.compile(r"^byok"))(self._on_action)
        app.view_submission(translate.SECRET_CALLBACK)(self._on_view_submission)
        app.view_closed(translate.SECRET_CALLBACK)(self._on_view_closed)
        app.event("message")(self._on_message)
        app.event("app_mention")(self._on_message)
        app.event("app_home_opened")(self._on_home_opened)
        return app

    async def _listen(self) -> None:
        cfg = self.config
        app = self._app
        if app is None:
            raise SlackStartError("the Slack app was not built")

        async def endpoint(request: web.Request) -> web.Response:
            body = await request.text()
            if not self._signed(body, request.headers):
                _log.info("Slack request refused: bad or missing signature (%d bytes)", len(body))
                return web.json_response({"error": "invalid request"}, status=401)
            bolt_response = await app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(bolt_response)

        web_app = web.Application()
        web_app.router.add_post(cfg.path, endpoint)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen_host, cfg.listen_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise SlackStartError(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc.strerror}"
            ) from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.listen_port

    def _signed(self, body: str, headers: Mapping[str, str]) -> bool:
        """Slack's request signature (HMAC of timestamp and body, at most 5 minutes old)."""
        secret = self.config.signing_secret
        if secret is None:
            return False
        timestamp = headers.get("X-Slack-Request-Timestamp", "")
        if not timestamp.isdigit():
            return False
        return SignatureVerifier(secret.reveal()).is_valid(
            body, timestamp, headers.get("X-Slack-Signature", "")
        )

    # ------------------------------------------------------------------ listeners

    async def _note_app_id(self, body: dict[str, Any], next: Callable[[], Any]) -> Any:
        # Every payload names the app; the "open the DM" link needs its id.
        if not self.app_id and body.get("api_app_id"):
            self.app_id = str(body["api_app_id"])
        return await next()

    @property
    def _dm_url(self) -> str:
        if not self.app_id or not self.team_id:
            return ""
        return translate.dm_link(team_id=self.team_id, app_id=self.app_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("Slack event handling failed: %s", type(exc).__name__, exc_info=exc)

    async def _on_command(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self._spawn(self._handle_command(body))

    async def _handle_command(self, body: Mapping[str, Any]) -> None:
        user_id, channel_id = str(body.get("user_id", "")), str(body.get("channel_id", ""))
        event = translate.command_event(body, is_direct=await self._is_app_dm(user_id, channel_id))
        ctx = _Context(
            origin="command",
            trigger_id=str(body.get("trigger_id", "")),
            response_url=str(body.get("response_url", "")),
        )
        await self._deliver(event, ctx, (f"slack:{event.event_id}",))

    async def _on_action(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        action_id = str(((body.get("actions") or [{}])[0]).get("action_id", ""))
        if action_id == translate.SECRET_OPEN_ACTION:
            self._spawn(self._open_secret_from_button(body))
        elif not action_id.startswith(translate.LINK_ACTION):  # a link press needs no answer
            self._spawn(self._handle_action(body))

    async def _handle_action(self, body: Mapping[str, Any]) -> None:
        user_id = str((body.get("user") or {}).get("id", ""))
        channel_id = translate.action_channel(body)
        if channel_id is None:  # a button in the App Home tab: answer in the app's DM
            chat = await self.open_dm(UserRef(platform=Platform.SLACK, id=user_id))
            if chat is None:
                return
        else:
            thread = (body.get("message") or {}).get("thread_ts")
            chat = ChatRef(
                platform=Platform.SLACK,
                id=channel_id,
                is_direct=await self._is_app_dm(user_id, channel_id),
                thread_id=str(thread) if thread else None,
            )
        event = translate.action_event(body, chat=chat)
        if event is None:
            return
        ctx = _Context(
            origin="action",
            trigger_id=str(body.get("trigger_id", "")),
            response_url=str(body.get("response_url", "")),
            ephemeral=translate.action_is_ephemeral(body),
        )
        await self._deliver(event, ctx, (f"slack:{event.event_id}",))

    async def _open_secret_from_button(self, body: Mapping[str, Any]) -> None:
        action = (body.get("actions") or [{}])[0]
        data = translate.parse_metadata(str(action.get("value", "")))
        request = SecretRequest(
            token=data.get("t", ""),
            provider=data.get("p", ""),
            title=data.get("ti", ""),
            prompt=data.get("pr", ""),
            expires_at=datetime.now(UTC),
        )
        try:
            await self._call(
                "views.open",
                self._web.views_open(
                    trigger_id=str(body.get("trigger_id", "")), view=translate.secret_modal(request)
                ),
            )
        except SlackDeliveryError as exc:
            # The press's trigger lasts 3 s: a press answered later opens nothing, and the
            # person would be left pressing a button that does nothing. A new press works.
            channel = str((body.get("channel") or {}).get("id", ""))
            _log.info("Slack: the key form did not open (%s)", exc.error)
            if not channel:
                raise
            chat = ChatRef(platform=Platform.SLACK, id=channel, is_direct=channel.startswith("D"))
            await self.send(chat, Reply(translate.MODAL_OPEN_FAILED))

    async def _on_view_submission(self, ack: Any, body: dict[str, Any]) -> None:
        user = UserRef(platform=Platform.SLACK, id=str((body.get("user") or {}).get("id", "")))
        chat = await self.open_dm(user) or ChatRef(platform=Platform.SLACK, id="", is_direct=True)
        event = translate.secret_event(body, chat=chat)
        if event is None:
            await ack()
            return
        ctx = _Context(origin="view")
        task = self._spawn(self._deliver(event, ctx, ()))
        view = body.get("view") or {}
        title = str((view.get("title") or {}).get("text", ""))
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), self._ack_budget)
        except TimeoutError:
            await ack(
                response_action="update",
                view=translate.notice_modal(title, translate.MODAL_CHECKING),
            )
            self._spawn(self._finish_slow_secret(task, view, user, ctx))
            return
        except Exception:
            await ack()  # the failure is logged by the task's callback; close the modal
            raise
        if outcome is not None and outcome.secret_error:
            await ack(**translate.modal_errors(self._commands(outcome.secret_error)))
        elif ctx.undelivered:
            await ack(response_action="update", view=translate.notice_modal(title, _text(ctx)))
        else:
            await ack()

    async def _finish_slow_secret(
        self,
        task: asyncio.Task[Outcome | None],
        view: Mapping[str, Any],
        user: UserRef,
        ctx: _Context,
    ) -> None:
        outcome = await task
        title = str((view.get("title") or {}).get("text", ""))
        error = self._commands(outcome.secret_error or "") if outcome is not None else None
        request: SecretRequest | None = None
        if error:
            meta = translate.parse_metadata(str(view.get("private_metadata", "")))
            blocks = view.get("blocks") or [{}]
            prompt = str(((blocks[0] or {}).get("text") or {}).get("text", ""))
            request = SecretRequest(
                token=meta.get("t", ""),
                provider=meta.get("p", ""),
                title=title,
                prompt=prompt,
                expires_at=datetime.now(UTC),
            )
            new_view = translate.secret_modal(request, error=error)
        else:
            new_view = translate.notice_modal(title, _text(ctx) or translate.MODAL_DONE)
        try:
            await self._call(
                "views.update",
                self._web.views_update(view_id=str(view.get("id", "")), view=new_view),
            )
        except SlackDeliveryError as exc:
            if request is None or error is None:
                if ctx.undelivered:
                    _log.warning("Slack: a key form's answer reached neither the DM nor the form")
                return  # the key was taken; the flow said so in the DM
            # The person closed the "checking" window: the refusal goes to the DM, with a
            # button that reopens the form (never an invitation to paste the key there).
            _log.info("Slack views.update failed (%s); the refusal goes to the DM", exc.error)
            dm = await self.open_dm(user)
            if dm is not None:
                again = SecretRequest(
                    token=request.token,
                    provider=request.provider,
                    title=request.title,
                    prompt=f"{error}\n\n{request.prompt}",
                    expires_at=request.expires_at,
                )
                await self._call(
                    "chat.postMessage",
                    self._web.chat_postMessage(
                        channel=dm.id, **translate.secret_open_message(again)
                    ),
                    pace=dm.id,
                )

    async def _on_view_closed(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self._spawn(self._handle_view_closed(body))

    async def _handle_view_closed(self, body: Mapping[str, Any]) -> None:
        user = UserRef(platform=Platform.SLACK, id=str((body.get("user") or {}).get("id", "")))
        chat = await self.open_dm(user) or ChatRef(platform=Platform.SLACK, id="", is_direct=True)
        event = translate.secret_closed_event(body, chat=chat)
        if event is not None:
            await self._deliver(event, _Context(origin="view"), (f"slack:{event.event_id}",))

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        event_id = str(body.get("event_id", ""))
        translated = translate.message_event(event, bot_user_id=self.bot_user_id, event_id=event_id)
        if translated is None:
            return
        keys = (f"slack:event:{event_id}", translate.message_dedup_key(event))
        self._spawn(self._deliver(translated, _Context(origin="message"), keys))

    async def _on_home_opened(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not self.config.home_tab:
            return
        opened = translate.home_opened(event)
        if opened is None:
            return
        user_id, channel = opened
        self._home_channels[user_id] = channel
        event_id = str(body.get("event_id", ""))
        if await self._dedup.first_time(f"slack:event:{event_id}"):
            self._spawn(self._show_home(user_id, channel, event_id))

    async def _show_home(self, user_id: str, channel: str, event_id: str) -> None:
        """Ask the handler the Home commands for this person and publish the answers as one tab."""
        ctx = _Context(origin="home", home=True)
        for event in translate.home_events(user_id, channel, event_id=event_id):
            await self._deliver(event, ctx, ())
        if ctx.home_replies:
            await self._call(
                "views.publish",
                self._web.views_publish(
                    user_id=user_id,
                    view=translate.home_view(ctx.home_replies, dm_url=self._dm_url),
                ),
            )

    async def _deliver(
        self, event: Event, ctx: _Context, dedup_keys: Iterable[str]
    ) -> Outcome | None:
        """Hand one event to the handler, once per delivery; refresh the App Home after."""
        # In order, stopping at the first key seen: every copy of a delivery claims its keys
        # in the same order, so whoever claims the last (shared) one has claimed the rest.
        # Claiming them all would let a retry racing its original take the message key
        # while the original held the event key, and both would skip it.
        for key in dedup_keys:
            if not await self._dedup.first_time(key):
                _log.debug("Slack delivery %s seen before; skipped", event.event_id)
                return None
        handler = self._handler
        if handler is None:
            return None
        self._contexts[event.event_id] = ctx
        recorded = not ctx.home and await self._record(event)
        try:
            outcome = await handler(event)
        finally:
            self._contexts.pop(event.event_id, None)
            if recorded:
                self._inbox.finish(event)
        if (
            not ctx.home
            and event.kind is not EventKind.MESSAGE
            and event.user.id in self._home_channels
        ):
            self._spawn(self._refresh_home(event.user))
        return outcome

    async def _record(self, event: Event) -> bool:
        """Put the turn in the inbox; a storage failure only costs the crash note."""
        if not event.event_id:
            return False
        try:
            return bool(await self._inbox.record([event]))
        except Exception as exc:  # noqa: BLE001 - the turn goes on without the record
            _log.warning("slack: %s not recorded in the inbox (%s)", event.event_id, exc)
            return False

    async def _refresh_home(self, user: UserRef) -> None:
        channel = self._home_channels.get(user.id, "")
        await self._show_home(user.id, channel, f"home-refresh:{next(self._refresh_ids)}")

    async def _is_app_dm(self, user_id: str, channel_id: str) -> bool:
        """True when ``channel_id`` is this app's DM with the person (not any other DM)."""
        if not channel_id.startswith("D"):
            return False
        if self._dm_channels.get(user_id) == channel_id:
            return True
        dm = await self.open_dm(UserRef(platform=Platform.SLACK, id=user_id))
        return dm is not None and dm.id == channel_id

    # ------------------------------------------------------------------ Messenger

    @property
    def _web(self) -> AsyncWebClient:
        if self._client is None:
            raise SlackAdapterError("the Slack adapter is not started")
        return self._client

    async def _call(
        self, method: str, call: Coroutine[Any, Any, Any], *, pace: str | None = None
    ) -> Mapping[str, Any]:
        """Await one SDK call, turning its errors into ``SlackDeliveryError`` (code only).

        ``pace``: the channel of a chat.postMessage or chat.update that takes a HIGH slot of
        the scheduler first (streams take their own slots and pass none).
        """
        keys = self._paced_keys(method, pace) if pace is not None else ()
        if keys:
            try:
                slot = await self.scheduler.acquire(keys, Priority.HIGH)
            except BaseException:
                call.close()  # never sent
                raise
            try:
                return await self._call(method, call)
            finally:
                slot.release()
        try:
            response = await call
        except SlackApiError as exc:
            status = getattr(exc.response, "status_code", 200)
            raise SlackDeliveryError(method, _code(exc), transient=status >= 500) from None
        except (aiohttp.ClientError, TimeoutError, SlackRequestError) as exc:
            transient = not isinstance(exc, SlackRequestError)
            raise SlackDeliveryError(method, type(exc).__name__, transient=transient) from None
        data = response.data
        return data if isinstance(data, dict) else {}

    def _paced_keys(self, method: str, channel: str) -> tuple[Key, ...]:
        if method == "chat.postMessage":
            return (("post", channel),)
        if method == "chat.update":
            return self._update_keys(channel)
        return ()

    async def _with_fallback(
        self,
        method: str,
        reply: Reply,
        send: Callable[[dict[str, Any]], Coroutine[Any, Any, Any]],
        *,
        channel: str | None = None,
    ) -> Mapping[str, Any]:
        """Send rendered blocks; if Slack refuses the formatting, send the text literally."""
        try:
            return await self._call(
                method, send(translate.message_kwargs(reply, dm_url=self._dm_url)), pace=channel
            )
        except SlackDeliveryError as exc:
            if exc.error not in _BLOCK_ERRORS or reply.format is not TextFormat.MARKDOWN:
                raise
            _log.info("Slack refused a formatted reply (%s); sending plain text", exc.error)
        return await self._call(
            method,
            send(translate.message_kwargs(reply, plain=True, dm_url=self._dm_url)),
            pace=channel,
        )

    def _commands(self, text: str) -> str:
        return name_commands(text, self.config.command)

    def _in_slack_syntax(self, reply: Reply) -> Reply:
        """The core's texts name ``/key add``; in Slack that is ``/byok key add``."""
        return dataclasses.replace(reply, text=self._commands(reply.text))

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        """Answer in the event's chat; ephemeral for sensitive replies outside the app's DM.

        Slash commands used in a channel, buttons on ephemeral messages and posts not
        addressed to the bot are answered ephemerally too. Answers to an App Home event
        become the Home tab.
        """
        reply = self._in_slack_syntax(reply)
        ctx = self._contexts.get(event.event_id)
        if ctx is not None and ctx.home:
            ctx.home_replies.append(reply)  # published as one view once every answer is in
            return None
        chat = event.chat
        if ctx is not None and ctx.origin == "view":
            return await self._answer_form(event, reply, ctx)
        if not chat.id:
            found = await self.open_dm(event.user)
            if found is None:
                raise SlackDeliveryError("conversations.open", "cannot_open_dm")
            chat = found
        # Private where nobody else saw the question: a slash command, an ephemeral message's
        # button, a post not addressed to the bot (the leak guard's warning).
        private = (
            reply.sensitive
            or (ctx is not None and (ctx.origin == "command" or ctx.ephemeral))
            or (event.kind is EventKind.MESSAGE and not event.addressed)
        )
        if private and not chat.is_direct:
            await self._ephemeral(event, chat, reply, ctx)
            return None
        return await self.send(chat, reply)

    async def _answer_form(self, event: Event, reply: Reply, ctx: _Context) -> MessageRef | None:
        """An answer to a key form goes to the DM; if the DM will not take it, to the form."""
        chat = event.chat if event.chat.id else await self.open_dm(event.user)
        try:
            if chat is None:
                raise SlackDeliveryError("conversations.open", "cannot_open_dm")
            return await self.send(chat, reply)
        except SlackDeliveryError as exc:
            _log.info("Slack: a key form's answer missed the DM (%s); the form shows it", exc)
            ctx.undelivered.append(reply)
            return None

    async def _ephemeral(
        self, event: Event, chat: ChatRef, reply: Reply, ctx: _Context | None
    ) -> None:
        """A private answer in ``chat``: by the response URL, else ephemeral, else by DM.

        Each path can fail on its own (a response URL expires after 30 minutes or 5 uses; an
        ephemeral message needs the bot in the channel): the answer then takes the next.
        """
        if ctx is not None and ctx.response_url:
            try:
                await self._via_response_url(ctx.response_url, reply)
                return
            except SlackDeliveryError as exc:
                _log.info("Slack: private answer by response URL failed (%s); posting it", exc)
                ctx.response_url = ""  # the turn's later answers skip it
        try:
            await self._with_fallback(
                "chat.postEphemeral",
                reply,
                lambda kw: self._web.chat_postEphemeral(
                    channel=chat.id, user=event.user.id, thread_ts=chat.thread_id, **kw
                ),
            )
            return
        except SlackDeliveryError as exc:
            if exc.transient or exc.error not in _NOT_THERE:
                raise
            _log.info("Slack: ephemeral answer refused (%s); sending it by DM", exc.error)
        dm = await self.open_dm(event.user)
        if dm is None:
            raise SlackDeliveryError("conversations.open", "cannot_open_dm")
        await self.send(dm, reply)

    async def _via_response_url(self, url: str, reply: Reply) -> None:
        # The response URL works even in channels the bot is not a member of.
        hook = AsyncWebhookClient(url, logger=_sdk_log)
        kwargs = translate.message_kwargs(reply, dm_url=self._dm_url)
        try:
            response = await hook.send(response_type="ephemeral", replace_original=False, **kwargs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackDeliveryError("response_url", type(exc).__name__) from None
        if response.status_code != 200:
            raise SlackDeliveryError("response_url", f"http_{response.status_code}")

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        data = await self._with_fallback(
            "chat.postMessage",
            self._in_slack_syntax(reply),
            lambda kw: self._web.chat_postMessage(channel=chat.id, thread_ts=chat.thread_id, **kw),
            channel=chat.id,
        )
        return MessageRef(chat=chat, id=str(data.get("ts", "")))

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        await self._with_fallback(
            "chat.update",
            self._in_slack_syntax(reply),
            lambda kw: self._web.chat_update(channel=message.chat.id, ts=message.id, **kw),
            channel=message.chat.id,
        )

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        """Delete a message; a person's message needs the optional user token."""
        try:
            await self._call("chat.delete", self._web.chat_delete(channel=chat.id, ts=message_id))
            return True
        except SlackDeliveryError as exc:
            refusal = exc
        if self._user_client is not None:
            try:
                await self._call(
                    "chat.delete", self._user_client.chat_delete(channel=chat.id, ts=message_id)
                )
                return True
            except SlackDeliveryError as exc:
                refusal = exc
        _log.info("Slack refused to delete a message in %s (%s)", chat.id, refusal.error)
        return False

    async def download(self, file: FileRef, limit: int) -> bytes:
        """``url_private`` with the bot token, only on Slack's file host (or the API's)."""
        if file.size is not None and file.size > limit:
            raise FileTooLarge(file.size)
        token = self.config.bot_token
        assert token is not None  # noqa: S101 - checked in __init__
        api_host = urlsplit(self.config.api_base_url).hostname or ""
        return await filefetch.fetch(
            file.ref,
            limit,
            hosts=(_FILE_HOST, api_host),
            headers={"Authorization": f"Bearer {token.reveal()}"},
        )

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        cached = self._dm_channels.get(user.id)
        if cached is None:
            try:
                data = await self._call(
                    "conversations.open", self._web.conversations_open(users=user.id)
                )
            except SlackDeliveryError as exc:
                _log.info("Slack would not open a DM with %s (%s)", user.id, exc.error)
                return None
            cached = str((data.get("channel") or {}).get("id", ""))
            if not cached:
                return None
            self._dm_channels[user.id] = cached
        return ChatRef(platform=Platform.SLACK, id=cached, is_direct=True)

    async def ask_secret(self, event: Event, request: SecretRequest) -> bool:
        """Open the key modal from the event's trigger; without one, DM a button that opens it.

        Returns False only when Slack will not let the app open a DM with the person.
        """
        request = dataclasses.replace(request, prompt=self._commands(request.prompt))
        ctx = self._contexts.get(event.event_id)
        if ctx is not None and ctx.trigger_id:
            try:
                await self._call(
                    "views.open",
                    self._web.views_open(
                        trigger_id=ctx.trigger_id, view=translate.secret_modal(request)
                    ),
                )
                return True
            except SlackDeliveryError as exc:
                _log.info("Slack views.open failed (%s); offering the form in a DM", exc.error)
        dm = await self.open_dm(event.user)
        if dm is None:
            return False
        await self._call(
            "chat.postMessage",
            self._web.chat_postMessage(channel=dm.id, **translate.secret_open_message(request)),
            pace=dm.id,
        )
        if event.chat.id and event.chat.id != dm.id:
            # Asked in a channel, where a form was expected: say where it went instead.
            await self._ephemeral(event, event.chat, Reply(translate.FORM_IN_DM), ctx)
        return True

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        """Post a "thinking" placeholder, then edit it as the scheduler allows.

        The placeholder and the final text go first (HIGH priority); intermediate updates at
        most once per ``edit_interval``, longer when the channel or the workspace is busy, each
        with the latest text (a timer flushes it even if the agent pauses). A failed
        intermediate update does not end the reply. A message that reaches
        ``max_message_chars`` is closed and the text continues in a new one.
        """
        chat = event.chat if event.chat.id else await self.open_dm(event.user)
        if chat is None:
            raise SlackDeliveryError("conversations.open", "cannot_open_dm")
        live = self._live_streams
        live[chat.id] = live.get(chat.id, 0) + 1
        try:
            return await self._stream(chat, chunks)
        finally:
            left = live.get(chat.id, 1) - 1
            if left > 0:
                live[chat.id] = left
            else:
                live.pop(chat.id, None)

    async def _stream(self, chat: ChatRef, chunks: AsyncIterator[str]) -> MessageRef | None:
        s = _Stream(chat=chat, current=await self._post_stream(chat, ""))
        limit = self.config.max_message_chars
        try:
            async for delta in chunks:
                s.pending += delta
                parts = translate.split_text(s.pending, limit)
                if len(parts) > 1:
                    await self._stop_timer(s)
                    async with s.lock:
                        await self._show_stream(s, parts[0], Priority.HIGH)
                        for middle in parts[1:-1]:
                            await self._post_stream(chat, middle)
                        s.previous = s.current
                        s.pending = s.shown = parts[-1]
                        s.current = await self._post_stream(chat, s.pending)
                        s.last_edit = self._monotonic()
                    continue
                await self._flush_if_due(s)
        except Exception:
            await self._stop_timer(s)
            await self._close_stream(s)
            raise
        await self._stop_timer(s)
        await self._close_stream(s)
        return s.current if s.pending else s.previous

    def _stream_interval(self, channel: str) -> float:
        """Seconds between two intermediate updates of one stream.

        Longer when the channel or the workspace is busy, so every live stream gets its share
        of the update budget.
        """
        edit, update = SLACK_WINDOWS["edit"], SLACK_WINDOWS["update"]
        return max(
            self.config.edit_interval,
            (self._live_streams.get(channel, 1) - 1) * edit.low_share,
            (sum(self._live_streams.values()) - 1) * update.low_share,
        )

    async def _flush_if_due(self, s: _Stream) -> None:
        """Show the latest text now if its turn and a slot are free, else schedule it.

        A scheduled update sends whatever text there is when its turn comes (coalesced),
        while the chunks keep being read.
        """
        if s.pending == s.shown or s.flushing:
            return
        delay = 0.0
        if s.last_edit is not None:
            waited = self._monotonic() - s.last_edit
            delay = max(self._stream_interval(s.chat.id) - waited, 0.0)
        keys = self._update_keys(s.current.chat.id)
        slot = self.scheduler.try_acquire(keys, Priority.LOW) if delay <= 0 else None
        if slot is None:
            if s.timer is None:  # else the pending update will carry this text too
                s.timer = asyncio.ensure_future(self._flush_later(s, delay))
            return
        try:
            await self._stop_timer(s)  # still waiting for its turn: this update replaces it
            async with s.lock:
                await self._flush(s, slot)
        finally:
            slot.release()

    async def _flush_later(self, s: _Stream, delay: float) -> None:
        if delay > 0:
            await self._sleep(delay)
        async with s.lock:
            keys = self._update_keys(s.current.chat.id)
            async with self.scheduler.slot(keys, Priority.LOW) as slot:
                # From here on the update runs to completion; _stop_timer leaves it be.
                s.timer = None
                await self._flush(s, slot)

    async def _flush(self, s: _Stream, slot: Slot) -> None:
        """One intermediate update with the latest text; caller holds ``s.lock`` and ``slot``.

        A failure does not end the reply: the next update or the final one shows the text.
        """
        s.flushing = True
        try:
            text = s.pending  # whatever arrived while waiting goes in this update
            if text == s.shown:
                return
            await self._show_stream(s, text, slot=slot)
            s.shown = text
        except SlackAdapterError as exc:
            _log.info("Slack refused a paced stream update (%s)", exc)
        finally:
            s.flushing = False
            s.last_edit = self._monotonic()

    async def _stop_timer(self, s: _Stream) -> None:
        timer, s.timer = s.timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)

    async def _close_stream(self, s: _Stream) -> None:
        async with s.lock:
            if not s.pending:
                await self.delete(s.current.chat, s.current.id)  # nothing to show: no "thinking"
            elif s.pending != s.shown:
                await self._show_stream(s, s.pending, Priority.HIGH)
                s.shown = s.pending

    async def _show_stream(
        self, s: _Stream, text: str, priority: Priority = Priority.HIGH, *, slot: Slot | None = None
    ) -> None:
        """Show ``text`` in the stream's message; in a new one if that message was deleted."""
        try:
            await self._update_stream(s.current, text, priority, slot=slot)
        except SlackDeliveryError as exc:
            if exc.error not in _GONE:
                raise
            # Someone deleted the message the answer was growing in: it goes on in a new one.
            _log.info("Slack: a streamed message is gone (%s); continuing in a new one", exc.error)
            s.current = await self._post_stream(s.chat, text)

    @staticmethod
    def _update_keys(channel: str) -> tuple[Key, ...]:
        return (("edit", channel), ("update", ""))

    async def _post_stream(self, chat: ChatRef, text: str) -> MessageRef:
        # A new message: never repeated after an error (a lost answer would show it twice).
        async with self.scheduler.slot((("post", chat.id),), Priority.HIGH):
            data = await self._call(
                "chat.postMessage",
                self._web.chat_postMessage(
                    channel=chat.id, thread_ts=chat.thread_id, **translate.stream_kwargs(text)
                ),
            )
        return MessageRef(chat=chat, id=str(data.get("ts", "")))

    async def _update_stream(
        self,
        message: MessageRef,
        text: str,
        priority: Priority = Priority.HIGH,
        *,
        slot: Slot | None = None,
    ) -> None:
        """One chat.update in a slot of the scheduler, tried again after a 5xx or a timeout.

        ``slot``: one the caller holds, for the first attempt. Slack's 429s are waited out by
        the SDK's handler.
        """
        held = [slot] if slot is not None else []

        async def once() -> None:
            async with asyncio.timeout(self.update_timeout):
                await self._call(
                    "chat.update",
                    self._web.chat_update(
                        channel=message.chat.id, ts=message.id, **translate.stream_kwargs(text)
                    ),
                )

        async def paced() -> None:
            if held:
                first = held.pop()
                try:
                    await once()
                finally:
                    first.release()  # counted from now; a retry takes a slot of its own
                return
            async with self.scheduler.slot(self._update_keys(message.chat.id), priority):
                await once()

        def counted(exc: BaseException, attempt: int) -> None:
            PLATFORM_RETRIES.labels("slack").inc()
            _log.info("Slack chat.update failed (%s); retry %d", exc, attempt)

        await with_retries(
            paced,
            retryable=lambda e: (
                isinstance(e, TimeoutError) or (isinstance(e, SlackDeliveryError) and e.transient)
            ),
            retries=_RETRY_LIMIT,
            on_retry=counted,
        )

    async def typing(self, chat: ChatRef) -> None:
        """Slack's Web API has no typing indicator for bots; ``stream`` shows "thinking" instead."""
        return None


def _code(exc: SlackApiError) -> str:
    response = getattr(exc, "response", None)
    error = response.get("error") if response is not None else None
    return str(error or "unknown_error")


def build(
    settings: PlatformSettings,
    env: Mapping[str, str],
    *,
    config: Config | None = None,
    dedup: Deduplicator | None = None,
    inbox: InboxPort | None = None,
) -> ChatAdapter:
    """The Slack adapter.

    ``config`` (the whole configuration) only names the file in error messages; ``dedup``
    remembers handled events (the app passes the database's, shared by replicas).

    Raises:
        ConfigError: a bad value or unknown setting in ``[slack]``, or a token the mode needs
            is unset: an enabled platform that cannot start stops start-up.
    """
    source = config.source if config is not None else "config.toml"
    slack = parse(settings, env, source=source)
    missing = slack.missing_env()
    if missing is not None:
        raise ConfigError(
            f"{source}: [slack] is enabled but {missing} is not set "
            "(export it, or set enabled = false)"
        )
    for label, secret in (
        ("slack bot token", slack.bot_token),
        ("slack app token", slack.app_token),
        ("slack signing secret", slack.signing_secret),
        ("slack user token", slack.user_token),
    ):
        if secret is not None:
            register_secret(secret.reveal(), label=label)
    return SlackAdapter(slack, dedup=dedup, inbox=inbox)


def _text(ctx: _Context) -> str:
    """The key form's undelivered answers, as the form shows them."""
    return "\n\n".join(r.text for r in ctx.undelivered)
