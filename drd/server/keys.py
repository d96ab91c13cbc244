"""What the app, its middleware and its handlers share: the keys under which make_app keeps
the daemon and the API's settings on the application, and the security middleware the caller
and the parsed body on each request; and the largest body read."""

from __future__ import annotations

from aiohttp import web

from drd.config.models import ApiConfig
from drd.server.audit import AuditLog
from drd.server.auth import Principal, TokenAuthority
from drd.server.ports import DaemonControl

MAX_BODY = 64 * 1024  # larger bodies get 413 before a handler sees them

DAEMON_KEY: web.AppKey[DaemonControl] = web.AppKey("daemon")
AUTHORITY_KEY: web.AppKey[TokenAuthority] = web.AppKey("authority")
AUDIT_KEY: web.AppKey[AuditLog] = web.AppKey("audit")
API_CONFIG_KEY: web.AppKey[ApiConfig] = web.AppKey("api_config")
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
BODY_KEY: web.RequestKey[object] = web.RequestKey("body", object)
