"""The pure parts of Cloud SQL point-in-time clones: the window, the random point, the times
the API sends."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from drd.errors import RestoreError
from drd.strategies.cloudsql_pitr import (
    START_MARGIN,
    RecoveryWindow,
    parse_time,
    random_point,
    rfc3339,
)

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
WINDOW = RecoveryWindow(START, START + timedelta(days=3))


def test_random_points_fall_inside_the_window_and_spread_over_it() -> None:
    rng = random.Random(18)
    points = [random_point(WINDOW, rng) for _ in range(500)]
    assert all(p in WINDOW for p in points)
    # Not pinned to one end: both halves of the window are drawn.
    middle = START + timedelta(days=1.5)
    assert any(p < middle for p in points) and any(p > middle for p in points)
    assert len(set(points)) > 450


def test_points_keep_clear_of_the_start_that_moves_on_unless_the_window_is_narrow() -> None:
    rng = random.Random(7)
    assert min(random_point(WINDOW, rng) for _ in range(2000)) >= START + START_MARGIN
    narrow = RecoveryWindow(START, START + START_MARGIN)
    points = [random_point(narrow, rng) for _ in range(2000)]
    assert all(p in narrow for p in points)
    assert min(points) < START + START_MARGIN / 4  # the whole narrow window is used


def test_an_instant_window_gives_its_one_point() -> None:
    window = RecoveryWindow(START, START)
    assert random_point(window) == START


def test_points_outside_are_not_in_the_window() -> None:
    assert WINDOW.earliest - timedelta(milliseconds=1) not in WINDOW
    assert WINDOW.latest + timedelta(milliseconds=1) not in WINDOW
    assert WINDOW.earliest in WINDOW and WINDOW.latest in WINDOW
    assert "2026-12-01T08:00:00.000Z" not in WINDOW  # a string is not a point


def test_times_round_trip_as_rfc3339_in_utc() -> None:
    at = datetime(2026, 12, 4, 21, 30, 15, 123000, tzinfo=UTC)
    assert rfc3339(at) == "2026-12-04T21:30:15.123Z"
    assert parse_time(rfc3339(at), "t") == at
    assert parse_time("2026-12-04T22:30:15.123+01:00", "t") == at
    assert WINDOW.shown == "2026-12-01T08:00:00.000Z .. 2026-12-04T08:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "why"),
    [("yesterday", "not an RFC 3339 time"), ("2026-12-04T21:30:15", "has no time zone")],
)
def test_bad_times_are_refused_naming_the_field(text: str, why: str) -> None:
    with pytest.raises(RestoreError) as refused:
        parse_time(text, "getLatestRecoveryTime: latestRecoveryTime")
    assert str(refused.value).startswith("getLatestRecoveryTime: latestRecoveryTime: ")
    assert why in str(refused.value)
