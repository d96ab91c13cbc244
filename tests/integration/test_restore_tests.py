"""Issue 4, must-holds 1-5: restore tests against real PostgreSQL servers (the local one, and
ephemeral ones drd starts), through the real CLI and the real daemon, with regions in two
fake-gcs-server processes or local directories.

1. a rich database restored into an ephemeral server and into a scratch database on the local
   server: every check passes, the scratch server/database is gone afterwards, the RTO metric
   and the report carry the measured phases;
2. a corrupted stored object: integrity_failed, drd_restore_test_last_status 0, and the
   DrdRestoreTestFailed alert fires on that very sample (promtool);
3. a declarative check that does not hold: check_failed with query, expected and actual;
4. SIGKILL of the daemon mid-test: the next start removes the leftover server, database and
   directory;
5. a test past its timeout is stopped, cleaned up and reported as timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drd.verify.scratch.registry import DB_PREFIX, sweep_leftovers
from tests.integration.test_daemon import (
    Daemon,
    daemon_factory,  # noqa: F401 - the fixture
    free_port,
    http_get,
    scrape,
    value,
    wait_for,
)
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import (
    ADMIN_DSN,
    PgDatabaseFactory,
    database_exists,
    databases_like,
    populate_rich_database,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRATCH_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PHASES = ("fetch", "decrypt_decompress", "restore", "checks")

# Rows written "now", so that a freshness check has something recent to judge.
_RECENT = """
CREATE SCHEMA app;
CREATE TABLE app.events (id bigserial PRIMARY KEY, kind text NOT NULL,
                         created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO app.events (kind) SELECT 'kind-' || (g % 7) FROM generate_series(1, 5000) g;
"""


def make_source(factory: PgDatabaseFactory, rows: int = 20_000) -> Any:
    source = factory("drdrtsrc")
    populate_rich_database(source.dsn, rows=rows)
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute(_RECENT.encode())
    return source


def postmasters_under(root: str) -> list[int]:
    """Pids of processes whose command line mentions `root` (a server's data directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if root.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def scratch_records(env: DrdEnv) -> list[dict[str, Any]]:
    directory = env.root / "state" / "scratch"
    if not directory.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@pytest.fixture
def cleanup_scratch() -> Iterator[Callable[[DrdEnv], None]]:
    """Whatever a failing test leaves (servers, databases, directories) is swept at the end."""
    envs: list[DrdEnv] = []
    yield envs.append
    import asyncio

    for env in envs:
        asyncio.run(sweep_leftovers(env.root / "state", [SCRATCH_SERVER]))


def rt_plan(env: DrdEnv, name: str, sources: list[dict[str, Any]], **restore_test: Any) -> None:
    env.add_plan(
        name,
        sources,
        targets={"rpo": "6h", "rto": "10m"},
        restore_test={"every": "1h", **restore_test},
    )


# --------------------------------------------------------------------------------------------
# 1


def test_restore_tests_pass_in_ephemeral_server_and_scratch_database(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
    cleanup_scratch: Callable[[DrdEnv], None],
) -> None:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    source = make_source(pg_database_factory)
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    cleanup_scratch(env)
    env.add_gcs_region("ew1", servers[0], "drd-ew1")
    env.add_gcs_region("uc1", servers[1], "drd-uc1")
    checks = [
        {"sql": "SELECT count(*) FROM sales.orders", "expect": {"at_least": 1000}},
        {
            "name": "order-total",
            "sql": "SELECT sum(amount), count(DISTINCT customer_id) FROM sales.orders",
            "expect": {"matches_source": True},
        },
        {"sql": "SELECT 1 FROM app.events WHERE kind = 'kind-3'", "expect": {"non_empty": True}},
        {"freshness": {"table": "app.events", "column": "created_at", "within": "1h"}},
        {
            "name": "psql-sees-copy",
            "command": 'test "$(psql -Atc "SELECT count(*) FROM app.events")" = 5000',
        },
    ]
    rt_plan(
        env,
        "billing",
        [
            {"name": "db", "kind": "postgres", "dsn": source.dsn},
            {"name": "db-server", "kind": "postgres", "dsn": source.dsn},
        ],
        scratch={"db-server": {"kind": "postgres-server", "dsn": SCRATCH_SERVER}},
        checks={"db": checks, "db-server": checks[:2]},
    )
    env.write()
    d = daemon_factory(env, port)

    def tested(src: str) -> float:
        labels = {"plan": "billing", "source": src}
        samples = scrape(d.base)
        ok = value(samples, "drd_restore_tests_total", result="success", **labels) or 0
        bad = value(samples, "drd_restore_tests_total", result="failure", **labels) or 0
        assert bad == 0, d.output()
        return ok

    wait_for(lambda: tested("db") >= 1 and tested("db-server") >= 1, 60, "two restore tests")
    samples = scrape(d.base)
    status = json.loads(http_get(d.base + "/api/v1/status")[1])["plans"]["billing"]["sources"]
    for src in ("db", "db-server"):
        labels = {"plan": "billing", "source": src}
        assert value(samples, "drd_restore_test_last_status", **labels) == 1
        assert value(samples, "drd_restore_test_last_success_timestamp_seconds", **labels) > 0
        phases = {
            p: value(samples, "drd_restore_test_phase_seconds", phase=p, **labels) for p in PHASES
        }
        assert all(v is not None and v >= 0 for v in phases.values()), phases
        assert phases["restore"] > 0 and phases["checks"] > 0
        rto = value(samples, "drd_rto_seconds", **labels)
        assert rto == pytest.approx(sum(phases.values()), abs=0.01)
        assert 0 < rto < value(samples, "drd_rto_target_seconds", **labels)
        last = status[src]["last_restore_test"]
        assert last["result"] == "passed" and last["failed_checks"] == []
        assert last["region"] in ("ew1", "uc1")
        assert status[src]["rto_seconds"] == pytest.approx(rto, abs=0.01)
        assert status[src]["rto_ok"] is True

    # The reports, stored next to the backups in both regions, as `drd list` shows them.
    listing = json.loads(env.ok("list", "billing", "--json").stdout)["backups"]
    assert {b["source"]: b["last_restore_test"]["result"] for b in listing} == {
        "db": "passed",
        "db-server": "passed",
    }
    text = env.ok("list", "billing").stdout
    assert text.count("TESTED passed") == 2

    # The same through the CLI, reading the other region's copy in turn, with every check.
    proc = env.ok("restore-test", "billing", "--json")
    reports = {r["source"]: r for r in json.loads(proc.stdout)["reports"]}
    for src, report in reports.items():
        assert report["result"] == "passed", report
        assert report["region"] != status[src]["last_restore_test"]["region"]  # rotation
        assert sorted(report["stored_in"]) == ["ew1", "uc1"]
        assert report["rto_seconds"] == pytest.approx(
            sum(report["phases"][p] for p in PHASES), abs=0.005
        )
        names = [c["name"] for c in report["checks"]]
        assert names[:3] == ["integrity", "row_counts", "schema"]
        # On the shared scratch server owners and grants are dropped on purpose: not compared.
        unchecked = {"grants"} if src == "db-server" else set()
        assert all(
            c["status"] == ("skipped" if c["name"] in unchecked else "passed")
            for c in report["checks"]
        ), report["checks"]
        assert report["bytes"]["fetched"] > 0 and report["bytes"]["restored"] > 1 << 20
    db = reports["db"]
    # integrity and the built-ins (row counts, schema, sequences, inventory, large objects,
    # grants, database, content), then the plan's five
    assert len(db["checks"]) == 9 + 5
    assert db["scratch"]["kind"] == "ephemeral-postgres"
    assert db["restore"]["owners"] == "kept"  # an ephemeral server gets the roles created
    total = next(c for c in db["checks"] if c["name"] == "order-total")
    assert total["expected"] == total["actual"] and isinstance(total["actual"], list)
    rows = next(c for c in db["checks"] if c["name"] == "row_counts")
    assert "7 tables" in rows["actual"]
    server = reports["db-server"]
    assert server["scratch"]["kind"] == "postgres-server"
    assert server["scratch"]["resource"].startswith(DB_PREFIX)

    # Nothing is left: no scratch database, no ephemeral server or its directory, no record.
    assert not database_exists(server["scratch"]["resource"])
    root = db["scratch"]["resource"]
    assert not Path(root).exists() and postmasters_under(root) == []
    assert scratch_records(env) == []
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.output()


# --------------------------------------------------------------------------------------------
# 2


def _corrupt_data_objects(regions_root: Path) -> int:
    count = 0
    for data in regions_root.rglob("data.drd"):
        with open(data, "r+b") as f:
            f.seek(data.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
        count += 1
    return count


def test_corrupted_backup_fails_as_integrity_failed_and_the_alert_fires(
    tmp_path: Path,
    pg_database_factory: PgDatabaseFactory,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
    cleanup_scratch: Callable[[DrdEnv], None],
) -> None:
    source = make_source(pg_database_factory, rows=5_000)
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    cleanup_scratch(env)
    env.add_local_region("a")
    env.add_local_region("b")
    rt_plan(env, "billing", [{"name": "db", "kind": "postgres", "dsn": source.dsn}])
    env.write()
    env.ok("backup", "billing/db")
    assert _corrupt_data_objects(tmp_path / "regions") == 2  # one bit, in both regions' copies

    proc = env.run("restore-test", "billing/db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "failed"
    assert report["failure_category"] == "integrity_failed"
    assert "authentication" in report["failure_message"]
    integrity = next(c for c in report["checks"] if c["name"] == "integrity")
    assert integrity["status"] == "failed"
    assert scratch_records(env) == [] and postmasters_under(report["scratch"]["resource"]) == []

    # The daemon tests the same backup at start and says so in its metrics.
    d = daemon_factory(env, port)
    labels = {"plan": "billing", "source": "db"}

    def failures() -> float:
        samples = scrape(d.base)
        return value(samples, "drd_restore_tests_total", result="failure", **labels) or 0

    wait_for(lambda: failures() >= 1, 30, "the daemon's restore test")
    samples = scrape(d.base)
    status = value(samples, "drd_restore_test_last_status", **labels)
    assert status == 0
    assert (
        value(samples, "drd_restore_test_failures_total", reason="integrity_failed", **labels) == 1
    )
    assert value(samples, "drd_restore_test_failures_total", reason="timeout", **labels) == 0
    assert value(samples, "drd_rto_seconds", **labels) is None  # only passing tests set it
    listing = json.loads(env.ok("list", "--json").stdout)["backups"]
    assert listing[0]["last_restore_test"]["failure_category"] == "integrity_failed"
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.output()

    # The exported sample, fed to Prometheus' rule tester with the real alert rules.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run monitoring/ensure-promtool.sh"
    series = (
        'drd_restore_test_last_status{job="drd",instance="drd-1:9187",plan="billing",source="db"}'
    )
    rules_test = {
        "rule_files": [str(REPO / "monitoring" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": f"{status:g}x10"}],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "DrdRestoreTestFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "drd",
                                    "instance": "drd-1:9187",
                                    "plan": "billing",
                                    "source": "db",
                                },
                                "exp_annotations": {
                                    "summary": "Restore test of billing/db failed",
                                    "description": (
                                        "The last restore test of billing/db failed: the newest "
                                        "backup could not be fetched, decrypted, restored or did "
                                        "not pass its checks. Until a test passes, assume this "
                                        "source cannot be restored."
                                    ),
                                    # the base is one setting (monitoring/render.py)
                                    "runbook_url": "${RUNBOOK_URL}#drdrestoretestfailed",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "restore_test_alert_test.yml"
    test_file.write_text(json.dumps(rules_test))
    run = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------------------------------
# 3


def test_a_check_that_does_not_hold_fails_with_query_expected_and_actual(
    tmp_path: Path,
    pg_database_factory: PgDatabaseFactory,
    cleanup_scratch: Callable[[DrdEnv], None],
) -> None:
    source = make_source(pg_database_factory, rows=2_000)
    env = DrdEnv(tmp_path)
    cleanup_scratch(env)
    env.add_local_region("a")
    env.add_local_region("b")
    query = "SELECT count(*) FROM app.events WHERE kind = 'kind-1'"
    rt_plan(
        env,
        "billing",
        [{"name": "db", "kind": "postgres", "dsn": source.dsn}],
        scratch={"db": {"kind": "postgres-server", "dsn": SCRATCH_SERVER}},
        checks={
            "db": [
                {"name": "kind-1-events", "sql": query, "expect": {"equals": 1234}},
                {"sql": "SELECT count(*) FROM app.events", "expect": {"at_most": 10}},
                {"sql": "SELECT 1", "expect": {"equals": 2}, "critical": False},
            ]
        },
    )
    env.write()
    env.ok("backup", "billing/db")
    proc = env.run("restore-test", "billing/db", "--json")
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["failure_category"] == "check_failed"
    assert "kind-1-events" in report["failure_message"] and query in report["failure_message"]
    checks = {c["name"]: c for c in report["checks"]}
    failed = checks["kind-1-events"]
    assert failed["status"] == "failed" and failed["critical"]
    assert failed["query"] == query
    assert failed["expected"] == 1234
    assert failed["actual"] == 715  # g % 7 = 1 for 715 of g in 1..5000
    assert checks["sql-2"]["expected"] == "<= 10" and checks["sql-2"]["actual"] == 5000
    assert checks["sql-3"]["status"] == "failed" and not checks["sql-3"]["critical"]
    assert checks["row_counts"]["status"] == "passed"  # the data itself is fine
    # The human output says the same.
    text = env.run("restore-test", "billing/db").stdout
    assert "FAILED kind-1-events" in text and "expected 1234, got 715" in text
    assert "WARNING sql-3" in text
    assert not database_exists(report["scratch"]["resource"])
    assert scratch_records(env) == []


# --------------------------------------------------------------------------------------------
# 4


def _sleeper(marker: Path) -> str:
    """A command check that says it is running (its pid in `marker`) and then takes a while."""
    return f"echo $$ > {marker}.tmp && mv {marker}.tmp {marker} && exec sleep 120"


def test_sigkill_mid_test_leftovers_are_removed_at_the_next_start(
    tmp_path: Path,
    pg_database_factory: PgDatabaseFactory,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
    cleanup_scratch: Callable[[DrdEnv], None],
) -> None:
    source = make_source(pg_database_factory, rows=2_000)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file.txt").write_text("payload\n")
    markers = {name: tmp_path / f"{name}.pid" for name in ("eph", "srv", "files")}
    port = free_port()
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
    cleanup_scratch(env)
    env.add_local_region("a")
    env.add_local_region("b")
    env.daemon = {"max_concurrent_jobs": 6, "shutdown_grace": "1s"}
    rt_plan(
        env,
        "app",
        [
            {"name": "eph", "kind": "postgres", "dsn": source.dsn},
            {"name": "srv", "kind": "postgres", "dsn": source.dsn},
            {"name": "files", "kind": "files", "path": str(tree)},
        ],
        scratch={"srv": {"kind": "postgres-server", "dsn": SCRATCH_SERVER}},
        checks={name: [{"command": _sleeper(marker)}] for name, marker in markers.items()},
    )
    env.write()
    d = daemon_factory(env, port)
    wait_for(lambda: all(m.exists() for m in markers.values()), 60, "three tests mid-check")
    records = {r["kind"]: r for r in scratch_records(env)}
    assert set(records) == {"ephemeral-postgres", "postgres-server", "tempdir"}
    root = records["ephemeral-postgres"]["root"]
    database = records["postgres-server"]["database"]
    directory = records["tempdir"]["path"]
    assert postmasters_under(root) and database_exists(database) and Path(directory).is_dir()

    d.proc.kill()  # SIGKILL: no teardown runs
    d.proc.wait(10)
    for marker in markers.values():  # the checks' sleeps outlive drd; end them
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(marker.read_text()), signal.SIGKILL)
    time.sleep(0.5)
    assert postmasters_under(root), "the ephemeral server should have outlived the daemon"
    assert database_exists(database) and Path(directory).is_dir()

    d2 = daemon_factory(env, port)  # the sweep runs before the API answers
    assert postmasters_under(root) == [], d2.output()
    assert not Path(root).exists()
    assert not database_exists(database)
    assert databases_like(database.replace("_", "\\_") + "%") == []  # its staging copy too
    assert not Path(directory).exists()
    assert scratch_records(env) == []
    assert "removed the leftover" in d2.output()
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(30) == 0, d2.output()


# --------------------------------------------------------------------------------------------
# 5


def test_a_test_past_its_timeout_is_stopped_cleaned_up_and_reported(
    tmp_path: Path,
    pg_database_factory: PgDatabaseFactory,
    cleanup_scratch: Callable[[DrdEnv], None],
) -> None:
    source = make_source(pg_database_factory, rows=2_000)
    marker = tmp_path / "check.pid"
    env = DrdEnv(tmp_path)
    cleanup_scratch(env)
    env.add_local_region("a")
    env.add_local_region("b")
    rt_plan(
        env,
        "billing",
        [{"name": "db", "kind": "postgres", "dsn": source.dsn}],
        # Long enough for the scratch server and the restore to be done on a slow machine, so
        # that the timeout strikes in the (endless) check.
        timeout="30s",
        checks={"db": [{"command": _sleeper(marker), "timeout": "5m"}]},
    )
    env.write()
    env.ok("backup", "billing/db")
    started = time.monotonic()
    proc = env.run("restore-test", "billing/db", "--json")
    elapsed = time.monotonic() - started
    assert proc.returncode == 11, proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["failure_category"] == "timeout"
    assert "30s" in report["failure_message"]
    assert marker.exists(), "the timeout struck before the check started"
    assert elapsed < 30 + 60
    assert report["phases"]["teardown"] > 0
    root = report["scratch"]["resource"]
    assert not Path(root).exists() and postmasters_under(root) == []
    assert scratch_records(env) == []
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    listing = json.loads(env.ok("list", "--json").stdout)["backups"]
    assert listing[0]["last_restore_test"]["failure_category"] == "timeout"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sweep_drops_the_staging_copy_of_a_restore_killed_mid_way(tmp_path: Path) -> None:
    """Killed during pg_restore, a test leaves the restore's staging database, not (yet) the
    scratch database itself: the sweep drops both, and nothing that is not drd's."""
    import asyncio

    from drd.verify.scratch.postgres_server import public_dsn
    from drd.verify.scratch.registry import new_id, register
    from tests.support.pg import create_database, drop_database

    resource_id = new_id()
    name = f"{DB_PREFIX}{resource_id}"
    staging = f"{name}_drd_restoring_0a1b2c3d"
    bystander = f"{name}x_not_ours"  # shares the prefix, but is not this resource's
    for db in (staging, bystander):
        create_database(db)
    try:
        state = tmp_path / "state"
        register(
            state, resource_id, "postgres-server", dsn=public_dsn(SCRATCH_SERVER), database=name
        ).abandon()  # as if its owner had died
        removed = asyncio.run(sweep_leftovers(state, [SCRATCH_SERVER]))
        assert removed == [f"scratch database {name} ({public_dsn(SCRATCH_SERVER)})"]
        assert not database_exists(staging) and not database_exists(name)
        assert database_exists(bystander)
    finally:
        for db in (staging, bystander):
            drop_database(db)
