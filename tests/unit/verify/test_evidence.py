"""Where `drd report` finds its runs (drd.verify.evidence), on in-memory regions with the
blob strategy: the sealed drill reports and restore test reports in the regions, the job
history for tests whose reports are gone, each test once, the window, and reports that do
not authenticate left out and named."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.config.models import Plan, PlanStorage, RestoreTest, Schedule, Targets
from drd.daemon.history import History, read_finished
from drd.errors import PermanentStorageError
from drd.layout import SourceRef
from drd.pipeline.backup import run_backup
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from drd.verify.drill import run_drill
from drd.verify.evidence import gather
from drd.verify.figures import FROM_HISTORY, FROM_REGIONS
from drd.verify.restore_report import REPORTS_DIR
from drd.verify.restore_run import restore_tests_for
from tests.support.blob_strategy import BlobOptions, BlobStrategy

REF = SourceRef("billing", "db")
SOURCE = BlobOptions(name="db", kind="blob", size=20_000, chunk=4000)
END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SINCE = END - timedelta(days=90)


def at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 12, 0, tzinfo=UTC)


def plan_of(tmp_path: Path) -> Plan:
    return Plan(
        name="billing",
        owner="sre@example.com",
        reviewed_on=date(2026, 6, 1),
        targets=Targets(rpo=timedelta(hours=6), rto=timedelta(minutes=10)),
        schedule=Schedule(every=timedelta(hours=4)),
        storage=PlanStorage(regions=["r0", "r1"], min_copies=2),
        restore_test=RestoreTest(),
        sources=[SOURCE],
        path=tmp_path / "billing.yaml",
    )


def history_row(
    history: History, when: datetime, result: str, reports: list[dict[str, Any]] | None
) -> None:
    job = history.start("restore-test", "billing", "db", now=when.timestamp())
    detail = json.dumps({"reports": reports}) if reports is not None else "could not connect"
    history.finish(job, result, detail=detail, now=when.timestamp() + 5)


async def test_runs_come_from_the_regions_and_the_history_once_each(
    blob_strategy: type[BlobStrategy], tmp_path: Path
) -> None:
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {n: MemoryStorage(n, chunk_size=1000) for n in ("r0", "r1")}
    plan = plan_of(tmp_path)
    await run_backup(
        REF,
        BlobStrategy(SOURCE),
        list(regions.values()),
        keyring,
        min_copies=2,
        clock=lambda: at(11, 27),
    )
    common = {"state_dir": tmp_path / "state", "base_dir": tmp_path}
    old = await run_drill(plan, regions, keyring, clock=lambda: at(8, 1), **common)
    drill = await run_drill(plan, regions, keyring, clock=lambda: at(11, 28), **common)
    (tested,) = await restore_tests_for(
        plan, SOURCE, regions, keyring, clock=lambda: at(11, 29), **common
    )
    assert old.passed and tested.passed
    assert drill.status == "failed"  # its data was a day old: above the RPO target (6h)
    # A report that authenticates nowhere: named, not counted.
    forged = f"{REF.backup_prefix(tested.backup_id)}{REPORTS_DIR}/20261130T120000000Z-abcd.json"
    for storage in regions.values():
        await storage.put(forged, b"not a report")

    history = History(tmp_path / "state" / "history.sqlite3")
    mine = {
        "backup_id": tested.backup_id,
        "selection": "newest",
        "result": "passed",
        "tested_at": tested.started_at.isoformat(),
        "region": "r0",
        "rto_seconds": 1.5,
    }
    history_row(history, at(11, 29), "success", [mine])  # the same test as in the regions
    pruned = {**mine, "backup_id": "20261001T000000Z-deadbeef", "tested_at": at(10, 1).isoformat()}
    history_row(
        history,
        at(10, 1),
        "failure",
        [{**pruned, "result": "failed", "failure_category": "check_failed"}],
    )
    history_row(history, at(10, 2), "failure", None)  # could not run at all
    history_row(history, at(10, 3), "skipped", None)  # nothing to test: not a run
    history_row(history, at(7, 1), "success", [{**mine, "tested_at": at(7, 1).isoformat()}])
    running = history.start("restore-test", "billing", "db", now=at(11, 30).timestamp())

    rows = read_finished(history.path, "restore-test", "billing", SINCE.timestamp())
    assert [datetime.fromtimestamp(r.started_at, UTC).day for r in rows] == [1, 2, 3, 29]
    found = await gather(plan, regions, keyring, SINCE, rows)

    runs = sorted(found.runs, key=lambda r: r.started_at)
    assert [(r.kind, r.started_at, r.origin) for r in runs] == [
        ("restore-test", at(10, 1), FROM_HISTORY),
        ("restore-test", at(10, 2), FROM_HISTORY),
        ("drill", at(11, 28), FROM_REGIONS),
        ("restore-test", at(11, 28), FROM_REGIONS),  # the drill's own restore test
        ("restore-test", at(11, 29), FROM_REGIONS),
    ]
    pruned_run, failed, drill_run, _, test_run = runs
    assert pruned_run.result == "failed" and pruned_run.reasons == ("check_failed",)
    assert failed.result == "failed" and failed.reasons == ("could_not_run",)
    assert drill_run.ident == drill.drill_id and drill_run.result == "failed"
    assert drill_run.reasons == ("rpo_above_target",)
    assert drill_run.rto_seconds == pytest.approx(drill.rto_seconds, abs=0.001)
    assert drill_run.rpo_seconds == pytest.approx(86400.0)  # backup Nov 27, drill Nov 28
    assert test_run.ident == tested.backup_id and test_run.rto_seconds is not None
    assert test_run.rpo_seconds == pytest.approx(2 * 86400.0)  # the newest backup's age
    assert found.counts == {FROM_HISTORY: 2, FROM_REGIONS: 3}
    (problem,) = found.problems
    assert forged in problem

    # Read without writing: the running job was not marked interrupted by the reader.
    db = sqlite3.connect(history.path)
    assert db.execute("SELECT finished_at FROM jobs WHERE id = ?", (running,)).fetchone() == (None,)
    db.close()
    history.close()


def test_no_history_file_is_no_history(tmp_path: Path) -> None:
    assert read_finished(tmp_path / "none.sqlite3", "restore-test", "p", 0.0) == []
    assert not (tmp_path / "none.sqlite3").exists()


async def test_a_region_that_cannot_be_listed_is_named_not_left_out_quietly(
    blob_strategy: type[BlobStrategy], tmp_path: Path
) -> None:
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    inner = {n: MemoryStorage(n, chunk_size=1000) for n in ("r0", "r1")}
    plan = plan_of(tmp_path)
    await run_backup(
        REF,
        BlobStrategy(SOURCE),
        list(inner.values()),
        keyring,
        min_copies=2,
        clock=lambda: at(11, 27),
    )
    common = {"state_dir": tmp_path / "state", "base_dir": tmp_path}
    await run_drill(plan, inner, keyring, clock=lambda: at(11, 28), **common)
    down = FaultyStorage(inner["r1"])
    down.fail("list", PermanentStorageError("region r1: 503 backend unavailable"))
    found = await gather(plan, {"r0": inner["r0"], "r1": down}, keyring, SINCE)
    assert not found.complete
    assert list(found.regions_not_read) == ["r1"]
    assert "503 backend unavailable" in found.regions_not_read["r1"]
    not_read = [p for p in found.problems if p.startswith("region r1 not read")]
    assert len(not_read) == 2  # the backups' listing and the drill reports' listing
    assert any("drill reports" in p for p in not_read)
    assert {r.kind for r in found.runs} == {"drill", "restore-test"}  # r0 still counted

    everything = await gather(plan, inner, keyring, SINCE)
    assert everything.complete and everything.regions_not_read == {}


async def test_a_region_the_plan_names_but_that_was_not_opened_is_not_read(
    blob_strategy: type[BlobStrategy], tmp_path: Path
) -> None:
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    found = await gather(plan_of(tmp_path), {"r0": MemoryStorage("r0")}, keyring, SINCE)
    assert not found.complete and list(found.regions_not_read) == ["r1"]
