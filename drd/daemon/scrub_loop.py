"""The daemon's scrub task: re-read stored copies on a schedule (drd.retention.scrub).

Every ten minutes the loop spends the read budget it accrued (daemon.scrub.bytes_per_hour,
at most an hour's worth) on the copies that are due, plan by plan, least recently verified
first, and replaces the damaged ones from a region whose copy verifies. `run_once()` is the
step tests drive with an injected clock; `start()`/`close()` run it as a task the daemon
stops at shutdown (a scrub cancelled midway has only spent reads; a replacement cancelled
midway leaves nothing the next repair does not finish).

Sources whose backup is running (or about to start) are left out of a round, as retention
does: their newest copies may be being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from drd.daemon.lifecycle import run_rounds
from drd.durations import format_size
from drd.layout import SourceRef
from drd.repository.heads import HeadMemory
from drd.retention.scrub import Budget, ScrubMemory, ScrubReport, scrub_plan
from drd.runtime import Services

log = logging.getLogger(__name__)

SCRUB_EVERY = timedelta(minutes=10)


class ScrubLoop:
    """The daemon's scrub (the lifecycle of drd.daemon.lifecycle.Loop)."""

    def __init__(
        self,
        services: Services,
        *,
        is_busy: Callable[[SourceRef], bool] = lambda ref: False,
    ) -> None:
        cfg, metrics = services.cfg, services.metrics
        self.cfg = cfg
        self.settings = cfg.daemon.scrub
        self.regions = services.regions
        self.keyring = services.keyring
        self.metrics = metrics
        self.clock = services.clock
        self.is_busy = is_busy
        self.memory = ScrubMemory(cfg.state_dir / "scrub.json")
        self.heads = HeadMemory(cfg.state_dir)
        self.budget = Budget(self.settings.bytes_per_hour)
        self.reports: dict[str, ScrubReport] = {}
        self._task: asyncio.Task[None] | None = None
        metrics.scrub_period.set(self.settings.period.total_seconds())
        for plan in cfg.plans:
            for region in plan.storage.regions:
                metrics.copies_damaged.labels(plan.name, region)
                metrics.scrub_bytes.labels(region)

    async def run_once(self) -> list[ScrubReport]:
        """One round over every plan, within the budget accrued since the last one."""
        now = self.clock()
        self.budget.refill(now)
        self.memory.reload()  # `drd check` may have verified copies meanwhile
        done = []
        for plan in self.cfg.plans:
            if not self.budget.available:
                break
            busy = {s.name for s in plan.sources if self.is_busy(SourceRef(plan.name, s.name))}
            try:
                report = await asyncio.wait_for(
                    scrub_plan(
                        plan,
                        self.regions,
                        self.keyring,
                        self.memory,
                        now=now,
                        period=self.settings.period,
                        budget=self.budget,
                        metrics=self.metrics,
                        heads=self.heads,
                        skip_sources=busy,
                    ),
                    self.cfg.daemon.job_timeout.total_seconds(),
                )
            except Exception as exc:  # one plan's failure must not stop the others' scrub
                log.error("scrub of plan %s failed: %s", plan.name, exc, exc_info=exc)
                continue
            self.reports[plan.name] = report
            done.append(report)
            if report.checked or report.deferred:
                log.info(
                    "scrub of plan %s: %d copies checked (%s), %d damaged, %d left for later",
                    plan.name,
                    len(report.checked),
                    format_size(report.bytes_read),
                    len(report.damaged),
                    report.deferred,
                )
        return done

    def seconds_until_due(self) -> float:
        return SCRUB_EVERY.total_seconds()

    def start(self, stop: asyncio.Event) -> None:
        if self._task is None and self.settings.enabled:
            self._task = asyncio.create_task(run_rounds(self, stop), name="scrub")

    async def close(self, grace: float = 0.0) -> None:
        """At once, whatever the grace: a scrub only reads, its repairs are finished later."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
