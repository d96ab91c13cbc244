"""When jobs run: pure functions of the schedule, the last run and the clock.

Slots are anchored (to the Unix epoch for intervals, to the cron expression for cron) rather
than to the previous run, so a slow job does not push every later run back. Each source gets a
fixed jitter offset derived from its name: stable across restarts, and different sources of one
plan do not all hit the database at the same second.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Schedule:
    every: timedelta | None = None
    cron: str | None = None
    jitter: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("a schedule needs exactly one of every / cron")
        if self.every is not None and self.every <= timedelta(0):
            raise ValueError("every must be positive")


def jitter_offset(schedule: Schedule, seed: str) -> timedelta:
    if schedule.jitter <= timedelta(0):
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    micros = int(schedule.jitter / timedelta(microseconds=1))
    return timedelta(microseconds=digest % micros)


def slot_after(schedule: Schedule, after: datetime, seed: str) -> datetime:
    """The first slot strictly after `after`."""
    offset = jitter_offset(schedule, seed)
    base = after - offset
    if schedule.every is not None:
        n = (base - EPOCH) // schedule.every + 1
        return EPOCH + n * schedule.every + offset
    assert schedule.cron is not None
    nxt = croniter(schedule.cron, base.astimezone(UTC)).get_next(datetime)
    assert isinstance(nxt, datetime)
    return nxt.astimezone(UTC) + offset


def next_due(
    schedule: Schedule,
    *,
    last_capture: datetime | None,
    now: datetime,
    rpo: timedelta | None = None,
    seed: str = "",
) -> datetime:
    """When the next backup of a source is due.

    - never backed up, or the RPO is already breached: now (do not wait for a slot);
    - a slot was missed while drd was down: now, once (not once per missed slot);
    - otherwise the next slot after the last capture.
    """
    if last_capture is None:
        return now
    if rpo is not None and now - last_capture >= rpo:
        return now
    return max(slot_after(schedule, last_capture, seed), now)
