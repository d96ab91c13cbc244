"""The lifecycle the daemon's loops share (retention, restore tests, drills).

- `run_once()` is one round: start or do what is due now, and return what it started or did.
  Tests drive it with an injected clock and the loop off.
- `seconds_until_due()`: how long the loop may sleep before its next round.
- `start(stop)` runs the rounds as a task until `stop` is set or the loop is closed.
- `close(grace)` stops starting work and ends the work in progress within `grace` seconds
  (each loop says what that means for its work), then cancels what is still running.

drd.daemon.service builds every loop on one `drd.runtime.Services`, starts them all when it
starts serving, and closes them all at once at shutdown, within the one grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Protocol

log = logging.getLogger(__name__)

#: the shortest sleep between rounds, so that a round that finds work it cannot start yet
#: never spins
MIN_SLEEP_SECONDS = 0.05


class Loop(Protocol):
    async def run_once(self) -> object: ...

    def seconds_until_due(self) -> float: ...

    def start(self, stop: asyncio.Event) -> None: ...

    async def close(self, grace: float) -> None: ...


async def run_rounds(loop: Loop, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
    """`loop.run_once()` until `stop` is set; between rounds, sleep until the loop is due again,
    or until `wake` is set (a request, a finished job) or `stop`."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # before the round: a wake-up during it brings the next one at once
        await loop.run_once()
        await wait_any(
            [stop] if wake is None else [stop, wake],
            max(loop.seconds_until_due(), MIN_SLEEP_SECONDS),
        )


async def wait_any(events: Collection[asyncio.Event], seconds: float) -> None:
    """Return when one of `events` is set, or after `seconds`."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (a loop's own task) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drain(
    tasks: Collection[asyncio.Task[None]],
    grace: float,
    *,
    what: str,
    cancelled_wait: float | None = 30.0,
) -> None:
    """Give running job `tasks` up to `grace` seconds to finish, then cancel the rest and wait
    for them to wind down (at most `cancelled_wait` seconds; None: until they are done)."""
    tasks = [t for t in tasks if not t.done()]
    if not tasks:
        return
    log.info("shutdown: waiting up to %.0fs for %d running %s(s)", grace, len(tasks), what)
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning("shutdown: cancelling %s after the grace period", task.get_name())
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=cancelled_wait)
