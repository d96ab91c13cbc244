"""The daemon's region probe: every region asked one cheap real question on a schedule.

Backups touch a region a few times a day; without the probe, drd_region_up of a region that
went down after the last backup would stay 1 until the next one, and the DrdRegionDown alert
would never fire in time. Every `daemon.region_probe.every` (default 30 s) each region is
asked `Storage.check()`, concurrently, each within `daemon.region_probe.timeout`:

- a GCS region lists at most one object under its prefix (storage.objects.list, which drd
  needs anyway), no retries; a local region checks its root is a directory it can read and
  write. Nothing is written while writes work: a probe object in a bucket with a retention
  policy or a hold could not be deleted;
- a region whose last write failed (a full disk, a credential without objects.create answer a
  listing all the same) is also written to: a small new object under `_probe/`, deleted
  again. It stays down until that write succeeds, instead of coming back up at every listing
  between two failed backups; after one that succeeds the probe lists only again. `_probe/` is
  no plan's prefix (plan names cannot start with `_`), so the catalog, leftovers and
  retention never look at it; a delete a bucket's retention policy refuses leaves that one
  object (logged), never one per probe: a refused delete is not a failed write;
- once an hour, before the probe, what `_probe/` and `_doctor/` hold that is over an hour old
  is deleted (drd.daemon.probe_sweep);
- the answer goes to drd.storage.health, as every real operation's outcome does.

/readyz answers from what this (and every operation) found, never asking a region itself: a
region that hangs cannot make the readiness answer late. The HTTP server starts before the
first round, and until that round has finished /readyz answers 503 and a region nothing has
been asked of is "not probed yet", never "ok".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from drd.daemon.lifecycle import run_rounds
from drd.daemon.probe_sweep import ProbeSweeper
from drd.errors import DrdError
from drd.layout import new_backup_id
from drd.retention.doctor import PROBE_PREFIX as DOCTOR_PREFIX
from drd.runtime import Services
from drd.storage.base import Storage
from drd.storage.health import RegionHealth, region_failure

log = logging.getLogger(__name__)

#: where a region whose writes failed is probed with a small object (see the docstring)
PROBE_PREFIX = "_probe"
PROBE_BODY = b"drd region probe: safe to delete\n"


class RegionProbeLoop:
    """The daemon's region probe (the lifecycle of drd.daemon.lifecycle.Loop)."""

    def __init__(self, services: Services, health: RegionHealth) -> None:
        self.services = services
        self.health = health
        self._task: asyncio.Task[None] | None = None
        self._last_round: datetime | None = None
        self.sweeper = ProbeSweeper(services.clock, (f"{PROBE_PREFIX}/", DOCTOR_PREFIX))
        #: a whole round has finished: every region was asked at least once
        self.first_round_done = False

    def reconfigure(self, services: Services) -> None:
        self.services = services
        self.sweeper.clock = services.clock

    async def _ask(self, storage: Storage) -> None:
        await storage.check()
        state = self.health.state(storage.name)
        if not state.write_failed:
            return
        key = f"{PROBE_PREFIX}/{new_backup_id(self.services.clock())}"
        await storage.put(key, PROBE_BODY, if_absent=True)
        try:
            await storage.delete(key)
        except DrdError as exc:
            log.warning("region %s: probe object %s left behind: %s", storage.name, key, exc)
        # The put proved writes work again, whatever the delete said: list-only from here on.
        state.write_failed = False

    async def _probe(self, storage: Storage, limit: float) -> str:
        try:
            await asyncio.wait_for(self._ask(storage), limit)
        except TimeoutError:
            return f"no answer within {limit:g}s"
        except (DrdError, OSError) as exc:
            return region_failure(exc) or ""
        return ""

    async def _sweep(self, storage: Storage, limit: float) -> None:
        try:
            await asyncio.wait_for(self.sweeper.sweep(storage), limit)
        except (TimeoutError, DrdError, OSError) as exc:
            # The probe that follows says what is wrong with the region, if anything is.
            log.debug("region %s: probe objects not swept: %s", storage.name, exc)

    async def run_once(self) -> dict[str, str]:
        """Probe every region now; region -> problem ("" when it answered)."""
        self._last_round = self.services.clock()
        settings = self.services.cfg.daemon.region_probe
        regions = dict(self.services.regions)
        limit = settings.timeout.total_seconds()
        names = list(regions)
        # Before the probe: a refused delete there must not be the region's last word.
        due = [regions[n] for n in names if self.sweeper.due(n)]
        await asyncio.gather(*(self._sweep(storage, limit) for storage in due))
        results = await asyncio.gather(*(self._probe(regions[n], limit) for n in names))
        for name, problem in zip(names, results, strict=True):
            self.health.probed(name, problem)
        self.first_round_done = True
        return dict(zip(names, results, strict=True))

    def seconds_until_due(self) -> float:
        every = self.services.cfg.daemon.region_probe.every.total_seconds()
        if self._last_round is None:
            return 0.0
        elapsed = (self.services.clock() - self._last_round).total_seconds()
        return max(0.0, every - elapsed)

    def start(self, stop: asyncio.Event) -> None:
        if self._task is None:
            self._task = asyncio.create_task(run_rounds(self, stop), name="region-probe")

    async def close(self, grace: float = 0.0) -> None:
        """At once, whatever the grace: a probe only asks, it leaves nothing half done."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
