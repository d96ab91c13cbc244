"""Issue 18, must-hold 1 and the gap, on a real throwaway cluster archived by a real `drd run`:
`drd restore --at T` between two known transactions gives exactly the first and not the
second, `--latest` gives everything archived, and a segment missing in every region is a gap
that a restore past it refuses, naming the segment, before it touches anything."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from drd.layout import SourceRef
from drd.strategies.postgres_wal import parse_lsn
from tests.integration.test_daemon import Daemon, free_port, scrape, value, wait_for
from tests.support.drdenv import DrdEnv
from tests.support.pgcluster import Cluster, ClusterFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEG = 1 << 20
LABELS = {"plan": "billing", "source": "db"}
REF = SourceRef("billing", "db")


def _segments(region: Path) -> dict[int, list[Path]]:
    """Segment number -> the WAL objects (files) of it in a local region."""
    out: dict[int, list[Path]] = {}
    for path in (region / "billing" / "db" / "wal").rglob("*"):
        name = path.name.split("@", 1)[0]
        if path.is_file() and len(name) == 24 and not path.name.startswith("."):
            segno = int(name[8:16], 16) * 0x100000000 // SEG + int(name[16:24], 16)
            out.setdefault(segno, []).append(path)
    return out


def _restore(env: DrdEnv, target: Path, *point: str) -> tuple[int, str]:
    port = free_port()
    proc = env.run(
        "restore",
        "billing/db",
        "--to",
        str(target),
        *point,
        "--start",
        "--port",
        str(port),
        "--drd-command",
        f"env PYTHONPATH={REPO} /usr/bin/python3 -m drd.cli.main",
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr + f"\nport={port}"


def _ids(output: str) -> list[int]:
    port = output.rsplit("port=", 1)[1].strip()
    dsn = psycopg.conninfo.make_conninfo(
        "", host="127.0.0.1", port=port, user="postgres", dbname="postgres"
    )
    with psycopg.connect(dsn, autocommit=True) as db:
        rows = db.execute("SELECT id FROM t ORDER BY id").fetchall()
    return [int(r[0]) for r in rows]


def test_restore_to_a_time_between_two_transactions_latest_and_a_gap(
    tmp_path: Path, pg_cluster_factory: ClusterFactory
) -> None:
    cluster: Cluster = pg_cluster_factory(initdb_args=("--wal-segsize=1",))
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL)")
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    regions = [env.add_local_region("a"), env.add_local_region("b")]
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "postgres-physical", "dsn": cluster.dsn(), "partial_every": "1s"}],
        min_copies=2,
        targets={"rpo": "1m", "rto": "10m"},
        schedule={"every": "24h"},
    )
    env.daemon = {"shutdown_grace": "5s"}
    env.write()
    d = Daemon(env, port)
    try:
        wait_for(
            lambda: (
                (value(scrape(d.base), "drd_backups_total", result="success", **LABELS) or 0) >= 1
            ),
            120,
            "the daemon's first base backup",
        )
        cluster.sql("INSERT INTO t VALUES (1, clock_timestamp())")
        first = datetime.fromisoformat(cluster.one("SELECT max(at)::text FROM t"))
        time.sleep(1.5)
        between = datetime.fromisoformat(cluster.one("SELECT clock_timestamp()::text"))
        time.sleep(1.5)
        cluster.sql("INSERT INTO t VALUES (2, clock_timestamp())")
        # A few more segments after the second row, so a gap can be cut before its end.
        for _ in range(3):
            cluster.sql("SELECT pg_switch_wal()")
            cluster.sql("INSERT INTO t VALUES ((SELECT max(id) + 1 FROM t), clock_timestamp())")
        end = parse_lsn(cluster.one("SELECT pg_current_wal_lsn()::text"))
        cluster.sql("SELECT pg_switch_wal()")
        wait_for(
            lambda: all(max(_segments(r), default=-1) >= (end - 1) // SEG for r in regions),
            60,
            "the WAL past the last row in both regions",
        )
    finally:
        d.stop()
    assert first < between
    restores = pg_cluster_factory.scratch_dir()  # the restored servers are stopped with it

    # To a time between the two transactions: the first, not the second.
    code, out = _restore(env, restores / "at", "--at", between.isoformat())
    assert code == 0, out
    assert _ids(out) == [1]

    # Everything archived.
    code, out = _restore(env, restores / "latest", "--latest")
    assert code == 0, out
    latest = _ids(out)
    assert latest[:2] == [1, 2] and len(latest) == 5

    # A segment gone from every region after the second row: a restore past it is refused
    # before anything is written, naming the segment; one to a point before it still works.
    held = [_segments(r) for r in regions]
    gap = max(set(held[0]) & set(held[1])) - 1
    for segments in held:
        for path in segments[gap]:
            path.unlink()
    target = restores / "past-the-gap"
    code, out = _restore(env, target, "--latest")
    assert code != 0 and "missing in every region" in out, out
    assert not target.exists()
    code, out = _restore(env, restores / "before-the-gap", "--at", between.isoformat())
    assert code == 0, out
    assert _ids(out) == [1]
