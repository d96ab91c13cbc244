"""A drill's JSON says each fact once (`id`, and seconds), also for reports an earlier version
stored with the public half's `drill_id` and milliseconds next to them; a drill cancelled on
purpose is logged at info, not error."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from drd import crypto
from drd.verify.drill import PUBLIC_ONLY, REPORT_OBJECT, drill_prefix
from tests.unit.server.test_api import bearer, client  # noqa: F401 - the fixture
from tests.unit.server.test_drill_api import (
    backed_up,
    daemon_of,
    slow_restore,  # noqa: F401 - the fixture
    wait_done,
)

Client = TestClient[Any, Any]
REPEATS = {"drill_id", "rto_ms", "rpo_ms", "rto_target_ms", "rpo_target_ms"}


async def test_a_drill_report_has_no_repeated_fields(client: Client) -> None:  # noqa: F811
    await backed_up(client)
    h = bearer("coordinator")
    started = await (await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)).json()
    report = await wait_done(client, started["id"])
    assert report["id"] == started["id"] and report["status"] == "passed"
    assert not REPEATS & set(report), REPEATS & set(report)
    assert report["rto_seconds"] is not None and report["rto_target_seconds"] == 3600
    listed = await (await client.get("/api/v1/drills", headers=h)).json()
    assert not REPEATS & set(listed["drills"][0])

    # What is stored still verifies by its public half (drill_id, integer milliseconds).
    region = client.regions["a"]  # type: ignore[attr-defined]
    raw = await region.get(drill_prefix("p", report["id"]) + REPORT_OBJECT)
    public, body = crypto.open_manifest(client.keyring, raw)  # type: ignore[attr-defined]
    assert public["drill_id"] == report["id"] and isinstance(public["rto_ms"], int)
    assert not REPEATS & set(body)


async def test_a_report_stored_by_an_earlier_version_is_served_without_repeats(
    client: Client,  # noqa: F811
) -> None:
    await backed_up(client)
    h = bearer("coordinator")
    started = await (await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)).json()
    drill_id = started["id"]
    report = await wait_done(client, drill_id)
    # Rewrite the stored report the way 0.2.0 wrote its body: the public half merged in.
    d = daemon_of(client)
    key = drill_prefix("p", drill_id) + REPORT_OBJECT
    for region in client.regions.values():  # type: ignore[attr-defined]
        public, body = crypto.open_manifest(d.keyring, await region.get(key))
        await region.put(key, crypto.seal_manifest(d.keyring, public, {**public, **body}))
    assert set(public) >= PUBLIC_ONLY
    d.drills.runs.clear()  # as after a restart: served from the regions
    r = await client.get(f"/api/v1/drills/{drill_id}", headers=h)
    served = await r.json()
    assert r.status == 200 and not REPEATS & set(served)
    assert served["id"] == drill_id and served["rto_seconds"] == report["rto_seconds"]


async def test_a_cancelled_drill_is_logged_at_info(
    client: Client,  # noqa: F811
    slow_restore: asyncio.Event,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    await backed_up(client)
    h = bearer("coordinator")
    started = await (await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)).json()
    await asyncio.wait_for(slow_restore.wait(), 10)
    with caplog.at_level(logging.INFO):
        r = await client.post(f"/api/v1/drills/{started['id']}/cancel", headers=h)
        assert r.status == 200
        assert (await wait_done(client, started["id"]))["status"] == "cancelled"
    about = [rec for rec in caplog.records if started["id"] in rec.getMessage()]
    assert any(rec.levelno == logging.INFO and "cancelled" in rec.getMessage() for rec in about), [
        (rec.levelname, rec.getMessage()) for rec in about
    ]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert errors == [], [(rec.name, rec.getMessage()) for rec in errors]
