"""Issue 17, must-hold 6: which series drd exports. No `_created` series; one vocabulary of
result labels; retention series only for a plan's own regions (and a region the plan left while
it still holds the plan's copies); series of a removed plan or source can be taken away."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drd import crypto
from drd.config.models import Plan, PlanStorage, Schedule, Targets
from drd.errors import ObjectNotFound, PermanentStorageError
from drd.layout import SourceRef
from drd.metrics import RESULTS, STORAGE_RESULTS, Metrics
from drd.pipeline.backup import run_backup
from drd.retention.sweep import RetentionMemory, sweep
from drd.storage.faults import FaultyStorage
from drd.storage.instrumented import ObservedStorage
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import BlobOptions, BlobStrategy

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
D = timedelta(days=1)


def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(metrics.registry).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def plan_of(name: str, regions: list[str], sources: tuple[str, ...] = ("db",)) -> Plan:
    return Plan(
        name=name,
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=timedelta(hours=6), rto=timedelta(hours=1)),
        schedule=Schedule(every=timedelta(hours=4)),
        storage=PlanStorage(regions=regions, min_copies=2),
        sources=[BlobOptions(name=s, kind="blob", size=5000) for s in sources],
        path=Path(f"/etc/drd/plans/{name}.yaml"),
    )


def test_no_created_series() -> None:
    m = Metrics()
    m.declare_source("p", "s", ["a", "b"])
    m.backups.labels("p", "s", "success").inc()
    m.backup_duration.labels("p", "s").observe(3)
    names = {name for name, _, _ in samples(m)}
    assert "drd_backups_total" in names
    assert not [n for n in names if n.endswith("_created")]


async def test_storage_operations_use_the_one_result_vocabulary() -> None:
    m = Metrics()

    def observe(region: str, op: str, result: str) -> None:
        m.storage_operations.labels(region, op, result).inc()

    inner = FaultyStorage(MemoryStorage("a"))
    inner.fail("put", PermanentStorageError("403"), match="denied")
    storage = ObservedStorage(inner, observe)
    await storage.put("k", b"v")
    with pytest.raises(ObjectNotFound):
        await storage.get("missing")
    with pytest.raises(PermanentStorageError):
        await storage.put("denied", b"v")
    results = {
        (labels["operation"], labels["result"]): value
        for name, labels, value in samples(m)
        if name == "drd_storage_operations_total"
    }
    assert results == {("put", "success"): 1, ("get", "not_found"): 1, ("put", "failure"): 1}
    assert RESULTS == ("success", "failure")
    assert STORAGE_RESULTS == ("success", "failure", "not_found")


async def test_retention_series_only_for_the_plans_own_regions(
    blob_strategy: object, tmp_path: Path
) -> None:
    """Two plans on different regions of one daemon: each plan's retention series name its own
    regions only, however many regions the daemon has (and sweeps)."""
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {n: MemoryStorage(n, chunk_size=1000) for n in ("a", "b", "c", "d")}
    billing, web = plan_of("billing", ["a", "b"]), plan_of("web", ["c", "d"])
    for plan in (billing, web):
        ref = SourceRef(plan.name, "db")
        await run_backup(
            ref,
            BlobStrategy(plan.sources[0]),
            [regions[n] for n in plan.storage.regions],
            keyring,
            min_copies=2,
            clock=lambda: NOW - D,
        )
    m = Metrics()
    memory = RetentionMemory(tmp_path / "retention.json")
    memory.keep_plans({p.name: p.storage.regions for p in (billing, web)})
    for plan in (billing, web):
        await sweep(plan, regions, now=NOW, metrics=m, memory=memory)
    memory.publish(m, NOW)
    per_region = {
        (name, labels["plan"], labels["region"])
        for name, labels, _ in samples(m)
        if name.startswith("drd_retention_") and "region" in labels
    }
    for name in (
        "drd_retention_oldest_copy_age_seconds",
        "drd_retention_deleted_total",
        "drd_retention_delete_failures_total",
    ):
        got = {(plan, region) for n, plan, region in per_region if n == name}
        assert got == {("billing", "a"), ("billing", "b"), ("web", "c"), ("web", "d")}, name


async def test_a_region_the_plan_left_is_exported_while_it_holds_copies(
    blob_strategy: object, tmp_path: Path
) -> None:
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {n: MemoryStorage(n, chunk_size=1000) for n in ("a", "b", "old")}
    before = plan_of("billing", ["a", "old"])
    ref = SourceRef("billing", "db")
    await run_backup(
        ref,
        BlobStrategy(before.sources[0]),
        [regions["a"], regions["old"]],
        keyring,
        min_copies=2,
        clock=lambda: NOW - 15 * D,  # expired: the next sweep destroys it everywhere
    )
    after = plan_of("billing", ["a", "b"])  # the plan moved from "old" to "b"
    m = Metrics()
    memory = RetentionMemory()
    memory.keep_plans({"billing": after.storage.regions})

    def ages() -> dict[str, float]:
        return {
            labels["region"]: value
            for name, labels, value in samples(m)
            if name == "drd_retention_oldest_copy_age_seconds"
        }

    # Listed before the sweep destroys anything: "old" holds a copy, and it is overdue.
    memory.remember("billing", "old", NOW - 15 * D)
    memory.publish(m, NOW)
    assert ages()["old"] == 15 * 86400
    await sweep(after, regions, now=NOW, metrics=m, memory=memory)
    assert await regions["old"].list("billing/") == []
    memory.publish(m, NOW)
    assert set(ages()) == {"a", "b"}  # emptied: its series is gone


def test_forget_removes_a_plans_or_a_sources_series() -> None:
    m = Metrics()
    for plan, source in (("p", "s1"), ("p", "s2"), ("q", "s1")):
        m.declare_source(plan, source, ["a", "b"])
        m.backup_last_status.labels(plan, source).set(1)
    m.plan_min_copies.labels("p").set(2)
    m.retention_oldest_age.labels("p", "a").set(5)

    def series(plan: str) -> set[str | None]:
        return {labels.get("source") for _, labels, _ in samples(m) if labels.get("plan") == plan}

    assert m.forget("p", source="s2") > 0
    assert series("p") == {"s1", None}  # None: the per-plan series
    assert m.forget("p") > 0
    assert series("p") == set()
    assert series("q") == {"s1", None}
