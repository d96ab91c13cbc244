"""Issue 15 point 4 for PostgreSQL, against the real PostgreSQL 15: the built-in checks a restore
test runs are taken inside the backup's own snapshot, compared with the restored copy, and a
difference fails the test naming the object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from drd.strategies.postgres import PostgresOptions, PostgresStrategy
from tests.support.pg import PgDatabaseFactory

pytestmark = pytest.mark.integration


def make_strategy(dsn: str, **extra: Any) -> PostgresStrategy:
    return PostgresStrategy(PostgresOptions(name="db", kind="postgres", dsn=dsn, **extra))


async def drain(it: AsyncIterator[bytes]) -> int:
    return sum([len(chunk) async for chunk in it])


async def test_the_plans_queries_run_with_the_sources_search_path(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    """The schema fingerprint sets search_path=pg_catalog for itself: a "matches the source"
    query taken after it, naming a table without its schema, still finds the table."""
    source = pg_database_factory("drdt_path")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)")
        conn.execute("INSERT INTO ledger SELECT g, g * 1.5 FROM generate_series(1, 40) g")
    strategy = make_strategy(source.dsn)
    strategy.capture_queries = {"q-ledger": "SELECT sum(amount) FROM ledger"}
    await drain(strategy.dump())
    captured = strategy.restore_metadata()["statistics"]["captured"]
    assert captured == {"q-ledger": {"value": "1230.0"}}
