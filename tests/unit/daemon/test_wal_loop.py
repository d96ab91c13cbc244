"""Continuous WAL archiving without a server (drd.daemon.wal_spool, wal_catchup, wal_loop): WAL
files put into a spool directory the way pg_receivewal leaves them are shipped to in-memory
regions, once per region, min_copies honoured, a region that was down caught up, partials
shipped periodically and superseded, gaps counted, and the metrics the daemon exports."""

from __future__ import annotations

import logging
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.wal_catchup import catch_up, count_gaps
from drd.daemon.wal_loop import WalLoop, slot_of, streamed_sources
from drd.daemon.wal_receiver import backoff
from drd.daemon.wal_spool import MARKER_FILE, Shipper, scan, spool_dir
from drd.errors import TransientStorageError
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.pitr import push_wal
from drd.repository.wal import list_archive, parse_wal_key
from drd.runtime import Services
from drd.storage.base import Storage
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from drd.strategies.postgres_physical import ServerSample
from drd.strategies.postgres_wal import Segment
from tests.support.drdenv import DrdEnv

REF = SourceRef("billing", "db")
SYSID = 7715084644530370058
SEG = 1 << 20
T0 = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def name(segno: int, tli: int = 1) -> str:
    return Segment(tli, segno).name(SEG)


def segment_bytes(segno: int, tli: int = 1, fill: int = 0) -> bytes:
    header = struct.pack("<HHIQI4xQII", 0xD110, 2, tli, segno * SEG, 0, SYSID, SEG, 8192)
    return header + bytes([fill or segno % 251]) * 4000


def put_segment(spool: Path, segno: int, *, partial: bool = False, fill: int = 0) -> Path:
    path = spool / (name(segno) + (".partial" if partial else ""))
    path.write_bytes(segment_bytes(segno, fill=fill))
    return path


async def objects(region: Storage, prefix: str = "billing/db/wal/") -> list[str]:
    inner = region.inner if isinstance(region, FaultyStorage) else region
    return sorted(info.key for info in await inner.list(prefix))


def shipper(tmp_path: Path, regions: list[Any], keyring: crypto.Keyring, **kw: Any) -> Shipper:
    spool = spool_dir(tmp_path / "state", REF)
    defaults: dict[str, Any] = {
        "min_copies": len(regions),
        "partial_every": timedelta(seconds=15),
    }
    return Shipper(REF, spool, regions, keyring, **{**defaults, **kw})


def test_the_spool_is_private_and_lists_wal_in_order(tmp_path: Path) -> None:
    spool = spool_dir(tmp_path / "state", REF)
    assert spool == tmp_path / "state" / "wal-spool" / "billing" / "db"
    for part in (spool, spool.parent, spool.parent.parent):
        assert part.stat().st_mode & 0o777 == 0o700
    put_segment(spool, 3, partial=True)
    put_segment(spool, 2)
    put_segment(spool, 1)
    (spool / "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    (spool / f"{name(3)}.partial.tmp").write_text("not wal")
    assert [f.name for f in scan(spool)] == [
        "00000002.history",
        name(1),
        name(2),
        name(3) + ".partial",
    ]


async def test_completed_segments_are_stored_once_and_leave_the_spool(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    regions = [MemoryStorage("a"), MemoryStorage("b")]
    s = shipper(tmp_path, regions, keyring)
    for segno in (1, 2, 3):
        put_segment(s.spool, segno)
    assert await s.ship(T0) == 3
    for region in regions:
        stored = [parse_wal_key(k) for k in (await objects(region))]
        assert [k.name for k in stored if k] == [name(1), name(2), name(3)]
    # The newest stays as the marker pg_receivewal resumes after; it is not shipped again.
    assert sorted(p.name for p in s.spool.iterdir()) == [MARKER_FILE, name(3)]
    assert (s.spool / MARKER_FILE).read_text().strip() == name(3)
    assert s.archived is not None and s.archived.name == name(3)
    assert s.archived.lsn == 4 * SEG
    assert await s.ship(T0) == 0
    put_segment(s.spool, 4)
    assert await s.ship(T0) == 1
    assert sorted(p.name for p in s.spool.iterdir()) == [MARKER_FILE, name(4)]
    assert len(await objects(regions[0])) == 4


async def test_a_segment_shipped_before_a_crash_is_not_stored_twice(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    regions = [MemoryStorage("a"), MemoryStorage("b")]
    s = shipper(tmp_path, regions, keyring)
    path = put_segment(s.spool, 5)
    put_segment(s.spool, 6)
    # The daemon stored segment 5 in region a and was killed before it left the spool; the
    # restarted one ships the spool again (the file's time is the same: same key).
    mtime = datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC)
    await push_wal(
        REF,
        regions[:1],
        keyring,
        system_id=str(SYSID),
        name=name(5),
        data=path.read_bytes(),
        through=mtime + timedelta(seconds=1),
        timeline=1,
        segment_size=SEG,
        min_copies=1,
    )
    before = await objects(regions[0])
    assert await s.ship(T0) == 2
    six = [k for k in await objects(regions[1]) if name(6) in k]
    assert await objects(regions[0]) == sorted([*before, *six])  # 5 not written again
    for region in regions:
        names = [parse_wal_key(k).name for k in (await objects(region))]  # type: ignore[union-attr]
        assert names == [name(5), name(6)], names


async def test_below_min_copies_the_spool_keeps_the_segment(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    a, b = MemoryStorage("a"), FaultyStorage(MemoryStorage("b"))
    b.fail("put", TransientStorageError("503 from region b"))
    s = shipper(tmp_path, [a, b], keyring, min_copies=2)
    put_segment(s.spool, 1)
    put_segment(s.spool, 2)
    assert await s.ship(T0) == 0
    assert s.problem is not None and "min_copies is 2" in s.problem
    assert (s.spool / name(1)).exists() and (s.spool / name(2)).exists()
    # Later WAL never counts before earlier WAL: segment 2 was not even tried.
    assert [k for k in (await objects(a)) if name(2) in k] == []
    assert s.archived is None
    b.clear()
    assert await s.ship(T0) == 2
    assert s.problem is None
    assert not (s.spool / name(1)).exists()
    assert len(await objects(a)) == len(await objects(b)) == 2


async def test_a_region_down_gets_the_missing_segments_when_it_is_back(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    a, b = MemoryStorage("a"), FaultyStorage(MemoryStorage("b"))
    b.fail("*", TransientStorageError("region b is down"))
    s = shipper(tmp_path, [a, b], keyring, min_copies=1)
    for segno in (1, 2, 3):
        put_segment(s.spool, segno)
    assert await s.ship(T0) == 3  # min_copies 1: they count, and leave the spool
    assert not (s.spool / name(1)).exists()
    assert s.regions_behind == {"b"}
    down = await catch_up(REF, [a, b], keyring, min_copies=1, segment_size=SEG)
    assert "b" in down.archive.region_errors and not down.copied
    b.clear()
    back = await catch_up(REF, [a, b], keyring, min_copies=1, segment_size=SEG)
    assert sorted(back.copied["b"]) == (await objects(a))
    assert (await objects(b)) == (await objects(a))  # the same objects, under the same keys
    archive = await list_archive([b], REF)
    assert sorted(archive.files(str(SYSID))) == [name(1), name(2), name(3)]
    again = await catch_up(REF, [a, b], keyring, min_copies=2, segment_size=SEG)
    assert not again.copied and (await objects(b)) == (await objects(a))
    assert again.newest is not None and again.newest.name == name(3)


async def test_a_damaged_copy_is_not_spread(tmp_path: Path, keyring: crypto.Keyring) -> None:
    a, b = MemoryStorage("a"), MemoryStorage("b")
    s = shipper(tmp_path, [a], keyring, min_copies=1)
    put_segment(s.spool, 1)
    put_segment(s.spool, 2)
    await s.ship(T0)
    damaged = (await objects(a))[0]
    raw = bytearray(await a.get(damaged))
    raw[-3] ^= 0xFF
    await a.delete(damaged)
    await a.put(damaged, bytes(raw))
    result = await catch_up(REF, [a, b], keyring, min_copies=1, segment_size=SEG)
    assert result.copied["b"] == [(await objects(a))[1]]
    assert (await objects(b)) == [(await objects(a))[1]]


async def test_the_partial_is_shipped_periodically_and_superseded(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    regions = [MemoryStorage("a"), MemoryStorage("b")]
    s = shipper(tmp_path, regions, keyring, partial_every=timedelta(seconds=15))
    partial = put_segment(s.spool, 7, partial=True, fill=1)
    assert await s.ship(T0, covered_lsn=7 * SEG + 100) == 1
    first = await objects(regions[0])
    assert len(first) == 1 and ".partial@" in first[0]
    assert s.archived is not None and s.archived.lsn == 7 * SEG + 100
    assert await s.ship(T0 + timedelta(seconds=20)) == 0  # unchanged: not stored again
    partial.write_bytes(segment_bytes(7, fill=2))
    os.utime(partial, ns=(partial.stat().st_atime_ns, partial.stat().st_mtime_ns + 10**9))
    assert await s.ship(T0 + timedelta(seconds=21)) == 1  # changed, 21s after the last one
    partial.write_bytes(segment_bytes(7, fill=3))
    os.utime(partial, ns=(partial.stat().st_atime_ns, partial.stat().st_mtime_ns + 2 * 10**9))
    assert await s.ship(T0 + timedelta(seconds=30)) == 0  # changed, but only 9s later
    assert await s.ship(T0 + timedelta(seconds=36)) == 1
    assert len(await objects(regions[0])) == 3
    # Only the newest partial of a segment is worth keeping; none once the segment is complete.
    await catch_up(REF, regions, keyring, min_copies=2, segment_size=SEG)
    kept = await objects(regions[0])
    assert len(kept) == 1 and kept[0] not in first
    os.replace(partial, s.spool / name(7))
    put_segment(s.spool, 8, partial=True)
    assert await s.ship(T0 + timedelta(seconds=37)) == 2  # the segment, and the new partial
    await catch_up(REF, regions, keyring, min_copies=2, segment_size=SEG)
    for region in regions:
        names = [parse_wal_key(k).name for k in (await objects(region))]  # type: ignore[union-attr]
        assert names == [name(7), name(8) + ".partial"]


async def test_gaps_are_counted_where_wal_follows_a_missing_segment(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    region = MemoryStorage("a")
    s = shipper(tmp_path, [region], keyring)
    for segno in (1, 2, 4, 5, 8):
        put_segment(s.spool, segno)
        await s.ship(T0)
    archive = await list_archive([region], REF)
    assert count_gaps(archive, SEG) == [name(3), name(6)]
    result = await catch_up(REF, [region], keyring, min_copies=1, segment_size=SEG)
    assert result.gaps == [name(3), name(6)]


def test_the_receiver_backs_off_without_spinning() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 7, 8, 100)] == [1, 2, 4, 8, 60, 60, 60]


def physical_config(tmp_path: Path, **source: Any) -> Any:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "billing",
        [
            {
                "name": "db",
                "kind": "postgres-physical",
                "dsn": "host=127.0.0.1 port=1 user=drd",
                "partial_every": "5s",
                **source,
            },
            {"name": "logical", "kind": "postgres", "dsn": "host=127.0.0.1 port=1"},
        ],
        min_copies=1,
    )
    return load_config(env.write())


async def test_the_loop_archives_every_streamed_source_and_exports_metrics(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    cfg = physical_config(tmp_path, max_slot_retained="2GiB")
    plan = cfg.plan("billing")
    assert [s.name for s in streamed_sources(plan)] == ["db"]
    assert slot_of(plan, streamed_sources(plan)[0]) == "drd_billing_db"
    regions: dict[str, Storage] = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    metrics, clock = Metrics(), Clock()
    services = Services(cfg=cfg, regions=regions, keyring=keyring, metrics=metrics, clock=clock)
    loop = WalLoop(services, sample_server=False)
    assert list(loop.archivers) == [REF]
    assert loop.recovery_point(REF) is None
    assert loop.recovery_point(SourceRef("billing", "logical")) is None
    spool = cfg.state_dir / "wal-spool" / "billing" / "db"
    put_segment(spool, 1)
    put_segment(spool, 2, partial=True)
    assert await loop.run_once() == 2
    text = generate_latest(metrics.registry).decode()
    labels = 'plan="billing",source="db"'
    assert f"drd_wal_archived_files_total{{{labels}}} 2.0" in text
    assert f"drd_wal_gaps{{{labels}}} 0.0" in text
    assert f"drd_wal_receiver_up{{{labels}}} 0.0" in text
    assert f"drd_wal_slot_retained_limit_bytes{{{labels}}} 2.147483648e+09" in text
    partial_time = datetime.fromtimestamp((spool / f"{name(2)}.partial").stat().st_mtime, UTC)
    point = loop.recovery_point(REF)
    assert point is not None and abs((point - partial_time).total_seconds()) < 0.002
    assert "drd_wal_last_archived_timestamp_seconds{" + labels + "}" in text

    # A restarted daemon (a new loop, nothing in memory) reads where the archive ends from the
    # regions, and ships nothing twice.
    again = WalLoop(services, sample_server=False)
    assert await again.run_once() == 1  # the partial, unknown to the new loop, once more
    point = again.recovery_point(REF)
    assert point is not None and abs((point - partial_time).total_seconds()) < 0.002
    for region in regions.values():
        archive = await list_archive([region], REF)
        assert sorted(archive.files(str(SYSID))) == [name(1), name(2) + ".partial"]


async def test_a_region_down_is_logged_once_not_once_per_file(
    tmp_path: Path, keyring: crypto.Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "drd.daemon.wal_spool")
    a, b = MemoryStorage("a"), FaultyStorage(MemoryStorage("b"))
    b.fail("*", TransientStorageError("region b is down"))
    s = shipper(tmp_path, [a, b], keyring, min_copies=1)
    for segno in (1, 2, 3):
        put_segment(s.spool, segno)
        await s.ship(T0)
    down = [r for r in caplog.records if "not stored in region b" in r.getMessage()]
    assert len(down) == 1
    b.clear()
    put_segment(s.spool, 4)
    await s.ship(T0)
    assert any("region b stores WAL again" in r.getMessage() for r in caplog.records)
    assert s.regions_down == set()


async def test_an_unchanged_partial_covers_what_was_flushed_after_its_last_write(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    s = shipper(tmp_path, [MemoryStorage("a")], keyring)
    partial = put_segment(s.spool, 7, partial=True)
    written = datetime.fromtimestamp(partial.stat().st_mtime_ns / 1e9, UTC)
    assert await s.ship(T0, covered_lsn=7 * SEG + 100) == 1
    assert s.archived is not None and s.archived.lsn == 7 * SEG + 100
    # A flush position seen before the file's last write says nothing about the stored copy.
    before = written - timedelta(seconds=1)
    assert await s.ship(T0, covered_lsn=7 * SEG + 900, covered_at=before) == 0
    assert s.archived.lsn == 7 * SEG + 100
    # Seen after it (an idle server): the stored partial holds it, nothing is shipped again.
    after = written + timedelta(seconds=1)
    assert await s.ship(T0, covered_lsn=7 * SEG + 900, covered_at=after) == 0
    assert s.archived.lsn == 7 * SEG + 900
    assert await s.ship(T0, covered_lsn=9 * SEG, covered_at=after) == 0  # another segment's
    assert s.archived.lsn == 7 * SEG + 900


async def test_a_reload_starts_new_sources_and_forgets_removed_ones(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    cfg = physical_config(tmp_path)
    regions: dict[str, Storage] = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    metrics = Metrics()
    services = Services(cfg=cfg, regions=regions, keyring=keyring, metrics=metrics, clock=Clock())
    loop = WalLoop(services, sample_server=False)
    kept = loop.archivers[REF]
    assert (
        'drd_wal_receiver_up{plan="billing",source="db"}'
        in generate_latest(metrics.registry).decode()
    )

    same = physical_config(tmp_path / "same")
    await loop.reconfigure(Services(cfg=same, regions=regions, keyring=keyring, metrics=metrics))
    assert loop.archivers[REF] is kept  # nothing changed: it keeps running

    changed = physical_config(tmp_path / "changed", partial_every="10s")
    await loop.reconfigure(Services(cfg=changed, regions=regions, keyring=keyring, metrics=metrics))
    assert loop.archivers[REF] is not kept
    assert loop.archivers[REF].shipper.partial_every == timedelta(seconds=10)

    gone = physical_config(tmp_path / "gone", archive="command")
    await loop.reconfigure(Services(cfg=gone, regions=regions, keyring=keyring, metrics=metrics))
    assert loop.archivers == {}
    text = generate_latest(metrics.registry).decode()
    assert 'drd_wal_receiver_up{plan="billing",source="db"}' not in text
    assert loop.seconds_until_due() > 60  # nothing to poll


async def test_an_idle_source_recovers_to_when_it_was_last_seen_fully_archived(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    cfg = physical_config(tmp_path)
    regions: dict[str, Storage] = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    clock = Clock(datetime.now(UTC))
    services = Services(cfg=cfg, regions=regions, keyring=keyring, clock=clock)
    loop = WalLoop(services, sample_server=False)
    put_segment(cfg.state_dir / "wal-spool" / "billing" / "db", 1)
    await loop.run_once()
    archiver = loop.archivers[REF]
    archived = archiver.shipper.archived
    assert archived is not None and loop.recovery_point(REF) == archived.through

    def seen(lsn: int, at: datetime) -> None:
        archiver.last_sample = ServerSample(
            time=at,
            lsn=lsn,
            timeline=1,
            system_identifier=str(SYSID),
            slot_lsn=lsn,
            slot_active=True,
            slot_retained=0,
            wal_status="reserved",
        )
        archiver.answered_at = at
        loop._publish(archiver)

    later = archived.through + timedelta(minutes=10)
    seen(archived.lsn + 10, later)  # written, not yet archived: the point stays
    assert loop.recovery_point(REF) == archived.through
    seen(archived.lsn, later)  # nothing written since: everything was archived at `later`
    assert loop.recovery_point(REF) == later
    text = generate_latest(services.metrics.registry).decode()
    assert 'drd_wal_archive_lag_bytes{plan="billing",source="db"} 0.0' in text


async def test_an_old_timelines_partial_is_stored_once_and_the_new_one_periodically(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    region = MemoryStorage("a")
    s = shipper(tmp_path, [region], keyring)
    # After a promotion pg_receivewal leaves timeline 1's last segment as .partial and goes
    # on with timeline 2 in the same segment number.
    old = s.spool / (name(5, tli=1) + ".partial")
    old.write_bytes(segment_bytes(5, tli=1))
    new = s.spool / (name(5, tli=2) + ".partial")
    new.write_bytes(segment_bytes(5, tli=2))
    assert await s.ship(T0) == 2
    assert not old.exists() and new.exists()
    names = [parse_wal_key(k).name for k in await objects(region)]  # type: ignore[union-attr]
    assert sorted(names) == sorted([name(5, tli=1) + ".partial", name(5, tli=2) + ".partial"])
    assert s.partial_version is not None and s.partial_version[0] == new.name
