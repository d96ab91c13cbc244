"""The API's actions: on-demand backups and restore tests, and failover drills.

Who may call them, and the audit trail, are drd.server.security's; the bodies they read and
write are drd.server.models's; the routes are drd.server.routes's.
"""

from __future__ import annotations

from aiohttp import web

from drd.errors import DrillBusy
from drd.layout import SourceRef, check_name, is_backup_id
from drd.server.bodies import bad_field, error, read_body, refusal, reply
from drd.server.keys import BODY_KEY, DAEMON_KEY, PRINCIPAL_KEY
from drd.server.models import (
    BackupRequest,
    Drill,
    DrillCancelled,
    DrillList,
    DrillListQuery,
    DrillRequest,
    DrillStarted,
    Job,
    RunsStarted,
)
from drd.server.ports import DaemonControl
from drd.verify.drill import is_drill_id
from drd.verify.drill_html import render_drill_html
from drd.verify.html_page import CSP


def _daemon(request: web.Request) -> DaemonControl:
    return request.app[DAEMON_KEY]


def plan_or_404(request: web.Request) -> str:
    plan = request.match_info["plan"]
    if plan not in {p.name for p in _daemon(request).cfg.plans}:
        raise refusal(web.HTTPNotFound, f"no plan {plan!r}")
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
    started = [ref for ref in refs if daemon.trigger(ref)]
    busy = [str(ref) for ref in refs if ref not in started]
    if not started:
        return error(409, "a backup of every requested source is already running", busy=busy)
    job = daemon.request_jobs("backup", plan, started, _requested_by(request))
    return _started(job.id, started, busy)


def _started(job_id: str, started: list[SourceRef], busy: list[str]) -> web.Response:
    location = f"/api/v1/jobs/{job_id}"
    body = RunsStarted(
        id=job_id, href=location, started=[str(r) for r in started], already_running=busy
    )
    return reply(body, 202, headers={"Location": location})


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
    started = [ref for ref in refs if daemon.restore_tests.trigger(ref)]
    busy = [str(ref) for ref in refs if ref not in started]
    if not started:
        return error(409, "a restore test of every requested source is already running", busy=busy)
    job = daemon.request_jobs("restore-test", plan, started, _requested_by(request))
    return _started(job.id, started, busy)


async def get_job(request: web.Request) -> web.Response:
    """GET /api/v1/jobs/{id}: an on-demand request's jobs and how they went."""
    job_id = request.match_info["job_id"]
    if not is_backup_id(job_id):
        raise refusal(
            web.HTTPBadRequest,
            "id: not a job id (like 20260601T120000Z-1a2b3c4d)",
            field="id",
        )
    job = _daemon(request).job_request(job_id)
    if job is None:
        return error(404, f"no job {job_id} (jobs are kept while the daemon runs)")
    return reply(Job.model_validate(job.as_json()))


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
            return bad_field(
                "lose_region",
                f"plan {plan.name} has no region {body.lose_region!r} "
                f"(its regions: {', '.join(plan.storage.regions)})",
            )
        if len(plan.storage.regions) < 2:
            return bad_field(
                "lose_region", f"losing {body.lose_region!r} leaves plan {plan.name} no region"
            )
    try:
        run = await daemon.drills.start_drill(plan.name, body.lose_region, _requested_by(request))
    except DrillBusy as exc:
        return error(409, str(exc), drill_id=exc.drill_id)
    drill_id = run.report.drill_id
    location = f"/api/v1/drills/{drill_id}"
    started = DrillStarted(id=drill_id, plan=plan.name, status=run.report.status, href=location)
    return reply(started, 202, headers={"Location": location})


def _drill_id_or_400(request: web.Request) -> str:
    drill_id = request.match_info["drill_id"]
    if not is_drill_id(drill_id):
        raise refusal(
            web.HTTPBadRequest,
            "id: not a drill id (like 20260601T120000Z-1a2b3c4d)",
            field="id",
        )
    return drill_id


async def get_drill(request: web.Request) -> web.Response:
    """GET /api/v1/drills/{id}: a drill's report (running, or stored in the plan's regions)."""
    drill_id = _drill_id_or_400(request)
    found = await _daemon(request).drills.get(drill_id)
    if found is None:
        return error(404, f"no drill {drill_id}")
    return reply(Drill.model_validate(found))


async def get_drill_html(request: web.Request) -> web.Response:
    """GET /api/v1/drills/{id}/report.html: the drill's one-page report, with its plan's last
    drills (drd.verify.drill_html)."""
    drill_id = _drill_id_or_400(request)
    drills = _daemon(request).drills
    found = await drills.get(drill_id)
    if found is None:
        return error(404, f"no drill {drill_id}")
    plan = found.get("plan")
    known = {p.name for p in _daemon(request).cfg.plans}
    # A stored report of a plan no longer configured still renders, without its history.
    history = await drills.list(plan) if isinstance(plan, str) and plan in known else []
    return web.Response(
        text=render_drill_html(found, history),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
    )


async def list_drills(request: web.Request) -> web.Response:
    """GET /api/v1/drills?plan=: the newest drills, newest first."""
    unknown = sorted(set(request.query) - set(DrillListQuery.model_fields))
    if unknown:
        return bad_field(unknown[0], "unknown query parameter")
    plan = request.query.get("plan")
    if plan is not None:
        try:
            check_name("plan", plan)
        except ValueError as exc:
            return bad_field("plan", str(exc))
        if plan not in {p.name for p in _daemon(request).cfg.plans}:
            return error(404, f"no plan {plan!r}")
    drills = await _daemon(request).drills.list(plan)
    return reply(DrillList.model_validate({"drills": drills}))


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
    cancelled = DrillCancelled(id=drill_id, status=report.status if report.done else "cancelling")
    return reply(cancelled, 200 if report.done else 202)
