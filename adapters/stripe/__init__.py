"""Stripe through the official SDK: Checkout and portal links, and the signed webhook.

The webhook is a small aiohttp listener inside ``byokbot run`` (``[billing.stripe]
webhook_host``/``webhook_port``/``webhook_path``), apart from the Telegram webhook and the
proxy so each can sit behind its own reverse-proxy rule. Every request is verified with the
SDK's signature check (``Stripe-Signature: t=…,v1=HMAC-SHA256("t.payload")`` within
``tolerance_seconds``): a bad or replayed signature gets 400 and changes nothing. Each event id
is claimed in the database before it takes effect, so a redelivery (even after a restart) is
acknowledged and ignored; events are applied by their ``created`` time, so one that arrives
late never undoes a newer one. No card data ever reaches byokbot: people pay on Stripe's pages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import stripe
from aiohttp import web

from core.billing import Billing
from core.billing_config import StripeSettings
from core.errors import ConfigError, TenantError
from core.logs import register_secret

log = logging.getLogger("byokbot.stripe")

_MAX_BODY = 1 << 20


def _get(obj: Any, *path: str | int) -> Any:
    """``obj[a][b]…`` through dicts and Stripe objects, or None where a step is missing."""
    for key in path:
        if obj is None:
            return None
        try:
            obj = obj[key]
        except (KeyError, TypeError):
            return None
    return obj


def _when(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int) else None


class StripeGateway:
    """``CheckoutLinks`` and the webhook listener for one Stripe account."""

    def __init__(self, settings: StripeSettings, env: Mapping[str, str], billing: Billing) -> None:
        key = env.get(settings.api_key_env)
        secret = env.get(settings.webhook_secret_env)
        if not key:
            raise ConfigError(f"[billing.stripe] {settings.api_key_env} is not set")
        if not secret:
            raise ConfigError(f"[billing.stripe] {settings.webhook_secret_env} is not set")
        register_secret(key, label="stripe api key")
        register_secret(secret, label="stripe webhook secret")
        self.settings = settings
        self._secret = secret
        self._billing = billing
        self._client = stripe.StripeClient(
            key,
            base_addresses={"api": settings.api_base},
            http_client=stripe.HTTPXClient(),
            max_network_retries=1,
        )
        self._runner: web.AppRunner | None = None
        self.port = settings.webhook_port

    # ----- links ---------------------------------------------------------------------------

    async def checkout_link(
        self, *, tenant_id: str, plan: str, price: str, customer_id: str | None
    ) -> str:
        """A Checkout Session in subscription mode; the tenant rides along in its metadata."""
        meta = {"tenant_id": tenant_id, "plan": plan}
        params: dict[str, Any] = {
            "mode": "subscription",
            "line_items": [{"price": price, "quantity": 1}],
            "client_reference_id": tenant_id,
            "success_url": self.settings.success_url,
            "cancel_url": self.settings.cancel_url,
            "metadata": meta,
            "subscription_data": {"metadata": meta},
        }
        if customer_id:
            params["customer"] = customer_id
        session = await self._client.v1.checkout.sessions.create_async(params)  # type: ignore[arg-type]
        url = session.url
        if not url:
            raise stripe.StripeError("Stripe returned a checkout session without a URL")
        return str(url)

    async def portal_link(self, customer_id: str) -> str:
        session = await self._client.v1.billing_portal.sessions.create_async(
            {"customer": customer_id, "return_url": self.settings.portal_return_url}
        )
        return str(session.url)

    async def change_price(
        self, external_id: str, *, tenant_id: str, plan: str, price: str, prorate: bool
    ) -> None:
        """Move the subscription's item to ``price``: prorated now, or from the next invoice.

        ``proration_behavior`` "create_prorations" puts the difference for the rest of the
        period on the next invoice; "none" leaves this period as paid and bills the new price
        from the next renewal. The metadata's plan follows, so later invoices name it.
        """
        sub = await self._client.v1.subscriptions.retrieve_async(external_id)
        item = _get(sub, "items", "data", 0, "id")
        if not item:
            raise stripe.StripeError(f"Stripe subscription {external_id} has no item to change")
        await self._client.v1.subscriptions.update_async(
            external_id,
            {
                "items": [{"id": str(item), "price": price}],
                "proration_behavior": "create_prorations" if prorate else "none",
                "metadata": {"tenant_id": tenant_id, "plan": plan},
            },
        )

    async def cancel_subscription(self, external_id: str) -> None:
        """Cancel now (an erased account); Stripe then sends customer.subscription.deleted."""
        await self._client.v1.subscriptions.cancel_async(external_id)

    # ----- webhook -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post(self.settings.webhook_path, self._on_webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.webhook_host, self.settings.webhook_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"[billing.stripe] cannot listen on {self.settings.webhook_host}:"
                f"{self.settings.webhook_port} ({exc.strerror or type(exc).__name__})"
            ) from None
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info(
            "stripe: webhook listening on http://%s:%s%s",
            self.settings.webhook_host,
            self.port,
            self.settings.webhook_path,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_webhook(self, request: web.Request) -> web.Response:
        payload = await request.read()
        signature = request.headers.get("Stripe-Signature")
        try:
            event = self._client.construct_event(
                payload, signature, self._secret, tolerance=self.settings.tolerance_seconds
            )
        except stripe.SignatureVerificationError:
            log.warning("stripe: webhook refused: bad or expired signature")
            return web.json_response({"error": "bad signature"}, status=400)
        except ValueError:
            log.warning("stripe: webhook refused: not a JSON event")
            return web.json_response({"error": "bad payload"}, status=400)
        event_id = f"stripe:{event.id}"
        if not await self._billing.first_time(event_id):
            log.info("stripe: event %s was delivered again; ignored", event.id)
            return web.json_response({"received": True, "duplicate": True})
        try:
            await self.apply(event.type, event.data.object, _when(event.created))
        except Exception:
            # Released so Stripe's retry is processed; 500 tells Stripe to retry.
            await self._billing.forget_event(event_id)
            log.exception("stripe: event %s (%s) failed", event.id, event.type)
            return web.json_response({"error": "processing failed"}, status=500)
        log.info("stripe: event %s (%s) applied", event.id, event.type)
        return web.json_response({"received": True})

    async def _tenant_of(self, obj: Any) -> str | None:
        """The tenant an object belongs to: its metadata, else the stored subscription/customer."""
        for path in (
            ("metadata", "tenant_id"),
            ("subscription_details", "metadata", "tenant_id"),
            ("parent", "subscription_details", "metadata", "tenant_id"),
        ):
            found = _get(obj, *path)
            if found:
                return str(found)
        for sub_path in (("subscription",), ("parent", "subscription_details", "subscription")):
            sub_id = _get(obj, *sub_path)
            if isinstance(sub_id, str):
                sub = await self._billing.find_by_external(sub_id)
                if sub is not None:
                    return sub.tenant_id
        if _get(obj, "object") == "subscription":
            sub = await self._billing.find_by_external(str(_get(obj, "id")))
            if sub is not None:
                return sub.tenant_id
        customer = _get(obj, "customer")
        if isinstance(customer, str):
            sub = await self._billing.find_by_customer(customer)
            if sub is not None:
                return sub.tenant_id
        return None

    async def apply(self, kind: str, obj: Any, at: datetime | None) -> None:
        """One verified event's effect on the subscription it concerns."""
        tenant_id = await self._tenant_of(obj)
        if tenant_id is None:
            log.info("stripe: %s concerns no tenant of ours; ignored", kind)
            return
        plan = _get(obj, "metadata", "plan") or _get(
            obj, "parent", "subscription_details", "metadata", "plan"
        )
        billing = self._billing
        try:
            if kind == "checkout.session.completed":
                if _get(obj, "mode") != "subscription" or _get(obj, "payment_status") == "unpaid":
                    return
                await billing.paid(
                    tenant_id,
                    plan=str(plan or (await self._current_plan(tenant_id))),
                    provider="stripe",
                    # The session's first invoice: invoice.paid for it is then the same charge.
                    charge_id=str(_get(obj, "invoice") or _get(obj, "id")),
                    amount=int(_get(obj, "amount_total") or 0),
                    currency=str(_get(obj, "currency") or "usd"),
                    external_id=_get(obj, "subscription"),
                    customer_id=_get(obj, "customer"),
                    event_at=at,
                )
            elif kind == "invoice.paid":
                await billing.paid(
                    tenant_id,
                    plan=str(plan or (await self._current_plan(tenant_id))),
                    provider="stripe",
                    charge_id=str(_get(obj, "id")),
                    amount=int(_get(obj, "amount_paid") or 0),
                    currency=str(_get(obj, "currency") or "usd"),
                    period_end=_when(_get(obj, "lines", "data", 0, "period", "end")),
                    external_id=_get(obj, "subscription")
                    or _get(obj, "parent", "subscription_details", "subscription"),
                    customer_id=_get(obj, "customer"),
                    event_at=at,
                )
            elif kind == "invoice.payment_failed":
                await billing.payment_failed(tenant_id, event_at=at)
            elif kind == "customer.subscription.updated":
                await billing.provider_update(
                    tenant_id,
                    event_at=at or datetime.now(UTC),
                    period_end=_when(
                        _get(obj, "current_period_end")
                        or _get(obj, "items", "data", 0, "current_period_end")
                    ),
                    auto_renew=not bool(_get(obj, "cancel_at_period_end")),
                    status=str(_get(obj, "status") or ""),
                )
            elif kind == "customer.subscription.deleted":
                await billing.cancel(tenant_id, actor="billing:stripe", event_at=at)
            else:
                log.info("stripe: %s is not an event byokbot acts on", kind)
        except TenantError:
            log.info("stripe: %s for a deleted tenant; ignored", kind)

    async def _current_plan(self, tenant_id: str) -> str:
        sub = await self._billing.get(tenant_id)
        return sub.plan if sub is not None else ""
