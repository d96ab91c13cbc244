"""Every error the API answers is the JSON error body, those aiohttp makes included (404 and
405 from the router, 413 from the body limit, 500 for a handler's bug); the real app on a
loopback test server."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from drd.server.openapi import Reply
from drd.server.routes import ROUTES
from tests.unit.server.test_api import bearer, client  # noqa: F401 - the fixture

Client = TestClient[Any, Any]


async def json_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status == status
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    return body["error"]


async def test_unknown_path_is_a_json_404(client: Client) -> None:  # noqa: F811
    err = await json_error(await client.get("/api/v1/nope"), 404)
    assert err["message"] == "no such path: /api/v1/nope"
    err = await json_error(await client.post("/nope", headers=bearer("operator")), 404)
    assert err["message"] == "no such path: /nope"


async def test_wrong_method_is_a_json_405_with_allow(client: Client) -> None:  # noqa: F811
    r = await client.delete("/readyz")
    err = await json_error(r, 405)
    assert err["message"] == "method DELETE is not allowed on /readyz (allowed: GET, HEAD)"
    assert r.headers["Allow"] == "GET,HEAD"
    r = await client.get("/api/v1/plans/p/backups", headers=bearer("viewer"))
    err = await json_error(r, 405)
    assert "(allowed: POST)" in err["message"]


async def test_an_oversize_body_is_a_json_413(client: Client) -> None:  # noqa: F811
    r = await client.post(
        "/api/v1/plans/p/backups",
        data=b"x" * (200 * 1024),
        headers={**bearer("operator"), "Content-Type": "application/json"},
    )
    err = await json_error(r, 413)
    assert err["message"] == "the body is larger than 64 KiB"
    # ... and the OpenAPI document says so.
    spec = await (await client.get("/api/v1/openapi.json")).json()
    answer = spec["paths"]["/api/v1/plans/{plan}/backups"]["post"]["responses"]["413"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/Error")


async def test_a_handler_bug_is_a_json_500_and_logged(
    client: Client,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = client.app_daemon  # type: ignore[attr-defined]

    def broken() -> None:
        raise RuntimeError("bug in refresh_metrics")

    monkeypatch.setattr(daemon, "refresh_metrics", broken)
    with caplog.at_level(logging.ERROR, logger="drd.server.json_errors"):
        err = await json_error(await client.get("/metrics"), 500)
    assert err["message"] == "internal error (drd logged it)"
    assert "bug in refresh_metrics" not in err["message"]
    assert any("GET /metrics: unexpected error" in r.getMessage() for r in caplog.records)


def test_no_documented_answer_is_plain_text_but_the_metrics() -> None:
    for route in ROUTES:
        for status, reply in route.all_replies().items():
            assert isinstance(reply, Reply)
            if status >= 400:
                assert reply.body is not None, (route.name, status)
