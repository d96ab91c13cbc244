"""Every POST that starts a job answers with a job id and a Location, and GET there follows the
jobs from queued to their result: backups and restore tests (/api/v1/jobs/{id}); drills point
at their own report. The real app on a loopback test server, a daemon on in-memory regions,
its scheduler driven by hand."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from drd.errors import PermanentStorageError
from drd.layout import SourceRef
from drd.storage.faults import FaultyStorage
from tests.unit.server.test_api import bearer, client  # noqa: F401 - the fixture
from tests.unit.server.test_drill_api import daemon_of

Client = TestClient[Any, Any]
REF = SourceRef("p", "s0")


async def start(c: Client, what: str) -> tuple[str, dict[str, Any]]:
    r = await c.post(f"/api/v1/plans/p/{what}", headers=bearer("operator"))
    assert r.status == 202
    body: dict[str, Any] = await r.json()
    assert r.headers["Location"] == body["href"] == f"/api/v1/jobs/{body['id']}"
    return body["href"], body


async def job(c: Client, href: str) -> dict[str, Any]:
    r = await c.get(href, headers=bearer("viewer"))
    assert r.status == 200
    body: dict[str, Any] = await r.json()
    return body


async def test_a_backup_job_is_followed_to_its_backup(client: Client) -> None:  # noqa: F811
    d = daemon_of(client)
    href, started = await start(client, "backups")
    queued = await job(client, href)
    assert queued["status"] == "queued" and queued["kind"] == "backup"
    assert queued["requested_by"] == {"token": "operator-bot", "role": "operator"}
    assert [(r["source"], r["status"]) for r in queued["runs"]] == [("s0", "queued")]

    assert d.run_once() == [REF]
    running = await job(client, href)
    assert running["status"] == "running" and running["runs"][0]["started_at"] is not None
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))

    done = await job(client, href)
    assert done["status"] == "success" and done["id"] == started["id"]
    (run,) = done["runs"]
    assert run["status"] == "success" and run["error"] is None
    assert run["backup_id"] == d.sources[REF].last_backup_id is not None
    assert run["finished_at"] is not None


async def test_a_failed_backup_job_says_why(client: Client) -> None:  # noqa: F811
    d = daemon_of(client)
    faulty = FaultyStorage(d.regions["a"])
    faulty.fail("open_writer", PermanentStorageError("region a: permission denied"))
    d.regions["a"] = faulty
    href, _ = await start(client, "backups")
    d.run_once()
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))
    done = await job(client, href)
    assert done["status"] == "failure"
    assert done["runs"][0]["status"] == "failure" and done["runs"][0]["backup_id"] is None
    assert "permission denied" in done["runs"][0]["error"]


async def test_a_restore_test_job_waits_for_the_first_backup_then_reports(
    client: Client,  # noqa: F811
) -> None:
    d = daemon_of(client)
    href, _ = await start(client, "restore-tests")
    assert await d.restore_tests.run_once() == []  # nothing to test yet
    assert (await job(client, href))["status"] == "queued"

    d.run_once()  # the source's first backup
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))
    await d.restore_tests.run_once()
    await asyncio.gather(*d.restore_tests.tasks())
    done = await job(client, href)
    assert done["kind"] == "restore-test" and done["status"] == "success"
    assert done["runs"][0]["backup_id"] == d.sources[REF].last_backup_id


async def test_a_job_cancelled_at_shutdown_is_interrupted(client: Client) -> None:  # noqa: F811
    d = daemon_of(client)
    slow = FaultyStorage(d.regions["a"])
    slow.add_latency(30, op="write")
    d.regions["a"] = slow
    href, _ = await start(client, "backups")
    d.run_once()
    await asyncio.sleep(0.05)
    await d.shutdown(0.1)
    done = await job(client, href)
    assert done["status"] == "failure"
    assert done["runs"][0]["status"] == "interrupted"


async def test_only_what_was_started_belongs_to_the_job(client: Client) -> None:  # noqa: F811
    d = daemon_of(client)
    first, _ = await start(client, "backups")
    d.run_once()  # running now
    r = await client.post("/api/v1/plans/p/backups", headers=bearer("operator"))
    assert r.status == 409 and "Location" not in r.headers  # nothing started, no job
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))
    second, _ = await start(client, "backups")
    assert second != first
    assert (await job(client, first))["status"] == "success"
    assert (await job(client, second))["status"] == "queued"  # the next backup, not the last


async def test_unknown_and_malformed_job_ids(client: Client) -> None:  # noqa: F811
    r = await client.get("/api/v1/jobs/20200101T000000Z-00000000", headers=bearer("viewer"))
    assert r.status == 404 and "no job" in (await r.json())["error"]["message"]
    r = await client.get("/api/v1/jobs/..%2Fx", headers=bearer("viewer"))
    assert r.status in (400, 404)
    r = await client.get("/api/v1/jobs/not-an-id", headers=bearer("viewer"))
    assert r.status == 400 and (await r.json())["error"]["field"] == "id"
    assert (await client.get("/api/v1/jobs/20200101T000000Z-00000000")).status == 401


async def test_a_drill_start_points_at_its_report(client: Client) -> None:  # noqa: F811
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=bearer("coordinator"))
    assert r.status == 202
    body = await r.json()
    assert r.headers["Location"] == body["href"] == f"/api/v1/drills/{body['id']}"
    r = await client.get(body["href"], headers=bearer("viewer"))
    assert r.status == 200 and (await r.json())["id"] == body["id"]


async def test_a_job_that_raises_is_a_failure_not_an_interruption(
    client: Client,  # noqa: F811
    monkeypatch: Any,
) -> None:
    d = daemon_of(client)

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("history row refused")

    monkeypatch.setattr(d.history, "start", broken)
    href, _ = await start(client, "backups")
    d.run_once()
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))
    done = await job(client, href)
    (run,) = done["runs"]
    assert run["status"] == "failure"
    assert "history row refused" in run["error"]
    assert d.sources[REF].last_status == "failure"
    failed = d.metrics.registry.get_sample_value(
        "drd_backups_total", {"plan": "p", "source": "s0", "result": "failure"}
    )
    assert failed == 1


async def test_a_restore_test_that_raises_is_a_failure(
    client: Client,  # noqa: F811
    monkeypatch: Any,
) -> None:
    d = daemon_of(client)
    d.run_once()
    await asyncio.gather(*(st.task for st in d.sources.values() if st.task))
    href, _ = await start(client, "restore-tests")

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("history row refused")

    monkeypatch.setattr(d.restore_tests.history, "start", broken)
    assert await d.restore_tests.run_once() == [REF]
    await asyncio.gather(*d.restore_tests.tasks())
    (run,) = (await job(client, href))["runs"]
    assert run["status"] == "failure" and "history row refused" in run["error"]
    failed = d.metrics.registry.get_sample_value(
        "drd_restore_tests_total", {"plan": "p", "source": "s0", "result": "failure"}
    )
    assert failed == 1
