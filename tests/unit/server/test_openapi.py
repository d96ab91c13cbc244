"""The OpenAPI document is generated from the route table and the pydantic models, and says
what the API really answers: every route of the app is in it with an operationId and a schema
for each answer, its schemas are the models' JSON schemas, and real answers (status and body)
are the ones documented for the call, and read back through their model unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from drd.errors import StorageError
from drd.server.bodies import dump
from drd.server.openapi import OPENAPI_VERSION, REF_TEMPLATE, schema_modes
from drd.server.routes import ROUTES
from tests.unit.server.test_api import bearer, client  # noqa: F401 - the fixture
from tests.unit.server.test_drill_api import backed_up, slow_restore, wait_done  # noqa: F401

Client = TestClient[Any, Any]
OPERATIONS = {route.operation_id: route for route in ROUTES}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def undeclared(model: BaseModel) -> list[str]:
    """Fields of stored documents (at any depth) that no model declares."""
    out = [f"{type(model).__name__}.{k}" for k in model.model_extra or {}]
    for name in type(model).model_fields:
        values = getattr(model, name)
        if isinstance(values, dict):
            values = list(values.values())
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, BaseModel):
                out += undeclared(value)
    return out


async def checked(operation_id: str, response: ClientResponse) -> Any:
    """The body of a real answer, checked against what the document promises for it."""
    route = OPERATIONS[operation_id]
    reply = route.all_replies().get(response.status)
    assert reply is not None, f"{operation_id}: {response.status} is not documented"
    if reply.text is not None:
        assert response.content_type == reply.text
        return await response.text()
    assert reply.body is not None and response.content_type == "application/json"
    body = await response.json()
    model = reply.body.model_validate(body)
    assert dump(model) == body, f"{operation_id}: the model does not read it back unchanged"
    assert undeclared(model) == [], operation_id
    return body


async def test_every_route_is_documented_with_an_operation_id_and_answer_schemas(
    client: Client,  # noqa: F811
) -> None:
    spec = await checked("getOpenApi", await client.get("/api/v1/openapi.json"))
    assert spec["openapi"] == OPENAPI_VERSION
    served = {
        (route.resource.canonical, route.method.lower())
        for route in client.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert sorted(ids) == sorted(set(ids)) == sorted(OPERATIONS)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert any(code.startswith("2") for code in op["responses"]), (path, method)
            if "security" in op:
                assert {"401", "403"} <= set(op["responses"]), (path, method)
            for code, answer in op["responses"].items():
                ((media, content),) = answer["content"].items()
                assert content["schema"], (path, method, code)
                if code.startswith("4") and media == "application/json":
                    assert content["schema"] == {"$ref": "#/components/schemas/Error"}
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert param["required"] and "{" + param["name"] + "}" in path
    schemas = spec["components"]["schemas"]
    for ref in refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_the_document_schemas_are_the_models_json_schemas() -> None:
    from drd.server.routes import document

    schemas = dump(document())["components"]["schemas"]
    for model, mode in schema_modes(ROUTES).items():
        schema = model.model_json_schema(mode=mode, ref_template=REF_TEMPLATE)
        for name, nested in schema.pop("$defs", {}).items():
            assert schemas[name] == nested, name
        assert schemas[model.__name__] == schema, model.__name__
    assert schemas["DrillRequest"]["additionalProperties"] is False
    assert schemas["Drill"]["additionalProperties"] is True  # a stored report is served whole


async def test_real_answers_are_the_documented_ones(client: Client) -> None:  # noqa: F811
    h = bearer("coordinator")
    await checked("getHealth", await client.get("/healthz"))
    waiting = await checked("getReadiness", await client.get("/readyz"))  # 503: not probed
    assert waiting["status"] == "unready"
    await client.app_daemon.probe_regions()  # type: ignore[attr-defined]
    ready = await checked("getReadiness", await client.get("/readyz"))
    assert ready["status"] == "ready" and "reason" not in ready
    await checked("getMetrics", await client.get("/metrics"))
    await checked("getStatus", await client.get("/api/v1/status"))  # 401
    await checked("getStatus", await client.get("/api/v1/status", headers=h))  # nothing yet
    await checked("startBackups", await client.post("/api/v1/plans/p/backups"))  # 401
    v = bearer("viewer")
    await checked("startBackups", await client.post("/api/v1/plans/p/backups", headers=v))
    await checked("startBackups", await client.post("/api/v1/plans/x/backups", headers=h))
    for body in ({"source": "nope"}, {"source": "../x"}, {"surce": "s0"}):
        r = await client.post("/api/v1/plans/p/backups", json=body, headers=h)
        await checked("startBackups", r)
    r = await client.post("/api/v1/plans/p/backups", data="{", headers=h)
    assert "field" not in (await checked("startBackups", r))["error"]
    r = await client.post(
        "/api/v1/plans/p/backups",
        data=b"x" * (100 * 1024),
        headers={**h, "Content-Type": "application/json"},
    )
    assert r.status == 413
    await checked("startBackups", r)
    daemon = client.app_daemon  # type: ignore[attr-defined]
    r = await client.post("/api/v1/plans/p/backups", headers=h)
    started = await checked("startBackups", r)
    assert started == {
        "id": started["id"],
        "href": f"/api/v1/jobs/{started['id']}",
        "started": ["p/s0"],
        "already_running": [],
    }
    daemon.run_once()  # the scheduler's step (its loop is off in these tests)
    await asyncio.gather(*(st.task for st in daemon.sources.values() if st.task))
    await checked("getJob", await client.get(started["href"], headers=h))
    r = await client.post("/api/v1/plans/p/restore-tests", headers=h)
    started = await checked("startRestoreTests", r)
    assert started["started"] == ["p/s0"]
    await daemon.restore_tests.run_once()
    await asyncio.gather(*daemon.restore_tests.tasks())
    await checked("getJob", await client.get(started["href"], headers=h))
    await checked("getJob", await client.get("/api/v1/jobs/nope", headers=h))
    await checked("getJob", await client.get("/api/v1/jobs/20200101T000000Z-00000000", headers=h))
    await checked("getJob", await client.get(started["href"]))  # 401
    for slots, path, operation_id in (
        (daemon.sources, "/api/v1/plans/p/backups", "startBackups"),
        (daemon.restore_tests.sources, "/api/v1/plans/p/restore-tests", "startRestoreTests"),
    ):
        (slot,) = slots.values()
        hold = asyncio.Event()
        slot.task = asyncio.create_task(hold.wait())  # a job that is still running
        r = await client.post(path, headers=h)
        assert r.status == 409
        assert (await checked(operation_id, r))["error"]["busy"] == ["p/s0"]
        hold.set()
        await slot.task
    status = await checked("getStatus", await client.get("/api/v1/status", headers=h))
    source = status["plans"]["p"]["sources"]["s0"]
    assert source["last_backup"]["backup_id"] and source["last_job"]["status"] == "success"
    assert source["last_restore_test"]["result"] == "passed"

    r = await client.post("/api/v1/drills", json={"plan": "p", "lose_region": "b"}, headers=h)
    drill_id = (await checked("startDrill", r))["id"]
    report = await wait_done(client, drill_id)
    assert report["status"] == "passed"
    await checked("getDrill", await client.get(f"/api/v1/drills/{drill_id}", headers=h))
    for path in ("/api/v1/drills/not-an-id", "/api/v1/drills/20260101T000000Z-00000000"):
        await checked("getDrill", await client.get(path, headers=h))
    listed = await checked("listDrills", await client.get("/api/v1/drills?plan=p", headers=h))
    assert [d["id"] for d in listed["drills"]] == [drill_id]
    for query in ("plan=nope", "plan=..%2Fx", "plna=p"):
        await checked("listDrills", await client.get(f"/api/v1/drills?{query}", headers=h))
    r = await client.post(f"/api/v1/drills/{drill_id}/cancel", headers=h)
    await checked("cancelDrill", r)  # 409: not running
    for body in ({"plan": "nope"}, {"plan": "p", "lose_region": "zz"}, {}):
        await checked("startDrill", await client.post("/api/v1/drills", json=body, headers=h))

    class Down:
        async def check(self) -> None:
            raise StorageError("region b: connection refused")

    daemon.regions["b"] = Down()  # only the region probe looks at it from here on
    await daemon.region_probe.run_once()
    r = await client.get("/readyz")
    assert r.status == 503
    unready = await checked("getReadiness", r)
    assert unready["reason"].startswith("plan(s) cannot meet min_copies: p: ")
    assert unready["checks"]["regions"] == {"a": "ok", "b": "region b: connection refused"}


async def test_answers_about_a_running_drill_are_the_documented_ones(
    client: Client,  # noqa: F811
    slow_restore: asyncio.Event,  # noqa: F811
) -> None:
    await backed_up(client)
    h = bearer("coordinator")
    r = await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)
    drill_id = (await checked("startDrill", r))["id"]
    await asyncio.wait_for(slow_restore.wait(), 10)
    running = await checked("getDrill", await client.get(f"/api/v1/drills/{drill_id}", headers=h))
    assert running["status"] == "running"
    await checked("listDrills", await client.get("/api/v1/drills", headers=h))
    busy = await checked(
        "startDrill", await client.post("/api/v1/drills", json={"plan": "p"}, headers=h)
    )
    assert busy["error"]["drill_id"] == drill_id
    r = await client.post(f"/api/v1/drills/{drill_id}/cancel", headers=h)
    assert (await checked("cancelDrill", r))["status"] in ("cancelled", "cancelling")
    r = await client.post("/api/v1/drills/20260101T000000Z-00000000/cancel", headers=h)
    await checked("cancelDrill", r)  # 404


@pytest.mark.parametrize("client", [{"public_read": True, "public_metrics": False}], indirect=True)
async def test_metrics_can_need_a_token(client: Client) -> None:  # noqa: F811
    await checked("getMetrics", await client.get("/metrics"))  # 401
    await checked("getMetrics", await client.get("/metrics", headers=bearer("viewer")))
