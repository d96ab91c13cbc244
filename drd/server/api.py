"""The authenticated part of the HTTP API: who may call what, request validation, audit.

Every route has a required permission (ROUTE_PERMISSIONS): public probes, reads (viewer, or
anyone when `api.public_read`), metrics (anyone unless `api.public_metrics` is off), on-demand
jobs (operator) and drills (coordinator). A missing or unknown token is 401, a role that is not
enough 403. Every mutating call is written to the audit trail with the caller's token name,
role, the request and the outcome; tokens themselves are never logged or stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drd import __version__
from drd.errors import DrillBusy
from drd.server.auth import ANONYMOUS, Principal, TokenAuthority
from drd.server.keys import (
    API_CONFIG_KEY,
    AUDIT_KEY,
    AUTHORITY_KEY,
    BODY_KEY,
    DAEMON_KEY,
    PRINCIPAL_KEY,
)
from drd.server.ports import DaemonControl
from drd.strategies.base import NAME_PATTERN

log = logging.getLogger(__name__)

# route name -> permission: None (public), "read", "metrics", or a role name
ROUTE_PERMISSIONS: dict[str, str | None] = {
    "healthz": None,
    "readyz": None,
    "openapi": None,
    "metrics": "metrics",
    "status": "read",
    "plan-backups": "operator",
    "plan-restore-tests": "operator",
    "drills-start": "coordinator",
    "drills-list": "read",
    "drill": "read",
    "drill-cancel": "coordinator",
}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, **extra}}, status=status
    )


def _needed_role(request: web.Request, permission: str | None) -> str | None:
    api = request.app[API_CONFIG_KEY]
    if permission == "read":
        return None if api.public_read else "viewer"
    if permission == "metrics":
        return None if api.public_metrics else "viewer"
    return permission


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    name = route.name if route is not None else None
    if name is None or name not in ROUTE_PERMISSIONS:
        # Unknown paths and methods: let aiohttp answer 404/405, never anything else.
        return await handler(request)
    needed = _needed_role(request, ROUTE_PERMISSIONS[name])
    principal = request.app[AUTHORITY_KEY].authenticate(request.headers.get("Authorization"))
    if needed is not None:
        if principal is None:
            return web.json_response(
                {"error": {"code": 401, "message": "a valid bearer token is required"}},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="drd"'},
            )
        if not principal.allows(needed):
            refused = error(403, f"role {principal.role!r} may not do this (needs {needed!r})")
            await _audit(request, principal, refused.status, None)
            return refused
    request[PRINCIPAL_KEY] = principal or ANONYMOUS
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        await _audit(request, principal or ANONYMOUS, exc.status, None)
        raise
    await _audit(request, principal or ANONYMOUS, response.status, request.get(BODY_KEY))
    return response


async def _audit(request: web.Request, principal: Principal, status: int, body: Any) -> None:
    if request.method not in MUTATING:
        return
    await request.app[AUDIT_KEY].record(
        {
            "event": "api",
            "token": principal.name,
            "role": principal.role,
            "method": request.method,
            "path": request.path,
            "request": body,
            "status": status,
            "outcome": "ok" if status < 400 else "refused",
            "remote": request.remote,
        }
    )


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body; 400 naming the field on any problem."""
    if not request.can_read_body:
        raw: Any = {}
    else:
        try:
            raw = await request.json()
        except json.JSONDecodeError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"code": 400, "message": f"body is not JSON: {exc}"}}),
                content_type="application/json",
            ) from None
    request[BODY_KEY] = raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise web.HTTPBadRequest(
            text=json.dumps(
                {"error": {"code": 400, "message": f"{field}: {first['msg']}", "field": field}}
            ),
            content_type="application/json",
        ) from None


class BackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(default=None, pattern=NAME_PATTERN)


def _daemon(request: web.Request) -> DaemonControl:
    return request.app[DAEMON_KEY]


def plan_or_404(request: web.Request) -> str:
    plan = request.match_info["plan"]
    if plan not in {p.name for p in _daemon(request).cfg.plans}:
        raise web.HTTPNotFound(
            text=json.dumps({"error": {"code": 404, "message": f"no plan {plan!r}"}}),
            content_type="application/json",
        )
    return plan


async def start_backups(request: web.Request) -> web.Response:
    """POST /api/v1/plans/{plan}/backups {source?}: back up now (operator)."""
    plan = plan_or_404(request)
    body = await read_body(request, BackupRequest)
    daemon = _daemon(request)
    refs = [ref for ref in daemon.sources if ref.plan == plan]
    if body.source is not None:
        refs = [ref for ref in refs if ref.source == body.source]
        if not refs:
            return error(404, f"plan {plan!r} has no source {body.source!r}")
    started = [str(ref) for ref in refs if daemon.trigger(ref)]
    busy = [str(ref) for ref in refs if str(ref) not in started]
    if not started:
        return error(409, "a backup of every requested source is already running", busy=busy)
    return web.json_response({"started": started, "already_running": busy}, status=202)


class DrillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str = Field(pattern=NAME_PATTERN)
    lose_region: str | None = Field(default=None, pattern=NAME_PATTERN)


def _bad_field(field: str, message: str) -> web.Response:
    return error(400, f"{field}: {message}", field=field)


def _requested_by(request: web.Request) -> dict[str, str]:
    principal = request[PRINCIPAL_KEY]
    return {"token": principal.name, "role": principal.role}


async def start_restore_tests(request: web.Request) -> web.Response:
    """POST /api/v1/plans/{plan}/restore-tests {source?}: restore-test now (operator)."""
    plan = plan_or_404(request)
    body = await read_body(request, BackupRequest)
    daemon = _daemon(request)
    refs = [ref for ref in daemon.restore_tests.sources if ref.plan == plan]
    if body.source is not None:
        refs = [ref for ref in refs if ref.source == body.source]
        if not refs:
            return error(404, f"plan {plan!r} has no source {body.source!r}")
    started = [str(ref) for ref in refs if daemon.restore_tests.trigger(ref)]
    busy = [str(ref) for ref in refs if str(ref) not in started]
    if not started:
        return error(409, "a restore test of every requested source is already running", busy=busy)
    return web.json_response({"started": started, "already_running": busy}, status=202)


async def start_drill(request: web.Request) -> web.Response:
    """POST /api/v1/drills {plan, lose_region?}: start a failover drill (coordinator)."""
    body = await read_body(request, DrillRequest)
    daemon = _daemon(request)
    plans = {p.name: p for p in daemon.cfg.plans}
    plan = plans.get(body.plan)
    if plan is None:
        return error(404, f"no plan {body.plan!r}")
    if body.lose_region is not None:
        if body.lose_region not in plan.storage.regions:
            return _bad_field(
                "lose_region",
                f"plan {plan.name} has no region {body.lose_region!r} "
                f"(its regions: {', '.join(plan.storage.regions)})",
            )
        if len(plan.storage.regions) < 2:
            return _bad_field(
                "lose_region", f"losing {body.lose_region!r} leaves plan {plan.name} no region"
            )
    try:
        run = await daemon.drills.start(plan.name, body.lose_region, _requested_by(request))
    except DrillBusy as exc:
        return error(409, str(exc), drill_id=exc.drill_id)
    drill_id = run.report.drill_id
    location = f"/api/v1/drills/{drill_id}"
    return web.json_response(
        {"id": drill_id, "plan": plan.name, "status": run.report.status, "href": location},
        status=202,
        headers={"Location": location},
    )


def _drill_id_or_400(request: web.Request) -> str:
    from drd.verify.drill import is_drill_id

    drill_id = request.match_info["drill_id"]
    if not is_drill_id(drill_id):
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "error": {
                        "code": 400,
                        "message": "id: not a drill id (like 20260601T120000Z-1a2b3c4d)",
                        "field": "id",
                    }
                }
            ),
            content_type="application/json",
        )
    return drill_id


async def get_drill(request: web.Request) -> web.Response:
    """GET /api/v1/drills/{id}: a drill's report (running, or stored in the plan's regions)."""
    drill_id = _drill_id_or_400(request)
    found = await _daemon(request).drills.get(drill_id)
    if found is None:
        return error(404, f"no drill {drill_id}")
    return web.json_response(found)


async def list_drills(request: web.Request) -> web.Response:
    """GET /api/v1/drills?plan=: the newest drills, newest first."""
    from drd.layout import check_name

    plan = request.query.get("plan")
    unknown = sorted(set(request.query) - {"plan"})
    if unknown:
        return _bad_field(unknown[0], "unknown query parameter")
    if plan is not None:
        try:
            check_name("plan", plan)
        except ValueError as exc:
            return _bad_field("plan", str(exc))
        if plan not in {p.name for p in _daemon(request).cfg.plans}:
            return error(404, f"no plan {plan!r}")
    drills = await _daemon(request).drills.list(plan)
    return web.json_response({"drills": drills})


async def cancel_drill(request: web.Request) -> web.Response:
    """POST /api/v1/drills/{id}/cancel: stop a running drill; its scratch is removed."""
    drill_id = _drill_id_or_400(request)
    request[BODY_KEY] = {"id": drill_id}
    daemon = _daemon(request)
    run = daemon.drills.runs.get(drill_id)
    if run is None:
        return error(404, f"no running drill {drill_id}")
    if not run.running:
        return error(409, f"drill {drill_id} is not running (status {run.report.status})")
    await daemon.drills.cancel(drill_id, _requested_by(request))
    report = run.report
    return web.json_response(
        {"id": drill_id, "status": report.status if report.done else "cancelling"},
        status=200 if report.done else 202,
    )


def openapi_document() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    err = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "drd API", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "integer"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                            },
                        }
                    },
                },
                "BackupRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"source": {"type": "string", "pattern": NAME_PATTERN}},
                },
                "DrillRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["plan"],
                    "properties": {
                        "plan": {"type": "string", "pattern": NAME_PATTERN},
                        "lose_region": {
                            "type": "string",
                            "pattern": NAME_PATTERN,
                            "description": "simulate losing this region of the plan: it is "
                            "not read at all, and the report is not written to it",
                        },
                    },
                },
                "Drill": _drill_schema(),
            },
        },
        "paths": {
            "/healthz": {
                "get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "readiness: keys, plans, regions",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/api/v1/status": {
                "get": {
                    "summary": "per plan and source: backups, copies, RPO, RTO",
                    "security": bearer,
                    "responses": {"200": {"description": "status"}, "401": err, "403": err},
                }
            },
            "/api/v1/plans/{plan}/backups": {
                "post": {
                    "summary": "start backups of a plan (or one source) now (operator)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "plan",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": NAME_PATTERN},
                        }
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BackupRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": {"description": "started"},
                        "400": err,
                        "401": err,
                        "403": err,
                        "404": err,
                        "409": err,
                        "413": err,
                    },
                }
            },
            **_openapi_drill_paths(bearer, err),
        },
    }


def _drill_schema() -> dict[str, Any]:
    number = {"type": "number", "nullable": True}
    return {
        "type": "object",
        "description": "a drill's report (drd.verify.drill.DrillReport.as_json)",
        "properties": {
            "id": {"type": "string"},
            "plan": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "passed", "failed", "cancelled"]},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time", "nullable": True},
            "lose_region": {"type": "string", "nullable": True},
            "regions_read": {"type": "array", "items": {"type": "string"}},
            "rto_seconds": number,
            "rpo_seconds": number,
            "rto_target_seconds": {"type": "number"},
            "rpo_target_seconds": {"type": "number"},
            "reasons": {"type": "array", "items": {"type": "object"}},
            "sources": {"type": "array", "items": {"type": "object"}},
            "stored_in": {"type": "array", "items": {"type": "string"}},
        },
    }


def _openapi_drill_paths(bearer: list[dict[str, list[str]]], err: Any) -> dict[str, Any]:
    def path_param(name: str, pattern: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": pattern},
        }

    drill_id = path_param("drill_id", r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
    drill = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Drill"}}}}
    return {
        "/api/v1/plans/{plan}/restore-tests": {
            "post": {
                "summary": "start restore tests of a plan (or one source) now (operator)",
                "security": bearer,
                "parameters": [path_param("plan", NAME_PATTERN)],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/BackupRequest"}
                        }
                    },
                },
                "responses": {
                    "202": {"description": "started"},
                    **{code: err for code in ("400", "401", "403", "404", "409", "413")},
                },
            }
        },
        "/api/v1/drills": {
            "post": {
                "summary": "start a failover drill of a plan (coordinator); one per plan at a time",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/DrillRequest"}
                        }
                    },
                },
                "responses": {
                    "202": {"description": "started: {id, plan, status, href}"},
                    **{code: err for code in ("400", "401", "403", "404", "409", "413")},
                },
            },
            "get": {
                "summary": "the newest drills (of one plan), newest first",
                "security": bearer,
                "parameters": [
                    {
                        "name": "plan",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": NAME_PATTERN},
                    }
                ],
                "responses": {
                    "200": {"description": "{drills: [summary]}"},
                    **{code: err for code in ("400", "401", "403", "404")},
                },
            },
        },
        "/api/v1/drills/{drill_id}": {
            "get": {
                "summary": "a drill's report: running, finished, or stored by an earlier run",
                "security": bearer,
                "parameters": [drill_id],
                "responses": {
                    "200": {"description": "the report", **drill},
                    **{code: err for code in ("400", "401", "403", "404")},
                },
            }
        },
        "/api/v1/drills/{drill_id}/cancel": {
            "post": {
                "summary": "cancel a running drill (coordinator); its scratch is removed",
                "security": bearer,
                "parameters": [drill_id],
                "responses": {
                    "200": {"description": "cancelled"},
                    "202": {"description": "cancelling (clean-up still running)"},
                    **{code: err for code in ("400", "401", "403", "404", "409")},
                },
            }
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def install(app: web.Application, daemon: DaemonControl) -> None:
    """Add authentication, audit and the API routes to the daemon's application."""
    app[API_CONFIG_KEY] = daemon.cfg.api
    app[AUTHORITY_KEY] = TokenAuthority(daemon.cfg.api.tokens)
    app[AUDIT_KEY] = daemon.audit  # one trail for API calls and drills
    app.middlewares.append(security)
    app.router.add_get("/api/v1/openapi.json", openapi, name="openapi")
    app.router.add_post("/api/v1/plans/{plan}/backups", start_backups, name="plan-backups")
    app.router.add_post(
        "/api/v1/plans/{plan}/restore-tests", start_restore_tests, name="plan-restore-tests"
    )
    app.router.add_post("/api/v1/drills", start_drill, name="drills-start")
    app.router.add_get("/api/v1/drills", list_drills, name="drills-list")
    app.router.add_get("/api/v1/drills/{drill_id}", get_drill, name="drill")
    app.router.add_post("/api/v1/drills/{drill_id}/cancel", cancel_drill, name="drill-cancel")
