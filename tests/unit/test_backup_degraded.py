"""A backup whose strategy says it is not a faithful image of the source ("degraded" in its
metadata: a file that kept changing while being read, ...) is committed with status
`degraded` instead of `ok`: in the manifest (readable without the key), in `drd list` (text
and JSON), in a metric, in the daemon's history, and in the restore test's report. What a
restore could not put into its target (RestoreOutcome.warnings) reaches the report too."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from drd import crypto
from drd.backup import run_backup
from drd.cli import commands
from drd.config.loader import load_config
from drd.config.models import Plan, PlanStorage, RestoreTest, Schedule, Targets
from drd.daemon.service import Daemon
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.repository.catalog import build_catalog
from drd.repository.manifest import ManifestPublic
from drd.storage.memory import MemoryStorage
from drd.strategies.base import RestoreOutcome
from drd.verify.restore_run import choose_backups, run_restore_test
from tests.support.blob_strategy import BlobOptions, BlobStrategy
from tests.support.drdenv import DrdEnv

REF = SourceRef("billing", "db")
SOURCE = BlobOptions(name="db", kind="blob", size=20_000)
REASON = "1 file(s) kept changing while being read (3 reads each) ...: app/hot.log"


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


@pytest.fixture
def degraded_blob(
    blob_strategy: type[BlobStrategy], monkeypatch: pytest.MonkeyPatch
) -> type[BlobStrategy]:
    monkeypatch.setattr(
        BlobStrategy, "restore_metadata", lambda self: {"format": "blob", "degraded": [REASON]}
    )
    return blob_strategy


def clock() -> datetime:
    return datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def back_up(keyring: crypto.Keyring) -> tuple[dict[str, MemoryStorage], Any]:
    regions = {name: MemoryStorage(name) for name in ("r0", "r1")}
    result = await run_backup(
        REF, BlobStrategy(SOURCE), list(regions.values()), keyring, min_copies=2, clock=clock
    )
    return regions, result


async def test_the_manifest_and_the_listing_say_degraded(
    degraded_blob: type[BlobStrategy],
    keyring: crypto.Keyring,
    capsys: pytest.CaptureFixture[str],
) -> None:
    regions, result = await back_up(keyring)
    assert result.status == "degraded" and result.degraded == [REASON]
    assert result.manifest.public.status == "degraded"

    catalog = await build_catalog(list(regions.values()), keyring, "billing/")
    (entry,) = catalog.entries
    assert entry.public.status == "degraded" and entry.manifest is not None
    assert entry.manifest.body.degraded == [REASON]
    commands._print_catalog(catalog, as_json=False)
    line = capsys.readouterr().out.splitlines()[1]
    assert line.endswith(f"r0,r1  DEGRADED: {REASON}")
    commands._print_catalog(catalog, as_json=True)
    (listed,) = json.loads(capsys.readouterr().out)["backups"]
    assert listed["status"] == "degraded" and listed["degraded"] == [REASON]

    # Without the key only the public half is readable: the status is in it.
    keyless = await build_catalog(list(regions.values()), None, "billing/")
    assert keyless.entries[0].public.status == "degraded"
    commands._print_catalog(keyless, as_json=False)
    assert "DEGRADED" in capsys.readouterr().out


async def test_a_faithful_backup_is_ok_and_old_manifests_read_as_ok(
    blob_strategy: type[BlobStrategy],
    keyring: crypto.Keyring,
    capsys: pytest.CaptureFixture[str],
) -> None:
    regions, result = await back_up(keyring)
    assert result.status == "ok" and result.degraded == []
    catalog = await build_catalog(list(regions.values()), keyring, "billing/")
    commands._print_catalog(catalog, as_json=False)
    assert "DEGRADED" not in capsys.readouterr().out
    public = {
        "backup_id": "b",
        "plan": "p",
        "source": "s",
        "kind": "blob",
        "key_id": "k",
        "started_at": "2026-01-01T00:00:00+00:00",
        "completed_at": "2026-01-01T00:00:01+00:00",
        "format": "drd-backup-1",
    }  # written before the status field existed
    assert ManifestPublic.from_dict(public, "old").status == "ok"


async def test_the_daemon_counts_degraded_backups(
    degraded_blob: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 20_000}])
    cfg = load_config(env.write())
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    daemon = Daemon(cfg, keyring, regions, metrics=Metrics(), clock=clock)
    await daemon.load_state()
    text = generate_latest(daemon.metrics.registry).decode()
    assert 'drd_backups_degraded_total{plan="p",source="s0"} 0.0' in text  # declared at zero
    daemon.run_once()
    await asyncio.gather(*(st.task for st in daemon.sources.values() if st.task is not None))
    text = generate_latest(daemon.metrics.registry).decode()
    assert 'drd_backups_degraded_total{plan="p",source="s0"} 1.0' in text
    assert 'drd_backups_total{plan="p",result="success",source="s0"} 1.0' in text
    last = daemon.history.last("backup", "p", "s0")
    assert last is not None and last.result == "success"
    assert last.detail == f"degraded: {REASON}"
    await daemon.shutdown(1)


def make_plan(tmp_path: Path) -> Plan:
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


async def restore_test(
    regions: dict[str, MemoryStorage], keyring: crypto.Keyring, tmp_path: Path
) -> Any:
    storages = list(regions.values())
    (candidate,) = await choose_backups(REF, storages, keyring, min_copies=2)
    return await run_restore_test(
        make_plan(tmp_path),
        SOURCE,
        regions,
        keyring,
        state_dir=tmp_path / "state",
        base_dir=tmp_path,
        candidate=candidate,
    )


async def test_the_restore_test_reports_a_degraded_backup(
    degraded_blob: type[BlobStrategy], keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions, _ = await back_up(keyring)
    report = await restore_test(regions, keyring, tmp_path)
    assert report.passed  # it restores: the warning says what it lacks
    status = next(c for c in report.checks if c.name == "backup_status")
    assert status.failed and not status.critical
    assert status.detail == f"the backup is degraded: {REASON}"
    assert any(line.strip().startswith("WARNING backup_status") for line in report.summary_lines())


async def test_the_restore_test_report_carries_the_restore_warnings(
    blob_strategy: type[BlobStrategy],
    keyring: crypto.Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    regions, _ = await back_up(keyring)
    plain = BlobStrategy.restore.__func__  # type: ignore[attr-defined]

    async def with_warning(cls: Any, chunks: Any, target: str, metadata: Any) -> RestoreOutcome:
        outcome: RestoreOutcome = await plain(cls, chunks, target, metadata)
        outcome.warnings.append("2 extended attribute(s) ... could not be restored")
        return outcome

    monkeypatch.setattr(BlobStrategy, "restore", classmethod(with_warning))
    report = await restore_test(regions, keyring, tmp_path)
    assert report.passed
    assert report.restore["warnings"] == ["2 extended attribute(s) ... could not be restored"]
    assert "backup_status" not in [c.name for c in report.checks]  # an ok backup
