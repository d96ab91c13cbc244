"""The HTTP API's request and response bodies, as pydantic models.

Handlers read every request body and write every JSON response through these models
(drd.server.bodies), and the OpenAPI document (drd.server.openapi) is generated from them, so
what is described cannot drift from what is served.

- Request bodies validate as they always did: `null` is the same as leaving a field out.
- Bodies the server builds (errors, readiness, status, started runs and drills) are strict: no
  field a model does not declare. A field that is not always there (an error's `field`, an
  unready answer's `reason`) is `Absent` unless the handler sets it: responses are written with
  `exclude_unset`, so it is left out, never sent as null.
- Documents drd wrote earlier and hands back as they are (a drill report or its summary read
  from the regions, restore-test summaries kept in the job history) are `Stored`: the same
  declared fields, but a field this version does not know is passed on, so a report another
  version wrote is still served. The tests check that what this version writes has none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from drd.fields import NAME_PATTERN
from drd.verify.drill import DRILL_ID_PATTERN
from drd.verify.drill import Status as DrillStatus


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


#: the type of a field left out of the body unless set (see the module docstring)
Absent = SkipJsonSchema[None]


def absent(description: str) -> Any:
    """The default of an `X | Absent` field: not required, never null."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Seconds = float


class Body(BaseModel):
    """A body the API reads or builds: every field declared."""

    model_config = ConfigDict(extra="forbid")


class Stored(BaseModel):
    """A document drd stored earlier and serves as it is (see the module docstring)."""

    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------ requests


class BackupRequest(Body):
    """Body of an on-demand backup or restore test: one source, or (empty) every source."""

    source: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="only this source of the plan"
    )


class DrillRequest(Body):
    plan: str = Field(pattern=NAME_PATTERN)
    lose_region: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="simulate losing this region of the plan: it is not read at all, and the "
        "report is not written to it",
    )


class PlanPath(Body):
    plan: Name = Field(description="a plan of the config")


class DrillPath(Body):
    drill_id: str = Field(pattern=DRILL_ID_PATTERN, description="a drill's id")


class DrillListQuery(Body):
    plan: Name | Absent = absent("only this plan's drills")


# ------------------------------------------------------------------------------ errors


class ErrorDetail(Body):
    code: int = Field(description="the HTTP status")
    message: str
    field: str | Absent = absent("the request field at fault (400)")
    busy: list[str] | Absent = absent("409 of an on-demand run: the sources already running")
    drill_id: str | Absent = absent(
        "409 of a drill start: the running drill's id (empty while drd shuts down)"
    )


class Error(Body):
    """Every JSON error answer."""

    error: ErrorDetail


# ------------------------------------------------------------------------------ probes


class Health(Body):
    status: Literal["ok"]


class ReadinessChecks(Body):
    keys: Literal["ok"]
    plans: Literal["ok"]
    regions: dict[str, str] = Field(
        description='region -> "ok", "not probed yet" (nothing has asked it since the daemon '
        "started), or why it does not answer"
    )
    min_copies: dict[str, str] = Field(
        description='plan -> "ok", or why too few of its regions are up to commit a backup '
        "in storage.min_copies of them (then drd is unready)"
    )
    retention: dict[str, str] = Field(
        description='region -> "ok", or why it cannot destroy backups within max_age'
    )
    state: str = Field(description='"ok", or why the state directory cannot be written')


class Readiness(Body):
    status: Literal["ready", "unready"]
    reason: str | Absent = absent("what is not ready (only when unready)")
    checks: ReadinessChecks


# ------------------------------------------------------------------------------ status


class LastBackup(Body):
    backup_id: str | None
    captured_at: Timestamp | None
    stored_bytes: int | None
    source_bytes: int | None


class LastJob(Body):
    status: Literal["success", "failure", "interrupted"] | None
    error: str | None
    finished_at: Timestamp | None


class RestoreTestSummary(Stored):
    """A restore test's summary (drd.verify.restore_report.summary_of), as kept in the job
    history."""

    backup_id: str
    selection: str = Field(description="newest | newest-usable | random-older | requested | drill")
    selection_reason: str = Field(default="", description="why that backup, in a sentence")
    result: str
    failure_category: str | None
    failure_message: str | None
    tested_at: Timestamp
    finished_at: Timestamp | None
    region: str | None
    rto_seconds: Seconds | None
    phases: dict[str, Seconds]
    failed_checks: list[str]


class LastRestoreTest(RestoreTestSummary):
    """The newest backup's test; the other backups tested in the same run in `others`."""

    others: list[RestoreTestSummary]


class RestoreTestSchedule(Body):
    running: bool
    next_due: Timestamp | None
    last_error: str | None = Field(description="why the last run tested nothing")
    every_seconds: Seconds


class SourceStatus(Body):
    kind: str
    last_backup: LastBackup
    copies: dict[str, bool] = Field(description="region -> whether it holds the newest backup")
    rpo_seconds: Seconds | None = Field(description="age of the newest backup")
    rpo_ok: bool
    last_job: LastJob
    running: bool
    next_due: Timestamp | None
    rto_seconds: Seconds | None = Field(description="the last passing restore test's RTO")
    rto_ok: bool | None
    last_restore_test: LastRestoreTest | None
    restore_test: RestoreTestSchedule


class PlanStatus(Body):
    owner: str
    reviewed_on: Annotated[str, Field(json_schema_extra={"format": "date"})]
    min_copies: int
    rpo_target_seconds: Seconds
    rto_target_seconds: Seconds
    sources: dict[str, SourceStatus]


class RunningJob(Body):
    """A job running now, live (drd.progress)."""

    kind: Literal["backup", "restore-test", "drill"]
    plan: str
    source: str
    phase: str = Field(
        description="what it is doing (backup: preparing, dumping, verifying, "
        "committing; restore test and drill: choosing, fetch, scratch_setup, restore, "
        "finishing, checks, teardown)"
    )
    bytes: int = Field(
        description="bytes moved so far: a backup's dump read, the plaintext restored"
    )
    total: int | None = Field(
        description="bytes expected: the previous backup's size for a "
        "backup, the backup's size for a restore; null if unknown"
    )
    rate_bytes_per_second: float | None = Field(description="over the last 10 s")
    eta_seconds: Seconds | None = Field(description="the rest of `total` at that rate")
    elapsed_seconds: Seconds
    started_at: Timestamp
    phases: dict[str, Seconds] = Field(description="the phases that have ended, with their time")


class Status(Body):
    """Per plan and source: backups, copies, RPO, RTO, restore tests; the jobs running now."""

    now: Timestamp
    plans: dict[str, PlanStatus]
    jobs: list[RunningJob] = Field(description="running backups, restore tests and drills")


# ------------------------------------------------------------------------------ on-demand runs


class RunsStarted(Body):
    id: str = Field(description="the request's job id")
    href: str = Field(description="where the jobs' state and results are (also Location)")
    started: list[str] = Field(description="plan/source of every run started")
    already_running: list[str] = Field(
        description="plan/source of those already running (not part of this job)"
    )


class JobPath(Body):
    job_id: str = Field(pattern=DRILL_ID_PATTERN, description="a job's id")


class JobRun(Body):
    source: str
    status: Literal["queued", "running", "success", "failure", "interrupted"] = Field(
        description="queued: waiting for its turn (a restore test also for the source's first "
        "backup); interrupted: cancelled at shutdown"
    )
    started_at: Timestamp | None
    finished_at: Timestamp | None
    backup_id: str | None = Field(
        description="the backup made (backups) or the newest one tested (restore tests)"
    )
    error: str | None = Field(description="why it failed")


class Job(Body):
    """An on-demand request's jobs, one per source, and how they went."""

    id: str
    kind: Literal["backup", "restore-test"]
    plan: str
    status: Literal["queued", "running", "success", "failure"] = Field(
        description="success when every run succeeded, failure when every run ended and one did not"
    )
    requested_at: Timestamp
    requested_by: dict[str, str] = Field(description="the token's name and role")
    runs: list[JobRun]


# ------------------------------------------------------------------------------ drills


class DrillStarted(Body):
    id: str
    plan: str
    status: DrillStatus
    href: str = Field(description="where the report is (also the Location header)")


class DrillCancelled(Body):
    id: str
    status: DrillStatus | Literal["cancelling"] = Field(
        description="cancelled (or how it ended meanwhile); cancelling while it cleans up"
    )


class DrillReason(Stored):
    code: str
    message: str
    source: str | Absent = absent("the source it is about")


class DrillAttempt(Stored):
    region: str | None
    result: str
    failure_category: str | None


class DrillCheck(Stored):
    name: str
    kind: str
    status: str
    critical: bool
    compared: str = Field("", description="what the check compared, in words")
    coverage: str = Field("", description="how much of the data that covered")


class DrillSourceProgress(Body):
    """A running source's restore test, live (drd.progress)."""

    phase: str
    bytes: int = Field(description="plaintext restored so far")
    total: int | None = Field(description="the backup's size")
    eta_seconds: Seconds | None


class DrillSource(Stored):
    """One source's part of a drill (drd.verify.drill.SourceResult); no data values."""

    source: str
    kind: str
    result: Literal["pending", "running", "passed", "failed", "cancelled"]
    backup_id: str | None
    backup_captured_at: Timestamp | None
    region: str | None
    attempts: list[DrillAttempt]
    phases: dict[str, Seconds]
    restore_rto_seconds: Seconds | None
    ready_after_seconds: Seconds | None
    lock_wait_seconds: Seconds
    rpo_seconds: Seconds | None
    point_in_time: dict[str, Any] = Field(
        description="recovered to a point-in-time probe: {probe: {time, lsn}, base_backup, "
        "achieved: {replay_lsn, last_transaction_at, rpo_seconds}}; empty otherwise"
    )
    checks: list[DrillCheck]
    scratch: dict[str, str]
    failure_category: str | None
    failure_message: str | None
    restore_test_report_in: list[str]
    progress: DrillSourceProgress | Absent = absent(
        "while the source runs: its phase and bytes now (`phases` then holds the phases so "
        "far, the running one up to now)"
    )


class Drill(Stored):
    """A drill's report (drd.verify.drill.DrillReport.as_json): running, or as stored."""

    document: Literal["drill-report"]
    format: str
    plan: str
    status: DrillStatus
    started_at: Timestamp
    finished_at: Timestamp | None
    lose_region: str | None
    regions_read: list[str]
    reasons: list[DrillReason]
    id: str
    rto_seconds: Seconds | None
    rpo_seconds: Seconds | None
    rto_target_seconds: Seconds
    rpo_target_seconds: Seconds
    rto_ok: bool
    rpo_ok: bool
    plan_regions: list[str]
    data_read_from: list[str]
    lost_region_note: str | None
    sources: list[DrillSource]
    requested_by: dict[str, str]
    stored_in: list[str]
    drd_version: str


class DrillSummary(Stored):
    """A drill's line in a listing."""

    id: str
    plan: str
    status: DrillStatus
    started_at: Timestamp
    finished_at: Timestamp | None
    lose_region: str | None
    rto_seconds: Seconds | None
    rpo_seconds: Seconds | None
    rto_ok: bool
    rpo_ok: bool
    reasons: list[str] = Field(description="the failure reasons' codes")


class DrillList(Body):
    drills: list[DrillSummary] = Field(description="newest first")


# ------------------------------------------------------------------------------ the document


class OpenApiInfo(Body):
    title: str
    version: str


class OpenApiDocument(Body):
    """This API's OpenAPI 3.1 description (generated by drd.server.openapi)."""

    openapi: str
    info: OpenApiInfo
    paths: dict[str, dict[str, Any]]
    components: dict[str, Any]
