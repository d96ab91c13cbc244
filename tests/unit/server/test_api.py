"""The API's access control, validation and audit trail, against the real aiohttp app on a
loopback test server with a daemon on in-memory regions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.service import Daemon
from drd.metrics import Metrics
from drd.server.app import make_app
from drd.server.auth import generate_token, token_hash
from drd.storage.memory import MemoryStorage
from tests.support.audit import open_audit_object
from tests.support.drdenv import DrdEnv

TOKENS = {role: generate_token() for role in ("viewer", "operator", "coordinator")}


@pytest.fixture
async def client(
    blob_strategy: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[TestClient[Any, Any]]:
    api: dict[str, Any] = getattr(request, "param", {})
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 1000}])
    env.api = {
        "tokens": [
            {"name": f"{role}-bot", "role": role, "sha256": token_hash(tok)}
            for role, tok in TOKENS.items()
        ],
        **api,
    }
    cfg = load_config(env.write())
    keyring = crypto.Keyring.parse(env.key, "test")
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    daemon = Daemon(cfg, keyring, regions, metrics=Metrics())
    await daemon.load_state()
    async with TestClient(TestServer(make_app(daemon), host="127.0.0.1")) as c:
        c.app_daemon = daemon  # type: ignore[attr-defined]
        c.regions = regions  # type: ignore[attr-defined]
        c.keyring = keyring  # type: ignore[attr-defined]
        c.state_dir = cfg.state_dir  # type: ignore[attr-defined]
        yield c
    await daemon.shutdown(1)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def test_reads_need_a_token_by_default(client: TestClient[Any, Any]) -> None:
    r = await client.get("/api/v1/status")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.get("/api/v1/status", headers={"Authorization": "Bearer drdt1_wrong"})
    assert r.status == 401
    r = await client.get("/api/v1/status", headers=bearer("viewer"))
    assert r.status == 200 and "p" in (await r.json())["plans"]
    assert (await client.get("/metrics")).status == 200  # Prometheus scrapes without a token
    assert (await client.get("/healthz")).status == 200
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/plans/{plan}/backups" in spec["paths"]


@pytest.mark.parametrize("client", [{"public_read": True, "public_metrics": False}], indirect=True)
async def test_public_read_and_private_metrics(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/api/v1/status")).status == 200
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=bearer("viewer"))).status == 200
    # Public reading never extends to mutations.
    assert (await client.post("/api/v1/plans/p/backups")).status == 401


async def test_roles_are_enforced(client: TestClient[Any, Any]) -> None:
    r = await client.post("/api/v1/plans/p/backups", headers=bearer("viewer"))
    assert r.status == 403 and "operator" in (await r.json())["error"]["message"]
    r = await client.post("/api/v1/plans/p/backups", headers=bearer("operator"))
    assert r.status == 202 and (await r.json())["started"] == ["p/s0"]
    daemon = client.app_daemon  # type: ignore[attr-defined]
    await asyncio.gather(*(st.task for st in daemon.sources.values() if st.task))
    # Roles are ordered: a coordinator may do what an operator may.
    r = await client.post(
        "/api/v1/plans/p/backups", json={"source": "s0"}, headers=bearer("coordinator")
    )
    assert r.status == 202


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/v1/plans/nope/backups", None, 404, "no plan 'nope'"),
        ("/api/v1/plans/p/backups", {"source": "nope"}, 404, "no source 'nope'"),
        ("/api/v1/plans/p/backups", {"source": "../etc"}, 400, "source"),
        ("/api/v1/plans/p/backups", {"surce": "s0"}, 400, "surce"),
        ("/api/v1/plans/p/backups", "not json", 400, "not JSON"),
    ],
)
async def test_bad_requests_get_clear_4xx(
    client: TestClient[Any, Any], path: str, body: Any, status: int, needle: str
) -> None:
    if isinstance(body, str):
        r = await client.post(path, data=body, headers=bearer("operator"))
    else:
        r = await client.post(path, json=body, headers=bearer("operator"))
    assert r.status == status
    assert needle in (await r.json())["error"]["message"]


async def test_oversize_body_is_413(client: TestClient[Any, Any]) -> None:
    r = await client.post(
        "/api/v1/plans/p/backups",
        data=b"x" * (200 * 1024),
        headers={**bearer("operator"), "Content-Type": "application/json"},
    )
    assert r.status == 413


async def test_every_mutating_call_is_audited_without_the_token(
    client: TestClient[Any, Any],
) -> None:
    await client.post("/api/v1/plans/p/backups", headers=bearer("viewer"))
    await client.post("/api/v1/plans/p/backups", json={"source": "s0"}, headers=bearer("operator"))
    await client.post("/api/v1/plans/nope/backups", headers=bearer("operator"))
    await client.get("/api/v1/status", headers=bearer("viewer"))  # reads are not audited
    audit = client.state_dir / "audit.jsonl"  # type: ignore[attr-defined]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["token"], r["role"], r["status"]) for r in records] == [
        ("viewer-bot", "viewer", 403),
        ("operator-bot", "operator", 202),
        ("operator-bot", "operator", 404),
    ]
    assert records[1]["request"] == {"source": "s0"} and records[1]["path"].endswith("/backups")
    text = audit.read_text()
    assert all(tok not in text for tok in TOKENS.values())
    # Shipped, sealed, to every region (in the background: the calls did not wait for it).
    assert await client.app_daemon.audit.flush(10)  # type: ignore[attr-defined]
    for region in client.regions.values():  # type: ignore[attr-defined]
        shipped = []
        for obj in await region.list("_audit/"):
            raw = await region.get(obj.key)
            shipped += open_audit_object(client.keyring, raw)  # type: ignore[attr-defined]
            assert all(tok.encode() not in raw for tok in TOKENS.values())
        assert [r["seq"] for r in shipped] == [1, 2, 3]
        assert shipped == records


async def test_refused_requests_are_audited_with_why(client: TestClient[Any, Any]) -> None:
    """401, 403, 400 and 413 answers to requests that ask to change something are recorded:
    who (as far as known), what, and why refused; a refused body is kept, bounded."""
    await client.post("/api/v1/plans/p/backups")  # no token
    await client.post("/api/v1/plans/p/backups", headers={"Authorization": "Bearer drdt1_no"})
    await client.post("/api/v1/plans/p/backups", headers=bearer("viewer"))
    await client.post(
        "/api/v1/plans/p/backups", json={"surce": "s0", "password": "x"}, headers=bearer("operator")
    )
    await client.post(
        "/api/v1/plans/p/backups",
        data=b"x" * (200 * 1024),
        headers={**bearer("operator"), "Content-Type": "application/json"},
    )
    await client.get("/api/v1/status")  # a refused read is not a change: not recorded
    audit = client.state_dir / "audit.jsonl"  # type: ignore[attr-defined]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["status"], r["token"], r["outcome"]) for r in records] == [
        (401, "anonymous", "refused"),
        (401, "anonymous", "refused"),
        (403, "viewer-bot", "refused"),
        (400, "operator-bot", "refused"),
        (413, "operator-bot", "refused"),
    ]
    assert [r["why"] for r in records[:2]] == ["no token", "bad token"]
    assert "needs 'operator'" in records[2]["why"]
    assert "surce" in records[3]["why"]
    assert records[3]["request"] == {"surce": "s0", "password": "***"}
    assert records[4]["request"] is None and records[4]["why"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
