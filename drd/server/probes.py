"""The daemon's own endpoints: /metrics, /healthz, /readyz and /api/v1/status."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from drd.config.models import Plan
from drd.server.bodies import reply
from drd.server.keys import DAEMON_KEY
from drd.server.models import (
    Health,
    LastBackup,
    LastJob,
    PlanStatus,
    Readiness,
    ReadinessChecks,
    RunningJob,
    SourceStatus,
    Status,
)


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    daemon.refresh_metrics()
    body = generate_latest(daemon.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return reply(Health(status="ok"))


def min_copies_problems(plans: Sequence[Plan], down: Collection[str]) -> dict[str, str]:
    """Plan -> why it cannot commit a backup now ("ok" when it can): fewer of its own regions
    are up than its storage.min_copies."""
    out = {}
    for plan in plans:
        regions = plan.storage.regions
        up = [r for r in regions if r not in down]
        need = plan.storage.min_copies
        if len(up) >= need:
            out[plan.name] = "ok"
            continue
        lost = [r for r in regions if r in down]
        out[plan.name] = (
            f"min_copies is {need} but only {len(up)} of its regions "
            f"{'is' if len(up) == 1 else 'are'} up ({', '.join(up) or 'none'}); "
            f"down: {', '.join(lost)}"
        )
    return out


async def readyz(request: web.Request) -> web.Response:
    """Ready = keys loaded, plans valid (both true once the daemon runs), every plan has
    min_copies of its regions up, no region's deletion settings (as of the last retention
    sweep) break the promise that backups are destroyed within max_age, and the state
    directory is writable; and not before the daemon's first probe round has finished.

    A region that is down does not make drd unready while every plan can still commit its
    backups elsewhere: taking drd out of service during a regional outage would stop the very
    backups that still work. The per-region answers are in `checks.regions` either way.

    Regions are not asked here: their health is what the last operation or the periodic probe
    found (drd.storage.health), so a region that hangs cannot make this answer late, and a
    readiness check polled every few seconds costs the regions nothing."""
    daemon = request.app[DAEMON_KEY]
    problems = {name: p for name, p in daemon.region_problems().items() if p}
    retention = daemon.retention.problems()
    copies = min_copies_problems(daemon.cfg.plans, problems)
    short = {plan: why for plan, why in copies.items() if why != "ok"}
    checks = ReadinessChecks(
        keys="ok",
        plans="ok",
        regions={name: problems.get(name, "ok") for name in daemon.regions},
        min_copies=copies,
        retention={name: "; ".join(retention.get(name, [])) or "ok" for name in daemon.regions},
        state=daemon.state_problem or "ok",
    )
    reasons = []
    if not daemon.regions_probed:
        # Until every region was asked once, "up" would only mean "not asked yet".
        reasons.append("waiting for the first probe round of the regions")
    if short:
        reasons.append(
            "plan(s) cannot meet min_copies: "
            + "; ".join(f"{plan}: {why}" for plan, why in sorted(short.items()))
        )
    if retention:
        reasons.append(
            "cannot destroy backups in time in region(s): " + ", ".join(sorted(retention))
        )
    if daemon.state_problem:
        reasons.append(f"state directory not writable: {daemon.state_problem}")
    if reasons:
        return reply(Readiness(status="unready", reason="; ".join(reasons), checks=checks), 503)
    return reply(Readiness(status="ready", checks=checks))


async def status(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    now = daemon.clock()
    plans: dict[str, PlanStatus] = {}
    for st in daemon.sources.values():
        plan = plans.get(st.plan.name)
        if plan is None:
            plan = plans[st.plan.name] = PlanStatus(
                owner=st.plan.owner,
                reviewed_on=st.plan.reviewed_on.isoformat(),
                min_copies=st.plan.storage.min_copies,
                rpo_target_seconds=st.plan.targets.rpo.total_seconds(),
                rto_target_seconds=st.plan.targets.rto.total_seconds(),
                sources={},
            )
        rpo = (now - st.last_capture).total_seconds() if st.last_capture else None
        # rto_seconds, rto_ok, last_restore_test (phases, region, result), restore_test
        restore_tests: dict[str, Any] = dict(daemon.restore_tests.status(st.ref))
        plan.sources[st.ref.source] = SourceStatus(
            kind=st.source.kind,
            last_backup=LastBackup(
                backup_id=st.last_backup_id,
                captured_at=st.last_capture.isoformat() if st.last_capture else None,
                stored_bytes=st.stored_bytes,
                source_bytes=st.source_bytes,
            ),
            copies=dict(st.copies),
            rpo_seconds=rpo,
            rpo_ok=rpo is not None and rpo <= st.plan.targets.rpo.total_seconds(),
            last_job=LastJob.model_validate(
                {
                    "status": st.last_status,
                    "error": st.last_error,
                    "finished_at": st.last_finished.isoformat() if st.last_finished else None,
                }
            ),
            running=st.running,
            next_due=st.next_due.isoformat() if st.next_due else None,
            **restore_tests,
        )
    jobs = [RunningJob.model_validate(snap.as_json()) for snap in daemon.running_jobs()]
    return reply(Status(now=now.isoformat(), plans=plans, jobs=jobs))
