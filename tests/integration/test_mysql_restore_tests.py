"""Issue 15 (points 1 and 4 for MySQL/MariaDB): restore tests of mysql sources against the real
MariaDB, in a throwaway server drd starts (ephemeral-mariadb, the default) and in a scratch
database on a dedicated server (mysql-server), with the built-in checks that prove content;
`drd validate` refusing a plan whose restore test cannot run; the shipped example plan passing
its restore test.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drd.strategies.mysql import MysqlStrategy
from drd.verify.scratch import ephemeral_mariadb
from drd.verify.scratch.registry import DB_PREFIX, sweep_leftovers
from tests.support.drdenv import DrdEnv
from tests.support.mariadb import (
    MARIADB_PORT,
    MariaDbFactory,
    database_exists,
    databases_like,
    mariadb,
    populate_rich_database,
    unique_name,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHECKS = ["integrity", "row_counts", "schema", "sequences", "objects", "content"]

# A sequence and a system-versioned table beside the rich schema.
_EXTRA = """
CREATE SEQUENCE order_numbers START WITH 1000;
SELECT NEXTVAL(order_numbers);
CREATE TABLE prices (id INT PRIMARY KEY, price DECIMAL(8, 2)) WITH SYSTEM VERSIONING;
INSERT INTO prices VALUES (1, 9.99), (2, 19.99);
UPDATE prices SET price = price + 1;
"""


def make_source(factory: MariaDbFactory, rows: int = 5_000) -> str:
    source = factory("drdm_rtsrc")
    populate_rich_database(source.name, rows=rows)
    mariadb(_EXTRA, source.name)
    return source.name


def scratch_records(env: DrdEnv) -> list[dict[str, Any]]:
    directory = env.root / "state" / "scratch"
    if not directory.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@pytest.fixture
def cleanup_scratch() -> Iterator[Callable[[DrdEnv], None]]:
    """Whatever a failing test leaves (servers, databases, directories) is swept at the end."""
    envs: list[DrdEnv] = []
    yield envs.append
    for env in envs:
        asyncio.run(sweep_leftovers(env.root / "state"))


def mysql_source(name: str, database: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "mysql",
        "host": "127.0.0.1",
        "user": "root",
        "database": database,
    }


def plan(env: DrdEnv, sources: list[dict[str, Any]], **restore_test: Any) -> None:
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "shop",
        sources,
        targets={"rpo": "6h", "rto": "10m"},
        restore_test={"every": "1h", **restore_test},
    )


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_restore_test_in_an_ephemeral_server_and_a_scratch_database(
    tmp_path: Path, mariadb_factory: MariaDbFactory, cleanup_scratch: Callable[[DrdEnv], None]
) -> None:
    database = make_source(mariadb_factory)
    env = DrdEnv(tmp_path)
    cleanup_scratch(env)
    plan(
        env,
        [mysql_source("db", database), mysql_source("db-server", database)],
        # The plan's content settings, as for every kind: full for one source by name, a
        # budget of 1000 rows per table for the others.
        content={"db-server": "full"},
        sample_rows=1000,
        scratch={
            "db-server": {"kind": "mysql-server", "url": f"mysql://root@127.0.0.1:{MARIADB_PORT}"}
        },
        checks={
            "db": [
                {
                    "name": "client-sees-copy",
                    "command": 'test "$(mariadb --defaults-extra-file="$DRD_RESTORED_MYSQL_CNF" '
                    '-N -e "SELECT COUNT(*) FROM orders")" = 3000',
                }
            ]
        },
    )
    env.ok("validate")
    env.ok("backup", "shop/db")
    env.ok("backup", "shop/db-server")
    proc = env.ok("restore-test", "shop", "--json")
    reports = {r["source"]: r for r in json.loads(proc.stdout)["reports"]}
    for src, report in reports.items():
        assert report["result"] == "passed", report
        checks = by_name(report)
        assert [c["name"] for c in report["checks"]][: len(CHECKS)] == CHECKS, src
        assert all(c["status"] == "passed" for c in report["checks"]), report["checks"]
        # 1000 customers, 3000 orders, 50 blobs, 3 + 0 + 0 rows, 2 prices with 2 old versions
        assert checks["row_counts"]["actual"] == "7 tables, 4057 rows"
        assert "1 sequences" in checks["sequences"]["expected"]
        objects = checks["objects"]["expected"]
        assert "2 views" in objects and "1 triggers" in objects and "1 events" in objects
        assert "1 functions" in objects and "1 procedures" in objects
    ephemeral, server = reports["db"], reports["db-server"]
    assert by_name(ephemeral)["client-sees-copy"]["status"] == "passed"
    # orders (3000 rows) sampled in key ranges; customers, blobs and prices whole (no more rows
    # than the budget); the table without a key and the two empty ones by their first rows.
    assert by_name(ephemeral)["content"]["actual"] == (
        "7 tables, 2057 rows digested (4 by primary-key ranges spread over the table, about "
        "1000 rows each; 3 by their first 1000 rows)"
    )
    assert "every row" in by_name(server)["content"]["actual"]
    assert (
        "3000 rows" in by_name(server)["content"]["actual"]
        or "rows digested" in (by_name(server)["content"]["actual"])
    )
    assert ephemeral["scratch"]["kind"] == "ephemeral-mariadb"
    assert "ephemeral MariaDB" in ephemeral["scratch"]["description"]
    assert server["scratch"]["kind"] == "mysql-server"
    assert server["scratch"]["resource"].startswith(DB_PREFIX)
    assert ephemeral["restore"]["database"] == database  # the source's name, in its own server
    # Nothing is left: no server, no directory, no scratch database, no record.
    root = Path(ephemeral["scratch"]["resource"])
    assert not root.exists() and ephemeral_mariadb.server_pids(root) == []
    assert not database_exists(server["scratch"]["resource"])
    assert databases_like(server["scratch"]["resource"] + "%") == []
    assert scratch_records(env) == []


async def test_a_difference_fails_naming_the_table_or_object(
    mariadb_factory: MariaDbFactory,
) -> None:
    from drd.restore_tests.mysql_checks import mysql_builtins
    from tests.integration.strategies.test_mysql import dump_all, make_strategy, replay

    database = make_source(mariadb_factory, rows=500)
    strategy = make_strategy(database, content_rows=1000)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    target = mariadb_factory.reserve("drdm_rtcopy")
    await MysqlStrategy.restore(replay(chunks), target.url, meta)
    results = {r.name: r for r in await mysql_builtins(target.url, meta)}
    assert [r.status for r in results.values()] == ["passed"] * 5, results

    # One changed value in one row, a dropped view, a moved sequence: each named.
    mariadb(
        "UPDATE customers SET balance = balance + 0.01 WHERE id = 7; DROP VIEW top_spender; "
        "DO SETVAL(order_numbers, 5000);",
        target.name,
    )
    results = {r.name: r for r in await mysql_builtins(target.url, meta)}
    assert results["row_counts"].status == "passed"
    content = results["content"]
    assert content.fails_test and content.detail.startswith("1 table(s) differ: table `customers`")
    assert content.expected == (
        "7 tables, 457 rows digested (4 by primary-key ranges spread over the table, about 1000 "
        "rows each; 3 by their first 1000 rows)"
    )
    objects = results["objects"]
    assert objects.fails_test and objects.detail == "view `top_spender` is missing"
    sequences = results["sequences"]
    assert (
        sequences.fails_test
        and (sequences.detail)
        == "sequence `order_numbers`: next value [5001, 0], the dump had [2000, 0]"
    )


def test_validate_refuses_plans_whose_restore_test_cannot_run(tmp_path: Path) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "shop",
        [mysql_source("db", "shop")],
        restore_test={
            "scratch": {"db": {"kind": "mysql-server", "url": "mysql://drd@localhost:3306/shop"}}
        },
    )
    proc = env.run("validate")
    assert proc.returncode != 0
    assert "names the database of source db itself" in proc.stdout + proc.stderr
    env.plans["shop"]["restore_test"] = {"scratch": {"db": {"kind": "tempdir"}}}
    env.write()
    proc = env.run("validate")
    assert proc.returncode != 0
    assert "tempdir cannot hold source db" in proc.stdout + proc.stderr
    assert "ephemeral-mariadb or mysql-server" in proc.stdout + proc.stderr
    env.plans["shop"]["restore_test"] = {
        "scratch": {"db": {"kind": "mysql-server", "url": "mysql://drd@localhost:3306"}}
    }
    env.write()
    env.ok("validate")
    env.plans["shop"]["restore_test"] = {}
    env.write()
    env.ok("validate")  # the default, ephemeral-mariadb, fits


def test_shop_example_passes_its_restore_test(
    tmp_path: Path, mariadb_factory: MariaDbFactory, cleanup_scratch: Callable[[DrdEnv], None]
) -> None:
    """plans/examples/shop-mysql.yaml as shipped, pointed at the local server, dumped by a user
    with exactly the privileges its comment lists."""
    database = make_source(mariadb_factory, rows=2_000)
    example = yaml.safe_load((REPO / "plans" / "examples" / "shop-mysql.yaml").read_text())
    (source,) = example["sources"]
    assert "restore_test" not in example or "scratch" not in example["restore_test"]
    user, password = unique_name("drdbk"), secrets.token_hex(12)
    mariadb(
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';"
        f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{database}`.* TO '{user}'@'127.0.0.1';"
        f"GRANT SELECT ON mysql.proc TO '{user}'@'127.0.0.1';"
    )
    try:
        source.update(user=user, database=database, password_from={"source": "env", "name": "PW"})
        env = DrdEnv(tmp_path)
        cleanup_scratch(env)
        env.add_local_region("europe-west1")
        env.add_local_region("europe-north1")
        env.plans["shop"] = example
        run_env = env.env(PW=password)
        env.write()
        env.ok("validate", env=run_env)
        env.ok("backup", "shop/orders-db", env=run_env)
        proc = env.ok("restore-test", "shop", "--json", env=run_env)
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    assert report["scratch"]["kind"] == "ephemeral-mariadb"
    assert [c["name"] for c in report["checks"]][: len(CHECKS)] == CHECKS
    assert all(c["status"] == "passed" for c in report["checks"]), report["checks"]
    assert password not in proc.stdout + proc.stderr
    assert scratch_records(env) == []


_CRASH = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from drd.verify.scratch.ephemeral_mariadb import ephemeral_mariadb

    async def main():
        async with ephemeral_mariadb(Path(sys.argv[1])) as server:
            print(server.root, flush=True)
            os.kill(os.getpid(), 9)

    asyncio.run(main())
    """
)


def test_a_killed_drd_leaves_nothing_after_the_next_sweep(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    root = Path(proc.stdout.strip())
    assert root.is_dir() and ephemeral_mariadb.server_pids(root) != []
    removed = asyncio.run(sweep_leftovers(state))
    assert removed == [f"ephemeral MariaDB/MySQL server in {root}"]
    assert not root.exists() and ephemeral_mariadb.server_pids(root) == []


def test_ephemeral_server_takes_no_login_without_its_password(tmp_path: Path) -> None:
    async def check() -> Path:
        async with ephemeral_mariadb.ephemeral_mariadb(tmp_path / "state") as server:
            for argv in (
                [f"--port={server.port}", "--host=127.0.0.1", "--protocol=TCP", "-uroot"],
                [f"--socket={server.socket}", "-uroot"],
                [f"--port={server.port}", "--host=127.0.0.1", "--protocol=TCP", "-u", ""],
            ):
                denied = subprocess.run(
                    ["mariadb", "--no-defaults", *argv, "-e", "SELECT 1"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert denied.returncode != 0 and "Access denied" in denied.stderr, argv
            ok = subprocess.run(
                [
                    "mariadb",
                    "--no-defaults",
                    f"--port={server.port}",
                    "--host=127.0.0.1",
                    "--protocol=TCP",
                    "-uroot",
                    "-N",
                    "-e",
                    "SELECT @@max_allowed_packet, @@event_scheduler, @@bind_address",
                ],
                env={**os.environ, "MYSQL_PWD": server.password},
                capture_output=True,
                text=True,
                check=True,
            )
            assert ok.stdout.split() == ["16777216", "OFF", "127.0.0.1"]
            assert oct(server.root.stat().st_mode & 0o777) == "0o700"
            assert not (server.root / "init.sql").exists()
            return server.root

    root = asyncio.run(check())
    assert not root.exists() and ephemeral_mariadb.server_pids(root) == []


async def test_a_sample_covers_the_whole_key_space_within_its_budget(
    mariadb_factory: MariaDbFactory,
) -> None:
    from drd.restore_tests.mysql_checks import mysql_builtins
    from tests.integration.strategies.test_mysql import dump_all, make_strategy, replay

    source = mariadb_factory("drdm_rtbig")
    mariadb(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, body VARCHAR(40)) ENGINE=InnoDB;"
        "INSERT INTO events SELECT seq, MD5(seq) FROM seq_1_to_50000; ANALYZE TABLE events;",
        source.name,
    )
    strategy = make_strategy(source.name, content_rows=500)
    chunks = await dump_all(strategy)
    meta = strategy.restore_metadata()
    sampled = meta["statistics"]["content"]["tables"]["`events`"]
    assert sampled["key"] == "id" and len(sampled["ranges"]) == 10
    assert sampled["ranges"][-1][0] > 45_000  # spread to the end of the table
    assert 300 <= sampled["rows"] <= 1_000  # about the budget, not 50000
    target = mariadb_factory.reserve("drdm_rtcopy")
    await MysqlStrategy.restore(replay(chunks), target.url, meta)
    results = {r.name: r for r in await mysql_builtins(target.url, meta)}
    assert results["content"].status == "passed"
    # A row deep inside the table, in a sampled range, is caught.
    inside = sampled["ranges"][7][0]
    mariadb(f"UPDATE events SET body = 'x' WHERE id = {inside}", target.name)
    results = {r.name: r for r in await mysql_builtins(target.url, meta)}
    assert results["content"].fails_test and "table `events`" in results["content"].detail


def test_restore_test_under_the_hardened_unit(
    tmp_path: Path, mariadb_factory: MariaDbFactory, cleanup_scratch: Callable[[DrdEnv], None]
) -> None:
    """MemoryDenyWriteExecute (the shipped unit), inherited by the scratch server drd starts:
    MariaDB needs no executable memory (REGEXP's PCRE2 falls back from its JIT)."""
    from tests.support import mdwe

    if not mdwe.supported():
        pytest.skip("the kernel has no MDWE (Linux < 6.3)")
    database = make_source(mariadb_factory, rows=500)
    mariadb(
        "CREATE VIEW matching AS SELECT id FROM customers WHERE name REGEXP '^customer [0-9]+$';"
        "CREATE TABLE events (id INT AUTO_INCREMENT PRIMARY KEY, "
        "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6));"
        "INSERT INTO events () VALUES (), (), ();",
        database,
    )
    env = DrdEnv(tmp_path)
    cleanup_scratch(env)
    plan(
        env,
        [mysql_source("db", database)],
        checks={
            "db": [
                {"sql": "SELECT COUNT(*) FROM customers", "expect": {"equals": 100}},
                {
                    "name": "balances",
                    "sql": "SELECT SUM(balance), COUNT(DISTINCT city) FROM customers",
                    "expect": {"matches_source": True},
                },
                {"freshness": {"table": "events", "column": "at", "within": "1h"}},
                {
                    "name": "regexp-in-copy",
                    "command": 'test "$(mariadb --defaults-extra-file="$DRD_RESTORED_MYSQL_CNF" '
                    '-N -e "SELECT COUNT(*) FROM matching")" = 100',
                },
            ]
        },
    )
    env.write()
    env.ok("backup", "shop/db")
    proc = subprocess.run(
        [sys.executable, mdwe.__file__, *env.command("restore-test", "shop", "--json")],
        env=env.env(),
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    assert all(c["status"] == "passed" for c in report["checks"]), report["checks"]
    checks = by_name(report)
    assert checks["balances"]["expected"] == checks["balances"]["actual"]
    assert isinstance(checks["balances"]["actual"], list)
    assert checks["freshness-3"]["query"] == "SELECT max(`at`) FROM `events`"
