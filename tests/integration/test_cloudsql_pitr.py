"""Restore tests and drills of cloudsql sources through Cloud SQL's own point-in-time recovery
(restore_test.scratch `pitr:`): a clone of the source at a random point of its recovery window,
checked and deleted, through the real CLI against the local Cloud SQL Admin API
(tests/cloudsql_fake, which clones from its real PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd.errors import CloudSqlError, RestoreError
from drd.strategies.cloudsql import PollPolicy, open_api
from drd.strategies.cloudsql_pitr import clone_at, parse_time, recovery_window, rfc3339
from tests.cloudsql_fake import StartCloudSql
from tests.integration.test_cloudsql import SCRATCH_PROJECT, SOURCE_PROJECT, World
from tests.integration.test_cloudsql_restore_test import InstanceWatcher
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import populate_rich_database

pytestmark = pytest.mark.integration

POLL = PollPolicy(timeout=60, initial=0.05, maximum=0.2)
IN_SOURCE = {"kind": "cloudsql-scratch-project", "pitr": "clone-in-source-project"}


@pytest.fixture
def world(gcs_regions: StartRegions, cloudsql_api: StartCloudSql) -> Iterator[World]:
    (gcs,) = gcs_regions(1, ["STAGING"])
    gcs.create_bucket("drd-staging")
    api = cloudsql_api(gcs.endpoint)
    api.add_instance(SOURCE_PROJECT, "prod-db", pitr_since=datetime.now(UTC) - timedelta(hours=3))
    dsn = api.add_database(SOURCE_PROJECT, "prod-db", "appdb")
    populate_rich_database(dsn, rows=400)
    yield World(api, gcs, dsn)


def make_env(tmp_path: Path, world: World, scratch: dict[str, Any] | None = None) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "billing",
        [world.source()],
        restore_test={"timeout": "10m", "scratch": {"main-db": scratch or IN_SOURCE}},
    )
    env.write()
    return env


def clones(world: World) -> list[tuple[str, str]]:
    return [(p, n) for p, n in world.api.instances if n.startswith("drd-scratch-")]


def assert_window_point(report: dict[str, Any], before: datetime, after: datetime) -> None:
    point = parse_time(report["restore"]["point_in_time"], "point_in_time")
    # The window is [pitr_since, now]: the point is inside it, never in the future.
    assert before - timedelta(hours=3) <= point <= after, (point, before, after)


def test_restore_test_clones_the_source_at_a_point_in_its_window(
    tmp_path: Path, world: World
) -> None:
    env = make_env(tmp_path, world)
    env.ok("validate")
    env.ok("backup", "billing/main-db")
    before = datetime.now(UTC)
    with InstanceWatcher(world) as watcher:
        proc = env.ok("restore-test", "billing/main-db", "--json")
    after = datetime.now(UTC)
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    checks = {c["name"]: c for c in report["checks"]}
    assert {n: c["status"] for n, c in checks.items()} == {
        "integrity": "passed",
        "restore_operation": "passed",
        "clone_instance": "passed",
        "databases": "passed",
        "tables": "passed",
    }, report["checks"]
    # The clone's tables are those the export recorded, read from the clone itself.
    assert checks["tables"]["actual"] == {
        t: n for t, n in checks["tables"]["actual"].items() if t in checks["tables"]["expected"]
    }
    assert "sales.orders" in checks["tables"]["actual"]
    assert report["restore"]["method"] == "clone"
    window = report["restore"]["recovery_window"]
    assert parse_time(window["earliest"], "e") < parse_time(window["latest"], "l") <= after
    assert report["restore"]["source"] == f"{SOURCE_PROJECT}/prod-db"
    assert_window_point(report, before, after)
    assert "chosen at random in the recovery window" in report["scratch"]["note"]

    # The clone existed next to the source (Cloud SQL clones within a project), and is gone.
    seen = [(p, n) for p, n in watcher.seen if n.startswith("drd-scratch-")]
    assert len(seen) == 1 and seen[0][0] == SOURCE_PROJECT, watcher.seen
    name = seen[0][1]
    assert report["scratch"]["resource"] == f"{SOURCE_PROJECT}/{name}"
    base = f"/v1/projects/{SOURCE_PROJECT}/instances"
    requests = world.api.requests
    assert ("GET", f"{base}/prod-db/getLatestRecoveryTime") in requests
    assert ("POST", f"{base}/prod-db/clone") in requests
    assert ("PATCH", f"{base}/{name}") in requests  # labelled drd-scratch once it exists
    assert ("DELETE", f"{base}/{name}") in requests
    assert not [p for m, p in requests if m == "POST" and p.endswith(("/import", "/instances"))]
    assert clones(world) == []
    assert sorted(world.api.instances) == [(SOURCE_PROJECT, "prod-db")]
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []
    # The clone is the restore: it is timed into the RTO.
    assert report["phases"]["restore"] > 0 and report["rto_ms"] is not None


def test_a_drill_uses_the_clone_and_deletes_it(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    before = datetime.now(UTC)
    proc = env.run("drill", "billing", "--json")
    after = datetime.now(UTC)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "passed", json.dumps(report, indent=1)
    (source,) = report["sources"]
    assert source["result"] == "passed"
    # The RPO is that of point-in-time recovery: how far the latest recoverable time trailed
    # the clock (the fake's window ends now), not the age of the drd backup under test.
    backup_age = (before - parse_time(source["backup_captured_at"], "captured")).total_seconds()
    assert 0 <= source["rpo_seconds"] < backup_age, source
    assert report["rpo_seconds"] == source["rpo_seconds"]
    assert source["scratch"]["resource"].startswith(f"{SOURCE_PROJECT}/drd-scratch-")
    clone_posts = [p for m, p in world.api.requests if m == "POST" and p.endswith("/clone")]
    assert clone_posts == [f"/v1/projects/{SOURCE_PROJECT}/instances/prod-db/clone"]
    body_points = [op.resource for op in world.api.operations.values() if op.op_type == "CLONE"]
    (op,) = body_points
    point = parse_time(op["cloneContext"]["pointInTime"], "pointInTime")
    assert before - timedelta(hours=3) <= point <= after
    assert clones(world) == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []


def test_a_cross_project_clone_lands_in_the_scratch_project(tmp_path: Path, world: World) -> None:
    env = make_env(
        tmp_path,
        world,
        {"kind": "cloudsql-scratch-project", "project": SCRATCH_PROJECT, "pitr": "clone"},
    )
    env.ok("backup", "billing/main-db")
    with InstanceWatcher(world) as watcher:
        proc = env.ok("restore-test", "billing/main-db", "--json")
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    (op,) = [o.resource for o in world.api.operations.values() if o.op_type == "CLONE"]
    assert op["cloneContext"]["destinationProject"] == SCRATCH_PROJECT
    seen = [(p, n) for p, n in watcher.seen if n.startswith("drd-scratch-")]
    assert [p for p, _ in seen] == [SCRATCH_PROJECT]
    assert clones(world) == []


def test_a_failed_clone_fails_the_test_and_its_instance_is_deleted(
    tmp_path: Path, world: World
) -> None:
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    world.api.fail_next("CLONE", "injected: the recovery could not replay the logs")
    with InstanceWatcher(world) as watcher:
        proc = env.run("restore-test", "billing/main-db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["failure_category"] == "restore_failed", report
    assert "could not replay the logs" in report["failure_message"]
    # The clone's instance came to exist (as on Google's side) and was deleted all the same.
    assert [n for _, n in watcher.seen if n.startswith("drd-scratch-")]
    assert clones(world) == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []


def test_a_leftover_clone_of_a_crashed_test_is_swept(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    # What a drd killed mid-clone leaves: the clone next to the source and its record.
    world.api.add_instance(SOURCE_PROJECT, "drd-scratch-a1b2c3d4e5f6")
    registry = tmp_path / "state" / "scratch"
    registry.mkdir(parents=True)
    (registry / "a1b2c3d4e5f6.json").write_text(
        json.dumps(
            {
                "id": "a1b2c3d4e5f6",
                "kind": "cloudsql-instance",
                "owner_pid": 1,
                "created_at": 0,
                "project": SOURCE_PROJECT,
                "instance": "drd-scratch-a1b2c3d4e5f6",
                "api": {"endpoint": world.api.base_url, "credentials": {"source": "anonymous"}},
            }
        )
    )
    proc = env.ok("restore-test", "billing/main-db")
    assert "drd-scratch-a1b2c3d4e5f6" in proc.stderr
    assert clones(world) == []
    assert sorted(world.api.instances) == [(SOURCE_PROJECT, "prod-db")]
    assert list(registry.glob("*.json")) == []


async def test_old_labelled_clones_next_to_the_source_are_swept_by_label(
    tmp_path: Path, world: World
) -> None:
    """With clone-in-source-project the start-up label sweep looks in the source's project:
    only old, labelled drd-scratch-* instances go; the source and young clones stay."""
    from drd.config.loader import load_config
    from drd.verify.scratch.cloudsql import LABEL
    from drd.verify.scratch.cloudsql_env import sweep_labelled_instances

    env = make_env(tmp_path, world)
    old = world.api.add_instance(SOURCE_PROJECT, "drd-scratch-old000000000")
    old.body["settings"]["userLabels"] = {LABEL: "true"}
    old.body["createTime"] = "2026-01-01T00:00:00Z"
    young = world.api.add_instance(SOURCE_PROJECT, "drd-scratch-new000000000")
    young.body["settings"]["userLabels"] = {LABEL: "true"}
    world.api.instances[(SOURCE_PROJECT, "prod-db")].body["settings"]["userLabels"] = {
        LABEL: "true"  # even a mislabelled source is never taken: its name is not drd's
    }
    gone = await sweep_labelled_instances(load_config(env.config_path))
    assert gone == ["drd-scratch-old000000000"]
    assert sorted(n for _, n in world.api.instances) == ["drd-scratch-new000000000", "prod-db"]


async def test_a_point_outside_the_window_is_refused_naming_the_window(world: World) -> None:
    api = open_api({"source": "anonymous"}, world.api.base_url, what="test")
    try:
        window = await recovery_window(api, SOURCE_PROJECT, "prod-db")
        too_early = window.earliest - timedelta(minutes=5)
        with pytest.raises(RestoreError) as refused:
            await clone_at(
                api,
                source_project=SOURCE_PROJECT,
                source_instance="prod-db",
                destination_project=SOURCE_PROJECT,
                name="drd-scratch-000000000001",
                point=too_early,
                labels={},
                poll=POLL,
            )
        message = str(refused.value)
        assert "outside the instance's recovery window" in message
        # The window named is the API's (its end is "now", so it moved since it was read).
        assert f"recovery window ({rfc3339(window.earliest)} .. " in message
        # Refused before anything was asked of the API.
        assert not [p for m, p in world.api.requests if p.endswith("/clone")]
        assert clones(world) == []

        # The API refuses it too (what drd's check saves a round trip for).
        with pytest.raises(CloudSqlError) as api_refused:
            await api.call(
                "clone",
                lambda s: s.instances().clone(
                    project=SOURCE_PROJECT,
                    instance="prod-db",
                    body={
                        "cloneContext": {
                            "destinationInstanceName": "drd-scratch-000000000001",
                            "pointInTime": too_early.isoformat().replace("+00:00", "Z"),
                        }
                    },
                ),
            )
        assert api_refused.value.code == 400
        assert "outside the recovery window" in str(api_refused.value)
        assert clones(world) == []
    finally:
        api.close()


def test_an_instance_without_pitr_fails_the_test_saying_so(tmp_path: Path, world: World) -> None:
    backup = world.api.instances[(SOURCE_PROJECT, "prod-db")].body["settings"]
    backup["backupConfiguration"]["pointInTimeRecoveryEnabled"] = False
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    proc = env.run("restore-test", "billing/main-db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["failure_category"] == "restore_failed"
    assert "point-in-time recovery is not enabled" in report["failure_message"]
    assert clones(world) == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []


def test_pitr_in_the_source_project_takes_no_project(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world, {**IN_SOURCE, "project": SCRATCH_PROJECT})
    proc = env.run("validate")
    assert proc.returncode != 0
    assert any(
        "restore_test.scratch.main-db.project" in line
        and "does not apply with pitr: clone-in-source-project" in line
        for line in proc.stderr.splitlines()
    ), proc.stderr
