"""On-demand runs asked for through the API: each request (`POST .../backups`,
`POST .../restore-tests`) gets an id and a resource, `GET /api/v1/jobs/{id}`, that follows the
jobs it started, one per source, from queued to their result.

A request's runs are attached to their sources' job slots (drd.daemon.slots) when it is made;
the next job of that source to start takes them along and ends them with its outcome (a job
already running is not one the request started: the API reports it as `already_running`).
Requests are kept in memory, the newest KEEP of them: the job history (and /api/v1/status)
keeps the results across restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from drd.clock import Clock, utcnow
from drd.layout import is_backup_id, new_backup_id

Kind = Literal["backup", "restore-test"]
RunStatus = Literal["queued", "running", "success", "failure", "interrupted"]
#: how many requests are remembered
KEEP = 500


@dataclass(frozen=True)
class RunOutcome:
    """How a job ended, as its request shows it."""

    result: Literal["success", "failure", "interrupted"]
    finished_at: datetime
    error: str | None = None
    #: the backup made (a backup job) or the newest one tested (a restore test)
    backup_id: str | None = None


@dataclass
class RequestedRun:
    """One source's job of a request."""

    source: str
    status: RunStatus = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    backup_id: str | None = None
    error: str | None = None

    def began(self, at: datetime) -> None:
        self.status, self.started_at = "running", at

    def ended(self, outcome: RunOutcome) -> None:
        self.status = outcome.result
        self.finished_at = outcome.finished_at
        self.error, self.backup_id = outcome.error, outcome.backup_id

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "backup_id": self.backup_id,
            "error": self.error,
        }


@dataclass
class JobRequest:
    id: str
    kind: Kind
    plan: str
    requested_at: datetime
    requested_by: Mapping[str, str]
    runs: dict[str, RequestedRun] = field(default_factory=dict)

    @property
    def status(self) -> Literal["queued", "running", "success", "failure"]:
        states = {run.status for run in self.runs.values()}
        if states == {"queued"}:
            return "queued"
        if states & {"queued", "running"}:
            return "running"
        return "success" if states == {"success"} else "failure"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "plan": self.plan,
            "status": self.status,
            "requested_at": self.requested_at.isoformat(),
            "requested_by": dict(self.requested_by),
            "runs": [run.as_json() for run in self.runs.values()],
        }


class JobRequests:
    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self._requests: OrderedDict[str, JobRequest] = OrderedDict()

    def open(
        self, kind: Kind, plan: str, sources: Sequence[str], requested_by: Mapping[str, str]
    ) -> JobRequest:
        now = self.clock()
        request = JobRequest(
            id=new_backup_id(now),  # the shape of every id drd makes: sortable by time
            kind=kind,
            plan=plan,
            requested_at=now,
            requested_by=dict(requested_by),
            runs={source: RequestedRun(source) for source in sources},
        )
        self._requests[request.id] = request
        while len(self._requests) > KEEP:
            self._requests.popitem(last=False)
        return request

    def get(self, job_id: str) -> JobRequest | None:
        if not is_backup_id(job_id):
            return None
        return self._requests.get(job_id)
