"""Which slots drd.daemon.wal_slots drops, without a server: the drop itself is recorded (the
real one runs against a cluster in tests/integration/test_wal_slots.py)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drd.daemon.wal_slots import RETRY_EVERY, STATE_FILE, SlotRegistry
from drd.layout import SourceRef
from drd.metrics import Metrics

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DSN = "host=10.0.0.5 port=5432 user=drd dbname=postgres password=hunter2-not-stored"


class Drops:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    async def __call__(self, dsn: str, slot: str) -> bool:
        self.calls.append((dsn, slot))
        if self.fail is not None:
            raise self.fail
        return True


async def test_only_drd_named_slots_nobody_uses_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "drd.daemon.wal_slots")
    drops = Drops()
    registry = SlotRegistry(tmp_path, Metrics(), dropper=drops)
    gone, renamed, own = (
        SourceRef("billing", "db"),
        SourceRef("billing", "a-b"),
        SourceRef("ops", "x"),
    )
    registry.use(gone, "drd_billing_db", DSN)
    registry.use(renamed, "drd_billing_a_b", DSN)
    registry.use(own, "ops_slot", DSN)
    assert "hunter2" not in (tmp_path / STATE_FILE).read_text()

    # billing/a_b now streams through the slot billing/a-b had (same drd name): it stays.
    registry.configured([(SourceRef("billing", "a_b"), "drd_billing_a_b")])
    await registry.drop_pending(NOW)

    assert drops.calls == [(DSN, "drd_billing_db")]  # the full DSN the config had
    assert "ops_slot is not named by drd" in caplog.text
    assert list(json.loads((tmp_path / STATE_FILE).read_text())) == []


async def test_a_removal_while_down_is_dropped_at_start_and_a_failure_retried(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    SlotRegistry(tmp_path, metrics).use(SourceRef("billing", "db"), "drd_billing_db", DSN)
    drops = Drops()
    drops.fail = OSError(f"connection to {DSN} refused")
    registry = SlotRegistry(tmp_path, metrics, dropper=drops)
    registry.configured([])

    await registry.drop_pending(NOW)

    # The recorded DSN has no password: drd's environment or .pgpass supplies it.
    assert drops.calls and all("hunter2" not in dsn for dsn, _ in drops.calls)
    labels = {"plan": "billing", "source": "db", "slot": "drd_billing_db"}
    assert metrics.registry.get_sample_value("drd_wal_slot_left_behind", labels) == 1
    tried = len(drops.calls)
    await registry.drop_pending(NOW + RETRY_EVERY / 2)
    assert len(drops.calls) == tried
    drops.fail = None
    await registry.drop_pending(NOW + RETRY_EVERY)
    assert metrics.registry.get_sample_value("drd_wal_slot_left_behind", labels) is None
    assert not registry.pending
