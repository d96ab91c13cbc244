"""Running jobs as the daemon shows them (drd.progress): drd_job_running, drd_job_bytes_done
and drd_job_started_timestamp_seconds while a backup runs (and after), the jobs of
/api/v1/status, and a running drill's live phases; on in-memory regions, with the dump or the
restore held mid-way by the test."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from drd.layout import SourceRef
from tests.support.blob_strategy import BlobStrategy
from tests.unit.server.test_api import bearer, client  # noqa: F401 - the fixture
from tests.unit.server.test_drill_api import backed_up, daemon_of, wait_done

Client = TestClient[Any, Any]
REF = SourceRef("p", "s0")
CHUNK = 64 * 1024
LABELS = {"plan": "p", "source": "s0", "kind": "backup"}


class Held:
    """A stream that stops half-way until the test lets it go on."""

    def __init__(self) -> None:
        self.midway = asyncio.Event()
        self.release = asyncio.Event()


@pytest.fixture
def held_dump(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    held = Held()

    async def dump(self: BlobStrategy) -> AsyncIterator[bytes]:
        for i in range(8):
            if i == 4:
                held.midway.set()
                await held.release.wait()
            yield os.urandom(CHUNK)

    monkeypatch.setattr(BlobStrategy, "dump", dump)
    yield held
    held.release.set()


@pytest.fixture
def held_restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    held = Held()
    original = BlobStrategy.restore

    async def restore(cls: Any, chunks: Any, target: str, metadata: Any) -> Any:
        first = await chunks.__anext__()
        held.midway.set()
        await held.release.wait()

        async def rest() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        return await original(rest(), target, metadata)

    monkeypatch.setattr(BlobStrategy, "restore", classmethod(restore))
    yield held
    held.release.set()


async def scrape(c: Client) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    r = await c.get("/metrics")
    assert r.status == 200
    text = await r.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def status_jobs(c: Client) -> list[dict[str, Any]]:
    r = await c.get("/api/v1/status", headers=bearer("viewer"))
    assert r.status == 200
    jobs: list[dict[str, Any]] = (await r.json())["jobs"]
    return jobs


async def test_a_running_backup_is_in_the_metrics_and_the_status(
    client: Client,  # noqa: F811
    held_dump: Held,
) -> None:
    d = daemon_of(client)
    before = time.time()
    assert d.trigger(REF)
    d.run_once()
    await asyncio.wait_for(held_dump.midway.wait(), 10)

    _, samples = await scrape(client)
    assert sample(samples, "drd_job_running", **LABELS) == 1
    assert sample(samples, "drd_job_bytes_done", **LABELS) == 4 * CHUNK
    started = sample(samples, "drd_job_started_timestamp_seconds", **LABELS)
    assert started is not None and before - 1 <= started <= time.time()
    (job,) = await status_jobs(client)
    assert job["kind"] == "backup" and (job["plan"], job["source"]) == ("p", "s0")
    assert job["phase"] == "dumping" and job["bytes"] == 4 * CHUNK
    assert "preparing" in job["phases"]

    held_dump.release.set()
    task = d.sources[REF].task
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert d.sources[REF].last_status == "success"
    _, samples = await scrape(client)
    assert sample(samples, "drd_job_running", **LABELS) == 0
    assert sample(samples, "drd_job_bytes_done", **LABELS) is None
    assert sample(samples, "drd_job_started_timestamp_seconds", **LABELS) is None
    assert await status_jobs(client) == []


async def test_the_next_backup_expects_the_last_ones_size(
    client: Client,  # noqa: F811
    held_dump: Held,
) -> None:
    d = daemon_of(client)
    held_dump.release.set()
    assert d.trigger(REF)
    d.run_once()
    first = d.sources[REF].task
    assert first is not None
    await asyncio.wait_for(first, 10)
    held_dump.release.clear()
    held_dump.midway.clear()
    assert d.trigger(REF)
    d.run_once()
    await asyncio.wait_for(held_dump.midway.wait(), 10)
    (job,) = await status_jobs(client)
    assert job["total"] == 8 * CHUNK and job["bytes"] == 4 * CHUNK
    assert job["eta_seconds"] is None or job["eta_seconds"] >= 0
    held_dump.release.set()


async def test_the_exposition_with_a_running_job_passes_promtool(
    client: Client,  # noqa: F811
    held_dump: Held,
) -> None:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool not found on PATH: run monitoring/ensure-promtool.sh", pytrace=False)
    d = daemon_of(client)
    assert d.trigger(REF)
    d.run_once()
    await asyncio.wait_for(held_dump.midway.wait(), 10)
    text, _ = await scrape(client)
    assert "drd_job_running{" in text
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_a_running_drill_shows_its_live_phases_and_bytes(
    client: Client,  # noqa: F811
    held_restore: Held,
) -> None:
    await backed_up(client)
    h = bearer("coordinator")
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)
    drill_id = (await r.json())["id"]
    await asyncio.wait_for(held_restore.midway.wait(), 10)

    running = await (await client.get(f"/api/v1/drills/{drill_id}", headers=h)).json()
    (source,) = running["sources"]
    assert source["result"] == "running"
    assert {"fetch", "scratch_setup", "restore"} <= set(source["phases"])
    live = source["progress"]
    assert live["phase"] == "restore" and live["total"] == 1000 and live["bytes"] == 1000
    (job,) = await status_jobs(client)
    assert (job["kind"], job["source"], job["phase"]) == ("drill", "s0", "restore")
    _, samples = await scrape(client)
    assert sample(samples, "drd_job_running", plan="p", source="s0", kind="drill") == 1

    held_restore.release.set()
    report = await wait_done(client, drill_id)
    (done,) = report["sources"]
    assert done["result"] == "passed" and "progress" not in done
    assert set(done["phases"]) >= {"fetch", "decrypt_decompress", "restore", "checks"}
    assert await status_jobs(client) == []


async def test_a_scheduled_restore_test_is_a_running_job_too(
    client: Client,  # noqa: F811
    held_restore: Held,
) -> None:
    d = daemon_of(client)
    await backed_up(client)
    await d.load_state()  # the daemon learns of the backup: the source is testable
    assert d.restore_tests.trigger(REF)
    assert await d.restore_tests.run_once() == [REF]
    await asyncio.wait_for(held_restore.midway.wait(), 10)
    (job,) = await status_jobs(client)
    assert (job["kind"], job["phase"], job["bytes"], job["total"]) == (
        "restore-test",
        "restore",
        1000,
        1000,
    )
    assert {"choosing", "fetch", "scratch_setup"} <= set(job["phases"])
    _, samples = await scrape(client)
    assert sample(samples, "drd_job_running", plan="p", source="s0", kind="restore-test") == 1
    held_restore.release.set()
    task = d.restore_tests.sources[REF].task
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert await status_jobs(client) == []
    _, samples = await scrape(client)
    assert sample(samples, "drd_job_running", plan="p", source="s0", kind="restore-test") == 0
