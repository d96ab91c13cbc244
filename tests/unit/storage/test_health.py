"""drd.storage.health: drd_region_up follows every real storage operation's outcome (through
drd.storage.instrumented.ObservedStorage), on in-memory regions with injected faults and an
injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from drd.errors import ObjectExists, ObjectNotFound, PermanentStorageError, TransientStorageError
from drd.metrics import Metrics
from drd.storage.faults import FaultyStorage
from drd.storage.health import RegionHealth
from drd.storage.instrumented import ObservedStorage
from drd.storage.memory import MemoryStorage

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def gauge(metrics: Metrics, name: str, region: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"region": region})


def up(metrics: Metrics, region: str) -> float | None:
    return gauge(metrics, "drd_region_up", region)


@pytest.fixture
def setup() -> tuple[FaultyStorage, ObservedStorage, RegionHealth, Metrics, Clock]:
    metrics, clock = Metrics(), Clock()
    health = RegionHealth(metrics, clock)
    faulty = FaultyStorage(MemoryStorage("eu"))
    return faulty, ObservedStorage(faulty, health=health), health, metrics, clock


async def test_a_failed_operation_sets_region_up_0_and_a_successful_one_1(setup) -> None:
    faulty, storage, health, metrics, clock = setup
    await storage.put("p/a", b"x")
    assert up(metrics, "eu") == 1
    assert gauge(metrics, "drd_region_up_changed_timestamp_seconds", "eu") == T0.timestamp()

    clock.now = T0 + timedelta(minutes=1)
    faulty.fail("put", TransientStorageError("region eu: 503"), times=1)
    with pytest.raises(TransientStorageError):
        await storage.put("p/b", b"x")
    assert up(metrics, "eu") == 0
    assert not health.is_up("eu") and health.problems() == {"eu": "region eu: 503"}
    changed = gauge(metrics, "drd_region_up_changed_timestamp_seconds", "eu")
    assert changed == clock.now.timestamp()

    clock.now = T0 + timedelta(minutes=2)
    assert await storage.get("p/a") == b"x"  # any successful operation: the region answers
    assert up(metrics, "eu") == 1 and health.is_up("eu") and health.problems() == {}
    assert gauge(metrics, "drd_region_up_changed_timestamp_seconds", "eu") == (
        clock.now.timestamp()
    )

    clock.now = T0 + timedelta(minutes=3)
    await storage.list("p/")  # no change: the change time stays
    assert gauge(metrics, "drd_region_up_changed_timestamp_seconds", "eu") == (
        (T0 + timedelta(minutes=2)).timestamp()
    )


async def test_streams_count_too(setup) -> None:
    faulty, storage, _, metrics, _ = setup
    await storage.put("p/big", b"y" * 1000)
    faulty.fail_reader_after(10, PermanentStorageError("region eu: read failed"), times=1)
    with pytest.raises(PermanentStorageError):
        async for _ in storage.open_reader("p/big"):
            pass
    assert up(metrics, "eu") == 0
    writer = await storage.open_writer("p/new")
    await writer.write(b"z")
    await writer.commit()
    assert up(metrics, "eu") == 1
    faulty.fail("commit", PermanentStorageError("region eu: disk full"), times=1)
    writer = await storage.open_writer("p/new2")
    await writer.write(b"z")
    with pytest.raises(PermanentStorageError):
        await writer.commit()
    await writer.abort()
    assert up(metrics, "eu") == 0


async def test_answers_that_are_not_failures_of_the_region(setup) -> None:
    """Not found, and a create-only write refused because the object is there, are the region
    answering; a cancelled operation says nothing about it."""
    faulty, storage, _, metrics, _ = setup
    faulty.fail("list", PermanentStorageError("region eu: permission denied"), times=1)
    with pytest.raises(PermanentStorageError):
        await storage.list("p/")
    assert up(metrics, "eu") == 0
    with pytest.raises(ObjectNotFound):
        await storage.get("p/missing")
    assert up(metrics, "eu") == 1

    faulty.fail("list", PermanentStorageError("region eu: permission denied"), times=1)
    with pytest.raises(PermanentStorageError):
        await storage.list("p/")
    await storage.put("p/once", b"1")  # up again
    faulty.fail("list", PermanentStorageError("region eu: permission denied"), times=1)
    with pytest.raises(PermanentStorageError):
        await storage.list("p/")
    with pytest.raises(ObjectExists):
        await storage.put("p/once", b"2", if_absent=True)
    assert up(metrics, "eu") == 1

    faulty.add_latency(10, op="get")
    task = asyncio.create_task(storage.get("p/once"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert up(metrics, "eu") == 1


async def test_probe_results_and_the_probe_time() -> None:
    metrics, clock = Metrics(), Clock()
    health = RegionHealth(metrics, clock)
    assert not health.is_up("us") and not health.known("us")  # nothing asked yet
    assert up(metrics, "us") is None
    health.probed("us", "no answer within 10s")
    assert up(metrics, "us") == 0 and health.problems() == {"us": "no answer within 10s"}
    assert gauge(metrics, "drd_region_last_probe_timestamp_seconds", "us") == T0.timestamp()
    clock.now = T0 + timedelta(seconds=30)
    health.probed("us", "")
    assert up(metrics, "us") == 1
    assert gauge(metrics, "drd_region_last_probe_timestamp_seconds", "us") == (
        clock.now.timestamp()
    )


async def test_a_refused_delete_is_not_a_failed_write(setup) -> None:
    """A retention hold refuses deletes: writing a probe object then would only leave one more
    object the hold keeps. Writes that fail still mark the region write-failed."""
    faulty, region, health, _, _ = setup
    await region.put("x", b"1")
    faulty.fail("delete", PermanentStorageError("region eu: object under retention"))
    with pytest.raises(PermanentStorageError):
        await region.delete("x")
    assert health.state("eu").write_failed is False
    faulty.fail("put", PermanentStorageError("region eu: no space left"))
    with pytest.raises(PermanentStorageError):
        await region.put("y", b"2")
    assert health.state("eu").write_failed is True
