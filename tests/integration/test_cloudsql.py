"""Issue 6, must-hold 1 and 2: Cloud SQL backups (export and managed) and scratch-project restore
tests against the local Cloud SQL Admin API (tests/cloudsql_fake), backed by the real local
PostgreSQL and a fake-gcs-server staging bucket."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from drd import crypto
from drd.errors import SourceError
from drd.layout import SourceRef
from drd.pipeline.restore import find_backup, stream_plaintext
from drd.storage.local import LocalStorage
from drd.strategies.cloudsql import (
    CloudSqlOptions,
    CloudSqlStrategy,
    OperationFailed,
    PollPolicy,
    StagingOptions,
    open_api,
)
from drd.verify.scratch.cloudsql import restore_test, scratch_instance, sweep_scratch_instances
from tests.cloudsql_fake import FakeCloudSql, StartCloudSql
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.pg import database_fingerprint, populate_rich_database

pytestmark = pytest.mark.integration

SOURCE_PROJECT, SCRATCH_PROJECT = "acme-prod", "acme-scratch"
# A plan whose restore tests cannot run does not validate: every plan here names its scratch.
RESTORE_TEST = {
    "scratch": {"cloudsql": {"kind": "cloudsql-scratch-project", "project": SCRATCH_PROJECT}}
}
POLL = PollPolicy(timeout=60, initial=0.05, maximum=0.2)
# Every path of sqladmin v1 that drd may use (instances, databases, backupRuns, operations).
_V1 = re.compile(
    r"^/v1/projects/[a-z][a-z0-9-]*/(instances(/[a-z][a-z0-9-]*(/(export|import|restoreBackup"
    r"|backupRuns(/\d+)?|databases(/[A-Za-z0-9_-]+)?))?)?|operations/[0-9a-f-]+(/cancel)?)$"
)


@dataclass
class World:
    api: FakeCloudSql
    gcs: FakeGcsServer
    source_dsn: str

    @property
    def staging(self) -> dict[str, Any]:
        return {
            "bucket": "drd-staging",
            "prefix": "exports",
            "endpoint": self.gcs.endpoint,
            "credentials": {"source": "anonymous"},
        }

    def source(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "main-db",
            "kind": "cloudsql",
            "project": SOURCE_PROJECT,
            "instance": "prod-db",
            "database": "appdb",
            "endpoint": self.api.base_url,
            "credentials": {"source": "anonymous"},
            "staging": self.staging,
            "poll_initial": 0.05,
            "poll_max": 0.2,
            "operation_timeout": 45,  # a hang fails clearly, well within the test timeout
            "request_deadline": 20,
            **extra,
        }

    def staging_objects(self) -> list[str]:
        client = storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.gcs.endpoint},
        )
        return [b.name for b in client.list_blobs("drd-staging")]

    def scratch_instances(self) -> list[str]:
        return [name for (project, name) in self.api.instances if project == SCRATCH_PROJECT]


@pytest.fixture
def world(gcs_regions: StartRegions, cloudsql_api: StartCloudSql) -> Iterator[World]:
    (gcs,) = gcs_regions(1, ["STAGING"])
    gcs.create_bucket("drd-staging")
    api = cloudsql_api(gcs.endpoint)
    api.add_instance(SOURCE_PROJECT, "prod-db")
    dsn = api.add_database(SOURCE_PROJECT, "prod-db", "appdb")
    populate_rich_database(dsn, rows=3_000)
    yield World(api, gcs, dsn)
    assert all(_V1.match(path) for _, path in api.requests), [
        p for _, p in api.requests if not _V1.match(p)
    ]


def regions_and_keyring(env: DrdEnv, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], Any]:
    monkeypatch.setenv("DRD_KEYS", env.key)
    from drd.keys import load_keyring

    keyring: crypto.Keyring = load_keyring("env", "DRD_KEYS")
    regions = [LocalStorage(n, env.root / "regions" / n) for n in ("a", "b")]
    return regions, keyring


def test_export_and_managed_backups_and_a_scratch_restore_test(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("billing", [world.source(modes=["export", "managed"])], restore_test=RESTORE_TEST)
    env.ok("validate")
    world.api.http_errors(2, 503)  # transient: retried
    world.api.http_errors(1, 429)
    proc = env.ok("backup", "billing/main-db")
    backup_id = env.backup_id_of(proc, "billing/main-db")
    assert "a,b" in proc.stdout
    assert world.staging_objects() == []  # the staging object never outlives the job
    for path in env.stored_files():
        assert b"customer 1" not in path.read_bytes()  # encrypted
    listing = json.loads(env.ok("list", "billing", "--json").stdout)
    (entry,) = listing["backups"]
    assert entry["kind"] == "cloudsql" and entry["regions"] == ["a", "b"]

    # The manifest records the managed backup run, which exists in Cloud SQL.
    regions, keyring = regions_and_keyring(env, monkeypatch)
    import asyncio

    async def scenario() -> None:
        ref = SourceRef("billing", "main-db")
        found = await find_backup(ref, regions, keyring, backup_id)
        assert found.manifest is not None
        meta = found.manifest.body.strategy_metadata
        run_id = meta["managed"]["backup_run_id"]
        assert world.api.instances[(SOURCE_PROJECT, "prod-db")].backup_runs[run_id]["status"] == (
            "SUCCESSFUL"
        )
        assert meta["statistics"]["row_counts"]["sales.orders"] == 1800
        api = open_api({"source": "anonymous"}, world.api.base_url, what="test")
        staging = StagingOptions(**world.staging)
        try:
            report = await restore_test(
                api,
                stream_plaintext(regions[0], ref, found.manifest, keyring),
                meta,
                scratch_project=SCRATCH_PROJECT,
                staging=staging,
                api_spec={"endpoint": world.api.base_url, "credentials": {"source": "anonymous"}},
                poll=POLL,
                connect=world.api.dsn,
                state_dir=tmp_path / "state",
            )
        finally:
            api.close()
        assert report.passed, report.problems
        assert report.method == "import"
        assert report.checks == {"restore": "ok", "databases": "ok", "row_counts": "ok"}
        assert report.instance.startswith("drd-scratch-")

    asyncio.run(scenario())
    assert world.scratch_instances() == []  # deleted
    assert world.staging_objects() == []
    assert list((tmp_path / "state" / "scratch").glob("*.json")) == []

    # The CLI restore into an existing instance: a new database, identical to the source.
    world.api.add_instance(SCRATCH_PROJECT, "manual")
    target = (
        f"cloudsql://{SCRATCH_PROJECT}/manual/restored?endpoint={world.api.base_url}"
        f"&credentials=anonymous&staging=gs://drd-staging/imports"
        f"&staging_endpoint={world.gcs.endpoint}"
    )
    env.ok("restore", "billing/main-db", "--to", target)
    restored = world.api.dsn(SCRATCH_PROJECT, "manual", "restored")
    assert database_fingerprint(restored) == database_fingerprint(world.source_dsn)
    assert world.staging_objects() == []
    proc = env.run("restore", "billing/main-db", "--to", target)
    assert proc.returncode == 9, proc.stderr


def test_managed_only_backup_restores_with_restore_backup(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    source = world.source(modes=["managed"])
    del source["staging"], source["database"]
    env.add_plan("billing", [source], restore_test=RESTORE_TEST)
    env.ok("backup", "billing/main-db")
    regions, keyring = regions_and_keyring(env, monkeypatch)
    import asyncio

    async def scenario() -> None:
        ref = SourceRef("billing", "main-db")
        found = await find_backup(ref, regions, keyring)
        assert found.manifest is not None
        meta = found.manifest.body.strategy_metadata
        assert meta["format"] == "cloudsql-managed-backup"
        api = open_api({"source": "anonymous"}, world.api.base_url, what="test")
        try:
            report = await restore_test(
                api,
                stream_plaintext(regions[1], ref, found.manifest, keyring),
                meta,
                scratch_project=SCRATCH_PROJECT,
                staging=None,
                api_spec={"endpoint": world.api.base_url},
                poll=POLL,
                database="appdb",
                connect=world.api.dsn,
            )
            assert report.passed, report.problems
            assert report.method == "restoreBackup"
            # restoreBackup named the source project and instance from the scratch project.
            assert (
                "POST",
                f"/v1/projects/{SCRATCH_PROJECT}/instances/{report.instance}/restoreBackup",
            ) in world.api.requests
        finally:
            api.close()

    asyncio.run(scenario())
    assert world.scratch_instances() == []


def test_failed_and_hanging_operations(tmp_path: Path, world: World) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("billing", [world.source()], restore_test=RESTORE_TEST)
    env.write()
    world.api.fail_next("EXPORT", "Could not export: disk quota exceeded")
    proc = env.run("backup", "billing/main-db")
    assert proc.returncode == 7, proc.stderr
    assert "disk quota exceeded" in proc.stderr and "instances.export" in proc.stderr
    assert world.staging_objects() == []

    # A hang, with a timeout short enough for a test (the failure above needs a long one:
    # its operation must have time to fail on a loaded machine).
    env = DrdEnv(tmp_path / "hang")
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("billing", [world.source(operation_timeout=1.5)], restore_test=RESTORE_TEST)
    env.write()
    world.api.hang_next("EXPORT")
    proc = env.run("backup", "billing/main-db")
    assert proc.returncode == 7, proc.stderr
    assert "did not finish within 1.5s" in proc.stderr
    assert world.staging_objects() == []
    assert any(path.endswith("/cancel") for _, path in world.api.requests)
    assert json.loads(env.ok("list", "billing", "--json").stdout)["backups"] == []

    # 4xx: reported with the API's message, not retried.
    bad = DrdEnv(tmp_path / "bad")
    bad.add_local_region("a")
    bad.add_local_region("b")
    bad.add_plan("billing", [world.source(instance="no-such-instance")], restore_test=RESTORE_TEST)
    proc = bad.run("backup", "billing/main-db")
    assert proc.returncode == 7
    assert "HTTP 404: The Cloud SQL instance does not exist." in proc.stderr


async def test_scratch_instance_is_deleted_whatever_happens(world: World) -> None:
    api = open_api({"source": "anonymous"}, world.api.base_url, what="test")
    try:
        # An import that fails: reported, the database and the staging object cleaned up.
        strategy = CloudSqlStrategy(CloudSqlOptions.model_validate(world.source()))
        chunks = [c async for c in strategy.dump()]
        meta = strategy.restore_metadata()

        async def replay() -> Any:
            for c in chunks:
                yield c

        world.api.fail_next("IMPORT", 'ERROR: syntax error at or near "x"')
        report = await restore_test(
            api,
            replay(),
            meta,
            scratch_project=SCRATCH_PROJECT,
            staging=StagingOptions(**world.staging),
            api_spec={"endpoint": world.api.base_url},
            poll=POLL,
            connect=world.api.dsn,
        )
        assert not report.passed
        assert "syntax error" in report.problems[0]
        assert world.scratch_instances() == [] and world.staging_objects() == []

        # Creation that never finishes: a clear failure, and the half-made instance deleted.
        world.api.hang_next("CREATE")
        with pytest.raises(OperationFailed, match="did not finish"):
            async with scratch_instance(
                api,
                SCRATCH_PROJECT,
                database_version="POSTGRES_15",
                poll=PollPolicy(timeout=1, initial=0.05, maximum=0.2),
            ):
                pass
        assert world.scratch_instances() == []

        # A leftover (a crashed drd) is swept; other instances are left alone.
        world.api.add_instance(SCRATCH_PROJECT, "drd-scratch-leftover1")
        world.api.instances[(SCRATCH_PROJECT, "drd-scratch-leftover1")].body["settings"][
            "userLabels"
        ] = {"drd-scratch": "true"}
        world.api.add_instance(SCRATCH_PROJECT, "someone-elses")
        gone = await sweep_scratch_instances(api, SCRATCH_PROJECT, poll=POLL)
        assert gone == ["drd-scratch-leftover1"]
        assert world.scratch_instances() == ["someone-elses"]
    finally:
        api.close()


async def test_fake_api_isolates_projects(world: World) -> None:
    api = open_api({"source": "anonymous"}, world.api.base_url, what="test")
    try:
        from drd.strategies.cloudsql import CloudSqlError

        with pytest.raises(CloudSqlError, match="404"):
            await api.call("get", lambda s: s.instances().get(project="other", instance="prod-db"))
        listed = await api.call("list", lambda s: s.instances().list(project="other"))
        assert listed.get("items", []) == []
    finally:
        api.close()


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="needs `database` and `staging`"):
        CloudSqlOptions(name="x", project="p", instance="i", credentials={"source": "anonymous"})
    with pytest.raises(ValueError, match="loopback"):
        CloudSqlOptions(
            name="x",
            project="p",
            instance="i",
            modes=["managed"],
            endpoint="http://sqladmin.example.com",
            credentials={"source": "anonymous"},
        )
    opts = CloudSqlOptions(
        name="x", project="p", instance="i", modes=["managed"], credentials={"source": "anonymous"}
    )
    with pytest.raises(SourceError, match="loopback"):
        import asyncio

        async def run() -> None:
            async for _ in CloudSqlStrategy(opts).dump():
                pass

        asyncio.run(run())
