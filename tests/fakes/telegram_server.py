"""A loopback fake of the Telegram Bot API that records every call the real SDK makes.

Serves ``POST /bot<TOKEN>/<method>`` (form, multipart or JSON bodies) on 127.0.0.1, queues
updates for ``getUpdates`` long polls, keeps the text of every message per chat (edits applied,
deletions removed) and can be told to fail a method with a status (403, 400, 429 with
``retry_after``, 502) a number of times, optionally after letting some calls through, or to
stall a call past the client's timeout. A method it does not model answers 404, as the real
server does, so an unexpected call fails loudly.

Opt-in (``enforce_flood_limits``): Telegram's documented flood limits, answered with 429 and
``parameters.retry_after`` as the real API does (see ``FloodRules``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import FAKE_SHUTDOWN

# Parameters the SDK sends as JSON strings inside a form body.
_JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "entities",
        "commands",
        "allowed_updates",
        "reply_parameters",
        "scope",
        "prices",
    }
)


_KNOWN_METHODS = frozenset(
    {
        "getMe",
        "getUpdates",
        "getFile",
        "setMyCommands",
        "deleteWebhook",
        "setWebhook",
        "getWebhookInfo",
        "answerCallbackQuery",
        "sendChatAction",
        "sendMessageDraft",
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "editMessageText",
        "editMessageReplyMarkup",
        "deleteMessage",
        "getChat",
        # Telegram Stars (issue 15)
        "createInvoiceLink",
        "answerPreCheckoutQuery",
        "refundStarPayment",
    }
)


@dataclass
class Call:
    """One request the SDK made."""

    method: str
    params: dict[str, Any]
    status: int = 200
    message_id: int | None = None  # of the message a send created
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Upload:
    """A file a send carried (multipart): which method, chat and field, its name and bytes."""

    method: str
    chat_id: str
    field: str
    filename: str
    content: bytes


class _Refused(Exception):
    """A call the server refuses for the state it is in (a 400 with Telegram's wording)."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status, self.description = status, description


@dataclass
class Failure:
    """A scripted error answer for ``method`` (optionally only for one ``chat_id``)."""

    method: str
    status: int
    description: str
    times: int = 1
    retry_after: float | None = None
    chat_id: str | None = None
    migrate_to: int | None = None
    skip: int = 0  # matching calls answered normally before the failure starts
    stall: float | None = None  # no answer for this long (a timeout), then the error


# Methods Telegram counts against its message limits (chat actions, deletions and callback
# answers are not).
FLOODED_METHODS = frozenset(
    {
        "sendMessage",
        "sendMessageDraft",
        "sendPhoto",
        "sendDocument",
        "editMessageText",
        "editMessageReplyMarkup",
    }
)


@dataclass(frozen=True)
class FloodRules:
    """Telegram's documented flood limits, as sliding windows of accepted calls on arrival.

    About one message a second in a chat with short bursts (``per_chat`` in ``chat_seconds``),
    20 a minute in a group (negative chat ids), 30 a second for the whole bot.
    """

    per_chat: int = 3
    chat_seconds: float = 3.0
    per_group: int = 20
    group_seconds: float = 60.0
    per_bot: int = 30
    bot_seconds: float = 1.0


@dataclass
class FakeTelegramServer:
    """The fake Bot API. ``start()`` binds a free port; ``base_url`` goes to the SDK."""

    token: str
    bot_id: int = 777000111
    bot_username: str = "byok_test_bot"
    calls: list[Call] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # Messages the person deleted (``user_deletes``): (chat id, message id).
    deleted: set[tuple[str, int]] = field(default_factory=set)
    chats: dict[str, dict[int, str]] = field(default_factory=dict)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _forced: list[dict[str, Any]] = field(default_factory=list)
    _next_update_id: int = 1000
    _next_message_id: int = 500
    _changed: asyncio.Condition | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0
    max_hold: float = 0.05
    # Telegram serves one poller per bot: a getUpdates while another is held gets 409.
    exclusive_polling: bool = False
    _polls: int = 0
    # Every update pushed, by update_id (a test redelivers one as it was).
    pushed: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Methods whose calls wait until ``release`` (a bot killed mid-call never gets an answer).
    _holds: dict[str, asyncio.Event] = field(default_factory=dict)
    # The webhook as setWebhook / deleteWebhook left it, and the delivery error Telegram would
    # report for it (getWebhookInfo's last_error_message), scripted by a test.
    webhook_url: str = ""
    webhook_error: str = ""
    # Stars invoices by link (createInvoiceLink's params), and refunded charge ids.
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    _charges: int = 0
    # Files people "uploaded", by file_id (``add_file``), served by getFile + the file URL;
    # each download's file path is recorded.
    files: dict[str, bytes] = field(default_factory=dict)
    downloads: list[str] = field(default_factory=list)
    # Every uploaded file with its bytes (``Call.params`` keeps only name and size).
    uploads: list[Upload] = field(default_factory=list)
    # When each update was first handed to the bot by getUpdates (monotonic), by update_id.
    served: dict[int, float] = field(default_factory=dict)
    # Flood limits, when enforced, and the arrival times of the calls they accepted per window.
    flood: FloodRules | None = None
    _flooded: dict[tuple[str, str], collections.deque[float]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- scripting -----------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for ``getUpdates``; assigns and returns its ``update_id``."""
        self._next_update_id += 1
        update = {"update_id": self._next_update_id, **update}
        self.pushed[self._next_update_id] = update
        self._updates.append(update)
        self._arrived.set()
        self._notify()
        return self._next_update_id

    def redeliver(self, update_id: int, update: dict[str, Any]) -> None:
        """Send an update again although it was confirmed (what a redelivery looks like)."""
        self._forced.append({"update_id": update_id, **update})
        self._arrived.set()
        self._notify()

    def hold(self, method: str) -> None:
        """Calls to ``method`` are recorded but not answered until ``release(method)``."""
        self._holds.setdefault(method, asyncio.Event())

    def release(self, method: str) -> None:
        gate = self._holds.pop(method, None)
        if gate is not None:
            gate.set()

    def fail(
        self,
        method: str,
        status: int,
        description: str,
        *,
        times: int = 1,
        retry_after: float | None = None,
        chat_id: str | int | None = None,
        migrate_to: int | None = None,
        skip: int = 0,
        stall: float | None = None,
    ) -> None:
        """The next ``times`` calls to ``method`` (in ``chat_id``) answer ``status``.

        ``skip`` lets that many matching calls through first (fail the third draft of a
        reply: ``skip=2``); ``stall`` holds the call unanswered that long first, so the client
        times out (the call has no effect).
        """
        self.failures.append(
            Failure(
                method,
                status,
                description,
                times,
                retry_after,
                None if chat_id is None else str(chat_id),
                migrate_to,
                skip,
                stall,
            )
        )

    def time_out(
        self,
        method: str,
        *,
        seconds: float = 8.0,
        times: int = 1,
        chat_id: str | int | None = None,
        skip: int = 0,
    ) -> None:
        """The next call to ``method`` gets no answer for ``seconds``: a timeout.

        python-telegram-bot gives up after 5 s. The call has no effect.
        """
        self.fail(
            method,
            504,
            "Gateway Timeout",
            times=times,
            chat_id=chat_id,
            skip=skip,
            stall=seconds,
        )

    def enforce_flood_limits(self, rules: FloodRules | None = None) -> None:
        """From now on, answer 429 (with ``retry_after``) to what Telegram would refuse."""
        self.flood = rules or FloodRules()

    def flood_refusals(self) -> list[Call]:
        """The calls answered 429 because of the flood limits (or a scripted 429)."""
        return [c for c in self.calls if c.status == 429]

    def most_in_window(self, chat_id: str | int, seconds: float) -> int:
        """The most flood-counted calls accepted in ``chat_id`` within any ``seconds``."""
        times = [
            c.at
            for c in self.calls
            if c.status == 200
            and c.method in FLOODED_METHODS
            and str(c.params.get("chat_id")) == str(chat_id)
        ]
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def add_file(self, file_id: str, data: bytes) -> None:
        """Make ``file_id`` downloadable (getFile, then GET /file/bot<token>/<path>)."""
        self.files[file_id] = data

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        file_id = path.removeprefix("media/")
        if file_id not in self.files:
            return web.Response(status=404)
        self.downloads.append(path)
        return web.Response(body=self.files[file_id])

    def next_message_id(self) -> int:
        self._next_message_id += 1
        return self._next_message_id

    # ----- reading -------------------------------------------------------------------------

    def calls_to(self, method: str, *, ok_only: bool = True) -> list[dict[str, Any]]:
        return [
            c.params for c in self.calls if c.method == method and (c.status == 200 or not ok_only)
        ]

    def methods(self, *, ok_only: bool = True) -> list[str]:
        return [c.method for c in self.calls if c.status == 200 or not ok_only]

    def user_deletes(self, chat_id: str | int, message_id: int) -> None:
        """The person deletes the bot's message (allowed in a private chat, and by admins).

        Editing it afterwards is refused as Telegram refuses it.
        """
        self.chats.get(str(chat_id), {}).pop(message_id, None)
        self.deleted.add((str(chat_id), message_id))

    def texts(self, chat_id: str | int) -> list[str]:
        """What the chat shows now: the bot's live messages in order (edits applied)."""
        msgs = self.chats.get(str(chat_id), {})
        return [msgs[k] for k in sorted(msgs)]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (re-checked after every call), or fail the test."""
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def wait_calls(self, method: str, count: int, within: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.calls_to(method)) >= count, within)

    # ----- serving -------------------------------------------------------------------------

    def _notify(self) -> None:
        async def bump() -> None:
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(bump())
        task.add_done_callback(lambda t: t.result())

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            raw = await request.json()
            return dict(raw) if isinstance(raw, dict) else {}
        form = await request.post()
        params: dict[str, Any] = {}
        files: list[tuple[str, str, bytes]] = []
        for key, value in form.items():
            if isinstance(value, str):
                params[key] = json.loads(value) if key in _JSON_FIELDS else value
            else:  # a file upload
                content = value.file.read()
                files.append((key, str(value.filename), content))
                params[key] = {"filename": value.filename, "size": len(content)}
        method = request.match_info.get("method", "")
        for key, name, content in files:
            self.uploads.append(Upload(method, str(params.get("chat_id", "")), key, name, content))
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        params = await self._params(request)
        call = Call(method, params)
        self.calls.append(call)
        failure = self._scripted_failure(method, params)
        if failure is not None:
            call.status = failure.status
            self._notify()
            if failure.stall is not None:
                await asyncio.sleep(failure.stall)
            return self._error(
                failure.status, failure.description, failure.retry_after, failure.migrate_to
            )
        if method not in _KNOWN_METHODS:
            # Fail loudly, as the real server does, on a method the fake does not model.
            call.status = 404
            self._notify()
            return self._error(404, "Not Found")
        wait = self._flood_wait(method, params, call.at)
        if wait is not None:
            call.status = 429
            self._notify()
            retry = max(1, math.ceil(wait))
            return self._error(429, f"Too Many Requests: retry after {retry}", retry)
        gate = self._holds.get(method)
        if gate is not None:
            self._notify()
            await gate.wait()
        if method == "getUpdates" and self.exclusive_polling and self._polls:
            call.status = 409
            self._notify()
            return self._error(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            )
        if method == "getUpdates":
            self._polls += 1
            try:
                result: Any = await self._get_updates(params)
            finally:
                self._polls -= 1
        else:
            try:
                result = self._result(method, params)
            except _Refused as refused:
                call.status = refused.status
                self._notify()
                return self._error(refused.status, refused.description)
            if method.startswith("send") and isinstance(result, dict):
                call.message_id = result.get("message_id")
        self._notify()
        return web.json_response({"ok": True, "result": result})

    def _scripted_failure(self, method: str, params: dict[str, Any]) -> Failure | None:
        for failure in self.failures:
            if failure.method != method or failure.times <= 0:
                continue
            if failure.chat_id is not None and str(params.get("chat_id")) != failure.chat_id:
                continue
            if failure.skip > 0:
                failure.skip -= 1
                continue
            failure.times -= 1
            return failure
        return None

    def _flood_wait(self, method: str, params: dict[str, Any], now: float) -> float | None:
        """None if the flood limits accept the call (then counted), else seconds to wait."""
        rules = self.flood
        if rules is None or method not in FLOODED_METHODS:
            return None
        chat = str(params.get("chat_id", ""))
        windows = [(("bot", ""), rules.per_bot, rules.bot_seconds)]
        if chat:
            windows.append((("chat", chat), rules.per_chat, rules.chat_seconds))
            if chat.startswith("-"):
                windows.append((("group", chat), rules.per_group, rules.group_seconds))
        wait = 0.0
        for key, limit, seconds in windows:
            seen = self._flooded.setdefault(key, collections.deque())
            while seen and seen[0] <= now - seconds:
                seen.popleft()
            if len(seen) >= limit:
                wait = max(wait, seen[len(seen) - limit] + seconds - now)
        if wait > 0:
            return wait
        for key, _, _ in windows:
            self._flooded[key].append(now)
        return None

    @staticmethod
    def _error(
        status: int,
        description: str,
        retry_after: float | None = None,
        migrate_to: int | None = None,
    ) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        if migrate_to is not None:
            body["parameters"] = {"migrate_to_chat_id": migrate_to}
        return web.json_response(body, status=status)

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0) or 0)
        # Hold long polls briefly only, so stopping the updater in teardown is quick.
        timeout = min(float(params.get("timeout", 0) or 0), self.max_hold)
        # Confirmed updates are gone for good, as on the real server.
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and not self._forced:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        forced, self._forced = self._forced, []
        out = forced + list(self._updates)
        now = time.monotonic()
        for u in out:
            self.served.setdefault(u["update_id"], now)
        return out

    def _user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "BYOK",
            "username": self.bot_username,
        }

    def _message(self, chat_id: str, text: str, message_id: int) -> dict[str, Any]:
        cid = int(chat_id)
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": cid, "type": "private" if cid > 0 else "supergroup"},
            "from": self._user(),
            "text": text,
        }

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        chat_id = str(params.get("chat_id", ""))
        if method == "getMe":
            return self._user()
        if method == "getFile":
            file_id = str(params.get("file_id", ""))
            data = self.files.get(file_id)
            if data is None:
                return {"file_id": file_id, "file_unique_id": f"u{file_id}"}  # no file_path
            return {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "file_size": len(data),
                "file_path": f"media/{file_id}",
            }
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            mid = self.next_message_id()
            text = str(params.get("text", params.get("caption", "")))
            self.chats.setdefault(chat_id, {})[mid] = text
            return self._message(chat_id, text, mid)
        if method == "editMessageText":
            mid = int(params["message_id"])
            if (chat_id, mid) in self.deleted:
                raise _Refused(400, "Bad Request: message to edit not found")
            self.chats.setdefault(chat_id, {})[mid] = str(params["text"])
            return self._message(chat_id, str(params["text"]), mid)
        if method == "editMessageReplyMarkup":
            mid = int(params["message_id"])
            return self._message(chat_id, self.chats.get(chat_id, {}).get(mid, ""), mid)
        if method == "deleteMessage":
            self.chats.get(chat_id, {}).pop(int(params["message_id"]), None)
            return True
        if method == "setWebhook":
            self.webhook_url = str(params.get("url", ""))
            return True
        if method == "deleteWebhook":
            self.webhook_url = ""
            return True
        if method == "getWebhookInfo":
            info: dict[str, Any] = {
                "url": self.webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": 0,
            }
            if self.webhook_error:
                info |= {"last_error_date": 1_780_000_000, "last_error_message": self.webhook_error}
            return info
        if method == "getChat":
            cid = int(chat_id)
            return {"id": cid, "type": "private" if cid > 0 else "supergroup"}
        if method == "createInvoiceLink":
            link = f"https://t.me/$invoice{len(self.invoices) + 1}"
            self.invoices[link] = params
            return link
        if method == "refundStarPayment":
            self.refunds.append(params)
            return True
        return True  # methods whose result is plain ``true``

    # ----- Telegram Stars: a person paying ----------------------------------------------------

    async def pay_stars(
        self,
        user: dict[str, Any],
        link: str,
        *,
        recurring: bool = False,
        amount: int | None = None,
        within: float = 10.0,
    ) -> str | None:
        """The person opens ``link`` and pays, as Telegram runs it.

        A ``pre_checkout_query`` update first; the bot must answer it (Telegram gives 10 s).
        Only if it answered ``ok`` does the charge happen: a message with ``successful_payment``
        (``is_recurring`` for a subscription, ``is_first_recurring`` on its first charge).
        Returns the charge id, or None when the bot refused the checkout.
        """
        invoice = self.invoices[link]
        total = int(invoice["prices"][0]["amount"]) if amount is None else amount
        self._charges += 1
        query_id = f"pcq{self._charges}"
        self.push_update(
            {
                "pre_checkout_query": {
                    "id": query_id,
                    "from": user,
                    "currency": invoice["currency"],
                    "total_amount": total,
                    "invoice_payload": invoice["payload"],
                }
            }
        )
        await self.wait_for(
            lambda: any(
                c["pre_checkout_query_id"] == query_id
                for c in self.calls_to("answerPreCheckoutQuery")
            ),
            within,
        )
        (answer,) = [
            c
            for c in self.calls_to("answerPreCheckoutQuery")
            if c["pre_checkout_query_id"] == query_id
        ]
        if str(answer.get("ok")).lower() != "true":
            return None
        return self.stars_charge(user, link, amount=total, first=not recurring)

    def stars_charge(
        self, user: dict[str, Any], link: str, *, amount: int | None = None, first: bool = False
    ) -> str:
        """A ``successful_payment`` for ``link``'s subscription (a renewal unless ``first``)."""
        invoice = self.invoices[link]
        total = int(invoice["prices"][0]["amount"]) if amount is None else amount
        self._charges += 1
        charge = f"stxcharge{self._charges:04d}"
        period = int(invoice.get("subscription_period", 0) or 0)
        paid: dict[str, Any] = {
            "currency": invoice["currency"],
            "total_amount": total,
            "invoice_payload": invoice["payload"],
            "telegram_payment_charge_id": charge,
            "provider_payment_charge_id": "",
        }
        if period:
            paid |= {
                "subscription_expiration_date": int(time.time()) + period,
                "is_recurring": True,
                "is_first_recurring": first,
            }
        self.push_update(
            {
                "message": {
                    "message_id": self.next_message_id(),
                    "date": int(time.time()),
                    "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
                    "from": user,
                    "successful_payment": paid,
                }
            }
        )
        return charge


# ----- recorded update shapes --------------------------------------------------------------

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_clock = iter(range(1_780_000_000, 1_790_000_000))


def tg_user(user_id: int, first_name: str = "Ada", username: str | None = "ada") -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        user["username"] = username
    return user


def _entities(text: str) -> list[dict[str, Any]]:
    """Entities the Telegram server would attach: a leading command and @mentions."""
    out: list[dict[str, Any]] = []
    if text.startswith("/"):
        length = len(text.split()[0])
        out.append({"type": "bot_command", "offset": 0, "length": length})
    pos = 0
    for word in text.split(" "):
        if word.startswith("@") and len(word) > 1:
            out.append({"type": "mention", "offset": pos, "length": len(word)})
        pos += len(word) + 1
    return out


def message(
    chat_id: int,
    user: dict[str, Any],
    text: str,
    *,
    message_id: int,
    reply_to: dict[str, Any] | None = None,
    chat_title: str = "Team",
) -> dict[str, Any]:
    """A ``message`` update body: private chat when ``chat_id > 0``, supergroup otherwise."""
    chat: dict[str, Any] = (
        {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        if chat_id > 0
        else {"id": chat_id, "type": "supergroup", "title": chat_title}
    )
    msg: dict[str, Any] = {
        "message_id": message_id,
        "date": next(_clock),
        "chat": chat,
        "from": user,
        "text": text,
    }
    entities = _entities(text)
    if entities:
        msg["entities"] = entities
    if reply_to is not None:
        msg["reply_to_message"] = reply_to
    return {"message": msg}


def callback(
    chat_id: int, user: dict[str, Any], data: str, *, message_id: int, query_id: str = "q1"
) -> dict[str, Any]:
    """A ``callback_query`` update body for a button on the bot's message ``message_id``."""
    chat_type = "private" if chat_id > 0 else "supergroup"
    return {
        "callback_query": {
            "id": query_id,
            "from": user,
            "chat_instance": "ci-1",
            "data": data,
            "message": {
                "message_id": message_id,
                "date": next(_clock),
                "chat": {"id": chat_id, "type": chat_type},
                "from": {"id": 777000111, "is_bot": True, "first_name": "BYOK"},
                "text": "pick one",
            },
        }
    }


# ----- a scripted stand-in for the router --------------------------------------------------


class Script:
    """The ``handler`` given to ``adapter.start``: records events and runs ``on(event)``.

    Exceptions from ``on`` are kept in ``errors`` (the real router has a catch-all too).
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.errors: list[BaseException] = []
        self.done = 0
        self.on: Callable[[Any], Any] | None = None
        self._cond = asyncio.Condition()

    async def __call__(self, event: Any) -> Any:
        from core.chat import Outcome

        self.events.append(event)
        try:
            if self.on is not None:
                await self.on(event)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            async with self._cond:
                self.done += 1
                self._cond.notify_all()
        return Outcome()

    async def handled(self, count: int, within: float = 5.0) -> None:
        """Wait until ``count`` events have been fully handled."""
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: self.done >= count), within)


class TickingClock:
    """A monotonic clock the test moves by hand, for stream pacing."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class HeldSleep:
    """An injectable ``sleep`` that returns only when the test says time has passed.

    ``release()`` ends every sleep in progress; until then, paced work waits, so tests count
    edits without depending on wall-clock time.
    """

    def __init__(self) -> None:
        self._gate = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        await self._gate.wait()
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()
