"""drd_region_up in the daemon: set by the periodic probe (drd.daemon.region_probe_loop) and by
the real operations of jobs, without anyone calling /readyz; in-memory regions with faults, an
injected clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.service import Daemon
from drd.errors import ConfigError, PermanentStorageError
from drd.layout import SourceRef, new_backup_id
from drd.metrics import Metrics
from drd.repository.catalog import build_catalog
from drd.storage.faults import FaultyStorage
from drd.storage.health import RegionHealth
from drd.storage.instrumented import ObservedStorage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv
from tests.unit.daemon.test_service import NOW, Clock, finish, make_config


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def up(d: Daemon, region: str) -> float | None:
    return d.metrics.registry.get_sample_value("drd_region_up", {"region": region})


async def test_the_probe_sets_region_up_both_ways(blob_strategy, tmp_path, keyring) -> None:
    clock = Clock()
    b = FaultyStorage(MemoryStorage("b"))
    d = Daemon(
        make_config(tmp_path),
        keyring,
        {"a": MemoryStorage("a"), "b": b},
        metrics=Metrics(),
        clock=clock,
    )
    assert await d.region_probe.run_once() == {"a": "", "b": ""}
    assert (up(d, "a"), up(d, "b")) == (1, 1)
    last_probe = d.metrics.registry.get_sample_value(
        "drd_region_last_probe_timestamp_seconds", {"region": "b"}
    )
    assert last_probe == NOW.timestamp()

    b.fail("check", PermanentStorageError("region b: root is not a directory"))
    clock.now = NOW + timedelta(seconds=30)
    problems = await d.region_probe.run_once()
    assert problems == {"a": "", "b": "region b: root is not a directory"}
    assert (up(d, "a"), up(d, "b")) == (1, 0)
    changed = d.metrics.registry.get_sample_value(
        "drd_region_up_changed_timestamp_seconds", {"region": "b"}
    )
    assert changed == clock.now.timestamp()

    b.clear()
    await d.region_probe.run_once()
    assert up(d, "b") == 1
    await d.shutdown(1)


async def test_a_probe_without_an_answer_is_down_within_the_timeout(
    blob_strategy, tmp_path, keyring
) -> None:
    b = FaultyStorage(MemoryStorage("b"))
    b.add_latency(30, op="check")
    cfg = make_config(tmp_path, daemon={"region_probe": {"every": "5s", "timeout": "1s"}})
    d = Daemon(cfg, keyring, {"a": MemoryStorage("a"), "b": b}, metrics=Metrics(), clock=Clock())
    async with asyncio.timeout(20):  # a hang guard: the probe's own limit is 1s
        problems = await d.region_probe.run_once()
    assert problems["b"] == "no answer within 1s" and up(d, "b") == 0
    await d.shutdown(1)


async def test_the_probe_is_due_every_interval(blob_strategy, tmp_path, keyring) -> None:
    clock = Clock()
    cfg = make_config(tmp_path, daemon={"region_probe": {"every": "1m", "timeout": "5s"}})
    d = Daemon(cfg, keyring, {"a": MemoryStorage("a"), "b": MemoryStorage("b")}, clock=clock)
    assert d.region_probe in d.loops  # started with the others by serve()
    assert d.region_probe.seconds_until_due() == 0
    await d.region_probe.run_once()
    assert d.region_probe.seconds_until_due() == 60
    clock.now = NOW + timedelta(seconds=45)
    assert d.region_probe.seconds_until_due() == 15
    clock.now = NOW + timedelta(minutes=2)
    assert d.region_probe.seconds_until_due() == 0
    await d.shutdown(1)


async def test_serving_probes_without_anyone_asking(blob_strategy, tmp_path, keyring) -> None:
    """The loop runs as a task once the daemon serves: a region that stops answering is 0
    without /readyz or a job touching it."""
    b = FaultyStorage(MemoryStorage("b"))
    cfg = make_config(tmp_path, daemon={"region_probe": {"every": "1s", "timeout": "1s"}})
    d = Daemon(cfg, keyring, {"a": MemoryStorage("a"), "b": b}, metrics=Metrics())
    await d.load_state()
    stop = asyncio.Event()
    serving = asyncio.create_task(d.serve(stop))
    async with asyncio.timeout(20):
        while up(d, "b") != 1:
            await asyncio.sleep(0.05)
        b.fail("check", PermanentStorageError("region b: gone"))
        while up(d, "b") != 0:
            await asyncio.sleep(0.05)
        b.clear()
        while up(d, "b") != 1:
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(serving, 5)
    await d.shutdown(1)


async def test_a_failed_backup_sets_its_region_down_before_any_probe(
    blob_strategy, tmp_path, keyring
) -> None:
    """Operations of jobs count: the region that failed the backup's upload is 0 at once, the
    one that took its copy is 1; the next successful operation there sets it back to 1."""
    clock = Clock()
    metrics = Metrics()
    health = RegionHealth(metrics, clock)
    b = FaultyStorage(MemoryStorage("b"))
    b.fail("open_writer", PermanentStorageError("region b: permission denied"))
    regions = {
        "a": ObservedStorage(MemoryStorage("a"), health=health),
        "b": ObservedStorage(b, health=health),
    }
    cfg = make_config(tmp_path, min_copies=1)
    d = Daemon(cfg, keyring, regions, metrics=metrics, clock=clock, health=health)
    await d.load_state()
    d.run_once()
    await finish(d)
    assert d.sources[SourceRef("p", "s0")].last_status == "success"  # one copy is enough
    assert (up(d, "a"), up(d, "b")) == (1, 0)
    assert "permission denied" in health.problems()["b"]
    b.clear()
    await regions["b"].list("p/")
    assert up(d, "b") == 1
    await d.shutdown(1)


def test_probe_settings_are_validated(blob_strategy, tmp_path: Path) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 10}])
    cfg = load_config(env.write())
    assert cfg.daemon.region_probe.every == timedelta(seconds=30)  # the defaults
    assert cfg.daemon.region_probe.timeout == timedelta(seconds=10)
    env.daemon = {"region_probe": {"every": "10s", "timeout": "1m"}}
    with pytest.raises(ConfigError) as caught:
        load_config(env.write())
    assert "daemon.region_probe.timeout: 1m is longer than every (10s)" in str(caught.value)
    env.daemon = {"region_probe": {"every": "0s"}}
    with pytest.raises(ConfigError) as caught:
        load_config(env.write())
    assert "daemon.region_probe.every" in str(caught.value)
    env.daemon = {"region_probe": {"evry": "10s"}}
    with pytest.raises(ConfigError) as caught:
        load_config(env.write())
    assert "daemon.region_probe.evry" in str(caught.value)


async def test_a_region_that_lists_but_cannot_write_stays_down_until_a_write_works(
    blob_strategy, tmp_path, keyring
) -> None:
    """A full disk answers a listing: after a failed write the probe writes too (a new object
    under `_probe/`, deleted again), so region_up stays 0 instead of flapping back to 1 at
    every listing, and is 1 once a write works; then the probe only lists again."""
    clock, metrics = Clock(), Metrics()
    health = RegionHealth(metrics, clock)
    inner = MemoryStorage("b")
    b = FaultyStorage(inner)
    regions = {
        "a": ObservedStorage(MemoryStorage("a"), health=health),
        "b": ObservedStorage(b, health=health),
    }
    cfg = make_config(tmp_path, min_copies=1)
    d = Daemon(cfg, keyring, regions, metrics=metrics, clock=clock, health=health)
    full = PermanentStorageError("region b: No space left on device")
    b.fail("open_writer", full)
    b.fail("put", full)
    await d.load_state()
    d.run_once()
    await finish(d)  # its upload to b failed; a took the copy
    assert up(d, "b") == 0

    for _ in range(2):
        clock.now += timedelta(seconds=30)
        problems = await d.region_probe.run_once()
        assert problems["b"] == "region b: No space left on device" and up(d, "b") == 0

    b.clear()
    b.fail("delete", PermanentStorageError("region b: object under retention"), times=1)
    clock.now += timedelta(seconds=30)
    assert (await d.region_probe.run_once())["b"] == ""
    assert up(d, "b") == 1
    (left,) = await inner.list("_probe/")  # a refused delete leaves that one object
    catalog = await build_catalog(list(regions.values()), keyring)
    assert catalog.orphans == [] and {e.ref for e in catalog.entries} == {SourceRef("p", "s0")}

    seen = len(b.calls)
    clock.now += timedelta(seconds=30)
    await d.region_probe.run_once()
    assert [op for op, _ in b.calls[seen:]] == ["check"]  # writes work: a listing only
    assert await inner.list("_probe/") == [left]

    # A later write failure: the probe writes again, and cleans up after itself.
    await inner.delete(left.key)
    health.observe("b", "commit", full)
    await d.region_probe.run_once()
    assert up(d, "b") == 1 and await inner.list("_probe/") == []
    await d.shutdown(1)


async def test_old_probe_objects_are_swept_and_a_refused_delete_logged_once(
    blob_strategy, tmp_path, keyring, caplog: pytest.LogCaptureFixture
) -> None:
    """Probes the daemon or `drd doctor` left behind (a delete refused, a killed process) are
    deleted once over an hour old. One a retention hold keeps is not a failed write (no new
    probe object for it) and is logged once, not at every sweep."""
    clock, metrics = Clock(), Metrics()
    health = RegionHealth(metrics, clock)
    inner = MemoryStorage("b")
    b = FaultyStorage(inner)
    regions = {"a": MemoryStorage("a"), "b": ObservedStorage(b, health=health)}
    d = Daemon(make_config(tmp_path), keyring, regions, metrics=metrics, clock=clock, health=health)
    # the last delete of the sweep: nothing after it hides what it did to the region's state
    held = f"_doctor/probe-{new_backup_id(NOW - timedelta(minutes=90))}"
    old_probe = f"_probe/{new_backup_id(NOW - timedelta(hours=2))}"
    young_probe = f"_probe/{new_backup_id(NOW - timedelta(minutes=10))}"
    old_doctor = f"_doctor/probe-{new_backup_id(NOW - timedelta(hours=3))}"
    unnamed = "_doctor/probe-0123456789abcdef"  # an older drd's probe: no time in its name
    for key in (held, old_probe, young_probe, old_doctor, unnamed):
        await inner.put(key, b"probe")
    b.fail("delete", PermanentStorageError("region b: object under retention"), match=held)

    assert await d.region_probe.run_once() == {"a": "", "b": ""}
    assert sorted(o.key for o in await inner.list("_")) == sorted([held, young_probe, unnamed])
    assert up(d, "b") == 1 and not health.state("b").write_failed
    assert not [op for op, _ in b.calls if op in ("put", "open_writer")]

    clock.now = NOW + timedelta(seconds=30)  # the next round: no sweep yet
    seen = len(b.calls)
    await d.region_probe.run_once()
    assert [op for op, _ in b.calls[seen:]] == ["check"]

    clock.now = NOW + timedelta(hours=1, minutes=1)
    await d.region_probe.run_once()
    assert [o.key for o in await inner.list("_")] == [held]
    refused = [r for r in caplog.records if held in r.getMessage()]
    assert len(refused) == 1 and "object under retention" in refused[0].getMessage()
    assert up(d, "b") == 1
