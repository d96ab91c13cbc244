"""What drd knows of each region's health, and `drd_region_up` to match.

Two kinds of evidence feed it: the outcome of every real storage operation (through
drd.storage.instrumented.ObservedStorage) and the daemon's periodic probe
(drd.daemon.region_probe_loop). Whichever came last decides: a region that fails a backup's
upload is down now, not at the next probe, and one that answers again is up again at its
first successful operation.

What counts as the region's answer: success, "no such object" and "an object is already
there" (a create-only write refused) are the region working as it should. A cancelled
operation says nothing about the region (the caller gave up, a shutdown), so it changes
nothing; a timeout is recorded by whoever set the deadline, with what it waited for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from drd.clock import Clock, utcnow
from drd.errors import ObjectExists, ObjectNotFound, StorageError
from drd.metrics import Metrics

log = logging.getLogger(__name__)

#: what a region nothing has been asked of yet is, in place of why it is down
NOT_PROBED = "not probed yet"

#: operations that write: a region can answer a listing and still refuse these (a full disk,
#: a credential without objects.create), and the probe then has to write to know it heals.
#: Not delete: a refused delete (a retention hold) says nothing of writes, and a probe written
#: because of it could be just as undeletable.
WRITES = frozenset({"open_writer", "put", "write", "commit"})


@dataclass
class RegionState:
    #: None until an operation or a probe said either way
    up: bool | None = None
    #: why the last failure failed ("" when up)
    problem: str = ""
    #: which operation said so last ("probe" for the daemon's probe)
    operation: str = ""
    changed_at: datetime | None = None
    probed_at: datetime | None = None
    #: the last write there failed (cleared by one that succeeds)
    write_failed: bool = False


def region_failure(exc: BaseException) -> str | None:
    """Why `exc`, raised by an operation against a region, means the region is not working;
    None if it does not mean that (the region answered, or the caller gave up)."""
    if isinstance(exc, (ObjectNotFound, ObjectExists)):
        return None
    if isinstance(exc, (StorageError, OSError)):
        return str(exc) or type(exc).__name__
    return None


class RegionHealth:
    """Per region: up or down, since when, and why (see the module docstring)."""

    def __init__(self, metrics: Metrics | None = None, clock: Clock = utcnow) -> None:
        self.metrics = metrics
        self.clock = clock
        self._states: dict[str, RegionState] = {}

    def state(self, region: str) -> RegionState:
        return self._states.setdefault(region, RegionState())

    def is_up(self, region: str) -> bool:
        """Known to be up: a region nothing has been asked of yet is not (see `known`)."""
        return self.state(region).up is True

    def known(self, region: str) -> bool:
        """An operation or a probe has said whether `region` is up."""
        return self.state(region).up is not None

    def observe(self, region: str, operation: str, exc: BaseException | None) -> None:
        """A storage operation against `region` finished: with `exc` None it succeeded."""
        if exc is None:
            problem: str | None = ""
        elif isinstance(exc, (ObjectNotFound, ObjectExists)):
            problem = ""
        else:
            problem = region_failure(exc)
        if problem is None:
            return
        if operation in WRITES:
            self.state(region).write_failed = bool(problem)
        self._set(region, operation, problem)

    def probed(self, region: str, problem: str) -> None:
        """The daemon's probe of `region` finished: `problem` is "" when it answered."""
        self._set(region, "probe", problem)
        now = self.clock()
        self.state(region).probed_at = now
        if self.metrics is not None:
            self.metrics.region_last_probe.labels(region).set(now.timestamp())

    def _set(self, region: str, operation: str, problem: str) -> None:
        st = self.state(region)
        up = not problem
        st.problem = problem
        st.operation = operation
        if st.up is up:
            return
        if up and st.up is False:
            log.info("region %s: answers again (%s)", region, operation)
        elif not up:
            log.warning("region %s: down (%s): %s", region, operation, problem)
        st.up = up
        st.changed_at = self.clock()
        if self.metrics is not None:
            self.metrics.region_up.labels(region).set(1 if up else 0)
            self.metrics.region_up_changed.labels(region).set(st.changed_at.timestamp())

    def problems(self) -> dict[str, str]:
        """Region -> why it is down, for every region known to be down."""
        return {name: st.problem for name, st in self._states.items() if st.up is False}
