"""Issue 6, must-hold 3: a MariaDB database with several tables (non-ASCII text, BLOBs, a view,
a trigger, routines, an event) backed up through the real CLI into two local regions and
restored: the restored database equals the source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.drdenv import DrdEnv
from tests.support.mariadb import (
    MariaDbFactory,
    database_exists,
    databases_like,
    dump_text,
    populate_rich_database,
)

pytestmark = pytest.mark.integration


def test_mariadb_round_trip_through_the_cli(
    tmp_path: Path, mariadb_factory: MariaDbFactory
) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=20_000)
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "shop",
        [
            {
                "name": "db",
                "kind": "mysql",
                "host": "127.0.0.1",
                "user": "root",
                "database": source.name,
            }
        ],
    )
    env.ok("validate")
    proc = env.ok("backup", "shop/db")
    backup_id = env.backup_id_of(proc, "shop/db")
    listing = json.loads(env.ok("list", "shop", "--json").stdout)
    (entry,) = listing["backups"]
    assert entry["backup_id"] == backup_id and entry["kind"] == "mysql"
    assert entry["regions"] == ["a", "b"]
    # The stored objects are encrypted: no table content in clear.
    for path in env.stored_files():
        assert b"Crabtown" not in path.read_bytes()

    expected = dump_text(source.name)
    for region in ("a", "b"):
        target = mariadb_factory.reserve("drdm_restored")
        env.ok("restore", "shop/db", "--to", target.url, "--region", region)
        assert dump_text(target.name) == expected

    # Never over an existing database.
    existing = mariadb_factory("drdm_existing")
    proc = env.run("restore", "shop/db", "--to", existing.url)
    assert proc.returncode == 9, proc.stderr
    assert databases_like(existing.name + "\\_drd%") == []


def test_restore_with_a_damaged_stream_leaves_nothing(
    tmp_path: Path, mariadb_factory: MariaDbFactory
) -> None:
    source = mariadb_factory("drdm_src")
    populate_rich_database(source.name, rows=20_000)
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("shop", [{"name": "db", "kind": "mysql", "user": "root", "database": source.name}])
    env.ok("backup", "shop/db")
    for data in (p for p in env.stored_files() if p.name == "data.drd"):
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped bit in the middle of every copy
        data.write_bytes(bytes(raw))
    target = mariadb_factory.reserve("drdm_restored")
    proc = env.run("restore", "shop/db", "--to", target.url)
    assert proc.returncode == 5, proc.stderr
    assert not database_exists(target.name)
    assert databases_like(target.name + "\\_drd%") == []
