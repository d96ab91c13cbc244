"""What the HTTP handlers need of the daemon, as Protocols: drd.server never imports drd.daemon.

The daemon (drd.daemon.service.Daemon) satisfies DaemonControl and starts the app with itself
(`start_http(daemon, listen)`); mypy checks that it does. Each Protocol lists only what a
handler reads or calls, so anything that offers those members can stand in for the daemon.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from drd.clock import Clock
from drd.config.models import Config, Plan
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.progress import Snapshot
from drd.server.audit import AuditLog
from drd.strategies.base import SourceOptions
from drd.verify.drill import DrillReport


class SourceBackups(Protocol):
    """One source's backups as /api/v1/status shows them."""

    @property
    def ref(self) -> SourceRef: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def source(self) -> SourceOptions: ...
    @property
    def last_capture(self) -> datetime | None: ...
    @property
    def last_backup_id(self) -> str | None: ...
    @property
    def copies(self) -> Mapping[str, bool]: ...
    @property
    def stored_bytes(self) -> int | None: ...
    @property
    def source_bytes(self) -> int | None: ...
    @property
    def last_status(self) -> str | None: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def last_finished(self) -> datetime | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def next_due(self) -> datetime | None: ...


class RetentionState(Protocol):
    def problems(self) -> Mapping[str, Sequence[str]]:
        """Region -> why it cannot destroy backups in time (for /readyz)."""
        ...


class RestoreTestControl(Protocol):
    @property
    def sources(self) -> Collection[SourceRef]: ...
    def trigger(self, ref: SourceRef) -> bool:
        """Ask for a restore test now; False if one is already running."""
        ...

    def status(self, ref: SourceRef) -> Mapping[str, Any]:
        """The source's restore-test fields of /api/v1/status."""
        ...


class DrillRunState(Protocol):
    @property
    def report(self) -> DrillReport: ...
    @property
    def running(self) -> bool: ...


class DrillControl(Protocol):
    @property
    def runs(self) -> Mapping[str, DrillRunState]: ...
    async def start_drill(
        self, plan_name: str, lose_region: str | None, requested_by: Mapping[str, str]
    ) -> DrillRunState:
        """Start a drill; drd.errors.DrillBusy while one of the plan runs."""
        ...

    async def cancel(
        self, drill_id: str, requested_by: Mapping[str, str]
    ) -> DrillRunState | None: ...
    async def get(self, drill_id: str) -> Mapping[str, Any] | None:
        """A drill's report (as JSON), running or stored; None if there is none."""
        ...

    async def list(self, plan_name: str | None) -> Sequence[Mapping[str, Any]]:
        """The newest drills' summaries (of one plan), newest first."""
        ...


class JobRequestState(Protocol):
    """An API request for on-demand jobs, and how they went (GET /api/v1/jobs/{id})."""

    @property
    def id(self) -> str: ...
    def as_json(self) -> Mapping[str, Any]: ...


class DaemonControl(Protocol):
    """The daemon, as the HTTP app sees it."""

    @property
    def cfg(self) -> Config: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def regions(self) -> Collection[str]:
        """The configured regions (by name)."""
        ...

    @property
    def sources(self) -> Mapping[SourceRef, SourceBackups]: ...
    @property
    def retention(self) -> RetentionState: ...
    @property
    def restore_tests(self) -> RestoreTestControl: ...
    @property
    def drills(self) -> DrillControl: ...
    def trigger(self, ref: SourceRef) -> bool:
        """Ask for a backup now; False if one is already running."""
        ...

    def request_jobs(
        self,
        kind: Literal["backup", "restore-test"],
        plan: str,
        refs: Sequence[SourceRef],
        requested_by: Mapping[str, str],
    ) -> JobRequestState:
        """Follow the next job of each of `refs` (just triggered) under one request id."""
        ...

    def job_request(self, job_id: str) -> JobRequestState | None: ...

    @property
    def state_problem(self) -> str | None:
        """Why the state directory cannot be written (None when it can)."""
        ...

    def running_jobs(self) -> Sequence[Snapshot]:
        """The backups, restore tests and drills running now, live (drd.progress)."""
        ...

    def refresh_metrics(self) -> None:
        """Recompute the time-dependent gauges (at every scrape)."""
        ...

    def region_problems(self) -> Mapping[str, str]:
        """Region -> why it is down ("" when up), as the last operation or probe found."""
        ...

    @property
    def regions_probed(self) -> bool:
        """The daemon's first probe round of every region has finished."""
        ...
