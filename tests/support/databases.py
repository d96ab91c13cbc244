"""One shape for the database factories of every engine the tests use (PostgreSQL, MariaDB):
uniquely named databases, made or only reserved, and every one dropped at teardown with the
staging databases a failed restore may have left beside it."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Generic, TypeVar

D = TypeVar("D")

#: what drd names a restore's staging database: `<target>_drd_restoring_<random>`
STAGING_LIKE = "\\_drd\\_restoring\\_%"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


class DatabaseFactory(Generic[D]):
    """`factory()` makes a database, `factory.reserve()` only names one (a restore target); both
    are dropped by `cleanup()`. An engine gives its own create, drop, listing and handle."""

    def __init__(
        self,
        *,
        prefix: str,
        create: Callable[[str], object],
        drop: Callable[[str], object],
        like: Callable[[str], list[str]],
        handle: Callable[[str], D],
    ) -> None:
        self._prefix = prefix
        self._create, self._drop, self._like, self._handle = create, drop, like, handle
        self._names: list[str] = []

    def __call__(self, prefix: str | None = None) -> D:
        name = self._name(prefix)
        self._create(name)
        return self._handle(name)

    def reserve(self, prefix: str | None = None) -> D:
        """A unique name that is NOT created, but dropped at teardown (restore targets)."""
        return self._handle(self._name(prefix))

    def _name(self, prefix: str | None) -> str:
        name = unique_name(prefix or self._prefix)
        self._names.append(name)
        return name

    def cleanup(self) -> None:
        for name in reversed(self._names):
            self._drop(name)
            # staging databases named after it, should a test have left one
            for leftover in self._like(name + STAGING_LIKE):
                self._drop(leftover)
        self._names.clear()
