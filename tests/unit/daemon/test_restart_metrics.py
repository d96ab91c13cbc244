"""Issue 17, must-hold 6: the last results are back right after a restart, taken from the job
history (and storage), not a backup or a restore-test interval later."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drd import crypto
from drd.config.loader import load_config
from drd.config.models import Config
from drd.daemon.history import History
from drd.daemon.service import Daemon
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.source_backup import backup_source
from drd.storage.base import Storage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv

REF = SourceRef("p", "s0")
LABELS = {"plan": "p", "source": "s0"}


def config(tmp_path: Path) -> Config:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 20_000}])
    return load_config(env.write())


def scrape(d: Daemon) -> dict[str, float]:
    d.refresh_metrics()
    text = generate_latest(d.metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels == LABELS:
                out[s.name] = s.value
    return out


async def started(cfg: Config, keyring: crypto.Keyring, regions: Mapping[str, Storage]) -> Daemon:
    d = Daemon(cfg, keyring, regions, metrics=Metrics())
    await d.load_state()
    return d


async def test_last_results_are_exported_right_after_a_restart(
    blob_strategy: Any, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    first = await started(cfg, keyring, regions)
    first.run_once()
    task = first.sources[REF].task
    assert task is not None
    await task
    await first.restore_tests.run_once()
    await asyncio.gather(*first.restore_tests.tasks())
    before = scrape(first)
    assert before["drd_backup_last_status"] == 1
    assert before["drd_restore_test_last_status"] == 1
    await first.shutdown(1)

    # A restart: nothing has run yet, and every last result is there.
    second = await started(cfg, keyring, regions)
    after = scrape(second)
    for name in (
        "drd_backup_last_status",
        "drd_backup_last_success_timestamp_seconds",
        "drd_restore_test_last_status",
        "drd_restore_test_last_success_timestamp_seconds",
        "drd_rto_seconds",
        "drd_backup_size_bytes",
    ):
        # (the live timestamp is taken a moment after the manifest's completion time)
        assert after.get(name) == pytest.approx(before[name], abs=1.0), name
    await second.shutdown(1)


async def test_an_interrupted_or_skipped_job_does_not_hide_the_last_result(
    blob_strategy: Any, tmp_path: Path
) -> None:
    """The newest history rows say `interrupted` (a crash mid-backup) and `skipped` (no backup
    to test): the last backup that failed, and the last test that passed, still count."""
    cfg = config(tmp_path)
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    history = History(cfg.state_dir / "history.sqlite3")
    history.finish(history.start("backup", "p", "s0"), "failure", detail="source down")
    history.finish(history.start("restore-test", "p", "s0"), "success")
    history.finish(history.start("restore-test", "p", "s0"), "skipped", detail="no backup")
    history.start("backup", "p", "s0")  # never finished: the process died mid-backup
    history.close()

    d = await started(cfg, keyring, regions)
    samples = scrape(d)
    assert samples["drd_backup_last_status"] == 0
    assert samples["drd_restore_test_last_status"] == 1
    assert d.sources[REF].last_status == "interrupted"  # what /api/v1/status shows
    await d.shutdown(1)


async def test_without_history_the_newest_backup_in_storage_counts(
    blob_strategy: Any, tmp_path: Path
) -> None:
    """A new state directory on a host whose regions hold backups (a rebuilt machine)."""
    cfg = config(tmp_path)
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    plan = cfg.plan("p")
    await backup_source(plan, plan.sources[0], regions, keyring, tmp_path / "elsewhere")
    d = await started(cfg, keyring, regions)
    assert scrape(d)["drd_backup_last_status"] == 1
    assert "drd_restore_test_last_status" not in scrape(d)  # nothing is known about tests
    await d.shutdown(1)
