"""Judging a check query's result against its expectation: pure functions, no database.

Results arrive in canonical JSON form (drd.strategies.statistics.json_value): one value for a result
of one row and one column, else a list of rows. Numbers compare by value whatever their form
(12.5, "12.50" from a numeric column, 12.500): a check written in YAML should not fail on how a
driver renders a decimal. Everything else compares exactly.

Freshness: timestamps with a zone compare as they are; timestamps without one are taken as UTC
(say so in the check's name if yours are local time); dates as midnight UTC; SQLite's text and
Unix-epoch numbers are understood too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from drd.restore_tests.results import Status
from drd.restore_tests.spec import Expectation
from drd.strategies.statistics import json_value


@dataclass(frozen=True)
class QueryOutcome:
    #: canonical result: the value for one row of one column, else the list of rows
    value: Any
    #: rows returned (counted up to the capture limit + 1)
    rows: int


@dataclass(frozen=True)
class Verdict:
    status: Status
    expected: Any
    actual: Any
    detail: str = ""


def number(value: Any) -> Decimal | None:
    """`value` as a finite number, or None when it is not one (booleans are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def same(a: Any, b: Any) -> bool:
    """Equal as check results: numbers by value, lists element by element, the rest exactly."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) != isinstance(b, bool):
        return False  # true is not 1
    na, nb = number(a), number(b)
    if na is not None and nb is not None:
        return na == nb
    return bool(a == b)


def evaluate(
    expect: Expectation, outcome: QueryOutcome, captured: Mapping[str, Any] | None
) -> Verdict:
    """Judge `outcome` against `expect`; `captured` is the source's result from backup time
    ({"value": ...} or {"error": ...}; None when the backup has none)."""
    actual = outcome.value if outcome.rows else None
    kind = expect.kind
    if kind == "non_empty":
        shown = (
            f"{outcome.rows} row{'s' if outcome.rows != 1 else ''}" if outcome.rows else "no rows"
        )
        ok = outcome.rows > 0
        return Verdict("passed" if ok else "failed", "at least one row", shown)
    if kind == "equals":
        expected = json_value(expect.equals)
        ok = outcome.rows > 0 and same(actual, expected)
        detail = "" if ok else ("the query returned no rows" if not outcome.rows else "")
        return Verdict("passed" if ok else "failed", expected, actual, detail)
    if kind == "matches_source":
        if captured is None:
            return Verdict(
                "skipped",
                None,
                actual,
                "the backup has no result of this query from the source (it was taken before "
                "the check was added or changed)",
            )
        if "error" in captured:
            return Verdict(
                "failed",
                None,
                actual,
                f"the query failed on the source at backup time: {captured['error']}",
            )
        expected = captured.get("value")
        ok = same(actual, expected) if outcome.rows else expected in (None, [])
        detail = "" if ok else "differs from the source's result at backup time"
        return Verdict("passed" if ok else "failed", expected, actual, detail)
    # at_least, at_most, or both (a range)
    low, high = expect.at_least, expect.at_most
    parts = []
    if low is not None:
        parts.append(f">= {_plain(low)}")
    if high is not None:
        parts.append(f"<= {_plain(high)}")
    expected_text = " and ".join(parts)
    value = number(actual)
    if value is None:
        why = "the query returned no rows" if not outcome.rows else "the result is not a number"
        return Verdict("failed", expected_text, actual, why)
    ok = (low is None or value >= Decimal(str(low))) and (
        high is None or value <= Decimal(str(high))
    )
    return Verdict("passed" if ok else "failed", expected_text, actual)


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def as_utc(value: Any) -> datetime | None:
    """A timestamp from either database as an aware UTC datetime; None if it is not one."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            return as_utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            seconds = number(value)
            return as_utc(float(seconds)) if seconds is not None else None
    return None


def evaluate_freshness(newest: Any, captured_at: datetime, within: timedelta) -> Verdict:
    """The newest timestamp must be no older than the capture time minus `within`."""
    from drd.durations import format_duration

    threshold = captured_at.astimezone(UTC) - within
    expected = f">= {threshold.isoformat()} (backup taken {captured_at.astimezone(UTC).isoformat()}"
    expected += f", minus {format_duration(within)})"
    if newest is None:
        return Verdict("failed", expected, None, "no rows (or only NULLs): nothing to judge by")
    when = as_utc(newest)
    if when is None:
        return Verdict("failed", expected, json_value(newest), "not a timestamp")
    if when >= threshold:
        return Verdict("passed", expected, when.isoformat())
    lag = format_duration(timedelta(seconds=int((captured_at - when).total_seconds())))
    return Verdict(
        "failed", expected, when.isoformat(), f"the newest row is {lag} older than the backup"
    )
