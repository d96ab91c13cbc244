"""Issue 18, point 6, on a real throwaway cluster: the wal loop archives its WAL and records
probes (row count of `t`, `sum(v)`) while rows are committed in steps; a restore test then
recovers to a probe into a data directory started as the scratch server, and finds there what
the probe recorded (the earlier point, although the archive holds more rows). A probe whose
recorded count differs fails the test naming the table; a base backup asked for by id is
tested itself; a drill that loses a region recovers
to the newest probe from the other and reports the RPO and RTO of that point."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.wal_loop import WalLoop
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.pitr_probes import Probe, ProbeStore
from drd.repository.wal import list_archive
from drd.runtime import Services
from drd.storage.base import Storage
from drd.storage.local import LocalStorage
from drd.strategies.postgres_wal import parse_lsn, parse_segment_name
from drd.verify.drill import run_drill
from drd.verify.restore_run import restore_tests_for
from drd.verify.scratch.registry import registry_dir
from tests.support.drdenv import DrdEnv
from tests.support.pgcluster import Cluster, ClusterFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REF = SourceRef("billing", "db")
SEG = 1 << 20
SUM = "SELECT sum(v) FROM t"
COPY_CHECK = (
    'test -f "$DRD_RESTORED_PATH/PG_VERSION" && { test -z "$DRD_PITR_PROBE_LSN" || '
    'test "$(psql -XAtc "SELECT count(*) FROM t WHERE v >= 10")" -ge 2; }'
)


async def _until(predicate: object, what: str, limit: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await asyncio.to_thread(predicate):  # type: ignore[arg-type]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _archived_past(regions: dict[str, Storage], lsn: int) -> bool:
    archive = asyncio.run(list_archive(list(regions.values()), REF))
    names = [n for files in archive.systems.values() for n in files]
    return any(
        not n.endswith(".partial")
        and "history" not in n
        and parse_segment_name(n, SEG).segno >= lsn // SEG
        for n in names
    )


async def test_restore_tests_recover_to_recorded_probes_of_a_real_cluster(
    tmp_path: Path, pg_cluster_factory: ClusterFactory
) -> None:
    cluster: Cluster = pg_cluster_factory(initdb_args=("--wal-segsize=1",))
    cluster.sql("CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL)")
    cluster.sql("INSERT INTO t (v) SELECT g FROM generate_series(1, 3) g")
    env = DrdEnv(tmp_path)
    paths = [env.add_local_region("a"), env.add_local_region("b")]
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "postgres-physical", "dsn": cluster.dsn(), "partial_every": "1s"}],
        min_copies=1,
        targets={"rpo": "1h", "rto": "30m"},
        restore_test={
            "pitr_probe": {
                "tables": ["t"],
                "queries": [SUM],
                "every": "1s",
                # The postgres user cannot run this checkout's virtualenv interpreter.
                "drd_command": f"env PYTHONPATH={REPO} /usr/bin/python3 -m drd.cli.main",
            },
            # The plan's own checks run on the copy too: at a probe's point, on the running
            # recovered server (PG* variables), and in the data directory either way.
            "checks": {"db": [{"name": "copy", "command": COPY_CHECK}]},
        },
    )
    cfg = load_config(env.write())
    keyring = crypto.Keyring.parse(env.key, "test")
    regions: dict[str, Storage] = {p.name: LocalStorage(p.name, p) for p in paths}
    services = Services(cfg=cfg, regions=regions, keyring=keyring, metrics=Metrics())
    store = ProbeStore(cfg.state_dir, REF)

    def recorded(count: int) -> bool:
        return any(p.counts.get("t") == count for p in store.load())

    loop = WalLoop(services)
    stop = asyncio.Event()
    loop.start(stop)
    try:
        await asyncio.to_thread(env.ok, "backup", "billing/db")
        cluster.sql("INSERT INTO t (v) VALUES (10), (20)")
        await _until(lambda: recorded(5), "a probe of 5 rows")
        cluster.sql("INSERT INTO t (v) VALUES (100), (200), (300)")
        await _until(lambda: recorded(8), "a probe of 8 rows")
        newest = store.load()[-1]
        cluster.switch_wal()
        await _until(lambda: _archived_past(regions, newest.lsn), "WAL past the newest probe")
    finally:
        stop.set()
        await loop.close(5)

    probes = store.load()
    five = [p for p in probes if p.counts["t"] == 5]
    assert five and all(p.results[next(iter(p.results))]["value"] == 36 for p in five)
    plan = cfg.plan("billing")
    source = plan.source("db")

    # Only probes of the earlier point: the recovery must stop there, with 8 rows archived.
    store.write(five)
    (report,) = await restore_tests_for(
        plan,
        source,
        regions,
        keyring,
        state_dir=cfg.state_dir,
        base_dir=tmp_path,
        region="b",
        rng=random.Random(3),
    )
    assert report.passed, report.summary_lines()
    assert report.region == "b"  # --region: the copy read first
    pitr = report.restore["pitr"]
    chosen = next(p for p in five if p.time.isoformat() == pitr["probe"]["time"])
    assert parse_lsn(pitr["achieved"]["replay_lsn"]) >= chosen.lsn
    checks = {c.name: c for c in report.checks}
    assert checks["pitr_row_counts"].status == "passed"
    assert checks["pitr_row_counts"].actual == {"t": 5}
    assert checks["pitr_queries"].actual == {SUM: 36}
    assert checks["recovery_target"].status == "passed"
    assert checks["copy"].status == "passed", checks["copy"]
    assert report.scratch["kind"] == "recovered-postgres"
    assert not Path(report.scratch["resource"]).exists()
    assert list(registry_dir(cfg.state_dir).glob("*.json")) == []

    # A probe whose recorded count is not what the point holds: the test fails naming t.
    wrong = dataclasses.replace(chosen, counts={"t": 6})
    store.write([wrong])
    (failed,) = await restore_tests_for(
        plan, source, regions, keyring, state_dir=cfg.state_dir, base_dir=tmp_path
    )
    assert failed.failure_category == "check_failed", failed.summary_lines()
    assert failed.failure_message is not None
    assert "table t: 5 rows restored, the probe recorded 6" in failed.failure_message

    # A base backup asked for by id is tested itself (restored into a scratch directory).
    (asked,) = await restore_tests_for(
        plan,
        source,
        regions,
        keyring,
        state_dir=cfg.state_dir,
        base_dir=tmp_path,
        backup_id=report.backup_id,
    )
    assert asked.passed, asked.summary_lines()
    assert "pitr" not in asked.restore and asked.scratch["kind"] == "tempdir"

    # A drill loses region a and recovers to the newest probe (8 rows) from b.
    store.write(probes)
    drill = await run_drill(
        plan, regions, keyring, lose_region="a", state_dir=cfg.state_dir, base_dir=tmp_path
    )
    (result,) = drill.sources
    assert drill.passed, drill.reasons
    assert result.region == "b"
    # The newest probe inside the window: one after every insert (probes newer than the
    # archived WAL are not in it).
    drilled: Probe = next(
        p for p in probes if p.time.isoformat() == result.point_in_time["probe"]["time"]
    )
    assert drilled.counts == {"t": 8}
    assert result.rpo_seconds is not None and drill.rpo_seconds == result.rpo_seconds
    assert drill.rto_seconds is not None
    assert {c["name"]: c["status"] for c in result.checks}["pitr_row_counts"] == "passed"
