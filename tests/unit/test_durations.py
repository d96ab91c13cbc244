from __future__ import annotations

from datetime import timedelta

import pytest

from drd.durations import (
    DurationError,
    format_duration,
    format_elapsed,
    format_size,
    parse_duration,
    parse_size,
)

EXAMPLES = "e.g. 90s, 30m, 6h, 14d or 1d12h"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("14d", timedelta(days=14)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", timedelta(0)),
        (" 5m ", timedelta(minutes=5)),
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (0, timedelta(0)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_duration_accepts(text: str | int | timedelta, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", f"empty duration ({EXAMPLES})"),
        (
            "6hours",
            f"invalid duration '6hours': unknown unit 'hours' (use d, h, m or s; {EXAMPLES})",
        ),
        ("2w", f"invalid duration '2w': unknown unit 'w' (use d, h, m or s; {EXAMPLES})"),
        (
            "12h1d",
            f"invalid duration '12h1d': write units largest first and each once ({EXAMPLES})",
        ),
        ("1h1h", f"invalid duration '1h1h': write units largest first and each once ({EXAMPLES})"),
        ("1d 12h", f"invalid duration '1d 12h' ({EXAMPLES})"),
        ("1.5h", f"invalid duration '1.5h' ({EXAMPLES})"),
        ("h", f"invalid duration 'h' ({EXAMPLES})"),
        ("1d12", f"invalid duration '1d12' ({EXAMPLES})"),
        ("PT6H", f"invalid duration 'PT6H' ({EXAMPLES})"),
        ("-5m", f"a duration cannot be negative ({EXAMPLES})"),
        (-5, f"a duration cannot be negative ({EXAMPLES})"),
        (True, f"expected a duration ({EXAMPLES}), got a boolean"),
        (1.5, f"expected a duration ({EXAMPLES}), got float"),
        ("99999999999d", "duration is too long (at most 100 years)"),
        ("9" * 50, f"invalid duration '{'9' * 37}...' ({EXAMPLES})"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_duration_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors raised in validators into validation errors
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=36), "1d12h"),
        (timedelta(days=14), "14d"),
        (timedelta(hours=-2), "-2h"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    if value >= timedelta(0):
        assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16MiB", 16 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1GiB", 1 << 30),
        ("16mib", 16 * 1024 * 1024),
        ("10MB", 10_000_000),
        ("1kB", 1000),
        ("123B", 123),
        ("3KiB", 3072),
        ("1536B", 1536),
        ("1000B", 1000),
        ("0B", 0),
        ("4096", 4096),
        ("16 MiB", 16 * 1024 * 1024),
        (4096, 4096),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "16XB",
            "invalid size '16XB': unknown unit 'XB' (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)",
        ),
        ("1.5MiB", "invalid size '1.5MiB' (e.g. 16MiB, 512KiB or a number of bytes)"),
        ("MiB", "invalid size 'MiB' (e.g. 16MiB, 512KiB or a number of bytes)"),
        ("-1", "invalid size '-1' (e.g. 16MiB, 512KiB or a number of bytes)"),
        (-1, "a size cannot be negative"),
        (False, "expected a size such as 16MiB, got a boolean"),
        ("9" * 50, f"invalid size '{'9' * 37}...' (e.g. 16MiB, 512KiB or a number of bytes)"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_size(value)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0s"),
        (0.34, "0.3s"),
        (1.0, "1s"),
        (78.57, "1m18s"),
        (366.0, "6m6s"),
        (3600 + 59.9, "1h"),
        (2 * 3600 + 5 * 60 + 30, "2h5m"),
        (86400 + 3 * 3600 + 7, "1d3h"),
        (timedelta(minutes=6), "6m"),
        (-90.0, "-1m30s"),
    ],
)
def test_format_elapsed_speaks_the_config_syntax(seconds: float | timedelta, text: str) -> None:
    assert format_elapsed(seconds) == text
    if text[0] != "-" and "." not in text:
        # What drd prints can be pasted back into a config file.
        assert parse_duration(text).total_seconds() <= (
            seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        )


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (1503238554, "1.4GiB"),
        (5 << 40, "5.0TiB"),
        (3 << 50, "3.0PiB"),
        (1 << 60, "1024.0PiB"),
    ],
)
def test_format_size_is_iec_with_one_decimal(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1536, "1.5KiB"),
        (1900 << 20, "1.9GiB"),
        (3 << 40, "3.0TiB"),
        (38.5 * (1 << 20), "38.5MiB"),  # a rate
    ],
)
def test_format_size_in_the_units_parse_size_reads(n: float, text: str) -> None:
    assert format_size(n) == text
    if "." not in text:
        assert parse_size(text) == n
