"""drd.verify.restore_run on in-memory regions with the blob strategy: backup choice, region
rotation,
failure categories, teardown on every path, the sealed report next to the backup, metrics."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.config.models import Plan, PlanStorage, RestoreTest, Schedule, Targets
from drd.errors import BackupNotFound, IntegrityError
from drd.layout import SourceRef
from drd.locks import LockBusy, restore_test_lock
from drd.metrics import Metrics
from drd.pipeline.backup import run_backup
from drd.repository.catalog import build_catalog
from drd.restore_tests.spec import CheckSpec
from drd.storage.memory import MemoryStorage
from drd.verify.restore_report import latest_summaries, read_report, report_keys
from drd.verify.restore_run import (
    choose_backups,
    next_region,
    restore_tests_for,
    run_restore_test,
)
from tests.support.blob_strategy import RESTORED, BlobOptions, BlobStrategy, blob_bytes

REF = SourceRef("billing", "db")
SOURCE = BlobOptions(name="db", kind="blob", size=50_000, chunk=4000)


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def make_plan(tmp_path: Path, **restore_test: Any) -> Plan:
    return Plan(
        name="billing",
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=timedelta(hours=6), rto=timedelta(minutes=10)),
        schedule=Schedule(every=timedelta(hours=4)),
        storage=PlanStorage(regions=["r0", "r1"], min_copies=2),
        restore_test=RestoreTest(**restore_test),
        sources=[SOURCE],
        path=tmp_path / "billing.yaml",
    )


def clock_at(day: int):  # type: ignore[no-untyped-def]
    return lambda: datetime(2026, 11, day, 12, 0, tzinfo=UTC)


async def backed_up(keyring: crypto.Keyring, days: tuple[int, ...] = (27,)) -> dict[str, Any]:
    regions = {name: MemoryStorage(name, chunk_size=1000) for name in ("r0", "r1")}
    for day in days:
        await run_backup(
            REF,
            BlobStrategy(SOURCE),
            list(regions.values()),
            keyring,
            min_copies=2,
            segment_size=1024,
            clock=clock_at(day),
        )
    return regions


async def run(
    plan: Plan, regions: dict[str, Any], keyring: crypto.Keyring, tmp_path: Path, **kw: Any
) -> Any:
    storages = list(regions.values())
    candidates = await choose_backups(REF, storages, keyring, min_copies=plan.storage.min_copies)
    return await run_restore_test(
        plan,
        SOURCE,
        regions,
        keyring,
        state_dir=tmp_path / "state",
        base_dir=tmp_path,
        candidate=candidates[0],
        **kw,
    )


async def test_passing_test_reports_phases_checks_and_is_stored_next_to_the_backup(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    plan = make_plan(tmp_path, checks={"db": [CheckSpec(command='test -n "$DRD_RESTORED_PATH"')]})
    metrics = Metrics()
    report = await run(plan, regions, keyring, tmp_path, metrics=metrics)
    assert report.passed and report.result == "passed", report.summary_lines()
    assert report.region == "r0" and report.selection == "newest"
    assert [c.name for c in report.checks] == ["integrity", "command-1"]
    assert report.measured and report.rto_seconds == pytest.approx(report.phases.rto)
    assert report.bytes["restored"] == len(blob_bytes(50_000))
    (target,) = RESTORED
    assert RESTORED[target] == blob_bytes(50_000)
    assert not Path(target).parent.exists()  # the scratch directory is gone
    assert not any((tmp_path / "state" / "scratch").glob("*.json"))
    assert sorted(report.stored_in) == ["r0", "r1"]

    catalog = await build_catalog(list(regions.values()), keyring)
    (entry,) = catalog.entries
    keys = report_keys(entry)
    assert sorted(keys) == ["r0", "r1"]
    raw = await regions["r1"].get(keys["r1"][0])
    public, body = read_report(raw, keyring, entry.backup_id, "r1")
    assert public["result"] == "passed" and public["region"] == "r0"
    assert body is not None and body["checks"][1]["name"] == "command-1"
    with pytest.raises(IntegrityError, match="not a restore test report"):
        read_report(raw, keyring, "20261127T120000Z-00000000", "r1")
    with pytest.raises(IntegrityError):
        read_report(raw.replace(b'"passed"', b'"failed"', 1), keyring, entry.backup_id, "r1")
    summaries = await latest_summaries(catalog, list(regions.values()), None)
    assert summaries[(REF, entry.backup_id)]["result"] == "passed"
    assert summaries[(REF, entry.backup_id)]["verified"] is False

    labels = ("billing", "db")
    assert metrics.restore_test_last_status.labels(*labels)._value.get() == 1
    assert metrics.rto.labels(*labels)._value.get() == pytest.approx(report.phases.rto)
    assert metrics.restore_tests.labels(*labels, "success")._value.get() == 1


async def test_regions_are_read_in_turn(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    plan = make_plan(tmp_path)
    used = [(await run(plan, regions, keyring, tmp_path)).region for _ in range(3)]
    assert used == ["r0", "r1", "r0"]
    forced = await run(plan, regions, keyring, tmp_path, region="r0")
    assert forced.region == "r0"


def test_next_region_skips_regions_without_a_copy(tmp_path: Path) -> None:
    order = ["a", "b", "c"]
    assert next_region(tmp_path, REF, order, ["a", "b", "c"]) == "a"
    assert next_region(tmp_path, REF, order, ["a", "c"]) == "c"
    assert next_region(tmp_path, REF, order, ["a", "b", "c"]) == "a"
    assert next_region(tmp_path, SourceRef("billing", "other"), order, ["b"]) == "b"


async def test_corrupted_copy_is_integrity_failed_and_cleaned_up(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    (key,) = [i.key for i in await regions["r0"].list() if i.key.endswith("data.drd")]
    data = bytearray(await regions["r0"].get(key))
    data[len(data) // 2] ^= 0x80
    await regions["r0"].put(key, bytes(data))
    metrics = Metrics()
    report = await run(make_plan(tmp_path), regions, keyring, tmp_path, metrics=metrics)
    assert report.failure_category == "integrity_failed"
    assert report.region == "r0" and not report.measured and report.rto_seconds is None
    assert report.checks[0].name == "integrity" and report.checks[0].failed
    assert RESTORED == {}
    assert not any((tmp_path / "state" / "scratch").glob("*.json"))
    labels = ("billing", "db")
    assert metrics.restore_test_last_status.labels(*labels)._value.get() == 0
    assert metrics.restore_test_failures.labels(*labels, "integrity_failed")._value.get() == 1
    # The other region's copy is intact: its turn passes.
    assert (await run(make_plan(tmp_path), regions, keyring, tmp_path)).passed


async def test_forced_region_without_a_copy_is_fetch_failed(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    (key,) = [i.key for i in await regions["r1"].list() if i.key.endswith("data.drd")]
    await regions["r1"].delete(key)
    plan = make_plan(tmp_path)
    plan = plan.model_copy(update={"storage": PlanStorage(regions=["r0", "r1"], min_copies=1)})
    report = await run(plan, regions, keyring, tmp_path, region="r1")
    assert report.failure_category == "fetch_failed"
    assert "data object missing" in str(report.failure_message)
    assert report.copy_problems == {"r1": "data object missing"}


async def test_failing_check_is_check_failed_with_query_expected_actual(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    plan = make_plan(
        tmp_path,
        checks={
            "db": [
                CheckSpec(name="ok", command=["true"]),
                CheckSpec(name="advisory", command=["false"], critical=False),
                CheckSpec(name="broken", command="echo nope; exit 3"),
            ]
        },
    )
    report = await run(plan, regions, keyring, tmp_path)
    assert report.failure_category == "check_failed"
    assert report.failure_message is not None
    assert "1 check(s) failed: broken" in report.failure_message
    assert 'expected "exit status 0", got "exit status 3"' in report.failure_message
    broken = report.checks[-1]
    assert broken.detail == "nope" and broken.query == "echo nope; exit 3"
    assert report.measured  # checks ran to their end: the RTO was measured


async def test_timeout_stops_the_test_and_tears_down(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    marker = tmp_path / "pid"
    plan = make_plan(
        tmp_path,
        timeout=timedelta(seconds=1),
        checks={"db": [CheckSpec(command=f"echo $$ > {marker}; exec sleep 30")]},
    )
    report = await asyncio.wait_for(run(plan, regions, keyring, tmp_path), 20)
    assert report.failure_category == "timeout"
    assert "1s" in str(report.failure_message)
    assert not any((tmp_path / "state" / "scratch").glob("*.json"))
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists()  # the check's process group was killed


async def test_cancellation_tears_down_and_propagates(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    marker = tmp_path / "started"
    plan = make_plan(tmp_path, checks={"db": [CheckSpec(command=f"touch {marker}; sleep 30")]})
    task = asyncio.ensure_future(run(plan, regions, keyring, tmp_path))
    for _ in range(200):
        if marker.exists():
            break
        await asyncio.sleep(0.05)
    directories = list((tmp_path / "state" / "scratch").glob("*.json"))
    assert len(directories) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any((tmp_path / "state" / "scratch").glob("*.json"))


async def test_lock_refuses_a_second_test_of_the_same_source(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring)
    with restore_test_lock(tmp_path / "state", REF), pytest.raises(LockBusy, match="restore test"):
        await run(make_plan(tmp_path), regions, keyring, tmp_path)


async def test_choose_newest_and_a_random_older_one(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await backed_up(keyring, days=(25, 26, 27))
    storages = list(regions.values())
    chosen = await choose_backups(
        REF, storages, keyring, min_copies=2, also_random_older=True, rng=random.Random(1)
    )
    assert [c.selection for c in chosen] == ["newest", "random-older"]
    assert chosen[0].reason == "the newest of the 3 backup(s) of billing/db in the catalog"
    assert chosen[1].reason.startswith("chosen at random among the 2 older usable backup(s)")
    assert chosen[0].entry.backup_id.startswith("20261127")
    assert chosen[1].entry.public.started < chosen[0].entry.public.started
    (requested,) = await choose_backups(
        REF, storages, keyring, min_copies=2, backup_id=chosen[1].entry.backup_id
    )
    assert requested.selection == "requested"
    assert requested.reason == f"backup {chosen[1].entry.backup_id} was asked for"
    with pytest.raises(BackupNotFound):
        await choose_backups(REF, storages, keyring, min_copies=2, backup_id="20200101T000000Z-0")
    with pytest.raises(BackupNotFound):
        await choose_backups(SourceRef("billing", "nothing"), storages, keyring, min_copies=2)

    reports = await restore_tests_for(
        make_plan(tmp_path, also_random_older=True),
        SOURCE,
        regions,
        keyring,
        state_dir=tmp_path / "state",
        base_dir=tmp_path,
    )
    assert [r.selection for r in reports] == ["newest", "random-older"]
    assert [r.selection_reason for r in reports] == [c.reason for c in chosen]
    assert reports[0].as_json()["selection_reason"] == chosen[0].reason
    assert f"  chosen: {chosen[0].reason}" in reports[0].summary_lines()
    assert all(r.passed for r in reports)


async def test_a_check_that_broke_says_why_without_expected_null_got_null(
    blob_strategy: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    """A check that fails before it has anything to compare (its query cannot even run) is
    reported by its error, in the CLI line and in the test's failure message alike."""
    regions = await backed_up(keyring)
    plan = make_plan(
        tmp_path,
        checks={
            "db": [CheckSpec(name="unreadable", freshness={"sql": "SELECT 1", "within": "1h"})]
        },
    )
    report = await run(plan, regions, keyring, tmp_path)
    assert report.failure_category == "check_failed"
    broken = report.checks[-1]
    assert broken.name == "unreadable" and broken.failed
    assert broken.expected is None and broken.actual is None and broken.detail
    for text in (broken.summary(), str(report.failure_message), *report.summary_lines()):
        assert "null" not in text, text
    assert broken.detail in broken.summary()
    assert broken.detail in str(report.failure_message)
