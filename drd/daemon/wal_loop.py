"""The daemon's continuous WAL archiving of physical PostgreSQL sources (`kind:
postgres-physical` with `archive: stream`, the default).

For every such source of every plan:

- a receiver (drd.daemon.wal_receiver) runs pg_receivewal through the source's replication slot
  (`slot`, default drd_<plan>_<source>, created if missing) into its spool directory;
- every round (each second) the spool is shipped to the plan's regions (drd.daemon.wal_spool):
  completed segments at once, the partial segment every `partial_every` while it grows;
- every `restore_test.pitr_probe.every` of the plan a probe of the source is recorded
  (drd.daemon.pitr_prober), for restore tests at a random point in time;
- every SAMPLE_EVERY (5 s) the server is sampled (its WAL position, the slot's retained WAL)
  for the lag and slot metrics;
- at the first round and then every CATCH_UP_EVERY (every CATCH_UP_SOON while a region is
  behind) the archive is listed in every region (drd.daemon.wal_catchup): missing copies are
  copied from the other regions, superseded partials deleted, gaps counted, and the newest
  archived WAL read back (after a restart that is where the RPO counts from).

The slot of a source that leaves (removed, its plan removed, or switched to `archive:
command`) is dropped on its server (drd.daemon.wal_slots), at the reload that removes it, or at
the next start if it left while the daemon was down.

After a crash nothing is lost or doubled: the slot keeps the WAL the spool has not received,
the spool keeps what min_copies regions do not hold yet, and a segment a region holds is never
written there again. `run_once()` is the round tests drive (receivers not started);
`start()`/`close()` run it all as tasks. At close the receivers are stopped first (pg_receivewal
flushes what it has) and one last round ships it, within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drd.config.models import Plan
from drd.daemon.lifecycle import cancel_task, run_rounds
from drd.daemon.pitr_prober import Prober
from drd.daemon.wal_catchup import catch_up, describe
from drd.daemon.wal_receiver import Receiver
from drd.daemon.wal_slots import RETRY_EVERY as SLOT_RETRY_EVERY
from drd.daemon.wal_slots import SlotRegistry
from drd.daemon.wal_spool import Archived, Shipper, spool_dir
from drd.layout import SourceRef
from drd.logs import log_context
from drd.metrics import RESULTS
from drd.pipeline.source_backup import plan_regions
from drd.retention.sweep import RETENTION_STATE, RetentionMemory
from drd.runtime import Services
from drd.strategies._subprocess import redact
from drd.strategies.postgres_physical import (
    KIND,
    PostgresPhysicalOptions,
    ServerSample,
    default_slot_name,
    dsn_secret,
    sample,
    sql_dsn,
)
from drd.strategies.postgres_wal import parse_segment_name

log = logging.getLogger(__name__)

ROUND_EVERY = 1.0
IDLE_EVERY = 600.0
SAMPLE_EVERY = timedelta(seconds=5)
CATCH_UP_EVERY = timedelta(minutes=10)
CATCH_UP_SOON = timedelta(seconds=30)


def streamed_sources(plan: Plan) -> list[PostgresPhysicalOptions]:
    return [
        s
        for s in plan.sources
        if s.kind == KIND and isinstance(s, PostgresPhysicalOptions) and s.archive == "stream"
    ]


def _signature(plan: Plan, source: PostgresPhysicalOptions) -> tuple[Any, ...]:
    return (source, tuple(plan.storage.regions), plan.storage.min_copies)


def slot_of(plan: Plan, source: PostgresPhysicalOptions) -> str:
    return source.slot or default_slot_name(plan.name, source.name)


@dataclass
class Archiver:
    """One source's archiving: its shipper, receiver and server samples."""

    ref: SourceRef
    source: PostgresPhysicalOptions
    shipper: Shipper
    receiver: Receiver
    prober: Prober
    catch_up_due: datetime | None = None
    sampled_at: datetime | None = None
    #: when the last sample was answered, by this host's clock
    seen_at: datetime | None = None
    last_sample: ServerSample | None = None
    #: the round (services clock) whose sample was the last one answered
    answered_at: datetime | None = None
    #: the archive held everything the server had written at this time (an idle server's
    #: recovery point, later than its newest WAL's)
    complete_at: datetime | None = None
    gaps: list[str] = field(default_factory=list)
    #: what a reload compares to know whether the source must be started afresh
    signature: tuple[Any, ...] = ()
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _db: Any = None
    _sample_problem: str | None = None

    @property
    def labels(self) -> tuple[str, str]:
        return (self.ref.plan, self.ref.source)

    async def sample(self) -> ServerSample | None:
        import psycopg

        try:
            if self._db is None or self._db.closed:
                self._db = await psycopg.AsyncConnection.connect(
                    sql_dsn(self.source.dsn), autocommit=True, connect_timeout=10
                )
            got = await asyncio.wait_for(sample(self._db, self.receiver.slot), 10)
        except Exception as exc:
            why = redact(str(exc) or type(exc).__name__, [dsn_secret(self.source.dsn)])
            if why != self._sample_problem:
                log.warning("%s: cannot sample the server's WAL position: %s", self.ref, why)
            self._sample_problem = why
            await self.close_db()
            return None
        self._sample_problem = None
        self.last_sample = got
        return got

    async def close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()
        await self.prober.close()


class WalLoop:
    """Continuous WAL archiving (module docstring; the lifecycle of drd.daemon.lifecycle.Loop)."""

    def __init__(self, services: Services, *, sample_server: bool = True) -> None:
        self.services = services
        self.sample_server = sample_server
        self.archivers: dict[SourceRef, Archiver] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.slots = SlotRegistry(services.state_dir, services.metrics)
        for plan in services.cfg.plans:
            for source in streamed_sources(plan):
                archiver = self._build(plan, source)
                self.archivers[archiver.ref] = archiver
        self._record_slots()

    def _record_slots(self) -> None:
        """Tell the slot registry which slots are in use; the others are dropped next round."""
        self.slots.configured([(ref, a.receiver.slot) for ref, a in self.archivers.items()])
        for ref, archiver in self.archivers.items():
            self.slots.use(ref, archiver.receiver.slot, archiver.source.dsn)

    def _build(self, plan: Plan, source: PostgresPhysicalOptions) -> Archiver:
        services, metrics = self.services, self.services.metrics
        ref = SourceRef(plan.name, source.name)
        labels = (plan.name, source.name)
        spool = spool_dir(services.state_dir, ref)
        shipper = Shipper(
            ref,
            spool,
            plan_regions(plan, services.regions),
            services.keyring,
            plan.storage.min_copies,
            source.partial_every,
        )

        def up(value: bool) -> None:
            metrics.wal_receiver_up.labels(*labels).set(int(value))

        def restarted() -> None:
            metrics.wal_receiver_restarts.labels(*labels).inc()

        receiver = Receiver(
            str(ref),
            source.dsn,
            spool,
            slot_of(plan, source),
            pg_bin_dir=source.pg_bin_dir,
            on_up=up,
            on_restart=restarted,
        )
        metrics.wal_receiver_up.labels(*labels).set(0)
        metrics.wal_receiver_restarts.labels(*labels)
        metrics.wal_archived.labels(*labels)
        metrics.wal_slot_retained_limit.labels(*labels).set(source.max_slot_retained)
        for region in plan.storage.regions:
            for result in RESULTS:
                metrics.wal_copy_repairs.labels(plan.name, region, result)
        prober = Prober(ref, source.dsn, services.state_dir)
        return Archiver(ref, source, shipper, receiver, prober, signature=_signature(plan, source))

    async def reconfigure(self, services: Services) -> None:
        """A reload: sources that are new, changed (their options, or their plan's regions or
        min_copies) or gone are stopped and started afresh; the others keep running."""
        self.services = services
        wanted = {
            SourceRef(plan.name, source.name): (plan, source)
            for plan in services.cfg.plans
            for source in streamed_sources(plan)
        }
        for ref, archiver in list(self.archivers.items()):
            entry = wanted.get(ref)
            if entry is None or _signature(*entry) != archiver.signature:
                del self.archivers[ref]
                await self._stop_archiver(archiver)
                self._forget(archiver, gone=entry is None)
        for ref, (plan, source) in wanted.items():
            if ref not in self.archivers:
                archiver = self.archivers[ref] = self._build(plan, source)
                if self._task is not None:
                    self._start_receiver(archiver)
        # The receivers of sources that left are stopped: their slots can go now.
        self._record_slots()
        await self.slots.drop_pending(services.clock())
        self._wake.set()

    def _forget(self, archiver: Archiver, *, gone: bool) -> None:
        m = self.services.metrics
        if gone:  # else the retention sweep's value stands: its base backups have not changed
            with contextlib.suppress(KeyError):
                m.pitr_window_start.remove(*archiver.labels)
        for metric in (
            m.wal_last_archived,
            m.wal_archive_lag,
            m.wal_slot_retained,
            m.wal_slot_retained_limit,
            m.wal_gaps,
            m.wal_receiver_up,
            m.wal_receiver_restarts,
            m.wal_archived,
            m.pitr_window_end,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*archiver.labels)

    # -- one round ----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Ship every source's spool (and sample, catch up when due); files stored. Slots of
        sources that left are dropped first (at the first round after a start, and retried)."""
        await self.slots.drop_pending(self.services.clock())
        stored = 0
        for archiver in list(self.archivers.values()):
            with log_context(job="wal", plan=archiver.ref.plan, source=archiver.ref.source):
                try:
                    stored += await self._round(archiver)
                except Exception as exc:  # one source's trouble must not stop the others'
                    log.error("%s: WAL archiving round failed: %s", archiver.ref, exc)
        return stored

    async def _round(self, archiver: Archiver) -> int:
        now = self.services.clock()
        shipper = archiver.shipper
        if self.sample_server and (
            archiver.sampled_at is None or now - archiver.sampled_at >= SAMPLE_EVERY
        ):
            archiver.sampled_at = now
            if await archiver.sample() is not None:
                archiver.answered_at = now
                archiver.seen_at = datetime.now(UTC)  # compared with the spool's file times
        if self.sample_server:
            with contextlib.suppress(KeyError):  # a plan a reload is removing
                await archiver.prober.maybe_probe(self.services.cfg.plan(archiver.ref.plan), now)
        got = archiver.last_sample
        stored = await shipper.ship(
            now,
            covered_lsn=got.slot_lsn if got is not None else None,
            covered_at=archiver.seen_at,
        )
        if stored:
            self.services.metrics.wal_archived.labels(*archiver.labels).inc(stored)
        if shipper.regions_behind and archiver.catch_up_due is not None:
            archiver.catch_up_due = min(archiver.catch_up_due, now + CATCH_UP_SOON)
        if archiver.catch_up_due is None or now >= archiver.catch_up_due:
            await self._catch_up(archiver, now)
        self._publish(archiver)
        return stored

    def _retention_cuts(self, ref: SourceRef) -> dict[str, dict[str, str]]:
        """System id -> region -> the newest segment retention destroyed there (recorded by
        the sweep in the state directory): catch-up must not bring it back."""
        memory = RetentionMemory(self.services.cfg.state_dir / RETENTION_STATE)
        prefix = f"{ref}/"
        return {
            cluster[len(prefix) :]: dict(cuts)
            for cluster, cuts in memory.wal_cuts.items()
            if cluster.startswith(prefix)
        }

    async def _catch_up(self, archiver: Archiver, now: datetime) -> None:
        shipper = archiver.shipper
        behind = set(shipper.regions_behind)
        shipper.regions_behind.clear()
        result = await catch_up(
            archiver.ref,
            shipper.regions,
            shipper.keyring,
            min_copies=shipper.min_copies,
            segment_size=shipper.segment_size,
            cuts=self._retention_cuts(archiver.ref),
        )
        metrics = self.services.metrics
        for region, keys in result.copied.items():
            metrics.wal_copy_repairs.labels(archiver.ref.plan, region, "success").inc(len(keys))
        for region in result.failed:
            metrics.wal_copy_repairs.labels(archiver.ref.plan, region, "failure").inc()
        unreachable = set(result.archive.region_errors) | set(result.failed)
        shipper.regions_behind |= unreachable
        if result.copied or result.deleted:
            log.info("%s: WAL catch-up: %s", archiver.ref, describe(result))
        if behind - unreachable:
            log.info(
                "%s: WAL caught up in %s", archiver.ref, ", ".join(sorted(behind - unreachable))
            )
        if shipper.segment_size is not None:
            if result.gaps != archiver.gaps and result.gaps:
                log.error(
                    "%s: the WAL archive has %d gap(s), first missing segment(s): %s",
                    archiver.ref,
                    len(result.gaps),
                    ", ".join(result.gaps[:5]),
                )
            archiver.gaps = result.gaps
            metrics.wal_gaps.labels(*archiver.labels).set(len(result.gaps))
        newest = result.newest
        if newest is not None and (
            shipper.archived is None or newest.through > shipper.archived.through
        ):
            lsn = shipper.archived.lsn if shipper.archived is not None else 0
            if shipper.segment_size is not None and newest.kind == "segment":
                seg = parse_segment_name(newest.name, shipper.segment_size)
                lsn = max(lsn, seg.end_lsn(shipper.segment_size))
            shipper.archived = Archived(newest.name, newest.through, lsn)
        soon = CATCH_UP_SOON if shipper.regions_behind else CATCH_UP_EVERY
        archiver.catch_up_due = now + soon

    def _publish(self, archiver: Archiver) -> None:
        m, labels = self.services.metrics, archiver.labels
        archived = archiver.shipper.archived
        if archived is not None:
            m.wal_last_archived.labels(*labels).set(archived.through.timestamp())
        got = archiver.last_sample
        if got is not None:
            if got.slot_retained is not None:
                m.wal_slot_retained.labels(*labels).set(max(got.slot_retained, 0))
            if archived is not None:
                m.wal_archive_lag.labels(*labels).set(max(got.lsn - archived.lsn, 0))
                answered = archiver.answered_at
                if got.lsn <= archived.lsn and answered is not None:
                    # Sampled at the start of that round: all it had written is archived now.
                    archiver.complete_at = max(archiver.complete_at or answered, answered)
        self._publish_window_end(archiver)

    def _publish_window_end(self, archiver: Archiver) -> None:
        end = self.recovery_point(archiver.ref)
        if end is not None:
            self.services.metrics.pitr_window_end.labels(*archiver.labels).set(end.timestamp())

    def recovery_point(self, ref: SourceRef) -> datetime | None:
        """Up to when `ref` can be recovered from the WAL held in min_copies regions: when its
        newest WAL was written, or, for a source that wrote nothing since, when it was last seen
        with all it had written archived (None: not a streamed source, nothing archived)."""
        archiver = self.archivers.get(ref)
        if archiver is None or archiver.shipper.archived is None:
            return None
        through = archiver.shipper.archived.through
        complete = archiver.complete_at
        return max(through, complete) if complete is not None else through

    def seconds_until_due(self) -> float:
        # Without streamed sources there is nothing to poll but a slot left to drop; a reload
        # wakes the loop.
        if self.archivers:
            return ROUND_EVERY
        return SLOT_RETRY_EVERY.total_seconds() if self.slots.pending else IDLE_EVERY

    # -- running ------------------------------------------------------------------------------

    def start(self, stop: asyncio.Event) -> None:
        if self._task is not None:
            return
        for archiver in self.archivers.values():
            self._start_receiver(archiver)
        self._task = asyncio.create_task(run_rounds(self, stop, self._wake), name="wal")

    def _start_receiver(self, archiver: Archiver) -> None:
        archiver.task = asyncio.create_task(
            archiver.receiver.run(archiver.stop), name=f"wal-receiver {archiver.ref}"
        )

    async def _stop_archiver(self, archiver: Archiver, grace: float = 5.0) -> None:
        archiver.stop.set()
        await archiver.receiver.close(grace)
        await cancel_task(archiver.task)
        archiver.task = None
        await archiver.close_db()

    async def close(self, grace: float = 5.0) -> None:
        """Stop the receivers, ship what they flushed (within `grace`), then stop."""
        began = time.monotonic()
        archivers = list(self.archivers.values())
        for archiver in archivers:
            archiver.stop.set()
        await asyncio.gather(
            *(a.receiver.close(min(grace, 5.0)) for a in archivers), return_exceptions=True
        )
        for archiver in archivers:
            await cancel_task(archiver.task)
            archiver.task = None
        task, self._task = self._task, None
        await cancel_task(task)
        left = grace - (time.monotonic() - began)
        if task is not None and left > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.run_once(), left)
        for archiver in archivers:
            await archiver.close_db()
