"""The daemon's HTTP endpoint: /metrics, /healthz, /readyz, /api/v1/status."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from drd.server import api
from drd.server.keys import DAEMON_KEY, MAX_BODY
from drd.server.ports import DaemonControl


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    daemon.refresh_metrics()
    body = generate_latest(daemon.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready = keys loaded, plans valid (both true once the daemon runs), every region answers,
    and no region's deletion settings (as of the last retention sweep) break the promise that
    backups are destroyed within max_age."""
    daemon = request.app[DAEMON_KEY]
    problems = {name: p for name, p in (await daemon.probe_regions()).items() if p}
    retention = daemon.retention.problems()
    checks: dict[str, Any] = {
        "keys": "ok",
        "plans": "ok",
        "regions": {name: problems.get(name, "ok") for name in daemon.regions},
        "retention": {name: "; ".join(retention.get(name, [])) or "ok" for name in daemon.regions},
    }
    reasons = []
    if problems:
        reasons.append("unreachable region(s): " + ", ".join(sorted(problems)))
    if retention:
        reasons.append(
            "cannot destroy backups in time in region(s): " + ", ".join(sorted(retention))
        )
    if reasons:
        return web.json_response(
            {"status": "unready", "reason": "; ".join(reasons), "checks": checks}, status=503
        )
    return web.json_response({"status": "ready", "checks": checks})


async def status(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    now = daemon.clock()
    plans: dict[str, Any] = {}
    for st in daemon.sources.values():
        plan = plans.setdefault(
            st.plan.name,
            {
                "owner": st.plan.owner,
                "reviewed_on": st.plan.reviewed_on.isoformat(),
                "min_copies": st.plan.storage.min_copies,
                "rpo_target_seconds": st.plan.targets.rpo.total_seconds(),
                "rto_target_seconds": st.plan.targets.rto.total_seconds(),
                "sources": {},
            },
        )
        rpo = (now - st.last_capture).total_seconds() if st.last_capture else None
        plan["sources"][st.ref.source] = {
            "kind": st.source.kind,
            "last_backup": {
                "backup_id": st.last_backup_id,
                "captured_at": st.last_capture.isoformat() if st.last_capture else None,
                "stored_bytes": st.stored_bytes,
                "source_bytes": st.source_bytes,
            },
            "copies": st.copies,
            "rpo_seconds": rpo,
            "rpo_ok": rpo is not None and rpo <= st.plan.targets.rpo.total_seconds(),
            "last_job": {
                "status": st.last_status,
                "error": st.last_error,
                "finished_at": st.last_finished.isoformat() if st.last_finished else None,
            },
            "running": st.running,
            "next_due": st.next_due.isoformat() if st.next_due else None,
            # rto_seconds, rto_ok, last_restore_test (phases, region, result), restore_test
            **daemon.restore_tests.status(st.ref),
        }
    return web.json_response({"now": now.isoformat(), "plans": plans})


def make_app(daemon: DaemonControl) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[DAEMON_KEY] = daemon
    app.router.add_get("/metrics", metrics, name="metrics")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/api/v1/status", status, name="status")
    api.install(app, daemon)
    return app


async def start_http(daemon: DaemonControl, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
    await site.start()
    return runner
