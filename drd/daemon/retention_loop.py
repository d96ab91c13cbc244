"""The daemon's retention task: per plan, sweep (drd.retention.sweep) then repair
(drd.retention.repair).

A plan is swept when its next backup expires (so copies are destroyed at their destroy age, not
up to a sweep interval later), at least hourly (leftovers, repairs, a region that came back),
and five minutes after a sweep that failed or had to skip a source. The loop follows
drd.daemon.lifecycle: `run_once()` is the step tests drive with an injected clock;
`start()`/`close()` run it as a task the daemon stops at shutdown (at once: a sweep or a repair
cancelled midway leaves nothing the next one does not finish).

Sources whose backup is running (or, in the daemon, about to start) are left out of the
round: the sweep takes each source's lock without waiting, and skips the source (and checks
again in five minutes) when `is_busy` says so or another process holds the lock. Only the
sweep holds the locks, for the time of its listing and deletions; repairs copy committed
backups, which a running backup never touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from drd.config.models import Plan
from drd.daemon.lifecycle import cancel_task, run_rounds
from drd.layout import SourceRef
from drd.locks import LockBusy, source_lock
from drd.logs import log_context
from drd.metrics import RESULTS
from drd.repository.heads import HeadMemory
from drd.retention.policy import DEFAULT_ORPHAN_GRACE
from drd.retention.repair import RepairReport, repair
from drd.retention.sweep import RETENTION_STATE, RetentionMemory, SweepReport, sweep
from drd.runtime import Services
from drd.strategies.postgres_physical import KIND as PHYSICAL

log = logging.getLogger(__name__)

SWEEP_EVERY = timedelta(hours=1)
RETRY_AFTER = timedelta(minutes=5)
_MIN_WAIT = timedelta(seconds=1)

#: (source, backup id, region, now holds a copy)
CopiesChanged = Callable[[SourceRef, str, str, bool], None]


@contextlib.contextmanager
def lock_free_sources(
    state_dir: Path, plan: Plan, is_busy: Callable[[SourceRef], bool] = lambda ref: False
) -> Iterator[set[str]]:
    """Hold the lock of every source of `plan` that is free (without waiting); yield the names
    of the busy ones, which a sweep must leave alone."""
    busy: set[str] = set()
    with contextlib.ExitStack() as stack:
        for source in plan.sources:
            ref = SourceRef(plan.name, source.name)
            if is_busy(ref):
                busy.add(source.name)
                continue
            try:
                stack.enter_context(source_lock(state_dir, ref))
            except LockBusy:
                busy.add(source.name)
        if busy:
            log.info("retention of plan %s: skipping busy source(s) %s", plan.name, sorted(busy))
        yield busy


class RetentionLoop:
    def __init__(
        self,
        services: Services,
        *,
        is_busy: Callable[[SourceRef], bool] = lambda ref: False,
        on_copies: CopiesChanged = lambda ref, backup_id, region, present: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.services = services
        self.is_busy = is_busy
        self.on_copies = on_copies
        #: told when a plan's round starts and ends (the daemon's STATUS=)
        self.on_change = on_change
        self.memory = RetentionMemory(services.state_dir / RETENTION_STATE)
        # What each region is compared with to notice one going back in time (repair).
        self.heads = HeadMemory(services.state_dir)
        # A backup job may run up to job_timeout: its data is not a leftover before that.
        self.orphan_grace = max(DEFAULT_ORPHAN_GRACE, services.cfg.daemon.job_timeout)
        self.due: dict[str, datetime] = {}
        self.sweeps: dict[str, SweepReport] = {}
        self.repairs: dict[str, RepairReport] = {}
        #: the plan being swept or repaired now, and since when
        self.current: tuple[str, datetime] | None = None
        self._task: asyncio.Task[None] | None = None
        self._configure()
        # Ages remembered from before a restart count from the first scrape on.
        self.memory.publish(services.metrics, services.clock())

    def _configure(self) -> None:
        cfg, metrics = self.services.cfg, self.services.metrics
        # A backup job may run up to job_timeout: its data is not a leftover before that.
        self.orphan_grace = max(DEFAULT_ORPHAN_GRACE, cfg.daemon.job_timeout)
        for plan in cfg.plans:
            for region in plan.storage.regions:
                for result in RESULTS:
                    metrics.copy_repairs.labels(plan.name, region, result)
        self.memory.keep_plans({plan.name: plan.storage.regions for plan in cfg.plans})

    def reconfigure(self, services: Services) -> None:
        """A reload: the new config's plans from now on. Plans that are new or whose retention,
        regions or sources changed are swept at the next round; removed ones are forgotten (a
        round of theirs that is running finishes)."""
        old = {p.name: p for p in self.services.cfg.plans}
        self.services = services
        names = {p.name for p in services.cfg.plans}
        for table in (self.due, self.sweeps, self.repairs):
            for name in [n for n in table if n not in names]:
                del table[name]
        for plan in services.cfg.plans:
            before = old.get(plan.name)
            if before is None or (before.retention, before.storage, before.sources) != (
                plan.retention,
                plan.storage,
                plan.sources,
            ):
                self.due.pop(plan.name, None)  # due now
        self._configure()

    # -- one round ----------------------------------------------------------------------------

    async def run_once(self, *, force: bool = False) -> list[SweepReport]:
        """Sweep and repair every plan that is due (every plan with `force`)."""
        cfg = self.services.cfg
        now = self.services.clock()
        done = []
        for plan in cfg.plans:
            if not force and self.due.get(plan.name, now) > now:
                continue
            self.current = (plan.name, self.services.clock())
            self.on_change()
            with log_context(job="retention", plan=plan.name):
                try:
                    done.append(
                        await asyncio.wait_for(
                            self.run_plan(plan, now), cfg.daemon.job_timeout.total_seconds()
                        )
                    )
                except Exception as exc:  # one plan's failure must not stop the others'
                    log.error("retention of plan %s failed: %s", plan.name, exc, exc_info=exc)
                    self.due[plan.name] = now + RETRY_AFTER
                finally:
                    self.current = None
                    self.on_change()
            if plan.name not in {p.name for p in self.services.cfg.plans}:
                self._forget(plan.name)  # a reload removed it while it was swept
        return done

    def _forget(self, plan: str) -> None:
        for table in (self.due, self.sweeps, self.repairs):
            table.pop(plan, None)
        self.memory.keep_plans({p.name: p.storage.regions for p in self.services.cfg.plans})
        self.services.metrics.forget(plan)

    async def run_plan(self, plan: Plan, now: datetime) -> SweepReport:
        services = self.services
        with self._locks(plan) as busy:
            report = await sweep(
                plan,
                services.regions,
                now=now,
                metrics=services.metrics,
                orphan_grace=self.orphan_grace,
                memory=self.memory,
                skip_sources=busy,
                keyring=services.keyring,
            )
        self.sweeps[plan.name] = report
        self._publish_windows(plan, report)
        for region in report.regions.values():
            for backup in region.destroyed:
                self.on_copies(backup.ref, backup.backup_id, region.region, False)
        repaired = await repair(
            plan,
            services.regions,
            services.keyring,
            metrics=services.metrics,
            now=now,
            destroy_age=report.destroy_ages,
            skip_sources=busy,
            memory=self.heads,
        )
        self.repairs[plan.name] = repaired
        for copy in repaired.repaired:
            self.on_copies(SourceRef.parse(copy.ref), copy.backup_id, copy.region, True)
        self.due[plan.name] = self._next_run(report, repaired, bool(busy))
        log.info(
            "retention of plan %s: destroyed %d copies, %d failed, repaired %d, next at %s",
            plan.name,
            sum(len(r.destroyed) for r in report.regions.values()),
            report.failures,
            len(repaired.repaired),
            self.due[plan.name].isoformat(),
        )
        return report

    def _publish_windows(self, plan: Plan, report: SweepReport) -> None:
        """drd_pitr_window_start_timestamp_seconds of the plan's physical sources: where the
        recovery window begins now that the sweep destroyed what it did."""
        gauge = self.services.metrics.pitr_window_start
        for source in plan.sources:
            if source.kind != PHYSICAL:
                continue
            ref = SourceRef(plan.name, source.name)
            if ref.source in report.skipped_sources or ref not in report.bases:
                continue  # not decided this time: the value stands
            start = report.window_start(ref)
            if start is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(plan.name, source.name)
            else:
                gauge.labels(plan.name, source.name).set(start.timestamp())

    def _next_run(self, report: SweepReport, repaired: RepairReport, busy: bool) -> datetime:
        now = report.now
        # Never wait longer than a new backup takes to expire.
        after = min(SWEEP_EVERY, max(report.min_destroy_age, _MIN_WAIT))
        if busy or not report.ok or repaired.failed or repaired.unreachable:
            after = min(after, RETRY_AFTER)
        due = now + after
        expiry = report.next_expiry()
        if expiry is not None:
            due = min(due, max(expiry, now + _MIN_WAIT))
        return due

    def _locks(self, plan: Plan) -> contextlib.AbstractContextManager[set[str]]:
        return lock_free_sources(self.services.state_dir, plan, self.is_busy)

    # -- as a task ----------------------------------------------------------------------------

    def seconds_until_due(self) -> float:
        now = self.services.clock()
        dues = [self.due.get(plan.name, now) for plan in self.services.cfg.plans]
        if not dues:
            return SWEEP_EVERY.total_seconds()
        return min(max((min(dues) - now).total_seconds(), 1.0), SWEEP_EVERY.total_seconds())

    def start(self, stop: asyncio.Event) -> None:
        if self._task is None:
            self._task = asyncio.create_task(run_rounds(self, stop), name="retention")

    async def close(self, grace: float) -> None:
        """Stop at once, whatever `grace`: what a sweep or repair leaves half done, the next one
        finishes."""
        task, self._task = self._task, None
        await cancel_task(task)

    # -- what the daemon shows ----------------------------------------------------------------

    def publish(self, now: datetime) -> None:
        self.memory.publish(self.services.metrics, now)

    def problems(self) -> dict[str, list[str]]:
        """Region -> why it cannot destroy backups in time (error findings of the last sweeps),
        for /readyz."""
        out: dict[str, list[str]] = {}
        for report in self.sweeps.values():
            for finding in report.findings:
                if finding.severity == "error" and finding.message not in out.get(
                    finding.region, []
                ):
                    out.setdefault(finding.region, []).append(finding.message)
        return out
