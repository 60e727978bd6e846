"""The bound on live key checks: per person and platform-wide over a rolling hour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config import parse_config
from core.db import Database, upgrade
from core.errors import ConfigError
from core.livechecks import LiveChecks, LiveCheckScope
from core.ports import ManualClock


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


async def test_per_person_bound_and_when_to_retry(db: Database) -> None:
    clock = ManualClock()
    checks = LiveChecks(db, clock, per_identity=2, platform=100)
    assert await checks.admit("telegram:1") is None
    clock.advance(600)
    assert await checks.admit("telegram:1") is None
    refused = await checks.admit("telegram:1")
    assert refused is not None
    assert refused.scope is LiveCheckScope.PERSON
    assert refused.limit == 2
    assert refused.minutes == 50  # the first check leaves the window in 50 minutes
    assert await checks.admit("telegram:2") is None  # somebody else is not affected
    clock.advance(3000)
    assert await checks.admit("telegram:1") is None
    assert await checks.admit("telegram:1") is not None


async def test_platform_bound_counts_everyone(db: Database) -> None:
    clock = ManualClock()
    checks = LiveChecks(db, clock, per_identity=5, platform=3)
    for n in range(3):
        assert await checks.admit(f"slack:U{n}") is None
    refused = await checks.admit("slack:U9")
    assert refused is not None
    assert refused.scope is LiveCheckScope.PLATFORM
    assert refused.minutes == 60
    # A refused check is not counted: after the hour everyone can check again.
    clock.advance(3601)
    assert await checks.admit("slack:U9") is None


async def test_concurrent_checks_never_pass_the_bound(db: Database) -> None:
    clock = ManualClock()
    replicas = [LiveChecks(db, clock, per_identity=3, platform=100) for _ in range(8)]
    results = await asyncio.gather(*(r.admit("discord:1") for r in replicas))
    assert sum(r is None for r in results) == 3


@pytest.mark.parametrize("field", ["live_checks_per_hour", "live_checks_per_hour_total"])
def test_bounds_are_validated(field: str) -> None:
    assert (
        parse_config(
            {"core": {field: 7}}, source="t.toml", base_dir=Path(".")
        ).core.__getattribute__(field)
        == 7
    )
    for bad in (0, -1, "ten"):
        with pytest.raises(ConfigError) as caught:
            parse_config({"core": {field: bad}}, source="t.toml", base_dir=Path("."))
        assert field in str(caught.value)
