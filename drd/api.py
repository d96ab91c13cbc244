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
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drd import __version__
from drd.audit import AuditLog
from drd.auth import ANONYMOUS, Principal, TokenAuthority
from drd.config import ApiConfig
from strategies.base import NAME_PATTERN

if TYPE_CHECKING:
    from drd.daemon import Daemon

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # larger bodies get 413 before a handler sees them

AUTHORITY_KEY: web.AppKey[TokenAuthority] = web.AppKey("authority")
AUDIT_KEY: web.AppKey[AuditLog] = web.AppKey("audit")
API_CONFIG_KEY: web.AppKey[ApiConfig] = web.AppKey("api_config")
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
BODY_KEY: web.RequestKey[object] = web.RequestKey("body", object)

# route name -> permission: None (public), "read", "metrics", or a role name
ROUTE_PERMISSIONS: dict[str, str | None] = {
    "healthz": None,
    "readyz": None,
    "openapi": None,
    "metrics": "metrics",
    "status": "read",
    "plan-backups": "operator",
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


def _daemon(request: web.Request) -> Daemon:
    from drd.http import DAEMON_KEY

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
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def install(app: web.Application, daemon: Daemon) -> None:
    """Add authentication, audit and the API routes to the daemon's application."""
    app[API_CONFIG_KEY] = daemon.cfg.api
    app[AUTHORITY_KEY] = TokenAuthority(daemon.cfg.api.tokens)
    app[AUDIT_KEY] = AuditLog(daemon.cfg.state_dir / "audit.jsonl", daemon.regions, daemon.keyring)
    app.middlewares.append(security)
    app.router.add_get("/api/v1/openapi.json", openapi, name="openapi")
    app.router.add_post("/api/v1/plans/{plan}/backups", start_backups, name="plan-backups")
