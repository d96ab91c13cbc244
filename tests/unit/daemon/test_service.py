"""The daemon's scheduling and job handling, driven through run_once with an injected clock on
in-memory regions (no timers, no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from drd import crypto
from drd.config.loader import load_config
from drd.config.models import Config
from drd.daemon.service import Daemon
from drd.errors import PermanentStorageError, TransientStorageError
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.backup import run_backup
from drd.storage.base import ObjectInfo, ObjectWriter, Storage
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import BlobOptions, BlobStrategy
from tests.support.drdenv import DrdEnv

NOW = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)  # between two 4h slots


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class ConcurrencyProbe(MemoryStorage):
    """Counts uploads in flight, to check the global job limit."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.active = 0
        self.peak = 0

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectWriter:
        inner = await super().open_writer(key, metadata)
        self.active += 1
        self.peak = max(self.peak, self.active)
        probe = self

        class Writer(ObjectWriter):
            async def write(self, data: bytes) -> None:
                await asyncio.sleep(0.01)
                await inner.write(data)

            async def commit(self) -> ObjectInfo:
                probe.active -= 1
                return await inner.commit()

            async def abort(self) -> None:
                probe.active -= 1
                await inner.abort()

        return Writer()


def make_config(
    tmp_path: Path, sources: int = 1, daemon: dict[str, Any] | None = None, **plan: Any
) -> Config:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "p",
        [{"name": f"s{i}", "kind": "blob", "size": 20_000} for i in range(sources)],
        **plan,
    )
    env.daemon = daemon or {}
    return load_config(env.write())


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def make_daemon(
    cfg: Config, keyring: crypto.Keyring, regions: Mapping[str, Storage], clock: Clock
) -> Daemon:
    return Daemon(cfg, keyring, regions, metrics=Metrics(), clock=clock)


async def finish(daemon: Daemon) -> None:
    tasks = [st.task for st in daemon.sources.values() if st.task is not None]
    await asyncio.gather(*tasks)


async def test_never_backed_up_source_runs_at_once(blob_strategy, tmp_path, keyring) -> None:
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    clock = Clock()
    d = make_daemon(make_config(tmp_path), keyring, regions, clock)
    await d.load_state()
    st = d.sources[SourceRef("p", "s0")]
    assert st.next_due == NOW
    assert d.run_once() == [st.ref]
    assert d.run_once() == []  # runs of one source never overlap
    await finish(d)
    assert st.last_status == "success" and st.last_capture == NOW
    assert st.next_due is not None and st.next_due > NOW
    text = generate_latest(d.metrics.registry).decode()
    assert 'drd_backups_total{plan="p",result="success",source="s0"} 1.0' in text
    assert 'drd_backups_total{plan="p",result="failure",source="s0"} 0.0' in text
    d.refresh_metrics()
    assert (
        'drd_rpo_seconds{plan="p",source="s0"} 0.0' in generate_latest(d.metrics.registry).decode()
    )
    await d.shutdown(1)


@pytest.mark.parametrize(
    ("age", "due_now"), [(timedelta(hours=7), True), (timedelta(hours=1), False)]
)
async def test_rpo_already_breached_at_start_runs_at_once(
    blob_strategy, tmp_path, keyring, age: timedelta, due_now: bool
) -> None:
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    strategy = BlobStrategy(BlobOptions(name="s0", kind="blob", size=100))
    await run_backup(
        SourceRef("p", "s0"),
        strategy,
        list(regions.values()),
        keyring,
        min_copies=2,
        clock=lambda: NOW - age,
    )
    d = make_daemon(make_config(tmp_path), keyring, regions, Clock())
    await d.load_state()
    st = d.sources[SourceRef("p", "s0")]
    assert st.last_capture == NOW - age
    assert (st.next_due == NOW) is due_now  # rpo is 6h, schedule every 4h
    await d.shutdown(1)


async def test_global_concurrency_limit(blob_strategy, tmp_path, keyring) -> None:
    regions = {"a": ConcurrencyProbe("a"), "b": ConcurrencyProbe("b")}
    cfg = make_config(tmp_path, sources=3, daemon={"max_concurrent_jobs": 1})
    d = make_daemon(cfg, keyring, regions, Clock())
    await d.load_state()
    assert len(d.run_once()) == 3
    await finish(d)
    assert regions["a"].peak == 1 and regions["b"].peak == 1
    assert all(st.last_status == "success" for st in d.sources.values())
    await d.shutdown(1)


async def test_transient_failure_is_retried(blob_strategy, tmp_path, keyring) -> None:
    faulty = FaultyStorage(MemoryStorage("a"))
    faulty.fail("open_writer", TransientStorageError("503 from a"), times=1)
    regions = {"a": faulty, "b": MemoryStorage("b")}
    cfg = make_config(tmp_path, daemon={"retry_wait": "1s", "retries": 2})
    d = make_daemon(cfg, keyring, regions, Clock())
    await d.load_state()
    d.run_once()
    await finish(d)
    st = d.sources[SourceRef("p", "s0")]
    assert st.last_status == "success"
    assert [op for op, _ in faulty.calls if op == "open_writer"] == ["open_writer"] * 2
    await d.shutdown(1)


async def test_permanent_failure_is_not_retried(blob_strategy, tmp_path, keyring) -> None:
    faulty = FaultyStorage(MemoryStorage("a"))
    faulty.fail("open_writer", PermanentStorageError("403 forbidden"))
    regions = {"a": faulty, "b": MemoryStorage("b")}
    cfg = make_config(tmp_path, daemon={"retry_wait": "1s", "retries": 2})
    d = make_daemon(cfg, keyring, regions, Clock())
    await d.load_state()
    d.run_once()
    await finish(d)
    st = d.sources[SourceRef("p", "s0")]
    assert st.last_status == "failure" and "403 forbidden" in (st.last_error or "")
    assert [op for op, _ in faulty.calls if op == "open_writer"] == ["open_writer"]
    # Backs off instead of retrying in a tight loop, but not past the next slot.
    assert st.next_due is not None and NOW < st.next_due <= NOW + timedelta(minutes=1)
    await d.shutdown(1)


async def test_job_timeout_fails_the_job_and_commits_nothing(
    blob_strategy, tmp_path, keyring
) -> None:
    faulty = FaultyStorage(MemoryStorage("a"))
    faulty.add_latency(5.0, op="write")
    regions = {"a": faulty, "b": MemoryStorage("b")}
    cfg = make_config(tmp_path, daemon={"job_timeout": "1s"})
    d = make_daemon(cfg, keyring, regions, Clock())
    await d.load_state()
    d.run_once()
    await finish(d)
    st = d.sources[SourceRef("p", "s0")]
    assert st.last_status == "failure" and "timed out" in (st.last_error or "")
    assert await regions["b"].list() == [] and await faulty.inner.list() == []
    await d.shutdown(1)


async def test_history_survives_a_restart(blob_strategy, tmp_path, keyring) -> None:
    faulty = FaultyStorage(MemoryStorage("a"))
    faulty.fail("open_writer", PermanentStorageError("403 forbidden"))
    regions: dict[str, Storage] = {"a": faulty, "b": MemoryStorage("b")}
    cfg = make_config(tmp_path)
    d = make_daemon(cfg, keyring, regions, Clock())
    await d.load_state()
    d.run_once()
    await finish(d)
    await d.shutdown(1)

    again = make_daemon(cfg, keyring, regions, Clock())
    await again.load_state()
    st = again.sources[SourceRef("p", "s0")]
    assert st.last_status == "failure" and "403" in (st.last_error or "")
    text = generate_latest(again.metrics.registry).decode()
    assert 'drd_backup_last_status{plan="p",source="s0"} 0.0' in text
    await again.shutdown(1)


async def test_shutdown_cancels_a_job_past_the_grace_period(
    blob_strategy, tmp_path, keyring
) -> None:
    faulty = FaultyStorage(MemoryStorage("a"))
    faulty.add_latency(10.0, op="write")
    regions = {"a": faulty, "b": MemoryStorage("b")}
    d = make_daemon(make_config(tmp_path), keyring, regions, Clock())
    await d.load_state()
    d.run_once()
    await asyncio.sleep(0.05)
    await d.shutdown(0.1)
    assert await regions["b"].list() == [] and await faulty.inner.list() == []
    assert d.run_once() == []  # no scheduling after shutdown


async def test_serve_starts_every_loop_and_shutdown_closes_them(
    blob_strategy, tmp_path, keyring
) -> None:
    """Serving starts the loops (drd.daemon.lifecycle): retention sweeps at once, and the first
    backup wakes the restore-test loop, which tests the source right away (not at its next idle
    look a minute later). Shutdown closes every loop: no task of the daemon is left."""
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    d = make_daemon(make_config(tmp_path), keyring, regions, Clock())
    await d.load_state()
    stop = asyncio.Event()
    serving = asyncio.create_task(d.serve(stop))
    tests = d.restore_tests.sources[SourceRef("p", "s0")]
    async with asyncio.timeout(20):
        while tests.last_finished is None and tests.last_error is None:
            await asyncio.sleep(0.01)
    assert d.sources[SourceRef("p", "s0")].last_status == "success"
    assert tests.last_error is None and [r["result"] for r in tests.last] == ["passed"]
    assert list(d.retention.sweeps) == ["p"]
    stop.set()
    await asyncio.wait_for(serving, 5)
    await d.shutdown(1)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t.get_name() for t in others if not t.done()] == []


class FullDisk:
    """A job-history connection on a full disk: every statement fails as sqlite says it."""

    def __init__(self) -> None:
        self.full = True

    def execute(self, *args: Any) -> Any:
        import sqlite3

        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


async def test_a_full_state_dir_fails_the_job_once_and_backs_off(
    blob_strategy, tmp_path, keyring, caplog: pytest.LogCaptureFixture
) -> None:
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    clock = Clock()
    d = make_daemon(make_config(tmp_path), keyring, regions, clock)
    await d.load_state()
    real_db = d.history._db
    d.history._db = FullDisk()  # type: ignore[assignment]
    st = d.sources[SourceRef("p", "s0")]
    with caplog.at_level("INFO"):
        assert d.run_once() == [st.ref]
        await finish(d)
        # The job failed once and is not due again at once: no tight retry loop.
        assert d.run_once() == []
        assert d.run_once() == []
    assert st.last_status == "failure" and "database or disk is full" in (st.last_error or "")
    assert st.next_due is not None and st.next_due >= NOW + timedelta(seconds=30)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, [r.getMessage() for r in errors]  # the state line, the job line
    assert "state directory: cannot record a job in" in errors[0].getMessage()
    text = generate_latest(d.metrics.registry).decode()
    assert 'drd_backups_total{plan="p",result="failure",source="s0"} 1.0' in text
    assert "drd_state_writable 0.0" in text
    assert "drd_state_write_errors_total 1.0" in text
    assert d.state_problem and "database or disk is full" in d.state_problem
    # Space again: the next due job runs, records, and the daemon says so.
    d.history._db = real_db
    clock.now = st.next_due
    assert d.run_once() == [st.ref]
    await finish(d)
    assert st.last_status == "success" and d.state_problem is None
    assert "drd_state_writable 1.0" in generate_latest(d.metrics.registry).decode()
    await d.shutdown(1)


def test_starting_with_an_unwritable_state_dir_is_a_clear_error(
    blob_strategy: Any, tmp_path: Path, keyring: crypto.Keyring
) -> None:
    from drd.errors import StateError

    cfg = make_config(tmp_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    (cfg.state_dir / "history.sqlite3").mkdir()  # not a database: cannot be opened
    with pytest.raises(StateError, match="state directory: cannot open the job history") as e:
        Daemon(cfg, keyring, {}, metrics=Metrics())
    assert e.value.exit_code == 14
