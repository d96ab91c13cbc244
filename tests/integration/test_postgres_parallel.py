"""Issue 19 point 1, against the real PostgreSQL 15: the parallel logical format
(`format: parallel`, drd.strategies.postgres_parallel_dump / _restore).

- the rich estate (tests/support/pg_estate.py), backed up in the parallel format and restored
  through `drd restore-test`, passes every built-in check in both scratch kinds, with the same
  figures as the single-stream format;
- a copy changed after a parallel restore still fails the checks (they compare, they do not
  pass by default);
- a table bigger than every buffer is dumped and restored by a process whose peak memory stays
  far below the table's size;
- a damaged or truncated parallel stream fails the restore and leaves no database behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drd.errors import RestoreError
from drd.strategies import postgres_frames as frames
from drd.strategies.postgres import PARALLEL_FORMAT, PostgresOptions, PostgresStrategy
from drd.verify.scratch.registry import sweep_leftovers
from tests.support.drdenv import DrdEnv
from tests.support.pg import ADMIN_DSN, PgDatabaseFactory, databases_like
from tests.support.pg_estate import ODD, TICKETS, Estate

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


@pytest.fixture
def swept(tmp_path: Path) -> Iterator[DrdEnv]:
    env = DrdEnv(tmp_path)
    yield env
    import asyncio

    asyncio.run(sweep_leftovers(tmp_path / "state", [SCRATCH_SERVER]))


def parallel(dsn: str, jobs: int = 3) -> PostgresStrategy:
    return PostgresStrategy(
        PostgresOptions(name="db", kind="postgres", dsn=dsn, format="parallel", jobs=jobs)
    )


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_the_estate_in_the_parallel_format_passes_every_builtin_check(
    estate: Estate, swept: DrdEnv
) -> None:
    env = swept
    env.add_local_region("a")
    env.add_local_region("b")
    source = {"kind": "postgres", "dsn": estate.db.dsn, "format": "parallel", "jobs": 3}
    env.add_plan(
        "estate",
        [{"name": "db", **source}, {"name": "db-server", **source}],
        restore_test={
            "sample_rows": 1000,
            "scratch": {"db-server": {"kind": "postgres-server", "dsn": SCRATCH_SERVER}},
        },
    )
    env.ok("backup", "estate")
    proc = env.ok("restore-test", "estate", "--json", timeout=300)
    reports = {r["source"]: r for r in json.loads(proc.stdout)["reports"]}
    assert set(reports) == {"db", "db-server"}
    for source_name, report in reports.items():
        checks = {c["name"]: c for c in report["checks"]}
        assert list(checks) == BUILTINS, source_name
        assert report["result"] == "passed", [
            (c["name"], c["detail"]) for c in report["checks"] if c["status"] == "failed"
        ]
        assert report["restore"]["jobs"] == 3
        coverage = {name: c["coverage"] for name, c in checks.items()}
        # The same figures as the single-stream format's test (test_postgres_proof.py).
        assert coverage["row_counts"] == "9 tables, 13553 rows"
        assert coverage["sequences"] == "4 sequences"
        assert coverage["large_objects"] == "3 large objects, 26004 bytes"
        for part in ("policies 3", "materialized views 2", "triggers 3", "domains 2"):
            assert part in coverage["inventory"], coverage["inventory"]
        assert "4 whole (1553 rows), 3 sampled (3000 of 6000 rows)" in coverage["content"]
    db_grants = next(c for c in reports["db"]["checks"] if c["name"] == "grants")
    assert db_grants["status"] == "passed"


async def test_a_changed_parallel_copy_fails_the_checks(
    estate: Estate, pg_database_factory: PgDatabaseFactory
) -> None:
    from datetime import UTC, datetime

    from drd.restore_tests.runner import CheckTarget, run_checks

    strategy = parallel(estate.db.dsn)
    chunks = [chunk async for chunk in strategy.dump()]
    metadata = strategy.restore_metadata()
    assert metadata["format"] == PARALLEL_FORMAT and metadata["parallel_tables"] >= 9
    assert TICKETS in metadata["statistics"]["sequences"]
    target = pg_database_factory.reserve("drdt_par_changed")
    outcome = await PostgresStrategy.restore(replay(chunks), target.dsn, metadata)
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(f"SELECT setval('{TICKETS}', 999999)")
        conn.execute(f'DELETE FROM {ODD} WHERE "n n" = 3')
    results = await run_checks(
        CheckTarget(
            "postgres",
            target.dsn,
            metadata,
            datetime.now(UTC),
            server_major=15,
            restore_details=outcome.details,
        ),
        [],
    )
    failing = {r.name for r in results if r.fails_test}
    assert {"sequences", "row_counts"} <= failing, [(r.name, r.detail) for r in results]


_BOUNDED = """
import asyncio, json, sys
from drd.strategies.postgres import PostgresOptions, PostgresStrategy

source, target, path = sys.argv[1:4]

def hwm_kib():
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's peak at fork
    # across exec (the pytest process, hundreds of MiB deep into a full run).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

async def main():
    strategy = PostgresStrategy(PostgresOptions(
        name="db", kind="postgres", dsn=source, format="parallel", jobs=2))
    size = 0
    with open(path, "wb") as out:
        async for chunk in strategy.dump():
            out.write(chunk)
            size += len(chunk)
    dumped = hwm_kib()
    async def chunks():
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                yield piece
    outcome = await PostgresStrategy.restore(chunks(), target, strategy.restore_metadata())
    peak = hwm_kib()
    print(json.dumps({"bytes": size, "dump_kib": dumped, "peak_kib": peak,
                      "tables": outcome.details["tables"]}))

asyncio.run(main())
"""


def _peak_memory(
    pg_database_factory: PgDatabaseFactory, tmp_path: Path, rows: int
) -> dict[str, int]:
    """Dump and restore a database with one table of `rows` rows (232 bytes of text each) in
    a child process; its figures (bytes dumped, peak RSS in KiB)."""
    source = pg_database_factory(f"drdt_par_big{rows}")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, filler text)")
        conn.execute(
            "INSERT INTO big SELECT g, md5(g::text) || repeat('x', 200) "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("CREATE TABLE small (id int)")
        conn.execute("INSERT INTO small SELECT generate_series(1, 10)")
    target = pg_database_factory.reserve(f"drdt_par_big{rows}_copy")
    proc = subprocess.run(
        [sys.executable, "-c", _BOUNDED, source.dsn, target.dsn, str(tmp_path / f"{rows}")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(target.dsn) as conn:
        row = conn.execute("SELECT count(*), sum(length(filler)) FROM big").fetchone()
    assert row == (rows, rows * 232)
    figures: dict[str, int] = json.loads(proc.stdout)
    pg_database_factory.cleanup()
    return figures


def test_a_table_bigger_than_every_buffer_keeps_memory_bounded(
    pg_database_factory: PgDatabaseFactory, tmp_path: Path
) -> None:
    small = _peak_memory(pg_database_factory, tmp_path, 250_000)
    big = _peak_memory(pg_database_factory, tmp_path, 750_000)
    grown = big["bytes"] - small["bytes"]
    assert grown > 100 << 20, (small, big)  # far more than every buffer together
    # Peak RSS of the whole process (interpreter and libraries included) does not follow the
    # table: three times the rows, at most a few MiB more (allocator noise).
    assert (big["peak_kib"] - small["peak_kib"]) * 1024 < grown // 10, (small, big)
    assert big["peak_kib"] * 1024 < big["bytes"], (small, big)  # the table never held whole


async def test_a_truncated_or_damaged_parallel_stream_leaves_nothing(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_par_cut")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, repeat('v', 100) FROM generate_series(1, 5000) g")
        conn.execute("CREATE TABLE u (id int)")
    strategy = parallel(source.dsn, jobs=2)
    chunks = [chunk async for chunk in strategy.dump()]
    metadata = strategy.restore_metadata()
    whole = b"".join(chunks)
    cut = whole[: _first_table_data(whole) + 100]  # inside the first rows of a table
    damaged = frames.MAGIC + b"X" + whole[len(frames.MAGIC) + 1 :]
    for stream, why in ((cut, "ended"), (damaged, "unknown frame kind")):
        target = pg_database_factory.reserve("drdt_par_cut_copy")
        with pytest.raises(RestoreError, match=why):
            await PostgresStrategy.restore(replay([stream]), target.dsn, metadata)
        assert databases_like(f"{target.name}%") == []


def _first_table_data(stream: bytes) -> int:
    offset = len(frames.MAGIC)
    while stream[offset : offset + 1] != frames.TABLE_DATA:
        offset += 9 + int.from_bytes(stream[offset + 5 : offset + 9], "big")
    return offset


async def test_tables_not_yet_copied_are_locked_against_truncate(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    """TRUNCATE is not MVCC-safe: had it run between the snapshot and a table's COPY, the copy
    would be empty. While the first table is copied, the second one cannot be truncated."""
    source = pg_database_factory("drdt_par_lock")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE first_big (id int, v text)")
        conn.execute(
            "INSERT INTO first_big SELECT g, repeat('v', 300) FROM generate_series(1, 60000) g"
        )
        conn.execute("CREATE TABLE second (id int)")
        conn.execute("INSERT INTO second SELECT generate_series(1, 7)")
        conn.execute("ANALYZE")
    strategy = parallel(source.dsn, jobs=1)
    chunks: list[bytes] = []
    refused = None
    async for chunk in strategy.dump():
        chunks.append(chunk)
        if refused is None and chunk[:1] == frames.TABLE_DATA:
            with psycopg.connect(source.dsn, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '500ms'")
                try:
                    conn.execute("TRUNCATE second")
                    refused = False
                except psycopg.errors.LockNotAvailable:
                    refused = True
    assert refused is True
    target = pg_database_factory.reserve("drdt_par_lock_copy")
    await PostgresStrategy.restore(replay(chunks), target.dsn, strategy.restore_metadata())
    with psycopg.connect(target.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM second").fetchone() == (7,)


async def test_odd_names_in_a_latin1_database_are_copied_once_each(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    """The tables copied in parallel are excluded from pg_dump's data remainder by exact
    patterns: a name with quotes, a space, a pattern character and a LATIN1 letter is loaded
    once, not twice; a table without columns keeps its rows; floats keep every digit; an
    excluded table is left out, as pg_dump leaves it."""
    source = pg_database_factory("drdt_par_latin1")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{source.name}"')
        conn.execute(
            f"CREATE DATABASE \"{source.name}\" TEMPLATE template0 ENCODING 'LATIN1' "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    odd = '"té ""x"" *"'
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        conn.execute(f"CREATE TABLE {odd} (v text, n float8, i interval)")
        conn.execute(f"INSERT INTO {odd} VALUES ('é ü', 0.1::float8 + 0.2::float8, '26 hours')")
        conn.execute("CREATE TABLE nocols ()")
        conn.execute("INSERT INTO nocols DEFAULT VALUES")
        conn.execute("INSERT INTO nocols DEFAULT VALUES")
        conn.execute("CREATE TABLE skipped AS SELECT 1 AS id")
    strategy = PostgresStrategy(
        PostgresOptions(
            name="db",
            kind="postgres",
            dsn=source.dsn,
            format="parallel",
            jobs=2,
            exclude_tables=["skipped"],
        )
    )
    chunks = [chunk async for chunk in strategy.dump()]
    target = pg_database_factory.reserve("drdt_par_latin1_copy")
    await PostgresStrategy.restore(replay(chunks), target.dsn, strategy.restore_metadata())
    with psycopg.connect(target.dsn) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        rows = conn.execute(f"SELECT v, n, i::text FROM {odd}").fetchall()
        assert rows == [("é ü", 0.1 + 0.2, "26:00:00")]
        assert conn.execute("SELECT count(*) FROM nocols").fetchone() == (2,)
        assert conn.execute("SELECT to_regclass('skipped')").fetchone() == (None,)


async def test_a_dump_stopped_midway_leaves_no_session_or_child(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_par_stop")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        for name in ("a", "b", "c"):
            conn.execute(f"CREATE TABLE {name} AS SELECT g AS id, repeat('r', 500) AS v "
                         "FROM generate_series(1, 20000) g")  # fmt: skip
    dump = parallel(source.dsn, jobs=2).dump()
    seen = 0
    async for chunk in dump:
        seen += chunk[:1] == frames.TABLE_DATA
        if seen == 2:
            break
    await dump.aclose()
    # A killed psql's backend ends when it next writes to the closed socket: wait for that.
    sessions: list[Any] = []
    for _ in range(100):
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            sessions = conn.execute(
                "SELECT application_name, state, query FROM pg_stat_activity WHERE datname = %s",
                (source.name,),
            ).fetchall()
        if not sessions:
            break
        time.sleep(0.1)
    assert sessions == []
    children = subprocess.run(
        ["pgrep", "-P", str(os.getpid())], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children == []
