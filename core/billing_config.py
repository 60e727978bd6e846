"""The ``[billing]`` and ``[access]`` tables: subscriptions, payment providers, who may sign up.

Durations are in days and may be fractional (a test runs a whole lifecycle in seconds with
``grace_days = 0.00005``). Secrets (the Stripe API key, the webhook signing secret) never live
in the file: it names the environment variables that hold them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from core.config import PlanSettings, TableReader
from core.errors import ConfigError

ACCESS_MODES: Final = ("open", "invite", "approval")
PLAN_CHANGES: Final = ("period_end", "prorate")
STARS_PERIOD_SECONDS: Final = 2592000  # the only subscription period Telegram accepts (30 days)


@dataclass(frozen=True, slots=True)
class PlanBilling:
    """``[billing.plans.<id>]``: what a plan costs through each provider, and its trial."""

    plan: str
    stars: int | None = None
    stripe_price: str = ""
    trial_days: float = 0.0
    # A managed plan's trial spends less of the platform's budget than a paid month: a hard
    # cap, reserved against at the proxy like the monthly one.
    trial_token_cap: int | None = None


@dataclass(frozen=True, slots=True)
class StripeSettings:
    """``[billing.stripe]``: the Stripe account and where its webhook is received."""

    enabled: bool = False
    api_key_env: str = "STRIPE_API_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"  # noqa: S105 - a variable's name
    # The SDK's API base; a self-hosted test server (or the tests' fake) sets it.
    api_base: str = "https://api.stripe.com"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8090
    webhook_path: str = "/stripe/webhook"
    tolerance_seconds: int = 300
    success_url: str = "https://example.com/paid"
    cancel_url: str = "https://example.com/cancelled"
    portal_return_url: str = "https://example.com/account"


@dataclass(frozen=True, slots=True)
class BillingSettings:
    """``[billing]``: periods, grace, reminders, plan changes, and the jobs' interval."""

    period_days: float = 30.0
    grace_days: float = 3.0
    reminder_days: float = 3.0
    plan_change: str = "period_end"
    check_interval_seconds: float = 60.0
    stars: bool = False
    stripe: StripeSettings = field(default_factory=StripeSettings)
    plans: Mapping[str, PlanBilling] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def providers(self) -> tuple[str, ...]:
        """The payment providers configured (none: plans are granted, no price promised)."""
        return tuple(
            name for name, on in (("stars", self.stars), ("stripe", self.stripe.enabled)) if on
        )

    @property
    def trial_caps(self) -> dict[str, int]:
        """Plan id -> the token cap of its trial, for the plans that set one."""
        return {
            pid: p.trial_token_cap for pid, p in self.plans.items() if p.trial_token_cap is not None
        }

    def plan(self, plan_id: str) -> PlanBilling:
        return self.plans.get(plan_id) or PlanBilling(plan=plan_id)

    def payable(self, plan_id: str) -> tuple[str, ...]:
        """The configured providers that can charge for ``plan_id``."""
        p = self.plan(plan_id)
        out = []
        if self.stars and p.stars:
            out.append("stars")
        if self.stripe.enabled and p.stripe_price:
            out.append("stripe")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """``[access]``: who may sign up, and for how long an operator's grant lasts by default."""

    mode: str = "open"
    grant_days: float = 30.0


def parse_billing(
    data: Mapping[str, Any] | None, *, source: str, plans: Mapping[str, PlanSettings]
) -> BillingSettings:
    if data is None:
        return BillingSettings()
    t = TableReader(source, "billing", data)
    d = BillingSettings()
    stripe_raw = data.get("stripe", {})
    plans_raw = data.get("plans", {})
    t.used.update({"stripe", "plans"})
    if not isinstance(stripe_raw, dict) or not isinstance(plans_raw, dict):
        raise ConfigError(f"{source}: [billing.stripe] and [billing.plans] must be tables")
    per_plan: dict[str, PlanBilling] = {}
    for pid, raw in plans_raw.items():
        if pid not in plans:
            raise ConfigError(f"{source}: [billing.plans.{pid}] names no plan in [plans]")
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [billing.plans.{pid}] must be a table")
        pt = TableReader(source, f"billing.plans.{pid}", raw)
        per_plan[pid] = PlanBilling(
            plan=pid,
            stars=pt.optional_positive("stars", int),
            stripe_price=pt.string("stripe_price", ""),
            trial_days=pt.number("trial_days", 0.0, minimum=0.0),
            trial_token_cap=pt.optional_positive("trial_token_cap", int),
        )
        pt.finish()
    out = BillingSettings(
        period_days=t.number("period_days", d.period_days, above=0.0),
        grace_days=t.number("grace_days", d.grace_days, minimum=0.0),
        reminder_days=t.number("reminder_days", d.reminder_days, minimum=0.0),
        plan_change=t.choice("plan_change", PLAN_CHANGES, d.plan_change),
        check_interval_seconds=t.number(
            "check_interval_seconds", d.check_interval_seconds, above=0.0
        ),
        stars=t.boolean("stars", d.stars),
        stripe=_parse_stripe(source, stripe_raw),
        plans=MappingProxyType(per_plan),
    )
    t.finish()
    return out


def _parse_stripe(source: str, data: Mapping[str, Any]) -> StripeSettings:
    t = TableReader(source, "billing.stripe", data)
    d = StripeSettings()
    out = StripeSettings(
        enabled=t.boolean("enabled", d.enabled),
        api_key_env=t.env_name("api_key_env", d.api_key_env),
        webhook_secret_env=t.env_name("webhook_secret_env", d.webhook_secret_env),
        api_base=t.url("api_base", d.api_base),
        webhook_host=t.string("webhook_host", d.webhook_host, non_empty=True),
        webhook_port=t.integer("webhook_port", d.webhook_port, minimum=0, maximum=65535),
        webhook_path=t.string("webhook_path", d.webhook_path, non_empty=True),
        tolerance_seconds=t.positive_int("tolerance_seconds", d.tolerance_seconds),
        success_url=t.url("success_url", d.success_url),
        cancel_url=t.url("cancel_url", d.cancel_url),
        portal_return_url=t.url("portal_return_url", d.portal_return_url),
    )
    if not out.webhook_path.startswith("/"):
        raise t.fail("webhook_path", "must start with /")
    t.finish()
    return out


def parse_access(data: Mapping[str, Any] | None, *, source: str) -> AccessSettings:
    if data is None:
        return AccessSettings()
    t = TableReader(source, "access", data)
    d = AccessSettings()
    out = AccessSettings(
        mode=t.choice("mode", ACCESS_MODES, d.mode),
        grant_days=t.number("grant_days", d.grant_days, above=0.0),
    )
    t.finish()
    return out
