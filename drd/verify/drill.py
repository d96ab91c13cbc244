"""Failover drills: "if we lost a region now, how long until we are back, and with how much
data lost?", answered with a measured, audited report.

A drill restores every source of a plan, in the plan's order, from its newest complete backup
into the plan's scratch environments and runs all checks: it is a restore test
(drd.verify.restore_run) of each source, run one after the other, timed from the drill's start.

    drill start ──► source 1: choose backup, fetch, restore, checks ──► source 2: ... ──► done
                    |<------------------------------ RTO ------------------------------->|

- Achieved RTO: the wall time from the drill's start to the moment the last source's checks
  passed (choosing backups, every fetch, restore and check, and setting up each scratch
  environment, which in a real recovery is provisioning the target). Time spent waiting for a
  restore test of the same source to finish (the daemon's schedule holds its lock) is not part
  of a recovery and is taken out (`lock_wait_seconds`). Per source: the restore test's own RTO
  (its phases) and `ready_after_seconds` (drill start -> its checks passed).
- Achieved RPO: the age of the restored data at the drill's start, i.e. drill start minus the
  capture time of the backup restored; the plan's is the worst source's. A physical
  PostgreSQL source with point-in-time probes (restore_test.pitr_probe) is recovered to its
  newest probe inside the window instead (drd.verify.pitr_restore_test): its RPO is the
  probe's time minus the commit time of the last transaction recovery replayed.
- Both are compared with the plan's targets. The drill passes when every source restored and
  every critical check held, and both targets are met; `reasons` says why not, with a code
  each (a restore test category, `no_backup`, `rto_above_target`, `rpo_above_target`,
  `cancelled`).
- `lose_region`: a regional disaster. The lost region is never touched: it is not listed, no
  manifest or data is read from it, and no report is written to it. Only the surviving
  regions are handed to the catalog and the restore tests (a copy of the plan whose region
  list lacks the lost one), so nothing below this module can reach it.
- A copy that cannot be fetched or fails authentication in one region is tried in the next
  surviving region (plan order), as a restore at 3 a.m. would; every attempt is reported.
- Scratch environments are torn down by the restore-test machinery on success, failure and
  cancellation; a cancelled drill (the `cancel` event, or the task being cancelled) cancels
  the running restore test, waits for its teardown, and is stored with status `cancelled`.

The report is stored in every surviving region of the plan under

    _drills/<plan>/<drill_id>/report.json   sealed: public summary in clear, details encrypted
    _drills/<plan>/<drill_id>/report.md     the readable rendering

It holds no data values from the sources (no check's expected or actual value, no failing
check's message): those stay in the restore test reports next to the backups, which retention
destroys with the backup. So drill reports can be kept for the audit period, like the audit
trail (`_audit/`): drd never deletes `_drills/` (retention, repair and the janitor only list
`<plan>/` prefixes, and the catalog ignores keys that are not `<plan>/<source>/<backup_id>/`);
expire them with a bucket lifecycle rule on the `_drills/` prefix once the audit period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from drd import __version__, crypto
from drd.clock import Clock, utcnow
from drd.config.models import Plan
from drd.durations import format_elapsed
from drd.errors import BackupNotFound, DrdError, IntegrityError, LockBusy, UsageError
from drd.layout import SourceRef, new_backup_id
from drd.logs import add_log_context, log_context
from drd.metrics import Metrics
from drd.progress import Progress, ProgressBoard
from drd.storage.base import Storage
from drd.strategies.base import SourceOptions
from drd.verify.restore_report import RestoreTestReport
from drd.verify.restore_run import Candidate, categorise, choose_backups, run_restore_test
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

DRILLS_PREFIX = "_drills"
DOCUMENT = "drill-report"
REPORT_FORMAT = "drd-drill-1"
REPORT_OBJECT = "report.json"
MARKDOWN_OBJECT = "report.md"
#: how often a drill looks again when a restore test of the source holds its lock
LOCK_POLL_SECONDS = 0.5

Status = Literal["running", "passed", "failed", "cancelled"]
#: a drill id: its start time and 8 random hex digits (new_drill_id)
DRILL_ID_PATTERN = r"^\d{8}T\d{6}Z-[0-9a-f]{8}$"
_ID_RE = re.compile(DRILL_ID_PATTERN)
#: failures worth trying the next region's copy for
_TRY_NEXT_REGION = ("fetch_failed", "integrity_failed")
_MAX_MESSAGE = 500


def new_drill_id(now: datetime) -> str:
    """Sortable by start time, like backup ids: 20260601T120000Z-1a2b3c4d."""
    return new_backup_id(now)


def is_drill_id(text: str) -> bool:
    return _ID_RE.match(text) is not None


def drill_prefix(plan: str, drill_id: str | None = None) -> str:
    if drill_id is None:
        return f"{DRILLS_PREFIX}/{plan}/"
    return f"{DRILLS_PREFIX}/{plan}/{drill_id}/"


@dataclass
class SourceResult:
    """One source's part of a drill. Holds no data values (see the module docstring)."""

    source: str
    kind: str
    result: Literal["pending", "running", "passed", "failed", "cancelled"] = "pending"
    backup_id: str | None = None
    backup_captured_at: str | None = None
    #: the region whose copy was restored (the last one tried)
    region: str | None = None
    #: every region tried, in order: {region, result, failure_category}
    attempts: list[dict[str, Any]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    #: the restore test's own RTO (fetch + decrypt_decompress + restore + checks)
    restore_rto_seconds: float | None = None
    #: from the drill's start to this source's checks passing (less any lock wait)
    ready_after_seconds: float | None = None
    #: time spent waiting for another restore test of the source (not counted in the RTO)
    lock_wait_seconds: float = 0.0
    #: the restored data's age at the drill's start; restored to a point in time: the
    #: probe's time minus the last transaction replayed
    rpo_seconds: float | None = None
    #: restored to a point in time (drd.verify.pitr_restore_test): the probe, the point reached
    point_in_time: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)
    failure_category: str | None = None
    failure_message: str | None = None
    #: where the restore test's full report (with the checks' values) was stored
    restore_test_report_in: list[str] = field(default_factory=list)
    #: while the source runs: its restore test's live phases and bytes (drd.progress)
    live: Progress | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        out = self._fields()
        if self.result == "running" and self.live is not None:
            # The phases measured so far (the one running up to now), instead of the final
            # split the restore test reports when it ends.
            out["phases"] = {k: round(v, 3) for k, v in self.live.phase_seconds().items()}
            snap = self.live.snapshot()
            out["progress"] = {
                "phase": snap.phase,
                "bytes": snap.bytes_done,
                "total": snap.bytes_total,
                "eta_seconds": _round(snap.eta_seconds),
            }
        return out

    def _fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "result": self.result,
            "backup_id": self.backup_id,
            "backup_captured_at": self.backup_captured_at,
            "region": self.region,
            "attempts": self.attempts,
            "phases": self.phases,
            "restore_rto_seconds": _round(self.restore_rto_seconds),
            "ready_after_seconds": _round(self.ready_after_seconds),
            "lock_wait_seconds": round(self.lock_wait_seconds, 3),
            "rpo_seconds": _round(self.rpo_seconds),
            "point_in_time": self.point_in_time,
            "checks": self.checks,
            "scratch": self.scratch,
            "failure_category": self.failure_category,
            "failure_message": self.failure_message,
            "restore_test_report_in": self.restore_test_report_in,
        }


@dataclass
class DrillReport:
    drill_id: str
    plan: str
    started_at: datetime
    #: the plan's regions, in order
    plan_regions: list[str]
    rto_target_seconds: float
    rpo_target_seconds: float
    lose_region: str | None = None
    status: Status = "running"
    finished_at: datetime | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    sources: list[SourceResult] = field(default_factory=list)
    #: why the drill failed: {code, source?, message}
    reasons: list[dict[str, str]] = field(default_factory=list)
    #: who asked: {token, role} from the API, {user, via: cli} from the command line
    requested_by: dict[str, str] = field(default_factory=dict)
    #: the regions the report was written to
    stored_in: list[str] = field(default_factory=list)

    @property
    def surviving_regions(self) -> list[str]:
        return [r for r in self.plan_regions if r != self.lose_region]

    @property
    def regions_read(self) -> list[str]:
        """Regions the drill listed and read manifests from; data came from `data_read_from`."""
        return self.surviving_regions

    @property
    def data_read_from(self) -> list[str]:
        tried = {a["region"] for s in self.sources for a in s.attempts if a.get("region")}
        return [r for r in self.plan_regions if r in tried]

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def done(self) -> bool:
        return self.status != "running"

    def fail(self, code: str, message: str, source: str | None = None) -> None:
        reason = {"code": code, "message": message}
        if source is not None:
            reason["source"] = source
        self.reasons.append(reason)

    def public(self) -> dict[str, Any]:
        """The unencrypted, authenticated half (no floats: JCS-safe)."""
        return {
            "document": DOCUMENT,
            "format": REPORT_FORMAT,
            "drill_id": self.drill_id,
            "plan": self.plan,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "lose_region": self.lose_region,
            "regions_read": self.regions_read,
            "rto_ms": _ms(self.rto_seconds),
            "rpo_ms": _ms(self.rpo_seconds),
            "rto_target_ms": _ms(self.rto_target_seconds),
            "rpo_target_ms": _ms(self.rpo_target_seconds),
            "reasons": sorted({r["code"] for r in self.reasons}),
        }

    def as_json(self) -> dict[str, Any]:
        """The report as the API and `drd drill --json` show it, and as its sealed body: each
        fact once (the public half's `drill_id` and milliseconds are left out: it exists for
        key-less listings and JCS, which has no floats)."""
        rto, rpo = self.rto_seconds, self.rpo_seconds
        public = {k: v for k, v in self.public().items() if k not in PUBLIC_ONLY}
        return {
            **public,
            "id": self.drill_id,
            "rto_seconds": _round(rto),
            "rpo_seconds": _round(rpo),
            "rto_target_seconds": self.rto_target_seconds,
            "rpo_target_seconds": self.rpo_target_seconds,
            "rto_ok": rto is not None and rto <= self.rto_target_seconds,
            "rpo_ok": rpo is not None and rpo <= self.rpo_target_seconds,
            "plan_regions": self.plan_regions,
            "data_read_from": self.data_read_from,
            "lost_region_note": self.lost_region_note(),
            "reasons": self.reasons,
            "sources": [s.as_json() for s in self.sources],
            "requested_by": self.requested_by,
            "stored_in": self.stored_in,
            "drd_version": __version__,
        }

    def lost_region_note(self) -> str | None:
        if self.lose_region is None:
            return None
        return (
            f"region {self.lose_region} was treated as lost: it was not listed or read, and "
            "this report was not written to it"
        )


#: fields of the public half that the report's JSON says otherwise (`id`, `*_seconds`)
PUBLIC_ONLY = frozenset({"drill_id", "rto_ms", "rpo_ms", "rto_target_ms", "rpo_target_ms"})


def api_json(body: Mapping[str, Any]) -> dict[str, Any]:
    """A stored report's body as this version serves it: bodies written by earlier versions
    repeat the public half's fields (PUBLIC_ONLY) next to their `id` and `*_seconds`."""
    return {k: v for k, v in body.items() if k not in PUBLIC_ONLY}


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _ms(value: float | None) -> int | None:
    return round(value * 1000) if value is not None else None


def _fmt(seconds: float | None) -> str:
    return "not measured" if seconds is None else format_elapsed(seconds)


def render_markdown(report: DrillReport) -> str:
    """The readable report (what `drd drill` prints and what is stored next to the JSON)."""
    data = report.as_json()
    lines = [
        f"# Failover drill {report.drill_id}: plan {report.plan}: {report.status.upper()}",
        "",
        f"- started: {data['started_at']}",
        f"- finished: {data['finished_at'] or '-'}",
    ]
    if report.lose_region:
        lines.append(f"- simulated disaster: {report.lost_region_note()}")
    lines += [
        f"- regions read: {', '.join(report.regions_read) or '-'}"
        f" (data from: {', '.join(report.data_read_from) or '-'})",
        f"- requested by: {_who(report.requested_by)}",
        "",
        "| objective | achieved | target | |",
        "|---|---|---|---|",
        f"| RTO | {_fmt(report.rto_seconds)} | {_fmt(report.rto_target_seconds)} | "
        f"{'ok' if data['rto_ok'] else 'MISSED'} |",
        f"| RPO | {_fmt(report.rpo_seconds)} | {_fmt(report.rpo_target_seconds)} | "
        f"{'ok' if data['rpo_ok'] else 'MISSED'} |",
        "",
    ]
    if report.reasons:
        lines.append("## Why it failed")
        lines.append("")
        for reason in report.reasons:
            where = f"{reason['source']}: " if "source" in reason else ""
            lines.append(f"- `{reason['code']}`: {where}{reason['message']}")
        lines.append("")
    lines += [
        "## Sources (in plan order)",
        "",
        "| source | kind | result | backup | region | RPO | ready after | restore RTO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.sources:
        lines.append(
            f"| {s.source} | {s.kind} | {s.result} | {s.backup_id or '-'} | {s.region or '-'} | "
            f"{_fmt(s.rpo_seconds)} | {_fmt(s.ready_after_seconds)} | "
            f"{_fmt(s.restore_rto_seconds)} |"
        )
    for s in report.sources:
        lines += ["", f"### {s.source}", ""]
        if s.phases:
            phases = ", ".join(
                f"{name} {format_elapsed(value)}" for name, value in s.phases.items()
            )
            lines.append(f"- phases: {phases}")
        if s.scratch:
            lines.append(f"- scratch: {s.scratch.get('description', '-')} (removed)")
        for attempt in s.attempts:
            lines.append(
                f"- region {attempt['region'] or '-'}: {attempt['result']}"
                + (f" ({attempt['failure_category']})" if attempt.get("failure_category") else "")
            )
        if s.checks:
            marks = ", ".join(f"{c['name']} {c['status']}" for c in s.checks)
            lines.append(f"- checks: {marks}")
        if s.failure_category:
            lines.append(f"- failed: `{s.failure_category}`: {s.failure_message}")
    lines.append("")
    return "\n".join(lines)


def _who(requested_by: Mapping[str, str]) -> str:
    if not requested_by:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in sorted(requested_by.items()))


# -- running ----------------------------------------------------------------------------------


def surviving_plan(plan: Plan, lose_region: str | None) -> Plan:
    """The plan as the drill sees it: the lost region is not one of its regions."""
    if lose_region is None:
        return plan
    if lose_region not in plan.storage.regions:
        raise UsageError(f"plan {plan.name} has no region {lose_region!r}")
    regions = [r for r in plan.storage.regions if r != lose_region]
    if not regions:
        raise UsageError(f"losing region {lose_region!r} leaves plan {plan.name} no region")
    storage = plan.storage.model_copy(
        update={"regions": regions, "min_copies": min(plan.storage.min_copies, len(regions))}
    )
    return plan.model_copy(update={"storage": storage})


def new_report(
    plan: Plan,
    *,
    lose_region: str | None,
    clock: Clock = utcnow,
    drill_id: str | None = None,
    requested_by: Mapping[str, str] | None = None,
) -> DrillReport:
    surviving_plan(plan, lose_region)  # validates lose_region
    started = clock()
    return DrillReport(
        drill_id=drill_id or new_drill_id(started),
        plan=plan.name,
        started_at=started,
        plan_regions=list(plan.storage.regions),
        rto_target_seconds=plan.targets.rto.total_seconds(),
        rpo_target_seconds=plan.targets.rpo.total_seconds(),
        lose_region=lose_region,
        sources=[SourceResult(s.name, s.kind) for s in plan.sources],
        requested_by=dict(requested_by or {}),
    )


async def run_drill(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    lose_region: str | None = None,
    state_dir: Path,
    base_dir: Path | None = None,
    metrics: Metrics | None = None,
    clock: Clock = utcnow,
    cancel: asyncio.Event | None = None,
    report: DrillReport | None = None,
    requested_by: Mapping[str, str] | None = None,
    board: ProgressBoard | None = None,
) -> DrillReport:
    """Run a drill of `plan` (see the module docstring) and store its report. Never raises for
    a failed drill: the report says why. UsageError for a lose_region the plan does not have
    (or its only one). If the calling task is cancelled, the running restore test is cancelled
    and cleaned up, the report is stored as cancelled, and the cancellation propagates.
    `board`: each source's restore test is listed there (kind `drill`) while it runs."""
    if report is None:
        report = new_report(plan, lose_region=lose_region, clock=clock, requested_by=requested_by)
    # For the rest of the drill (the daemon's drill task or the CLI command bounds it).
    add_log_context(job="drill", plan=plan.name, drill_id=report.drill_id)
    view = surviving_plan(plan, report.lose_region)
    # Only the surviving regions exist for the rest of the drill.
    storages = {name: regions[name] for name in view.storage.regions}
    base = base_dir if base_dir is not None else Path.cwd()
    log.info(
        "drill %s of plan %s: starting%s",
        report.drill_id,
        plan.name,
        f" (region {report.lose_region} lost)" if report.lose_region else "",
    )
    work = asyncio.create_task(
        _run_sources(report, view, storages, keyring, state_dir, base, clock, board),
        name=f"drill:{report.drill_id}",
    )
    try:
        cancelled = await _until_done_or_cancelled(work, cancel)
    except asyncio.CancelledError:
        # The drill's own task was cancelled (shutdown, Ctrl-C): clean up, record, re-raise.
        work.cancel()
        await run_to_completion(_settle(work))
        await run_to_completion(_finish(report, view, storages, keyring, metrics, clock, True))
        raise
    await _finish(report, view, storages, keyring, metrics, clock, cancelled)
    return report


async def _until_done_or_cancelled(work: asyncio.Task[None], cancel: asyncio.Event | None) -> bool:
    """Wait for `work`; if `cancel` is set first, cancel it and wait for its clean-up.
    True if the drill was cancelled."""
    if cancel is not None:
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not work.done():
            work.cancel()
            await _settle(work)
            return True
    await work
    return False


async def _settle(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_sources(
    report: DrillReport,
    plan: Plan,
    storages: Mapping[str, Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    base_dir: Path,
    clock: Clock,
    board: ProgressBoard | None,
) -> None:
    board = board if board is not None else ProgressBoard(clock=clock)
    for source, result in zip(plan.sources, report.sources, strict=True):
        result.result = "running"
        try:
            with (
                log_context(source=source.name),
                board.track("drill", plan.name, source.name) as result.live,
            ):
                await _drill_source(
                    report, result, plan, source, storages, keyring, state_dir, base_dir, clock
                )
                if result.failure_category is not None and result.live is not None:
                    # A failed source is a result, not an error: the progress must be told.
                    result.live.fail(f"{result.failure_category}: {result.failure_message}")
        except asyncio.CancelledError:
            result.result = "cancelled"
            raise
        except DrdError as exc:
            _source_failed(result, categorise(exc), str(exc))
        except Exception as exc:  # an unexpected failure fails this source, not the drill run
            log.exception("drill %s: %s: unexpected error", report.drill_id, source.name)
            _source_failed(result, "restore_failed", f"{type(exc).__name__}: {exc}")
        finally:
            result.live = None


def _source_failed(result: SourceResult, category: str, message: str) -> None:
    result.result = "failed"
    result.failure_category = category
    result.failure_message = message[:_MAX_MESSAGE]


async def _drill_source(
    report: DrillReport,
    result: SourceResult,
    plan: Plan,
    source: SourceOptions,
    storages: Mapping[str, Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    base_dir: Path,
    clock: Clock,
) -> None:
    ref = SourceRef(plan.name, source.name)
    ordered = [storages[name] for name in plan.storage.regions]
    if result.live is not None:
        result.live.phase("choosing")
    try:
        (candidate,) = await choose_backups(
            ref, ordered, keyring, min_copies=plan.storage.min_copies
        )
    except BackupNotFound as exc:
        _source_failed(result, "no_backup", str(exc))
        return
    entry = candidate.entry
    result.backup_id = entry.backup_id
    result.backup_captured_at = entry.captured.isoformat()
    result.rpo_seconds = max(0.0, (report.started_at - entry.captured).total_seconds())
    # The surviving regions holding an intact copy, in plan order; none: let the restore test
    # say why (an unverifiable manifest, no intact copy).
    complete = entry.complete_regions
    tries: list[str | None] = [r for r in plan.storage.regions if r in complete] or [None]
    tested: RestoreTestReport | None = None
    for region in tries:
        tested = await _restore_test(
            result, plan, source, storages, keyring, state_dir, base_dir, candidate, region, clock
        )
        result.attempts.append(
            {
                "region": tested.region,
                "result": tested.result,
                "failure_category": tested.failure_category,
            }
        )
        if tested.passed or tested.failure_category not in _TRY_NEXT_REGION:
            break
    assert tested is not None
    pitr = tested.restore.get("pitr")
    if isinstance(pitr, dict):
        # Restored to the newest probe: the RPO is what that point lost, not the base
        # backup's age.
        achieved = pitr.get("achieved") or {}
        result.backup_id = tested.backup_id
        result.backup_captured_at = tested.backup_captured_at
        result.point_in_time = {
            "probe": pitr.get("probe"),
            "base_backup": pitr.get("base_backup"),
            "achieved": achieved,
        }
        rpo = achieved.get("rpo_seconds")
        result.rpo_seconds = float(rpo) if isinstance(rpo, int | float) else None
    result.region = tested.region
    result.phases = tested.phases.as_json()
    result.restore_rto_seconds = tested.rto_seconds
    result.checks = [
        {
            "name": c.name,
            "kind": c.kind,
            "status": c.status,
            "critical": c.critical,
            # What was compared and how much of the data: descriptions and counts, not values.
            "compared": c.compared,
            "coverage": c.coverage,
        }
        for c in tested.checks
    ]
    result.scratch = {
        k: v for k, v in tested.scratch.items() if k in ("kind", "description", "resource") and v
    }
    result.restore_test_report_in = list(tested.stored_in)
    log_lag = tested.restore.get("rpo_seconds")  # a point-in-time clone: its log's lag
    if tested.passed and isinstance(log_lag, int | float):
        result.rpo_seconds = float(log_lag)
    if tested.passed:
        result.result = "passed"
        finished = tested.finished_at or clock()
        # The checks passed before the scratch environment was torn down.
        ready = finished.timestamp() - tested.phases.teardown
        # Waiting for another restore test of a source (the daemon's schedule) is not part of
        # a recovery: every wait so far, this source's and earlier ones', is taken out.
        waited = sum(s.lock_wait_seconds for s in report.sources)
        result.ready_after_seconds = max(0.0, ready - report.started_at.timestamp() - waited)
        return
    category = tested.failure_category or "restore_failed"
    if category == "check_failed":
        # The failing checks' values are source data: they stay in the restore test report.
        failing = [c.name for c in tested.checks if c.fails_test]
        message = (
            f"check(s) failed: {', '.join(failing)} (expected and actual values are in the "
            f"restore test report of backup {entry.backup_id}, kept with the backup)"
        )
    else:
        message = tested.failure_message or category
    _source_failed(result, category, message)


async def _restore_test(
    result: SourceResult,
    plan: Plan,
    source: SourceOptions,
    storages: Mapping[str, Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    base_dir: Path,
    candidate: Candidate,
    region: str | None,
    clock: Clock,
) -> RestoreTestReport:
    """One restore test; waits (up to the plan's restore-test timeout) while another restore
    test of the source (the daemon's schedule, a `drd restore-test`) holds its lock."""
    deadline = time.monotonic() + plan.restore_test.timeout.total_seconds()
    while True:
        try:
            return await run_restore_test(
                plan,
                source,
                storages,
                keyring,
                state_dir=state_dir,
                base_dir=base_dir,
                candidate=Candidate(
                    candidate.entry,
                    "drill",
                    reason=candidate.reason or "the backup this drill restores",
                ),
                region=region,
                clock=clock,
                metrics=None,  # a drill is not the restore-test schedule's result
                progress=result.live,
            )
        except LockBusy:
            if time.monotonic() >= deadline:
                raise
            began = time.monotonic()
            await asyncio.sleep(LOCK_POLL_SECONDS)
            result.lock_wait_seconds += time.monotonic() - began


async def _finish(
    report: DrillReport,
    plan: Plan,
    storages: Mapping[str, Storage],
    keyring: crypto.Keyring,
    metrics: Metrics | None,
    clock: Clock,
    cancelled: bool,
) -> None:
    report.finished_at = clock()
    _judge(report, cancelled)
    await store_report(report, [storages[n] for n in plan.storage.regions], keyring)
    if metrics is not None and not cancelled:
        record_metrics(metrics, report)
    if report.passed:
        log.info(
            "drill %s of plan %s passed: RTO %s, RPO %s",
            report.drill_id,
            report.plan,
            _fmt(report.rto_seconds),
            _fmt(report.rpo_seconds),
        )
    elif report.status == "cancelled":
        # Someone asked for it (the API, a shutdown, Ctrl-C): not a failure to page about.
        log.info(
            "drill %s of plan %s cancelled: its scratch environments were removed",
            report.drill_id,
            report.plan,
        )
    else:
        log.error(
            "drill %s of plan %s %s: %s",
            report.drill_id,
            report.plan,
            report.status,
            "; ".join(f"{r['code']}: {r['message']}" for r in report.reasons),
        )


def _judge(report: DrillReport, cancelled: bool) -> None:
    for s in report.sources:
        if s.result in ("pending", "running"):
            s.result = "cancelled"
        if s.result == "failed":
            report.fail(s.failure_category or "restore_failed", s.failure_message or "", s.source)
    ready = [s.ready_after_seconds for s in report.sources]
    if ready and all(r is not None for r in ready):
        report.rto_seconds = max(r for r in ready if r is not None)
    ages = [s.rpo_seconds for s in report.sources]
    if ages and all(a is not None for a in ages):
        report.rpo_seconds = max(a for a in ages if a is not None)
    if cancelled:
        report.fail("cancelled", "the drill was cancelled; its scratch environments were removed")
        report.status = "cancelled"
        return
    if report.rto_seconds is not None and report.rto_seconds > report.rto_target_seconds:
        report.fail(
            "rto_above_target",
            f"RTO {_fmt(report.rto_seconds)} is above the target {_fmt(report.rto_target_seconds)}",
        )
    if report.rpo_seconds is not None and report.rpo_seconds > report.rpo_target_seconds:
        report.fail(
            "rpo_above_target",
            f"RPO {_fmt(report.rpo_seconds)} is above the target {_fmt(report.rpo_target_seconds)}",
        )
    report.status = "failed" if report.reasons else "passed"


def record_metrics(metrics: Metrics, report: DrillReport) -> None:
    metrics.drill_last_status.labels(report.plan).set(1 if report.passed else 0)
    finished = report.finished_at or report.started_at
    metrics.drill_last_timestamp.labels(report.plan).set(finished.timestamp())
    if report.rto_seconds is not None:
        metrics.drill_rto.labels(report.plan).set(report.rto_seconds)
    if report.rpo_seconds is not None:
        metrics.drill_rpo.labels(report.plan).set(report.rpo_seconds)


# -- storing and reading reports --------------------------------------------------------------


async def store_report(
    report: DrillReport, regions: Sequence[Storage], keyring: crypto.Keyring
) -> list[str]:
    """Write the sealed report and its Markdown rendering to each region (a failure in one is
    logged); return where both landed. `regions` must not include a lost region."""
    assert report.lose_region not in {r.name for r in regions}
    prefix = drill_prefix(report.plan, report.drill_id)
    report.stored_in = [r.name for r in regions]  # the stored copies say where they were sent
    sealed = crypto.seal_manifest(keyring, report.public(), report.as_json())
    markdown = render_markdown(report).encode()
    stored: list[str] = []
    for storage in regions:
        try:
            await storage.put(prefix + REPORT_OBJECT, sealed)
            await storage.put(prefix + MARKDOWN_OBJECT, markdown)
        except DrdError as exc:
            log.warning("region %s: could not store drill report: %s", storage.name, exc)
            continue
        stored.append(storage.name)
    report.stored_in = stored
    return stored


def open_report(keyring: crypto.Keyring, raw: bytes, plan: str, drill_id: str) -> dict[str, Any]:
    """The verified body of a stored drill report; IntegrityError if forged or misplaced."""
    public, body = crypto.open_manifest(keyring, raw)
    if (
        public.get("document") != DOCUMENT
        or public.get("plan") != plan
        or public.get("drill_id") != drill_id
    ):
        raise IntegrityError(f"not the drill report {plan}/{drill_id}")
    return body


async def read_stored_report(
    plan: Plan, regions: Mapping[str, Storage], keyring: crypto.Keyring, drill_id: str
) -> dict[str, Any] | None:
    """A stored drill report of `plan` from the first region that has an authentic copy."""
    key = drill_prefix(plan.name, drill_id) + REPORT_OBJECT
    for name in plan.storage.regions:
        storage = regions.get(name)
        if storage is None:
            continue
        try:
            return open_report(keyring, await storage.get(key), plan.name, drill_id)
        except DrdError as exc:
            log.debug("drill report %s:%s: %s", name, key, exc)
    return None


async def stored_drill_ids(plan: Plan, regions: Mapping[str, Storage]) -> list[str]:
    """Ids of the drills of `plan` stored in any reachable region, oldest first (a region
    that cannot be listed is logged; list_drill_ids says which, for whoever must tell)."""
    ids, errors = await list_drill_ids(plan, regions)
    for name, why in errors.items():
        log.warning("region %s: cannot list drill reports: %s", name, why)
    return ids


async def list_drill_ids(
    plan: Plan, regions: Mapping[str, Storage]
) -> tuple[list[str], dict[str, str]]:
    """Ids of the drills of `plan` stored in the regions, oldest first, and region -> why it
    could not be listed."""
    ids: set[str] = set()
    errors: dict[str, str] = {}
    prefix = drill_prefix(plan.name)

    async def one(storage: Storage) -> None:
        try:
            listing = await storage.list(prefix)
        except DrdError as exc:
            errors[storage.name] = str(exc) or type(exc).__name__
            return
        for info in listing:
            drill_id, _, name = info.key[len(prefix) :].partition("/")
            if name == REPORT_OBJECT and is_drill_id(drill_id):
                ids.add(drill_id)

    await asyncio.gather(*(one(regions[n]) for n in plan.storage.regions if n in regions))
    return sorted(ids), errors
