"""The WAL loop's prober (drd.daemon.pitr_prober) without a server: a plan without pitr_probe
records nothing, and a source that cannot be reached records nothing, is retried at the next
round, and is logged once per reason, with the DSN's password redacted."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd.config.loader import load_config
from drd.daemon.pitr_prober import Prober
from drd.layout import SourceRef
from drd.pipeline.pitr_probes import ProbeStore
from tests.support.drdenv import DrdEnv

REF = SourceRef("billing", "db")
T0 = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
# Nothing listens on port 1 of the loopback: the connection is refused at once.
DSN = "host=127.0.0.1 port=1 user=drd password=s3cr3t-pw connect_timeout=2"


def plan(tmp_path: Path, probe: dict[str, Any] | None) -> Any:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "postgres-physical", "dsn": DSN}],
        targets={"rpo": "1m", "rto": "1h"},
        restore_test={} if probe is None else {"pitr_probe": probe},
    )
    return load_config(env.write()).plan("billing")


async def test_a_plan_without_pitr_probe_records_nothing(tmp_path: Path) -> None:
    prober = Prober(REF, DSN, tmp_path)
    assert await prober.maybe_probe(plan(tmp_path, None), T0) is None
    assert prober.probed_at is None and prober._db is None
    assert not ProbeStore(tmp_path, REF).path.exists()


async def test_an_unreachable_source_is_retried_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prober = Prober(REF, DSN, tmp_path)
    spec = plan(tmp_path, {"tables": ["t"], "every": "10m"})
    with caplog.at_level(logging.WARNING, logger="drd.daemon.pitr_prober"):
        assert await prober.maybe_probe(spec, T0) is None
        # Not due for another 10 minutes had it worked: a failure is retried at once.
        assert await prober.maybe_probe(spec, T0 + timedelta(seconds=1)) is None
    assert prober.probed_at is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "cannot record a point-in-time probe" in warnings[0]
    assert "s3cr3t-pw" not in warnings[0]
    assert ProbeStore(tmp_path, REF).load() == []
