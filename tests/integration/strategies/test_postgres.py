"""PostgresStrategy against the real local PostgreSQL 15: dump, restore, and every failure path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from drd.errors import IntegrityError, MissingRoles, RestoreError, SourceError, TargetExists
from drd.strategies import get_strategy
from drd.strategies._subprocess import ToolError, feed_stdin, stream_stdout
from drd.strategies.postgres import PostgresOptions, PostgresStrategy, staging_name
from tests.support.pg import (
    ADMIN_DSN,
    PgDatabase,
    PgDatabaseFactory,
    database_exists,
    database_fingerprint,
    databases_like,
    dsn_for,
    populate_rich_database,
)

pytestmark = pytest.mark.integration


def make_strategy(dsn: str, **extra: Any) -> PostgresStrategy:
    return PostgresStrategy(PostgresOptions(name="db", kind="postgres", dsn=dsn, **extra))


def child_processes(name: str) -> list[int]:
    """PIDs of this process's children whose command name is `name`."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and comm == name:
            found.append(int(entry))
    return found


def staging_leftovers(target: str) -> list[str]:
    return databases_like(target + "\\_drd\\_restoring\\_%")


async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in it]


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def test_registry_and_options() -> None:
    assert get_strategy("postgres") is PostgresStrategy
    opts = PostgresOptions(name="db", kind="postgres", dsn="postgresql://u:secretpw@h/x")
    assert "secretpw" not in repr(opts)
    with pytest.raises(ValueError):
        PostgresOptions(name="db", kind="postgres", dsn="x", unknown=1)  # type: ignore[call-arg]
    assert len(staging_name("é" * 40).encode()) <= 63


async def test_round_trip_piped(pg_database_factory: PgDatabaseFactory) -> None:
    source = pg_database_factory("drdt_src")
    counts = populate_rich_database(source.dsn, rows=200_000)
    assert sum(counts.values()) >= 200_000
    target = pg_database_factory.reserve("drdt_dst")
    strategy = make_strategy(source.dsn)

    dump = strategy.dump()
    try:
        # The dump generator feeds restore() directly; no metadata is needed for that.
        outcome = await PostgresStrategy.restore(dump, target.dsn, {})
    finally:
        await dump.aclose()

    assert database_fingerprint(target.dsn) == database_fingerprint(source.dsn)
    assert outcome.details["database"] == target.name
    assert outcome.details["tables"] == 7
    assert outcome.details["owners"] == "kept"
    assert outcome.details["bytes"] > 10 * 2**20
    assert "password" not in outcome.target
    assert staging_leftovers(target.name) == []

    meta = strategy.restore_metadata()
    assert meta["format"] == "pg_dump-custom"
    assert meta["pg_dump_version"].startswith("15.")
    assert meta["server_version"].startswith("15.")
    assert meta["database"] == source.name
    assert meta["encoding"] == "UTF8"
    assert "postgres" in meta["roles"]
    assert meta["dump_bytes"] == outcome.details["bytes"]


async def test_round_trip_with_metadata_settings_and_roles(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    role = f"drdt_role_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    source = pg_database_factory("drdt_src")
    target = pg_database_factory.reserve("drdt_dst")
    scratch = pg_database_factory.reserve("drdt_dst")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
        conn.execute(f"ALTER DATABASE \"{source.name}\" SET search_path = 'Mixed Case', public")
        conn.execute(f"COMMENT ON DATABASE \"{source.name}\" IS 'Zürich / 東京'")
    try:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            conn.execute('CREATE SCHEMA "Mixed Case"')
            conn.execute('CREATE TABLE "Mixed Case".t (id int PRIMARY KEY, v text)')
            conn.execute(
                "INSERT INTO \"Mixed Case\".t SELECT g, 'ü' || g FROM generate_series(1, 100) g"
            )
            conn.execute(f'ALTER TABLE "Mixed Case".t OWNER TO "{role}"')
            conn.execute(f'GRANT SELECT ON "Mixed Case".t TO "{role}"')
        strategy = make_strategy(source.dsn, exclude_tables=["public.nothing"])
        chunks = await collect(strategy.dump())
        meta = strategy.restore_metadata()
        assert role in meta["roles"]
        assert meta["database_settings"] == ['search_path="Mixed Case", public']

        outcome = await PostgresStrategy.restore(replay(chunks), target.dsn, meta)
        assert outcome.details["owners"] == "kept"
        assert database_fingerprint(target.dsn) == database_fingerprint(source.dsn)
        with psycopg.connect(target.dsn, autocommit=True) as conn:
            # the database setting came back: "t" resolves through search_path
            row = conn.execute("SELECT count(*) FROM t").fetchone()
            assert row == (100,)
            comment = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = current_database()"
            ).fetchone()
            assert comment == ("Zürich / 東京",)

        # A server without one of the roles: the restore stops before creating anything,
        # naming the role and what the backup uses it for.
        missing_role = f"{role}_gone"
        uses = {**meta["role_uses"], missing_role: ["owner", "privileges"]}
        meta_missing = {**meta, "roles": sorted(uses), "role_uses": uses}
        with pytest.raises(MissingRoles) as refused:
            await PostgresStrategy.restore(replay(chunks), scratch.dsn, meta_missing)
        assert refused.value.exit_code == 13
        assert refused.value.roles == {missing_role: ["owner", "privileges"]}
        assert f"{missing_role} (owner, privileges)" in str(refused.value)
        assert "--create-roles" in str(refused.value)
        assert not database_exists(scratch.name) and staging_leftovers(scratch.name) == []

        # Without owners and privileges an owner-only role is not needed: ownership is dropped.
        outcome = await PostgresStrategy.restore(
            replay(chunks), scratch.dsn, meta_missing, owners="drop"
        )
        assert outcome.details["owners"] == "dropped"
        assert outcome.details["missing_roles"] == []
        with psycopg.connect(scratch.dsn, autocommit=True) as conn:
            owner = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
            ).fetchone()
            assert owner == ("postgres",)

        # create_roles: the missing role is created NOLOGIN and ownership is kept.
        created = pg_database_factory.reserve("drdt_dst")
        try:
            outcome = await PostgresStrategy.restore(
                replay(chunks), created.dsn, meta_missing, create_roles=True
            )
            assert outcome.details["owners"] == "kept"
            assert outcome.details["missing_roles"] == [missing_role]
            assert outcome.details["created_roles"] == [missing_role]
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                attributes = conn.execute(
                    "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls "
                    "FROM pg_roles WHERE rolname = %s",
                    (missing_role,),
                ).fetchone()
            assert attributes == (False, False, False, False, False)
        finally:
            pg_database_factory.cleanup()
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{missing_role}"')
    finally:
        pg_database_factory.cleanup()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


async def test_existing_target_refused_and_untouched(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_src")
    populate_rich_database(source.dsn, rows=1_000)
    target = pg_database_factory("drdt_dst")
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE marker (v text)")
        conn.execute("INSERT INTO marker VALUES ('keep me')")
    before = database_fingerprint(target.dsn)

    strategy = make_strategy(source.dsn)
    chunks = await collect(strategy.dump())
    with pytest.raises(TargetExists):
        await PostgresStrategy.restore(replay(chunks), target.dsn, strategy.restore_metadata())

    assert database_fingerprint(target.dsn) == before
    assert staging_leftovers(target.name) == []


async def test_integrity_error_mid_stream_leaves_nothing(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_src")
    populate_rich_database(source.dsn, rows=50_000)
    target = pg_database_factory.reserve("drdt_dst")
    strategy = make_strategy(source.dsn)
    chunks = await collect(strategy.dump())
    assert len(chunks) >= 4

    async def tampered() -> AsyncIterator[bytes]:
        for c in chunks[: len(chunks) // 2]:
            yield c
        raise IntegrityError("segment 7 failed authentication")

    with pytest.raises(IntegrityError, match="segment 7"):
        await PostgresStrategy.restore(tampered(), target.dsn, strategy.restore_metadata())
    assert not database_exists(target.name)
    assert staging_leftovers(target.name) == []
    assert child_processes("pg_restore") == []


async def test_truncated_stream_is_a_restore_error(
    pg_database_factory: PgDatabaseFactory,
) -> None:
    source = pg_database_factory("drdt_src")
    populate_rich_database(source.dsn, rows=20_000)
    target = pg_database_factory.reserve("drdt_dst")
    strategy = make_strategy(source.dsn)
    chunks = await collect(strategy.dump())
    truncated = [*chunks[:-1], chunks[-1][: len(chunks[-1]) // 2]]

    with pytest.raises(RestoreError, match="pg_restore") as err:
        await PostgresStrategy.restore(replay(truncated), target.dsn, strategy.restore_metadata())
    assert target.name in str(err.value)
    assert not database_exists(target.name)
    assert staging_leftovers(target.name) == []


async def test_cancelled_restore_leaves_nothing(pg_database_factory: PgDatabaseFactory) -> None:
    source = pg_database_factory("drdt_src")
    populate_rich_database(source.dsn, rows=20_000)
    target = pg_database_factory.reserve("drdt_dst")
    strategy = make_strategy(source.dsn)
    chunks = await collect(strategy.dump())
    fed = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield chunks[0]
        fed.set()
        await asyncio.sleep(3600)
        yield chunks[1]

    task = asyncio.ensure_future(
        PostgresStrategy.restore(stalls(), target.dsn, strategy.restore_metadata())
    )
    await asyncio.wait_for(fed.wait(), 30)
    await asyncio.sleep(0.2)
    assert staging_leftovers(target.name) != []  # the restore is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not database_exists(target.name)
    assert staging_leftovers(target.name) == []
    assert child_processes("pg_restore") == []


async def test_pg_dump_failure_is_source_error_without_password() -> None:
    dsn = dsn_for("drdt_no_such_database_x", password="secretpw")
    strategy = make_strategy(dsn)
    with pytest.raises(SourceError) as err:
        await collect(strategy.dump())
    message = str(err.value)
    assert "pg_dump" in message
    assert "drdt_no_such_database_x" in message  # the tool's own stderr is in it
    assert "secretpw" not in message
    assert "secretpw" not in repr(err.value)
    with pytest.raises(RuntimeError):
        strategy.restore_metadata()


async def test_bad_pg_bin_dir_is_source_error(tmp_path: Any) -> None:
    strategy = make_strategy(dsn_for("postgres"), pg_bin_dir=str(tmp_path))
    with pytest.raises(SourceError, match="no working pg_dump"):
        await collect(strategy.dump())


async def test_aclose_mid_stream_stops_pg_dump(pg_database_factory: PgDatabaseFactory) -> None:
    source = pg_database_factory("drdt_src")
    populate_rich_database(source.dsn, rows=50_000)
    # trust auth ignores the password; it is there to check where it travels
    strategy = make_strategy(dsn_for(source.name, password="secretpw"))

    dump = strategy.dump()
    first = await anext(dump)
    assert len(first) == 1 << 20
    (pid,) = child_processes("pg_dump")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert b"--format=custom" in argv and b"--compress=0" in argv
    assert not any(b"secretpw" in arg for arg in argv)  # not visible in `ps`
    assert b"PGPASSWORD=secretpw" in environ
    assert f"--dbname=dbname={source.name}".encode() in argv
    await dump.aclose()
    assert child_processes("pg_dump") == []

    # ... and its server session goes away too.
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (source.name,)
            ).fetchone()
        if row == (0,) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert row == (0,)
    with contextlib.suppress(StopAsyncIteration):
        await anext(dump)


async def test_exclude_tables(pg_db: PgDatabase, pg_database_factory: PgDatabaseFactory) -> None:
    populate_rich_database(pg_db.dsn, rows=2_000)
    target = pg_database_factory.reserve("drdt_dst")
    strategy = make_strategy(pg_db.dsn, exclude_tables=["inventory.items", '"Mixed Case".*'])
    chunks = await collect(strategy.dump())
    await PostgresStrategy.restore(replay(chunks), target.dsn, strategy.restore_metadata())
    restored = database_fingerprint(target.dsn)["tables"]
    assert "inventory.items" not in restored
    assert "Mixed Case.Odd Table" not in restored
    assert restored["sales.orders"] == database_fingerprint(pg_db.dsn)["tables"]["sales.orders"]


# -- the child-process helper pg_dump and pg_restore run through (drd.strategies._subprocess) ------


async def test_stream_stdout_withholds_the_last_chunk_of_a_failed_child() -> None:
    script = (
        "head -c 2500000 /dev/zero; echo first >&2; head -c 20000 /dev/zero >&2; "
        "echo oops >&2; exit 3"
    )
    got: list[bytes] = []
    with pytest.raises(ToolError) as err:
        async for chunk in stream_stdout(["sh", "-c", script], dict(os.environ)):
            got.append(chunk)
    assert [len(c) for c in got] == [1 << 20, 1 << 20]  # the 0.4 MiB tail never came out
    assert err.value.returncode == 3
    assert err.value.stderr_tail.endswith("oops")
    assert len(err.value.stderr_tail) <= 8192  # bounded
    assert "first" not in err.value.stderr_tail


_PATTERN_SCRIPT = (
    "import sys\nfor i in range(150):\n    sys.stdout.buffer.write(bytes([i % 251]) * 70001)\n"
)


@pytest.mark.parametrize("consumer_delay", [0.0, 0.01])
async def test_stream_stdout_hands_on_every_byte_in_order_at_any_pace(
    consumer_delay: float,
) -> None:
    """A fast consumer gets chunks joined from small reads; a slow one (the pipe fills) gets
    whole reads handed on; both get exactly the child's bytes, in full chunks but the last."""
    got: list[bytes] = []
    async for chunk in stream_stdout([sys.executable, "-c", _PATTERN_SCRIPT], dict(os.environ)):
        got.append(chunk)
        await asyncio.sleep(consumer_delay)
    assert b"".join(got) == b"".join(bytes([i % 251]) * 70001 for i in range(150))
    assert {len(c) for c in got[:-1]} == {1 << 20}


async def test_stream_stdout_closed_early_kills_an_endless_child() -> None:
    stream = stream_stdout(["yes", "drd"], dict(os.environ), chunk_size=1 << 16)
    for _ in range(3):
        assert (await anext(stream)).startswith(b"drd\n")
    await asyncio.sleep(0.2)  # the reader pauses: far more than its high-water mark is ready
    assert len(child_processes("yes")) == 1
    started = time.monotonic()
    await stream.aclose()  # kills and reaps `yes`, which is blocked on a full pipe
    assert time.monotonic() - started < 10
    assert child_processes("yes") == []  # gone, not even a zombie


async def test_feed_stdin_consumes_everything_even_if_the_child_stops_reading() -> None:
    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(20):
            consumed += 1
            yield b"x" * (1 << 20)

    await feed_stdin(["sh", "-c", "head -c 10 >/dev/null"], dict(os.environ), chunks())
    assert consumed == 20

    with pytest.raises(ToolError, match="status 2: bad"):
        await feed_stdin(["sh", "-c", "echo bad >&2; exit 2"], dict(os.environ), chunks())
    with pytest.raises(ToolError, match="could not be started"):
        await feed_stdin(["/nonexistent/tool"], dict(os.environ), chunks())


def _compression_of_wide_values(dsn: str) -> set[str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT DISTINCT pg_column_compression(body) FROM wide").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(
    ("toast_compression", "extra", "expected", "reported"),
    [
        ("lz4", {}, "lz4", "lz4"),
        ("server", {}, "pglz", "server default"),
        # The DSN's own session options win over drd's choice.
        (
            "lz4",
            {"options": "-c default_toast_compression=pglz"},
            "pglz",
            "as the connection options set",
        ),
    ],
)
async def test_restore_toast_compression(
    pg_database_factory: PgDatabaseFactory,
    toast_compression: Any,
    extra: dict[str, str],
    expected: str,
    reported: str,
) -> None:
    source = pg_database_factory("drdt_toast")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        lz4 = conn.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()
        assert lz4 == (True,), "the test server (Debian's PostgreSQL 15) is built with lz4"
        conn.execute("CREATE TABLE wide (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO wide SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 50) g"
        )
    assert _compression_of_wide_values(source.dsn) == {"pglz"}
    target = pg_database_factory.reserve("drdt_toast_dst")

    dump = make_strategy(source.dsn).dump()
    try:
        outcome = await PostgresStrategy.restore(
            dump,
            dsn_for(target.name, **extra),
            {},
            toast_compression=toast_compression,
        )
    finally:
        await dump.aclose()

    assert outcome.details["toast_compression"] == reported
    assert _compression_of_wide_values(target.dsn) == {expected}
    assert database_fingerprint(target.dsn) == database_fingerprint(source.dsn)
