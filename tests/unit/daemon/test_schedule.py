"""next_due / slot_after are pure: table-driven with an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drd.daemon.schedule import Schedule, jitter_offset, next_due, slot_after

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        (Schedule(every=6 * H), T0, T0 + 6 * H),  # 12:00 is a 6h slot; strictly after -> 18:00
        (Schedule(every=6 * H), T0 + M, T0 + 6 * H),
        (Schedule(every=6 * H), T0 - M, T0),
        (
            Schedule(every=timedelta(seconds=2)),
            T0 + timedelta(seconds=1),
            T0 + timedelta(seconds=2),
        ),
        (Schedule(cron="0 */4 * * *"), T0, T0 + 4 * H),
        (Schedule(cron="0 */4 * * *"), T0 + M, T0 + 4 * H),
        (Schedule(cron="30 2 * * *"), T0, datetime(2026, 11, 29, 2, 30, tzinfo=UTC)),
    ],
)
def test_slot_after(schedule: Schedule, after: datetime, expected: datetime) -> None:
    assert slot_after(schedule, after, seed="") == expected


@pytest.mark.parametrize(
    ("last", "now", "rpo", "expected"),
    [
        (None, T0, 6 * H, T0),  # never backed up: at once
        (T0 - 7 * H, T0, 6 * H, T0),  # RPO breached: at once
        (T0 - 1 * H, T0 - 30 * M, 6 * H, T0),  # normal: the next slot after the last capture
        (T0 - 1 * H, T0 + M, 6 * H, T0 + M),  # that slot passed while busy: now
        (T0 - 13 * H, T0, 24 * H, T0),  # slots missed while down: now, once
        (T0 + M, T0 + 2 * M, None, T0 + 6 * H),
    ],
)
def test_next_due(
    last: datetime | None, now: datetime, rpo: timedelta | None, expected: datetime
) -> None:
    assert next_due(Schedule(every=6 * H), last_capture=last, now=now, rpo=rpo) == expected


def test_jitter_is_stable_per_seed_and_within_bounds() -> None:
    s = Schedule(every=6 * H, jitter=10 * M)
    a, b = jitter_offset(s, "billing/db"), jitter_offset(s, "billing/files")
    assert a == jitter_offset(s, "billing/db")
    assert a != b
    for off in (a, b):
        assert timedelta(0) <= off < 10 * M
    # slots keep their 6h spacing with the offset applied
    first = slot_after(s, T0, "billing/db")
    assert slot_after(s, first, "billing/db") - first == 6 * H
    assert (first - a - T0) % (6 * H) == timedelta(0)


@pytest.mark.parametrize("kwargs", [{}, {"every": H, "cron": "* * * * *"}, {"every": timedelta(0)}])
def test_invalid_schedules(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Schedule(**kwargs)  # type: ignore[arg-type]
