"""Field types shared by the pydantic models of drd's files (drd.yaml, plans, source options,
restore tests), and the rules for naming where a secret comes from.

A foundation module: it imports only drd.errors, drd.durations and third-party libraries, so
that every layer can use it.

Field types: `Name` (plan, source and region names), `Duration` / `PositiveDuration` ("90s",
"6h", "1d12h" or seconds), `Size` ("16MiB", "512KiB" or bytes), `Day` (YYYY-MM-DD) and
`NonEmptyStr`. A model validator that relates fields raises `rule(field, message)`, which
names the field the error is about (drd.config reports it at that field's line).

Secret names: a secret is never written in a file, only where it is read from at run time, as a
`{source, name}` pair: `env` (an environment variable) or `credential` (a systemd credential)
take a name, the other sources (stdin, anonymous) none. `secret_name_problem` is the rule.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from drd.durations import parse_duration, parse_size

# --------------------------------------------------------------------------------------------
# Field types

#: plan, source and region names: [a-z0-9][a-z0-9_-]{0,62}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def rule(field_path: str, message: str) -> PydanticCustomError:
    """The error a model validator raises about one of its fields ("min_copies",
    "credentials.source"): the loader reports it at that field's line."""
    return PydanticCustomError("drd_rule", message, {"drd_field": field_path})


def _to_duration(value: Any) -> timedelta:
    return parse_duration(value)


def _to_size(value: Any) -> int:
    return parse_size(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _to_date(value: Any) -> date:
    parsed = as_date(value)
    if parsed is None:
        raise ValueError("expected a date written YYYY-MM-DD")
    return parsed


def as_date(value: Any) -> date | None:
    """A date (not a date and time) or a YYYY-MM-DD string as a date; None for anything else."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
#: "90s", "30m", "6h", "14d", "1d12h", or an integer number of seconds
Duration = Annotated[timedelta, BeforeValidator(_to_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_positive)]
#: "16MiB", "512KiB", "10MB", or an integer number of bytes
Size = Annotated[int, BeforeValidator(_to_size)]
Day = Annotated[date, BeforeValidator(_to_date)]
NonEmptyStr = Annotated[str, Field(min_length=1)]

# --------------------------------------------------------------------------------------------
# Where a secret comes from

#: the secret sources that take a name: the pattern of the name, what it is not when it does
#: not match, what it names, and the characters it may have
_NAMED_SOURCES: dict[str, tuple[re.Pattern[str], str, str, str]] = {
    "env": (
        re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}"),
        "not an environment variable name",
        "the environment variable to read",
        "letters, digits and '_'",
    ),
    "credential": (
        re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,254}"),
        "not a credential name",
        "the systemd credential to read",
        "letters, digits, '_', '-', '.' and '@'",
    ),
}


def secret_name_problem(source: str, name: str | None, *, explain: bool = False) -> str | None:
    """What is wrong with `name` as the name of a secret read from `source`, or None.

    env and credential need a name (an environment variable's, a systemd credential's); every
    other source takes none. `explain` adds what the name is for or may hold: "field required
    with source: env (the environment variable to read)" instead of "field required with
    source: env"."""
    named = _NAMED_SOURCES.get(source)
    if named is None:
        return None if name is None else f"not used with source: {source}"
    pattern, mismatch, purpose, characters = named
    if name is None:
        return f"field required with source: {source}" + (f" ({purpose})" if explain else "")
    if not pattern.fullmatch(name):
        return mismatch + (f" ({characters})" if explain else "")
    return None
