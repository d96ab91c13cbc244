"""The time drd runs on: `utcnow()`, and `Clock`, the shape of anything that tells the time.

Everything that decides by the time (schedules, retention, backup ids, restore tests, drills)
takes a `Clock` instead of reading the system clock, so tests inject a fixed or stepped one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, as an aware datetime in UTC."""
    return datetime.now(UTC)
