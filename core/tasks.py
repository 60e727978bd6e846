"""Scheduled tasks: stored per tenant, due ones claimed once across processes.

The agent's ``schedule_task`` tool sends ``when`` (an ISO local time or 5-field cron) and a
prompt; this store resolves it in the person's time zone (zoneinfo). Claiming a run is a
conditional UPDATE of ``next_run`` from the value read, so of two replicas only one wins.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import delete, func, select, update

from core.credentials import Credentials
from core.db import Database
from core.db.models import TaskRow, TimezoneRow
from core.ports import Clock
from core.vault import decrypt_blob, encrypt_blob

log = logging.getLogger("byokbot.tasks")


class BadSchedule(ValueError):
    """``when`` is neither a future ISO local time nor a valid 5-field cron."""


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name`` (``Europe/Paris``), or None when there is no such zone."""
    if not name or "/" not in name or ".." in name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def next_run(when: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The next time (UTC) ``when`` fires after ``now``; None for a past one-off."""
    if len(when.split()) == 5:
        try:
            trigger = CronTrigger.from_crontab(when, timezone=tz)
        except ValueError as exc:
            raise BadSchedule(f"not a valid cron expression: {exc}") from None
        fire = trigger.get_next_fire_time(None, now.astimezone(tz))
        return None if fire is None else fire.astimezone(UTC)
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        raise BadSchedule("not an ISO date-time or 5-field cron") from None
    at = at.replace(tzinfo=tz) if at.tzinfo is None else at
    at = at.astimezone(UTC)
    return at if at > now else None


@dataclass(frozen=True, slots=True)
class Added:
    """What ``add`` did: ``outcome`` is "added", "needs_timezone", "limit", "past" or "bad".

    ``next_run`` (UTC) and ``tz`` are set when added; ``reason`` says why a schedule is bad.
    """

    outcome: str
    next_run: datetime | None = None
    tz: str = ""
    reason: str = ""
    waiting: int = 0
    """How many tasks wait for a time zone (this one included), on "needs_timezone"."""


@dataclass(frozen=True, slots=True)
class TaskView:
    id: str
    conversation: str
    when: str
    next_run: datetime | None


@dataclass(frozen=True, slots=True)
class DueTask:
    id: str
    tenant_id: str
    conversation: str
    prompt: str


class DatabaseTasks:
    """Scheduled tasks and time zones in the database (prompts sealed with the data key)."""

    def __init__(self, db: Database, credentials: Credentials, clock: Clock) -> None:
        self._db = db
        self._credentials = credentials
        self._clock = clock

    def now(self) -> datetime:
        return self._clock.now()

    async def timezone(self, tenant_id: str) -> str | None:
        async with self._db.session() as s:
            row = await s.get(TimezoneRow, tenant_id)
            return row.tz if row else None

    async def set_timezone(self, tenant_id: str, tz_name: str) -> int:
        """Store the zone; schedule tasks that waited for it. Returns how many now have a time."""
        tz = zone(tz_name)
        if tz is None:
            raise BadSchedule(f"unknown time zone {tz_name!r}")
        now = self._clock.now()
        scheduled = 0
        async with self._db.session() as s, s.begin():
            row = await s.get(TimezoneRow, tenant_id)
            if row is None:
                s.add(TimezoneRow(tenant_id=tenant_id, tz=tz_name))
            else:
                row.tz = tz_name
            waiting = (
                await s.scalars(
                    select(TaskRow).where(
                        TaskRow.tenant_id == tenant_id, TaskRow.next_run.is_(None)
                    )
                )
            ).all()
            for task in waiting:
                try:
                    task.next_run = next_run(task.when, tz, now)
                except BadSchedule:
                    task.next_run = None
                if task.next_run is None:
                    await s.delete(task)
                else:
                    scheduled += 1
        return scheduled

    async def count(self, tenant_id: str) -> int:
        async with self._db.session() as s:
            n = await s.scalar(
                select(func.count()).select_from(TaskRow).where(TaskRow.tenant_id == tenant_id)
            )
            return int(n or 0)

    async def add(
        self, tenant_id: str, conversation: str, when: str, prompt: str, *, limit: int
    ) -> Added:
        """Store a task, or say why not (see ``Added``)."""
        tz_name = await self.timezone(tenant_id)
        tz = zone(tz_name) if tz_name else None
        fire: datetime | None = None
        if tz is not None:
            try:
                fire = next_run(when, tz, self._clock.now())
            except BadSchedule as exc:
                return Added("bad", reason=str(exc))
            if fire is None and len(when.split()) == 5:  # e.g. "0 0 30 2 *"
                return Added("bad", reason="that cron expression never fires")
            if fire is None:
                return Added("past", tz=tz_name or "")
        elif len(when.split()) == 5:
            try:  # the shape is checked now; the time once the zone is known
                CronTrigger.from_crontab(when, timezone=UTC)
            except ValueError as exc:
                return Added("bad", reason=f"not a valid cron expression: {exc}")
        else:
            try:
                datetime.fromisoformat(when)
            except ValueError:
                return Added("bad", reason="not an ISO date-time or 5-field cron")
        if await self.count(tenant_id) >= limit:
            return Added("limit")
        task_id = secrets.token_hex(8)
        async with self._db.session() as s, s.begin():
            dek = await self._credentials.data_key(s, tenant_id)
            blob = encrypt_blob(dek, prompt.encode(), purpose="task", object_id=task_id)
            s.add(
                TaskRow(
                    id=task_id,
                    tenant_id=tenant_id,
                    conversation=conversation,
                    when=when,
                    prompt_blob=blob,
                    next_run=fire,
                    created_at=self._clock.now(),
                )
            )
        if tz is not None:
            return Added("added", next_run=fire, tz=tz_name or "")
        async with self._db.session() as s:
            waiting = await s.scalar(
                select(func.count())
                .select_from(TaskRow)
                .where(TaskRow.tenant_id == tenant_id, TaskRow.next_run.is_(None))
            )
        return Added("needs_timezone", waiting=int(waiting or 0))

    async def of(self, tenant_id: str) -> list[TaskView]:
        async with self._db.session() as s:
            rows = (
                await s.scalars(
                    select(TaskRow)
                    .where(TaskRow.tenant_id == tenant_id)
                    .order_by(TaskRow.created_at)
                )
            ).all()
            return [TaskView(r.id, r.conversation, r.when, r.next_run) for r in rows]

    async def cancel(self, tenant_id: str, task_id: str) -> bool:
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                delete(TaskRow).where(TaskRow.id == task_id, TaskRow.tenant_id == tenant_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim_due(self) -> list[DueTask]:
        """Claim every due task (moving its ``next_run`` on) and return what to run."""
        now = self._clock.now()
        claimed: list[DueTask] = []
        async with self._db.session() as s:
            due = (
                await s.scalars(
                    select(TaskRow).where(TaskRow.next_run.is_not(None), TaskRow.next_run <= now)
                )
            ).all()
            candidates = [(r.id, r.tenant_id, r.conversation, r.when, r.next_run) for r in due]
        for task_id, tenant_id, conversation, when, was in candidates:
            async with self._db.session() as s, s.begin():
                tz_name = await s.scalar(
                    select(TimezoneRow.tz).where(TimezoneRow.tenant_id == tenant_id)
                )
                tz = zone(tz_name or "") or ZoneInfo("UTC")
                recurring = len(when.split()) == 5
                following = next_run(when, tz, now + timedelta(seconds=1)) if recurring else None
                result = await s.execute(
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.next_run == was)
                    .values(next_run=following)
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    continue  # another process claimed it first
                row = await s.get(TaskRow, task_id)
                if row is None:
                    continue
                dek = await self._credentials.data_key(s, tenant_id)
                prompt = decrypt_blob(
                    dek, row.prompt_blob, purpose="task", object_id=task_id
                ).decode()
                if following is None:  # a one-off, or a cron with no later time
                    await s.delete(row)
            claimed.append(DueTask(task_id, tenant_id, conversation, prompt))
        return claimed
