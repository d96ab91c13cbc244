"""Source strategies: how each kind of source is backed up and restored.

The registry maps a plan's `kind:` to its Strategy class. The built-in kinds are listed below by
module and imported only when a plan asks for them, and strategies import their heavy
dependencies lazily too, so that `drd validate` stays fast. Everything a kind can do lives on its
Strategy class (drd.strategies.base): adding a built-in kind is its module(s) here and one line
in `_BUILTIN`; code outside drd asks `register(cls)`. Tests swap kinds in and out for a block
with `registered(...)`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import TypeVar

from drd.strategies.base import AnyStrategy, RestoreOutcome, SourceOptions, Strategy

#: the built-in kinds: kind -> "module:class", imported on first use
_BUILTIN: dict[str, str] = {
    "postgres": "drd.strategies.postgres:PostgresStrategy",
    "postgres-physical": "drd.strategies.postgres_physical:PostgresPhysicalStrategy",
    "sqlite": "drd.strategies.sqlite:SqliteStrategy",
    "files": "drd.strategies.files:FilesStrategy",
    "mysql": "drd.strategies.mysql:MysqlStrategy",
    "gcs-bucket": "drd.strategies.gcs_bucket:GcsBucketStrategy",
    "cloudsql": "drd.strategies.cloudsql:CloudSqlStrategy",
}

#: every kind known now: its class, or where to import it from (replaced by the class once
#: imported)
_kinds: dict[str, type[AnyStrategy] | str] = dict(_BUILTIN)

S = TypeVar("S", bound=type[AnyStrategy])


def _check(cls: type[AnyStrategy]) -> None:
    kind = getattr(cls, "kind", None)
    options = getattr(cls, "Options", None)
    if not isinstance(cls, type) or not issubclass(cls, Strategy):
        raise TypeError(f"{cls!r} is not a Strategy")
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} has no `kind`")
    if not isinstance(options, type) or not issubclass(options, SourceOptions):
        raise TypeError(f"{cls.__name__}.Options is not a SourceOptions model")


def register(cls: S) -> S:
    """Make `cls` the strategy of the kind it names (cls.kind); usable as a class decorator.
    A kind is registered once: another class for a known kind is refused (ValueError)."""
    _check(cls)
    known = _kinds.get(cls.kind)
    if known is not None and known is not cls:
        raise ValueError(f"source kind {cls.kind!r} is already registered")
    _kinds[cls.kind] = cls
    return cls


@contextlib.contextmanager
def registered(*classes: type[AnyStrategy], only: bool = False) -> Iterator[None]:
    """For tests: within the block, `classes` are the strategies of their kinds (replacing a
    registered class of the same kind); with only=True they are the only kinds known. The
    registry is as it was afterwards, however the block ends."""
    for cls in classes:
        _check(cls)
    saved = dict(_kinds)
    if only:
        _kinds.clear()
    _kinds.update({cls.kind: cls for cls in classes})
    try:
        yield
    finally:
        _kinds.clear()
        _kinds.update(saved)


def kinds() -> list[str]:
    """The known kinds, sorted; nothing is imported."""
    return sorted(_kinds)


def _resolve(kind: str) -> type[AnyStrategy]:
    entry = _kinds[kind]
    if not isinstance(entry, str):
        return entry
    module, _, name = entry.partition(":")
    cls: type[AnyStrategy] = getattr(importlib.import_module(module), name)
    if cls.kind != kind:
        raise RuntimeError(f"{entry} is the strategy of {cls.kind!r}, not {kind!r}")
    if _kinds.get(kind) == entry:  # the import did not register something else meanwhile
        _kinds[kind] = cls
    return cls


def registry() -> dict[str, type[AnyStrategy]]:
    """Every known kind and its strategy (imports them all)."""
    return {kind: _resolve(kind) for kind in list(_kinds)}


def get_strategy(kind: str) -> type[AnyStrategy]:
    """The strategy of `kind` (importing only that one); ValueError for an unknown kind."""
    if kind not in _kinds:
        raise ValueError(f"unknown source kind {kind!r} (known: {', '.join(kinds())})")
    return _resolve(kind)


__all__ = [
    "RestoreOutcome",
    "SourceOptions",
    "Strategy",
    "get_strategy",
    "kinds",
    "register",
    "registered",
    "registry",
]
