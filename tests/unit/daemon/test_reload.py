"""Issue 17, must-hold 9: a config reload (SIGHUP) validates the new config first and either
takes effect (sources and plans scheduled and unscheduled, schedules moved, series added and
removed) or is refused, logged and changes nothing; STATUS= says what the daemon is doing, as
jobs start and finish, read from a socket the test makes. In-process, on in-memory regions,
with an injected clock; `drd run` itself gets SIGHUP in tests/integration/test_daemon_reload.py."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.sdnotify import Notifier
from drd.daemon.service import Daemon
from drd.daemon.status import Activity, Upcoming, coarse, status_line
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv

NOW = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
P0, P1 = SourceRef("p", "s0"), SourceRef("p", "s1")


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def blob(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "blob", "size": 20_000}


def environment(tmp_path: Path) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [blob("s0"), blob("s1")])
    env.write()
    return env


class NotifySocket:
    """The datagrams drd sends to $NOTIFY_SOCKET, as systemd would receive them."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.notifier = Notifier({"NOTIFY_SOCKET": str(path)})

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return out

    def statuses(self) -> list[str]:
        return [
            line[len("STATUS=") :]
            for message in self.messages()
            for line in message.split("\n")
            if line.startswith("STATUS=")
        ]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify")
    yield n
    n.sock.close()


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


async def started(
    env: DrdEnv, keyring: crypto.Keyring, notify: NotifySocket | None = None, **regions: Any
) -> Daemon:
    storages = regions or {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    d = Daemon(
        load_config(env.config_path),
        keyring,
        storages,
        metrics=Metrics(),
        clock=Clock(),
        notifier=notify.notifier if notify else None,
    )
    await d.load_state()
    return d


async def finish(d: Daemon) -> None:
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task is not None))


def series(d: Daemon) -> str:
    return generate_latest(d.metrics.registry).decode()


# ----------------------------------------------------------------------------- reload


async def test_a_good_change_takes_effect(blob_strategy: Any, tmp_path: Path, keyring) -> None:
    env = environment(tmp_path)
    d = await started(env, keyring)
    d.run_once()
    await finish(d)
    assert {st.next_due for st in d.sources.values()} == {NOW + timedelta(hours=3)}  # 4h slots
    assert 'source="s1"' in series(d)

    # s1 removed, s2 added, the schedule hourly, and a second plan.
    env.add_plan("p", [blob("s0"), blob("s2")], schedule={"every": "1h"})
    env.add_plan("q", [blob("db")])
    env.write()
    assert await d.reload() is True
    assert set(d.sources) == {P0, SourceRef("p", "s2"), SourceRef("q", "db")}
    assert set(d.restore_tests.sources) == set(d.sources)
    assert d.sources[P0].next_due == NOW + timedelta(hours=1)  # moved to the new schedule
    assert d.sources[SourceRef("p", "s2")].next_due == NOW  # never backed up: at once
    assert d.cfg.plan("p").schedule.every == timedelta(hours=1)
    assert d.services.cfg is d.cfg and d.retention.services.cfg is d.cfg
    text = series(d)
    assert 'source="s1"' not in text  # a removed source's series are gone
    assert 'drd_backups_total{plan="q",result="success",source="db"} 0.0' in text
    assert 'drd_plan_min_copies{plan="q"} 2.0' in text
    assert "drd_config_last_reload_successful 1.0" in text
    # The new sources are scheduled: their backups run.
    assert sorted(map(str, d.run_once())) == ["p/s2", "q/db"]
    await finish(d)
    assert d.sources[SourceRef("q", "db")].last_status == "success"
    await d.shutdown(1)


async def test_a_removed_plan_is_unscheduled_everywhere(
    blob_strategy: Any, tmp_path: Path, keyring
) -> None:
    env = environment(tmp_path)
    env.add_plan("q", [blob("db")])
    env.write()
    d = await started(env, keyring)
    await d.retention.run_once(force=True)
    assert set(d.retention.sweeps) == {"p", "q"}
    del env.plans["q"]
    (env.root / "plans" / "q.yaml").unlink()
    env.write()
    assert await d.reload() is True
    assert {ref.plan for ref in d.sources} == {"p"}
    assert {ref.plan for ref in d.restore_tests.sources} == {"p"}
    assert set(d.retention.sweeps) == {"p"} and "q" not in d.retention.due
    assert 'plan="q"' not in series(d)
    await d.retention.run_once(force=True)
    assert set(d.retention.sweeps) == {"p"}
    assert 'plan="q"' not in series(d)
    await d.shutdown(1)


@pytest.mark.parametrize(
    ("break_it", "says"),
    [
        (lambda env: env.plans["p"]["schedule"].update(every="often"), "every"),
        (lambda env: env.plans["p"]["storage"].update(regions=["a", "nowhere"]), "nowhere"),
        (lambda env: env.plans["p"].update(sources=[blob("s0"), blob("s0")]), "duplicate"),
        (lambda env: env.regions.pop(), "regions"),  # only a restart may change regions
        (lambda env: env.api.update(public_read=False), "api"),
    ],
    ids=["bad-duration", "unknown-region", "duplicate-source", "regions", "api"],
)
async def test_a_bad_change_is_refused_and_the_running_config_stays(
    blob_strategy: Any,
    tmp_path: Path,
    keyring,
    caplog: pytest.LogCaptureFixture,
    notify: NotifySocket,
    break_it: Any,
    says: str,
) -> None:
    env = environment(tmp_path)
    d = await started(env, keyring, notify)
    before, due = d.cfg, {ref: st.next_due for ref, st in d.sources.items()}
    break_it(env)
    env.write()
    with caplog.at_level("ERROR"):
        assert await d.reload() is False
    assert d.cfg is before and d.services.cfg is before
    assert {ref: st.next_due for ref, st in d.sources.items()} == due
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("reload refused, the running config stays")
    assert says in errors[0]
    assert "drd_config_last_reload_successful 0.0" in series(d)
    messages = notify.messages()
    assert messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert messages[-1].startswith("READY=1\nSTATUS=idle; backup p/s0 due now; reload refused: ")
    assert "; reload refused: " in messages[-1]
    # Still scheduling with the old config; a good reload clears the note.
    assert set(d.run_once()) == {P0, P1}
    await finish(d)
    env = environment(tmp_path)
    assert await d.reload() is True
    assert "reload refused" not in d.status_text()
    assert "drd_config_last_reload_successful 1.0" in series(d)
    await d.shutdown(1)


async def test_a_source_removed_mid_backup_finishes_and_leaves_no_series(
    blob_strategy: Any, tmp_path: Path, keyring
) -> None:
    env = environment(tmp_path)
    slow = FaultyStorage(MemoryStorage("a"))
    slow.add_latency(0.3, op="write")
    d = await started(env, keyring, a=slow, b=MemoryStorage("b"))
    d.run_once()
    running = d.sources[P1]
    await asyncio.sleep(0.05)
    assert running.running
    env.plans["p"]["sources"] = [blob("s0")]
    env.write()
    assert await d.reload() is True
    assert P1 not in d.sources
    assert "backup p/s1" in d.status_text()  # still shown while it runs
    assert running.task is not None
    await running.task
    await finish(d)
    assert running.last_status == "success"  # it was not cancelled
    assert 'source="s1"' not in series(d)
    assert "p/s1" not in d.status_text()
    await d.shutdown(1)


async def test_a_reload_while_stopping_does_nothing(
    blob_strategy: Any, tmp_path: Path, keyring
) -> None:
    env = environment(tmp_path)
    d = await started(env, keyring)
    await d.shutdown(1)
    env.add_plan("q", [blob("db")])
    env.write()
    assert await d.reload() is False
    assert {ref.plan for ref in d.sources} == {"p"}


async def test_a_plan_file_that_is_not_yaml_is_refused(
    blob_strategy: Any, tmp_path: Path, keyring, caplog: pytest.LogCaptureFixture
) -> None:
    env = environment(tmp_path)
    d = await started(env, keyring)
    (env.root / "plans" / "p.yaml").write_text("name: [unclosed\n")
    with caplog.at_level("ERROR"):
        assert await d.reload() is False
    assert "p.yaml" in caplog.records[-1].getMessage()
    assert set(d.sources) == {P0, P1}
    await d.shutdown(1)


# ----------------------------------------------------------------------------- STATUS=


async def test_status_follows_jobs_as_they_start_and_finish(
    blob_strategy: Any, tmp_path: Path, keyring, notify: NotifySocket
) -> None:
    env = environment(tmp_path)
    env.daemon = {"max_concurrent_jobs": 1}
    env.write()
    slow = FaultyStorage(MemoryStorage("a"))
    slow.add_latency(0.2, op="write")
    d = await started(env, keyring, notify, a=slow, b=MemoryStorage("b"))
    d.ready()
    assert notify.messages() == ["READY=1\nSTATUS=idle; backup p/s0 due now"]
    d.run_once()
    await asyncio.sleep(0.05)
    d.update_status()
    during = notify.statuses()
    assert during[-1] == "2 jobs running: backup p/s0 for 0s, backup p/s1 waiting for a slot"
    await finish(d)
    await asyncio.sleep(0)  # the status is sent once the tasks are done
    after = notify.statuses()
    # Both sources have a backup now: testable, the first at once.
    assert after[-1] == "idle; restore-test p/s0 due now, next backup in 3h (p/s0)"
    # Each change was sent once, in order, and nothing twice in a row.
    sent = during + after
    assert all(a != b for a, b in itertools.pairwise(sent))
    assert any(s.startswith("1 job running: backup p/s1") for s in sent)
    await d.shutdown(1)
    assert notify.messages()[-2:] == ["STATUS=stopping", "STOPPING=1"]


def test_status_line_wording() -> None:
    now = NOW
    assert status_line([], [], now) == "idle"
    assert (
        status_line(
            [
                Activity("backup", "billing/db", now - timedelta(minutes=3, seconds=10)),
                Activity("restore-test", "billing/files", now - timedelta(seconds=10)),
            ],
            [Upcoming("backup", "web/site", now + timedelta(minutes=3))],
            now,
        )
        == "2 jobs running: backup billing/db for 3m, restore-test billing/files for 10s; "
        "next backup in 3m (web/site)"
    )
    many = [Activity("backup", f"p/s{i}", now) for i in range(5)]
    assert status_line(many, [], now) == (
        "5 jobs running: backup p/s0 for 0s, backup p/s1 for 0s, backup p/s2 for 0s, 2 more"
    )
    assert status_line(many[:1], [], now, stopping=True) == (
        "stopping: 1 job finishing: backup p/s0 for 0s"
    )
    long_note = "reload refused: " + "x" * 500
    assert len(status_line([], [], now, note=long_note)) < 200
    assert [
        coarse(timedelta(seconds=s)) for s in (42, 185, 5400 + 59, 2 * 86400 + 4 * 3600 + 59)
    ] == [
        "42s",
        "3m",
        "1h30m",
        "2d4h",
    ]
