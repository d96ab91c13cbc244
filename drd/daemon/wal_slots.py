"""Dropping the replication slots of sources that left drd.

A physical slot nobody reads keeps every WAL segment after it on the source's disk until the
disk is full: when a streamed source leaves the config (removed from its plan, its plan
removed, or switched to `archive: command`), its slot is dropped on its server. The server is
only known from the source's DSN, which leaves with it, so:

- every slot the wal loop uses is recorded in `state_dir/wal-slots.json` with the DSN
  *without its password* (the password comes from drd's environment or a .pgpass, as for every
  connection drd makes; no secret is written);
- when a reload stops a source for good, its slot is dropped with the DSN it had;
- at daemon start, recorded slots of sources the config no longer has are dropped (a removal
  while the daemon was down).

Only slots named the way drd names them (drd_<plan>_<source>) are dropped, and never one a
configured source uses: a slot named by the operator (`slot:`) may be someone else's, so it is
left, and the log says so. A drop that fails is retried every RETRY_EVERY, logged each time,
counted (drd_wal_slot_drop_failures_total) and shown by drd_wal_slot_left_behind (alert
DrdWalSlotLeftBehind) until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.strategies._subprocess import redact
from drd.strategies.postgres_physical import (
    default_slot_name,
    describe_dsn,
    drop_slot,
    dsn_secret,
)

log = logging.getLogger(__name__)

STATE_FILE = "wal-slots.json"
RETRY_EVERY = timedelta(minutes=5)
#: the walsender of a receiver just stopped may hold the slot for a moment
_DROP_ATTEMPTS = 5
_DROP_PAUSE = 0.5

Dropper = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True)
class SlotRecord:
    ref: SourceRef
    slot: str
    #: the full DSN while the daemon knows it (the config's), else the recorded one
    dsn: str


class SlotRegistry:
    """The slots of streamed sources (module docstring)."""

    def __init__(self, state_dir: Path, metrics: Metrics, *, dropper: Dropper = drop_slot) -> None:
        self.path = state_dir / STATE_FILE
        self.metrics = metrics
        self.dropper = dropper
        self.live: dict[SourceRef, SlotRecord] = {}
        #: slots to drop, and when to try next
        self.pending: dict[SourceRef, SlotRecord] = {}
        self.retry_at: dict[SourceRef, datetime] = {}
        for record in self._load():
            self.live[record.ref] = record

    def _load(self) -> list[SlotRecord]:
        try:
            raw = json.loads(self.path.read_text())
            return [
                SlotRecord(SourceRef.parse(ref), str(v["slot"]), str(v["dsn"]))
                for ref, v in raw.items()
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("WAL slot records %s unreadable: %s", self.path, exc)
            return []

    def _save(self) -> None:
        records = {**self.live, **self.pending}
        data = {
            str(ref): {"slot": r.slot, "dsn": describe_dsn(r.dsn)}
            for ref, r in sorted(records.items(), key=lambda kv: str(kv[0]))
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        except OSError as exc:
            # Only needed for a removal while drd is down; the running daemon drops anyway.
            log.warning("WAL slot records %s not saved: %s", self.path, exc)

    def use(self, ref: SourceRef, slot: str, dsn: str) -> None:
        """`ref` streams through `slot` now."""
        record = SlotRecord(ref, slot, dsn)
        if self.live.get(ref) != record:
            self.live[ref] = record
            self._save()

    def configured(self, wanted: Collection[tuple[SourceRef, str]]) -> None:
        """The streamed sources (and their slots) the config has now: recorded slots of others,
        or a source's former slot, are to be dropped."""
        current = dict(wanted)
        in_use = set(current.values())
        for ref, record in list(self.live.items()):
            if current.get(ref) == record.slot:
                continue
            del self.live[ref]
            if record.slot in in_use:
                continue  # another configured source streams through it
            if record.slot != default_slot_name(ref.plan, ref.source):
                log.warning(
                    "%s left drd; its replication slot %s is not named by drd (slot:), so it is "
                    "left on the server: drop it there if nothing else uses it",
                    ref,
                    record.slot,
                )
                continue
            self.pending[ref] = record
            self.retry_at.pop(ref, None)
        for ref in [r for r, rec in self.pending.items() if rec.slot in in_use]:
            self._done(ref)
        self._save()

    async def drop_pending(self, now: datetime) -> None:
        """Drop every pending slot that is due (at once after `configured`)."""
        for ref, record in list(self.pending.items()):
            if self.retry_at.get(ref, now) > now:
                continue
            try:
                dropped = await self._drop(record)
            except Exception as exc:
                why = redact(str(exc) or type(exc).__name__, [dsn_secret(record.dsn)])
                self.retry_at[ref] = now + RETRY_EVERY
                self.metrics.wal_slot_drop_failures.labels(ref.plan, ref.source).inc()
                self.metrics.wal_slot_left_behind.labels(ref.plan, ref.source, record.slot).set(1)
                log.error(
                    "%s left drd but its replication slot %s on %s could not be dropped (it "
                    "keeps WAL on the server's disk); trying again in %s: %s",
                    ref,
                    record.slot,
                    describe_dsn(record.dsn),
                    RETRY_EVERY,
                    why,
                )
                continue
            if dropped:
                log.info(
                    "%s left drd: dropped its replication slot %s on %s",
                    ref,
                    record.slot,
                    describe_dsn(record.dsn),
                )
            else:
                log.info("%s left drd: its replication slot %s was already gone", ref, record.slot)
            self._done(ref)
            self._save()

    def _done(self, ref: SourceRef) -> None:
        record = self.pending.pop(ref)
        self.retry_at.pop(ref, None)
        with contextlib.suppress(KeyError):
            self.metrics.wal_slot_left_behind.remove(ref.plan, ref.source, record.slot)
        with contextlib.suppress(KeyError):
            self.metrics.wal_slot_drop_failures.remove(ref.plan, ref.source)

    async def _drop(self, record: SlotRecord) -> bool:
        for attempt in range(_DROP_ATTEMPTS):
            try:
                return await self.dropper(record.dsn, record.slot)
            except Exception:
                if attempt == _DROP_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_DROP_PAUSE)
        raise AssertionError("unreachable")
