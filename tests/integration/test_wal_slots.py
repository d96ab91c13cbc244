"""Issue 18, point 4: the replication slot of a source that leaves drd is dropped on its real
server: at the reload that removes it (its DSN is still known then), and at the next start for
a removal while the daemon was down (from the slot record in the state directory, which holds
no password). A slot named by the operator is left, and a drop that fails is retried and shown
by drd_wal_slot_left_behind until it succeeds."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.wal_loop import WalLoop
from drd.daemon.wal_slots import RETRY_EVERY, STATE_FILE
from drd.metrics import Metrics
from drd.runtime import Services
from drd.storage.base import Storage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv
from tests.support.pgcluster import Cluster, ClusterFactory

pytestmark = pytest.mark.integration

PASSWORD = "never-in-the-state-dir"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def slots(cluster: Cluster) -> dict[str, bool]:
    return dict(cluster.sql("SELECT slot_name, active FROM pg_replication_slots"))  # type: ignore[arg-type]


async def until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


def physical(name: str, cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "postgres-physical",
        "dsn": cluster.dsn(password=PASSWORD),
        "partial_every": "5s",
        **extra,
    }


async def test_slots_of_sources_that_left_are_dropped_on_reload_and_at_the_next_start(
    tmp_path: Path, pg_cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "drd.daemon.wal_slots")
    cluster = pg_cluster_factory()
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("billing", [physical("db", cluster), physical("keep", cluster)], min_copies=1)
    env.add_plan("ops", [physical("mine", cluster, slot="ops_own_slot")], min_copies=1)
    keyring = crypto.Keyring.parse(env.key, "test")
    regions: dict[str, Storage] = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    metrics, clock = Metrics(), Clock()

    def services() -> Services:
        return Services(
            cfg=load_config(env.write()),
            regions=regions,
            keyring=keyring,
            metrics=metrics,
            clock=clock,
        )

    loop = WalLoop(services())
    stop = asyncio.Event()
    loop.start(stop)
    try:
        wanted = {"drd_billing_db", "drd_billing_keep", "ops_own_slot"}
        await until(lambda: {n for n, active in slots(cluster).items() if active} == wanted)

        # A reload removes source db and the whole plan ops: db's slot goes, the operator's
        # own slot stays (it may be someone else's), keep's is untouched.
        env.plans["billing"]["sources"] = [physical("keep", cluster)]
        del env.plans["ops"]
        (tmp_path / "plans" / "ops.yaml").unlink()
        await loop.reconfigure(services())
        assert set(slots(cluster)) == {"drd_billing_keep", "ops_own_slot"}
        assert "billing/db left drd: dropped its replication slot drd_billing_db" in caplog.text
        assert "ops_own_slot is not named by drd" in caplog.text
    finally:
        stop.set()
        await loop.close(5)

    # While the daemon is down, keep leaves too; its server is down when drd starts again.
    record = (tmp_path / "state" / STATE_FILE).read_text()
    assert "drd_billing_keep" in record and PASSWORD not in record
    env.plans["billing"]["sources"] = [
        {"name": "logical", "kind": "postgres", "dsn": cluster.dsn()}
    ]
    cluster.stop()
    again = WalLoop(services())
    await again.run_once()
    labels = {"plan": "billing", "source": "keep", "slot": "drd_billing_keep"}
    assert metrics.registry.get_sample_value("drd_wal_slot_left_behind", labels) == 1
    assert (
        metrics.registry.get_sample_value(
            "drd_wal_slot_drop_failures_total", {"plan": "billing", "source": "keep"}
        )
        == 1
    )
    assert "its replication slot drd_billing_keep on" in caplog.text
    assert PASSWORD not in caplog.text

    cluster.start()
    await again.run_once()  # not due yet: nothing is tried
    assert "drd_billing_keep" in slots(cluster)
    clock.now += RETRY_EVERY + timedelta(seconds=1)
    await again.run_once()
    assert set(slots(cluster)) == {"ops_own_slot"}
    assert metrics.registry.get_sample_value("drd_wal_slot_left_behind", labels) is None
    assert "drd_billing_keep" not in (tmp_path / "state" / STATE_FILE).read_text()
