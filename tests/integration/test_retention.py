"""Issue 5, must-holds 1-5: retention and repair against three fake-gcs-server regions, with an
injected clock (backups are made by the real pipeline with a clock in the past).

fake-gcs-server implements no soft delete, versioning, lifecycle or retention policy: every
bucket here deletes at once, and the deletion-delay logic is tested against the settings
objects in tests/unit/retention/test_policy.py. What these tests prove is that objects are
really gone from each emulated region, by listing it through a fresh client.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from drd import crypto
from drd.config.loader import load_config
from drd.config.models import Plan, PlanStorage, Retention, Schedule, Targets
from drd.daemon.service import Daemon
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.backup import run_backup
from drd.pipeline.restore import restore_backup
from drd.repository.catalog import build_catalog
from drd.retention.sweep import RetentionMemory, sweep
from drd.storage.base import DeletionSettings, Storage
from drd.storage.faults import FaultyStorage
from drd.storage.gcs import GCSStorage
from tests.support.blob_strategy import RESTORED, BlobOptions, BlobStrategy, blob_bytes
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions, make_gcs_storage

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
D, H, M = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
NAMES = ("ew1", "uc1", "as1")
LOCATIONS = ["EUROPE-WEST1", "US-CENTRAL1", "ASIA-EAST1"]
DB = SourceRef("billing", "db")
FILES = SourceRef("billing", "files")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Regions:
    servers: dict[str, FakeGcsServer]
    storages: dict[str, GCSStorage]

    def open(self, name: str) -> GCSStorage:
        """Another client on the same bucket: what a listing with it shows is the emulator's."""
        return make_gcs_storage(
            self.servers[name], name, f"drd-{name}", prefix="drd", timeout=2.0, retry_deadline=1.0
        )

    async def ids(self, name: str) -> set[str]:
        storage = self.open(name)
        try:
            return {info.key.split("/")[2] for info in await storage.list()}
        finally:
            await storage.close()


@pytest.fixture
async def regions(gcs_regions: StartRegions) -> AsyncIterator[Regions]:
    servers = dict(zip(NAMES, gcs_regions(3, LOCATIONS, persistent=True), strict=True))
    r = Regions(servers, {})
    r.storages = {name: r.open(name) for name in NAMES}
    yield r
    for s in r.storages.values():
        await s.close()


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def options(ref: SourceRef, size: int = 50_000) -> BlobOptions:
    return BlobOptions(name=ref.source, kind="blob", size=size, seed=3, chunk=8000)


def make_plan(max_age: timedelta = 14 * D) -> Plan:
    return Plan(
        name="billing",
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=6 * H, rto=1 * H),
        schedule=Schedule(every=4 * H),
        storage=PlanStorage(regions=list(NAMES), min_copies=2),
        retention=Retention(max_age=max_age),
        sources=[options(DB), options(FILES)],
        path=Path("/etc/drd/plans/billing.yaml"),
    )


async def backup_at(
    when: datetime,
    targets: list[Storage],
    keyring: crypto.Keyring,
    ref: SourceRef = DB,
    *,
    min_copies: int = 3,
    size: int = 50_000,
) -> str:
    result = await run_backup(
        ref,
        BlobStrategy(options(ref, size)),
        targets,
        keyring,
        min_copies=min_copies,
        clock=lambda: when,
    )
    return result.backup_id


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ------------------------------------------------------------------------------ must-hold 1


async def test_expired_backups_are_gone_from_every_region_and_younger_ones_stay(
    blob_strategy, regions: Regions, keyring
) -> None:
    every = list(regions.storages.values())
    old = [await backup_at(NOW - age, every, keyring) for age in (30 * D, 15 * D, 14 * D + M)]
    old.append(await backup_at(NOW - 20 * D, every, keyring, FILES))
    young = [await backup_at(NOW - age, every, keyring) for age in (14 * D - H, 7 * D, H)]
    young.append(await backup_at(NOW - 2 * D, every, keyring, FILES))
    metrics = Metrics()

    report = await sweep(make_plan(), regions.storages, now=NOW, metrics=metrics)

    assert report.ok, report
    for name in NAMES:
        assert await regions.ids(name) == set(young), name
        assert {b.backup_id for b in report.regions[name].destroyed} == set(old)
        assert sample(metrics, "drd_retention_deleted_total", plan="billing", region=name) == 4
    # The survivors are intact backups: the catalog still verifies and lists them.
    catalog = await build_catalog(every, keyring)
    assert {e.backup_id for e in catalog.entries} == set(young)
    assert all(sorted(e.complete_regions) == sorted(NAMES) for e in catalog.entries)


# ------------------------------------------------------------------------------ must-hold 2


def _promtool_case(
    series: dict[str, list[float]], eval_minute: int, alerts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "rule_files": [str(REPO / "monitoring" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "what drd exported while as1 was down",
                "interval": "1m",
                "input_series": [
                    {"series": name, "values": " ".join(f"{v:.0f}" for v in values)}
                    for name, values in series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{eval_minute}m",
                        "alertname": "DrdRetentionCopyTooOld",
                        "exp_alerts": alerts,
                    }
                ],
            }
        ],
    }


async def test_a_region_down_during_the_sweep_alerts_and_is_swept_when_it_returns(
    blob_strategy, regions: Regions, keyring, tmp_path: Path
) -> None:
    every = list(regions.storages.values())
    old = await backup_at(NOW - 13 * D, every, keyring)
    young = await backup_at(NOW - 1 * D, every, keyring)
    metrics = Metrics()
    memory = RetentionMemory(tmp_path / "retention.json")
    plan = make_plan()
    await sweep(plan, regions.storages, now=NOW, metrics=metrics, memory=memory)
    assert await regions.ids("as1") == {old, young}

    regions.servers["as1"].stop()  # the outage starts; 2 days later the old backup is overdue
    start = NOW + 2 * D
    labels = 'job="drd",instance="drd-1:9464",plan="billing"'
    series: dict[str, list[float]] = {
        f"drd_retention_max_age_seconds{{{labels}}}": [],
        **{f'drd_retention_oldest_copy_age_seconds{{{labels},region="{n}"}}': [] for n in NAMES},
    }
    minutes = 80
    for minute in range(minutes + 1):
        now = start + minute * M
        if minute % 5 == 0 and minute <= 10:  # the daemon retries every 5 minutes
            report = await sweep(plan, regions.storages, now=now, metrics=metrics, memory=memory)
            assert report.regions["as1"].error is not None
            assert report.regions["as1"].overdue_unreachable
            assert not report.ok
        memory.publish(metrics, now)  # what every scrape does
        series[f"drd_retention_max_age_seconds{{{labels}}}"].append(14 * 86400)
        for n in NAMES:
            value = sample(
                metrics, "drd_retention_oldest_copy_age_seconds", plan="billing", region=n
            )
            assert value is not None
            series[f'drd_retention_oldest_copy_age_seconds{{{labels},region="{n}"}}'].append(value)

    # Destroyed where it could be, still there (and counted as failing) where it could not.
    for name in ("ew1", "uc1"):
        assert await regions.ids(name) == {young}
    failures = sample(metrics, "drd_retention_delete_failures_total", plan="billing", region="as1")
    assert failures == 3
    assert sample(metrics, "drd_retention_delete_failures_total", plan="billing", region="ew1") == 0

    # The overdue-copy alert fires for as1 (both variants: past max_age for an hour, and past
    # the 14-day ceiling), computed by Prometheus' own rule engine from the exported values.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (monitoring/ensure-promtool.sh)"
    age = "15d 1h 15m 0s"
    url = "${RUNBOOK_URL}#drdretentioncopytooold"  # the base is one setting (monitoring/render.py)
    common = {"job": "drd", "instance": "drd-1:9464", "plan": "billing", "region": "as1"}
    expected = [
        {
            "exp_labels": {"severity": "warning", "reason": "plan_max_age", **common},
            "exp_annotations": {
                "summary": "Expired backup copies of billing are not being destroyed in as1",
                "description": f"The oldest copy of plan billing in region as1 is {age} old, "
                "past the plan's retention max_age (14d 0h 0m 0s).",
                "runbook_url": url,
            },
        },
        {
            "exp_labels": {"severity": "critical", "reason": "policy_ceiling", **common},
            "exp_annotations": {
                "summary": "Backup copies of billing in as1 are older than 14 days",
                "description": f"The oldest copy of plan billing in region as1 is {age} old. "
                "Our published policy is that backups are destroyed within 14 days, whatever "
                "the plan's max_age says.",
                "runbook_url": url,
            },
        },
    ]
    case = tmp_path / "outage_test.yml"
    case.write_text(yaml.safe_dump(_promtool_case(series, 75, expected), width=1000))
    proc = subprocess.run(
        [promtool, "test", "rules", str(case)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The region comes back: the next sweep destroys its overdue copy; listing proves it.
    regions.servers["as1"].start()
    back = start + (minutes + 5) * M
    report = await sweep(plan, regions.storages, now=back, metrics=metrics, memory=memory)
    assert report.ok
    assert [b.backup_id for b in report.regions["as1"].destroyed] == [old]
    assert await regions.ids("as1") == {young}
    memory.publish(metrics, back)
    value = sample(metrics, "drd_retention_oldest_copy_age_seconds", plan="billing", region="as1")
    assert value == (back - (NOW - 1 * D)).total_seconds()


# ------------------------------------------------------------------------------ must-hold 3


async def test_a_crash_between_manifest_and_data_deletion_is_finished_by_the_next_sweep(
    blob_strategy, regions: Regions, keyring
) -> None:
    every = list(regions.storages.values())
    expired = await backup_at(NOW - 20 * D, every, keyring)
    kept = await backup_at(NOW - 1 * D, every, keyring)
    stalling = {n: FaultyStorage(s) for n, s in regions.storages.items()}
    for s in stalling.values():
        s.add_latency(60, op="delete", match=DB.data_key(expired))

    task = asyncio.create_task(sweep(make_plan(), stalling, now=NOW))
    for _ in range(500):
        listed = [await s.list(DB.manifest_key(expired)) for s in every]
        if not any(listed):
            break
        await asyncio.sleep(0.02)
    task.cancel()  # the daemon dies here
    with pytest.raises(asyncio.CancelledError):
        await task

    for name in NAMES:
        storage = regions.open(name)
        keys = {i.key for i in await storage.list(DB.backup_prefix(expired))}
        await storage.close()
        assert keys == {DB.data_key(expired)}, name  # manifest gone, data left
    catalog = await build_catalog(every, keyring)
    assert [e.backup_id for e in catalog.entries] == [kept]  # unreadable already

    report = await sweep(make_plan(), regions.storages, now=NOW + 5 * M)
    assert report.ok
    assert "leftover of interrupted work" in report.decision.reasons[(DB, expired)]
    for name in NAMES:
        assert await regions.ids(name) == {kept}


# ------------------------------------------------------------------------------ must-hold 4


async def test_a_copy_missed_during_an_outage_is_repaired_and_restores_alone(
    blob_strategy, regions: Regions, keyring, tmp_path: Path
) -> None:
    env = DrdEnv(tmp_path)
    for name, location in zip(NAMES, LOCATIONS, strict=True):
        env.add_gcs_region(name, regions.servers[name], f"drd-{name}")
        assert regions.servers[name].location == location
    env.add_plan("billing", [{"name": "db", "kind": "blob", "size": 400_000}], min_copies=2)
    cfg = load_config(env.write())
    metrics = Metrics()
    daemon = Daemon(cfg, keyring, regions.storages, metrics=metrics, clock=lambda: NOW)
    try:
        regions.servers["as1"].stop()
        backup_id = await backup_at(
            NOW - 2 * H, list(regions.storages.values()), keyring, min_copies=2, size=400_000
        )
        await daemon.load_state()
        st = daemon.sources[DB]
        st.next_due = NOW + D  # the scheduler is not running here: no backup about to start
        copies = "drd_backup_copies"
        assert st.last_backup_id == backup_id
        assert st.copies == {"ew1": True, "uc1": True, "as1": False}
        assert sample(metrics, copies, plan="billing", source="db", region="as1") == 0

        (report,) = await daemon.retention.run_once()  # while as1 is still down
        assert daemon.retention.repairs["billing"].unreachable.keys() == {"as1"}
        assert not report.ok and st.copies["as1"] is False

        regions.servers["as1"].start()
        await daemon.retention.run_once(force=True)

        repaired = daemon.retention.repairs["billing"].repaired
        assert [(c.backup_id, c.region) for c in repaired] == [(backup_id, "as1")]
        assert st.copies == {"ew1": True, "uc1": True, "as1": True}
        assert sample(metrics, copies, plan="billing", source="db", region="as1") == 1
        assert sample(
            metrics, "drd_copy_repairs_total", plan="billing", region="as1", result="success"
        )
    finally:
        daemon.history.close()

    # The same ciphertext, and the repaired copy alone restores.
    source, target = regions.open("ew1"), regions.open("as1")
    try:
        for key in (DB.data_key(backup_id), DB.manifest_key(backup_id)):
            assert await target.get(key) == await source.get(key)
        result = await restore_backup(DB, [target], keyring, "from-as1-only")
    finally:
        await source.close()
        await target.close()
    assert result.region == "as1"
    assert RESTORED["from-as1-only"] == blob_bytes(400_000, seed=3)


# ------------------------------------------------------------------------------ must-hold 5


def full_listing(server: FakeGcsServer, bucket: str) -> list[tuple[Any, ...]]:
    """Every object of the bucket with its generation: a rewrite would show, not only a delete."""
    client = gcs.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": server.endpoint},
    )
    try:
        return sorted(
            (b.name, b.size, b.generation, b.metageneration, b.crc32c, b.md5_hash, b.updated)
            for b in client.list_blobs(bucket)
        )
    finally:
        client.close()


async def test_prune_dry_run_changes_nothing_and_prune_destroys(
    blob_strategy, regions: Regions, keyring, tmp_path: Path
) -> None:
    env = DrdEnv(tmp_path)
    for name in NAMES:
        env.add_gcs_region(name, regions.servers[name], f"drd-{name}")
    (tmp_path / "src").mkdir()
    env.add_plan("billing", [{"name": "db", "kind": "files", "path": str(tmp_path / "src")}])
    env.write()
    now = datetime.now(UTC)
    every = list(regions.storages.values())
    old = await backup_at(now - 15 * D, every, keyring)
    young = await backup_at(now - 1 * D, every, keyring)

    def everything() -> dict[str, list[tuple[Any, ...]]]:
        return {n: full_listing(regions.servers[n], f"drd-{n}") for n in NAMES}

    before = everything()
    dry = env.ok("prune", "--dry-run")
    assert everything() == before
    assert "[dry run: nothing is changed]" in dry.stdout
    for name in NAMES:
        assert f"region {name}: 1 to destroy, 1 kept" in dry.stdout
    assert dry.stdout.count(f"would destroy billing/db@{old}: backup, age 15d") == 3
    assert young not in dry.stdout

    doctor = env.ok("doctor")
    for name in NAMES:
        assert f"region {name}: no soft delete, versioning off" in doctor.stdout
        assert f"(gs://drd-{name})" in doctor.stdout
    assert "retention: ok" in doctor.stdout

    done = env.ok("prune", "billing")
    assert done.stdout.count(f"destroyed billing/db@{old}") == 3
    for name in NAMES:
        assert await regions.ids(name) == {young}

    # A region that cannot be swept is a failure, not a silent skip.
    regions.servers["as1"].stop()
    down = env.run("prune")
    assert down.returncode == 6, down.stdout + down.stderr
    assert "region as1: UNREACHABLE" in down.stdout
    doctor = env.run("doctor")
    assert doctor.returncode == 1 and "region as1: UNREACHABLE" in doctor.stdout


async def test_gcs_reports_its_deletion_settings(regions: Regions) -> None:
    settings = await regions.storages["ew1"].deletion_settings()
    # What fake-gcs-server reports for every bucket: none of the settings, and the STANDARD
    # storage class whatever a bucket was created with.
    assert settings == DeletionSettings(note="gs://drd-ew1", storage_class="STANDARD")
