"""``[billing]`` and ``[access]``: defaults, and every bad setting named in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import parse_config
from core.errors import ConfigError


def parse(data: dict[str, Any]) -> Any:
    return parse_config(data, source="config.toml", base_dir=Path("."))


def test_defaults_charge_nothing_and_admit_everyone() -> None:
    c = parse({})
    assert c.billing.providers == ()
    assert c.access.mode == "open"
    assert c.billing.grace_days == 3 and c.billing.reminder_days == 3


def test_providers_and_prices() -> None:
    c = parse(
        {
            "billing": {
                "stars": True,
                "stripe": {"enabled": True, "api_base": "http://127.0.0.1:9/"},
                "plans": {"managed": {"stars": 100, "stripe_price": "price_1"}},
            }
        }
    )
    assert c.billing.providers == ("stars", "stripe")
    assert c.billing.payable("managed") == ("stars", "stripe")
    assert c.billing.stripe.api_base == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"access": {"mode": "closed"}}, "[access] mode must be one of open, invite, approval"),
        ({"billing": {"grace_days": -1}}, "[billing] grace_days must be at least 0.0"),
        ({"billing": {"plan_change": "never"}}, "[billing] plan_change must be one of"),
        ({"billing": {"plans": {"gold": {}}}}, "[billing.plans.gold] names no plan in [plans]"),
        ({"billing": {"plans": {"managed": {"stars": 0}}}}, "stars must be a positive integer"),
        ({"billing": {"stripe": {"webhook_path": "hook"}}}, "webhook_path must start with /"),
        ({"billing": {"stripe": {"api_base": "ftp://x"}}}, "api_base must be an http"),
        ({"billing": {"colour": "blue"}}, "[billing] colour is not a known setting"),
    ],
)
def test_bad_settings_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(data)
    assert message in str(raised.value)
    assert str(raised.value).startswith("config.toml: ")
