"""The one-line status systemd shows (`systemctl status drd`, sd_notify STATUS=): what the
daemon is doing now and what comes next.

    2 jobs running: backup billing/db for 3m, restore-test billing/files for 10s; next backup
      in 3m (web/site)
    idle; next backup in 3h59m (billing/db), next restore-test in 23h (billing/db)
    stopping: 1 job finishing: backup billing/db for 2m

A pure function of what the daemon's loops report (drd.daemon.service builds the inputs); the
daemon sends it whenever it changes: when a job starts or ends, at a reload, and as the
"next ... in" countdown moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from drd.durations import format_duration

#: jobs named one by one; the rest are counted
SHOWN_JOBS = 3
#: systemd keeps the whole text, but `systemctl status` shows one line
MAX_NOTE = 160


@dataclass(frozen=True)
class Activity:
    """A running job: its kind (backup, restore-test, retention, drill), what it works on
    (plan/source, or the plan), when it started, and whether it still waits for a slot."""

    kind: str
    what: str
    started: datetime | None = None
    waiting: bool = False


@dataclass(frozen=True)
class Upcoming:
    """The next job of a kind that is not running yet."""

    kind: str
    what: str
    due: datetime


def coarse(delta: timedelta) -> str:
    """A duration rounded for a status line, in the config's syntax: 42s, 3m, 1h30m, 2d4h."""
    seconds = max(int(delta.total_seconds()), 0)
    step = 3600 if seconds >= 86400 else 60 if seconds >= 90 else 1
    return format_duration(timedelta(seconds=seconds // step * step))


def _job(activity: Activity, now: datetime) -> str:
    text = f"{activity.kind} {activity.what}"
    if activity.waiting:
        return text + " waiting for a slot"
    if activity.started is not None:
        text += f" for {coarse(now - activity.started)}"
    return text


def _count(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def status_line(
    activities: Sequence[Activity],
    upcoming: Sequence[Upcoming],
    now: datetime,
    *,
    stopping: bool = False,
    note: str | None = None,
) -> str:
    jobs = [_job(a, now) for a in activities[:SHOWN_JOBS]]
    if len(activities) > SHOWN_JOBS:
        jobs.append(f"{len(activities) - SHOWN_JOBS} more")
    if stopping:
        head = "stopping"
        if activities:
            head += f": {_count(len(activities))} finishing: " + ", ".join(jobs)
        parts = [head]
    else:
        parts = [f"{_count(len(activities))} running: " + ", ".join(jobs) if jobs else "idle"]
        nexts = [
            f"next {u.kind} in {coarse(u.due - now)} ({u.what})"
            if u.due > now
            else f"{u.kind} {u.what} due now"
            for u in sorted(upcoming, key=lambda u: u.due)
        ]
        if nexts:
            parts.append(", ".join(nexts))
    if note:
        parts.append(note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 3] + "...")
    return "; ".join(parts)
