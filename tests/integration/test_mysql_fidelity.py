"""Issue 16, point 2: a MariaDB database shaped like real estates (a definer whose rights are
granted by database name, INVISIBLE and generated columns, a SEQUENCE, a 9 MiB BLOB under the
server's default 16 MiB max_allowed_packet, system-versioned history) backed up and restored
against the real server; where the restore cannot keep something (transaction-precise history),
drd says so; error messages carry no row data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from drd.errors import RestoreError
from drd.strategies.mysql import MysqlStrategy
from tests.integration.strategies.test_mysql import dump_all, leftovers, make_strategy, replay
from tests.support.drdenv import DrdEnv
from tests.support.mariadb import (
    MariaDbFactory,
    database_exists,
    drop_database,
    mariadb,
    query,
    unique_name,
)

pytestmark = pytest.mark.integration

BLOB_BYTES = 9 << 20
SECRET = "4111-1111-1111-1111"

_SCHEMA = """
CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50), pin INT INVISIBLE DEFAULT 0);
INSERT INTO accounts (id, owner, pin) VALUES (1, 'ann', 11), (2, 'bob', 22), (3, 'cy', 33),
    (4, '{secret}', 44);
CREATE TABLE order_lines (id INT PRIMARY KEY, qty INT, price DECIMAL(8, 2),
    total DECIMAL(10, 2) AS (qty * price) STORED, note VARCHAR(20) AS (CONCAT('q', qty)) VIRTUAL);
INSERT INTO order_lines (id, qty, price) VALUES (1, 2, 1.50), (2, 3, 2.25);
CREATE SEQUENCE invoice_no START WITH 500 INCREMENT BY 5;
SELECT NEXTVAL(invoice_no), NEXTVAL(invoice_no);
CREATE TABLE files (id INT PRIMARY KEY, body LONGBLOB) ENGINE=InnoDB;
INSERT INTO files VALUES (1, RANDOM_BYTES(1024)), (2, NULL);
CREATE TABLE rates (id INT PRIMARY KEY, rate INT) WITH SYSTEM VERSIONING;
INSERT INTO rates VALUES (1, 1);
UPDATE rates SET rate = 2; UPDATE rates SET rate = 3; UPDATE rates SET rate = 4;
DELIMITER ;;
CREATE DEFINER = '{app}'@'%' FUNCTION account_count() RETURNS INT READS SQL DATA
RETURN (SELECT COUNT(*) FROM accounts);;
DELIMITER ;
CREATE DEFINER = '{app}'@'%' SQL SECURITY DEFINER VIEW account_summary AS
    SELECT account_count() AS n, MAX(id) AS top FROM accounts;
"""


@pytest.fixture
def app_user() -> Iterator[str]:
    """A definer account whose rights are granted by database name (set by the test)."""
    name = unique_name("drdapp")
    mariadb(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{unique_name()}'")
    try:
        yield name
    finally:
        mariadb(f"DROP USER IF EXISTS '{name}'@'%'")


def build(database: str, app: str) -> None:
    mariadb(f"GRANT SELECT, EXECUTE ON `{database}`.* TO '{app}'@'%'")
    mariadb(_SCHEMA.format(app=app, secret=SECRET), database)
    # 9 MiB of every byte value: the statement is ~9.3 MiB escaped (18 MiB as hex).
    chunk = "".join(f"{i:02x}" for i in range(256))
    mariadb(
        f"UPDATE files SET body = REPEAT(UNHEX('{chunk}'), {BLOB_BYTES // 256}) WHERE id = 1",
        database,
    )


def facts(database: str) -> dict[str, object]:
    """What must come back, read from the database itself."""
    return {
        "accounts": query("SELECT id, owner, pin FROM accounts ORDER BY id", database),
        "order_lines": query(
            "SELECT id, qty, price, total, note FROM order_lines ORDER BY id", database
        ),
        "blob": query("SELECT id, LENGTH(body), MD5(body) FROM files ORDER BY id", database),
        "history": query("SELECT id, rate FROM rates FOR SYSTEM_TIME ALL ORDER BY rate", database),
        "view": query("SELECT n, top FROM account_summary", database),
        "definers": query(
            "SELECT 'v', DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE() "
            "UNION ALL SELECT 'f', DEFINER FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = DATABASE()",
            database,
        ),
    }


async def test_a_dr_restore_into_the_granted_name_keeps_everything(
    mariadb_factory: MariaDbFactory, app_user: str
) -> None:
    source = mariadb_factory("drdm_fid")
    build(source.name, app_user)
    assert query("SELECT @@max_allowed_packet")[0][0] == "16777216"  # the server's default
    before = facts(source.name)
    next_before = query("SELECT next_not_cached_value FROM invoice_no", source.name)
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    stats = meta["statistics"]
    assert stats["row_counts"] == {
        "`accounts`": 4,  # not 5: the column list of INSERT INTO t (a, b) is no row
        "`files`": 2,
        "`order_lines`": 2,
        "`rates`": 4,  # the history, dumped
    }
    assert stats["sequences"] == {"`invoice_no`": [int(next_before[0][0]), 0]}
    assert meta["history"] is True and meta["history_lost"] == []
    assert meta["largest_statement"]["table"] == "files"
    assert BLOB_BYTES < meta["largest_statement"]["bytes"] < 16 << 20
    assert SECRET.encode() not in b"".join(chunks)[meta["objects_offset"] :]

    # Disaster: the database is gone; it is restored under its own name, which the definer's
    # grants name. Loaded into a staging name first, the view failed (ERROR 1370).
    drop_database(source.name)
    outcome = await MysqlStrategy.restore(replay(chunks), source.url, meta)
    assert outcome.details["rows"] == {"accounts": 4, "files": 2, "order_lines": 2, "rates": 4}
    assert outcome.warnings == [] and "history_lost" not in outcome.details
    assert facts(source.name) == before
    assert query("SELECT next_not_cached_value FROM invoice_no", source.name) == next_before
    assert leftovers(source.name) == []

    # Into another name the definer has no rights on, the restore fails as a plain load would,
    # naming the routine, and leaves nothing.
    other = mariadb_factory.reserve("drdm_fidother")
    with pytest.raises(RestoreError, match=r"ERROR 1370 .*account_count") as failure:
        await MysqlStrategy.restore(replay(chunks), other.url, meta)
    assert SECRET not in str(failure.value)
    assert not database_exists(other.name) and leftovers(other.name) == []


async def test_failures_never_print_row_data(
    mariadb_factory: MariaDbFactory, app_user: str
) -> None:
    source = mariadb_factory("drdm_fid")
    build(source.name, app_user)
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    target = mariadb_factory.reserve("drdm_fidcopy")

    # A row the table already has: the server's message quotes the duplicate value.
    data = b"".join(chunks)
    offset = meta["objects_offset"]
    dup = f"INSERT INTO `accounts` (`id`, `owner`, `pin`) VALUES (4,'{SECRET}',44);\n".encode()
    tampered = {**meta, "objects_offset": offset + len(dup)}
    with pytest.raises(RestoreError) as failure:
        await MysqlStrategy.restore(
            replay([data[:offset] + dup + data[offset:]]), target.url, tampered
        )
    assert "ERROR 1062" in str(failure.value) and SECRET not in str(failure.value)
    assert not database_exists(target.name) and leftovers(target.name) == []

    # A target whose max_allowed_packet cannot take the dump's largest statement is refused
    # before anything is created.
    big = {**meta, "largest_statement": {"table": "files", "bytes": 64 << 20}}
    with pytest.raises(RestoreError, match=r"statement of 67108864 bytes \(table `files`\)"):
        await MysqlStrategy.restore(replay(chunks), target.url, big)
    assert not database_exists(target.name) and leftovers(target.name) == []


async def test_transaction_precise_history_is_reported_lost(
    mariadb_factory: MariaDbFactory,
) -> None:
    source = mariadb_factory("drdm_fid")
    mariadb(
        "CREATE TABLE ledger (id INT PRIMARY KEY, v INT, "
        "s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE, "
        "e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE, "
        "PERIOD FOR SYSTEM_TIME (s, e)) WITH SYSTEM VERSIONING ENGINE=InnoDB;"
        "INSERT INTO ledger (id, v) VALUES (1, 1); UPDATE ledger SET v = 2;",
        source.name,
    )
    strategy = make_strategy(source.name)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    assert meta["history"] is False and meta["history_lost"] == ["`ledger`"]
    assert meta["statistics"]["row_counts"] == {"`ledger`": 1}
    target = mariadb_factory.reserve("drdm_fidcopy")
    outcome = await MysqlStrategy.restore(replay(chunks), target.url, meta)
    (lost,) = outcome.warnings
    assert lost.startswith("the history of system-versioned table `ledger`")
    assert outcome.details["history_lost"] == ["`ledger`"]


def test_the_restore_test_of_such_a_database_passes_and_says_what_it_covered(
    tmp_path: Path, mariadb_factory: MariaDbFactory, app_user: str
) -> None:
    source = mariadb_factory("drdm_fid")
    build(source.name, app_user)
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "shop",
        [{"name": "db", "kind": "mysql", "user": "root", "database": source.name}],
        restore_test={"every": "1h"},
    )
    env.ok("backup", "shop/db")
    proc = env.ok("restore-test", "shop", "--json")
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    # The definer exists there too (locked), so its view and function load and work.
    assert "created 1 definer account(s), locked" in report["scratch"]["note"]
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["status"] == "passed" for c in report["checks"]), report["checks"]
    assert checks["row_counts"]["actual"] == "4 tables, 12 rows"
    assert checks["content"]["actual"] == (
        "4 tables, 12 rows digested (4 by primary-key ranges spread over the table, about 10000 "
        "rows each)"  # the plan's default budget (restore_test.sample_rows)
    )
    assert checks["objects"]["expected"] == (
        "1 functions, 1 views (definer and definition of each)"
    )
    assert SECRET not in proc.stdout + proc.stderr
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert digest not in proc.stdout
