"""WAL retention (drd.retention.wal_retention, in drd.retention.sweep) on in-memory regions with
an injected clock: base backups made by the real pipeline with a physical kind's metadata, WAL
stored by push_wal, then swept at a chosen `now`.

The archive of these tests: segment n is written at T(n) = NOW - 21 days + n * 0.8 days, and a
base backup captured at c starts in the first segment written after c."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.cli.main import main
from drd.config.loader import load_config
from drd.config.models import Plan, PlanStorage, Retention, Schedule, Targets
from drd.daemon.retention_loop import RetentionLoop
from drd.daemon.wal_catchup import catch_up
from drd.daemon.wal_loop import WalLoop
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.backup import run_backup
from drd.pipeline.pitr import push_wal, recovery_windows
from drd.repository.wal import parse_wal_key
from drd.retention.report import format_sweep
from drd.retention.sweep import RetentionMemory, sweep
from drd.runtime import Services
from drd.storage.base import DeletionSettings, Storage
from drd.storage.local import LocalStorage
from drd.storage.memory import MemoryStorage
from drd.strategies.base import SourceOptions, Strategy
from drd.strategies.postgres_physical import PostgresPhysicalOptions
from drd.strategies.postgres_wal import Segment
from tests.support.drdenv import DrdEnv

REF = SourceRef("billing", "db")
SYSID = "7715084644530370058"
SEG = 16 << 20
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
D, H = timedelta(days=1), timedelta(hours=1)


def written(segno: int) -> datetime:
    return NOW - 21 * D + segno * 0.8 * D


def name(segno: int, tli: int = 1) -> str:
    return Segment(tli, segno).name(SEG)


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


class FakeBase(Strategy[SourceOptions]):
    """What retention reads of a pg_basebackup: its kind and WAL range."""

    kind = "postgres-physical"
    Options = SourceOptions
    start = 1
    end = 1
    system_id = SYSID

    async def dump(self):  # type: ignore[no-untyped-def]
        yield b"tar"
        self._metadata = {
            "format": "pg_basebackup-tar",
            "system_identifier": self.system_id,
            "wal_segment_size": SEG,
            "timeline": 1,
            "end_timeline": 1,
            "start_lsn": f"0/{self.start * SEG + 0x28:X}",
            "end_lsn": f"0/{self.end * SEG + 0x100:X}",
            "end_time": written(self.end).isoformat(),
            "server_version_num": 150000,
        }

    @classmethod
    async def restore(cls, chunks, target, metadata):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def make_plan(regions: Sequence[str] = ("a", "b")) -> Plan:
    return Plan(
        name="billing",
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=H, rto=H),
        schedule=Schedule(every=4 * H),
        storage=PlanStorage(regions=list(regions), min_copies=1),
        retention=Retention(max_age=14 * D),
        sources=[PostgresPhysicalOptions(name="db", dsn="host=127.0.0.1 dbname=postgres")],
        path=Path("/etc/drd/plans/billing.yaml"),
    )


async def base_at(
    captured: datetime, start: int, rs: Sequence[Storage], keyring: crypto.Keyring, **kw: Any
) -> str:
    base = FakeBase(SourceOptions(name="db", kind="postgres-physical"))
    base.start, base.end = start, kw.pop("end", start)
    base.system_id = kw.pop("system_id", SYSID)
    result = await run_backup(REF, base, list(rs), keyring, min_copies=1, clock=lambda: captured)
    return result.backup_id


def segment_bytes(segno: int, tli: int = 1) -> bytes:
    header = struct.pack("<HHIQI4xQII", 0xD110, 2, tli, segno * SEG, 0, int(SYSID), SEG, 8192)
    return header + bytes([segno % 251]) * 2000


async def wal(
    rs: Sequence[Storage], keyring: crypto.Keyring, segnos: range, system_id: str = SYSID
) -> None:
    for segno in segnos:
        await push_wal(
            REF,
            list(rs),
            keyring,
            system_id=system_id,
            name=name(segno),
            data=segment_bytes(segno),
            through=written(segno),
            timeline=1,
            segment_size=SEG,
            min_copies=1,
        )


async def held(region: Storage) -> list[str]:
    keys = [parse_wal_key(i.key) for i in await region.list("billing/db/wal/")]
    return sorted(k.name for k in keys if k is not None)


async def backups(region: Storage) -> set[str]:
    return {i.key.split("/")[2] for i in await region.list("billing/db/") if "/wal/" not in i.key}


def sample(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


async def archive(keyring: crypto.Keyring, rs: Sequence[Storage]) -> tuple[str, str, str]:
    """Base backups at 20, 10 and 2 days (starting in segments 2, 14 and 24), WAL 1..25."""
    old = await base_at(NOW - 20 * D, 2, rs, keyring)
    kept = await base_at(NOW - 10 * D, 14, rs, keyring)
    new = await base_at(NOW - 2 * D, 24, rs, keyring)
    await wal(rs, keyring, range(1, 26))
    return old, kept, new


async def test_wal_before_the_oldest_kept_base_backup_goes_in_the_same_sweep_with_its_proof(
    keyring: crypto.Keyring,
) -> None:
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    _old, kept, new = await archive(keyring, list(rs.values()))
    metrics = Metrics()

    report = await sweep(make_plan(), rs, now=NOW, metrics=metrics, keyring=keyring)

    assert report.ok, format_sweep(report)
    for region in rs.values():
        assert await backups(region) == {kept, new}
        # Segments 1..8 reached max_age; 9..13 are younger but precede base backup `kept`'s
        # start (segment 14), the oldest kept: gone too. From 14 on every segment stays.
        assert await held(region) == [name(n) for n in range(14, 26)]
        assert sample(metrics, "drd_retention_wal_deleted_total", plan="billing", region="a") == 13
    swept = report.regions["a"]
    assert len(swept.wal_destroyed) == 13 and not swept.wal_failed
    reasons = swept.wal_decisions[REF].destroy
    assert sum("reached the destroy age" in r for r in reasons.values()) == 8
    assert sum(f"base backup {kept}'s start segment {name(14)}" in r for r in reasons.values()) == 5
    assert swept.oldest == NOW - 10 * D  # base backup `kept`; its WAL is younger
    # The window still holds: both kept base backups restore to the newest WAL.
    windows = await recovery_windows(REF, list(rs.values()), keyring)
    assert [w.base.backup_id for w in windows.windows] == [kept, new]
    assert all(w.chain.gap is None and w.chain.end == Segment(1, 25) for w in windows.windows)
    assert report.window_start(REF) == written(14)
    assert not report.wal_findings
    # The next sweep is due when the oldest WAL left (or base backup) reaches max_age.
    assert report.next_expiry() == min(written(14) + 14 * D, NOW - 10 * D + 14 * D)


async def test_a_dry_run_says_which_wal_would_go_and_changes_nothing(
    keyring: crypto.Keyring,
) -> None:
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    _, kept, _ = await archive(keyring, list(rs.values()))
    before = {n: await held(r) for n, r in rs.items()}

    report = await sweep(make_plan(), rs, now=NOW, dry_run=True, keyring=keyring)

    assert {n: await held(r) for n, r in rs.items()} == before
    text = "\n".join(format_sweep(report))
    assert "WAL billing/db: 13 to destroy, 12 kept" in text
    assert f"would destroy 8 WAL file(s) {name(1)}..{name(8)}: WAL that reached" in text
    assert (
        f"would destroy 5 WAL file(s) {name(9)}..{name(13)}: WAL before base backup {kept}'s "
        f"start segment {name(14)}"
    ) in text


async def test_without_the_key_wal_goes_at_max_age_only(keyring: crypto.Keyring) -> None:
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    await archive(keyring, list(rs.values()))

    report = await sweep(make_plan(), rs, now=NOW)

    assert report.ok
    # Where the oldest kept base backup starts is sealed: none of its WAL may be guessed away.
    assert await held(rs["a"]) == [name(n) for n in range(9, 26)]
    assert "unknown" in (report.regions["a"].wal_decisions[REF].not_cut or "")
    assert "WAL stays until max_age" in "\n".join(format_sweep(report))


class SoftDeleting(MemoryStorage):
    def __init__(self, name: str, soft_delete: timedelta) -> None:
        super().__init__(name)
        self.soft_delete = soft_delete

    async def deletion_settings(self) -> DeletionSettings:
        return DeletionSettings(soft_delete=self.soft_delete)


async def test_each_region_cuts_its_wal_at_its_own_age_and_catch_up_does_not_bring_it_back(
    keyring: crypto.Keyring,
) -> None:
    rs: dict[str, MemoryStorage] = {"a": MemoryStorage("a"), "b": SoftDeleting("b", 7 * D)}
    _, _kept, new = await archive(keyring, list(rs.values()))

    memory = RetentionMemory()
    report = await sweep(make_plan(), rs, now=NOW, keyring=keyring, memory=memory)

    assert report.ok
    assert await held(rs["a"]) == [name(n) for n in range(14, 26)]
    # b deletes at 7 days: base backup `kept` (10 days) is gone there, so its WAL is cut at the
    # start of `new` (segment 24); a keeps `kept` and the WAL it needs.
    assert await backups(rs["b"]) == {new}
    assert await held(rs["b"]) == [name(24), name(25)]
    (cuts,) = memory.wal_cuts.values()
    assert cuts == {"b": name(23), "a": name(13)}
    system = next(iter(memory.wal_cuts)).rsplit("/", 1)[1]
    result = await catch_up(
        REF, list(rs.values()), keyring, min_copies=1, segment_size=SEG, cuts={system: cuts}
    )
    assert not result.copied
    assert await held(rs["b"]) == [name(24), name(25)]


async def test_a_region_that_missed_the_first_wal_gets_it(keyring: crypto.Keyring) -> None:
    """Down when archiving began (or added to the plan later): nothing was cut there, so the
    segments it never had are copied, the oldest included."""
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    await wal(rs[:1], keyring, range(1, 4))
    await wal(rs, keyring, range(4, 7))
    result = await catch_up(REF, rs, keyring, min_copies=1, segment_size=SEG, cuts={})
    assert sorted(parse_wal_key(k).name for k in result.copied["b"]) == [  # type: ignore[union-attr]
        name(n) for n in range(1, 4)
    ]


async def test_a_region_missing_wal_in_the_middle_is_still_caught_up(
    keyring: crypto.Keyring,
) -> None:
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    await wal(rs[:1], keyring, range(1, 6))
    await wal(rs, keyring, range(6, 8))
    await wal(rs[1:], keyring, range(1, 2))
    result = await catch_up(REF, rs, keyring, min_copies=1, segment_size=SEG)
    assert sorted(parse_wal_key(k).name for k in result.copied["b"]) == [  # type: ignore[union-attr]
        name(n) for n in range(2, 6)
    ]


async def test_a_kept_base_backup_whose_wal_is_gone_is_named(keyring: crypto.Keyring) -> None:
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    kept = await base_at(NOW - 5 * D, 19, rs.values(), keyring)
    # Segment 19 (its end) is missing everywhere while later WAL is held.
    await wal(rs.values(), keyring, range(20, 23))

    report = await sweep(make_plan(), rs, now=NOW, keyring=keyring)

    assert report.wal_findings == [
        f"billing/db@{kept}: WAL segment {name(19)} (the base backup's end) is in no region: "
        "it restores to its end only, not to a point after it"
    ]
    assert f"WARNING billing/db@{kept}" in "\n".join(format_sweep(report))


async def test_wal_of_an_earlier_cluster_goes_once_older_than_the_oldest_kept_base_backup(
    keyring: crypto.Keyring,
) -> None:
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    await base_at(NOW - 3 * D, 23, rs.values(), keyring, system_id="42")
    await wal(rs.values(), keyring, range(15, 20))  # the earlier cluster (SYSID)
    await wal(rs.values(), keyring, range(23, 25), system_id="42")

    report = await sweep(make_plan(), rs, now=NOW, keyring=keyring)

    assert report.ok
    left = [parse_wal_key(i.key) for i in await rs["a"].list("billing/db/wal/")]
    assert sorted((k.system_id, k.name) for k in left if k) == [
        ("42", name(23)),
        ("42", name(24)),
    ]


async def test_no_kept_base_backup_keeps_wal_until_max_age(keyring: crypto.Keyring) -> None:
    """A first base backup may be running (its source is then skipped) or not yet taken: the
    WAL it will start from must not be taken for WAL before it."""
    rs = {n: MemoryStorage(n) for n in ("a", "b")}
    await wal(rs.values(), keyring, range(5, 12))
    metrics = Metrics()

    report = await sweep(make_plan(), rs, now=NOW, keyring=keyring, metrics=metrics)

    assert await held(rs["a"]) == [name(n) for n in range(9, 12)]
    # WAL is a copy like any other: the overdue-copy alerts see its age.
    assert sample(
        metrics, "drd_retention_oldest_copy_age_seconds", plan="billing", region="a"
    ) == pytest.approx((NOW - written(9)).total_seconds())
    assert report.next_expiry() == written(9) + 14 * D
    skipped = await sweep(make_plan(), rs, now=NOW + 10 * D, skip_sources={"db"})
    assert await held(rs["a"]) == [name(n) for n in range(9, 12)]
    assert skipped.skipped_sources == ["db"]


def physical_config(tmp_path: Path) -> Any:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    source = {"name": "db", "kind": "postgres-physical", "dsn": "host=127.0.0.1 port=1"}
    env.add_plan("billing", [source], min_copies=1)
    return load_config(env.write())


async def test_the_window_metrics_follow_retention_and_the_archiver(
    tmp_path: Path, keyring: crypto.Keyring
) -> None:
    cfg = physical_config(tmp_path)
    rs: dict[str, Storage] = {n: MemoryStorage(n) for n in ("a", "b")}
    await archive(keyring, list(rs.values()))
    metrics = Metrics()
    services = Services(cfg=cfg, regions=rs, keyring=keyring, metrics=metrics, clock=lambda: NOW)
    labels = {"plan": "billing", "source": "db"}

    await RetentionLoop(services).run_once(force=True)

    # The oldest kept base backup (10 days, ending in segment 14) is where the window starts.
    start = sample(metrics, "drd_pitr_window_start_timestamp_seconds", **labels)
    assert start == written(14).timestamp()
    # The archiver reads the newest archived WAL from the regions at its first round.
    loop = WalLoop(services, sample_server=False)
    await loop.run_once()
    end = sample(metrics, "drd_pitr_window_end_timestamp_seconds", **labels)
    assert end == written(25).timestamp()


def test_drd_prune_dry_run_reads_the_base_backups_with_the_configs_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DrdEnv(tmp_path)
    paths = [env.add_local_region("a"), env.add_local_region("b")]
    source = {"name": "db", "kind": "postgres-physical", "dsn": "host=127.0.0.1 port=1"}
    env.add_plan("billing", [source], min_copies=1)
    env.write()
    keyring = crypto.Keyring.parse(env.key, "test")
    now = datetime.now(UTC)

    async def setup() -> str:
        rs = [LocalStorage(p.name, p) for p in paths]
        kept = await base_at(now - 3 * D, 5, rs, keyring)
        for segno in (3, 4, 5, 6):
            await push_wal(
                REF,
                rs,
                keyring,
                system_id=SYSID,
                name=name(segno),
                data=segment_bytes(segno),
                through=now - 4 * D + segno * H,
                timeline=1,
                segment_size=SEG,
                min_copies=1,
            )
        return kept

    kept = asyncio.run(setup())
    monkeypatch.setenv("DRD_KEYS", env.key)

    code = main(["--config", str(env.config_path), "prune", "--dry-run"])

    out = capsys.readouterr().out
    assert code == 0
    assert (
        f"would destroy 2 WAL file(s) {name(3)}..{name(4)}: WAL before base backup {kept}'s "
        f"start segment {name(5)}"
    ) in out
