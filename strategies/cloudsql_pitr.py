"""Cloud SQL's own point-in-time recovery: `instances.clone` with `pointInTime`.

Used by restore tests and drills of cloudsql sources whose scratch says `pitr:`
(drd.verify.scratch.cloudsql_pitr). The recovery window is the API's: the instance must have
`settings.backupConfiguration.pointInTimeRecoveryEnabled`, and
`projects.instances.getLatestRecoveryTime` gives its earliest and latest recovery times (without
an earliest one, the window starts `transactionLogRetentionDays` before the latest).

Where the clone lands: Cloud SQL clones into the source's project; a `destinationProject`
(another project) is accepted only for projects Google has allowlisted. So `pitr:
clone-in-source-project` creates the clone next to the source (a plan must say so in these
words), and `pitr: clone` asks for the scratch project and fails where Google refuses it.
Either way the clone is named `drd-scratch-<id>` and, once it exists, labelled `drd-scratch`
with `instances.patch` (a clone copies the source's labels and takes none of its own).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from drd.errors import CloudSqlError, RestoreError


class AdminApi(Protocol):
    """What this module needs of drd.strategies.cloudsql.SqlAdmin (which imports this module,
    so it is named by its shape)."""

    def call(self, what: str, build: Callable[[Any], Any]) -> Awaitable[Any]: ...

    def run(
        self, project: str, what: str, build: Callable[[Any], Any], poll: Any
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(frozen=True)
class RecoveryWindow:
    earliest: datetime
    latest: datetime

    def __contains__(self, point: object) -> bool:
        return isinstance(point, datetime) and self.earliest <= point <= self.latest

    @property
    def shown(self) -> str:
        return f"{rfc3339(self.earliest)} .. {rfc3339(self.latest)}"


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str, what: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"{what}: not an RFC 3339 time: {text!r}") from None
    if at.tzinfo is None:
        raise RestoreError(f"{what}: {text!r} has no time zone (write it in UTC, with Z)")
    return at.astimezone(UTC)


async def recovery_window(api: AdminApi, project: str, instance: str) -> RecoveryWindow:
    """The instance's point-in-time recovery window, as the API tells it."""
    where = f"instance {project}/{instance}"
    try:
        body = await api.call(
            f"{where}: instances.get",
            lambda s: s.instances().get(project=project, instance=instance),
        )
        backup = (body.get("settings") or {}).get("backupConfiguration") or {}
        if not backup.get("pointInTimeRecoveryEnabled"):
            raise RestoreError(
                f"{where}: point-in-time recovery is not enabled "
                "(settings.backupConfiguration.pointInTimeRecoveryEnabled)"
            )
        times = await api.call(
            f"{where}: getLatestRecoveryTime",
            lambda s: (
                s.projects().instances().getLatestRecoveryTime(project=project, instance=instance)
            ),
        )
    except CloudSqlError as exc:
        raise RestoreError(str(exc)) from None
    if not times.get("latestRecoveryTime"):
        raise RestoreError(f"{where}: getLatestRecoveryTime named no latestRecoveryTime")
    latest = parse_time(str(times["latestRecoveryTime"]), f"{where}: latestRecoveryTime")
    if times.get("earliestRecoveryTime"):
        earliest = parse_time(str(times["earliestRecoveryTime"]), f"{where}: earliestRecoveryTime")
    else:
        earliest = latest - timedelta(days=int(backup.get("transactionLogRetentionDays") or 7))
    if earliest > latest:
        raise RestoreError(f"{where}: the recovery window is empty ({rfc3339(earliest)} ..)")
    return RecoveryWindow(earliest, latest)


#: the window's start moves on while a test sets up: a point this close to it could leave the
#: window before the clone is asked for, failing a test whose recovery was never at fault
START_MARGIN = timedelta(minutes=10)


def random_point(window: RecoveryWindow, rng: random.Random | None = None) -> datetime:
    """A point chosen uniformly inside the window, to the millisecond, clear of its first
    START_MARGIN when the window is wider than twice that."""
    start = window.earliest
    if window.latest - start > 2 * START_MARGIN:
        start += START_MARGIN
    span_ms = int((window.latest - start).total_seconds() * 1000)
    offset = (rng or random.SystemRandom()).randint(0, max(0, span_ms))
    return start + timedelta(milliseconds=offset)


@dataclass(frozen=True)
class Clone:
    #: the clone's instance resource
    instance: dict[str, Any]
    #: the source's window when the clone was asked for, and when that was read
    window: RecoveryWindow
    read_at: datetime

    @property
    def log_lag_seconds(self) -> float:
        """How far the latest recoverable time trailed the clock: what a recovery right then
        would have lost, the RPO point-in-time recovery achieves."""
        return max(0.0, (self.read_at - self.window.latest).total_seconds())


async def clone_at(
    api: AdminApi,
    *,
    source_project: str,
    source_instance: str,
    destination_project: str,
    name: str,
    point: datetime,
    labels: Mapping[str, str],
    poll: Any,
) -> Clone:
    """Clone the source at `point` into a new instance `name`, label it. A point outside the
    window fails before anything is created, naming the window."""
    where = f"clone of {source_project}/{source_instance} at {rfc3339(point)}"
    read_at = datetime.now(UTC)
    window = await recovery_window(api, source_project, source_instance)
    if point not in window:
        raise RestoreError(
            f"{where}: the point is outside the instance's recovery window ({window.shown})"
        )
    context: dict[str, Any] = {
        "kind": "sql#cloneContext",
        "destinationInstanceName": name,
        "pointInTime": rfc3339(point),
    }
    if destination_project != source_project:
        context["destinationProject"] = destination_project
    try:
        await api.run(
            source_project,
            f"{where}: instances.clone",
            lambda s: s.instances().clone(
                project=source_project, instance=source_instance, body={"cloneContext": context}
            ),
            poll,
        )
        clone = await api.call(
            f"{where}: instances.get",
            lambda s: s.instances().get(project=destination_project, instance=name),
        )
        merged = {**((clone.get("settings") or {}).get("userLabels") or {}), **labels}
        await api.run(
            destination_project,
            f"{where}: label the clone",
            lambda s: s.instances().patch(
                project=destination_project,
                instance=name,
                body={"settings": {"userLabels": merged}},
            ),
            poll,
        )
    except CloudSqlError as exc:
        raise RestoreError(str(exc)) from None
    return Clone(dict(clone), window, read_at)
