"""The daemon's restore-test scheduler: every source is tested on its plan's own schedule.

- Each source's tests run every `restore_test.every` (default daily), on slots anchored like
  backups (drd.daemon.schedule), first as soon as the source has a backup. A test interrupted by a
  crash counts as run at its start, so a restart does not redo it at once.
- Never two tests of one source at once: one task per source here, and the cross-process
  restore-test lock (a `drd restore-test` on the same host) in drd.verify.restore_run.
- Tests share the daemon's job slots (daemon.max_concurrent_jobs) with backups.
- The scheduler follows drd.daemon.lifecycle: `run_once()` is the scheduling step, `start()` runs
  it as a task (woken early by `trigger(ref)`, the API asking for a test now, by a finished test,
  and by `wake()`, the daemon saying a backup finished), and `close(grace)` lets running tests
  finish within the grace before cancelling them.
- Results go to the job history (kind "restore-test", the reports' summaries as detail), the
  restore-test metrics (drd.verify.restore_run.record_metrics) and `status(ref)` for /api/v1/status;
  on start the last results are taken back from the history.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drd.config.models import Plan
from drd.daemon.history import History
from drd.daemon.job_requests import RunOutcome
from drd.daemon.lifecycle import cancel_task, drain, run_rounds
from drd.daemon.schedule import Schedule, next_due, slot_after
from drd.daemon.slots import JobSlot, request_now, seconds_until_due, start_due
from drd.errors import BackupNotFound, StateError
from drd.layout import SourceRef
from drd.locks import LockBusy
from drd.logs import log_context
from drd.metrics import RESULTS
from drd.runtime import Services
from drd.strategies.base import SourceOptions
from drd.verify.restore_report import summary_of
from drd.verify.restore_run import restore_tests_for

log = logging.getLogger(__name__)

JOB_KIND = "restore-test"
#: how soon to look again when there was nothing to test, or another process was testing
RETRY_AFTER = timedelta(minutes=5)


@dataclass(kw_only=True)
class SourceTests(JobSlot):
    plan: Plan
    source: SourceOptions
    #: summaries of the last run's reports (newest backup first)
    last: list[Mapping[str, Any]] = field(default_factory=list)
    last_finished: datetime | None = None
    #: why the last run tested nothing (no backup yet, another test running, an error)
    last_error: str | None = None
    #: the last passing test's RTO
    rto_seconds: float | None = None

    def schedule(self) -> Schedule:
        return Schedule(every=self.plan.restore_test.every)


class RestoreTestScheduler:
    def __init__(
        self,
        services: Services,
        history: History,
        *,
        slots: asyncio.Semaphore,
        has_backup: Callable[[SourceRef], bool],
        on_state_error: Callable[[StateError], None] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.services = services
        self.history = history
        #: told when the job history cannot be written (the daemon's /readyz and metric)
        self.on_state_error = on_state_error or (lambda exc: log.error("%s", exc))
        #: told when a test starts, gets its slot, and ends (the daemon's STATUS=)
        self.on_change = on_change
        self._slots = slots
        self._wake = asyncio.Event()
        self._has_backup = has_backup
        self._task: asyncio.Task[None] | None = None
        self.stopping = False
        self.sources: dict[SourceRef, SourceTests] = {}
        #: tests of sources a reload removed, still running (close() waits for them)
        self._retired: list[SourceTests] = []
        for plan in services.cfg.plans:
            for source in plan.sources:
                ref = SourceRef(plan.name, source.name)
                self.sources[ref] = SourceTests(ref=ref, plan=plan, source=source)

    def load_state(self, states: Collection[SourceTests] | None = None) -> None:
        """The last results from the job history; when each source is next due."""
        now, metrics = self.services.clock(), self.services.metrics
        for st in self.sources.values() if states is None else states:
            labels = (st.ref.plan, st.ref.source)
            last = self.history.last(JOB_KIND, *labels)
            last_run = None
            if last is not None:
                last_run = datetime.fromtimestamp(last.started_at, now.tzinfo)
                st.last = _reports(last.detail)
            # The last test that passed or failed (a skipped or interrupted one says neither),
            # so that the status is there right after a start, not a test interval later.
            decided = self.history.last(JOB_KIND, *labels, result=RESULTS)
            if decided is not None:
                passed = decided.result == "success"
                metrics.restore_test_last_status.labels(*labels).set(1 if passed else 0)
            good = self.history.last(JOB_KIND, *labels, result="success")
            if good is not None and good.finished_at is not None:
                metrics.restore_test_last_success.labels(*labels).set(good.finished_at)
                rto = next((r.get("rto_seconds") for r in _reports(good.detail)), None)
                if isinstance(rto, int | float):
                    st.rto_seconds = float(rto)
                    metrics.rto.labels(*labels).set(rto)
            st.next_due = next_due(
                st.schedule(), last_capture=last_run, now=now, seed=f"{JOB_KIND}:{st.ref}"
            )
            log.info("%s: next restore test due %s", st.ref, st.next_due.isoformat())

    async def run_once(self) -> list[SourceRef]:
        """Start every due test (of a source that has a backup) not already running."""
        if self.stopping:
            return []
        # A source is tested once its first backup is there.
        now = self.services.clock()
        return start_due(
            self.sources.values(),
            now,
            self._job,
            JOB_KIND,
            self._eligible,
            self._outcome,
            self._crashed,
        )

    def _crashed(self, st: SourceTests, exc: Exception) -> None:
        labels = (st.ref.plan, st.ref.source)
        metrics = self.services.metrics
        st.last_error = str(exc) or type(exc).__name__
        metrics.restore_tests.labels(*labels, "failure").inc()
        metrics.restore_test_last_status.labels(*labels).set(0)
        st.next_due = self.services.clock() + RETRY_AFTER
        self._wake.set()

    def _outcome(self, st: SourceTests, cancelled: bool) -> RunOutcome:
        now = self.services.clock()
        if cancelled:
            return RunOutcome("interrupted", now, "cancelled at shutdown")
        if st.last_error is not None:
            return RunOutcome("failure", now, st.last_error)
        tested = st.last[0].get("backup_id") if st.last else None
        failed = [r for r in st.last if r.get("result") != "passed"]
        if failed:
            why = "; ".join(
                f"{r.get('backup_id')}: {r.get('failure_category')}: {r.get('failure_message')}"
                for r in failed
            )
            return RunOutcome("failure", now, why, tested)
        return RunOutcome("success", now, backup_id=tested)

    def _eligible(self, st: SourceTests) -> bool:
        return self._has_backup(st.ref)

    def waiting_for_their_time(self) -> list[SourceTests]:
        """The sources that will be tested when they are next due (they have a backup)."""
        return [st for st in self.sources.values() if self._eligible(st)]

    def reconfigure(self, services: Services, *, slots: asyncio.Semaphore) -> None:
        """A reload: new sources are scheduled (from their history), removed ones are no
        longer (a test of theirs that is running finishes), and a changed interval moves the
        next test."""
        self.services, self._slots = services, slots
        wanted = {
            SourceRef(plan.name, source.name): (plan, source)
            for plan in services.cfg.plans
            for source in plan.sources
        }
        for ref in [r for r in self.sources if r not in wanted]:
            st = self.sources.pop(ref)
            if st.running:
                self._retired.append(st)
        added: list[SourceTests] = []
        for ref, (plan, source) in wanted.items():
            known = self.sources.get(ref)
            if known is None:
                fresh = self.sources[ref] = SourceTests(ref=ref, plan=plan, source=source)
                added.append(fresh)
                continue
            st = known
            every = st.plan.restore_test.every
            st.plan, st.source = plan, source
            if plan.restore_test.every != every and not st.running:
                last = self.history.last(JOB_KIND, ref.plan, ref.source)
                last_run = (
                    datetime.fromtimestamp(last.started_at, services.clock().tzinfo)
                    if last is not None
                    else None
                )
                st.next_due = next_due(
                    st.schedule(),
                    last_capture=last_run,
                    now=services.clock(),
                    seed=f"{JOB_KIND}:{ref}",
                )
        self.load_state(added)
        self._wake.set()

    def trigger(self, ref: SourceRef) -> bool:
        """Ask for a restore test of `ref` now. False if one is already running."""
        return request_now(self.sources[ref], self.services.clock(), self._wake)

    def wake(self) -> None:
        """Look again now (a backup finished: its source may have become testable)."""
        self._wake.set()

    def seconds_until_due(self) -> float:
        return seconds_until_due(self.sources.values(), self.services.clock(), self._eligible)

    def tasks(self) -> list[asyncio.Task[None]]:
        states = [*self.sources.values(), *self._retired]
        return [st.task for st in states if st.task and not st.task.done()]

    def start(self, stop: asyncio.Event) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                run_rounds(self, stop, self._wake), name="restore-tests"
            )

    async def close(self, grace: float) -> None:
        """Start no more tests; give running ones `grace` seconds, then cancel them (a
        cancelled test removes its scratch environment and is recorded as interrupted)."""
        self.stopping = True
        task, self._task = self._task, None
        await cancel_task(task)
        await drain(self.tasks(), grace, what="restore test")

    def status(self, ref: SourceRef) -> dict[str, Any]:
        """The source's restore-test view for /api/v1/status."""
        st = self.sources[ref]
        last = st.last[0] if st.last else None
        return {
            "rto_seconds": st.rto_seconds,
            "rto_ok": (
                st.rto_seconds <= st.plan.targets.rto.total_seconds()
                if st.rto_seconds is not None
                else None
            ),
            "last_restore_test": (
                {**last, "others": list(st.last[1:])} if last is not None else None
            ),
            "restore_test": {
                "running": st.running,
                "next_due": st.next_due.isoformat() if st.next_due else None,
                "last_error": st.last_error,
                "every_seconds": st.plan.restore_test.every.total_seconds(),
            },
        }

    def _finish(
        self, job_id: int, result: str, *, backup_id: str | None = None, detail: str | None = None
    ) -> None:
        try:
            self.history.finish(job_id, result, backup_id=backup_id, detail=detail)
        except StateError as exc:
            self.on_state_error(exc)

    async def _job(self, st: SourceTests) -> None:
        with log_context(job=JOB_KIND, plan=st.ref.plan, source=st.ref.source):
            self.on_change()
            try:
                await self._test(st)
            finally:
                st.started, st.waiting = None, False
                if self.sources.get(st.ref) is not st:  # removed by a reload while it ran
                    self._retired = [r for r in self._retired if r is not st]
                    self.services.metrics.forget(st.ref.plan, st.ref.source)
                # The task counts as running until this returns.
                asyncio.get_running_loop().call_soon(self.on_change)

    async def _test(self, st: SourceTests) -> None:
        labels = (st.ref.plan, st.ref.source)
        services = self.services
        began = services.clock()
        try:
            job_id = self.history.start(JOB_KIND, *labels)
        except StateError as exc:
            # The test cannot be recorded, so it does not run: it fails once and waits like any
            # test that could not run (no retry loop).
            st.last_error = str(exc)
            self.on_state_error(exc)
            services.metrics.restore_tests.labels(*labels, "failure").inc()
            regular = slot_after(st.schedule(), began, f"{JOB_KIND}:{st.ref}")
            st.next_due = min(regular, services.clock() + RETRY_AFTER)
            self._wake.set()
            return
        retry_at: datetime | None = None
        try:
            st.waiting = self._slots.locked()
            self.on_change()
            async with self._slots:
                st.waiting = False
                self.on_change()
                ref = st.ref
                with services.progress.track("restore-test", ref.plan, ref.source) as progress:
                    reports = await restore_tests_for(
                        st.plan,
                        st.source,
                        services.regions,
                        services.keyring,
                        state_dir=services.state_dir,
                        base_dir=services.base_dir,
                        clock=services.clock,
                        metrics=services.metrics,
                        progress=progress,
                    )
        except asyncio.CancelledError:
            self._finish(job_id, "interrupted", detail="cancelled at shutdown")
            raise
        except (BackupNotFound, LockBusy) as exc:
            # Nothing to test yet, or a `drd restore-test` is testing it right now.
            st.last_error = str(exc)
            self._finish(job_id, "skipped", detail=str(exc))
            retry_at = services.clock() + RETRY_AFTER
        except Exception as exc:  # never fatal to the daemon; recorded and retried later
            log.exception("restore test of %s could not run", st.ref)
            st.last_error = str(exc) or type(exc).__name__
            self._finish(job_id, "failure", detail=st.last_error)
            services.metrics.restore_tests.labels(*labels, "failure").inc()
            services.metrics.restore_test_last_status.labels(*labels).set(0)
            retry_at = services.clock() + RETRY_AFTER
        else:
            summaries: list[Mapping[str, Any]] = [dict(summary_of(r)) for r in reports]
            ok = all(r.passed for r in reports)
            st.last, st.last_error, st.last_finished = summaries, None, services.clock()
            if ok and reports[0].measured:
                st.rto_seconds = reports[0].phases.rto
            self._finish(
                job_id,
                "success" if ok else "failure",
                backup_id=reports[0].backup_id,
                detail=json.dumps({"reports": summaries}),
            )
        finally:
            regular = slot_after(st.schedule(), began, f"{JOB_KIND}:{st.ref}")
            st.next_due = min(regular, retry_at) if retry_at else regular
            self._wake.set()


def _reports(detail: str | None) -> list[Mapping[str, Any]]:
    """The report summaries a history row's detail holds (empty if it holds none)."""
    try:
        data = json.loads(detail or "")
    except ValueError:
        return []
    reports = data.get("reports") if isinstance(data, dict) else None
    return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []
