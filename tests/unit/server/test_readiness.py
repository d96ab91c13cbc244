"""/readyz during a regional outage: ready while every plan can meet its min_copies with the
regions that are up, 503 naming the plan that cannot (and why) otherwise; the other reasons
stay. The real aiohttp app on a loopback test server, a daemon on in-memory regions with
faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.service import Daemon
from drd.errors import PermanentStorageError, StateError
from drd.metrics import Metrics
from drd.server.app import make_app
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv

Client = TestClient[Any, Any]


@pytest.fixture
async def client(blob_strategy: Any, tmp_path: Path) -> AsyncIterator[Client]:
    """Three regions; plan `one` needs 1 copy of a, b; plan `two` needs 2 copies of b, c."""
    env = DrdEnv(tmp_path)
    for name in ("a", "b", "c"):
        env.add_local_region(name)
    env.add_plan("one", [{"name": "s", "kind": "blob", "size": 10}], regions=["a", "b"])
    env.plans["one"]["storage"]["min_copies"] = 1
    env.add_plan("two", [{"name": "s", "kind": "blob", "size": 10}], regions=["b", "c"])
    cfg = load_config(env.write())
    regions = {n: FaultyStorage(MemoryStorage(n)) for n in ("a", "b", "c")}
    daemon = Daemon(cfg, crypto.Keyring.parse(env.key, "test"), dict(regions), metrics=Metrics())
    async with TestClient(TestServer(make_app(daemon), host="127.0.0.1")) as c:
        c.faulty = regions  # type: ignore[attr-defined]
        c.daemon = daemon  # type: ignore[attr-defined]
        yield c
    await daemon.shutdown(1)


def down(c: Client, region: str) -> None:
    c.faulty[region].fail(  # type: ignore[attr-defined]
        "check", PermanentStorageError(f"region {region}: root is not a directory")
    )


async def readyz(c: Client) -> tuple[int, dict[str, Any]]:
    """/readyz after a probe round (the daemon's loop is off in these tests)."""
    await c.daemon.region_probe.run_once()  # type: ignore[attr-defined]
    r = await c.get("/readyz")
    return r.status, await r.json()


async def test_every_region_up_is_ready(client: Client) -> None:
    status, body = await readyz(client)
    assert status == 200 and body["status"] == "ready" and "reason" not in body
    assert body["checks"]["regions"] == {"a": "ok", "b": "ok", "c": "ok"}
    assert body["checks"]["min_copies"] == {"one": "ok", "two": "ok"}


async def test_a_region_down_that_every_plan_survives_is_still_ready(client: Client) -> None:
    down(client, "a")  # plan one still has b; plan two does not use a
    status, body = await readyz(client)
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["regions"]["a"] == "region a: root is not a directory"
    assert body["checks"]["min_copies"] == {"one": "ok", "two": "ok"}
    samples = client.daemon.metrics.registry  # type: ignore[attr-defined]
    assert samples.get_sample_value("drd_region_up", {"region": "a"}) == 0


async def test_a_plan_that_cannot_meet_min_copies_is_unready_and_named(client: Client) -> None:
    down(client, "b")  # plan one keeps a (1 of 1 needed); plan two keeps only c (2 needed)
    status, body = await readyz(client)
    assert status == 503 and body["status"] == "unready"
    why = "min_copies is 2 but only 1 of its regions is up (c); down: b"
    assert body["checks"]["min_copies"] == {"one": "ok", "two": why}
    assert body["reason"] == f"plan(s) cannot meet min_copies: two: {why}"
    assert body["checks"]["regions"]["b"] == "region b: root is not a directory"

    client.faulty["b"].clear()  # type: ignore[attr-defined]
    assert (await readyz(client))[0] == 200


async def test_readyz_answers_from_what_operations_and_the_probe_found(
    client: Client,
) -> None:
    """It never asks a region itself: a region that hangs cannot make it late, and a region a
    job found failing is down for it at once."""
    await client.daemon.region_probe.run_once()  # type: ignore[attr-defined]
    faulty = client.faulty  # type: ignore[attr-defined]
    calls = {name: len(region.calls) for name, region in faulty.items()}
    client.daemon.health.observe(  # type: ignore[attr-defined]
        "c", "put", PermanentStorageError("region c: permission denied")
    )
    r = await client.get("/readyz")
    assert r.status == 503
    body = await r.json()
    assert body["checks"]["regions"]["c"] == "region c: permission denied"
    assert {name: len(region.calls) for name, region in faulty.items()} == calls


async def test_the_other_reasons_stay(client: Client) -> None:
    client.daemon.state_failed(StateError("state dir /x: disk full"))  # type: ignore[attr-defined]
    status, body = await readyz(client)
    assert (
        status == 503 and body["reason"] == "state directory not writable: state dir /x: disk full"
    )
    assert body["checks"]["min_copies"] == {"one": "ok", "two": "ok"}


async def test_before_the_first_probe_round_no_region_is_ok_and_drd_is_not_ready(
    client: Client,
) -> None:
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 503 and body["status"] == "unready"
    assert "waiting for the first probe round" in body["reason"]
    assert body["checks"]["regions"] == {n: "not probed yet" for n in ("a", "b", "c")}
    samples = client.daemon.metrics.registry  # type: ignore[attr-defined]
    assert samples.get_sample_value("drd_region_up", {"region": "a"}) is None
    # One round later every region is known, and drd is ready.
    status, body = await readyz(client)
    assert status == 200 and body["checks"]["regions"] == {"a": "ok", "b": "ok", "c": "ok"}
    assert samples.get_sample_value("drd_region_up", {"region": "a"}) == 1


async def test_a_region_an_operation_found_up_still_waits_for_the_first_round(
    client: Client,
) -> None:
    client.daemon.health.observe("a", "list", None)  # type: ignore[attr-defined]
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 503 and "waiting for the first probe round" in body["reason"]
    assert body["checks"]["regions"] == {"a": "ok", "b": "not probed yet", "c": "not probed yet"}
