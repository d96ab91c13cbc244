"""The daemon's HTTP endpoint: the aiohttp application over the route table, and its server.

The daemon starts it with itself (`start_http(daemon, listen)`); the handlers see it only as
a drd.server.ports.DaemonControl.
"""

from __future__ import annotations

from aiohttp import web

from drd.server.auth import TokenAuthority
from drd.server.keys import API_CONFIG_KEY, AUDIT_KEY, AUTHORITY_KEY, DAEMON_KEY, MAX_BODY
from drd.server.ports import DaemonControl
from drd.server.routes import ROUTES
from drd.server.security import security


def make_app(daemon: DaemonControl) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[security])
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


async def start_http(daemon: DaemonControl, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
    await site.start()
    return runner
