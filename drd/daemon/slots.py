"""Per-source job slots shared by the daemon's schedulers (backups, restore tests).

Each source has at most one job task and a `next_due` time; starting what is due, asking for a
job now, and computing how long the loop may sleep are the same for every kind of job, so they
live here once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from drd.daemon.job_requests import RequestedRun, RunOutcome
from drd.layout import SourceRef

log = logging.getLogger(__name__)

#: how long the loop sleeps when nothing is scheduled at all
IDLE_SECONDS = 60.0


@dataclass
class JobSlot:
    """What every per-source job state has (subclasses add the job's own facts)."""

    ref: SourceRef
    next_due: datetime | None = None
    task: asyncio.Task[None] | None = None
    #: when the running job was started (None: none is running)
    started: datetime | None = None
    #: the running job waits for one of the daemon's job slots (max_concurrent_jobs)
    waiting: bool = False
    #: runs of API requests (drd.daemon.job_requests) the next job to start will end
    requests: list[RequestedRun] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


S = TypeVar("S", bound=JobSlot)


#: how a finished job of a slot ended (True: it was cancelled), for the requests it ends
Outcome = Callable[[S, bool], RunOutcome]
#: records a job that raised instead of returning as the slot's failed job (state, metrics)
Crashed = Callable[[S, Exception], None]


def start_due(
    slots: Iterable[S],
    now: datetime,
    job: Callable[[S], Coroutine[Any, Any, None]],
    name: str,
    eligible: Callable[[S], bool] = lambda slot: True,
    outcome: Outcome[S] | None = None,
    crashed: Crashed[S] | None = None,
) -> list[SourceRef]:
    """Start `job` for every eligible slot that is due and idle; return the refs started.
    Never a second task for a source whose job still runs: runs of one source never overlap.
    The slot's pending requests go with the job, and `outcome` ends them when it ends. A job
    that raises (anything but its cancellation) is logged and handed to `crashed` first, so
    the outcome sees a failed job, never an interrupted one."""
    started = []
    for slot in slots:
        if slot.running or slot.next_due is None or slot.next_due > now or not eligible(slot):
            continue
        slot.started, slot.waiting = now, False
        requests, slot.requests = slot.requests, []
        for run in requests:
            run.began(now)
        work = _ending(slot, job(slot), name, requests, outcome, crashed)
        slot.task = asyncio.create_task(work, name=f"{name}:{slot.ref}")
        started.append(slot.ref)
    return started


async def _ending(
    slot: S,
    work: Coroutine[Any, Any, None],
    name: str,
    requests: list[RequestedRun],
    outcome: Outcome[S] | None,
    crashed: Crashed[S] | None,
) -> None:
    cancelled = True
    try:
        await work
        cancelled = False
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # Jobs record the failures they expect; this one escaped: still the job's failure, and
        # not re-raised, since nobody awaits the task to see it.
        cancelled = False
        log.exception("%s %s failed: %s", name, slot.ref, exc)
        if crashed is not None:
            crashed(slot, exc)
    finally:
        if requests and outcome is not None:
            ended = outcome(slot, cancelled)
            for run in requests:
                run.ended(ended)


def request_now(slot: JobSlot, now: datetime, wake: asyncio.Event) -> bool:
    """Make `slot` due now and wake the loop; False if its job is already running."""
    if slot.running:
        return False
    slot.next_due = now
    wake.set()
    return True


def seconds_until_due(
    slots: Iterable[S], now: datetime, eligible: Callable[[S], bool] = lambda slot: True
) -> float:
    dues = [s.next_due for s in slots if s.next_due is not None and not s.running and eligible(s)]
    if not dues:
        return IDLE_SECONDS
    return max(0.0, (min(dues) - now).total_seconds())
