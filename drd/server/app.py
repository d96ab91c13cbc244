"""The daemon's HTTP endpoint: the aiohttp application over the route table, and its server
(HTTPS with api.tls, connections bounded).

The daemon starts it with itself (`start_http(daemon, listen)`); the handlers see it only as
a drd.server.ports.DaemonControl.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from drd.config.models import ApiTls
from drd.errors import ConfigError
from drd.secret_source import credential_path
from drd.server import connections
from drd.server.auth import TokenAuthority
from drd.server.json_errors import json_errors
from drd.server.keys import API_CONFIG_KEY, AUDIT_KEY, AUTHORITY_KEY, DAEMON_KEY, MAX_BODY
from drd.server.ports import DaemonControl
from drd.server.routes import ROUTES
from drd.server.security import security


def make_app(daemon: DaemonControl) -> web.Application:
    # json_errors outside security: the errors the audit records are answered as JSON too.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors, security])
    app[DAEMON_KEY] = daemon
    app[API_CONFIG_KEY] = daemon.cfg.api
    app[AUTHORITY_KEY] = TokenAuthority(daemon.cfg.api.tokens)
    app[AUDIT_KEY] = daemon.audit  # one trail for API calls and drills
    for route in ROUTES:
        if route.method == "GET":  # and HEAD
            app.router.add_get(route.path, route.handler, name=route.name)
        else:
            app.router.add_route(route.method, route.path, route.handler, name=route.name)
    return app


def tls_context(tls: ApiTls, credentials_dir: str | None = None) -> ssl.SSLContext:
    """A server context (TLS 1.2 at least) from the certificate and key credentials. Errors
    name the credential, never its content."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    certificate = credential_path(
        tls.certificate, what="api.tls.certificate", directory=credentials_dir
    )
    key = credential_path(tls.key, what="api.tls.key", directory=credentials_dir)
    try:
        context.load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            f"api.tls: credentials {tls.certificate!r} and {tls.key!r} are not a PEM "
            f"certificate chain and its private key ({reason})"
        ) from None
    return context


async def start_http(
    daemon: DaemonControl, listen: str, tls: ApiTls | None = None
) -> web.AppRunner:
    """Serve the app on `listen` (HTTPS with `tls`), its connections bounded
    (drd.server.connections): a client holding sockets open can neither stall the probes nor
    exhaust the process's files."""
    context = tls_context(tls) if tls is not None else None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(
        make_app(daemon), access_log=None, keepalive_timeout=connections.KEEPALIVE_SECONDS
    )
    await runner.setup()
    site = connections.GuardedSite(
        runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=context
    )
    await site.start()
    return runner
