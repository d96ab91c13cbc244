"""Durations and byte sizes as operators write them in config files and on the command line.

Durations: one or more `<digits><unit>` parts, units `d`, `h`, `m`, `s`, largest first and each
at most once: "90s", "30m", "6h", "14d", "1d12h", "1h30m". A number alone ("90", or the YAML
integer 90) is seconds. Nothing else is accepted: no signs, fractions, spaces, or ISO 8601, so
that a typo is an error rather than a surprise.

What people read (every CLI output and log summary line) uses the same syntax: `format_elapsed`
for measured durations (`1m19s`, not `78.57s` or `1.3min`) and `format_size` for byte counts
(`1.4GiB`), so that what drd prints can be pasted back into a config file.

Sizes: an integer with an optional unit, IEC ("KiB", "MiB", "GiB", "TiB": powers of 1024) or SI
("kB", "MB", "GB", "TB": powers of 1000), or "B": "16MiB", "512KiB", "1048576". Units are matched
without regard to case.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_EXAMPLES = "e.g. 90s, 30m, 6h, 14d or 1d12h"
_PART = re.compile(r"(\d+)([a-zA-Z]+)")
# Far beyond any schedule or retention; keeps timedelta (and int parsing) out of overflow.
_MAX_SECONDS = 100 * 366 * 86400

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE = re.compile(r"(\d+)\s*([a-zA-Z]*)")


class DurationError(ValueError):
    """A duration or size that cannot be parsed; the message says why and shows the syntax."""


def _shown(text: str) -> str:
    """The offending text for an error message, cut short if it is long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_duration(value: str | int | timedelta) -> timedelta:
    """Parse "90s", "30m", "6h", "14d", "1d12h" (or a number of seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):  # bool is an int subclass; `every: yes` is not a duration
        raise DurationError(f"expected a duration ({_EXAMPLES}), got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise DurationError(f"a duration cannot be negative ({_EXAMPLES})")
        return _bounded(value)
    if not isinstance(value, str):
        raise DurationError(f"expected a duration ({_EXAMPLES}), got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise DurationError(f"empty duration ({_EXAMPLES})")
    if len(text) > 40:
        raise DurationError(f"invalid duration {_shown(text)} ({_EXAMPLES})")
    if text.isdigit():
        return _bounded(int(text))
    total = 0
    position = 0
    previous_unit_size: int | None = None
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        number, unit = match.groups()
        size = _UNITS.get(unit)
        if size is None:
            raise DurationError(
                f"invalid duration {_shown(text)}: unknown unit {unit!r} (use d, h, m or s; "
                f"{_EXAMPLES})"
            )
        if previous_unit_size is not None and size >= previous_unit_size:
            raise DurationError(
                f"invalid duration {_shown(text)}: write units largest first and each once "
                f"({_EXAMPLES})"
            )
        previous_unit_size = size
        total += int(number) * size
        position = match.end()
    if position != len(text):
        if text.startswith("-"):
            raise DurationError(f"a duration cannot be negative ({_EXAMPLES})")
        raise DurationError(f"invalid duration {_shown(text)} ({_EXAMPLES})")
    return _bounded(total)


def _bounded(seconds: int) -> timedelta:
    if seconds > _MAX_SECONDS:
        raise DurationError("duration is too long (at most 100 years)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest form parse_duration reads back: timedelta(hours=36) -> "1d12h"."""
    seconds = int(value.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-value)
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_elapsed(seconds: float | timedelta) -> str:
    """A measured duration for people, in the config's syntax: whole seconds (truncated), whole
    minutes from an hour on: 0.4s, 42s, 1m19s, 2h5m, 1d3h. Below a second one decimal is kept,
    since "0s" would hide that something took time at all."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if abs(seconds) < 1:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if abs(whole) >= 3600:
        whole -= whole % 60 if whole > 0 else -(-whole % 60)
    return format_duration(timedelta(seconds=whole))


_IEC = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(size: int | float) -> str:
    """A byte count for people, in IEC units with one decimal: 512B, 1.5KiB, 1.4GiB."""
    if size < 1024:
        return f"{int(size)}B"
    value = float(size)
    for unit in _IEC:
        value /= 1024
        if value < 1024 or unit == _IEC[-1]:
            break
    return f"{value:.1f}{unit}"


def parse_size(value: str | int) -> int:
    """Parse "16MiB", "512KiB", "10MB" or a number of bytes into a number of bytes."""
    if isinstance(value, bool):
        raise DurationError("expected a size such as 16MiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise DurationError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise DurationError(f"expected a size such as 16MiB, got {type(value).__name__}")
    match = _SIZE.fullmatch(value.strip()) if len(value) <= 40 else None
    if match is None:
        raise DurationError(
            f"invalid size {_shown(value)} (e.g. 16MiB, 512KiB or a number of bytes)"
        )
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise DurationError(
            f"invalid size {_shown(value)}: unknown unit {unit!r} "
            "(use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
        )
    return int(number) * multiplier
