"""Issue 15 point 4 for PostgreSQL, against the real PostgreSQL 15: the built-in checks a restore
test runs are taken inside the backup's own snapshot, compared with the restored copy, and a
difference fails the test naming the object.

On a database shaped like a real estate (tests/support/pg_estate.py: roles and grants, odd
identifiers, partitions, materialized views, large objects, RLS policies, extensions, ...):
- through `drd restore-test --json`, every built-in check passes in an ephemeral scratch server
  (owners kept) and on a shared scratch server (owners dropped: grants skipped, saying why), and
  every check says what it compared and what it covered;
- a copy changed after the restore fails each check, naming the object that differs;
- `content: full` digests every row, also of tables without a key; a sampled digest of a big
  table reads its row budget, not the table;
- a backup taken by a role that is not a superuser has every figure (large objects through
  lo_open, not pg_largeobject).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drd.restore_tests.results import CheckResult
from drd.restore_tests.runner import CheckTarget, run_checks
from drd.strategies import postgres_content
from drd.strategies.base import ContentDigest
from drd.strategies.postgres import PostgresOptions, PostgresStrategy
from drd.verify.scratch.registry import sweep_leftovers
from tests.support.drdenv import DrdEnv
from tests.support.pg import ADMIN_DSN, PgDatabaseFactory
from tests.support.pg_estate import ODD, ODD_COLUMN, TICKETS, Estate, q

pytestmark = pytest.mark.integration

SCRATCH_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BUILTINS = [
    "integrity",
    "row_counts",
    "schema",
    "sequences",
    "inventory",
    "large_objects",
    "grants",
    "database",
    "content",
]


def make_strategy(dsn: str, content: ContentDigest | None = None) -> PostgresStrategy:
    strategy = PostgresStrategy(PostgresOptions(name="db", kind="postgres", dsn=dsn))
    if content is not None:
        strategy.content = content
    return strategy


async def drain(it: AsyncIterator[bytes]) -> int:
    return sum([len(chunk) async for chunk in it])


async def backup(strategy: PostgresStrategy) -> tuple[list[bytes], dict[str, Any]]:
    chunks = [chunk async for chunk in strategy.dump()]
    return chunks, strategy.restore_metadata()


async def restore_and_check(
    chunks: list[bytes],
    metadata: dict[str, Any],
    target: str,
    change: Callable[[psycopg.Connection[Any]], None] | None = None,
) -> dict[str, CheckResult]:
    async def replay() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    outcome = await PostgresStrategy.restore(replay(), target, metadata)
    if change is not None:
        with psycopg.connect(target, autocommit=True) as conn:
            change(conn)
    results = await run_checks(
        CheckTarget(
            "postgres",
            target,
            metadata,
            datetime.now(UTC),
            server_major=15,
            restore_details=outcome.details,
        ),
        [],
    )
    return {r.name: r for r in results}


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


@pytest.fixture
def swept(tmp_path: Path) -> Iterator[DrdEnv]:
    env = DrdEnv(tmp_path)
    yield env
    import asyncio

    asyncio.run(sweep_leftovers(tmp_path / "state", [SCRATCH_SERVER]))


def test_an_estate_passes_every_builtin_check_in_both_scratch_kinds(
    estate: Estate,
    swept: DrdEnv,
) -> None:
    env = swept
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "estate",
        [
            {"name": "db", "kind": "postgres", "dsn": estate.db.dsn},
            {"name": "db-server", "kind": "postgres", "dsn": estate.db.dsn},
        ],
        restore_test={
            "sample_rows": 1000,
            "scratch": {"db-server": {"kind": "postgres-server", "dsn": SCRATCH_SERVER}},
        },
    )
    env.ok("backup", "estate")
    proc = env.ok("restore-test", "estate", "--json", timeout=300)
    reports = {r["source"]: r for r in json.loads(proc.stdout)["reports"]}
    for source, report in reports.items():
        checks = {c["name"]: c for c in report["checks"]}
        assert list(checks) == BUILTINS, source
        assert report["result"] == "passed", [
            (c["name"], c["detail"]) for c in report["checks"] if c["status"] == "failed"
        ]
        for check in report["checks"]:
            assert check["compared"], check
            if check["status"] == "passed":
                assert check["coverage"], check
        coverage = {name: c["coverage"] for name, c in checks.items()}
        assert coverage["row_counts"] == "9 tables, 13553 rows"
        assert coverage["sequences"] == "4 sequences"
        assert coverage["large_objects"] == "3 large objects, 26004 bytes"
        for part in ("policies 3", "materialized views 2", "triggers 3", "domains 2"):
            assert part in coverage["inventory"], coverage["inventory"]
        assert coverage["content"].startswith("9 tables: "), coverage["content"]
        assert "4 whole (1553 rows), 3 sampled (3000 of 6000 rows)" in coverage["content"], (
            coverage["content"]
        )
        assert "app.bigheap" in coverage["content"] and "not sampled" in coverage["content"]
    assert reports["db"]["restore"]["owners"] == "kept"
    db_grants = next(c for c in reports["db"]["checks"] if c["name"] == "grants")
    assert db_grants["status"] == "passed" and db_grants["coverage"].startswith("grants ")
    server_grants = next(c for c in reports["db-server"]["checks"] if c["name"] == "grants")
    assert server_grants["status"] == "skipped"
    assert "owners: drop" in server_grants["detail"]


def _tamper(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        f"""
        UPDATE app.accounts SET ratio = ratio + 1e-9 WHERE id = 1;
        DELETE FROM app.audit_log WHERE id = 7;  -- the rule turns it into nothing
        UPDATE {ODD} SET {ODD_COLUMN} = 'changed' WHERE "n n" = 3;
        SELECT setval('{TICKETS}', 1);
        CREATE OR REPLACE FUNCTION app.log_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RETURN NEW; END $$;
        DROP POLICY audit_all ON app.accounts;
        ALTER TABLE app.accounts ENABLE TRIGGER accounts_noop;
        REFRESH MATERIALIZED VIEW app.not_yet;
        ALTER TYPE app.mood ADD VALUE 'angry';
        COMMENT ON COLUMN app.accounts.secret IS 'shown';
        SELECT lo_unlink(doc) FROM app.blobs WHERE id = 2;
        """
    )


async def test_a_changed_copy_fails_each_check_naming_the_object(
    estate: Estate,
    pg_database_factory: PgDatabaseFactory,
) -> None:
    chunks, metadata = await backup(make_strategy(estate.db.dsn, ContentDigest("sampled", 1000)))
    clean = pg_database_factory.reserve("drdt_clean")
    results = await restore_and_check(chunks, metadata, clean.dsn)
    assert all(r.status == "passed" for r in results.values()), {
        n: r.detail for n, r in results.items() if r.status != "passed"
    }

    writer = estate.roles.writer
    changed = pg_database_factory.reserve("drdt_changed")

    def change(conn: psycopg.Connection[Any]) -> None:
        _tamper(conn)
        conn.execute(f"REVOKE SELECT (region) ON app.accounts FROM {q(writer)}")
        conn.execute(f"ALTER DATABASE {q(changed.name)} SET work_mem = '9MB'")
        conn.execute(f"ALTER DATABASE {q(changed.name)} CONNECTION LIMIT 5")

    results = await restore_and_check(chunks, metadata, changed.dsn, change)
    detail = {name: r.detail for name, r in results.items()}
    failing = {name for name, r in results.items() if r.fails_test}
    assert failing == {
        "sequences",
        "inventory",
        "large_objects",
        "grants",
        "database",
        "content",
        "row_counts",
    }, detail
    assert TICKETS in detail["sequences"], detail["sequences"]
    for named in (
        "function app.log_change(): different",
        "policy audit_all on app.accounts: missing",
        "trigger accounts_noop on app.accounts: different",
        "materialized view app.not_yet: different",
        "type app.mood: different",
        "column secret of table app.accounts: different",
    ):
        assert named in detail["inventory"], detail["inventory"]
    assert "column region of app.accounts: missing" in detail["grants"]
    assert "large object" in detail["grants"]  # its owner and ACL went with it
    assert "setting work_mem: different" in detail["database"]
    assert "connection limit: different" in detail["database"]
    # The rule keeps the row deleted above, the trigger adds one: the copy has 51 rows.
    assert "app.accounts: the values of the rows with id from 1 to " in detail["content"]
    assert "app.audit_log: 51 rows in the copy, 50 in the backup" in detail["content"]
    assert results["row_counts"].actual == {"app.audit_log": 51}
    # A big table without a key is not sampled, and the report says so.
    assert ODD not in detail["content"] and ODD in results["content"].coverage
    # The values themselves are never shown: only which object differs.
    report_text = json.dumps([r.as_json() for r in results.values()])
    assert "9MB" not in report_text and "shown" not in detail["inventory"]
    assert "sEcReT" not in json.dumps(metadata)


async def test_content_full_digests_every_row_and_sampled_reads_its_budget(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_big")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, t text, v numeric);"
            "INSERT INTO big SELECT g, md5(g::text) || repeat('x', 40), g / 3.0"
            "  FROM generate_series(1, 600000) g;"
            "CREATE TABLE heap (a int, b text);"
            "INSERT INTO heap SELECT g % 10, 'r' || g FROM generate_series(1, 5000) g;"
            "ANALYZE"
        )
    counts = {"public.big": 600000, "public.heap": 5000}

    async def capture(content: ContentDigest) -> tuple[dict[str, Any], float]:
        async with await psycopg.AsyncConnection.connect(source.dsn) as db:
            started = time.perf_counter()
            found = await postgres_content.capture(db, counts, content)
            return found, time.perf_counter() - started

    sampled, sampled_seconds = await capture(ContentDigest("sampled", 2000))
    full, full_seconds = await capture(ContentDigest("full", 2000))
    big = sampled["tables"]["public.big"]
    assert big["mode"] == "sampled" and big["key"] == ["id"]
    assert sum(r["rows"] for r in big["ranges"]) == 2000
    assert len(big["ranges"]) == postgres_content.RANGES
    firsts = [int(r["first"][0]) for r in big["ranges"]]
    assert firsts[0] == 1 and firsts == sorted(firsts) and firsts[-1] > 300_000  # spread out
    assert sampled["tables"]["public.heap"] == {"mode": "none", "rows": 5000}
    assert full["tables"]["public.big"]["mode"] == "whole"
    assert full["tables"]["public.big"]["rows"] == 600000
    assert full["tables"]["public.heap"]["mode"] == "whole"
    # A range read is an index range scan: the sample costs a fraction of a full digest.
    assert sampled_seconds * 5 < full_seconds, (sampled_seconds, full_seconds)

    # With content: full, a changed row of a table without any key is found.
    chunks, metadata = await backup(make_strategy(source.dsn, ContentDigest("full")))
    copy = pg_database_factory.reserve("drdt_bigcopy")

    def change(conn: psycopg.Connection[Any]) -> None:
        conn.execute("UPDATE heap SET b = 'other' WHERE b = 'r4321'")

    results = await restore_and_check(chunks, metadata, copy.dsn, change)
    assert results["content"].fails_test
    assert "public.heap: the rows' values differ" in results["content"].detail
    assert "public.big" not in results["content"].detail
    assert results["content"].compared == "a digest of every row's values"


async def test_a_backup_by_a_role_that_is_not_superuser_has_every_figure(
    estate: Estate,
    pg_database_factory: PgDatabaseFactory,
) -> None:
    owner = estate.roles.owner
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {q(owner)} LOGIN")
    as_owner = psycopg.conninfo.make_conninfo(estate.db.dsn, user=owner)
    strategy = make_strategy(as_owner)
    chunks, metadata = await backup(strategy)
    stats = metadata["statistics"]
    errors = {k: v for k, v in stats.items() if isinstance(v, dict) and "error" in v}
    assert errors == {}
    assert {p: v for p, v in stats["inventory"].items() if "error" in v} == {}
    assert stats["large_objects"] == {"count": 3, "bytes": "26004"}
    copy = pg_database_factory.reserve("drdt_bynonsuper")
    results = await restore_and_check(chunks, metadata, copy.dsn)
    assert all(r.status == "passed" for r in results.values()), {
        n: r.detail for n, r in results.items() if r.status != "passed"
    }
