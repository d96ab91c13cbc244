"""`drd run`: the long-running service.

One asyncio loop drives everything. The backup scheduler is a `run_once()` step (tests call it
with the loop's timers out of the picture) inside a loop that sleeps until the next due job.
Backups of one source never overlap (one task per source, plus the cross-process source lock),
a global semaphore bounds concurrent jobs, each job has a timeout, and transient failures are
retried with backoff inside the job. Retention, restore tests and drills are loops of their own
(drd.daemon.lifecycle), built here on one `Services` and started with the backup scheduler.
On SIGTERM scheduling stops, and the loops and the running backups are closed together within
one grace period (retention stops at once), then what is left is cancelled: a cancelled backup
aborts its uploads and never commits a manifest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from drd import crypto
from drd.clock import Clock, utcnow
from drd.config.loader import load_config
from drd.config.models import Config, Plan
from drd.daemon.drill_loop import DrillManager
from drd.daemon.history import History, JobRecord
from drd.daemon.job_requests import JobRequest, JobRequests, RunOutcome
from drd.daemon.job_requests import Kind as JobKind
from drd.daemon.lifecycle import Loop, drain, wait_any
from drd.daemon.region_probe_loop import RegionProbeLoop
from drd.daemon.reload import config_changes, restart_only_changes
from drd.daemon.restore_test_loop import RestoreTestScheduler
from drd.daemon.retention_loop import RetentionLoop
from drd.daemon.schedule import Schedule, next_due
from drd.daemon.scrub_loop import ScrubLoop
from drd.daemon.sdnotify import Notifier
from drd.daemon.slots import JobSlot, request_now, seconds_until_due, start_due
from drd.daemon.status import Activity, Upcoming, status_line
from drd.daemon.wal_loop import WalLoop
from drd.errors import (
    ConfigError,
    DrdError,
    NotEnoughCopies,
    SourceError,
    StateError,
    TransientStorageError,
)
from drd.layout import SourceRef
from drd.logs import log_context
from drd.metrics import RESULTS, Metrics
from drd.pipeline.backup import BackupResult
from drd.pipeline.source_backup import backup_source, plan_regions
from drd.progress import ProgressBoard, Snapshot
from drd.repository import manifest_cache
from drd.repository.catalog import build_catalog
from drd.runtime import Services
from drd.server.audit import AuditLog
from drd.storage.base import Storage
from drd.storage.health import NOT_PROBED, RegionHealth
from drd.strategies.base import SourceOptions

log = logging.getLogger(__name__)


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt inside the same job: a region or the source may be back in
    seconds. Key, config and integrity errors, and regions that refuse for good, are not."""
    if isinstance(exc, NotEnoughCopies):
        return exc.transient
    return isinstance(exc, (TransientStorageError, SourceError))


FAILURE_BACKOFF = (timedelta(seconds=30), timedelta(minutes=15))


@dataclass(kw_only=True)
class SourceState(JobSlot):
    plan: Plan
    source: SourceOptions
    last_capture: datetime | None = None
    last_backup_id: str | None = None
    copies: dict[str, bool] = field(default_factory=dict)
    stored_bytes: int | None = None
    source_bytes: int | None = None
    last_status: str | None = None  # "success" | "failure" | "interrupted"
    last_error: str | None = None
    last_finished: datetime | None = None
    consecutive_failures: int = 0


def plan_schedule(plan: Plan) -> Schedule:
    return Schedule(every=plan.schedule.every, cron=plan.schedule.cron, jitter=plan.schedule.jitter)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        keyring: crypto.Keyring,
        regions: Mapping[str, Storage],
        *,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        notifier: Notifier | None = None,
        health: RegionHealth | None = None,
    ) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.regions = dict(regions)
        self.metrics = metrics or Metrics()
        self.clock = clock
        # What every loop runs with, built once; its regions are this very mapping.
        self.services = Services(
            cfg=cfg,
            regions=self.regions,
            keyring=keyring,
            metrics=self.metrics,
            clock=clock,
            progress=ProgressBoard(clock=clock),
        )
        self.notifier = notifier or Notifier({})
        #: each region's health (drd_region_up), from every operation through regions wrapped
        #: with it (drd.runtime.open_regions) and from the probe
        self.health = health or RegionHealth(self.metrics, clock)
        self.region_probe = RegionProbeLoop(self.services, self.health)
        # A state directory that cannot be written stops the start here, with StateError
        # (exit 14) naming it, before anything else is opened.
        self.history = History(cfg.state_dir / "history.sqlite3")
        # Every catalog build of the daemon reads only manifests it has not read before, from
        # its first one after a restart on (drd.repository.manifest_cache).
        manifest_cache.keep_in(cfg.state_dir)
        #: why the last write to the state directory failed (None: it did not), for /readyz
        self.state_problem: str | None = None
        self.metrics.state_writable.set(1)
        self.sources: dict[SourceRef, SourceState] = {}
        #: what the API asked for, and how it went (GET /api/v1/jobs/{id})
        self.job_requests = JobRequests(clock)
        for plan in cfg.plans:
            for source in plan.sources:
                ref = SourceRef(plan.name, source.name)
                self.sources[ref] = SourceState(ref=ref, plan=plan, source=source)
        #: backups of sources a reload removed, still running (shutdown waits for them)
        self._retired: list[SourceState] = []
        self._slots = asyncio.Semaphore(cfg.daemon.max_concurrent_jobs)
        self._wake = asyncio.Event()
        self.stopping = False
        self.started_at = time.time()
        #: the --log-level/--log-format flags when this process owns the logging setup
        #: (drd run); a reload then applies the config's `log:` under them
        self.log_flags: tuple[str | None, str | None] | None = None
        #: why the last reload was refused (None: it was not), shown in STATUS=
        self.reload_problem: str | None = None
        self._reload_lock = asyncio.Lock()
        self._status: str | None = None
        self.metrics.config_reload_ok.set(1)
        self.metrics.config_reload_time.set(self.started_at)
        self._publish_static_metrics()
        # Retention (sweep + repair): see drd.daemon.retention_loop.
        self.retention = RetentionLoop(
            self.services,
            is_busy=self._retention_busy,
            on_copies=self._retention_copies_changed,
            on_change=self.update_status,
        )
        # Re-reading stored copies on a schedule: see drd.daemon.scrub_loop.
        self.scrub = ScrubLoop(self.services, is_busy=self._retention_busy)
        # The audit trail (API calls, drills) and failover drills: see drd.daemon.drill_loop.
        self.audit = AuditLog(
            cfg.state_dir / "audit.jsonl", self.regions, keyring, on_state_error=self.state_failed
        )
        self.drills = DrillManager(self.services, self.audit, on_change=self.update_status)
        # Restore tests run on their own per-plan schedule: see drd.daemon.restore_test_loop.
        self.restore_tests = RestoreTestScheduler(
            self.services,
            self.history,
            slots=self._slots,
            has_backup=self._has_backup,
            on_state_error=self.state_failed,
            on_change=self.update_status,
        )
        # Continuous WAL archiving of physical PostgreSQL sources: see drd.daemon.wal_loop.
        self.wal = WalLoop(self.services)
        self.loops: tuple[Loop, ...] = (
            self.region_probe,
            self.retention,
            self.scrub,
            self.restore_tests,
            self.drills,
            self.wal,
        )

    # -- state --------------------------------------------------------------------------------

    def _publish_static_metrics(self) -> None:
        m = self.metrics
        for plan in self.cfg.plans:
            m.plan_min_copies.labels(plan.name).set(plan.storage.min_copies)
            m.retention_max_age.labels(plan.name).set(plan.retention.max_age.total_seconds())
            for source in plan.sources:
                labels = (plan.name, source.name)
                m.declare_source(plan.name, source.name, list(plan.storage.regions))
                m.rpo_target.labels(*labels).set(plan.targets.rpo.total_seconds())
                m.rto_target.labels(*labels).set(plan.targets.rto.total_seconds())
                m.restore_test_interval.labels(*labels).set(plan.restore_test.every.total_seconds())

    async def load_state(self) -> None:
        """Rebuild what the daemon knows from storage (the source of truth) and history."""
        for plan in self.cfg.plans:
            states = [self.sources[SourceRef(plan.name, s.name)] for s in plan.sources]
            await self._load_sources(plan, states)
        self.restore_tests.load_state()
        await self.drills.load_state()

    async def _load_sources(self, plan: Plan, states: list[SourceState]) -> None:
        """What storage and the history know about these sources of `plan`; when each is next
        due."""
        regions = plan_regions(plan, self.regions)
        catalog = await build_catalog(regions, self.keyring, f"{plan.name}/")
        for region, error in catalog.region_errors.items():
            log.warning("plan %s: region %s unreachable: %s", plan.name, region, error)
        for st in states:
            source = st.source
            entry = catalog.newest_complete(st.ref, plan.storage.min_copies)
            if entry is not None:
                assert entry.manifest is not None
                st.last_capture = entry.manifest.public.started
                st.last_backup_id = entry.backup_id
                st.copies = {r: r in entry.complete_regions for r in plan.storage.regions}
                st.stored_bytes = entry.manifest.body.ciphertext_size
                st.source_bytes = entry.manifest.body.plaintext_size
                completed = datetime.fromisoformat(entry.manifest.public.completed_at)
                self.metrics.backup_last_success.labels(plan.name, source.name).set(
                    completed.timestamp()
                )
            last = self.history.last("backup", plan.name, source.name)
            if last is not None:
                st.last_status = last.result
                st.last_error = last.detail
            self._publish_source(st)
            self._restore_last_status(st, last)
        now = self.clock()
        for st in states:
            st.next_due = next_due(
                plan_schedule(st.plan),
                last_capture=st.last_capture,
                now=now,
                rpo=st.plan.targets.rpo,
                seed=str(st.ref),
            )
            log.info("%s: next backup due %s", st.ref, st.next_due.isoformat())

    def _restore_last_status(self, st: SourceState, last: JobRecord | None) -> None:
        """drd_backup_last_status right after a start, not a backup later (a day, for a daily
        plan): the newest backup in the history that succeeded or failed (one interrupted by
        a shutdown or a crash says neither); with no history (a new state directory), the
        newest complete backup in storage counts as the last one."""
        if last is None or last.result not in RESULTS:
            last = self.history.last("backup", st.ref.plan, st.ref.source, result=RESULTS)
        if last is not None:
            passed = last.result == "success"
        elif st.last_capture is not None:
            passed = True
        else:
            return
        self.metrics.backup_last_status.labels(st.ref.plan, st.ref.source).set(int(passed))

    def _publish_source(self, st: SourceState) -> None:
        if self.sources.get(st.ref) is not st:
            return  # a reload removed the source: its series are gone and stay gone
        m, labels = self.metrics, (st.ref.plan, st.ref.source)
        if st.last_capture is not None:
            for region in st.plan.storage.regions:
                m.backup_copies.labels(*labels, region).set(1 if st.copies.get(region) else 0)
        if st.stored_bytes is not None:
            m.backup_size.labels(*labels).set(st.stored_bytes)
        if st.source_bytes is not None:
            m.backup_source_size.labels(*labels).set(st.source_bytes)
        if st.last_status in RESULTS:  # an interrupted backup changes nothing
            m.backup_last_status.labels(*labels).set(1 if st.last_status == "success" else 0)

    def running_jobs(self) -> list[Snapshot]:
        return self.services.progress.snapshots()

    def refresh_metrics(self) -> None:
        """Time-dependent gauges, recomputed at every scrape."""
        now = self.clock()
        for st in self.sources.values():
            # A physical source recovers to its newest archived WAL, not just its base backup.
            point, archived = st.last_capture, self.wal.recovery_point(st.ref)
            if point is not None and archived is not None:
                point = max(point, archived)
            rpo = (now - point).total_seconds() if point else float("inf")
            self.metrics.rpo.labels(st.ref.plan, st.ref.source).set(rpo)
        for plan in self.cfg.plans:
            age = now.date() - plan.reviewed_on
            self.metrics.plan_review_age.labels(plan.name).set(age.total_seconds())
        self.retention.publish(now)
        self.metrics.publish_jobs(self.services.progress.snapshots())

    def _has_backup(self, ref: SourceRef) -> bool:
        st = self.sources.get(ref)
        return st is not None and st.last_capture is not None

    def _retention_busy(self, ref: SourceRef) -> bool:
        """Retention leaves a source alone while its backup runs, and when one is about to
        start: the sweep holds the source lock for a moment, and a backup starting then would
        fail on it."""
        st = self.sources.get(ref)
        if st is None:
            return False
        soon = self.clock() + timedelta(seconds=30)
        return st.running or (st.next_due is not None and st.next_due <= soon)

    def _retention_copies_changed(
        self, ref: SourceRef, backup_id: str, region: str, present: bool
    ) -> None:
        """A copy was repaired or destroyed: drd_backup_copies follows for the newest backup."""
        st = self.sources.get(ref)
        if st is not None and st.last_backup_id == backup_id:
            st.copies[region] = present
            self._publish_source(st)

    # -- scheduling ---------------------------------------------------------------------------

    def run_once(self) -> list[SourceRef]:
        """Start every due job that is not already running; return what was started."""
        if self.stopping:
            return []
        return start_due(
            self.sources.values(),
            self.clock(),
            self._backup_job,
            "backup",
            outcome=self._backup_outcome,
            crashed=self._backup_crashed,
        )

    def _backup_crashed(self, st: SourceState, exc: Exception) -> None:
        self._backup_failed(st, str(exc) or type(exc).__name__, began=None)

    def _backup_outcome(self, st: SourceState, cancelled: bool) -> RunOutcome:
        now = self.clock()
        if cancelled:
            return RunOutcome("interrupted", now, "cancelled at shutdown")
        if st.last_status == "success":
            return RunOutcome("success", st.last_finished or now, backup_id=st.last_backup_id)
        return RunOutcome("failure", st.last_finished or now, st.last_error)

    def request_jobs(
        self,
        kind: JobKind,
        plan: str,
        refs: Sequence[SourceRef],
        requested_by: Mapping[str, str],
    ) -> JobRequest:
        """A request (the API's) for the next job of each of `refs`, just made due: its
        resource follows them to their results (drd.daemon.job_requests)."""
        slots: Mapping[SourceRef, JobSlot] = (
            self.sources if kind == "backup" else self.restore_tests.sources
        )
        request = self.job_requests.open(kind, plan, [ref.source for ref in refs], requested_by)
        for ref in refs:
            slots[ref].requests.append(request.runs[ref.source])
        return request

    def job_request(self, job_id: str) -> JobRequest | None:
        return self.job_requests.get(job_id)

    def trigger(self, ref: SourceRef) -> bool:
        """Ask for a backup now (API, tests). False if one is already running."""
        return request_now(self.sources[ref], self.clock(), self._wake)

    def seconds_until_next(self) -> float:
        return seconds_until_due(self.sources.values(), self.clock())

    async def serve(self, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
        """Start every loop, then schedule backups until `stop` is set; reload the config
        whenever `reload` is set (SIGHUP)."""
        watchdog = self.notifier.watchdog_interval
        for loop in self.loops:
            loop.start(stop)
        await self.audit.start()  # ships what an earlier run left unshipped
        events = [stop, self._wake] if reload is None else [stop, self._wake, reload]
        while not stop.is_set():
            if reload is not None and reload.is_set():
                reload.clear()
                await self.reload()
            self.run_once()
            self.update_status()  # the "next backup in" countdown moves
            timeout = min(self.seconds_until_next(), watchdog or 60.0, 60.0)
            self._wake.clear()
            await wait_any(events, max(timeout, 0.05))
            self.notifier.watchdog()

    async def shutdown(self, grace: float) -> None:
        """Stop scheduling; close every loop and give running backups the same `grace` seconds
        (all at once), then cancel what is left."""
        self.stopping = True
        self.update_status()
        self.notifier.stopping()
        states = [*self.sources.values(), *self._retired]
        backups = [st.task for st in states if st.task and not st.task.done()]
        await asyncio.gather(
            *(loop.close(grace) for loop in self.loops), drain(backups, grace, what="backup")
        )
        await self.audit.close(grace=min(grace, 10.0))
        self.history.close()

    # -- reload (SIGHUP) -------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config and its plans (drd.daemon.reload says what may change). The new
        config is validated completely first; a config with errors, or one that changes what
        only a restart applies, is refused and logged, and the running config stays. True if
        the new config took effect."""
        async with self._reload_lock:
            if self.stopping:
                return False
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.ready()

    async def _reload(self) -> bool:
        path = self.cfg.path
        log.info("reload: reading %s", path)
        try:
            new = await asyncio.to_thread(load_config, path)
            refused = restart_only_changes(self.cfg, new)
            if refused:
                raise ConfigError(
                    "changes that need a restart (systemctl restart drd): " + "; ".join(refused)
                )
        except Exception as exc:  # a reload never stops the daemon, whatever went wrong
            detail = str(exc) if isinstance(exc, DrdError) else f"{type(exc).__name__}: {exc}"
            log.error("reload refused, the running config stays: %s", detail)
            first = detail.splitlines()[0] if detail else type(exc).__name__
            self.reload_problem = f"reload refused: {first}"
            self.metrics.config_reload_ok.set(0)
            self.update_status()
            return False
        for warning in new.warnings:
            log.warning("%s", warning)
        changes = config_changes(self.cfg, new)
        await self._apply(new)
        self.reload_problem = None
        self.metrics.config_reload_ok.set(1)
        self.metrics.config_reload_time.set(time.time())
        log.info("reload: config applied (%s)", changes.summary())
        self.update_status()
        return True

    async def _apply(self, new: Config) -> None:
        old = self.cfg
        m = self.metrics
        self.cfg = new
        self.services = dataclasses.replace(self.services, cfg=new)
        if new.daemon.max_concurrent_jobs != old.daemon.max_concurrent_jobs:
            # Jobs started from now on share the new limit; running ones keep their slot.
            self._slots = asyncio.Semaphore(new.daemon.max_concurrent_jobs)
        if new.log != old.log and self.log_flags is not None:
            from drd.logs import setup_logging

            level, fmt = self.log_flags
            setup_logging(level or new.log.level, fmt or new.log.format)

        # Series of what is gone go with it; those of what stays are published afresh.
        new_plans = {p.name: p for p in new.plans}
        for plan in old.plans:
            if plan.name not in new_plans:
                m.forget(plan.name)
                continue
            for region in set(plan.storage.regions) - set(new_plans[plan.name].storage.regions):
                m.forget(plan.name, region=region)
        self._publish_static_metrics()

        added: dict[str, list[SourceState]] = {}
        wanted = {SourceRef(p.name, s.name): (p, s) for p in new.plans for s in p.sources}
        for ref in [r for r in self.sources if r not in wanted]:
            st = self.sources.pop(ref)
            m.forget(ref.plan, ref.source)
            if st.running:  # it finishes (or is cancelled at shutdown) and is forgotten
                self._retired.append(st)
        now = self.clock()
        for ref, (plan, source) in wanted.items():
            known = self.sources.get(ref)
            if known is None:
                fresh = self.sources[ref] = SourceState(ref=ref, plan=plan, source=source)
                added.setdefault(plan.name, []).append(fresh)
                continue
            st = known
            before = (plan_schedule(st.plan), st.plan.targets.rpo)
            st.plan, st.source = plan, source
            if (plan_schedule(plan), plan.targets.rpo) != before and not st.running:
                st.next_due = next_due(
                    plan_schedule(plan),
                    last_capture=st.last_capture,
                    now=now,
                    rpo=plan.targets.rpo,
                    seed=str(ref),
                )
                log.info("%s: next backup due %s", ref, st.next_due.isoformat())
            self._publish_source(st)
        for name, states in added.items():
            await self._load_sources(new_plans[name], states)

        self.region_probe.reconfigure(self.services)
        self.retention.reconfigure(self.services)
        self.restore_tests.reconfigure(self.services, slots=self._slots)
        await self.drills.reconfigure(self.services)
        await self.wal.reconfigure(self.services)
        self._wake.set()  # new and rescheduled sources: look again now

    # -- status (sd_notify STATUS=) -------------------------------------------------------------

    def activities(self) -> list[Activity]:
        """Every job running now, oldest first."""
        out = [
            Activity("backup", str(st.ref), st.started, st.waiting)
            for st in [*self.sources.values(), *self._retired]
            if st.running
        ]
        out += [
            Activity("restore-test", str(t.ref), t.started, t.waiting)
            for t in self.restore_tests.sources.values()
            if t.running
        ]
        out += [
            Activity("drill", f"{run.report.plan} {run.report.drill_id}", run.report.started_at)
            for run in self.drills.runs.values()
            if run.running
        ]
        if self.retention.current is not None:
            plan, began = self.retention.current
            out.append(Activity("retention", plan, began))
        return sorted(out, key=lambda a: (a.started is None, a.started or self.clock()))

    def upcoming(self) -> list[Upcoming]:
        """The next backup and the next restore test that are not running yet."""
        out = []
        for kind, slots in (
            ("backup", list(self.sources.values())),
            ("restore-test", self.restore_tests.waiting_for_their_time()),
        ):
            due = [s for s in slots if s.next_due is not None and not s.running]
            if due:
                first = min(due, key=lambda s: (s.next_due, str(s.ref)))
                assert first.next_due is not None
                out.append(Upcoming(kind, str(first.ref), first.next_due))
        return out

    def status_text(self) -> str:
        return status_line(
            self.activities(),
            self.upcoming(),
            self.clock(),
            stopping=self.stopping,
            note=self.reload_problem,
        )

    def ready(self) -> None:
        """READY=1 with the status: started, or a reload is over."""
        self._status = self.status_text()
        self.notifier.ready(self._status)

    def update_status(self) -> None:
        """Send STATUS= when what it says has changed."""
        text = self.status_text()
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    # -- jobs ---------------------------------------------------------------------------------

    async def _backup_job(self, st: SourceState) -> None:
        # Every line this job logs, down to the strategy's and the regions', says whose it is.
        with log_context(job="backup", plan=st.ref.plan, source=st.ref.source):
            self.update_status()
            try:
                await self._run_backup_job(st)
            finally:
                st.started, st.waiting = None, False
                if self.sources.get(st.ref) is not st:  # removed by a reload while it ran
                    self._retired = [r for r in self._retired if r is not st]
                    self.metrics.forget(st.ref.plan, st.ref.source)
                self._wake.set()  # the scheduler recomputes when to wake up next
                self.restore_tests.wake()  # the source may have its first backup: testable now
                # Not update_status() here: the task counts as running until this returns.
                asyncio.get_running_loop().call_soon(self.update_status)

    def state_failed(self, exc: StateError) -> None:
        """A write to the state directory failed: one line, a metric, /readyz; the job that
        needed it has failed and backs off like any failed job (no retry loop)."""
        log.error("%s", exc)
        self.state_problem = str(exc)
        self.metrics.state_write_errors.inc()
        self.metrics.state_writable.set(0)

    def state_ok(self) -> None:
        if self.state_problem is not None:
            log.info("state directory: writable again")
        self.state_problem = None
        self.metrics.state_writable.set(1)

    def _history_finish(
        self, job_id: int, result: str, *, backup_id: str | None = None, detail: str | None = None
    ) -> None:
        try:
            self.history.finish(job_id, result, backup_id=backup_id, detail=detail)
        except StateError as exc:
            self.state_failed(exc)

    async def _run_backup_job(self, st: SourceState) -> None:
        labels = (st.ref.plan, st.ref.source)
        began = time.monotonic()
        try:
            job_id = self.history.start("backup", *labels)
        except StateError as exc:
            # No staging, no history: the backup cannot run. It fails once and backs off.
            self.state_failed(exc)
            self._backup_failed(st, f"not started: {exc}", began)
            return
        self.state_ok()
        d = self.cfg.daemon
        try:
            st.waiting = self._slots.locked()
            self.update_status()
            async with self._slots:
                st.waiting = False
                self.update_status()
                result = await asyncio.wait_for(
                    self._backup_with_retries(st), d.job_timeout.total_seconds()
                )
        except asyncio.CancelledError:
            self._history_finish(job_id, "interrupted", detail="cancelled at shutdown")
            raise
        except Exception as exc:  # every failure is recorded and reported, none is fatal
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                detail = f"timed out after {d.job_timeout}"
            self._history_finish(job_id, "failure", detail=detail)
            self._backup_failed(st, detail, began)
            return
        degraded = "; ".join(result.degraded)
        self._history_finish(
            job_id,
            "success",
            backup_id=result.backup_id,
            detail=f"degraded: {degraded}" if degraded else None,
        )
        self.metrics.backups.labels(*labels, "success").inc()
        if degraded:
            self.metrics.backups_degraded.labels(*labels).inc()
        self.metrics.backup_duration.labels(*labels).observe(time.monotonic() - began)
        self.metrics.backup_last_success.labels(*labels).set(time.time())
        body = result.manifest.body
        st.last_capture = result.manifest.public.started
        st.last_backup_id = result.backup_id
        st.copies = {r: r in result.committed_regions for r in st.plan.storage.regions}
        st.stored_bytes, st.source_bytes = body.ciphertext_size, body.plaintext_size
        st.last_status, st.last_error = "success", None
        st.consecutive_failures = 0
        st.last_finished = self.clock()
        st.next_due = next_due(
            plan_schedule(st.plan),
            last_capture=st.last_capture,
            now=self.clock(),
            rpo=st.plan.targets.rpo,
            seed=str(st.ref),
        )
        self._publish_source(st)

    def _backup_failed(self, st: SourceState, detail: str, began: float | None) -> None:
        labels = (st.ref.plan, st.ref.source)
        log.error("backup %s failed: %s", st.ref, detail)
        self.metrics.backups.labels(*labels, "failure").inc()
        if began is not None:  # None: a job that raised, whose start is not known here
            self.metrics.backup_duration.labels(*labels).observe(time.monotonic() - began)
        st.last_status, st.last_error = "failure", detail
        st.consecutive_failures += 1
        st.last_finished = self.clock()
        st.next_due = self._after_failure(st)
        self._publish_source(st)

    async def _backup_with_retries(self, st: SourceState) -> BackupResult:
        d = self.cfg.daemon
        retrying = AsyncRetrying(
            stop=stop_after_attempt(d.retries + 1),
            wait=wait_exponential(multiplier=d.retry_wait.total_seconds(), max=300),
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.warning("backup %s: attempt %d", st.ref, attempt.retry_state.attempt_number)
                # The last backup's size is the estimate: the daemon knows it already.
                with self.services.progress.track(
                    "backup", st.ref.plan, st.ref.source, total=st.source_bytes
                ) as progress:
                    return await backup_source(
                        st.plan,
                        st.source,
                        self.regions,
                        self.keyring,
                        self.cfg.state_dir,
                        clock=self.clock,
                        progress=progress,
                    )
        raise AssertionError("unreachable")

    def _after_failure(self, st: SourceState) -> datetime:
        """Back off after a failed job, but never past the next regular slot."""
        low, high = FAILURE_BACKOFF
        backoff = min(low * (1 << min(max(st.consecutive_failures - 1, 0), 16)), high)
        now = self.clock()
        regular = next_due(
            plan_schedule(st.plan), last_capture=st.last_capture or now, now=now, seed=str(st.ref)
        )
        return min(now + backoff, regular) if regular > now else now + backoff

    # -- readiness ----------------------------------------------------------------------------

    async def probe_regions(self) -> dict[str, str]:
        """Probe every region now: region name -> problem ("" when fine), and drd_region_up
        to match."""
        return await self.region_probe.run_once()

    def region_problems(self) -> dict[str, str]:
        """Region name -> why it is down ("" when up), from the last operation or probe; one
        nothing has asked yet is not up either."""
        return {name: self._region_problem(name) for name in self.regions}

    def _region_problem(self, name: str) -> str:
        if not self.health.known(name):
            return NOT_PROBED
        return "" if self.health.is_up(name) else self.health.state(name).problem

    @property
    def regions_probed(self) -> bool:
        """The first probe round has finished (until then /readyz waits for it)."""
        return self.region_probe.first_round_done


def run_daemon(
    config_path: Path | None, keys: str | None, log: tuple[str | None, str | None] = (None, None)
) -> int:
    assert config_path is not None
    return asyncio.run(_main(config_path, keys, log))


async def _main(
    config_path: Path, keys: str | None, log_flags: tuple[str | None, str | None]
) -> int:
    from contextlib import AsyncExitStack

    from drd.logs import setup_logging
    from drd.runtime import keyring_for, open_regions
    from drd.server.app import start_http
    from drd.verify.restore_run import configured_scratch_dsns
    from drd.verify.scratch.cloudsql_env import sweep_labelled_instances
    from drd.verify.scratch.registry import sweep_leftovers

    cfg = load_config(config_path)
    setup_logging(log_flags[0] or cfg.log.level, log_flags[1] or cfg.log.format)
    keyring = keyring_for(cfg, keys)
    notifier = Notifier()
    stop = asyncio.Event()
    # SIGHUP (systemctl reload drd) is taken from the start, so that one sent while drd is
    # still starting is not the default "terminate"; the reload happens once drd serves.
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    metrics = Metrics()
    health = RegionHealth(metrics)
    async with AsyncExitStack() as stack:
        region_list = await open_regions(stack, cfg, [], metrics=metrics, health=health)
        daemon = Daemon(
            cfg,
            keyring,
            {r.name: r for r in region_list},
            metrics=metrics,
            notifier=notifier,
            health=health,
        )
        daemon.log_flags = log_flags
        # Scratch environments of restore tests a crash interrupted go first.
        await sweep_leftovers(cfg.state_dir, configured_scratch_dsns(cfg))
        await sweep_labelled_instances(cfg)
        await daemon.load_state()
        runner = await start_http(daemon, cfg.api.listen, cfg.api.tls)
        stack.push_async_callback(runner.cleanup)
        await daemon.probe_regions()
        daemon.ready()
        log.info(
            "drd running: %d plan(s), %d source(s), API on %s://%s",
            len(cfg.plans),
            len(daemon.sources),
            "https" if cfg.api.tls else "http",
            cfg.api.listen,
        )
        await daemon.serve(stop, reload)
        log.info("drd stopping")
        await daemon.shutdown(cfg.daemon.shutdown_grace.total_seconds())
    log.info("drd stopped")
    return 0
