"""Issue 18, point 4, on a real throwaway cluster: WAL archived by the wal loop's pg_receivewal,
two real pg_basebackup base backups, then a sweep at an injected `now` where the older base
backup has passed max_age: it goes, with every WAL segment before the newer one's real start
LSN, and everything from that segment on stays, so the newer base backup's window is whole."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.wal_loop import WalLoop
from drd.layout import SourceRef, backup_id_time
from drd.metrics import Metrics
from drd.pipeline.pitr import recovery_windows
from drd.repository.catalog import build_catalog
from drd.repository.wal import list_archive
from drd.retention.sweep import sweep
from drd.runtime import Services
from drd.storage.base import Storage
from drd.storage.local import LocalStorage
from drd.strategies.postgres_wal import parse_lsn, parse_segment_name, segment_of
from tests.support.drdenv import DrdEnv
from tests.support.pgcluster import ClusterFactory

pytestmark = pytest.mark.integration

REF = SourceRef("billing", "db")
SEG = 1 << 20


async def test_wal_before_the_oldest_kept_real_base_backup_goes_and_its_window_stays(
    tmp_path: Path, pg_cluster_factory: ClusterFactory
) -> None:
    cluster = pg_cluster_factory(initdb_args=("--wal-segsize=1",))
    env = DrdEnv(tmp_path)
    paths = [env.add_local_region("a"), env.add_local_region("b")]
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "postgres-physical", "dsn": cluster.dsn(), "partial_every": "1s"}],
        min_copies=2,
    )
    cfg = load_config(env.write())
    keyring = crypto.Keyring.parse(env.key, "test")
    regions: dict[str, Storage] = {p.name: LocalStorage(p.name, p) for p in paths}
    services = Services(cfg=cfg, regions=regions, keyring=keyring, metrics=Metrics())
    loop = WalLoop(services)
    stop = asyncio.Event()
    loop.start(stop)
    try:
        for _ in range(3):
            cluster.sql("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
            cluster.switch_wal()
        await asyncio.to_thread(env.ok, "backup", "billing/db")
        for _ in range(3):
            cluster.sql("INSERT INTO t SELECT 2")
            cluster.switch_wal()
        await asyncio.sleep(1.1)  # retention ages backups by their ids' second
        await asyncio.to_thread(env.ok, "backup", "billing/db")
        cluster.sql("INSERT INTO t SELECT 3")
        cluster.switch_wal()
        last = parse_lsn(cluster.one("SELECT pg_current_wal_lsn()::text")) // SEG - 1

        async def archived_up_to_last() -> bool:
            archive = await list_archive(list(regions.values()), REF)
            names = [n for files in archive.systems.values() for n in files]
            return any(
                not n.endswith(".partial")
                and "history" not in n
                and parse_segment_name(n, SEG).segno >= last
                for n in names
            )

        deadline = asyncio.get_running_loop().time() + 60
        while not await archived_up_to_last():
            assert asyncio.get_running_loop().time() < deadline, "WAL not archived in time"
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await loop.close(5)

    catalog = await build_catalog(list(regions.values()), keyring, REF.prefix)
    old, new = sorted(catalog.for_source(REF), key=lambda e: e.captured)
    meta = new.manifest.body.strategy_metadata if new.manifest else {}
    start = segment_of(parse_lsn(meta["start_lsn"]), int(meta["timeline"]), SEG)
    # The older base backup has just passed 14 days, the newer one has not.
    aged = backup_id_time(old.backup_id), backup_id_time(new.backup_id)
    now = aged[0] + timedelta(days=14) + (aged[1] - aged[0]) / 2

    report = await sweep(cfg.plan("billing"), regions, now=now, keyring=keyring)

    assert report.ok, report
    archive = await list_archive(list(regions.values()), REF)
    for name in regions:
        held = sorted(
            parse_segment_name(f.name[:24], SEG).segno
            for files in archive.systems.values()
            for f in files.values()
            if f.kind != "history" and name in f.copies
        )
        assert held and held[0] == start.segno, (name, held, start)
        gone = [k.rsplit("/", 1)[1][:24] for k in report.regions[name].wal_destroyed]
        assert gone and all(parse_segment_name(n, SEG).segno < start.segno for n in gone), gone
    after = await build_catalog(list(regions.values()), keyring, REF.prefix)
    assert [e.backup_id for e in after.for_source(REF)] == [new.backup_id]
    (window,) = (await recovery_windows(REF, list(regions.values()), keyring)).windows
    assert window.base.backup_id == new.backup_id and window.chain.gap is None
    assert window.chain.end is not None and window.chain.end.segno >= last
