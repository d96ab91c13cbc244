"""Issue 17, point A, against the real `drd run` on two local regions: a region whose directory
becomes unusable is drd_region_up 0 within a probe interval with nobody calling /readyz and no
job touching it, and 1 again once it heals; and old probe objects are swept."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drd.layout import new_backup_id
from drd.storage.local import LocalStorage
from tests.integration.test_daemon import (
    Daemon,
    daemon_factory,  # noqa: F401 - the fixture
    http_get,
    scrape,
    value,
    wait_for,
)
from tests.support.drdenv import DrdEnv

pytestmark = pytest.mark.integration

EVERY = 3  # seconds between probes


def test_region_up_follows_the_region_without_readyz(
    tmp_path: Path,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
) -> None:
    env = DrdEnv.files_plan(tmp_path)
    env.daemon = {"region_probe": {"every": f"{EVERY}s", "timeout": "2s"}}
    env.write()
    d = daemon_factory(env, env.api_port)
    b = tmp_path / "regions" / "b"

    def region_up() -> float | None:
        return value(scrape(d.base), "drd_region_up", region="b")

    def last_job() -> str | None:
        body = json.loads(http_get(d.base + "/api/v1/status")[1])
        status: str | None = body["plans"]["p"]["sources"]["tree"]["last_job"]["status"]
        return status

    # The first backup (due at once) is over: from here on only the probe touches the regions.
    wait_for(lambda: last_job() == "success", 60, "the first backup")
    assert region_up() == 1

    away = b.with_name("b.away")
    b.rename(away)
    b.write_text("not a directory: the volume is gone")
    broken_at = time.time()
    wait_for(lambda: region_up() == 0, 30, "drd_region_up of b to go to 0")
    samples = scrape(d.base)
    changed = value(samples, "drd_region_up_changed_timestamp_seconds", region="b")
    assert changed is not None and changed >= broken_at - 0.5
    # Within one probe interval, plus the probe's own 2 s limit and a loaded machine's slack.
    assert changed - broken_at <= EVERY + 2 + 10, changed - broken_at

    # The probe asks the broken region too (a job, e.g. a restore test storing its report,
    # may have noticed first: the daemon keeps working meanwhile).
    def failed_checks() -> float:
        found = value(
            scrape(d.base),
            "drd_storage_operations_total",
            region="b",
            operation="check",
            result="failure",
        )
        return found or 0.0

    wait_for(lambda: failed_checks() >= 1, 30, "the probe to ask region b")
    assert value(samples, "drd_region_up", region="a") == 1
    assert "region b: down (" in d.output()

    # Now someone asks: plan p needs both regions, so drd is unready and says why.
    status, body = http_get(d.base + "/readyz")
    assert status == 503
    ready = json.loads(body)
    assert ready["checks"]["min_copies"]["p"].endswith("down: b")
    assert "not a directory" in ready["checks"]["regions"]["b"]

    b.unlink()
    away.rename(b)
    wait_for(lambda: region_up() == 1, 30, "drd_region_up of b back to 1")
    assert "region b: answers again" in d.output()
    assert http_get(d.base + "/readyz")[0] == 200

    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0, d.output()


def test_probe_objects_left_behind_are_swept_at_start(
    tmp_path: Path,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
) -> None:
    """Probes a killed `drd doctor` or a refused delete left in a region: the real daemon's
    first probe round deletes those over an hour old, and leaves a young one (a doctor may be
    reading it back right now)."""
    env = DrdEnv.files_plan(tmp_path)
    env.daemon = {"region_probe": {"every": f"{EVERY}s", "timeout": "2s"}}
    env.write()
    region = LocalStorage("a", tmp_path / "regions" / "a")
    now = datetime.now(UTC)
    old = [
        f"_probe/{new_backup_id(now - timedelta(hours=2))}",
        f"_doctor/probe-{new_backup_id(now - timedelta(days=3))}",
    ]
    young = f"_doctor/probe-{new_backup_id(now - timedelta(minutes=5))}"

    async def put_all() -> None:
        for key in [*old, young]:
            await region.put(key, b"drd region probe: safe to delete\n")

    async def left() -> list[str]:
        probes = [*await region.list("_probe/"), *await region.list("_doctor/")]
        return sorted(o.key for o in probes)

    asyncio.run(put_all())
    d = daemon_factory(env, env.api_port)
    wait_for(lambda: http_get(d.base + "/readyz")[0] == 200, 60, "the daemon ready")
    assert asyncio.run(left()) == [young]
