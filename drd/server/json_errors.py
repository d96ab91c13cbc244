"""Every error the endpoint answers is the JSON error body (drd.server.models.Error), whoever
produced it: aiohttp's router (404 for an unknown path, 405 for a method the path does not
take, with its Allow header), aiohttp's body limit (413), and an unexpected exception in a
handler (500, logged here with its traceback; the caller gets no internals)."""

from __future__ import annotations

import logging

from aiohttp import web

from drd.server.bodies import error
from drd.server.keys import MAX_BODY
from drd.server.openapi import Handler

log = logging.getLogger(__name__)

#: headers of aiohttp's own answer that describe its plain-text body, not the error
_BODY_HEADERS = {"content-type", "content-length"}


def _message(request: web.Request, exc: web.HTTPException) -> str:
    path = request.path[:200]
    if isinstance(exc, web.HTTPNotFound):
        return f"no such path: {path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {path} (allowed: {allowed})"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"the body is larger than {MAX_BODY // 1024} KiB"
    return exc.reason


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return error(exc.status, _message(request, exc), headers=headers)
    except Exception:
        log.exception("API %s %s: unexpected error", request.method, request.path[:200])
        return error(500, "internal error (drd logged it)")
