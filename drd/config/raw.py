"""Looking into the raw data of a config or plan file (what YAML gave, before any model
validated it): helpers that never trust its shape, and never repeat a value in a message."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def as_list(value: Any) -> list[Any]:
    """`value` if it is a list, else [] (its type is reported elsewhere)."""
    return value if isinstance(value, list) else []


def get_in(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a part is missing or not a mapping."""
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def kind_of(value: Any) -> str:
    """What a YAML value is, for messages ("a list", "null"); never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime):
        return "a date and time"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__
