"""A loopback fake of the Stripe API that the official ``stripe`` SDK talks to, and its webhooks.

Serves ``POST /v1/checkout/sessions`` and ``POST /v1/billing_portal/sessions`` (form-encoded,
``Authorization: Bearer <secret key>``; anything else answers 404 as an unknown route does), and
records every request with the key it carried. A test then plays Stripe's side: ``complete``
(the person paid on the checkout page), ``renew``, ``fail_renewal``, ``cancel``. Each sends the
events Stripe would to the bot's webhook, signed the way Stripe signs them:
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload" with the endpoint secret>``.
``deliver`` can also send an event badly signed, with an old timestamp (a replay), or again.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import FAKE_SHUTDOWN


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header for ``payload`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _nested(form: dict[str, str], prefix: str) -> dict[str, str]:
    """``metadata[tenant_id]=…`` form fields as ``{"tenant_id": …}``."""
    out = {}
    for key, value in form.items():
        if key.startswith(prefix + "[") and key.endswith("]"):
            out[key[len(prefix) + 1 : -1]] = value
    return out


@dataclass
class Request:
    path: str
    form: dict[str, str]
    key: str


@dataclass
class Delivery:
    """One webhook POST: the event, the raw body and signature sent, and the bot's status."""

    event: dict[str, Any]
    body: bytes
    signature: str
    status: int


@dataclass
class FakeStripe:
    api_key: str
    webhook_secret: str
    webhook_url: str = ""
    requests: list[Request] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    # price id -> monthly amount in cents, for proration on a price change
    prices: dict[str, int] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._checkout)
        app.router.add_post("/v1/billing_portal/sessions", self._portal)
        app.router.add_delete("/v1/subscriptions/{sub}", self._cancel_now)
        app.router.add_get("/v1/subscriptions/{sub}", self._retrieve)
        app.router.add_post("/v1/subscriptions/{sub}", self._update)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test{next(self._ids):05d}"

    async def _form(self, request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        form = {k: str(v) for k, v in (await request.post()).items()}
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.requests.append(Request(request.path, form, key))
        if key != self.api_key:
            body = {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}
            return form, web.json_response(body, status=401)
        return form, None

    async def _checkout(self, request: web.Request) -> web.Response:
        form, refused = await self._form(request)
        if refused is not None:
            return refused
        sid = self._id("cs")
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": form.get("mode"),
            "url": f"{self.api_base}/pay/{sid}",
            "client_reference_id": form.get("client_reference_id"),
            "customer": form.get("customer"),
            "metadata": _nested(form, "metadata"),
            "subscription_metadata": _nested(form, "subscription_data[metadata]"),
            "price": form.get("line_items[0][price]"),
            "success_url": form.get("success_url"),
            "status": "open",
        }
        self.sessions[sid] = session
        return web.json_response(session)

    async def _portal(self, request: web.Request) -> web.Response:
        form, refused = await self._form(request)
        if refused is not None:
            return refused
        pid = self._id("bps")
        return web.json_response(
            {
                "id": pid,
                "object": "billing_portal.session",
                "customer": form.get("customer"),
                "url": f"{self.api_base}/portal/{pid}",
                "return_url": form.get("return_url"),
            }
        )

    async def _cancel_now(self, request: web.Request) -> web.Response:
        _, refused = await self._form(request)
        if refused is not None:
            return refused
        sub = self.subscriptions.get(request.match_info["sub"])
        if sub is None:
            body = {"error": {"type": "invalid_request_error", "message": "No such subscription"}}
            return web.json_response(body, status=404)
        return web.json_response(self._subscription_object(sub, status="canceled"))

    async def _retrieve(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.requests.append(Request(request.path, {}, key))
        if key != self.api_key:
            body = {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}
            return web.json_response(body, status=401)
        sub = self.subscriptions.get(request.match_info["sub"])
        if sub is None:
            body = {"error": {"type": "invalid_request_error", "message": "No such subscription"}}
            return web.json_response(body, status=404)
        return web.json_response(self._subscription_object(sub))

    async def _update(self, request: web.Request) -> web.Response:
        """A price change as Stripe makes it: the item's price now; with proration_behavior
        "create_prorations" the difference for the rest of the period is a pending invoice
        item (``sub["prorations"]``) that the next invoice carries; with "none" nothing."""
        form, refused = await self._form(request)
        if refused is not None:
            return refused
        sub = self.subscriptions.get(request.match_info["sub"])
        if sub is None:
            body = {"error": {"type": "invalid_request_error", "message": "No such subscription"}}
            return web.json_response(body, status=404)
        if form.get("items[0][id]") not in (None, f"si_{sub['id']}"):
            body = {"error": {"type": "invalid_request_error", "message": "No such item"}}
            return web.json_response(body, status=400)
        if "items[0][price]" in form:
            old, new = sub["price"], form["items[0][price]"]
            sub["price"] = new
            behavior = form.get("proration_behavior", "create_prorations")
            sub.setdefault("prorations", [])
            if behavior != "none" and old != new:
                left = max(0, sub["period_end"] - int(time.time())) / sub["period_seconds"]
                old_amount = self.prices.get(old, sub["amount"])
                new_amount = self.prices.get(new, sub["amount"])
                sub["prorations"].append(round((new_amount - old_amount) * left))
            sub["amount"] = self.prices.get(new, sub["amount"])
        meta = _nested(form, "metadata")
        if meta:
            sub["metadata"] = {**sub["metadata"], **meta}
        return web.json_response(self._subscription_object(sub))

    # ----- Stripe's side ---------------------------------------------------------------------

    def session_of(self, url: str) -> dict[str, Any]:
        return self.sessions[url.rstrip("/").rsplit("/", 1)[1]]

    def event(
        self, kind: str, obj: dict[str, Any], *, created: int | None = None
    ) -> dict[str, Any]:
        return {
            "id": self._id("evt"),
            "object": "event",
            "api_version": "2025-09-30.clover",
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "type": kind,
            "data": {"object": obj},
        }

    async def deliver(
        self,
        event: dict[str, Any],
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        tamper: bool = False,
    ) -> int:
        """POST ``event`` to the webhook, signed (with another ``secret``, an old ``timestamp``,
        or a body changed after signing when ``tamper``); returns the HTTP status."""
        body = json.dumps(event).encode()
        signature = sign(body, secret or self.webhook_secret, timestamp or int(time.time()))
        if tamper:
            body = body.replace(b'"livemode": false', b'"livemode": true ')
        return await self.post_raw(event, body, signature)

    async def post_raw(self, event: dict[str, Any], body: bytes, signature: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.webhook_url,
                data=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": signature},
            ) as response,
        ):
            status = response.status
        self.deliveries.append(Delivery(event, body, signature, status))
        return status

    def _subscription(self, sub_id: str) -> dict[str, Any]:
        return self.subscriptions[sub_id]

    def _invoice(self, sub: dict[str, Any], *, paid: bool) -> dict[str, Any]:
        end = int(time.time()) + int(sub["period_seconds"])
        # A paid invoice settles the prorations pending since the last one.
        due = sub["amount"] + sum(sub.get("prorations", []))
        if paid:
            sub["prorations"] = []
        return {
            "id": self._id("in"),
            "object": "invoice",
            "customer": sub["customer"],
            "amount_paid": due if paid else 0,
            "amount_due": due,
            "currency": "usd",
            "status": "paid" if paid else "open",
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "metadata": sub["metadata"]},
            },
            "lines": {
                "object": "list",
                "data": [{"period": {"start": int(time.time()), "end": end}}],
            },
        }

    def _subscription_object(self, sub: dict[str, Any], **changes: Any) -> dict[str, Any]:
        sub.update(changes)
        return {
            "id": sub["id"],
            "object": "subscription",
            "customer": sub["customer"],
            "status": sub["status"],
            "cancel_at_period_end": sub["cancel_at_period_end"],
            "metadata": sub["metadata"],
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_{sub['id']}",
                        "object": "subscription_item",
                        "price": {"id": sub["price"]},
                        "current_period_end": sub["period_end"],
                    }
                ],
            },
        }

    async def complete(
        self, url: str, *, amount: int = 3900, period_seconds: int = 2592000
    ) -> list[int]:
        """The person paid on the checkout page at ``url``: Stripe's events, in Stripe's order."""
        session = self.session_of(url)
        customer = session["customer"] or self._id("cus")
        sub_id = self._id("sub")
        sub = {
            "id": sub_id,
            "customer": customer,
            "metadata": session["subscription_metadata"],
            "price": session["price"],
            "amount": amount,
            "period_seconds": period_seconds,
            "period_end": int(time.time()) + period_seconds,
            "status": "active",
            "cancel_at_period_end": False,
        }
        self.subscriptions[sub_id] = sub
        invoice = self._invoice(sub, paid=True)
        session |= {
            "status": "complete",
            "payment_status": "paid",
            "customer": customer,
            "subscription": sub_id,
            "invoice": invoice["id"],
            "amount_total": amount,
            "currency": "usd",
        }
        return [
            await self.deliver(self.event("checkout.session.completed", dict(session))),
            await self.deliver(self.event("invoice.paid", invoice)),
            await self.deliver(
                self.event("customer.subscription.updated", self._subscription_object(sub))
            ),
        ]

    async def fail_renewal(self, sub_id: str) -> list[int]:
        sub = self._subscription(sub_id)
        invoice = self._invoice(sub, paid=False)
        return [
            await self.deliver(self.event("invoice.payment_failed", invoice)),
            await self.deliver(
                self.event(
                    "customer.subscription.updated",
                    self._subscription_object(sub, status="past_due"),
                )
            ),
        ]

    async def renew(self, sub_id: str) -> list[int]:
        sub = self._subscription(sub_id)
        invoice = self._invoice(sub, paid=True)
        period_end = int(invoice["lines"]["data"][0]["period"]["end"])
        return [
            await self.deliver(self.event("invoice.paid", invoice)),
            await self.deliver(
                self.event(
                    "customer.subscription.updated",
                    self._subscription_object(sub, status="active", period_end=period_end),
                )
            ),
        ]

    async def cancel(self, sub_id: str) -> int:
        sub = self._subscription(sub_id)
        return await self.deliver(
            self.event(
                "customer.subscription.deleted", self._subscription_object(sub, status="canceled")
            )
        )
