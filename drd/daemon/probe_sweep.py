"""Probe objects left behind, deleted once they are old.

The daemon's region probe writes under `_probe/` after a failed write, `drd doctor` under
`_doctor/`; each deletes its object again, but a delete can be refused (a retention policy or
hold) and a process can be killed in between. Listings never see these prefixes, so nothing
else would ever remove them. Once an hour per region the probe loop lists both and deletes
what is over an hour old: old enough that no probe is still reading it back. A probe's age is
the time in its name (both name theirs with new_backup_id); a name without one (a probe of an
older drd) is aged from when this process first listed it. A delete the region refuses is
logged once per object, then retried quietly at every sweep (a hold may be released).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from drd.clock import Clock
from drd.errors import DrdError
from drd.layout import backup_id_time, is_backup_id
from drd.storage.base import Storage

log = logging.getLogger(__name__)

#: how often a region's probe prefixes are listed
SWEEP_EVERY = timedelta(hours=1)
#: a probe younger than this may belong to a probe still running
MIN_AGE = timedelta(hours=1)


class ProbeSweeper:
    def __init__(self, clock: Clock, prefixes: Sequence[str]) -> None:
        self.clock = clock
        self.prefixes = tuple(prefixes)
        self._last: dict[str, datetime] = {}
        #: (region, key) -> when this process first listed it, for keys without a time
        self._first_seen: dict[tuple[str, str], datetime] = {}
        #: (region, key) of deletes already logged as refused
        self._refused: set[tuple[str, str]] = set()

    def due(self, region: str) -> bool:
        last = self._last.get(region)
        return last is None or self.clock() - last >= SWEEP_EVERY

    async def sweep(self, storage: Storage) -> None:
        """Delete the old probe objects of `storage`; raises only what listing raises."""
        now = self.clock()
        self._last[storage.name] = now
        listed: set[tuple[str, str]] = set()
        for prefix in self.prefixes:
            for obj in await storage.list(prefix):
                ident = (storage.name, obj.key)
                listed.add(ident)
                if now - self._written(ident, obj.key[len(prefix) :], now) < MIN_AGE:
                    continue
                try:
                    await storage.delete(obj.key)
                except DrdError as exc:
                    if ident not in self._refused:
                        self._refused.add(ident)
                        log.warning(
                            "region %s: old probe object %s cannot be deleted (not retried "
                            "in the log): %s",
                            storage.name,
                            obj.key,
                            exc,
                        )
                    continue
                listed.discard(ident)
        # Forget what is gone, so that the memory holds only what is still there.
        for ident in [i for i in self._first_seen if i[0] == storage.name and i not in listed]:
            del self._first_seen[ident]
        self._refused = {i for i in self._refused if i[0] != storage.name or i in listed}

    def _written(self, ident: tuple[str, str], name: str, now: datetime) -> datetime:
        stamp = name.removeprefix("probe-")  # drd doctor's names
        if is_backup_id(stamp):
            return backup_id_time(stamp)
        return self._first_seen.setdefault(ident, now)
