"""Issue 7, must-hold 3 and the drill machinery on in-memory regions: who may start, read and
cancel drills (401/403), request validation (400 naming the field, 404, 413), the audit trail
(token name, role, request, outcome; never the token), one drill per plan, cancellation with
scratch clean-up, reports read back after a restart, and retention/catalog leaving `_drills/`
alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from drd.daemon.drill_loop import DrillManager
from drd.daemon.service import Daemon
from drd.metrics import Metrics
from drd.pipeline.source_backup import backup_source
from drd.repository.catalog import build_catalog
from drd.retention.sweep import sweep
from drd.verify.drill import REPORT_OBJECT, drill_prefix, open_report, render_markdown
from tests.support.audit import open_audit_object
from tests.support.blob_strategy import BlobStrategy
from tests.unit.server.test_api import TOKENS, bearer, client  # noqa: F401 - the fixture

Client = TestClient[Any, Any]


def daemon_of(c: Client) -> Daemon:
    d: Daemon = c.app_daemon  # type: ignore[attr-defined]
    return d


async def backed_up(c: Client) -> None:
    d = daemon_of(c)
    plan = d.cfg.plan("p")
    await backup_source(plan, plan.sources[0], d.regions, d.keyring, d.cfg.state_dir)


async def wait_done(c: Client, drill_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await c.get(f"/api/v1/drills/{drill_id}", headers=bearer("viewer"))
        assert r.status == 200
        data: dict[str, Any] = await r.json()
        if data["status"] != "running":
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"drill {drill_id} still running")


def audit_records(c: Client) -> list[dict[str, Any]]:
    path = c.state_dir / "audit.jsonl"  # type: ignore[attr-defined]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
async def slow_restore(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncio.Event]:
    """Restores that hang until the drill is cancelled; the event says one has begun."""
    began = asyncio.Event()
    original = BlobStrategy.restore

    async def restore(cls: Any, chunks: Any, target: str, metadata: Any) -> Any:
        began.set()
        await asyncio.sleep(60)
        return await original(chunks, target, metadata)

    monkeypatch.setattr(BlobStrategy, "restore", classmethod(restore))
    yield began


# ------------------------------------------------------------------------------- access


async def test_drills_need_a_token_and_the_coordinator_role(client: Client) -> None:  # noqa: F811
    await backed_up(client)
    body = {"plan": "p"}
    r = await client.post("/api/v1/drills", json=body)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/api/v1/drills")).status == 401
    for role in ("viewer", "operator"):
        r = await client.post("/api/v1/drills", json=body, headers=bearer(role))
        assert r.status == 403, role
        assert "coordinator" in (await r.json())["error"]["message"]
    r = await client.post("/api/v1/drills", json=body, headers=bearer("coordinator"))
    assert r.status == 202
    started = await r.json()
    assert r.headers["Location"] == f"/api/v1/drills/{started['id']}"
    report = await wait_done(client, started["id"])
    assert report["status"] == "passed", report
    # Viewers read drills, but may not cancel them.
    r = await client.get("/api/v1/drills?plan=p", headers=bearer("viewer"))
    assert [d["id"] for d in (await r.json())["drills"]] == [started["id"]]
    r = await client.post(f"/api/v1/drills/{started['id']}/cancel", headers=bearer("viewer"))
    assert r.status == 403
    spec = await (await client.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/drills", "/api/v1/drills/{drill_id}", "/api/v1/drills/{drill_id}/cancel"):
        assert path in spec["paths"], path
    assert spec["components"]["schemas"]["DrillRequest"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("body", "status", "needle", "field"),
    [
        ({"plan": "nope"}, 404, "no plan 'nope'", None),
        ({"plan": "../etc"}, 400, "plan: String should match pattern", "plan"),
        ({}, 400, "plan: Field required", "plan"),
        ({"plan": "p", "lose_region": "zz"}, 400, "lose_region: plan p has no region 'zz'", None),
        ({"plan": "p", "lose_region": "a/../b"}, 400, "lose_region", "lose_region"),
        ({"plan": "p", "lose_regoin": "a"}, 400, "lose_regoin: Extra inputs", "lose_regoin"),
        ({"plan": 7}, 400, "plan: Input should be a valid string", "plan"),
        ("not json", 400, "not JSON", None),
    ],
)
async def test_bad_drill_requests_get_clear_4xx(
    client: Client,  # noqa: F811
    body: Any,
    status: int,
    needle: str,
    field: str | None,
) -> None:
    if isinstance(body, str):
        r = await client.post("/api/v1/drills", data=body, headers=bearer("coordinator"))
    else:
        r = await client.post("/api/v1/drills", json=body, headers=bearer("coordinator"))
    assert r.status == status
    err = (await r.json())["error"]
    assert needle in err["message"]
    if field is not None:
        assert err["field"] == field
    assert not daemon_of(client).drills.runs  # nothing started


async def test_bad_paths_and_queries_and_oversize(client: Client) -> None:  # noqa: F811
    h = bearer("coordinator")
    r = await client.get("/api/v1/drills/..%2F..%2Fetc", headers=h)
    assert r.status in (400, 404)
    r = await client.get("/api/v1/drills/not-a-drill", headers=h)
    assert r.status == 400 and (await r.json())["error"]["field"] == "id"
    r = await client.get("/api/v1/drills/20260101T000000Z-00000000", headers=h)
    assert r.status == 404 and "no drill" in (await r.json())["error"]["message"]
    r = await client.get("/api/v1/drills?plan=nope", headers=h)
    assert r.status == 404
    r = await client.get("/api/v1/drills?plan=..%2Fx", headers=h)
    assert r.status == 400 and (await r.json())["error"]["field"] == "plan"
    r = await client.get("/api/v1/drills?plna=p", headers=h)
    assert r.status == 400 and (await r.json())["error"]["field"] == "plna"
    r = await client.post("/api/v1/drills/not-a-drill/cancel", headers=h)
    assert r.status == 400
    r = await client.post("/api/v1/drills/20260101T000000Z-00000000/cancel", headers=h)
    assert r.status == 404
    r = await client.post(
        "/api/v1/drills",
        data=b'{"plan": "' + b"p" * (200 * 1024) + b'"}',
        headers={**h, "Content-Type": "application/json"},
    )
    assert r.status == 413


async def test_lose_region_needs_a_region_left(client: Client, tmp_path: Path) -> None:  # noqa: F811
    d = daemon_of(client)
    one = d.cfg.plan("p").model_copy(
        update={"storage": d.cfg.plan("p").storage.model_copy(update={"regions": ["a"]})}
    )
    d.cfg.plans[0] = one
    r = await client.post(
        "/api/v1/drills", json={"plan": "p", "lose_region": "a"}, headers=bearer("coordinator")
    )
    assert r.status == 400
    assert "leaves plan p no region" in (await r.json())["error"]["message"]


# ------------------------------------------------------------------------------- audit


async def test_drills_are_audited_with_who_what_and_outcome(client: Client) -> None:  # noqa: F811
    await backed_up(client)
    await client.post("/api/v1/drills", json={"plan": "p"}, headers=bearer("viewer"))
    r = await client.post(
        "/api/v1/drills", json={"plan": "p", "lose_region": "b"}, headers=bearer("coordinator")
    )
    drill_id = (await r.json())["id"]
    report = await wait_done(client, drill_id)
    assert report["status"] == "passed", report
    await client.post("/api/v1/drills", json={"plan": "nope"}, headers=bearer("coordinator"))

    records = audit_records(client)
    api = [(r["token"], r["role"], r["status"]) for r in records if r["event"] == "api"]
    assert api == [
        ("viewer-bot", "viewer", 403),
        ("coordinator-bot", "coordinator", 202),
        ("coordinator-bot", "coordinator", 404),
    ]
    call = next(r for r in records if r["event"] == "api" and r["status"] == 202)
    assert call["request"] == {"plan": "p", "lose_region": "b"} and call["outcome"] == "ok"
    drills = [r for r in records if r["event"] == "drill"]
    assert [(r["action"], r["outcome"]) for r in drills] == [
        ("start", "started"),
        ("finish", "passed"),
    ]
    for rec in drills:
        assert (rec["token"], rec["role"], rec["drill_id"]) == (
            "coordinator-bot",
            "coordinator",
            drill_id,
        )
        assert rec["request"] == {"plan": "p", "lose_region": "b"}
    assert drills[1]["rto_seconds"] == report["rto_seconds"] and drills[1]["stored_in"] == ["a"]
    text = (client.state_dir / "audit.jsonl").read_text()  # type: ignore[attr-defined]
    assert all(tok not in text for tok in TOKENS.values())
    assert await client.app_daemon.audit.flush(10)  # type: ignore[attr-defined]
    for region in client.regions.values():  # type: ignore[attr-defined]
        shipped = []
        for obj in await region.list("_audit/"):
            raw = await region.get(obj.key)
            shipped += open_audit_object(client.keyring, raw)  # type: ignore[attr-defined]
            assert all(tok.encode() not in raw for tok in TOKENS.values())
        assert [r["event"] for r in shipped].count("drill") == 2


async def test_restore_tests_on_demand_are_for_operators(client: Client) -> None:  # noqa: F811
    r = await client.post("/api/v1/plans/p/restore-tests", headers=bearer("viewer"))
    assert r.status == 403
    r = await client.post("/api/v1/plans/nope/restore-tests", headers=bearer("operator"))
    assert r.status == 404
    r = await client.post(
        "/api/v1/plans/p/restore-tests", json={"source": "x/y"}, headers=bearer("operator")
    )
    assert r.status == 400 and (await r.json())["error"]["field"] == "source"
    r = await client.post("/api/v1/plans/p/restore-tests", headers=bearer("operator"))
    assert r.status == 202 and (await r.json())["started"] == ["p/s0"]
    records = [r for r in audit_records(client) if r["path"].endswith("/restore-tests")]
    assert [r["status"] for r in records] == [403, 404, 400, 202]


# ------------------------------------------------------------------------------- lifecycle


async def test_one_drill_per_plan_and_cancel_cleans_up(
    client: Client,  # noqa: F811
    slow_restore: asyncio.Event,
) -> None:
    await backed_up(client)
    h = bearer("coordinator")
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)
    drill_id = (await r.json())["id"]
    await asyncio.wait_for(slow_restore.wait(), 10)
    scratch = client.state_dir / "scratch"  # type: ignore[attr-defined]
    assert list(scratch.glob("*.json")), "the scratch directory is registered while in use"
    running = await (await client.get(f"/api/v1/drills/{drill_id}", headers=h)).json()
    assert running["status"] == "running" and running["sources"][0]["result"] == "running"

    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)
    assert r.status == 409 and (await r.json())["error"]["drill_id"] == drill_id

    r = await client.post(f"/api/v1/drills/{drill_id}/cancel", headers=h)
    assert r.status == 200 and (await r.json())["status"] == "cancelled"
    report = await wait_done(client, drill_id)
    assert report["status"] == "cancelled"
    assert [x["code"] for x in report["reasons"]] == ["cancelled"]
    assert report["sources"][0]["result"] == "cancelled"
    assert list(scratch.glob("*.json")) == []  # the scratch directory is gone
    assert (
        daemon_of(client).metrics.registry.get_sample_value("drd_drill_last_status", {"plan": "p"})
        is None
    )  # a cancelled drill is not a result
    r = await client.post(f"/api/v1/drills/{drill_id}/cancel", headers=h)
    assert r.status == 409
    actions = [(r["action"], r["outcome"]) for r in audit_records(client) if r["event"] == "drill"]
    assert actions == [("start", "started"), ("cancel", "cancelling"), ("finish", "cancelled")]
    # Stored (cancelled drills are part of the record too) in every region.
    for region in client.regions.values():  # type: ignore[attr-defined]
        raw = await region.get(drill_prefix("p", drill_id) + REPORT_OBJECT)
        assert open_report(client.keyring, raw, "p", drill_id)["status"] == "cancelled"  # type: ignore[attr-defined]


async def test_shutdown_cancels_a_running_drill(
    client: Client,  # noqa: F811
    slow_restore: asyncio.Event,
) -> None:
    await backed_up(client)
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=bearer("coordinator"))
    drill_id = (await r.json())["id"]
    await asyncio.wait_for(slow_restore.wait(), 10)
    d = daemon_of(client)
    await d.drills.close(5)
    assert d.drills.runs[drill_id].report.status == "cancelled"
    assert list((client.state_dir / "scratch").glob("*.json")) == []  # type: ignore[attr-defined]


async def test_stored_reports_outlive_the_process_and_retention(
    client: Client,  # noqa: F811
) -> None:
    await backed_up(client)
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=bearer("coordinator"))
    drill_id = (await r.json())["id"]
    report = await wait_done(client, drill_id)
    d = daemon_of(client)
    assert d.metrics.registry.get_sample_value("drd_drill_last_status", {"plan": "p"}) == 1
    assert d.metrics.registry.get_sample_value("drd_drill_rto_seconds", {"plan": "p"}) == (
        pytest.approx(report["rto_seconds"], abs=0.001)
    )
    for region in d.regions.values():
        keys = sorted(o.key for o in await region.list(drill_prefix("p", drill_id)))
        assert [k.rsplit("/", 1)[1] for k in keys] == ["report.json", "report.md"]
        md = (await region.get(keys[1])).decode()
        assert "PASSED" in md and "| RTO |" in md

    # A new process (no drill in memory) finds it in storage, and its metrics.
    metrics = Metrics()
    fresh = DrillManager(dataclasses.replace(d.services, metrics=metrics), None)
    stored = await fresh.get(drill_id)
    assert stored is not None and stored["status"] == "passed"
    assert stored["sources"] == report["sources"]
    # Each check says what it compared and how much it covered (descriptions and counts).
    (integrity,) = [c for c in stored["sources"][0]["checks"] if c["name"] == "integrity"]
    assert "authenticated" in integrity["compared"]
    assert integrity["coverage"].endswith("1000 restored")
    assert [x["id"] for x in await fresh.list("p")] == [drill_id]
    await fresh.load_state()
    assert metrics.registry.get_sample_value("drd_drill_last_status", {"plan": "p"}) == 1

    # The catalog and retention never take drill reports for backups, and never delete them.
    catalog = await build_catalog(list(d.regions.values()), d.keyring, "")
    assert all(not o.keys[0].startswith("_") for o in catalog.orphans)
    assert [e.ref.plan for e in catalog.entries] == ["p"]
    far_future = d.clock() + timedelta(days=400)
    await sweep(d.cfg.plan("p"), d.regions, now=far_future)
    for region in d.regions.values():
        assert await region.list("p/") == []  # every backup destroyed
        assert len(await region.list(drill_prefix("p", drill_id))) == 2  # the report stays


def test_markdown_has_no_check_values() -> None:
    from datetime import UTC, datetime

    from drd.verify.drill import DrillReport, SourceResult

    report = DrillReport(
        "20260601T120000Z-1a2b3c4d",
        "p",
        datetime(2026, 6, 1, 12, tzinfo=UTC),
        ["a", "b"],
        rto_target_seconds=600,
        rpo_target_seconds=3600,
        lose_region="b",
        status="failed",
    )
    s = SourceResult("db", "postgres", result="failed", failure_category="check_failed")
    s.checks = [{"name": "order-total", "kind": "sql", "status": "failed", "critical": True}]
    s.failure_message = "check(s) failed: order-total"
    report.sources.append(s)
    report.fail("check_failed", s.failure_message, "db")
    md = render_markdown(report)
    assert "region b was treated as lost" in md and "`check_failed`: db:" in md
    assert "order-total failed" in md


async def test_a_drill_reads_as_one_html_page(client: Client) -> None:  # noqa: F811
    await backed_up(client)
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=bearer("coordinator"))
    drill_id = (await r.json())["id"]
    report = await wait_done(client, drill_id)
    path = f"/api/v1/drills/{drill_id}/report.html"
    assert (await client.get(path)).status == 401
    r = await client.get(path, headers=bearer("viewer"))
    assert r.status == 200 and r.content_type == "text/html" and r.charset == "utf-8"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    page = await r.text()
    assert "Failover drill of plan p" in page and drill_id in page
    assert f"{report['rto_seconds']:.2f}s" in page  # the achieved RTO
    assert "integrity" in page and "1000 restored" in page  # a check and its coverage
    assert "(this one)" in page  # the plan's last drills, from its regions
    h = bearer("viewer")
    r = await client.get("/api/v1/drills/not-a-drill/report.html", headers=h)
    assert r.status == 400 and (await r.json())["error"]["field"] == "id"
    r = await client.get("/api/v1/drills/20260101T000000Z-00000000/report.html", headers=h)
    assert r.status == 404
    spec = await (await client.get("/api/v1/openapi.json")).json()
    operation = spec["paths"]["/api/v1/drills/{drill_id}/report.html"]["get"]
    assert "text/html" in operation["responses"]["200"]["content"]
