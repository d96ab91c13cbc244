"""drd.retention.sweep and drd.retention.repair on in-memory regions, with an injected clock:
backups are made by
the real pipeline (run_backup with a clock in the past) and swept at a chosen `now`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from drd import crypto
from drd.config.models import Plan, PlanStorage, Retention, Schedule, Targets
from drd.errors import PermanentStorageError, TransientStorageError
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.backup import run_backup
from drd.pipeline.restore import restore_backup
from drd.repository.catalog import build_catalog
from drd.retention.repair import repair
from drd.retention.report import format_sweep
from drd.retention.sweep import RetentionMemory, sweep
from drd.storage.base import DeletionSettings, Storage
from drd.storage.faults import FaultyStorage
from drd.storage.local import LocalStorage
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import RESTORED, BlobOptions, BlobStrategy, blob_bytes

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
D, H, M = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
DB = SourceRef("billing", "db")
FILES = SourceRef("billing", "files")
NAMES = ("ew1", "uc1", "as1")


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def options(ref: SourceRef, size: int = 20_000) -> BlobOptions:
    return BlobOptions(name=ref.source, kind="blob", size=size, seed=7, chunk=4000)


def make_plan(
    regions: Sequence[str] = NAMES, *, max_age: timedelta = 14 * D, min_copies: int = 2
) -> Plan:
    return Plan(
        name="billing",
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=6 * H, rto=1 * H),
        schedule=Schedule(every=4 * H),
        storage=PlanStorage(regions=list(regions), min_copies=min_copies),
        retention=Retention(max_age=max_age),
        sources=[options(DB), options(FILES)],
        path=Path("/etc/drd/plans/billing.yaml"),
    )


def memory_regions(names: Sequence[str] = NAMES) -> dict[str, MemoryStorage]:
    return {n: MemoryStorage(n, chunk_size=1000) for n in names}


async def backup_at(
    when: datetime,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    ref: SourceRef = DB,
    *,
    min_copies: int | None = None,
    size: int = 20_000,
) -> str:
    result = await run_backup(
        ref,
        BlobStrategy(options(ref, size)),
        list(regions),
        keyring,
        min_copies=min_copies or len(regions),
        segment_size=4096,
        clock=lambda: when,
    )
    return result.backup_id


async def ids_in(storage: Storage) -> set[str]:
    return {info.key.split("/")[2] for info in await storage.list()}


async def snapshot(regions: dict[str, MemoryStorage]) -> dict[str, list[tuple[str, int, str]]]:
    return {
        name: [(i.key, i.size, i.checksum or "") for i in await r.list()]
        for name, r in regions.items()
    }


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_sweep_destroys_what_passed_max_age_in_every_region_and_keeps_the_rest(
    blob_strategy, keyring
) -> None:
    rs = memory_regions()
    old = [await backup_at(NOW - age, list(rs.values()), keyring) for age in (30 * D, 14 * D)]
    young = [
        await backup_at(NOW - age, list(rs.values()), keyring) for age in (14 * D - M, 3 * D, H)
    ]
    other = await backup_at(NOW - 20 * D, list(rs.values()), keyring, FILES)
    metrics = Metrics()

    report = await sweep(make_plan(), rs, now=NOW, metrics=metrics)

    assert report.ok and report.failures == 0
    for name, region in rs.items():
        assert await ids_in(region) == set(young), name
        assert {b.backup_id for b in report.regions[name].destroyed} == {*old, other}
        assert sample(metrics, "drd_retention_deleted_total", plan="billing", region=name) == 3
        age = sample(metrics, "drd_retention_oldest_copy_age_seconds", plan="billing", region=name)
        assert age == (14 * D - M).total_seconds()
    assert sample(metrics, "drd_retention_last_sweep_timestamp_seconds", plan="billing") == (
        NOW.timestamp()
    )
    # The next sweep is due when the 13d23h59m-old backup reaches 14 days.
    assert report.next_expiry() == NOW + M
    text = "\n".join(format_sweep(report))
    assert f"destroyed billing/db@{old[0]}: backup, age 30d: reached max_age 14d" in text


async def test_manifests_go_first_everywhere_then_data_then_a_listing_proves_it(
    blob_strategy, keyring
) -> None:
    log: list[tuple[str, str, str]] = []

    class Recording(FaultyStorage):
        async def delete(self, key: str) -> None:
            log.append((self.name, "delete", key.rsplit("/", 1)[1]))
            await super().delete(key)

        async def list(self, prefix: str = "") -> list:  # type: ignore[type-arg]
            log.append((self.name, "list", prefix))
            return await super().list(prefix)

    inner = memory_regions()
    rs = {n: Recording(r) for n, r in inner.items()}
    backup_id = await backup_at(NOW - 15 * D, list(inner.values()), keyring)
    log.clear()

    await sweep(make_plan(), rs, now=NOW)

    deletes = [(region, what) for region, op, what in log if op == "delete"]
    assert sorted(deletes[:3]) == [(n, "manifest.json") for n in sorted(NAMES)]
    assert sorted(deletes[3:]) == [(n, "data.drd") for n in sorted(NAMES)]
    for name in NAMES:
        # One listing of the plan's prefix per region proves the whole sweep, after its last
        # delete there (not one listing per backup).
        proofs = [i for i, entry in enumerate(log) if entry == (name, "list", "billing/")]
        assert proofs and proofs[-1] > log.index((name, "delete", "data.drd"))
    assert not any(op == "list" and what == DB.backup_prefix(backup_id) for _, op, what in log)


async def test_a_region_that_keeps_what_it_was_told_to_delete_is_a_failure(
    blob_strategy, keyring
) -> None:
    """A delete that answers but removes nothing (a hold, a lying region): the one proving
    listing after the sweep names what is left, the region counts a failure, the other regions
    and the other backups are destroyed."""

    class Keeping(FaultyStorage):
        async def delete(self, key: str) -> None:
            if key.endswith("/data.drd"):
                return  # "done", and nothing happened
            await super().delete(key)

    inner = memory_regions()
    rs: dict[str, Storage] = dict(inner)
    rs["uc1"] = Keeping(inner["uc1"])
    old = [await backup_at(NOW - (15 + i) * D, list(inner.values()), keyring) for i in range(3)]
    metrics = Metrics()
    report = await sweep(make_plan(), rs, now=NOW, metrics=metrics)
    assert {b.backup_id for b in report.regions["ew1"].destroyed} == set(old)
    assert report.regions["uc1"].destroyed == []
    failed = report.regions["uc1"].failed
    assert {key[1] for key in failed} == set(old)
    assert all(why == "still listed after deletion: data.drd" for why in failed.values())
    assert sample(metrics, "drd_retention_delete_failures_total", plan="billing", region="uc1") == 3
    assert not report.ok


async def test_an_object_left_below_a_destroyed_backup_is_not_proven_gone(
    blob_strategy, keyring
) -> None:
    """A restore test's report written into the backup's prefix while the sweep deleted it (or
    kept by the region): the proving listing finds it below the backup, the region fails."""
    from drd.layout import SourceRef

    rs = memory_regions()
    old = await backup_at(NOW - 15 * D, list(rs.values()), keyring)
    report_key = f"{SourceRef('billing', 'db').backup_prefix(old)}restore-tests/r.json"

    class WritesBehind(FaultyStorage):
        async def delete(self, key: str) -> None:
            await super().delete(key)
            if key.endswith("/data.drd"):
                await self.inner.put(report_key, b"{}")  # landed after the deletes

    swept: dict[str, Storage] = {**rs, "uc1": WritesBehind(rs["uc1"])}
    report = await sweep(make_plan(), swept, now=NOW)
    assert report.regions["uc1"].failed == {
        (SourceRef("billing", "db"), old): "still listed after deletion: restore-tests/r.json"
    }
    assert [b.backup_id for b in report.regions["ew1"].destroyed] == [old]


async def test_dry_run_changes_nothing(blob_strategy, keyring) -> None:
    rs = memory_regions()
    old = await backup_at(NOW - 20 * D, list(rs.values()), keyring)
    await backup_at(NOW - 1 * D, list(rs.values()), keyring)
    before = await snapshot(rs)
    metrics = Metrics()
    memory = RetentionMemory()

    report = await sweep(make_plan(), rs, now=NOW, metrics=metrics, dry_run=True, memory=memory)

    assert await snapshot(rs) == before
    assert [b.backup_id for b in report.decision.destroy] == [old]
    assert memory.oldest == {}
    assert sample(metrics, "drd_retention_deleted_total", plan="billing", region="ew1") is None
    text = "\n".join(format_sweep(report))
    assert "[dry run: nothing is changed]" in text
    assert text.count(f"would destroy billing/db@{old}") == 3


async def test_a_sweep_killed_between_manifest_and_data_is_finished_by_the_next(
    blob_strategy, keyring
) -> None:
    inner = memory_regions()
    backup_id = await backup_at(NOW - 15 * D, list(inner.values()), keyring)
    slow = {n: FaultyStorage(r) for n, r in inner.items()}
    for r in slow.values():
        r.add_latency(60, op="delete", match=DB.data_key(backup_id))

    task = asyncio.create_task(sweep(make_plan(), slow, now=NOW))
    for _ in range(1000):
        manifests = [await r.list(DB.manifest_key(backup_id)) for r in inner.values()]
        if not any(manifests):
            break
        await asyncio.sleep(0.001)
    task.cancel()  # the process dies here: manifests gone, data still there
    with pytest.raises(asyncio.CancelledError):
        await task

    for r in inner.values():
        assert [i.key for i in await r.list()] == [DB.data_key(backup_id)]
    # Crypto-shredded already: without a manifest nothing lists (or could decrypt) it.
    catalog = await build_catalog(list(inner.values()), keyring)
    assert catalog.entries == [] and len(catalog.orphans) == 3

    report = await sweep(make_plan(), inner, now=NOW + M)
    assert "leftover of interrupted work" in report.decision.reasons[(DB, backup_id)]
    for r in inner.values():
        assert await r.list() == []


async def test_failed_deletions_are_counted_reported_and_retried(blob_strategy, keyring) -> None:
    inner = memory_regions()
    backup_id = await backup_at(NOW - 15 * D, list(inner.values()), keyring)
    rs: dict[str, Storage] = dict(inner)
    faulty = FaultyStorage(inner["uc1"])
    faulty.fail("delete", PermanentStorageError("403 forbidden"), match=DB.data_key(backup_id))
    rs["uc1"] = faulty
    metrics = Metrics()

    report = await sweep(make_plan(), rs, now=NOW, metrics=metrics)

    assert not report.ok and report.failures == 1
    assert "403 forbidden" in report.regions["uc1"].failed[(DB, backup_id)]
    assert [i.key for i in await inner["uc1"].list()] == [DB.data_key(backup_id)]
    assert await inner["ew1"].list() == [] and await inner["as1"].list() == []
    failures = "drd_retention_delete_failures_total"
    assert sample(metrics, failures, plan="billing", region="uc1") == 1
    assert "FAILED billing/db@" in "\n".join(format_sweep(report))

    again = await sweep(make_plan(), rs, now=NOW + 5 * M, metrics=metrics)
    assert sample(metrics, failures, plan="billing", region="uc1") == 2
    assert again.failures == 1

    faulty.clear()
    done = await sweep(make_plan(), rs, now=NOW + 10 * M, metrics=metrics)
    assert done.ok and await inner["uc1"].list() == []
    assert sample(metrics, "drd_retention_deleted_total", plan="billing", region="uc1") == 1


async def test_a_down_region_keeps_its_age_and_is_swept_when_it_returns(
    blob_strategy, keyring, tmp_path: Path
) -> None:
    inner = memory_regions()
    first = await backup_at(NOW - 13 * D, list(inner.values()), keyring)
    await backup_at(NOW - 1 * D, list(inner.values()), keyring)
    down = FaultyStorage(inner["as1"])
    rs: dict[str, Storage] = {**inner, "as1": down}
    metrics = Metrics()
    state = tmp_path / "retention.json"
    memory = RetentionMemory(state)
    age = "drd_retention_oldest_copy_age_seconds"
    failures = "drd_retention_delete_failures_total"

    await sweep(make_plan(), rs, now=NOW, metrics=metrics, memory=memory)
    assert sample(metrics, age, plan="billing", region="as1") == (13 * D).total_seconds()

    down.fail("*", TransientStorageError("region as1 is down"))
    later = NOW + 2 * D  # the 13-day-old backup is now 15 days old
    report = await sweep(make_plan(), rs, now=later, metrics=metrics, memory=memory)
    assert first not in await ids_in(inner["ew1"])
    assert first in await ids_in(inner["as1"])
    region = report.regions["as1"]
    assert region.error and "down" in region.error
    assert region.oldest_from == "remembered" and region.overdue_unreachable
    # The overdue copy keeps aging while the region is down: the alerts can fire.
    assert sample(metrics, age, plan="billing", region="as1") == (15 * D).total_seconds()
    assert sample(metrics, failures, plan="billing", region="as1") == 1
    memory.publish(metrics, later + 3 * H)  # what every scrape does
    assert sample(metrics, age, plan="billing", region="as1") == (15 * D + 3 * H).total_seconds()
    assert "UNREACHABLE" in "\n".join(format_sweep(report))

    # A restart while the region is still down remembers the age from the state file.
    restarted = RetentionMemory(state)
    assert restarted.oldest[("billing", "as1")] == NOW - 13 * D
    report = await sweep(make_plan(), rs, now=later + H, metrics=Metrics(), memory=restarted)
    assert report.regions["as1"].oldest == NOW - 13 * D

    down.clear()
    report = await sweep(make_plan(), rs, now=later + 2 * H, metrics=metrics, memory=restarted)
    assert report.ok
    assert [b.backup_id for b in report.regions["as1"].destroyed] == [first]
    assert first not in await ids_in(inner["as1"])
    assert sample(metrics, age, plan="billing", region="as1") == (3 * D + 2 * H).total_seconds()
    assert json.loads(state.read_text())["oldest"]["billing"]["as1"] == (NOW - 1 * D).isoformat()


async def test_a_region_never_seen_is_assumed_to_hold_the_oldest_backup(
    blob_strategy, keyring
) -> None:
    inner = memory_regions()
    await backup_at(NOW - 20 * D, list(inner.values()), keyring)
    down = FaultyStorage(inner["as1"])
    down.fail("*", TransientStorageError("down"))
    metrics = Metrics()

    report = await sweep(make_plan(), {**inner, "as1": down}, now=NOW, metrics=metrics)

    assert report.regions["as1"].oldest_from == "assumed"
    assert (
        sample(metrics, "drd_retention_oldest_copy_age_seconds", plan="billing", region="as1")
        == (20 * D).total_seconds()
    )


async def test_leftovers_are_removed_after_the_grace(blob_strategy, keyring, tmp_path) -> None:
    rs = memory_regions()
    young = await backup_at(NOW - 2 * H, list(rs.values()), keyring)
    old = await backup_at(NOW - 8 * H, list(rs.values()), keyring)
    for r in rs.values():  # as if both backups were killed before their manifests
        await r.delete(DB.manifest_key(young))
        await r.delete(DB.manifest_key(old))

    report = await sweep(make_plan(), rs, now=NOW)

    assert "may still be running" in report.decision.reasons[(DB, young)]
    assert "older than the 6h grace" in report.decision.reasons[(DB, old)]
    for r in rs.values():
        assert await ids_in(r) == {young}


async def test_unfinished_uploads_in_a_local_region_are_removed_after_the_grace(
    tmp_path: Path,
) -> None:
    local = LocalStorage("disk", tmp_path, create_root=True)
    stale = await local.open_writer("billing/db/20261101T000000Z-00000000/data.drd")
    await stale.write(b"x" * 100)
    fresh = await local.open_writer("billing/db/20261120T110000Z-00000000/data.drd")
    await fresh.write(b"y" * 100)
    partials = sorted(p for p in tmp_path.rglob("*") if ".drd-partial-" in p.name)
    old = time.time() - 7 * 3600
    os.utime(partials[0], (old, old))

    report = await sweep(make_plan(["disk", "ew1"]), {"disk": local}, now=NOW)

    assert report.regions["disk"].partials_removed == 1
    left = [p for p in tmp_path.rglob("*") if ".drd-partial-" in p.name]
    assert left == [partials[1]]
    await fresh.abort()
    await stale.abort()


async def test_busy_sources_are_left_alone(blob_strategy, keyring) -> None:
    rs = memory_regions()
    db = await backup_at(NOW - 20 * D, list(rs.values()), keyring)
    files = await backup_at(NOW - 20 * D, list(rs.values()), keyring, FILES)

    report = await sweep(make_plan(), rs, now=NOW, skip_sources={"db"})

    assert report.skipped_sources == ["db"]
    for r in rs.values():
        assert await ids_in(r) == {db}
    assert files in {b.backup_id for b in report.decision.destroy}


class SoftDeleting(MemoryStorage):
    def __init__(self, name: str, soft_delete: timedelta) -> None:
        super().__init__(name)
        self.soft_delete = soft_delete

    async def deletion_settings(self) -> DeletionSettings:
        return DeletionSettings(soft_delete=self.soft_delete)


async def test_each_region_deletes_at_its_own_age(blob_strategy, keyring) -> None:
    """Issue 13, must-hold 9: a region's deletion delay moves that region's deletion only (the
    slowest region's delay used to shorten every region's retention)."""
    rs: dict[str, MemoryStorage] = {
        "ew1": MemoryStorage("ew1"),
        "uc1": SoftDeleting("uc1", 3 * D),
        "as1": SoftDeleting("as1", 30 * D),  # cannot keep the promise: flagged, 1-day minimum
    }
    kept = await backup_at(NOW - 10 * D - H, list(rs.values()), keyring)
    gone = await backup_at(NOW - 11 * D, list(rs.values()), keyring)

    report = await sweep(make_plan(), rs, now=NOW)

    assert report.destroy_ages == {"ew1": 14 * D, "uc1": 11 * D, "as1": 1 * D}
    assert await ids_in(rs["ew1"]) == {kept, gone}
    assert await ids_in(rs["uc1"]) == {kept}
    assert await ids_in(rs["as1"]) == set()
    assert gone in {b.backup_id for b in report.decision.destroy}
    errors = [f for f in report.findings if f.severity == "error"]
    assert [f.region for f in errors] == ["as1"]
    assert "within 14 days is impossible" in errors[0].message
    text = "\n".join(format_sweep(report))
    assert "region as1: error:" in text
    assert "region uc1 deletes its copies at age 11d (its storage keeps deleted data 3d)" in text
    assert "region ew1: 0 destroyed, 0 failed, 2 kept" in text
    # Repair does not bring back what a region deleted at its own age.
    repaired = await repair(make_plan(), rs, keyring, now=NOW, destroy_age=report.destroy_ages)
    assert repaired.repaired == [] and await ids_in(rs["uc1"]) == {kept}


# --------------------------------------------------------------------------------------------
# repair


async def test_a_missing_copy_is_repaired_and_restores_on_its_own(blob_strategy, keyring) -> None:
    rs = memory_regions()
    down = FaultyStorage(rs["as1"])
    down.fail("open_writer", TransientStorageError("as1 is down"))
    backup_id = await backup_at(
        NOW - 1 * D, [rs["ew1"], rs["uc1"], down], keyring, min_copies=2, size=300_000
    )
    assert await rs["as1"].list() == []
    metrics = Metrics()

    report = await repair(make_plan(), rs, keyring, metrics=metrics, now=NOW, destroy_age=14 * D)

    assert [(c.backup_id, c.region, c.source_region) for c in report.repaired] == [
        (backup_id, "as1", "ew1")
    ]
    assert report.failed == []
    for key in (DB.data_key(backup_id), DB.manifest_key(backup_id)):
        assert await rs["as1"].get(key) == await rs["ew1"].get(key)  # ciphertext, byte for byte
    assert sample(metrics, "drd_copy_repairs_total", plan="billing", region="as1", result="success")
    # The repaired copy alone restores.
    result = await restore_backup(DB, [rs["as1"]], keyring, "restored")
    assert result.region == "as1" and RESTORED["restored"] == blob_bytes(300_000, seed=7)
    # A second repair has nothing to do.
    again = await repair(make_plan(), rs, keyring, now=NOW)
    assert again.repaired == again.failed == []


async def test_repair_streams_and_skips_a_damaged_source(blob_strategy, keyring) -> None:
    rs = memory_regions()
    backup_id = await backup_at(
        NOW - 1 * D, [rs["ew1"], rs["uc1"]], keyring, min_copies=2, size=200_000
    )
    key = DB.data_key(backup_id)
    data = bytearray(await rs["ew1"].get(key))
    data[len(data) // 2] ^= 1  # bit rot: same size, so the listing cannot tell
    await rs["ew1"].put(key, bytes(data))
    target = FaultyStorage(rs["as1"])

    report = await repair(make_plan(), {**rs, "as1": target}, keyring, now=NOW)

    (copy,) = report.repaired
    assert copy.source_region == "uc1"
    assert await rs["as1"].get(key) == await rs["uc1"].get(key)
    # Streamed: one write per 1000-byte chunk the source yields, for each of the two attempts.
    size = (await rs["uc1"].stat(key)).size
    writes = [c for c in target.calls if c[0] == "write"]
    assert size > 5000 and len(writes) == 2 * -(-size // 1000)
    assert [c[0] for c in target.calls if c[0] in ("commit", "put")] == ["commit", "put"]


async def test_repair_never_copies_a_damaged_backup(blob_strategy, keyring) -> None:
    rs = memory_regions()
    backup_id = await backup_at(NOW - 1 * D, [rs["ew1"], rs["uc1"]], keyring, min_copies=2)
    key = DB.data_key(backup_id)
    for name in ("ew1", "uc1"):
        data = bytearray(await rs[name].get(key))
        data[-1] ^= 1
        await rs[name].put(key, bytes(data))
    metrics = Metrics()

    report = await repair(make_plan(), rs, keyring, metrics=metrics, now=NOW)

    (failed,) = report.failed
    assert failed.region == "as1" and "does not match its manifest" in (failed.error or "")
    assert await rs["as1"].list() == []
    assert sample(metrics, "drd_copy_repairs_total", plan="billing", region="as1", result="failure")


async def test_repair_copies_a_single_copy_and_leaves_expiring_and_unreachable_alone(
    blob_strategy, keyring
) -> None:
    rs = memory_regions()
    # Committed in one region only (below the plan's min_copies 2): still a committed backup
    # that lost copies, repaired to every plan region whatever min_copies is (issue 13).
    single = await backup_at(NOW - 1 * D, [rs["ew1"]], keyring, min_copies=1)
    # Complete, but retention destroys it within the hour.
    await backup_at(NOW - 14 * D, [rs["ew1"], rs["uc1"]], keyring, FILES)
    down = FaultyStorage(rs["as1"])
    down.fail("*", TransientStorageError("down"))

    report = await repair(
        make_plan(), {**rs, "as1": down}, keyring, now=NOW + 30 * M, destroy_age=14 * D
    )
    assert [(c.backup_id, c.region) for c in report.repaired] == [(single, "uc1")]
    assert report.failed == [] and "as1" in report.unreachable

    report = await repair(make_plan(), rs, keyring, now=NOW + 30 * M, destroy_age=14 * D)
    assert [(c.backup_id, c.region) for c in report.repaired] == [(single, "as1")]
    assert report.failed == []
    assert {i.key.split("/")[2] for i in await rs["as1"].list()} == {single}


# --------------------------------------------------------------------------------------------
# in the daemon


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def load(daemon) -> None:  # type: ignore[no-untyped-def]
    """load_state, with no backup due for a day: the scheduler is not what these tests drive
    (a backup due within 30 seconds makes retention leave its source alone)."""
    await daemon.load_state()
    for st in daemon.sources.values():
        st.next_due = daemon.clock() + D


@pytest.fixture
def daemon_setup(tmp_path: Path, blob_strategy, keyring):  # type: ignore[no-untyped-def]
    from drd.config.loader import load_config
    from drd.daemon.service import Daemon
    from tests.support.drdenv import DrdEnv

    env = DrdEnv(tmp_path)
    env.regions = [{"name": n, "url": f"mem://{n}"} for n in NAMES]
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "blob", "size": 20_000, "seed": 7}],
        min_copies=2,
    )
    cfg = load_config(env.write())
    rs: dict[str, MemoryStorage] = memory_regions()
    clock = Clock(NOW)
    metrics = Metrics()
    daemon = Daemon(cfg, keyring, rs, metrics=metrics, clock=clock)
    yield daemon, rs, clock, metrics
    daemon.history.close()


async def test_daemon_repair_updates_the_copies_metric(daemon_setup, keyring) -> None:
    daemon, rs, clock, metrics = daemon_setup
    down = FaultyStorage(rs["as1"])
    down.fail("open_writer", TransientStorageError("as1 is down"))
    await backup_at(NOW - 1 * D, [rs["ew1"], rs["uc1"], down], keyring, min_copies=2)
    await load(daemon)
    st = daemon.sources[DB]
    copies = "drd_backup_copies"
    assert st.copies == {"ew1": True, "uc1": True, "as1": False}
    assert sample(metrics, copies, plan="billing", source="db", region="as1") == 0

    (report,) = await daemon.retention.run_once()

    assert report.ok
    assert st.copies == {"ew1": True, "uc1": True, "as1": True}
    assert sample(metrics, copies, plan="billing", source="db", region="as1") == 1
    # Nothing expires for 13 days: the next round is the hourly one.
    assert daemon.retention.due["billing"] == NOW + H
    assert await daemon.retention.run_once() == []  # not due yet
    clock.now = NOW + H
    assert len(await daemon.retention.run_once()) == 1


async def test_daemon_sweep_wakes_up_when_the_next_backup_expires(daemon_setup, keyring) -> None:
    daemon, rs, clock, metrics = daemon_setup
    backup_id = await backup_at(NOW - 14 * D + 10 * M, list(rs.values()), keyring)
    await load(daemon)

    await daemon.retention.run_once()
    assert daemon.retention.due["billing"] == NOW + 10 * M
    clock.now = NOW + 10 * M
    (report,) = await daemon.retention.run_once()

    assert [b.backup_id for b in report.decision.destroy] == [backup_id]
    for r in rs.values():
        assert await r.list() == []
    # The newest backup is gone: it has no copy anywhere any more.
    assert daemon.sources[DB].copies == dict.fromkeys(NAMES, False)
    daemon.refresh_metrics()
    age = "drd_retention_oldest_copy_age_seconds"
    assert sample(metrics, age, plan="billing", region="ew1") == 0


async def test_daemon_leaves_a_source_whose_backup_holds_the_lock(daemon_setup, keyring) -> None:
    from drd.locks import source_lock

    daemon, rs, clock, _ = daemon_setup
    await backup_at(NOW - 20 * D, list(rs.values()), keyring)
    await load(daemon)

    with source_lock(daemon.cfg.state_dir, DB):  # e.g. `drd backup billing/db` in progress
        (report,) = await daemon.retention.run_once()
    assert report.skipped_sources == ["db"]
    daemon.sources[DB].next_due = NOW + timedelta(seconds=20)
    (report,) = await daemon.retention.run_once(force=True)
    assert report.skipped_sources == ["db"]  # a backup is about to take the lock
    daemon.sources[DB].next_due = NOW + D
    assert all([await r.list() for r in rs.values()])
    assert daemon.retention.due["billing"] == NOW + 5 * M

    clock.now = NOW + 5 * M
    (report,) = await daemon.retention.run_once()
    assert report.skipped_sources == []
    assert [await r.list() for r in rs.values()] == [[], [], []]


async def test_readyz_reports_a_region_that_cannot_destroy_in_time(daemon_setup) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from drd.server.app import make_app

    daemon = daemon_setup[0]
    daemon.regions["as1"] = SoftDeleting("as1", 30 * D)  # the mapping the loops share
    assert daemon.retention.services.regions["as1"] is daemon.regions["as1"]
    await daemon.retention.run_once()
    assert list(daemon.retention.problems()) == ["as1"]

    async with TestClient(TestServer(make_app(daemon))) as client:
        response = await client.get("/readyz")
        body = await response.json()
    assert response.status == 503
    assert "cannot destroy backups in time in region(s): as1" in body["reason"]
    assert "within 14 days is impossible" in body["checks"]["retention"]["as1"]
    assert body["checks"]["retention"]["ew1"] == "ok"


# --------------------------------------------------------------------------------------------
# the command line, on local-directory regions


def test_prune_and_doctor_commands(
    tmp_path: Path, blob_strategy, keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    from drd.cli.main import main
    from tests.support.drdenv import DrdEnv

    env = DrdEnv(tmp_path)
    roots = [env.add_local_region(n) for n in ("a", "b")]
    env.add_plan("billing", [{"name": "db", "kind": "blob", "size": 100}])
    config = str(env.write())
    local = [LocalStorage(n, root) for n, root in zip(("a", "b"), roots, strict=True)]
    now = datetime.now(UTC)
    old = asyncio.run(backup_at(now - 15 * D, local, keyring))
    young = asyncio.run(backup_at(now - 1 * D, local, keyring))

    def files() -> list[tuple[str, int, int]]:
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in env.stored_files()]

    before = files()
    assert main(["--config", config, "prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert files() == before
    assert out.count(f"would destroy billing/db@{old}: backup, age 15d") == 2

    assert main(["--config", config, "doctor"]) == 0
    out = capsys.readouterr().out
    assert "region a: no soft delete, versioning off" in out and "retention: ok" in out

    assert main(["--config", config, "prune", "billing"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"destroyed billing/db@{old}") == 2
    assert {p.parent.name for p in env.stored_files()} == {young}
    assert main(["--config", config, "prune", "nosuchplan"]) == 2
