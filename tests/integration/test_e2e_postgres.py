"""Issue 2, must-hold 1 and 4: a rich PostgreSQL database backed up through the real CLI to two
fake-gcs-server regions and restored identical; one region down during a backup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import (
    PgDatabaseFactory,
    database_exists,
    database_fingerprint,
    databases_like,
    populate_rich_database,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def two_gcs_env(tmp_path: Path, gcs_regions: StartRegions) -> tuple[DrdEnv, list]:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    env = DrdEnv(tmp_path)
    env.add_gcs_region("europe-west1", servers[0], "drd-ew1")
    env.add_gcs_region("us-central1", servers[1], "drd-uc1")
    return env, servers


def test_postgres_round_trip_through_two_gcs_regions(
    two_gcs_env: tuple[DrdEnv, list], pg_database_factory: PgDatabaseFactory
) -> None:
    env, servers = two_gcs_env
    source = pg_database_factory("drdsrc")
    rows = populate_rich_database(source.dsn, rows=200_000)
    assert sum(rows.values()) >= 200_000
    env.add_plan("billing", [{"name": "db", "kind": "postgres", "dsn": source.dsn}])

    proc = env.ok("backup", "billing/db")
    backup_id = env.backup_id_of(proc, "billing/db")
    assert "europe-west1,us-central1" in proc.stdout

    listing = json.loads(env.ok("list", "billing", "--json").stdout)
    (entry,) = listing["backups"]
    assert entry["backup_id"] == backup_id and entry["verified"]
    assert entry["regions"] == ["europe-west1", "us-central1"]

    expected = database_fingerprint(source.dsn)
    for region in ("europe-west1", "us-central1"):
        target = pg_database_factory.reserve("drdrestored")
        proc = env.ok("restore", "billing/db", "--to", target.dsn, "--region", region)
        assert f"from region {region}" in proc.stdout
        assert database_fingerprint(target.dsn) == expected

    # 3 a.m. on a fresh machine: no drd.yaml, no plans; only the buckets and the key.
    bare = pg_database_factory.reserve("drdbare")
    storage = [
        f"ew1=gs://drd-ew1/drd?endpoint={servers[0].endpoint}&credentials=anonymous",
        f"uc1=gs://drd-uc1/drd?endpoint={servers[1].endpoint}&credentials=anonymous",
    ]
    args = [a for s in storage for a in ("--storage", s)]
    proc = env.ok("restore", "billing/db", "--to", bare.dsn, *args, config=False)
    assert database_fingerprint(bare.dsn) == expected
    listing = json.loads(env.ok("list", "--json", *args, config=False).stdout)
    assert [b["backup_id"] for b in listing["backups"]] == [backup_id]


def test_restore_never_overwrites_an_existing_database(
    two_gcs_env: tuple[DrdEnv, list], pg_database_factory: PgDatabaseFactory
) -> None:
    env, _ = two_gcs_env
    source = pg_database_factory("drdsrc")
    populate_rich_database(source.dsn, rows=2_000)
    env.add_plan("billing", [{"name": "db", "kind": "postgres", "dsn": source.dsn}])
    env.ok("backup", "billing/db")
    existing = pg_database_factory("drdexisting")
    before = database_fingerprint(existing.dsn)
    proc = env.run("restore", "billing/db", "--to", existing.dsn)
    assert proc.returncode == 9, proc.stderr
    assert "exists" in proc.stderr
    assert database_fingerprint(existing.dsn) == before


@pytest.mark.parametrize(("min_copies", "expect_ok"), [(1, True), (2, False)])
def test_one_region_down_during_backup(
    two_gcs_env: tuple[DrdEnv, list],
    pg_database_factory: PgDatabaseFactory,
    min_copies: int,
    expect_ok: bool,
) -> None:
    env, servers = two_gcs_env
    source = pg_database_factory("drdsrc")
    populate_rich_database(source.dsn, rows=5_000)
    env.add_plan(
        "billing", [{"name": "db", "kind": "postgres", "dsn": source.dsn}], min_copies=min_copies
    )
    env.write()
    servers[1].stop()  # us-central1 is down

    proc = env.run("backup", "billing/db")
    if expect_ok:
        assert proc.returncode == 0, proc.stderr
        assert "MISSING COPIES: us-central1" in proc.stdout
        listing = json.loads(env.ok("list", "billing", "--json").stdout)
        (entry,) = listing["backups"]
        assert entry["regions"] == ["europe-west1"]
        assert "us-central1" in listing["unreachable_regions"]
        target = pg_database_factory.reserve("drdrestored")
        env.ok("restore", "billing/db", "--to", target.dsn)
        assert database_fingerprint(target.dsn) == database_fingerprint(source.dsn)
    else:
        assert proc.returncode == 6, proc.stderr
        assert "min_copies is 2" in proc.stderr and "us-central1" in proc.stderr
        servers[1].restart()
        listing = json.loads(env.ok("list", "billing", "--json").stdout)
        assert listing["backups"] == []  # nothing half-written is ever listed
        assert databases_like("drdrestored%") == []
        assert not database_exists("billing")
