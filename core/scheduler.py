"""Background jobs on APScheduler. Each job is a plain async function, testable without waiting."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from core.flowstate import FlowStates
from core.intake import Intake

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
    """A recurring job: an async callable run every ``seconds``."""

    name: str
    seconds: float
    run: Callable[[], Awaitable[object]]


class Scheduler:
    """Runs ``Job``s on an APScheduler ``AsyncIOScheduler`` in the bot's event loop."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._scheduler = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        for job in self.jobs:
            self._scheduler.add_job(
                job.run,
                "interval",
                seconds=job.seconds,
                id=job.name,
                name=job.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=int(job.seconds),
            )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
