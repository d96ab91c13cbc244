"""Every route of the daemon's HTTP endpoint, once: make_app registers them, the security
middleware takes each one's permission from here, and /api/v1/openapi.json is generated from
them (drd.server.openapi)."""

from __future__ import annotations

import functools

from aiohttp import web

from drd import __version__
from drd.server import api, probes
from drd.server.bodies import dump
from drd.server.models import (
    BackupRequest,
    Drill,
    DrillCancelled,
    DrillList,
    DrillListQuery,
    DrillPath,
    DrillRequest,
    DrillStarted,
    Error,
    Health,
    Job,
    JobPath,
    OpenApiDocument,
    PlanPath,
    Readiness,
    RunsStarted,
    Status,
)
from drd.server.openapi import Reply, Route, openapi_document


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(dump(document()))


def _error(description: str) -> Reply:
    return Reply(description, Error)


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/metrics",
        name="metrics",
        operation_id="getMetrics",
        handler=probes.metrics,
        permission="metrics",
        summary="Prometheus metrics",
        replies={200: Reply("the text exposition format", text="text/plain")},
    ),
    Route(
        "GET",
        "/healthz",
        name="healthz",
        operation_id="getHealth",
        handler=probes.healthz,
        permission=None,
        summary="liveness",
        replies={200: Reply("alive", Health)},
    ),
    Route(
        "GET",
        "/readyz",
        name="readyz",
        operation_id="getReadiness",
        handler=probes.readyz,
        permission=None,
        summary="readiness: keys, plans, min_copies regions up for every plan, retention "
        "settings, the state directory",
        replies={
            200: Reply("ready (a region may be down: `checks.regions`)", Readiness),
            503: Reply("not ready: `reason` says why", Readiness),
        },
    ),
    Route(
        "GET",
        "/api/v1/status",
        name="status",
        operation_id="getStatus",
        handler=probes.status,
        permission="read",
        summary="per plan and source: backups, copies, RPO, RTO, restore tests",
        replies={200: Reply("status", Status)},
    ),
    Route(
        "GET",
        "/api/v1/openapi.json",
        name="openapi",
        operation_id="getOpenApi",
        handler=openapi,
        permission=None,
        summary="this document",
        replies={200: Reply("the OpenAPI description of this API", OpenApiDocument)},
    ),
    Route(
        "POST",
        "/api/v1/plans/{plan}/backups",
        name="plan-backups",
        operation_id="startBackups",
        handler=api.start_backups,
        permission="operator",
        summary="start backups of a plan (or one source) now",
        replies={
            202: Reply(
                "started (Location: the job; those already running are listed)", RunsStarted
            ),
            404: _error("no such plan, or the plan has no such source"),
            409: _error("a backup of every requested source is already running (`busy`)"),
        },
        body=BackupRequest,
        path_params=PlanPath,
    ),
    Route(
        "POST",
        "/api/v1/plans/{plan}/restore-tests",
        name="plan-restore-tests",
        operation_id="startRestoreTests",
        handler=api.start_restore_tests,
        permission="operator",
        summary="start restore tests of a plan (or one source) now",
        replies={
            202: Reply(
                "started (Location: the job; those already running are listed)", RunsStarted
            ),
            404: _error("no such plan, or the plan has no such source"),
            409: _error("a restore test of every requested source is already running (`busy`)"),
        },
        body=BackupRequest,
        path_params=PlanPath,
    ),
    Route(
        "GET",
        "/api/v1/jobs/{job_id}",
        name="job",
        operation_id="getJob",
        handler=api.get_job,
        permission="read",
        summary="an on-demand backup or restore-test request: its jobs' state and results",
        replies={
            200: Reply("the jobs, one per source", Job),
            400: _error("not a job id"),
            404: _error("no such job (jobs are kept in memory while the daemon runs)"),
        },
        path_params=JobPath,
    ),
    Route(
        "POST",
        "/api/v1/drills",
        name="drills-start",
        operation_id="startDrill",
        handler=api.start_drill,
        permission="coordinator",
        summary="start a failover drill of a plan; one per plan at a time",
        replies={
            202: Reply("started (Location: the report)", DrillStarted),
            404: _error("no such plan"),
            409: _error("a drill of the plan is running (`drill_id`), or drd is stopping"),
        },
        body=DrillRequest,
        body_required=True,
    ),
    Route(
        "GET",
        "/api/v1/drills",
        name="drills-list",
        operation_id="listDrills",
        handler=api.list_drills,
        permission="read",
        summary="the newest drills (of one plan), newest first",
        replies={
            200: Reply("the drills' summaries", DrillList),
            400: _error("an unknown query parameter, or not a plan name"),
            404: _error("no such plan"),
        },
        query=DrillListQuery,
    ),
    Route(
        "GET",
        "/api/v1/drills/{drill_id}",
        name="drill",
        operation_id="getDrill",
        handler=api.get_drill,
        permission="read",
        summary="a drill's report: running, finished, or stored by an earlier run",
        replies={
            200: Reply("the report", Drill),
            400: _error("not a drill id"),
            404: _error("no such drill"),
        },
        path_params=DrillPath,
    ),
    Route(
        "GET",
        "/api/v1/drills/{drill_id}/report.html",
        name="drill-html",
        operation_id="getDrillHtml",
        handler=api.get_drill_html,
        permission="read",
        summary="a drill's one-page HTML report (self-contained: inline CSS and SVG, no script)",
        replies={
            200: Reply("the page", text="text/html"),
            400: _error("not a drill id"),
            404: _error("no such drill"),
        },
        path_params=DrillPath,
    ),
    Route(
        "POST",
        "/api/v1/drills/{drill_id}/cancel",
        name="drill-cancel",
        operation_id="cancelDrill",
        handler=api.cancel_drill,
        permission="coordinator",
        summary="cancel a running drill; its scratch environments are removed",
        replies={
            200: Reply("cancelled", DrillCancelled),
            202: Reply("cancelling (the clean-up still runs)", DrillCancelled),
            400: _error("not a drill id"),
            404: _error("no running drill of that id"),
            409: _error("the drill is not running"),
        },
        path_params=DrillPath,
    ),
)


@functools.cache
def document() -> OpenApiDocument:
    return openapi_document(ROUTES, title="drd API", version=__version__)
