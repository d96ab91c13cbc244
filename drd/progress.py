"""Live progress of running jobs: which phase a backup, restore, restore test or drill is in,
how many bytes it has moved, how fast, and when it should be done.

The pipeline reports, everything else observes. A job gets one `Progress` (from a
`ProgressBoard`, which lists the running ones); the data path calls `phase()` when it moves on
and `advance(n)` for every chunk of the real byte stream; the CLI, the daemon's metrics and
the API read `snapshot()` whenever they want to show something. Nothing here pushes, so a slow
observer never slows a backup, and how often anything is redrawn is the observer's choice.

`total` is the expected size: exact for a restore (the manifest says it), an estimate for a
backup (the previous backup's size), None when nothing is known. The rate is measured over the
last `RATE_WINDOW` seconds, so it follows a stream that speeds up or stalls; the ETA is the
rest of `total` at that rate, and unknown once the job has gone past its estimate.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drd.clock import Clock, utcnow

#: seconds of history the rate is measured over
RATE_WINDOW = 10.0
#: at most this many rate samples a second are kept (advance() runs once per chunk)
_SAMPLE_EVERY = 0.25

Timer = Callable[[], float]


@dataclass(frozen=True)
class Snapshot:
    """What a job is doing, at one moment."""

    kind: str
    plan: str
    source: str
    phase: str
    bytes_done: int
    bytes_total: int | None
    #: bytes per second over the last RATE_WINDOW seconds (None before two samples)
    rate: float | None
    eta_seconds: float | None
    elapsed_seconds: float
    started_at: datetime
    #: seconds spent in each phase that has ended, in order
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"{self.plan}/{self.source}" if self.source else self.plan

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "plan": self.plan,
            "source": self.source,
            "phase": self.phase,
            "bytes": self.bytes_done,
            "total": self.bytes_total,
            "rate_bytes_per_second": None if self.rate is None else round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "started_at": self.started_at.isoformat(),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
        }


class Progress:
    """One running job's progress (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        plan: str,
        source: str = "",
        *,
        total: int | None = None,
        phase: str = "starting",
        clock: Clock = utcnow,
        timer: Timer = time.monotonic,
    ) -> None:
        self.kind, self.plan, self.source = kind, plan, source
        self.total = total
        self._timer = timer
        self.started_at = clock()
        self._began = self._phase_began = timer()
        self._phase = phase
        self._phases: dict[str, float] = {}
        self._done = 0
        self._samples: deque[tuple[float, int]] = deque([(self._began, 0)])
        #: why the job failed, when it returns a failure instead of raising (a restore test's
        #: report, a drill source's result); None: it did not
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        """The job failed though its block ends without an error: it ends `failed`."""
        self.failure = reason or "failed"

    @property
    def current_phase(self) -> str:
        return self._phase

    @property
    def bytes_done(self) -> int:
        return self._done

    def phase(self, name: str) -> None:
        """Move on to phase `name`; the time spent in the one before is kept."""
        if name == self._phase:
            return
        now = self._timer()
        previous = self._phase
        self._phases[previous] = self._phases.get(previous, 0.0) + now - self._phase_began
        self._phase, self._phase_began = name, now

    def advance(self, n: int) -> None:
        """`n` more bytes of the job's stream went through."""
        self._done += n
        now = self._timer()
        if now - self._samples[-1][0] >= _SAMPLE_EVERY:
            self._samples.append((now, self._done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()

    def restart_bytes(self, total: int | None = None) -> None:
        """The stream starts over (a restore moving on to the next region's copy)."""
        self._done = 0
        self._samples = deque([(self._timer(), 0)])
        if total is not None:
            self.total = total

    def rate(self, now: float | None = None) -> float | None:
        now = self._timer() if now is None else now
        first_t, first_b = self._samples[0]
        if now - first_t <= 0 or self._done == 0:
            return None
        return (self._done - first_b) / (now - first_t)

    def snapshot(self) -> Snapshot:
        now = self._timer()
        rate = self.rate(now)
        eta: float | None = None
        if self.total is not None and rate and self._done <= self.total:
            eta = (self.total - self._done) / rate
        phases = dict(self._phases)
        return Snapshot(
            kind=self.kind,
            plan=self.plan,
            source=self.source,
            phase=self._phase,
            bytes_done=self._done,
            bytes_total=self.total,
            rate=rate,
            eta_seconds=eta,
            elapsed_seconds=now - self._began,
            started_at=self.started_at,
            phases=phases,
        )

    def phase_seconds(self) -> dict[str, float]:
        """Every phase so far with its time, the running one up to now."""
        out = dict(self._phases)
        out[self._phase] = out.get(self._phase, 0.0) + self._timer() - self._phase_began
        return out


class ProgressBoard:
    """The jobs running in this process, for whoever wants to show them (the CLI's line, the
    daemon's metrics and /api/v1/status)."""

    def __init__(self, *, clock: Clock = utcnow, timer: Timer = time.monotonic) -> None:
        self.clock, self.timer = clock, timer
        self._running: list[Progress] = []
        #: told when a job ends: its last snapshot, and why it failed (None: it did not), from
        #: the error it raised or what the caller gave Progress.fail
        self.ended: list[Callable[[Snapshot, str | None], None]] = []

    @contextlib.contextmanager
    def track(
        self, kind: str, plan: str, source: str = "", *, total: int | None = None
    ) -> Iterator[Progress]:
        """A job's Progress, listed while the block runs."""
        progress = Progress(kind, plan, source, total=total, clock=self.clock, timer=self.timer)
        self._running.append(progress)
        failure: str | None = "cancelled"
        try:
            yield progress
            failure = progress.failure
        except BaseException as exc:
            failure = str(exc) or type(exc).__name__
            raise
        finally:
            self._running.remove(progress)
            progress.phase("done" if failure is None else "failed")
            last = progress.snapshot()
            for told in list(self.ended):
                told(last, failure)

    def running(self) -> list[Progress]:
        return list(self._running)

    def snapshots(self) -> list[Snapshot]:
        return [p.snapshot() for p in self._running]
