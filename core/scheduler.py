"""Background jobs on APScheduler. Each job is a plain async function, testable without waiting.

APScheduler awaits a job in the bot's event loop only when the job *is* a coroutine function;
anything else (a lambda that returns a coroutine, say) runs in a worker thread, where the
coroutine is created and dropped unawaited while the log says the job ran. So ``Job`` refuses
whatever is not a coroutine function.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import SQLAlchemyError

from core.flowstate import FlowStates
from core.intake import Intake
from core.metrics import counted_job

log = logging.getLogger("byokbot.scheduler")


async def expire_intake_sessions(intake: Intake, flow_states: FlowStates) -> int:
    """Close intake sessions past their time and forget flows that waited on them."""
    closed = await intake.expire_due()
    await flow_states.expire_due()
    if closed:
        log.info("expired %d intake session(s)", closed)
    return closed


@dataclass(frozen=True, slots=True)
class Job:
    """A recurring job: a coroutine function (no arguments) run every ``seconds``."""

    name: str
    seconds: float
    run: Callable[[], Coroutine[Any, Any, object]]
    # Once across replicas: with leases (PostgreSQL), only the replica taking the job's lease
    # runs it in an interval; False for per-process work (this process's own leases, agents).
    once: bool = False

    def __post_init__(self) -> None:
        if not inspect.iscoroutinefunction(self.run):
            raise TypeError(f"job {self.name!r}: run must be an async def function")
        if self.seconds <= 0:
            raise ValueError(f"job {self.name!r}: seconds must be positive")


class Leases(Protocol):
    """``core.changes.JobLeases``: whether this replica runs ``name`` now."""

    async def take(self, name: str, seconds: float) -> bool: ...


class Scheduler:
    """Runs ``Job``s on an APScheduler ``AsyncIOScheduler`` in the bot's event loop."""

    def __init__(self, jobs: list[Job], *, leases: Leases | None = None) -> None:
        self.jobs = jobs
        self._leases = leases
        self._scheduler = AsyncIOScheduler(timezone="UTC")

    def _runner(self, job: Job) -> Callable[[], Coroutine[Any, Any, object]]:
        run = counted_job(job.name, job.run)
        leases = self._leases
        if leases is None or not job.once:
            return run
        # A little under the interval, so the next tick (on any replica) finds it free.
        seconds = job.seconds * 0.8

        async def leased() -> object:
            try:
                taken = await leases.take(job.name, seconds)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("job %s: its lease could not be taken (%s)", job.name, exc)
                return None
            return await run() if taken else None

        return leased

    def start(self) -> None:
        for job in self.jobs:
            self._scheduler.add_job(
                self._runner(job),
                "interval",
                seconds=job.seconds,
                id=job.name,
                name=job.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(job.seconds)),
            )
        self._scheduler.start()

    def scheduled(self) -> list[tuple[str, Callable[..., Any]]]:
        """``(name, function)`` of every job APScheduler holds (what it will call)."""
        return [(j.name, j.func) for j in self._scheduler.get_jobs()]

    @property
    def running(self) -> bool:
        """Whether APScheduler is running the jobs (``/readyz`` asks)."""
        return bool(self._scheduler.running)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
