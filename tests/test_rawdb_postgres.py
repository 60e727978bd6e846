"""``core.rawdb.PostgresRaw`` (``byokbot proxy`` on PostgreSQL): one round trip per statement."""

from __future__ import annotations

import os
from typing import Any

import pytest

from core.rawdb import PostgresRaw

pytestmark = pytest.mark.skipif(
    not os.environ.get("BYOKBOT_TEST_PG_URL"),
    reason="BYOKBOT_TEST_PG_URL is not set (.ci/run starts a throwaway PostgreSQL and sets it)",
)


async def test_a_statement_costs_one_round_trip_and_a_left_transaction_is_still_rolled_back() -> (
    None
):
    raw = PostgresRaw(os.environ["BYOKBOT_TEST_PG_URL"], max_size=1)
    sent: list[str] = []
    try:
        pool: Any = await raw.pool()
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
        for i in range(3):
            assert await raw.fetchrow("SELECT $1::int", i) == (i,)
        # Only the statements themselves went to the server: no reset query at each release.
        assert sent == ["SELECT $1::int"] * 3

        # A transaction left open on a connection given back is still rolled back.
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        assert await raw.fetchrow("SELECT to_regclass('pg_temp.left_open') IS NULL") == (True,)
    finally:
        await raw.close()
