"""Issue 7, must-holds 1, 2 and 4: failover drills over real servers: a PostgreSQL source (the
local server, restored into an ephemeral server drd starts) and a files source, regions in two
fake-gcs-server processes.

1. a coordinator token starts a drill through the daemon's API: both sources restored and
   checked, RTO and RPO measured against the targets, scratch gone, report in every region;
2. `lose_region`: that region's server is stopped, the drill reads nothing from it (no storage
   operation at all is counted for it) and still passes;
3. (tests/unit/server/test_drill_api.py)
4. the newest backup's data flipped by one bit in every region: the drill fails with
   integrity_failed, after trying every region's copy, and the drill metrics say 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.metrics import Metrics
from drd.runtime import open_regions
from drd.server.auth import generate_token, token_hash
from drd.storage.base import Storage
from drd.verify.drill import MARKDOWN_OBJECT, REPORT_OBJECT, drill_prefix, open_report, run_drill
from tests.integration.test_daemon import (
    Daemon,
    daemon_factory,  # noqa: F401 - the fixture
    free_port,
    scrape,
    value,
    wait_for,
)
from tests.integration.test_restore_tests import (
    cleanup_scratch,  # noqa: F401 - the fixture
    make_source,
    postmasters_under,
    scratch_records,
)
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions, make_gcs_storage
from tests.support.pg import PgDatabaseFactory

pytestmark = pytest.mark.integration

TOKENS = {role: generate_token() for role in ("viewer", "coordinator")}
RTO_TARGET = 600.0
RPO_TARGET = 6 * 3600.0


def drill_env(
    tmp_path: Path,
    servers: list[FakeGcsServer],
    pg: PgDatabaseFactory,
    *,
    port: int | None = None,
) -> DrdEnv:
    source = make_source(pg, rows=5_000)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(20):
        (tree / "sub" / f"f{i}.txt").write_text(f"file {i}\n" * (i * 100 + 1))
    (tree / "config.json").write_text('{"answer": 42}')
    env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port or free_port()}")
    env.api = {
        "tokens": [
            {"name": f"{role}-bot", "role": role, "sha256": token_hash(tok)}
            for role, tok in TOKENS.items()
        ]
    }
    env.add_gcs_region("ew1", servers[0], "drd-ew1")
    env.add_gcs_region("uc1", servers[1], "drd-uc1")
    env.add_plan(
        "billing",
        # Plan order: the database first, then the files.
        [
            {"name": "db", "kind": "postgres", "dsn": source.dsn},
            {"name": "docs", "kind": "files", "path": str(tree)},
        ],
        targets={"rpo": "6h", "rto": "10m"},
        restore_test={
            "every": "24h",
            "checks": {
                "db": [{"sql": "SELECT count(*) FROM sales.orders", "expect": {"at_least": 1000}}],
                "docs": [{"file": {"path": "config.json", "size": 14}}],
            },
        },
    )
    env.write()
    env.ok("backup", "billing")
    return env


def region_storages(servers: list[FakeGcsServer]) -> dict[str, Storage]:
    return {
        "ew1": make_gcs_storage(servers[0], "ew1", "drd-ew1", create_bucket=False, prefix="drd"),
        "uc1": make_gcs_storage(servers[1], "uc1", "drd-uc1", create_bucket=False, prefix="drd"),
    }


def api(base: str, method: str, path: str, role: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_scratch_gone(env: DrdEnv, report: dict[str, Any]) -> None:
    assert scratch_records(env) == []
    for source in report["sources"]:
        resource = source["scratch"].get("resource")
        assert resource, source
        assert not Path(resource).exists(), resource
        assert postmasters_under(resource) == []


# --------------------------------------------------------------------------------------------
# 1


def test_coordinator_drill_through_the_api_restores_checks_and_measures(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
    cleanup_scratch: Callable[[DrdEnv], None],  # noqa: F811
) -> None:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    port = free_port()
    env = drill_env(tmp_path, servers, pg_database_factory, port=port)
    cleanup_scratch(env)
    d = daemon_factory(env, port)

    assert api(d.base, "POST", "/api/v1/drills", None, {"plan": "billing"})[0] == 401
    assert api(d.base, "POST", "/api/v1/drills", "viewer", {"plan": "billing"})[0] == 403
    status, started = api(d.base, "POST", "/api/v1/drills", "coordinator", {"plan": "billing"})
    assert status == 202, started
    drill_id = started["id"]

    def finished() -> dict[str, Any] | None:
        code, data = api(d.base, "GET", f"/api/v1/drills/{drill_id}", "viewer")
        assert code == 200, data
        return data if data["status"] != "running" else None

    report = wait_for(finished, 90, "the drill")
    assert report["status"] == "passed", json.dumps(report, indent=1) + d.output()
    assert report["reasons"] == []
    # Both sources, in plan order, restored from their newest backups and checked.
    assert [s["source"] for s in report["sources"]] == ["db", "docs"]
    for s in report["sources"]:
        assert s["result"] == "passed" and s["backup_id"], s
        assert s["region"] == "ew1"  # the first region of the plan with an intact copy
        assert s["checks"] and all(c["status"] == "passed" for c in s["checks"]), s["checks"]
        assert 0 < s["rpo_seconds"] < RPO_TARGET
        assert 0 < s["restore_rto_seconds"] <= s["ready_after_seconds"]
    db, docs = report["sources"]
    assert [c["name"] for c in db["checks"]][:3] == ["integrity", "row_counts", "schema"]
    assert db["scratch"]["kind"] == "ephemeral-postgres"
    assert "file_digests" in [c["name"] for c in docs["checks"]]
    assert "expected" not in json.dumps(db["checks"])  # no data values in a drill report
    # Sequential, in plan order: the files were ready after the database.
    assert docs["ready_after_seconds"] > db["ready_after_seconds"]
    # RTO: drill start to the last check passing; RPO: the oldest restored data.
    assert report["rto_seconds"] == pytest.approx(docs["ready_after_seconds"], abs=0.002)
    assert report["rpo_seconds"] == pytest.approx(max(db["rpo_seconds"], docs["rpo_seconds"]))
    assert report["rto_target_seconds"] == RTO_TARGET and report["rto_ok"] is True
    assert report["rpo_target_seconds"] == RPO_TARGET and report["rpo_ok"] is True
    assert report["regions_read"] == ["ew1", "uc1"] and report["lose_region"] is None
    assert_scratch_gone(env, report)

    # The report in every region: sealed JSON (verified with the key) and the Markdown.
    keyring = crypto.Keyring.parse(env.key, "test")
    assert sorted(report["stored_in"]) == ["ew1", "uc1"]

    async def stored() -> None:
        for name, storage in region_storages(servers).items():
            prefix = drill_prefix("billing", drill_id)
            raw = await storage.get(prefix + REPORT_OBJECT)
            body = open_report(keyring, raw, "billing", drill_id)
            assert body["status"] == "passed" and body["rto_seconds"] == report["rto_seconds"]
            md = (await storage.get(prefix + MARKDOWN_OBJECT)).decode()
            assert "plan billing: PASSED" in md and "| db | postgres | passed |" in md, name
            await storage.close()

    asyncio.run(stored())

    # Metrics, the listing, and the audit trail.
    samples = scrape(d.base)
    assert value(samples, "drd_drill_last_status", plan="billing") == 1
    assert value(samples, "drd_drill_rto_seconds", plan="billing") == pytest.approx(
        report["rto_seconds"], abs=0.002
    )
    assert value(samples, "drd_drill_rpo_seconds", plan="billing") == pytest.approx(
        report["rpo_seconds"], abs=0.002
    )
    assert value(samples, "drd_drill_last_timestamp_seconds", plan="billing") > time.time() - 300
    code, listing = api(d.base, "GET", "/api/v1/drills?plan=billing", "viewer")
    assert code == 200 and [x["id"] for x in listing["drills"]] == [drill_id]
    audit = [json.loads(x) for x in (env.root / "state" / "audit.jsonl").read_text().splitlines()]
    drill_events = [(a["action"], a["outcome"], a["token"]) for a in audit if a["event"] == "drill"]
    assert drill_events == [
        ("start", "started", "coordinator-bot"),
        ("finish", "passed", "coordinator-bot"),
    ]
    text = (env.root / "state" / "audit.jsonl").read_text()
    assert all(tok not in text for tok in TOKENS.values())
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.output()
    print(f"drill RTO {report['rto_seconds']:.2f}s, RPO {report['rpo_seconds']:.1f}s")
    for s in report["sources"]:
        print(f"  {s['source']}: ready after {s['ready_after_seconds']:.2f}s, phases {s['phases']}")


# --------------------------------------------------------------------------------------------
# 2


def operations(metrics: Metrics, region: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "drd_storage_operations_total" and sample.labels["region"] == region:
                total += sample.value
    return total


def test_drill_with_a_lost_region_reads_nothing_there_and_passes(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    cleanup_scratch: Callable[[DrdEnv], None],  # noqa: F811
) -> None:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    env = drill_env(tmp_path, servers, pg_database_factory)
    cleanup_scratch(env)
    servers[0].stop()  # the primary region is gone

    # Through the CLI: exit 0, the readable report.
    proc = env.run("drill", "billing", "--lose-region", "ew1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan billing: PASSED" in proc.stdout
    assert "region ew1 was treated as lost" in proc.stdout

    # In process, counting every storage operation per region.
    cfg = load_config(env.config_path)
    keyring = crypto.Keyring.parse(env.key, "test")
    metrics = Metrics()

    async def drill() -> Any:
        async with AsyncExitStack() as stack:
            regions = {r.name: r for r in await open_regions(stack, cfg, [], metrics=metrics)}
            return await run_drill(
                cfg.plan("billing"),
                regions,
                keyring,
                lose_region="ew1",
                state_dir=cfg.state_dir,
                base_dir=env.root,
                metrics=metrics,
            )

    report = asyncio.run(drill()).as_json()
    assert report["status"] == "passed", json.dumps(report, indent=1)
    assert report["lose_region"] == "ew1"
    assert report["regions_read"] == ["uc1"] and report["data_read_from"] == ["uc1"]
    assert report["stored_in"] == ["uc1"]
    assert all(s["region"] == "uc1" and s["result"] == "passed" for s in report["sources"])
    assert operations(metrics, "ew1") == 0  # not listed, not read, not written
    assert operations(metrics, "uc1") > 0
    assert report["rto_ok"] and report["rpo_ok"]
    assert_scratch_gone(env, report)


# --------------------------------------------------------------------------------------------
# 4


def test_drill_of_a_corrupted_backup_fails_with_the_reason(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    cleanup_scratch: Callable[[DrdEnv], None],  # noqa: F811
) -> None:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    env = drill_env(tmp_path, servers, pg_database_factory)
    cleanup_scratch(env)

    async def flip_one_bit() -> None:
        for storage in region_storages(servers).values():
            (data,) = [
                o.key for o in await storage.list("billing/db/") if o.key.endswith("data.drd")
            ]
            raw = bytearray(await storage.get(data))
            raw[len(raw) // 2] ^= 0x01
            await storage.put(data, bytes(raw))
            await storage.close()

    asyncio.run(flip_one_bit())

    proc = env.run("drill", "billing", "--json")
    assert proc.returncode == 12, proc.stdout + proc.stderr
    cli_report = json.loads(proc.stdout)
    assert cli_report["status"] == "failed"

    cfg = load_config(env.config_path)
    keyring = crypto.Keyring.parse(env.key, "test")
    metrics = Metrics()

    async def drill() -> Any:
        async with AsyncExitStack() as stack:
            regions = {r.name: r for r in await open_regions(stack, cfg, [])}
            return await run_drill(
                cfg.plan("billing"),
                regions,
                keyring,
                state_dir=cfg.state_dir,
                base_dir=env.root,
                metrics=metrics,
            )

    report = asyncio.run(drill()).as_json()
    for r in (report, cli_report):
        assert r["status"] == "failed"
        assert [(x["code"], x.get("source")) for x in r["reasons"]] == [("integrity_failed", "db")]
        assert "authentication" in r["reasons"][0]["message"]
        db, docs = r["sources"]
        # Every region's copy was tried before giving up.
        assert [(a["region"], a["failure_category"]) for a in db["attempts"]] == [
            ("ew1", "integrity_failed"),
            ("uc1", "integrity_failed"),
        ]
        assert docs["result"] == "passed"  # the other source still restores
        assert r["rto_seconds"] is None and r["rto_ok"] is False  # never back: not measured
        assert_scratch_gone(env, r)
    assert metrics.registry.get_sample_value("drd_drill_last_status", {"plan": "billing"}) == 0
    assert metrics.registry.get_sample_value(
        "drd_drill_last_timestamp_seconds", {"plan": "billing"}
    )
    assert metrics.registry.get_sample_value("drd_drill_rto_seconds", {"plan": "billing"}) is None
