"""MysqlStrategy against the real local MariaDB 10.11: dump, restore, checks and failure paths."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drd.errors import IntegrityError, RestoreError, SourceError, TargetExists
from drd.strategies import mysql as mysql_mod
from drd.strategies.mysql import MysqlOptions, MysqlStrategy
from tests.support.mariadb import (
    MariaDbFactory,
    database_exists,
    databases_like,
    dump_text,
    mariadb,
    populate_rich_database,
    query,
)
from tests.support.restored import restored_mysql_statistics

pytestmark = pytest.mark.integration


def make_strategy(database: str, **extra: Any) -> MysqlStrategy:
    return MysqlStrategy(
        MysqlOptions(name="db", kind="mysql", user="root", database=database, **extra)
    )


async def dump_all(strategy: MysqlStrategy) -> list[bytes]:
    return [chunk async for chunk in strategy.dump()]


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def leftovers(name: str) -> list[str]:
    return databases_like(name + "\\_drd\\_restoring\\_%")


def children_named(*names: str) -> list[int]:
    me, found = os.getpid(), []
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
        if ppid == me and comm in names:
            found.append(int(entry))
    return found


async def test_round_trip_is_identical(mariadb_factory: MariaDbFactory) -> None:
    source = mariadb_factory("drdm_src")
    counts = populate_rich_database(source.name, rows=5_000)
    strategy = make_strategy(source.name)
    strategy.capture_queries = {
        "customers": "SELECT COUNT(*) FROM customers",
        "blob_digest": "SELECT MD5(GROUP_CONCAT(HEX(payload) ORDER BY id)) FROM blobs",
    }
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    stats = meta["statistics"]
    quoted = {"`" + t.replace("`", "``") + "`": n for t, n in counts.items()}
    assert stats["row_counts"] == quoted
    assert stats["captured"]["customers"] == {"value": str(counts["customers"])}
    assert set(stats["schema"]["parts"]) >= {"tables", "columns", "triggers", "routines", "views"}
    assert meta["tables"]["big_spenders"] == "VIEW"
    assert meta["charset"] == "utf8mb4"

    target = mariadb_factory.reserve("drdm_restored")
    outcome = await MysqlStrategy.restore(replay(chunks), target.url, meta)
    assert outcome.details["rows"] == counts
    assert outcome.details["checks"] == {"row_counts": "ok", "schema": "ok"}
    assert leftovers(target.name) == []
    # Everything: schema, data (non-ASCII text, BLOBs), views, trigger, routines, event.
    assert dump_text(target.name) == dump_text(source.name)
    row = query("SELECT HEX(big) FROM blobs WHERE id = 1", target.name)[0][0]
    assert bytes.fromhex(row) == bytes(range(256))
    cities = {r[0] for r in query("SELECT DISTINCT city FROM customers", target.name)}
    assert {"Zürich", "東京", "🦀 Crabtown"} <= cities
    # The routines and the trigger work in the restored copy.
    assert query("SELECT order_count(1)", target.name) == [["3"]]
    mariadb("INSERT INTO orders (customer_id, amount) VALUES (1, 5)", target.name)
    (what,) = query("SELECT what FROM audit", target.name)
    assert what[0].startswith("order ") and what[0].endswith(" für 1")

    restored = await restored_mysql_statistics(target.url, strategy.capture_queries)
    assert restored["captured"]["blob_digest"] == stats["captured"]["blob_digest"]


async def test_exclude_tables(mariadb_factory: MariaDbFactory) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=100)
    mariadb("CREATE TABLE scratchpad (x INT); INSERT INTO scratchpad VALUES (1)", source.name)
    strategy = make_strategy(source.name, exclude_tables=["scratchpad"])
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    assert "`scratchpad`" not in meta["statistics"]["row_counts"]
    target = mariadb_factory.reserve("drdm_restored")
    await MysqlStrategy.restore(replay(chunks), target.url, meta)
    assert query("SHOW TABLES LIKE 'scratchpad'", target.name) == []


async def test_target_exists_is_refused(mariadb_factory: MariaDbFactory) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=100)
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    existing = mariadb_factory("drdm_existing")
    mariadb("CREATE TABLE keep (x INT); INSERT INTO keep VALUES (42)", existing.name)
    with pytest.raises(TargetExists):
        await MysqlStrategy.restore(replay(chunks), existing.url, strategy.restore_metadata())
    assert query("SELECT x FROM keep", existing.name) == [["42"]]
    assert leftovers(existing.name) == []


async def test_stream_failure_mid_way_leaves_nothing(mariadb_factory: MariaDbFactory) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=5_000)
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    data = b"".join(chunks)
    pieces = [data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024)]
    assert len(pieces) > 4

    async def broken() -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            if i == len(pieces) // 2:
                raise IntegrityError("segment 7 failed authentication")
            yield piece

    target = mariadb_factory.reserve("drdm_restored")
    with pytest.raises(IntegrityError):
        await MysqlStrategy.restore(broken(), target.url, strategy.restore_metadata())
    assert not database_exists(target.name)
    assert leftovers(target.name) == []
    assert children_named("mariadb", "mysql") == []


async def test_bad_sql_and_wrong_counts_leave_nothing(mariadb_factory: MariaDbFactory) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=200)
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()

    target = mariadb_factory.reserve("drdm_restored")
    with pytest.raises(RestoreError, match="ERROR 1064"):
        await MysqlStrategy.restore(replay([*chunks, b"\nTHIS IS NOT SQL;\n"]), target.url, meta)
    assert not database_exists(target.name) and leftovers(target.name) == []

    tampered = {**meta, "statistics": {**meta["statistics"]}}
    tampered["statistics"]["row_counts"] = {**meta["statistics"]["row_counts"], "`orders`": 1}
    with pytest.raises(RestoreError, match="table `orders`: 120 rows, the dump had 1"):
        await MysqlStrategy.restore(replay(chunks), target.url, tampered)
    assert not database_exists(target.name) and leftovers(target.name) == []


async def test_password_from_env_never_in_argv_or_environment(
    mariadb_factory: MariaDbFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = mariadb_factory("drdm_src")
    # Big enough (~8 MB) that mariadb-dump is still writing when the first chunk arrives.
    populate_rich_database(source.name, rows=100_000)
    user, password = f"u{source.name[-10:]}", "pw-Ünïcode\"'\\;#x"
    sql_pw = "'" + password.replace("\\", "\\\\").replace("'", "''") + "'"
    mariadb(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY {sql_pw}")
    try:
        # What a dump needs: read the data, the views, triggers and events, and (MariaDB)
        # mysql.proc for the routines' definitions.
        mariadb(
            f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{source.name}`.* "
            f"TO '{user}'@'127.0.0.1'; GRANT SELECT ON mysql.proc TO '{user}'@'127.0.0.1'"
        )
        monkeypatch.setenv("DRD_TEST_MYSQL_PW", password)
        monkeypatch.setenv("MYSQL_PWD", "wrong-ambient-password")
        strategy = MysqlStrategy(
            MysqlOptions(
                name="db",
                user=user,
                database=source.name,
                password_from={"source": "env", "name": "DRD_TEST_MYSQL_PW"},
            )
        )
        seen: list[tuple[bytes, bytes]] = []
        async with contextlib.aclosing(strategy.dump()) as stream:
            async for _ in stream:
                if not seen:
                    for pid in children_named("mariadb-dump", "mysqldump"):
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmdline = f.read()
                        with open(f"/proc/{pid}/environ", "rb") as f:
                            environ = f.read()
                        seen.append((cmdline, environ))
        assert seen, "mariadb-dump was not running while the dump streamed"
        for cmdline, environ in seen:
            assert password.encode() not in cmdline and password.encode() not in environ
            assert b"MYSQL_PWD" not in environ
        assert strategy.restore_metadata()["statistics"]["row_counts"]["`customers`"] == 20_000

        # A wrong password: a clear SourceError that does not repeat the password.
        monkeypatch.setenv("DRD_TEST_MYSQL_PW", "not-the-password")
        with pytest.raises(SourceError, match="Access denied") as info:
            await dump_all(strategy)
        assert "not-the-password" not in str(info.value)
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


async def test_missing_database_and_early_close(mariadb_factory: MariaDbFactory) -> None:
    with pytest.raises(SourceError, match="no such database"):
        await dump_all(make_strategy("drdm_does_not_exist"))

    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=20_000)
    stream = make_strategy(source.name).dump()
    await stream.__anext__()
    await stream.aclose()
    assert children_named("mariadb-dump", "mysqldump") == []


async def test_schema_change_during_dump_fails(
    mariadb_factory: MariaDbFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=100)
    real = mysql_mod.schema_info
    calls = 0

    async def racing(client: Any, database: str, exclude: Any = ()) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # right after the dump: someone altered a table meanwhile
            await asyncio.to_thread(
                mariadb, "ALTER TABLE empty_table ADD COLUMN extra INT", source.name
            )
        return await real(client, database, exclude)

    monkeypatch.setattr(mysql_mod, "schema_info", racing)
    with pytest.raises(SourceError, match="schema changed during the dump"):
        await dump_all(make_strategy(source.name))
