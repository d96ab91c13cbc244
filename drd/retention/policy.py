"""Retention as a pure function: `apply_policy(backups, policy, now) -> keep, destroy, reasons`.

The promise is that a backup is destroyed within its plan's max_age (at most 14 days), in every
region. Two things decide when drd must act:

- The age of a backup: now minus its capture time. The capture time is read from the backup
  id (`drd.layout.backup_id_time`): the id is made from the capture time, it is known for every
  object under the backup's prefix (leftovers without a manifest too), and no manifest has to
  be read (or trusted) to know it. But an id can be written by anyone who can write to a
  region: the sweep ages a backup from the earliest time drd knows for it, its id's time or
  when drd first saw it, whichever is earlier. An id dated in the future (beyond a small
  skew) is an integrity finding, and ages from when drd first saw it: it never outlives the
  14-day ceiling.
- How long a region keeps bytes after drd deletes them (GCS soft delete, noncurrent versions):
  the deletion delay. A region's copy is deleted at `max_age - delay` of THAT region, so its
  bytes are really gone by max_age; every region has its own deletion age, and one bucket's
  settings never shorten the other regions' retention. Settings that make that impossible
  (holds, versioning nobody cleans up, a delay longer than max_age) or that would force
  deleting copies earlier than a sane minimum (24 hours: the region's copies would be
  unreadable almost at once) are errors, reported by `drd doctor` (which fails), /readyz
  (not ready) and every sweep; such a region deletes at that minimum.

Nothing here does I/O or reads the clock; drd.retention.sweep does both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from drd.config.models import MAX_RETENTION
from drd.durations import format_duration
from drd.layout import SourceRef
from drd.storage.base import DeletionSettings

#: Leftovers of interrupted work (data without a committed manifest) younger than this may
#: belong to an upload still running on another host: they are left alone.
DEFAULT_ORPHAN_GRACE = timedelta(hours=6)
#: GCS runs lifecycle actions asynchronously, "up to 24 hours" after their conditions are met.
LIFECYCLE_LAG = timedelta(days=1)
#: a backup id may be this far ahead of this host's clock (another host's clock) unflagged
MAX_CLOCK_SKEW = timedelta(minutes=15)
#: a region's deletion settings may not force deleting its copies younger than this (or than
#: half of max_age, for plans that keep backups less than two days)
MIN_DESTROY_AGE = timedelta(hours=24)

BackupKey = tuple[SourceRef, str]


@dataclass(frozen=True)
class Backup:
    """One backup id of one source, as found in storage (any region)."""

    ref: SourceRef
    backup_id: str
    captured: datetime
    #: a manifest is committed in at least one region that could be listed; False: the
    #: objects are leftovers of interrupted work (or of a destruction that was interrupted)
    committed: bool = True
    #: the time its id claims, when `captured` is earlier (drd first saw it before that)
    dated: datetime | None = None

    @property
    def key(self) -> BackupKey:
        return (self.ref, self.backup_id)

    def __str__(self) -> str:
        return f"{self.ref}@{self.backup_id}"


@dataclass(frozen=True)
class RetentionPolicy:
    max_age: timedelta
    #: how long the slowest region keeps deleted bytes (see deletion_lead)
    deletion_delay: timedelta = timedelta(0)
    orphan_grace: timedelta = DEFAULT_ORPHAN_GRACE

    @property
    def destroy_age(self) -> timedelta:
        """The age at which drd deletes a backup, so that its bytes are gone by max_age."""
        return self.max_age - self.deletion_delay

    def expiry(self, backup: Backup) -> datetime:
        """When `backup` is due for destruction."""
        if backup.committed:
            return backup.captured + self.destroy_age
        return backup.captured + min(self.destroy_age, self.orphan_grace)


@dataclass
class RetentionDecision:
    keep: list[Backup] = field(default_factory=list)
    destroy: list[Backup] = field(default_factory=list)
    reasons: dict[BackupKey, str] = field(default_factory=dict)
    #: for every kept backup, when it is due for destruction
    expires: dict[BackupKey, datetime] = field(default_factory=dict)

    def next_expiry(self) -> datetime | None:
        return min(self.expires.values(), default=None)


def human_age(delta: timedelta) -> str:
    """An age for people: whole minutes above an hour, whole seconds below."""
    seconds = int(delta.total_seconds())
    if abs(seconds) >= 3600:
        seconds -= seconds % 60
    return format_duration(timedelta(seconds=seconds))


def apply_policy(
    backups: Iterable[Backup], policy: RetentionPolicy, now: datetime
) -> RetentionDecision:
    """Decide, for every backup, whether it is kept or destroyed now, and why."""
    decision = RetentionDecision()
    limit = policy.destroy_age
    if policy.deletion_delay:
        why_limit = (
            f"{human_age(limit)} (max_age {human_age(policy.max_age)} minus "
            f"{human_age(policy.deletion_delay)} the storage keeps deleted data)"
        )
    else:
        why_limit = f"max_age {human_age(limit)}"
    for backup in sorted(
        backups, key=lambda b: (b.ref.plan, b.ref.source, b.captured, b.backup_id)
    ):
        age = now - backup.captured
        what = "backup" if backup.committed else "leftover of interrupted work (no manifest)"
        if backup.dated is not None and backup.dated > now + MAX_CLOCK_SKEW:
            what += (
                f" DATED {human_age(backup.dated - now)} IN THE FUTURE (integrity finding; aged "
                "from when drd first saw it)"
            )
        if age >= limit:
            destroy, reason = True, f"{what}, age {human_age(age)}: reached {why_limit}"
        elif not backup.committed and age >= policy.orphan_grace:
            destroy = True
            grace = human_age(policy.orphan_grace)
            reason = f"{what}, age {human_age(age)}: older than the {grace} grace"
        elif age < timedelta(0):
            destroy, reason = (
                False,
                f"{what} captured {human_age(-age)} in the future (clock skew?)",
            )
        else:
            destroy = False
            due = policy.expiry(backup)
            reason = f"{what}, age {human_age(age)}: destroyed in {human_age(due - now)}"
            if not backup.committed:
                reason += " (younger than the grace: an upload may still be running)"
            decision.expires[backup.key] = due
        (decision.destroy if destroy else decision.keep).append(backup)
        decision.reasons[backup.key] = reason
    return decision


# --------------------------------------------------------------------------------------------
# Deletion delay: what the storage does with deleted bytes


Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class SettingsFinding:
    """A region's deletion settings judged against a max_age. "error": drd cannot keep the
    promise in this region; "warning": it may not; "info": what drd does about the settings."""

    severity: Severity
    region: str
    message: str

    def __str__(self) -> str:
        return f"region {self.region}: {self.severity}: {self.message}"


def deletion_delay(settings: DeletionSettings) -> timedelta | None:
    """How long after drd deletes an object its bytes may still exist; None: no bound (they
    stay until someone intervenes)."""
    if settings.event_based_hold:
        return None
    delay = settings.soft_delete
    if settings.versioning:
        # A delete makes the object noncurrent; a lifecycle rule deletes it later (it is then
        # soft-deleted in turn, hence the sum).
        if settings.noncurrent_deleted_after is None:
            return None
        delay += settings.noncurrent_deleted_after + LIFECYCLE_LAG
    return delay


def describe(settings: DeletionSettings) -> str:
    """The settings in one line, for `drd doctor` and logs."""
    parts = []
    if not settings.known:
        parts.append("UNKNOWN, assumed:")
    parts.append(
        f"soft delete {human_age(settings.soft_delete)}"
        if settings.soft_delete
        else "no soft delete"
    )
    if settings.versioning:
        after = settings.noncurrent_deleted_after
        parts.append(
            "versioning on, noncurrent versions deleted after "
            + (
                f"{human_age(after)} (+{human_age(LIFECYCLE_LAG)} lifecycle lag)"
                if after
                else "never"
            )
        )
    else:
        parts.append("versioning off")
    if settings.retention_period:
        parts.append(f"retention policy {human_age(settings.retention_period)}")
    if settings.event_based_hold:
        parts.append("default event-based hold")
    if settings.object_retention:
        parts.append("object retention enabled")
    if settings.live_deleted_after is not None:
        parts.append(f"lifecycle deletes objects at age {human_age(settings.live_deleted_after)}")
    delay = deletion_delay(settings)
    gone = "never gone by itself" if delay is None else f"gone {human_age(delay)} after deletion"
    text = ", ".join(parts) + f": deleted data is {gone}"
    return text + (f" ({settings.note})" if settings.note else "")


def minimum_destroy_age(max_age: timedelta) -> timedelta:
    return min(MIN_DESTROY_AGE, max_age / 2)


def region_findings(
    region: str, settings: DeletionSettings, max_age: timedelta, *, unknown: Severity = "warning"
) -> list[SettingsFinding]:
    """What `settings` mean for destroying backups within `max_age` in `region`. `unknown`:
    how grave settings that could not be read are (`drd doctor` fails on them)."""
    out: list[SettingsFinding] = []
    minimum = minimum_destroy_age(max_age)

    def add(severity: Severity, message: str) -> None:
        out.append(SettingsFinding(severity, region, message))

    if not settings.known:
        add(unknown, f"deletion settings unknown ({settings.note or 'not read'})")
    delay = deletion_delay(settings)
    within = (
        "within 14 days" if max_age >= MAX_RETENTION else f"within max_age {human_age(max_age)}"
    )
    if settings.event_based_hold:
        add(
            "error",
            "the bucket's default event-based hold keeps every new object until someone "
            f"releases it: destroying backups {within} is impossible",
        )
    elif delay is None:
        add(
            "error",
            "object versioning keeps deleted objects as noncurrent versions and no lifecycle "
            f"rule deletes them: destroying backups {within} is impossible",
        )
    elif delay >= max_age:
        add(
            "error",
            f"deleted data stays {human_age(delay)} ({describe(settings)}): destroying backups "
            f"{within} is impossible",
        )
    elif settings.retention_period + delay > max_age:
        add(
            "error",
            f"the retention policy forbids deleting objects younger than "
            f"{human_age(settings.retention_period)}; with {human_age(delay)} more before deleted "
            f"data is gone, destroying backups {within} is impossible",
        )
    elif max_age - delay < minimum:
        add(
            "error",
            f"deleted data stays {human_age(delay)}: to be gone by {human_age(max_age)}, this "
            f"region's copies would have to be deleted at age {human_age(max_age - delay)}, "
            f"earlier than the {human_age(minimum)} minimum (they would be unreadable almost "
            f"at once); they are deleted at {human_age(minimum)}, so destroying backups {within} "
            "is impossible here. Shorten this bucket's soft delete: the other regions keep "
            "their own deletion age",
        )
    elif delay:
        add(
            "info",
            f"deleted data stays {human_age(delay)}: this region's copies are deleted at age "
            f"{human_age(max_age - delay)} so that they are gone by {human_age(max_age)}",
        )
    if settings.object_retention:
        add(
            "warning",
            "object retention is enabled: an object someone locks cannot be deleted before "
            "its retain-until time",
        )
    if settings.live_deleted_after is not None and settings.live_deleted_after < max_age:
        add(
            "warning",
            f"a lifecycle rule deletes objects at age {human_age(settings.live_deleted_after)}, "
            f"before max_age {human_age(max_age)}: backups disappear earlier than the plan says",
        )
    return out


def region_leads(
    max_age: timedelta, settings: Mapping[str, DeletionSettings]
) -> tuple[dict[str, timedelta], list[SettingsFinding]]:
    """Each region's own deletion lead (its copies are deleted at `max_age - lead`), and every
    region's findings.

    A region's settings only move that region's deletion: a bucket that keeps deleted data for
    a long time never shortens the other regions' retention. (Repair copies a backup only to
    regions where it is younger than their own deletion age, so a region that deletes earlier
    does not get it back.) A region whose settings cannot keep the promise is an error and
    deletes at the sane minimum, never at an age that makes its copies useless; a region whose
    deleted bytes never go away by themselves (a hold, versioning nobody cleans up) deletes at
    max_age: deleting earlier would not make it compliant.
    """
    leads: dict[str, timedelta] = {}
    findings: list[SettingsFinding] = []
    minimum = minimum_destroy_age(max_age)
    for region, region_settings in sorted(settings.items()):
        findings += region_findings(region, region_settings, max_age)
        delay = deletion_delay(region_settings)
        leads[region] = timedelta(0) if delay is None else min(delay, max_age - minimum)
    return leads, findings
