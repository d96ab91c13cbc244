"""The WAL receiver against a real throwaway cluster (drd.daemon.wal_receiver): it creates drd's
replication slot, and a pg_receivewal that keeps failing is restarted with a backoff, one log
line per failure, the password given to it only as PGPASSWORD and cut from every line, drd's
own keys not given at all."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from drd.daemon.wal_receiver import Receiver
from tests.support.pgcluster import ClusterFactory

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-receiver-pw"
KEY = "drdk1:test:not-for-children"

# Says what it was given, on stderr, the way pg_receivewal reports a failed connection.
FAILING_TOOL = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_receivewal (PostgreSQL) 15.5"; exit 0; fi
echo "pg_receivewal: error: could not connect (password $PGPASSWORD, keys [$DRD_KEYS])" >&2
exit 1
"""


async def test_a_failing_receiver_is_restarted_with_backoff_and_logged_once_per_failure(
    tmp_path: Path,
    pg_cluster_factory: ClusterFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, "drd.daemon.wal_receiver")
    monkeypatch.setenv("DRD_KEYS", KEY)
    cluster = pg_cluster_factory()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "pg_receivewal").write_text(FAILING_TOOL)
    os.chmod(tools / "pg_receivewal", 0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    stop = asyncio.Event()
    restarts: list[float] = []
    ups: list[bool] = []

    def restarted() -> None:
        restarts.append(asyncio.get_running_loop().time())
        if len(restarts) == 3:
            stop.set()

    receiver = Receiver(
        "billing/db",
        cluster.dsn(password=PASSWORD),
        spool,
        "drd_billing_db",
        pg_bin_dir=str(tools),
        on_up=ups.append,
        on_restart=restarted,
    )
    await asyncio.wait_for(receiver.run(stop), 60)

    assert cluster.sql(
        "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'drd_billing_db'"
    ) == [("physical",)]
    assert receiver.slot_created
    lines = [r.getMessage() for r in caplog.records if "WAL receiver stopped" in r.getMessage()]
    assert len(lines) == len(restarts) == 3
    assert "created physical replication slot drd_billing_db" in caplog.text
    for line in lines:
        assert "exited with status 1" in line and "could not connect" in line
        assert "password ***" in line, line  # it had the password, the log does not
        assert "keys []" in line, line  # drd's keys never reach it
    assert PASSWORD not in caplog.text and KEY not in caplog.text
    # 1 s, then 2 s between attempts: a backoff, not a spin.
    assert restarts[1] - restarts[0] >= 0.9 and restarts[2] - restarts[1] >= 1.9
    assert ups == [True, False, True, False, True, False]


def test_a_stuck_archiver_shows_its_slot_holding_back_wal(
    tmp_path: Path, pg_cluster_factory: ClusterFactory
) -> None:
    """drd run with a receiver that cannot stream: the slot it created keeps the WAL written
    meanwhile, and /metrics shows it growing past max_slot_retained (what
    DrdWalSlotRetainingTooMuch fires on), with the receiver down and restarting."""
    from tests.integration.test_daemon import Daemon, scrape, value, wait_for
    from tests.support.drdenv import DrdEnv

    cluster = pg_cluster_factory(initdb_args=("--wal-segsize=1",))
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "pg_receivewal").write_text(FAILING_TOOL)
    os.chmod(tools / "pg_receivewal", 0o755)
    env = DrdEnv.files_plan(tmp_path)
    env.plans.clear()
    env.add_plan(
        "billing",
        [
            {
                "name": "db",
                "kind": "postgres-physical",
                "dsn": cluster.dsn(),
                "pg_bin_dir": str(tools),
                "max_slot_retained": "2MiB",
            }
        ],
        targets={"rpo": "1m", "rto": "1h"},
        schedule={"every": "24h"},
    )
    env.write()
    labels = {"plan": "billing", "source": "db"}
    d = Daemon(env, env.api_port)
    try:
        wait_for(
            lambda: cluster.sql("SELECT 1 FROM pg_replication_slots WHERE NOT active"),
            30,
            "drd's slot",
        )
        cluster.sql("CREATE TABLE t AS SELECT md5(i::text) AS v FROM generate_series(1, 60000) i")

        def retained() -> float:
            return value(scrape(d.base), "drd_wal_slot_retained_bytes", **labels) or 0

        wait_for(lambda: retained() > 2 << 20, 60, "the slot's retained WAL past the limit")
        samples = scrape(d.base)
        assert value(samples, "drd_wal_slot_retained_limit_bytes", **labels) == 2 << 20
        assert value(samples, "drd_wal_receiver_up", **labels) == 0
        assert (value(samples, "drd_wal_receiver_restarts_total", **labels) or 0) >= 1
        assert "WAL receiver stopped" in d.output()
    finally:
        d.stop()
