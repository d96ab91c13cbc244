"""Source strategies: how each kind of source is backed up and restored.

The registry maps a plan's `kind:` to its Strategy class. Strategies import their heavy
dependencies lazily so that `drd validate` stays fast.
"""

from __future__ import annotations

from drd.strategies.base import AnyStrategy, RestoreOutcome, SourceOptions, Strategy


def registry() -> dict[str, type[AnyStrategy]]:
    from drd.strategies.cloudsql import CloudSqlStrategy
    from drd.strategies.files import FilesStrategy
    from drd.strategies.gcs_bucket import GcsBucketStrategy
    from drd.strategies.mysql import MysqlStrategy
    from drd.strategies.postgres import PostgresStrategy
    from drd.strategies.postgres_physical import PostgresPhysicalStrategy
    from drd.strategies.sqlite import SqliteStrategy

    return {
        s.kind: s
        for s in (
            PostgresStrategy,
            PostgresPhysicalStrategy,
            SqliteStrategy,
            FilesStrategy,
            MysqlStrategy,
            GcsBucketStrategy,
            CloudSqlStrategy,
        )
    }


def get_strategy(kind: str) -> type[AnyStrategy]:
    try:
        return registry()[kind]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise ValueError(f"unknown source kind {kind!r} (known: {known})") from None


__all__ = ["RestoreOutcome", "SourceOptions", "Strategy", "get_strategy", "registry"]
