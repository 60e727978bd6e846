"""Managed-plan budgets: monthly token and dollar caps, requests per minute, usage alerts.

Every proxied request first **reserves** an upper-bound estimate with one conditional UPDATE
(``… SET reserved = reserved + :est WHERE spent + reserved + :est <= cap AND <minute window
has room>``), in the same transaction as a ``budget_reservations`` row. The statement is atomic
on PostgreSQL (row lock, re-checked after a concurrent commit) and on SQLite (one writer at a
time), so concurrent requests can never all see the same headroom. When the upstream reply ends
the reservation is **settled** to the real usage; on an upstream error or a disconnect it is
settled to what was used so far (often nothing). Whoever deletes the reservation row — settle,
release or the sweeper — is the one that gives the reserved amount back, so a reservation is
released exactly once. A process that dies between reserve and settle leaves the row behind;
``sweep_orphans`` (an APScheduler job) releases rows past their expiry.

The request path (reserve, settle) has a fast form per database, because the ORM's round trips
cost milliseconds per request: on SQLite one ``BEGIN IMMEDIATE … COMMIT`` on a dedicated
sqlite3 connection and thread; on PostgreSQL one data-modifying CTE statement each. The same
conditions apply; the tests run every case on both databases. Refusals, alerts and the jobs are
plain SQL text on the same drivers (``core.rawdb``), so ``byokbot proxy`` never loads
SQLAlchemy; only an in-memory SQLite goes through the ORM (``core.budget_orm``).

Money is kept in integer micro-dollars. Periods are calendar months in UTC; a row from an
older month is rolled over lazily by the first request of the new month and in bulk by
``reset_month`` (the monthly job). Alerts at 50, 80 and 100 % of the cap are claimed with a
conditional UPDATE on ``alerted_pct``, so each fires once per period even under concurrency.

Errors::

    CoreError
    └── BudgetError
        ├── CapReached          the monthly token or dollar cap has no room for this request
        ├── RateLimitExceeded   the plan's requests-per-minute are used up (``retry_after``)
        └── NotMetered          the tenant's plan has no caps (a BYOK plan): no proxy access
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import os
import random
import secrets
import sqlite3
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

from core.config import PlanSettings
from core.errors import CoreError
from core.ports import Clock
from core.rawdb import RawDatabase, SQLiteRaw, as_date

if TYPE_CHECKING:  # ``byokbot proxy`` runs without SQLAlchemy: see core.rawdb
    from core.db import Database

log = logging.getLogger(__name__)

T = TypeVar("T")

THRESHOLDS: Final = (50, 80, 100)
MICROS: Final = 1_000_000

_LEASE_MIN: Final = 4  # a lease for fewer requests than this is not worth its bookkeeping
_LEASE_SHARE: Final = 8  # a lease takes at most 1/8 of the room left (cost and requests)
_LEASE_TICK: Final = 0.1  # seconds between looks at the open leases
_LEASE_COMMIT: Final = 1.0  # seconds within which a lease's settled usage is committed
_LEASE_IDLE: Final = 0.5  # seconds unused after which a lease is given back
_DRAIN_SECONDS: Final = 5.0  # at stop, how long leases may take to be given back


class BudgetError(CoreError):
    """A request the budget does not admit."""


class CapReached(BudgetError):
    """The monthly cap (``which`` is "tokens" or "usd") has no room; it resets on ``resets_on``."""

    def __init__(self, tenant_id: str, which: str, resets_on: date) -> None:
        super().__init__(f"tenant {tenant_id}: monthly {which} cap reached")
        self.tenant_id = tenant_id
        self.which = which
        self.resets_on = resets_on


class RateLimitExceeded(BudgetError):
    """The plan's requests per minute are used up; try again after ``retry_after`` seconds."""

    def __init__(self, tenant_id: str, retry_after: float) -> None:
        super().__init__(f"tenant {tenant_id}: requests per minute exceeded")
        self.tenant_id = tenant_id
        self.retry_after = retry_after


class NotMetered(BudgetError):
    """The plan has no monthly cap (a BYOK plan); its tenants have no business with the proxy."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Tokens and integer micro-dollars of one request (estimated or real)."""

    tokens: int
    usd_micros: int

    @classmethod
    def of(
        cls,
        input_tokens: int,
        output_tokens: int,
        *,
        input_usd_per_mtok: float,
        output_usd_per_mtok: float,
    ) -> Cost:
        """Price tokens at USD per million tokens (= micro-dollars per token), rounded up."""
        micros = input_tokens * input_usd_per_mtok + output_tokens * output_usd_per_mtok
        # round() first so 0.1 * 3 = 0.30000000000000004 does not become a whole extra micro.
        return cls(input_tokens + output_tokens, math.ceil(round(micros, 6)))


@dataclass(frozen=True, slots=True)
class Reservation:
    """An open reservation, to settle or release (``lease``: admitted from this process's lease)."""

    id: str
    tenant_id: str
    tokens: int
    usd_micros: int
    lease: _Lease | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclass(eq=False, slots=True)
class _Lease:
    """Room this process reserved for a tenant's next requests: one ``budget_reservations`` row.

    ``tokens``/``micros`` are what the row holds (and ``budgets`` counts as reserved). Of that,
    ``busy_*`` is held by the requests it admitted that are still in flight and ``spent_*`` is
    what settled requests used and this process has not committed yet; the rest is free.
    """

    id: str
    tenant_id: str
    plan_id: str
    terms: tuple[int | None, int | None, int]  # the caps it was taken under: tokens, usd, rpm
    period: date
    minute: int
    tokens: int
    micros: int
    slots: int  # requests it may still admit (counted in this minute's window already)
    expires: datetime
    used_at: float  # loop time it last admitted or settled a request
    busy_t: int = 0
    busy_u: int = 0
    busy_n: int = 0
    spent_t: int = 0
    spent_u: int = 0
    unsaved: int = 0  # settlements counted in spent_* and not committed yet
    spent_at: float = 0.0  # loop time of the oldest of them
    closed: bool = False  # admits no more; given back once its requests have settled
    writing: bool = False  # a draw or the final give-back is being committed
    waiting: list[asyncio.Future[None]] = dataclasses.field(default_factory=list)
    released: asyncio.Future[None] | None = None  # once closed: its free room is given back

    def admits(self, tokens: int, micros: int) -> bool:
        return (
            self.slots > 0
            and self.tokens - self.busy_t - self.spent_t >= tokens
            and self.micros - self.busy_u - self.spent_u >= micros
        )


@dataclass(frozen=True, slots=True)
class Spend:
    """What a tenant used this period, and when the period ends."""

    tokens: int
    usd: float
    period_start: date
    resets_on: date


@dataclass(frozen=True, slots=True)
class Caps:
    """A plan's monthly caps; None means that dimension is not capped."""

    tokens: int | None
    usd: float | None


@dataclass(frozen=True, slots=True)
class BudgetSummary:
    """For ``usage`` and ``admin tenant``: spend (settled), in-flight reservations and caps."""

    tenant_id: str
    spent: Spend
    caps: Caps
    tokens_reserved: int
    usd_reserved: float

    @property
    def percent(self) -> int:
        """The larger of tokens and dollars spent, in whole percent of its cap."""
        return _percent(
            self.spent.tokens, round(self.spent.usd * MICROS), self.caps.tokens, self.caps.usd
        )


@dataclass(frozen=True, slots=True)
class BudgetTotals:
    """For ``admin stats``: the current period across all metered tenants."""

    period_start: date
    tenants: int
    tokens: int
    usd: float
    tokens_reserved: int
    open_reservations: int


class AlertSink(Protocol):
    """Told once per threshold (50, 80, 100) per period; the lead's sink DMs the tenant."""

    async def alert(self, tenant_id: str, threshold_pct: int, spent: Spend, cap: Caps) -> None: ...


class LoggingAlertSink:
    """Alerts of a proxy running on its own (``byokbot proxy``), which has no chat to DM."""

    async def alert(self, tenant_id: str, threshold_pct: int, spent: Spend, cap: Caps) -> None:
        log.warning(
            "tenant %s reached %d%% of its monthly allowance (%d tokens, $%.2f)",
            tenant_id,
            threshold_pct,
            spent.tokens,
            spent.usd,
        )


class RecordingAlertSink:
    """An in-memory sink: keeps every alert (tests, and a runtime without DMs)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, int, Spend, Caps]] = []

    async def alert(self, tenant_id: str, threshold_pct: int, spent: Spend, cap: Caps) -> None:
        self.alerts.append((tenant_id, threshold_pct, spent, cap))


_ID_PREFIX: Final = secrets.token_hex(8)
_ids = itertools.count(1)


def _next_id() -> str:
    """A reservation id: random per process, then a counter (urandom per request is slow)."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


def period_of(now: datetime) -> date:
    """The first day of ``now``'s calendar month (UTC)."""
    return now.date().replace(day=1)


def next_period(start: date) -> date:
    """The first day of the month after ``start``."""
    return date(start.year + (start.month == 12), start.month % 12 + 1, 1)


def _percent(tokens: int, micros: int, token_cap: int | None, usd_cap: float | None) -> int:
    pct = 0
    if token_cap:
        pct = max(pct, tokens * 100 // token_cap)
    if usd_cap:
        pct = max(pct, micros * 100 // _micros(usd_cap))
    return pct


def _capped(plan: PlanSettings, token_cap: int | None) -> PlanSettings:
    """``plan`` with its token cap lowered to ``token_cap`` (a trial's), if that is smaller."""
    if token_cap is None or (
        plan.monthly_token_cap is not None and plan.monthly_token_cap <= token_cap
    ):
        return plan
    return dataclasses.replace(plan, monthly_token_cap=token_cap)


def _micros(usd: float) -> int:
    return round(usd * MICROS)


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A tenant's ``budgets`` row, as the refusal and the summary read it."""

    tenant_id: str
    period_start: date
    tokens_spent: int
    usd_micros_spent: int
    tokens_reserved: int
    usd_micros_reserved: int
    window_minute: int
    window_requests: int


class _Writer(Protocol):
    """The request path's two transactions (reserve, settle) for one kind of database."""

    async def reserve(
        self,
        plan: PlanSettings,
        r: Reservation,
        period: date,
        minute: int,
        now: datetime,
        ttl: timedelta,
        *,
        alone: bool = False,
    ) -> tuple[int, int, int] | None: ...

    async def settle(
        self, r: Reservation, tokens: int, micros: int, now: datetime
    ) -> tuple[int, int, int, date] | None: ...


class _LeaseWriter(Protocol):
    """What a writer needs for leases (SQLite and PostgreSQL; not the in-memory ORM path)."""

    async def reserve(
        self,
        plan: PlanSettings,
        r: Reservation,
        period: date,
        minute: int,
        now: datetime,
        ttl: timedelta,
        *,
        alone: bool = False,
        slots: int = 1,
    ) -> tuple[int, int, int] | None: ...

    def submit_settle(
        self,
        r: Reservation,
        tokens: int,
        micros: int,
        now: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[int, int, int, date] | None]: ...

    def submit_draw(
        self,
        lease: Reservation,
        held: tuple[int, int],
        spent: tuple[int, int],
        now: datetime,
        expires: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[bool, tuple[int, int, int, date] | None]]: ...


class _Store(Protocol):
    """The rare statements: refusals, new periods, alerts, the jobs, the summaries."""

    async def row(self, tenant_id: str) -> BudgetState | None: ...

    async def plan_of(self, tenant_id: str) -> str | None: ...

    async def prepare(self, tenant_id: str, period: date, now: datetime) -> None: ...

    async def claim_alert(self, tenant_id: str, threshold: int, period: date) -> bool: ...

    async def expired(self, at: datetime, limit: int) -> list[tuple[str, str, int, int]]: ...

    async def roll(self, period: date, now: datetime) -> int: ...

    async def totals(self, period: date) -> tuple[int, int, int, int, int]: ...


class Budget:
    """Reserve, settle, release, sweep, reset, summarise; alerts go to ``sink``.

    ``db`` is the bot's ``Database`` or, in ``byokbot proxy``, a ``core.rawdb`` database
    (no SQLAlchemy). Either way a file-backed SQLite or an asyncpg database is driven by its
    raw driver; only an in-memory SQLite goes through the ORM (``core.budget_orm``).
    """

    def __init__(
        self,
        db: Database | RawDatabase,
        plans: Mapping[str, PlanSettings],
        clock: Clock,
        *,
        sink: AlertSink | None = None,
        reservation_ttl: timedelta = timedelta(minutes=15),
        lease_requests: int = 0,
    ) -> None:
        self._plans = plans
        self._clock = clock
        self._sink = sink
        self._ttl = reservation_ttl
        # tenant -> (tokens used+reserved, micros used+reserved, minute, requests that minute)
        # as of this process's last reservation: a hint for ``likely_admits``, never a decision.
        self._hints: dict[str, tuple[int, int, int, int]] = {}
        # tenant -> (tokens, micros, count) of reservations this process has in flight.
        self._pending: dict[str, tuple[int, int, int]] = {}
        self._alerting: set[asyncio.Future[None]] = set()
        # tenant -> settlements queued by ``settle_soon`` and not yet committed: ``summary``
        # waits for them, so /usage right after a reply counts that reply.
        self._settling: dict[str, set[asyncio.Future[None]]] = {}
        raw = db.raw()
        self._fast: _Writer
        self._store: _Store
        self._leaser: _LeaseWriter | None = None
        if raw is None:
            from core.budget_orm import OrmStore

            orm = OrmStore(cast("Database", db))  # every RawDatabase is its own raw()
            self._fast, self._store = orm, orm
        else:
            self._store = _RawStore(raw)
            writer = _sqlite_writer(raw) if isinstance(raw, SQLiteRaw) else _PostgresWriter(raw)
            self._fast = writer
            if lease_requests >= _LEASE_MIN:
                self._leaser = writer
        # Leases (``lease_requests`` > 1, on the raw drivers): tenant -> its open lease; the
        # closed ones wait here until their requests have settled and the room is given back.
        self._lease_max = lease_requests
        self._leases: dict[str, _Lease] = {}
        self._closing: set[_Lease] = set()
        self._acquiring: set[str] = set()
        self._lease_timer: asyncio.Handle | None = None
        self._lease_due = 0.0
        self._ticking = False

    def caps(self, plan_id: str) -> Caps:
        plan = self._plans[plan_id]
        return Caps(tokens=plan.monthly_token_cap, usd=plan.monthly_usd_cap)

    def _plan(self, plan_id: str) -> PlanSettings:
        plan = self._plans.get(plan_id)
        if plan is None or (plan.monthly_token_cap is None and plan.monthly_usd_cap is None):
            raise NotMetered(plan_id)
        return plan

    # --- the request path -------------------------------------------------------------------

    async def reserve(
        self,
        tenant_id: str,
        plan_id: str,
        estimate: Cost,
        *,
        token_cap: int | None = None,
        alone: bool = False,
    ) -> Reservation:
        """Reserve ``estimate`` against the tenant's caps and count one request this minute.

        ``token_cap`` (a trial's smaller allowance) replaces the plan's monthly token cap when
        it is smaller, in the same atomic statement. ``alone``: no other reservation is
        likely in this turn of the loop, so there is nothing to wait for to commit together.
        Raises ``CapReached``, ``RateLimitExceeded`` or ``NotMetered``.
        """
        monthly = self._plan(plan_id)
        plan = _capped(monthly, token_cap)
        tokens, micros = _cost(estimate)
        lease = self._leases.get(tenant_id)
        if lease is not None:
            leased = self._from_lease(lease, plan, tokens, micros)
            if leased is not None:
                return leased
        # Counted before the first await, so ``likely_admits`` sees every reservation in flight.
        t, u, n = self._pending.get(tenant_id, (0, 0, 0))
        self._pending[tenant_id] = (t + tokens, u + micros, n + 1)
        try:
            return await self._reserve(
                tenant_id, plan, estimate, alert=plan is monthly, alone=alone
            )
        finally:
            t, u, n = self._pending[tenant_id]
            if n == 1:
                del self._pending[tenant_id]
            else:
                self._pending[tenant_id] = (t - tokens, u - micros, n - 1)

    async def _reserve(
        self,
        tenant_id: str,
        plan: PlanSettings,
        estimate: Cost,
        *,
        alert: bool = True,
        alone: bool = False,
    ) -> Reservation:
        waited = False
        for _ in range(4):
            now = self._clock.now()
            period, minute = period_of(now), int(now.timestamp() // 60)
            reservation = Reservation(_next_id(), tenant_id, *_cost(estimate))
            slots = self._lease_size(tenant_id, plan, reservation, minute)
            if slots:
                leased = await self._take_lease(
                    plan, reservation, slots, period, minute, now, alone=alone
                )
                if leased is not None:
                    return leased
            got = await self._fast.reserve(
                plan, reservation, period, minute, now, self._ttl, alone=alone
            )
            if got is not None:
                self._hints[tenant_id] = (got[0], got[1], minute, got[2])
                return reservation
            lease = self._leases.get(tenant_id)
            if lease is not None:
                # This process's own lease may hold the room this request needs: give it back.
                self._close(lease)
            if not waited and self._settling.get(tenant_id):
                # The tenant's last reply is still settling here: its reservation, sized for
                # the worst case, holds room the reply did not use. Judge on the settled figures.
                waited = True
                await self.settled(tenant_id)
                continue
            row = await self._store.row(tenant_id)
            if row is None or row.period_start < period:
                await self._store.prepare(tenant_id, period, now)
                continue
            # The row exists and is current: the refusal is real unless room appeared since.
            await self._refuse(row, plan, estimate, period, minute, now, alert=alert)
        raise BudgetError(f"tenant {tenant_id}: reservation did not settle after retries")

    def likely_admits(
        self, tenant_id: str, plan_id: str, estimate: Cost, *, token_cap: int | None = None
    ) -> bool:
        """Whether this process last saw ample room (4x the estimate, 2 requests this minute).

        Counts what this process has in flight on top of the last reservation's figures.

        Only a hint: the proxy uses it to start the upstream call while the reservation is
        being made. The reservation still decides; if it refuses, the upstream call is dropped
        before a byte reaches the client.
        """
        hint, plan = self._hints.get(tenant_id), self._plans.get(plan_id)
        if hint is None or plan is None or plan.byok:
            return False
        plan = _capped(plan, token_cap)
        used_t, used_u, minute, requests = hint
        pending_t, pending_u, pending_n = self._pending.get(tenant_id, (0, 0, 0))
        used_t, used_u, requests = used_t + pending_t, used_u + pending_u, requests + pending_n
        if minute == int(self._clock.now().timestamp() // 60) and (
            requests + 2 > plan.requests_per_minute
        ):
            return False
        if plan.monthly_token_cap is not None and (
            used_t + 4 * estimate.tokens > plan.monthly_token_cap
        ):
            return False
        return plan.monthly_usd_cap is None or (
            used_u + 4 * estimate.usd_micros <= _micros(plan.monthly_usd_cap)
        )

    async def _refuse(
        self,
        row: BudgetState,
        plan: PlanSettings,
        estimate: Cost,
        period: date,
        minute: int,
        now: datetime,
        *,
        alert: bool = True,
    ) -> None:
        tenant_id = row.tenant_id
        if row.window_minute == minute and row.window_requests >= plan.requests_per_minute:
            raise RateLimitExceeded(tenant_id, retry_after=float(60 - now.second))
        which = "usd"
        if plan.monthly_token_cap is not None and (
            row.tokens_spent + row.tokens_reserved + estimate.tokens > plan.monthly_token_cap
        ):
            which = "tokens"
        elif plan.monthly_usd_cap is None:
            return  # raced with a settle that freed room: retry
        elif row.usd_micros_spent + row.usd_micros_reserved + estimate.usd_micros <= _micros(
            plan.monthly_usd_cap
        ):
            return
        # Nothing fits any more: the tenant has, in effect, reached the cap. A trial's cap is
        # not the month's allowance: the bot words that refusal, and the month's 100% alert
        # stays unclaimed for after the trial is paid for.
        if alert:
            await self._maybe_alert(
                tenant_id, plan, 100, row.tokens_spent, row.usd_micros_spent, period
            )
        raise CapReached(tenant_id, which, next_period(period))

    async def settle(self, reservation: Reservation, actual: Cost, *, plan_id: str) -> None:
        """Replace the reservation by the real usage; fires any threshold alert it crosses."""
        if reservation.lease is not None:
            await self._settle_leased(reservation, reservation.lease, actual, now=True)
            return
        tokens, micros = _cost(actual)
        row = await self._fast.settle(reservation, tokens, micros, self._clock.now())
        alert = self._crossed(row, tokens, micros, plan_id)
        if alert is not None:
            await self._maybe_alert(reservation.tenant_id, *alert)

    def settle_soon(
        self, reservation: Reservation, actual: Cost, *, plan_id: str
    ) -> asyncio.Future[None]:
        """``settle`` in the background: a future done once the settlement committed.

        On SQLite the settle joins the writer's next group commit directly, with no task of
        its own per request (the proxy settles every request this way); an alert it crosses
        is claimed in a task then (``drain`` waits for those). Elsewhere it is ``settle`` in a
        task.
        """
        if reservation.lease is not None:
            # Done at once: the lease holds the usage until its next write (within
            # ``_LEASE_COMMIT``), which retries a failure; ``summary`` closes the lease first.
            return self._settle_leased(reservation, reservation.lease, actual)
        if not isinstance(self._fast, _SQLiteWriter):
            return self._track(
                reservation.tenant_id,
                asyncio.ensure_future(self.settle(reservation, actual, plan_id=plan_id)),
            )
        tokens, micros = _cost(actual)
        queued = self._fast.submit_settle(reservation, tokens, micros, self._clock.now())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settled(f: asyncio.Future[tuple[int, int, int, date] | None]) -> None:
            if f.cancelled():
                done.cancel()
                return
            error = f.exception()
            if error is not None:
                done.set_exception(error)
                return
            self._alert_soon(reservation.tenant_id, f.result(), tokens, micros, plan_id)
            done.set_result(None)

        queued.add_done_callback(settled)
        return self._track(reservation.tenant_id, done)

    def _alert_soon(
        self,
        tenant_id: str,
        row: tuple[int, int, int, date] | None,
        tokens: int,
        micros: int,
        plan_id: str,
    ) -> None:
        """Claim the alert a committed settlement crosses, in a task (``drain`` waits)."""
        alert = self._crossed(row, tokens, micros, plan_id)
        if alert is not None:
            task = asyncio.ensure_future(self._maybe_alert(tenant_id, *alert))
            self._alerting.add(task)
            task.add_done_callback(self._alert_done)

    def _track(self, tenant_id: str, settling: asyncio.Future[None]) -> asyncio.Future[None]:
        waiting = self._settling.setdefault(tenant_id, set())
        waiting.add(settling)

        def done(f: asyncio.Future[None]) -> None:
            waiting.discard(f)
            if not waiting and self._settling.get(tenant_id) is waiting:
                del self._settling[tenant_id]

        settling.add_done_callback(done)
        return settling

    async def settled(self, tenant_id: str, within: float = 2.0) -> None:
        """Wait (at most ``within`` seconds) for this tenant's queued settlements."""
        waiting = self._settling.get(tenant_id)
        if waiting:
            await asyncio.wait(set(waiting), timeout=within)

    def _alert_done(self, task: asyncio.Future[None]) -> None:
        self._alerting.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("claiming a usage alert failed (%s)", type(error).__name__)

    def close_leases(self) -> None:
        """Admit nothing more from leases; what they hold is committed and given back now."""
        for lease in list(self._leases.values()):
            self._close(lease)

    async def drain(self) -> None:
        """Give every lease back; wait for the alerts background settlements started."""
        self.close_leases()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_SECONDS
        while self._closing and loop.time() < deadline:
            self._arm(0.0)
            await asyncio.sleep(_LEASE_TICK / 5)
        if self._closing:
            log.warning(
                "%d budget lease(s) not given back at stop; the sweeper releases them",
                len(self._closing),
            )
        while self._alerting:
            await asyncio.gather(*self._alerting, return_exceptions=True)

    def _crossed(
        self, row: tuple[int, int, int, date] | None, tokens: int, micros: int, plan_id: str
    ) -> tuple[PlanSettings, int, int, int, date] | None:
        """The threshold alert a settlement's result newly crosses, if any."""
        if row is None or (tokens == 0 and micros == 0):
            return None
        plan = self._plans.get(plan_id)
        if plan is None:
            return None
        spent_t, spent_u, alerted, period = row
        pct = _percent(spent_t, spent_u, plan.monthly_token_cap, plan.monthly_usd_cap)
        crossed = max((t for t in THRESHOLDS if pct >= t), default=0)
        if crossed <= alerted:
            return None
        return plan, crossed, spent_t, spent_u, period

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back untouched (the upstream call never happened or used nothing)."""
        if reservation.lease is not None:
            await self._settle_leased(reservation, reservation.lease, Cost(0, 0), now=True)
            return
        await self._fast.settle(reservation, 0, 0, self._clock.now())

    async def _maybe_alert(
        self,
        tenant_id: str,
        plan: PlanSettings,
        threshold: int,
        tokens: int,
        micros: int,
        period: date,
    ) -> None:
        if not await self._store.claim_alert(tenant_id, threshold, period) or self._sink is None:
            return
        spent = Spend(tokens, micros / MICROS, period, next_period(period))
        caps = Caps(plan.monthly_token_cap, plan.monthly_usd_cap)
        try:
            await self._sink.alert(tenant_id, threshold, spent, caps)
        except Exception as exc:  # noqa: BLE001 - a failed DM must not fail the metered request
            log.warning(
                "usage alert %s%% for tenant %s not delivered (%s)",
                threshold,
                tenant_id,
                type(exc).__name__,
            )

    # --- leases -----------------------------------------------------------------------------

    def _lease_writer(self) -> _LeaseWriter:
        if self._leaser is None:
            raise BudgetError("budget leases are off")  # only a lease's own paths come here
        return self._leaser

    def _from_lease(
        self, lease: _Lease, plan: PlanSettings, tokens: int, micros: int
    ) -> Reservation | None:
        """Admit a request from the tenant's lease, or close the lease if it cannot."""
        now = self._clock.now()
        if (
            lease.minute != int(now.timestamp() // 60)
            or lease.terms != _terms(plan)
            or lease.period != period_of(now)
            or not lease.admits(tokens, micros)
        ):
            self._close(lease)
            return None
        lease.slots -= 1
        lease.busy_t += tokens
        lease.busy_u += micros
        lease.busy_n += 1
        lease.used_at = asyncio.get_running_loop().time()
        return Reservation(_next_id(), lease.tenant_id, tokens, micros, lease)

    def _lease_size(
        self, tenant_id: str, plan: PlanSettings, request: Reservation, minute: int
    ) -> int:
        """How many requests like this one a new lease should cover (0: reserve it alone).

        Judged on this process's last reservation for the tenant (none yet: no lease), so a
        lease takes at most 1/8 of the room and of the minute's requests left then; near a
        cap or the rate limit every request is reserved on its own.
        """
        if self._leaser is None or tenant_id in self._acquiring:
            return 0
        hint = self._hints.get(tenant_id)
        if hint is None:
            return 0
        used_t, used_u, hint_minute, requests = hint
        pending_t, pending_u, pending_n = self._pending.get(tenant_id, (0, 0, 0))
        requests = (requests if hint_minute == minute else 0) + pending_n
        n = min(self._lease_max, (plan.requests_per_minute - requests) // _LEASE_SHARE)
        if plan.monthly_token_cap is not None and request.tokens:
            room = plan.monthly_token_cap - used_t - pending_t
            n = min(n, room // (_LEASE_SHARE * request.tokens))
        if plan.monthly_usd_cap is not None and request.usd_micros:
            room = _micros(plan.monthly_usd_cap) - used_u - pending_u
            n = min(n, room // (_LEASE_SHARE * request.usd_micros))
        return n if n >= _LEASE_MIN else 0

    async def _take_lease(
        self,
        plan: PlanSettings,
        request: Reservation,
        slots: int,
        period: date,
        minute: int,
        now: datetime,
        *,
        alone: bool = False,
    ) -> Reservation | None:
        """Reserve room for ``slots`` requests like ``request`` in one row; admit it from there."""
        leaser = self._lease_writer()
        tenant_id = request.tenant_id
        row = Reservation(_next_id(), tenant_id, request.tokens * slots, request.usd_micros * slots)
        self._acquiring.add(tenant_id)
        try:
            got = await leaser.reserve(
                plan, row, period, minute, now, self._ttl, alone=alone, slots=slots
            )
        finally:
            self._acquiring.discard(tenant_id)
        if got is None:
            return None  # no room for that many: this request alone decides
        self._hints[tenant_id] = (got[0], got[1], minute, got[2])
        lease = _Lease(
            id=row.id,
            tenant_id=tenant_id,
            plan_id=plan.id,
            terms=_terms(plan),
            period=period,
            minute=minute,
            tokens=row.tokens,
            micros=row.usd_micros,
            slots=slots - 1,
            expires=now + self._ttl,
            used_at=asyncio.get_running_loop().time(),
            busy_t=request.tokens,
            busy_u=request.usd_micros,
            busy_n=1,
        )
        old = self._leases.get(tenant_id)
        if old is not None:
            self._close(old)
        self._leases[tenant_id] = lease
        self._arm()
        return dataclasses.replace(request, lease=lease)

    def _settle_leased(
        self, r: Reservation, lease: _Lease, actual: Cost, *, now: bool = False
    ) -> asyncio.Future[None]:
        """Count a leased request's usage in its lease, committed within ``_LEASE_COMMIT``.

        ``now``: the future is done once the lease's write (due at once) committed it; else
        it is done already.
        """
        tokens, micros = _cost(actual)
        lease.busy_t -= r.tokens
        lease.busy_u -= r.usd_micros
        lease.busy_n -= 1
        loop = asyncio.get_running_loop()
        lease.used_at = loop.time()  # idle is counted from the last request's end
        if not lease.unsaved:
            lease.spent_at = loop.time()
        lease.unsaved += 1
        lease.spent_t += tokens
        lease.spent_u += micros
        done: asyncio.Future[None] = loop.create_future()
        if now:
            lease.spent_at = -math.inf
            lease.waiting.append(done)
            self._arm(0.0)
        else:
            done.set_result(None)
            self._arm()
        return done

    def _close(self, lease: _Lease) -> None:
        """Admit nothing more from ``lease``; its free room goes back at once (``_lease_tick``)."""
        if lease.closed:
            return
        lease.closed = True
        if self._leases.get(lease.tenant_id) is lease:
            del self._leases[lease.tenant_id]
        self._closing.add(lease)
        lease.released = asyncio.get_running_loop().create_future()
        self._track(lease.tenant_id, lease.released)
        self._arm(0.0)

    def _arm(self, delay: float = _LEASE_TICK) -> None:
        """Run ``_lease_tick`` within ``delay`` seconds."""
        if self._ticking:
            return  # the tick running now sees the change, and arms the next one
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._lease_timer is not None:
            if due >= self._lease_due:
                return
            self._lease_timer.cancel()
        self._lease_due = due
        self._lease_timer = loop.call_at(due, self._lease_tick)

    def _lease_tick(self) -> None:
        """Commit what leases' requests used, renew them, give back the closed and idle ones."""
        self._lease_timer = None
        self._ticking = True
        try:
            self._tick_leases()
        finally:
            self._ticking = False
        if self._leases or self._closing:
            self._arm()

    def _tick_leases(self) -> None:
        now = self._clock.now()
        at = asyncio.get_running_loop().time()
        idle_since, due_since = at - _LEASE_IDLE, at - _LEASE_COMMIT
        minute = int(now.timestamp() // 60)
        for lease in list(self._leases.values()):
            if lease.minute != minute or (not lease.busy_n and lease.used_at <= idle_since):
                self._close(lease)
        for lease in (*self._leases.values(), *self._closing):
            if lease.writing:
                continue
            if lease.closed and not lease.busy_n:
                self._give_back(lease, now)
            elif (
                (lease.unsaved and (lease.spent_at <= due_since or lease.closed))
                or (lease.closed and lease.released is not None and not lease.released.done())
                or lease.expires - now < self._ttl / 2
            ):
                self._draw(lease, now)

    def _draw(self, lease: _Lease, now: datetime) -> None:
        """Commit a lease's settled usage (a closed one also gives its free room back)."""
        leaser = self._lease_writer()
        free_t, free_u = lease.tokens - lease.busy_t, lease.micros - lease.busy_u
        if lease.closed:
            held = (max(0, free_t), max(0, free_u))
        else:  # an overrun beyond the estimate is spent, but releases no more than was held
            held = (max(0, min(lease.spent_t, free_t)), max(0, min(lease.spent_u, free_u)))
        spent, back = (lease.spent_t, lease.spent_u), lease.slots if lease.closed else 0
        waiting, lease.waiting, unsaved = lease.waiting, [], lease.unsaved
        expires = now + self._ttl
        lease.writing = True
        row = Reservation(lease.id, lease.tenant_id, lease.tokens, lease.micros)
        drawn = leaser.submit_draw(row, held, spent, now, expires, back=back, minute=lease.minute)

        def committed(f: asyncio.Future[tuple[bool, tuple[int, int, int, date] | None]]) -> None:
            lease.writing = False
            error = asyncio.CancelledError() if f.cancelled() else f.exception()
            if error is not None:
                # Still counted in the lease: the next tick commits it again.
                log.warning("committing a budget lease failed (%s)", type(error).__name__)
                _fail(waiting, error)
                return
            kept, result = f.result()
            lease.spent_t -= spent[0]
            lease.spent_u -= spent[1]
            lease.unsaved -= unsaved
            if lease.unsaved:
                lease.spent_at = asyncio.get_running_loop().time()
            lease.slots -= back
            if kept:
                lease.tokens -= held[0]
                lease.micros -= held[1]
                lease.expires = expires
            else:  # swept (it outlived its ttl): nothing is reserved for it any more
                lease.tokens = lease.micros = 0
                self._close(lease)
            if lease.closed and lease.released is not None and not lease.released.done():
                lease.released.set_result(None)
            self._alert_soon(lease.tenant_id, result, *spent, lease.plan_id)
            _succeed(waiting)

        drawn.add_done_callback(committed)

    def _give_back(self, lease: _Lease, now: datetime) -> None:
        """The last write of a closed lease with nothing in flight: delete its row."""
        leaser = self._lease_writer()
        spent, waiting, lease.waiting = (lease.spent_t, lease.spent_u), lease.waiting, []
        lease.writing = True
        row = Reservation(lease.id, lease.tenant_id, lease.tokens, lease.micros)
        settled = leaser.submit_settle(row, *spent, now, back=lease.slots, minute=lease.minute)

        def committed(f: asyncio.Future[tuple[int, int, int, date] | None]) -> None:
            lease.writing = False
            error = asyncio.CancelledError() if f.cancelled() else f.exception()
            if error is not None:
                log.warning("giving a budget lease back failed (%s)", type(error).__name__)
                _fail(waiting, error)
                return
            self._closing.discard(lease)
            lease.spent_t = lease.spent_u = lease.slots = lease.unsaved = 0
            if lease.released is not None and not lease.released.done():
                lease.released.set_result(None)
            self._alert_soon(lease.tenant_id, f.result(), *spent, lease.plan_id)
            _succeed(waiting)

        settled.add_done_callback(committed)

    # --- jobs -------------------------------------------------------------------------------

    async def sweep_orphans(self, now: datetime | None = None) -> int:
        """Release reservations past their expiry (their process died); returns how many.

        A release is a settle of nothing: whoever deletes the row gives the amount back, so a
        late settle of the same reservation cannot give it back twice. They go together, so
        on SQLite they share one commit.
        """
        at = now or self._clock.now()
        rows = await self._store.expired(at, 5000)
        done = await asyncio.gather(
            *(self._fast.settle(Reservation(*row), 0, 0, at) for row in rows)
        )
        released = sum(1 for d in done if d is not None)
        if released:
            log.info("released %d orphaned budget reservation(s)", released)
        return released

    async def reset_month(self, now: datetime | None = None) -> int:
        """The monthly job: every budget from an older month starts the new one at zero."""
        at = now or self._clock.now()
        return await self._store.roll(period_of(at), at)

    # --- reading ----------------------------------------------------------------------------

    async def summary(self, tenant_id: str, plan_id: str | None = None) -> BudgetSummary:
        """Spend this period against the plan's caps (zeros before the first request).

        ``plan_id`` defaults to the tenant's current plan.
        """
        lease = self._leases.get(tenant_id)
        if lease is not None and not lease.busy_n:
            self._close(lease)  # so the figures hold no room only a lease was holding
        await self.settled(tenant_id)
        period = period_of(self._clock.now())
        row = await self._store.row(tenant_id)
        if plan_id is None:
            plan_id = await self._store.plan_of(tenant_id)
        plan_id = plan_id or ""
        caps = self.caps(plan_id) if plan_id in self._plans else Caps(None, None)
        tokens = micros = reserved_t = reserved_u = 0
        if row is not None:
            reserved_t, reserved_u = row.tokens_reserved, row.usd_micros_reserved
            if row.period_start == period:
                tokens, micros = row.tokens_spent, row.usd_micros_spent
        return BudgetSummary(
            tenant_id=tenant_id,
            spent=Spend(tokens, micros / MICROS, period, next_period(period)),
            caps=caps,
            tokens_reserved=reserved_t,
            usd_reserved=reserved_u / MICROS,
        )

    async def totals(self) -> BudgetTotals:
        """This period's spend across every metered tenant, for ``admin stats``."""
        period = period_of(self._clock.now())
        n, tokens, micros, reserved, open_count = await self._store.totals(period)
        return BudgetTotals(
            period_start=period,
            tenants=n,
            tokens=tokens,
            usd=micros / MICROS,
            tokens_reserved=reserved,
            open_reservations=open_count,
        )


def _terms(plan: PlanSettings) -> tuple[int | None, int | None, int]:
    cap = plan.monthly_usd_cap
    return plan.monthly_token_cap, None if cap is None else _micros(cap), plan.requests_per_minute


def _succeed(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


def _fail(futures: list[asyncio.Future[None]], error: BaseException) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(error)


def _cost(c: Cost) -> tuple[int, int]:
    return max(0, int(c.tokens)), max(0, int(c.usd_micros))


# --- the rare statements, on the raw drivers ----------------------------------------------------
#
# One text for both databases ($n; SQLite reads it as ?n). Dates and times are passed as
# objects (core.rawdb turns them into SQLite's text); no date function runs in SQL.

_ROW_SQL: Final = """
SELECT tenant_id, period_start, tokens_spent, usd_micros_spent, tokens_reserved,
       usd_micros_reserved, window_minute, window_requests
FROM budgets WHERE tenant_id = $1
"""
_PLAN_SQL: Final = "SELECT plan FROM tenants WHERE id = $1"
_CREATE_SQL: Final = """
INSERT INTO budgets (tenant_id, period_start, tokens_spent, usd_micros_spent, tokens_reserved,
                     usd_micros_reserved, alerted_pct, window_minute, window_requests, updated_at)
VALUES ($1, $2, 0, 0, 0, 0, 0, 0, 0, $3)
ON CONFLICT (tenant_id) DO NOTHING
"""
# Reservations in flight stay reserved; they settle into the new period.
_ROLL_SQL: Final = """
UPDATE budgets SET period_start = $1, tokens_spent = 0, usd_micros_spent = 0, alerted_pct = 0,
                   updated_at = $2
WHERE period_start < $1
"""
_ROLL_ONE_SQL: Final = _ROLL_SQL + " AND tenant_id = $3"
_CLAIM_ALERT_SQL: Final = """
UPDATE budgets SET alerted_pct = $2
WHERE tenant_id = $1 AND alerted_pct < $2 AND period_start = $3
"""
_EXPIRED_SQL: Final = """
SELECT id, tenant_id, tokens, usd_micros FROM budget_reservations
WHERE expires_at < $1 LIMIT $2
"""
_TOTALS_SQL: Final = """
SELECT count(*), COALESCE(SUM(tokens_spent), 0), COALESCE(SUM(usd_micros_spent), 0),
       COALESCE(SUM(tokens_reserved), 0)
FROM budgets WHERE period_start = $1
"""
_OPEN_SQL: Final = "SELECT count(*) FROM budget_reservations"


class _RawStore:
    def __init__(self, db: RawDatabase) -> None:
        self._db = db

    async def row(self, tenant_id: str) -> BudgetState | None:
        got = await self._db.fetchrow(_ROW_SQL, tenant_id)
        if got is None:
            return None
        return BudgetState(str(got[0]), as_date(got[1]), *(int(v) for v in got[2:]))

    async def plan_of(self, tenant_id: str) -> str | None:
        got = await self._db.fetchrow(_PLAN_SQL, tenant_id)
        return None if got is None else str(got[0])

    async def prepare(self, tenant_id: str, period: date, now: datetime) -> None:
        """Create a missing row, or roll a stale one into the current period."""
        async with self._db.transaction() as tx:
            if not await tx.execute(_CREATE_SQL, tenant_id, period, now):
                await tx.execute(_ROLL_ONE_SQL, period, now, tenant_id)

    async def claim_alert(self, tenant_id: str, threshold: int, period: date) -> bool:
        return bool(await self._db.execute(_CLAIM_ALERT_SQL, tenant_id, threshold, period))

    async def expired(self, at: datetime, limit: int) -> list[tuple[str, str, int, int]]:
        rows = await self._db.fetch(_EXPIRED_SQL, at, limit)
        return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]

    async def roll(self, period: date, now: datetime) -> int:
        return await self._db.execute(_ROLL_SQL, period, now)

    async def totals(self, period: date) -> tuple[int, int, int, int, int]:
        got = await self._db.fetchrow(_TOTALS_SQL, period)
        n, tokens, micros, reserved = (int(v) for v in got or (0, 0, 0, 0))
        opened = await self._db.fetchrow(_OPEN_SQL)
        return n, tokens, micros, reserved, int(opened[0]) if opened else 0


# --- SQLite: the request path on one plain sqlite3 connection -----------------------------------
#
# Through SQLAlchemy's async layer and aiosqlite, each statement is a thread hop and a trip
# through the event loop: a reserve costs ~2 ms, against ~15 us for the same transaction in
# sqlite3. So on SQLite, reserve and settle run as whole ``BEGIN IMMEDIATE … COMMIT``
# transactions on a plain connection of their own, on the event loop's thread unless the
# database is busy (see ``_SQLiteWriter``). Rare paths (refusals, alerts, jobs) stay on
# SQLAlchemy.


def _ts(at: datetime) -> str:
    """``at`` as SQLAlchemy stores it on SQLite (``TS_FORMAT``); isoformat is 3x strftime."""
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


_CHECKPOINT_EVERY: Final = 500  # inline commits; a few pages each, so a WAL of a few MB at most
_WAL_SIZE_LIMIT: Final = 16 * 2**20  # bytes a started-again log is cut back to
_WAL_HOLD_BYTES: Final = 8 * 2**20  # a log this long: commits wait for the next checkpoint
_SETTLE_DELAY: Final = 0.005  # seconds a settle may wait to share a commit
_BUSY_RETRY: Final = 0.001  # up to this long (random) between tries while another process writes
_BUSY_SPIN_SECONDS: Final = 2.0  # then the batch waits on the worker thread (busy_timeout)


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` in one ``BEGIN IMMEDIATE … COMMIT``; rolled back if anything in it fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


_RESERVE_SQL: Final = """
UPDATE budgets SET
  tokens_reserved = tokens_reserved + :t,
  usd_micros_reserved = usd_micros_reserved + :u,
  window_requests = CASE WHEN window_minute = :minute THEN window_requests + :n ELSE :n END,
  window_minute = :minute,
  updated_at = :now
WHERE tenant_id = :tenant AND period_start = :period AND :n <= :rpm
  AND (window_minute != :minute OR window_requests + :n <= :rpm)
  AND (:tcap IS NULL OR tokens_spent + tokens_reserved + :t <= :tcap)
  AND (:ucap IS NULL OR usd_micros_spent + usd_micros_reserved + :u <= :ucap)
RETURNING tokens_spent + tokens_reserved, usd_micros_spent + usd_micros_reserved, window_requests
"""

_INSERT_RESERVATION_SQL: Final = """
INSERT INTO budget_reservations (id, tenant_id, tokens, usd_micros, created_at, expires_at)
VALUES (:id, :tenant, :t, :u, :now, :expires)
"""

_SETTLE_SQL: Final = """
UPDATE budgets SET
  tokens_reserved = tokens_reserved - :ht,
  usd_micros_reserved = usd_micros_reserved - :hu,
  tokens_spent = tokens_spent + :t,
  usd_micros_spent = usd_micros_spent + :u,
  window_requests = CASE WHEN window_minute = :wm AND window_requests >= :back
                         THEN window_requests - :back ELSE window_requests END,
  updated_at = :now
WHERE tenant_id = :tenant
RETURNING tokens_spent, usd_micros_spent, alerted_pct, period_start
"""

# A lease hands settled usage over: its row holds that much less, and it is spent.
_DRAW_SQL: Final = """
UPDATE budget_reservations SET tokens = tokens - :ht, usd_micros = usd_micros - :hu,
                               expires_at = :expires
WHERE id = :id
"""


def _batch(conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Group commit: each ``fn`` in one transaction, in order; results or exceptions.

    Each keeps its own conditional statements, run one after another under the one write
    lock, so a cap is checked against every reservation before it exactly as with separate
    transactions; one failing ``fn`` is rolled back alone. A busy database aborts them all.

    They run first as one plain transaction (no savepoint: two statements fewer per commit);
    if one fails, that is rolled back and they run again with a savepoint each.
    """
    try:
        return _transaction(conn, lambda c: [fn(c) for fn in fns])
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise
        failed: Exception = exc
    except Exception as exc:  # noqa: BLE001 - found again below and handed to its caller
        failed = exc
    if len(fns) == 1:
        return [_Failed(failed)]
    return _transaction(conn, lambda c: _each(c, fns))


def _each(conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    out: list[Any] = []
    for fn in fns:
        conn.execute("SAVEPOINT op")
        try:
            out.append(fn(conn))
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise
            conn.execute("ROLLBACK TO op")
            out.append(_Failed(exc))
        except Exception as exc:  # noqa: BLE001 - handed to that op's caller, not swallowed
            conn.execute("ROLLBACK TO op")
            out.append(_Failed(exc))
        conn.execute("RELEASE op")
    return out


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes: low byte
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _SQLiteWriter:
    """The request path's transactions on SQLite: on the event loop's thread, never waiting.

    Group commit: the reserves and settles asked for in one turn of the event loop run in one
    transaction (``_batch``), so a busy proxy pays one BEGIN/COMMIT (and one WAL write of the
    budget pages) per batch, not two per request. A settle is not urgent (its reservation
    keeps holding the room meanwhile, the safe side), so settles wait up to
    ``_SETTLE_DELAY`` for company, or leave with the next reserve.

    A reserve or settle transaction takes ~25 us, while a hop to a worker thread and back
    costs ~130 us of CPU on a small VM (measured), twice per request. So they run inline, on a
    connection that never waits for a lock (``busy_timeout`` 0): when another writer holds the
    database, the transaction is rolled back and runs again on the worker thread's own
    connection, which waits there (``busy_timeout``) as before. The inline connection does not
    checkpoint the WAL on commit (that is file I/O and an fsync, milliseconds on the loop);
    the worker thread runs a passive checkpoint every ``_CHECKPOINT_EVERY`` inline commits;
    once the log has grown past ``_WAL_HOLD_BYTES`` the commits queued meanwhile wait for it,
    so it catches up and the log starts again.
    """

    def __init__(self, path: str, pool: ThreadPoolExecutor) -> None:
        self._path = path
        self._pool = pool  # the database's worker thread (``core.rawdb.SQLiteRaw``)
        self._conn: sqlite3.Connection | None = None
        self._inline_conn: sqlite3.Connection | None = None
        self._commits = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self._holding = False  # commits wait for the checkpoint running (the log has grown)
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flushing = False  # a flush is due on the next turn of the loop
        self._later: asyncio.TimerHandle | None = None  # or after _SETTLE_DELAY
        self._busy_since: float | None = None  # loop time the database was first found busy

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open(busy_timeout_ms=10000)
        return self._conn

    def _inline(self) -> sqlite3.Connection:
        if self._inline_conn is None:
            conn = self._open(busy_timeout_ms=0)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # A log that grew (a burst, an old version) shrinks back when started again.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT:d}")
            self._inline_conn = conn
        return self._inline_conn

    def _open(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def close(self) -> None:
        for conn in (self._conn, self._inline_conn):
            if conn is not None:
                conn.close()
        self._conn = self._inline_conn = None

    def _submit(
        self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = True, alone: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``fn`` for the next group commit; its future is done once it committed.

        ``alone``: the caller expects no company in this turn of the loop (the proxy's only
        request in flight), so when nothing else urgent is queued the commit runs now, with any
        settles waiting: two turns of the loop fewer before the caller goes on.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        if urgent:
            if alone and not self._flushing:
                self._flush()
            elif not self._flushing:
                self._flushing = True
                loop.call_soon(self._flush)
        elif not self._flushing and self._later is None:
            self._later = loop.call_later(_SETTLE_DELAY, self._flush)
        return future

    def _flush(self) -> None:
        self._flushing = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._checkpointing is not None and self._holding:
            # The log has grown: commits wait for this checkpoint (a few ms). One that runs
            # beside a steady stream of commits never catches up, so the log is never
            # started again and grows by megabytes a second. ``_checkpointed`` flushes them.
            return
        # A caller cancelled while queued (its request was dropped) is not run at all.
        batch, self._queue = [op for op in self._queue if not op[1].done()], []
        if not batch:
            return
        fns = [fn for fn, _ in batch]
        futures = [f for _, f in batch]
        loop = asyncio.get_running_loop()
        try:
            results = _batch(self._inline(), fns)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                _deliver(futures, [_Failed(exc)] * len(futures))
                return
            # Another writer (another --workers process) holds the database, for a batch's
            # ~0.1 ms as a rule: try again very soon, on this loop, rather than in SQLite's
            # busy handler, which sleeps 1, 2, 5, 10 … ms. Only a long hold goes to the thread.
            now = loop.time()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < _BUSY_SPIN_SECONDS:
                self._queue = batch + self._queue
                if self._later is None and not self._flushing:
                    self._later = loop.call_later(_BUSY_RETRY * random.random(), self._flush)  # noqa: S311 - jitter
                return
            self._busy_since = None
            # Held for long: wait for it on the worker thread, not here.
            waited = asyncio.get_running_loop().run_in_executor(
                self._pool, _batch, self._connection(), fns
            )

            def landed(done: asyncio.Future[list[Any]]) -> None:
                if done.cancelled():
                    _deliver(futures, [_Failed(asyncio.CancelledError())] * len(futures))
                    return
                error = done.exception()
                _deliver(futures, [_Failed(error)] * len(futures) if error else done.result())

            waited.add_done_callback(landed)
            return
        except Exception as exc:  # noqa: BLE001 - every caller gets the error
            _deliver(futures, [_Failed(exc)] * len(futures))
            return
        self._busy_since = None
        _deliver(futures, results)
        self._commits += 1
        if self._commits >= _CHECKPOINT_EVERY and self._checkpointing is None:
            self._commits = 0
            self._holding = self._wal_bytes() > _WAL_HOLD_BYTES
            self._checkpointing = asyncio.get_running_loop().run_in_executor(
                self._pool, self._checkpoint
            )
            self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpoint(self) -> None:
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self._path + "-wal").st_size
        except OSError:
            return 0

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if self._queue and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            # The next checkpoint (or another connection's) catches up; nothing is lost.
            log.warning("budget WAL checkpoint failed (%s)", type(exc).__name__)

    async def reserve(
        self,
        plan: PlanSettings,
        r: Reservation,
        period: date,
        minute: int,
        now: datetime,
        ttl: timedelta,
        *,
        alone: bool = False,
        slots: int = 1,
    ) -> tuple[int, int, int] | None:
        args = {
            "n": slots,
            "t": r.tokens,
            "u": r.usd_micros,
            "minute": minute,
            "now": _ts(now),
            "tenant": r.tenant_id,
            "period": period.isoformat(),
            "rpm": plan.requests_per_minute,
            "tcap": plan.monthly_token_cap,
            "ucap": None if plan.monthly_usd_cap is None else _micros(plan.monthly_usd_cap),
        }

        def work(conn: sqlite3.Connection) -> tuple[int, int, int] | None:
            rows = conn.execute(_RESERVE_SQL, args).fetchall()
            if not rows:
                return None
            conn.execute(
                _INSERT_RESERVATION_SQL,
                {
                    "id": r.id,
                    "tenant": r.tenant_id,
                    "t": r.tokens,
                    "u": r.usd_micros,
                    "now": args["now"],
                    "expires": _ts(now + ttl),
                },
            )
            used_t, used_u, requests = rows[0]
            return int(used_t), int(used_u), int(requests)

        return await self._submit(work, alone=alone)

    async def settle(
        self,
        r: Reservation,
        tokens: int,
        micros: int,
        now: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> tuple[int, int, int, date] | None:
        return await self.submit_settle(r, tokens, micros, now, back=back, minute=minute)

    def submit_settle(
        self,
        r: Reservation,
        tokens: int,
        micros: int,
        now: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[int, int, int, date] | None]:
        def work(conn: sqlite3.Connection) -> tuple[int, int, int, date] | None:
            gone = conn.execute("DELETE FROM budget_reservations WHERE id = ?", (r.id,)).rowcount
            if not gone and tokens == 0 and micros == 0 and not back:
                return None  # already released by the sweeper: nothing to do
            return _settled(
                conn,
                r.tenant_id,
                r.tokens if gone else 0,
                r.usd_micros if gone else 0,
                tokens,
                micros,
                now,
                back,
                minute,
            )

        return self._submit(work, urgent=False)

    def submit_draw(
        self,
        lease: Reservation,
        held: tuple[int, int],
        spent: tuple[int, int],
        now: datetime,
        expires: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[bool, tuple[int, int, int, date] | None]]:
        """A lease gives ``held`` of its row back and spends ``spent``; False: it was swept."""

        def work(conn: sqlite3.Connection) -> tuple[bool, tuple[int, int, int, date] | None]:
            ht, hu = held
            kept = conn.execute(
                _DRAW_SQL, {"ht": ht, "hu": hu, "expires": _ts(expires), "id": lease.id}
            ).rowcount
            if not kept:
                ht = hu = 0  # the sweeper gave the whole row back already
            if not (ht or hu or spent[0] or spent[1] or back):
                return bool(kept), None
            row = _settled(conn, lease.tenant_id, ht, hu, *spent, now, back, minute)
            return bool(kept), row

        return self._submit(work)


def _settled(
    conn: sqlite3.Connection,
    tenant_id: str,
    held_t: int,
    held_u: int,
    tokens: int,
    micros: int,
    now: datetime,
    back: int,
    minute: int,
) -> tuple[int, int, int, date] | None:
    rows = conn.execute(
        _SETTLE_SQL,
        {
            "ht": held_t,
            "hu": held_u,
            "t": tokens,
            "u": micros,
            "now": _ts(now),
            "tenant": tenant_id,
            "back": back,
            "wm": minute,
        },
    ).fetchall()
    if not rows:
        return None
    spent_t, spent_u, alerted, period = rows[0]
    return int(spent_t), int(spent_u), int(alerted), date.fromisoformat(str(period))


def _deliver(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for future, result in zip(futures, results, strict=True):
        if future.done():
            continue  # its caller was cancelled; the work is done (settle: nothing leaks)
        if isinstance(result, _Failed):
            future.set_exception(result.error)
        else:
            future.set_result(result)


_FAST_WRITERS: weakref.WeakKeyDictionary[SQLiteRaw, _SQLiteWriter] = weakref.WeakKeyDictionary()


def _sqlite_writer(db: SQLiteRaw) -> _SQLiteWriter:
    """The shared writer of a file-backed SQLite database (its thread is the database's)."""
    writer = _FAST_WRITERS.get(db)
    if writer is None:
        writer = _FAST_WRITERS[db] = _SQLiteWriter(db.path, db.pool)
        weakref.finalize(db, writer.close)
    return writer


# --- PostgreSQL: the request path as one statement each ----------------------------------------
#
# Through the ORM a reserve is BEGIN, UPDATE, INSERT, COMMIT: four round trips. As one
# statement (a data-modifying CTE) in autocommit it is one, and still atomic: the UPDATE takes
# the row lock and re-checks its WHERE against the committed row, and the INSERT happens only
# if the UPDATE matched. Settle gives back the amounts of the reservation row it deleted, so it
# cannot release what the sweeper already released.

_PG_RESERVE_SQL: Final = """
WITH u AS (
  UPDATE budgets SET
    tokens_reserved = tokens_reserved + $1,
    usd_micros_reserved = usd_micros_reserved + $2,
    window_requests = CASE WHEN window_minute = $3 THEN window_requests + $12::int
                           ELSE $12::int END,
    window_minute = $3,
    updated_at = $4
  WHERE tenant_id = $5 AND period_start = $6 AND $12::int <= $7
    AND (window_minute != $3 OR window_requests + $12::int <= $7)
    AND ($8::bigint IS NULL OR tokens_spent + tokens_reserved + $1 <= $8::bigint)
    AND ($9::bigint IS NULL OR usd_micros_spent + usd_micros_reserved + $2 <= $9::bigint)
  RETURNING tokens_spent + tokens_reserved AS used_t,
            usd_micros_spent + usd_micros_reserved AS used_u,
            window_requests
), i AS (
  INSERT INTO budget_reservations (id, tenant_id, tokens, usd_micros, created_at, expires_at)
  SELECT $10, $5, $1, $2, $4, $11 FROM u
)
SELECT used_t, used_u, window_requests FROM u
"""

_PG_SETTLE_SQL: Final = """
WITH d AS (
  DELETE FROM budget_reservations WHERE id = $1 RETURNING tokens, usd_micros
)
UPDATE budgets SET
  tokens_reserved = tokens_reserved - COALESCE((SELECT tokens FROM d), 0),
  usd_micros_reserved = usd_micros_reserved - COALESCE((SELECT usd_micros FROM d), 0),
  tokens_spent = tokens_spent + $3,
  usd_micros_spent = usd_micros_spent + $4,
  window_requests = CASE WHEN window_minute = $7::bigint AND window_requests >= $6::int
                         THEN window_requests - $6::int ELSE window_requests END,
  updated_at = $5
WHERE tenant_id = $2 AND (EXISTS (SELECT 1 FROM d) OR $3 > 0 OR $4 > 0 OR $6::int > 0)
RETURNING tokens_spent, usd_micros_spent, alerted_pct, period_start
"""

_PG_DRAW_SQL: Final = """
WITH d AS (
  UPDATE budget_reservations SET tokens = tokens - $3, usd_micros = usd_micros - $4,
                                 expires_at = $8
  WHERE id = $1 RETURNING id
)
UPDATE budgets SET
  tokens_reserved = tokens_reserved - CASE WHEN EXISTS (SELECT 1 FROM d) THEN $3 ELSE 0 END,
  usd_micros_reserved = usd_micros_reserved
                        - CASE WHEN EXISTS (SELECT 1 FROM d) THEN $4 ELSE 0 END,
  tokens_spent = tokens_spent + $5,
  usd_micros_spent = usd_micros_spent + $6,
  window_requests = CASE WHEN window_minute = $10::bigint AND window_requests >= $9::int
                         THEN window_requests - $9::int ELSE window_requests END,
  updated_at = $7
WHERE tenant_id = $2
RETURNING tokens_spent, usd_micros_spent, alerted_pct, period_start, EXISTS (SELECT 1 FROM d)
"""


class _PostgresWriter:
    """Runs the two request-path statements as one round trip each, in autocommit."""

    def __init__(self, db: RawDatabase) -> None:
        self._fetchrow = db.fetchrow

    async def reserve(
        self,
        plan: PlanSettings,
        r: Reservation,
        period: date,
        minute: int,
        now: datetime,
        ttl: timedelta,
        *,
        alone: bool = False,
        slots: int = 1,
    ) -> tuple[int, int, int] | None:
        ucap = None if plan.monthly_usd_cap is None else _micros(plan.monthly_usd_cap)
        row = await self._fetchrow(
            _PG_RESERVE_SQL,
            r.tokens,
            r.usd_micros,
            minute,
            now,
            r.tenant_id,
            period,
            plan.requests_per_minute,
            plan.monthly_token_cap,
            ucap,
            r.id,
            now + ttl,
            slots,
        )
        if row is None:
            return None
        return int(row[0]), int(row[1]), int(row[2])

    async def settle(
        self,
        r: Reservation,
        tokens: int,
        micros: int,
        now: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> tuple[int, int, int, date] | None:
        row = await self._fetchrow(
            _PG_SETTLE_SQL, r.id, r.tenant_id, tokens, micros, now, back, minute
        )
        if row is None:
            return None
        return int(row[0]), int(row[1]), int(row[2]), row[3]

    def submit_settle(
        self,
        r: Reservation,
        tokens: int,
        micros: int,
        now: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[int, int, int, date] | None]:
        return asyncio.ensure_future(self.settle(r, tokens, micros, now, back=back, minute=minute))

    def submit_draw(
        self,
        lease: Reservation,
        held: tuple[int, int],
        spent: tuple[int, int],
        now: datetime,
        expires: datetime,
        *,
        back: int = 0,
        minute: int = -1,
    ) -> asyncio.Future[tuple[bool, tuple[int, int, int, date] | None]]:
        return asyncio.ensure_future(
            self._draw(lease, held, spent, now, expires, back=back, minute=minute)
        )

    async def _draw(
        self,
        lease: Reservation,
        held: tuple[int, int],
        spent: tuple[int, int],
        now: datetime,
        expires: datetime,
        *,
        back: int,
        minute: int,
    ) -> tuple[bool, tuple[int, int, int, date] | None]:
        row = await self._fetchrow(
            _PG_DRAW_SQL, lease.id, lease.tenant_id, *held, *spent, now, expires, back, minute
        )
        if row is None:
            return False, None
        return bool(row[4]), (int(row[0]), int(row[1]), int(row[2]), row[3])
