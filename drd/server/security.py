"""Who may call what, and the audit trail of what they did.

Every route has a required permission (drd.server.routes): public probes, reads (viewer, or
anyone when `api.public_read`), metrics (anyone unless `api.public_metrics` is off), on-demand
jobs (operator) and drills (coordinator). A missing or unknown token is 401, a role that is not
enough 403. Every request that asks to change something, refused ones included, is written to
the audit trail with the caller's token name, role, the request (bounded, secrets redacted),
the outcome and why it was refused; tokens themselves are never logged or stored.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from drd.server.audit import bounded_body
from drd.server.auth import ANONYMOUS, Principal
from drd.server.bodies import error
from drd.server.keys import API_CONFIG_KEY, AUDIT_KEY, AUTHORITY_KEY, BODY_KEY, PRINCIPAL_KEY
from drd.server.openapi import Handler, Permission
from drd.server.routes import ROUTES

#: route name -> permission
PERMISSIONS: dict[str, Permission] = {route.name: route.permission for route in ROUTES}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _needed_role(request: web.Request, permission: Permission) -> str | None:
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
    if name is None or name not in PERMISSIONS:
        # Unknown paths and methods: let aiohttp answer 404/405, never anything else.
        return await handler(request)
    needed = _needed_role(request, PERMISSIONS[name])
    principal = request.app[AUTHORITY_KEY].authenticate(request.headers.get("Authorization"))
    if needed is not None:
        if principal is None:
            why = "a valid bearer token is required"
            presented = "Authorization" in request.headers
            await _audit(
                request, ANONYMOUS, 401, None, why="bad token" if presented else "no token"
            )
            return error(401, why, headers={"WWW-Authenticate": 'Bearer realm="drd"'})
        if not principal.allows(needed):
            why = f"role {principal.role!r} may not do this (needs {needed!r})"
            await _audit(request, principal, 403, None, why=why)
            return error(403, why)
    request[PRINCIPAL_KEY] = principal or ANONYMOUS
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        # A 400 keeps the body it refused (bounded, secrets redacted); a 413 has none.
        await _audit(
            request, principal or ANONYMOUS, exc.status, request.get(BODY_KEY), why=exc.text
        )
        raise
    await _audit(request, principal or ANONYMOUS, response.status, request.get(BODY_KEY))
    return response


async def _audit(
    request: web.Request,
    principal: Principal,
    status: int,
    body: Any,
    *,
    why: str | None = None,
) -> None:
    """One record for a request that asks to change something, whatever its answer."""
    if request.method not in MUTATING:
        return
    record: dict[str, Any] = {
        "event": "api",
        "token": principal.name,
        "role": principal.role,
        "method": request.method,
        "path": request.path,
        "request": bounded_body(body),
        "status": status,
        "outcome": "ok" if status < 400 else "refused",
        "remote": request.remote,
    }
    if status >= 400 and why:
        record["why"] = _error_message(why)[:500]
    await request.app[AUDIT_KEY].record(record)


def _error_message(text: str) -> str:
    """The message of a JSON error body, or the text itself."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return str(parsed["error"].get("message", text))
    return text
