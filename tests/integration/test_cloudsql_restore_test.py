"""`drd restore-test` of cloudsql sources: a scratch instance in the plan's scratch project
(kind cloudsql-scratch-project), created, restored into, checked and deleted, through the real
CLI against the local Cloud SQL Admin API (tests/cloudsql_fake) and fake-gcs-server staging."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloudsql_fake import StartCloudSql
from tests.integration.test_cloudsql import SCRATCH_PROJECT, SOURCE_PROJECT, World
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import populate_rich_database

pytestmark = pytest.mark.integration


@pytest.fixture
def world(gcs_regions: StartRegions, cloudsql_api: StartCloudSql) -> Iterator[World]:
    (gcs,) = gcs_regions(1, ["STAGING"])
    gcs.create_bucket("drd-staging")
    api = cloudsql_api(gcs.endpoint)
    api.add_instance(SOURCE_PROJECT, "prod-db")
    dsn = api.add_database(SOURCE_PROJECT, "prod-db", "appdb")
    populate_rich_database(dsn, rows=600)
    yield World(api, gcs, dsn)


def scratch(project: str = SCRATCH_PROJECT, **extra: Any) -> dict[str, Any]:
    return {"main-db": {"kind": "cloudsql-scratch-project", "project": project, **extra}}


def make_env(tmp_path: Path, world: World, **scratch_extra: Any) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "billing",
        [world.source()],
        restore_test={"timeout": "10m", "scratch": scratch(**scratch_extra)},
    )
    env.write()
    return env


class InstanceWatcher:
    """Records the instances the fake holds while a CLI command runs (polled)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.seen.update(list(self.world.api.instances))

    def __enter__(self) -> InstanceWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_restore_test_of_an_export_in_a_scratch_project(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world, tier="db-custom-1-3840")
    env.ok("validate")
    env.ok("backup", "billing/main-db")
    with InstanceWatcher(world) as watcher:
        proc = env.ok("restore-test", "billing/main-db", "--json")
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks == {
        "integrity": "passed",
        "restore_operation": "passed",
        "databases": "passed",
        "row_counts": "passed",
    }, report["checks"]
    assert report["restore"]["method"] == "import"

    # The instance existed during the test, in the scratch project, and is gone now.
    scratch_seen = [(p, n) for p, n in watcher.seen if n.startswith("drd-scratch-")]
    assert len(scratch_seen) == 1, watcher.seen
    ((project, name),) = scratch_seen
    assert project == SCRATCH_PROJECT
    assert report["scratch"]["kind"] == "cloudsql-scratch-project"
    assert report["scratch"]["resource"] == f"{SCRATCH_PROJECT}/{name}"
    requests = world.api.requests
    base = f"/v1/projects/{SCRATCH_PROJECT}/instances"
    assert ("POST", base) in requests
    assert ("POST", f"{base}/{name}/import") in requests
    assert ("DELETE", f"{base}/{name}") in requests
    # Nothing was created in, or restored into, the source project.
    assert not [
        (m, p)
        for m, p in requests
        if m in ("POST", "DELETE")
        and p.startswith(f"/v1/projects/{SOURCE_PROJECT}/instances")
        and not p.endswith(("/export", "/backupRuns"))
    ]
    assert world.scratch_instances() == []
    assert sorted(world.api.instances) == [(SOURCE_PROJECT, "prod-db")]
    assert world.staging_objects() == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []

    # Phases and RTO like every kind: fetch, decrypt+decompress, restore, checks.
    phases = report["phases"]
    assert set(phases) >= {"fetch", "decrypt_decompress", "restore", "checks"}
    assert phases["restore"] > 0 and phases["scratch_setup"] > 0 and phases["teardown"] > 0
    rto = phases["fetch"] + phases["decrypt_decompress"] + phases["restore"] + phases["checks"]
    assert report["rto_ms"] == pytest.approx(rto * 1000, abs=20)


def test_a_failed_import_fails_as_restore_failed_and_deletes_the_instance(
    tmp_path: Path, world: World
) -> None:
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    world.api.fail_next("IMPORT", 'ERROR: relation "sales.orders" already exists')
    proc = env.run("restore-test", "billing/main-db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "failed"
    assert report["failure_category"] == "restore_failed"
    assert "already exists" in report["failure_message"]
    assert report["rto_ms"] is None
    created = [p for m, p in world.api.requests if m == "POST" and p.endswith("/import")]
    assert len(created) == 1 and created[0].startswith(f"/v1/projects/{SCRATCH_PROJECT}/")
    assert world.scratch_instances() == []
    assert world.staging_objects() == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []


def test_a_leftover_instance_of_a_crashed_test_is_swept(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world)
    env.ok("backup", "billing/main-db")
    # What a drd killed mid-test leaves: the instance and its (unlocked) registry record.
    world.api.add_instance(SCRATCH_PROJECT, "drd-scratch-0123456789ab")
    registry = tmp_path / "state" / "scratch"
    registry.mkdir(parents=True)
    (registry / "0123456789ab.json").write_text(
        json.dumps(
            {
                "id": "0123456789ab",
                "kind": "cloudsql-instance",
                "owner_pid": 1,
                "created_at": 0,
                "project": SCRATCH_PROJECT,
                "instance": "drd-scratch-0123456789ab",
                "api": {"endpoint": world.api.base_url, "credentials": {"source": "anonymous"}},
            }
        )
    )
    proc = env.ok("restore-test", "billing/main-db")
    assert "drd-scratch-0123456789ab" in proc.stderr
    assert world.scratch_instances() == []
    assert list(registry.glob("*.json")) == []


def test_scratch_project_must_not_be_the_source_project(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world, project=SOURCE_PROJECT)
    proc = env.run("validate")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "restore_test.scratch" in line]
    assert lines, proc.stderr
    assert any(
        "billing.yaml:" in line
        and "restore_test.scratch.main-db.project" in line
        and "is the project of source main-db itself" in line
        for line in lines
    ), proc.stderr

    # The other fields are checked at their lines too.
    bad = make_env(tmp_path / "bad", world, dsn="host=x", staging={"bucket": "BAD BUCKET"})
    proc = bad.run("validate")
    assert proc.returncode != 0
    assert "restore_test.scratch.main-db.dsn" in proc.stderr, proc.stderr


def test_a_test_that_times_out_deletes_the_instance(tmp_path: Path, world: World) -> None:
    env = make_env(tmp_path, world)
    env.plans["billing"]["restore_test"]["timeout"] = "3s"
    env.write()
    env.ok("backup", "billing/main-db")
    world.api.hang_next("IMPORT")
    proc = env.run("restore-test", "billing/main-db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["failure_category"] == "timeout", report
    assert world.scratch_instances() == []
    assert world.staging_objects() == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []


async def test_labelled_instances_without_a_record_are_swept_when_old(
    tmp_path: Path, world: World
) -> None:
    """An instance whose create was in flight when its test died has no registry record: the
    daemon's start-up sweep finds it by label, but leaves young ones (a test running elsewhere)
    and anything drd did not label."""
    from drd.config.loader import load_config
    from drd.verify.scratch.cloudsql import LABEL
    from drd.verify.scratch.cloudsql_env import sweep_labelled_instances

    env = make_env(tmp_path, world)

    def scratch_instance(name: str, *, labelled: bool, created: str | None) -> None:
        inst = world.api.add_instance(SCRATCH_PROJECT, name)
        if labelled:
            inst.body["settings"]["userLabels"] = {LABEL: "true"}
        if created:
            inst.body["createTime"] = created

    scratch_instance("drd-scratch-old000000000", labelled=True, created="2026-01-01T00:00:00Z")
    scratch_instance("drd-scratch-new000000000", labelled=True, created=None)  # now
    scratch_instance("drd-scratch-nolabel00000", labelled=False, created="2026-01-01T00:00:00Z")
    gone = await sweep_labelled_instances(load_config(env.config_path))
    assert gone == ["drd-scratch-old000000000"]
    assert sorted(world.scratch_instances()) == [
        "drd-scratch-new000000000",
        "drd-scratch-nolabel00000",
    ]
