"""The auditor's figures of a plan over a window: pass rate, RTO p50/p95, RPO over time.

Pure functions of a list of runs (restore tests and drills, drd.verify.evidence finds them):
`drd report` prints or renders what `figures` returns, and the unit tests check it directly.

- A run is counted in the window when it started within [end - window, end].
- Pass rate: passed runs over decided ones (passed + failed). A cancelled drill decided
  nothing and is listed but not counted.
- Percentiles are nearest-rank: p95 of 20 values is the 19th smallest, a value that was
  actually measured (never an interpolation between two runs). A restore test's RTO is one
  source's, a drill's the whole plan's: they are reported separately, each against the plan's
  target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

RunKind = Literal["restore-test", "drill"]
KINDS: tuple[RunKind, ...] = ("restore-test", "drill")
#: where a run's figures were read from
FROM_REGIONS = "regions"
FROM_HISTORY = "history"


@dataclass(frozen=True)
class Run:
    kind: RunKind
    started_at: datetime
    #: passed, failed, cancelled
    result: str
    #: the source tested; None for a drill (every source of the plan)
    source: str | None = None
    #: the backup tested, or the drill's id
    ident: str = ""
    rto_seconds: float | None = None
    #: a drill's achieved RPO; a test of the newest backup: that backup's age when tested
    rpo_seconds: float | None = None
    region: str | None = None
    #: failure categories or reason codes
    reasons: tuple[str, ...] = ()
    origin: str = FROM_REGIONS

    @property
    def decided(self) -> bool:
        return self.result in ("passed", "failed")

    @property
    def passed(self) -> bool:
        return self.result == "passed"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "result": self.result,
            "source": self.source,
            "id": self.ident,
            "rto_seconds": _round(self.rto_seconds),
            "rpo_seconds": _round(self.rpo_seconds),
            "region": self.region,
            "reasons": list(self.reasons),
            "from": self.origin,
        }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; None when empty."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile: q must be in (0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def pass_rate(runs: Iterable[Run]) -> float | None:
    """Passed over decided runs; None when none was decided."""
    decided = [r for r in runs if r.decided]
    if not decided:
        return None
    return sum(r.passed for r in decided) / len(decided)


def in_window(runs: Iterable[Run], end: datetime, window: timedelta) -> list[Run]:
    """The runs that started within [end - window, end], oldest first."""
    start = end - window
    return sorted((r for r in runs if start <= r.started_at <= end), key=lambda r: r.started_at)


@dataclass(frozen=True)
class KindFigures:
    kind: RunKind
    runs: int
    passed: int
    failed: int
    pass_rate: float | None
    rto_p50_seconds: float | None
    rto_p95_seconds: float | None
    rto_target_seconds: float
    #: runs whose RTO was measured, and how many of them met the target
    rto_measured: int
    rto_within_target: int

    @property
    def p95_ok(self) -> bool | None:
        if self.rto_p95_seconds is None:
            return None
        return self.rto_p95_seconds <= self.rto_target_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "passed": self.passed,
            "failed": self.failed,
            "pass_rate": _round(self.pass_rate, 4),
            "rto_p50_seconds": _round(self.rto_p50_seconds),
            "rto_p95_seconds": _round(self.rto_p95_seconds),
            "rto_target_seconds": self.rto_target_seconds,
            "rto_p95_ok": self.p95_ok,
            "rto_measured": self.rto_measured,
            "rto_within_target": self.rto_within_target,
        }


def kind_figures(runs: Sequence[Run], kind: RunKind, rto_target: float) -> KindFigures:
    mine = [r for r in runs if r.kind == kind]
    rtos = [r.rto_seconds for r in mine if r.rto_seconds is not None]
    return KindFigures(
        kind=kind,
        runs=len(mine),
        passed=sum(r.passed for r in mine),
        failed=sum(r.result == "failed" for r in mine),
        pass_rate=pass_rate(mine),
        rto_p50_seconds=percentile(rtos, 50),
        rto_p95_seconds=percentile(rtos, 95),
        rto_target_seconds=rto_target,
        rto_measured=len(rtos),
        rto_within_target=sum(v <= rto_target for v in rtos),
    )


@dataclass(frozen=True)
class Figures:
    plan: str
    window_start: datetime
    window_end: datetime
    rto_target_seconds: float
    rpo_target_seconds: float
    #: the runs in the window, oldest first
    runs: list[Run]
    by_kind: dict[RunKind, KindFigures]

    @property
    def pass_rate(self) -> float | None:
        return pass_rate(self.runs)

    @property
    def rpo_points(self) -> list[Run]:
        return [r for r in self.runs if r.rpo_seconds is not None]

    @property
    def rpo_worst_seconds(self) -> float | None:
        values = [r.rpo_seconds for r in self.rpo_points if r.rpo_seconds is not None]
        return max(values) if values else None

    def as_json(self) -> dict[str, Any]:
        worst = self.rpo_worst_seconds
        return {
            "plan": self.plan,
            "window": {
                "start": self.window_start.isoformat(),
                "end": self.window_end.isoformat(),
            },
            "rto_target_seconds": self.rto_target_seconds,
            "rpo_target_seconds": self.rpo_target_seconds,
            "runs_total": len(self.runs),
            "pass_rate": _round(self.pass_rate, 4),
            "restore_tests": self.by_kind["restore-test"].as_json(),
            "drills": self.by_kind["drill"].as_json(),
            "rpo": {
                "worst_seconds": _round(worst),
                "worst_ok": None if worst is None else worst <= self.rpo_target_seconds,
                "points": [
                    {
                        "at": r.started_at.isoformat(),
                        "kind": r.kind,
                        "source": r.source,
                        "rpo_seconds": _round(r.rpo_seconds),
                    }
                    for r in self.rpo_points
                ],
            },
            "runs": [r.as_json() for r in self.runs],
        }


def figures(
    plan: str,
    runs: Iterable[Run],
    *,
    end: datetime,
    window: timedelta,
    rto_target: float,
    rpo_target: float,
) -> Figures:
    kept = in_window(runs, end, window)
    return Figures(
        plan=plan,
        window_start=end - window,
        window_end=end,
        rto_target_seconds=rto_target,
        rpo_target_seconds=rpo_target,
        runs=kept,
        by_kind={k: kind_figures(kept, k, rto_target) for k in KINDS},
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None
