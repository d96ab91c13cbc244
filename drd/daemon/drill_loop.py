"""The daemon's failover drills: one at a time per plan, as tasks, cancellable, audited.

- `start_drill(plan, lose_region, requested_by)` begins a drill (drd.verify.drill.run_drill) in
  its own task and returns at once; DrillBusy (409 at the API) while a drill of the plan is
  running.
- `cancel(id)` sets the drill's cancel event: the running restore test is cancelled, its scratch
  environment removed, and the report stored with status `cancelled`.
- State: the drills of this process in memory, and the reports stored in the plan's regions
  (`_drills/<plan>/<id>/report.json`): `get(id)` and `list(plan)` find drills of earlier runs of
  the daemon there. At start the newest stored report of each plan feeds the drill metrics.
- Every start, cancel request and finish is a `drill` event in the audit trail (who asked, the
  request, the outcome with RTO, RPO and reasons).
- The manager follows drd.daemon.lifecycle like the daemon's other loops, but drills start on
  request only: nothing is ever due, so `run_once()` starts nothing and `start()` runs no task.
  `close(grace)` cancels running drills at once and gives their clean-up `grace` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drd.config.models import Plan
from drd.daemon.lifecycle import drain
from drd.errors import DrdError, DrillBusy
from drd.logs import log_context
from drd.runtime import Services
from drd.server.audit import AuditLog
from drd.verify.drill import (
    DrillReport,
    api_json,
    is_drill_id,
    new_report,
    read_stored_report,
    run_drill,
    stored_drill_ids,
)
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

#: how long `cancel` waits for the drill's clean-up before answering "cancelling"
CANCEL_WAIT_SECONDS = 30.0
#: finished drills kept in memory (older ones are read back from storage)
KEEP_FINISHED = 50


@dataclass
class DrillRun:
    report: DrillReport
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


def summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """A drill's line in a listing, from its report's JSON."""
    keys = (
        "id",
        "plan",
        "status",
        "started_at",
        "finished_at",
        "lose_region",
        "rto_seconds",
        "rpo_seconds",
        "rto_ok",
        "rpo_ok",
    )
    out = {k: data.get(k) for k in keys}
    out["reasons"] = sorted({r["code"] for r in data.get("reasons", []) if isinstance(r, dict)})
    return out


async def audit_drill(
    audit: AuditLog | None, report: DrillReport, action: str, **extra: Any
) -> None:
    """One `drill` record in the audit trail; never a token, only who held it."""
    if audit is None:
        return
    record: dict[str, Any] = {
        "event": "drill",
        "action": action,
        "drill_id": report.drill_id,
        "plan": report.plan,
        "lose_region": report.lose_region,
        **report.requested_by,
        "request": {"plan": report.plan, "lose_region": report.lose_region},
    }
    if action == "finish":
        record["outcome"] = report.status
        record["rto_seconds"] = report.as_json()["rto_seconds"]
        record["rpo_seconds"] = report.as_json()["rpo_seconds"]
        record["reasons"] = [r["code"] for r in report.reasons]
        record["stored_in"] = report.stored_in
    record.update(extra)
    try:
        await audit.record(record)
    except OSError as exc:  # the drill is not undone because the trail could not be written
        log.error("audit: could not record drill %s %s: %s", report.drill_id, action, exc)


class DrillManager:
    def __init__(
        self,
        services: Services,
        audit: AuditLog | None,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.services = services
        self.audit = audit
        #: told when a drill starts and ends (the daemon's STATUS=)
        self.on_change = on_change
        self.runs: dict[str, DrillRun] = {}
        self.stopping = False

    async def reconfigure(self, services: Services) -> None:
        """A reload: drills of the new config's plans from now on (a running drill of a plan
        the reload removed finishes); the drill metrics of added plans from their reports."""
        known = {p.name for p in self.services.cfg.plans}
        self.services = services
        await self.load_state([p for p in services.cfg.plans if p.name not in known])

    def plan(self, name: str) -> Plan:
        return self.services.cfg.plan(name)

    def running(self, plan: str) -> DrillRun | None:
        return next((r for r in self.runs.values() if r.report.plan == plan and r.running), None)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]

    async def start_drill(
        self, plan_name: str, lose_region: str | None, requested_by: Mapping[str, str]
    ) -> DrillRun:
        """Start a drill; UsageError for a bad lose_region, DrillBusy if one is running."""
        if self.stopping:
            raise DrillBusy("drd is shutting down", "")
        plan = self.plan(plan_name)
        busy = self.running(plan.name)
        if busy is not None:
            raise DrillBusy(
                f"drill {busy.report.drill_id} of plan {plan.name} is already running",
                busy.report.drill_id,
            )
        report = new_report(
            plan, lose_region=lose_region, clock=self.services.clock, requested_by=requested_by
        )
        run = DrillRun(report)
        # Registered before the first await: a second start sees it as running.
        self.runs[report.drill_id] = run
        run.task = asyncio.create_task(self._run(run, plan), name=f"drill:{report.drill_id}")
        self._forget_old()
        await audit_drill(self.audit, report, "start", outcome="started")
        return run

    async def _run(self, run: DrillRun, plan: Plan) -> None:
        with log_context(job="drill", plan=plan.name, drill_id=run.report.drill_id):
            self.on_change()
            try:
                await self._drill(run, plan)
            finally:
                if plan.name not in {p.name for p in self.services.cfg.plans}:
                    self.services.metrics.forget(plan.name)  # a reload removed the plan
                # The task counts as running until this returns.
                asyncio.get_running_loop().call_soon(self.on_change)

    async def _drill(self, run: DrillRun, plan: Plan) -> None:
        report, services = run.report, self.services
        try:
            await run_drill(
                plan,
                services.regions,
                services.keyring,
                state_dir=services.state_dir,
                base_dir=services.base_dir,
                metrics=services.metrics,
                clock=services.clock,
                cancel=run.cancel,
                report=report,
                board=services.progress,
            )
        except asyncio.CancelledError:
            await run_to_completion(audit_drill(self.audit, report, "finish"))
            raise
        except Exception as exc:  # never fatal to the daemon; the report says so
            log.exception("drill %s could not run", report.drill_id)
            report.status = "failed"
            report.finished_at = services.clock()
            report.fail("error", f"{type(exc).__name__}: {exc}")
            services.metrics.drill_last_status.labels(report.plan).set(0)
        await audit_drill(self.audit, report, "finish")

    async def cancel(self, drill_id: str, requested_by: Mapping[str, str]) -> DrillRun | None:
        """Ask a running drill to stop and wait (a while) for its clean-up. None if unknown."""
        run = self.runs.get(drill_id)
        if run is None:
            return None
        if run.running:
            await audit_drill(
                self.audit, run.report, "cancel", outcome="cancelling", cancelled_by=requested_by
            )
            run.cancel.set()
            assert run.task is not None
            await asyncio.wait({run.task}, timeout=CANCEL_WAIT_SECONDS)
        return run

    async def get(self, drill_id: str) -> dict[str, Any] | None:
        """A drill's report: this process's, else the stored one of any plan."""
        if not is_drill_id(drill_id):
            return None
        run = self.runs.get(drill_id)
        if run is not None:
            return run.report.as_json()
        regions, keyring = self.services.regions, self.services.keyring
        for plan in self.services.cfg.plans:
            found = await read_stored_report(plan, regions, keyring, drill_id)
            if found is not None:
                return api_json(found)
        return None

    async def list(self, plan_name: str | None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest drills (of a plan, or of every plan), newest first."""
        plans = [self.plan(plan_name)] if plan_name else list(self.services.cfg.plans)
        regions, keyring = self.services.regions, self.services.keyring
        out: dict[str, dict[str, Any]] = {}
        for plan in plans:
            for run in self.runs.values():
                if run.report.plan == plan.name:
                    out[run.report.drill_id] = summary(run.report.as_json())
            stored = [i for i in await stored_drill_ids(plan, regions) if i not in out]
            for drill_id in stored[-limit:]:
                found = await read_stored_report(plan, regions, keyring, drill_id)
                if found is not None:
                    out[drill_id] = summary(found)
        newest = sorted(out.values(), key=lambda d: str(d["started_at"]), reverse=True)
        return newest[:limit]

    async def load_state(self, plans: Sequence[Plan] | None = None) -> None:
        """The drill metrics from the newest stored report of each plan (of `plans`)."""
        regions, keyring = self.services.regions, self.services.keyring
        for plan in self.services.cfg.plans if plans is None else plans:
            try:
                ids = await stored_drill_ids(plan, regions)
                found = await read_stored_report(plan, regions, keyring, ids[-1]) if ids else None
            except DrdError as exc:
                log.warning("plan %s: cannot read the last drill report: %s", plan.name, exc)
                continue
            if found is None or found.get("status") not in ("passed", "failed"):
                continue
            m, name = self.services.metrics, plan.name
            m.drill_last_status.labels(name).set(1 if found["status"] == "passed" else 0)
            finished = found.get("finished_at") or found.get("started_at")
            if isinstance(finished, str):
                m.drill_last_timestamp.labels(name).set(
                    datetime.fromisoformat(finished).timestamp()
                )
            for gauge, key in ((m.drill_rto, "rto_seconds"), (m.drill_rpo, "rpo_seconds")):
                if isinstance(found.get(key), int | float):
                    gauge.labels(name).set(found[key])

    # -- lifecycle (drd.daemon.lifecycle) ------------------------------------------------------

    async def run_once(self) -> tuple[str, ...]:
        """Drills start on request (`start_drill`), never on a schedule: nothing to start."""
        return ()

    def seconds_until_due(self) -> float:
        return math.inf

    def start(self, stop: asyncio.Event) -> None:
        """Nothing runs between requests: no task to start."""

    async def close(self, grace: float) -> None:
        """Take no more drills; cancel running ones at once (they clean up and store a
        cancelled report), give that `grace` seconds, then cancel their tasks and wait for
        their clean-up to end."""
        self.stopping = True
        for run in self.runs.values():
            if run.running:
                run.cancel.set()
        await drain(self.tasks(), grace, what="drill", cancelled_wait=None)

    def _forget_old(self) -> None:
        finished = [i for i, r in self.runs.items() if not r.running]
        for drill_id in finished[:-KEEP_FINISHED]:
            del self.runs[drill_id]
