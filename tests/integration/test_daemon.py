"""Issue 3, must-holds 1 and 2: `drd run` as a real process against real PostgreSQL and two
fake-gcs-server regions: backups on schedule, metrics moving, readiness following the regions,
and SIGTERM mid-backup leaving no partial backup."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import drd
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.pg import PgDatabaseFactory, populate_rich_database

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http_get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, env: DrdEnv, port: int) -> None:
        self.env = env
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(env.root / "daemon.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            env.command("run"), env=env.env(), cwd=env.root, stdout=self.log, stderr=self.log
        )
        wait_for(self._up, 30, "the daemon's HTTP endpoint")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return http_get(self.base + "/healthz")[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        return (self.env.root / "daemon.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[[DrdEnv, int], Daemon]]:
    started: list[Daemon] = []

    def start(env: DrdEnv, port: int) -> Daemon:
        d = Daemon(env, port)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_daemon_backs_up_on_schedule_and_exports_metrics(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    daemon_factory: Callable[[DrdEnv, int], Daemon],
) -> None:
    servers: list[FakeGcsServer] = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    source = pg_database_factory("drdsrc")
    populate_rich_database(source.dsn, rows=3_000)
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    env.add_gcs_region("ew1", servers[0], "drd-ew1")
    env.add_gcs_region("uc1", servers[1], "drd-uc1")
    env.add_plan(
        "billing",
        [{"name": "db", "kind": "postgres", "dsn": source.dsn}],
        targets={"rpo": "30s", "rto": "5m"},
        schedule={"every": "3s"},
    )
    # A backup may be running (against the stopped region) at SIGTERM: a short grace keeps
    # the exit well inside the wait below even on a slow machine.
    env.daemon = {"shutdown_grace": "5s", "region_probe": {"every": "2s", "timeout": "2s"}}
    env.write()
    d = daemon_factory(env, port)
    labels = {"plan": "billing", "source": "db"}

    def successes() -> float:
        return value(scrape(d.base), "drd_backups_total", result="success", **labels) or 0

    wait_for(lambda: successes() >= 2, 40, "two scheduled backups")
    samples = scrape(d.base)
    assert value(samples, "drd_backup_last_status", **labels) == 1
    for region in ("ew1", "uc1"):
        assert value(samples, "drd_backup_copies", region=region, **labels) == 1
    rpo = value(samples, "drd_rpo_seconds", **labels)
    assert rpo is not None and 0 <= rpo < 10
    assert value(samples, "drd_rpo_target_seconds", **labels) == 30
    assert value(samples, "drd_backup_size_bytes", **labels) > 0
    assert value(samples, "drd_backup_source_bytes", **labels) > 0
    assert value(samples, "drd_build_info", version=drd.__version__) == 1
    assert (
        value(
            samples, "drd_storage_operations_total", region="ew1", operation="put", result="success"
        )
        >= 2
    )

    # RPO is the age of the newest backup: it falls when the next one lands.
    def captured_at() -> datetime:
        body = json.loads(http_get(d.base + "/api/v1/status")[1])
        stamp = body["plans"]["billing"]["sources"]["db"]["last_backup"]["captured_at"]
        return datetime.fromisoformat(stamp)

    first = captured_at()
    wait_for(lambda: captured_at() > first, 20, "the next backup")
    second = captured_at()
    rpo = value(scrape(d.base), "drd_rpo_seconds", **labels)
    age_first = (datetime.now(UTC) - first).total_seconds()
    age_second = (datetime.now(UTC) - second).total_seconds()
    assert rpo is not None
    assert abs(rpo - age_second) < 1.0, (rpo, age_second)
    assert rpo < age_first - 0.5, (rpo, age_first)

    # The real scrape passes Prometheus' own linter.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run monitoring/ensure-promtool.sh"
    text = http_get(d.base + "/metrics")[1]
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    status, body = http_get(d.base + "/api/v1/status")
    assert status == 200
    src = json.loads(body)["plans"]["billing"]["sources"]["db"]
    assert src["copies"] == {"ew1": True, "uc1": True} and src["rpo_ok"]

    assert http_get(d.base + "/readyz")[0] == 200
    servers[1].stop()
    # /readyz answers from what the last operation or the probe (every 2 s) found.
    wait_for(lambda: http_get(d.base + "/readyz")[0] == 503, 30, "/readyz to see uc1 down")
    status, body = http_get(d.base + "/readyz")
    assert status == 503
    assert "uc1" in json.loads(body)["reason"]
    assert json.loads(body)["checks"]["regions"]["ew1"] == "ok"
    samples = scrape(d.base)
    assert value(samples, "drd_region_up", region="uc1") == 0
    assert value(samples, "drd_region_up", region="ew1") == 1

    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0, d.output()


def test_sigterm_mid_backup_exits_within_grace_and_leaves_no_partial_backup(
    tmp_path: Path,
    daemon_factory: Callable[[DrdEnv, int], Daemon],
    pg_database_factory: PgDatabaseFactory,
) -> None:
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    env.add_local_region("a")
    env.add_local_region("b")
    source = pg_database_factory("drdsrc")
    # The backup is mid-way for as long as the test wants, on any machine: the regions' objects
    # are open (before the dump starts) and pg_dump waits for the lock this test holds.
    holder = psycopg.connect(source.dsn)
    holder.execute("CREATE TABLE held (id int)")
    holder.commit()
    holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
    env.add_plan("app", [{"name": "db", "kind": "postgres", "dsn": source.dsn}])
    env.daemon = {"shutdown_grace": "1s"}
    env.write()
    d = daemon_factory(env, port)

    def partial() -> bool:
        return any(".drd-partial" in p.name for p in (tmp_path / "regions").rglob("*"))

    try:
        wait_for(partial, 30, "the backup to start")
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0, d.output()
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert "cancelling" in d.output()
    listing = json.loads(env.ok("list", "--json").stdout)
    assert listing["backups"] == []
    assert not partial()
    manifests = list((tmp_path / "regions").rglob("manifest.json"))
    assert manifests == []
