"""`drd doctor`: can every region hold backups, give them back and destroy them as the plans
promise? Three checks per region, the regions concurrently, each bounded in time:

- a probe: a small random object is written under PROBE_PREFIX, read back, deleted, and seen
  gone. No plan or source name can start with "_", so the catalog and retention, which only look
  at `<plan>/<source>/<id>/...`, never see a probe, not even one a killed doctor left behind
  (the daemon deletes those once over an hour old: drd.daemon.probe_sweep).
  Reading the settings alone proved nothing about a local region (a missing or read-only
  directory reads as "no soft delete").
- the deletion settings (drd.retention.policy), judged against the 14-day ceiling and each
  plan's max_age. Settings that cannot be read fail the doctor: then nothing proves that a
  retention policy, soft delete or hold does not keep "destroyed" backups.
- the storage class: a class with a minimum storage duration bills an object deleted earlier
  for the whole minimum, and drd deletes at max_age (14 days at most).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drd.config.models import MAX_RETENTION, Config
from drd.errors import ObjectNotFound, StorageError
from drd.layout import new_backup_id
from drd.retention.policy import (
    SettingsFinding,
    describe,
    human_age,
    region_findings,
    region_leads,
)
from drd.storage.base import DeletionSettings, Storage

log = logging.getLogger(__name__)

#: where probes are written: "_" starts no plan name, so no listing drd makes includes it
PROBE_PREFIX = "_doctor/"
_TIMEOUT = 30.0
#: the clean-up of a failed probe has its own limit, inside _TIMEOUT or after it ran out
_CLEANUP_TIMEOUT = 5.0
_PROBE_BYTES = 64

#: GCS classes billed for a minimum time however early an object is deleted
MIN_STORAGE_DURATION: dict[str, timedelta] = {
    "NEARLINE": timedelta(days=30),
    "COLDLINE": timedelta(days=90),
    "ARCHIVE": timedelta(days=365),
}
#: GCS classes without a minimum storage duration (the last three are legacy names)
NO_MINIMUM = frozenset({"STANDARD", "MULTI_REGIONAL", "REGIONAL", "DURABLE_REDUCED_AVAILABILITY"})
#: Autoclass moves an object out of Standard only once it has not been read for this long
AUTOCLASS_FIRST_MOVE = timedelta(days=30)


@dataclass
class RegionCheck:
    region: str
    settings: DeletionSettings | None
    #: why the settings could not be read at all (the region did not answer)
    error: str | None = None
    findings: list[SettingsFinding] = field(default_factory=list)
    #: why the write-read-delete probe failed; None: it passed
    probe_error: str | None = None


@dataclass
class PlanCheck:
    plan: str
    max_age: timedelta
    #: region -> the age its copies are deleted at (max_age minus its deletion lead)
    deleted_at: dict[str, timedelta]
    findings: list[SettingsFinding]
    #: what each region's storage class costs at its deletion age
    storage_class: list[SettingsFinding] = field(default_factory=list)

    @property
    def all_findings(self) -> list[SettingsFinding]:
        return self.findings + self.storage_class


@dataclass
class DoctorReport:
    regions: list[RegionCheck]
    plans: list[PlanCheck]

    @property
    def retention_failed(self) -> bool:
        """The deletion settings or storage classes break a plan's promise, or are unknown."""
        return any(
            check.error or any(f.severity == "error" for f in check.findings)
            for check in self.regions
        ) or any(f.severity == "error" for plan in self.plans for f in plan.all_findings)

    @property
    def unusable_regions(self) -> list[str]:
        return [c.region for c in self.regions if c.probe_error is not None]

    @property
    def failed(self) -> bool:
        return self.retention_failed or bool(self.unusable_regions)


async def probe(storage: Storage) -> str | None:
    """Write, read back and delete a small object; None if all worked, else what failed."""
    # The time in the name lets the daemon's sweep remove a probe left behind once it is old.
    key = f"{PROBE_PREFIX}probe-{new_backup_id(datetime.now(UTC))}"
    payload = secrets.token_bytes(_PROBE_BYTES)
    step = "write"
    try:
        await storage.put(key, payload)
        step = "read back"
        if await storage.get(key) != payload:
            problem = f"the probe object {key} read back different bytes than were written"
        else:
            step = "delete"
            await storage.delete(key)
            step = "check the deletion of"
            try:
                await storage.stat(key)
            except ObjectNotFound:
                return None
            problem = f"the probe object {key} is still there after it was deleted"
    except StorageError as exc:
        problem = f"cannot {step} the probe object {key}: {exc}"
    except asyncio.CancelledError:
        # The doctor's own time limit ran out: still remove the object, but briefly.
        if step != "write":
            left = await _clean_up(storage, key)
            if left:
                log.warning("region %s: %s", storage.name, left)
        raise
    if step != "write":
        left = await _clean_up(storage, key)
        if left:
            problem += f"; {left}"
    return problem


async def _clean_up(storage: Storage, key: str) -> str | None:
    """Delete a probe that failed half-way, within _CLEANUP_TIMEOUT (a region that hangs on
    deletes would otherwise hold the doctor forever); None if done, else why not. A probe left
    behind costs nothing else: every listing ignores it."""
    try:
        async with asyncio.timeout(_CLEANUP_TIMEOUT):
            await storage.delete(key)
    except ObjectNotFound:
        return None
    except StorageError as exc:
        return f"the clean-up delete failed, {key} is left behind: {exc}"
    except TimeoutError:
        return (
            f"the clean-up delete got no answer within {_CLEANUP_TIMEOUT:g}s, {key} is left behind"
        )
    return None


def storage_class_findings(
    region: str, settings: DeletionSettings, deleted_at: timedelta
) -> list[SettingsFinding]:
    """What the region's storage class costs when its copies are deleted at `deleted_at`."""
    out: list[SettingsFinding] = []
    if settings.autoclass_terminal is not None:
        if deleted_at < AUTOCLASS_FIRST_MOVE:
            out.append(
                SettingsFinding(
                    "info",
                    region,
                    f"Autoclass (terminal class {settings.autoclass_terminal}): copies are "
                    f"deleted at age {human_age(deleted_at)}, before Autoclass moves any object "
                    f"out of Standard ({human_age(AUTOCLASS_FIRST_MOVE)} unread), and Autoclass "
                    "bills no early deletion: no minimum storage duration applies",
                )
            )
        else:
            out.append(
                SettingsFinding(
                    "warning",
                    region,
                    f"Autoclass (terminal class {settings.autoclass_terminal}) moves unread "
                    f"copies to colder classes before they are deleted at "
                    f"{human_age(deleted_at)}: reads of old backups are slower",
                )
            )
        return out
    cls = (settings.storage_class or "").upper()
    minimum = MIN_STORAGE_DURATION.get(cls)
    if minimum is not None and deleted_at < minimum:
        out.append(
            SettingsFinding(
                "error",
                region,
                f"the bucket's default storage class {cls} has a minimum storage duration of "
                f"{human_age(minimum)}: every copy, deleted at age {human_age(deleted_at)}, is "
                f"billed for {human_age(minimum)}. Use STANDARD (or Autoclass) for this bucket",
            )
        )
    elif cls and minimum is None and cls not in NO_MINIMUM:
        out.append(
            SettingsFinding(
                "warning",
                region,
                f"unknown storage class {cls}: its minimum storage duration cannot be judged",
            )
        )
    return out


async def run_doctor(cfg: Config, regions: Sequence[Storage]) -> DoctorReport:
    """Probe every region and judge its settings, for the region and for each plan using it."""

    async def settings_of(storage: Storage) -> DeletionSettings:
        return await asyncio.wait_for(storage.deletion_settings(), _TIMEOUT)

    async def probe_of(storage: Storage) -> str | None:
        try:
            return await asyncio.wait_for(probe(storage), _TIMEOUT)
        except TimeoutError:
            return f"the probe got no answer within {human_age(timedelta(seconds=_TIMEOUT))}"

    settings, probes = await asyncio.gather(
        asyncio.gather(*(settings_of(r) for r in regions), return_exceptions=True),
        asyncio.gather(*(probe_of(r) for r in regions)),
    )
    checks: list[RegionCheck] = []
    known: dict[str, DeletionSettings] = {}
    for storage, result, probe_error in zip(regions, settings, probes, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            error = str(result) or type(result).__name__
            checks.append(RegionCheck(storage.name, None, error, probe_error=probe_error))
            continue
        known[storage.name] = result
        found = region_findings(storage.name, result, MAX_RETENTION, unknown="error")
        checks.append(RegionCheck(storage.name, result, None, found, probe_error))
    plans = []
    for plan in cfg.plans:
        max_age = plan.retention.max_age
        leads, found = region_leads(
            max_age, {r: known[r] for r in plan.storage.regions if r in known}
        )
        deleted_at = {r: max_age - leads.get(r, timedelta(0)) for r in plan.storage.regions}
        classes = [
            finding
            for region in plan.storage.regions
            if region in known
            for finding in storage_class_findings(region, known[region], deleted_at[region])
        ]
        plans.append(PlanCheck(plan.name, max_age, deleted_at, found, classes))
    return DoctorReport(checks, plans)


def format_doctor(report: DoctorReport) -> list[str]:
    lines = []
    shown: set[str] = set()
    for check in report.regions:
        probe_line = (
            "writable (write, read, delete: ok)"
            if check.probe_error is None
            else f"NOT USABLE: {check.probe_error}"
        )
        lines.append(f"region {check.region}: {probe_line}")
        if check.settings is None:
            lines.append(f"region {check.region}: UNREACHABLE: {check.error}")
            continue
        storage_class = ""
        if check.settings.autoclass_terminal is not None:
            storage_class = f"; Autoclass (terminal {check.settings.autoclass_terminal})"
        elif check.settings.storage_class:
            storage_class = f"; storage class {check.settings.storage_class}"
        lines.append(f"region {check.region}: {describe(check.settings)}{storage_class}")
        for finding in check.findings:
            lines.append(f"  {finding.severity}: {finding.message}")
            shown.add(finding.message)
    for plan in report.plans:
        by_age: dict[timedelta, list[str]] = {}
        for region, age in plan.deleted_at.items():
            by_age.setdefault(age, []).append(region)
        ages = "; ".join(
            f"at age {human_age(age)} in region(s) {', '.join(names)}"
            for age, names in sorted(by_age.items(), reverse=True)
        )
        lines.append(
            f"plan {plan.plan}: max_age {human_age(plan.max_age)}: backups are deleted {ages}"
        )
        retention = [f for f in plan.findings if f.severity != "info"]
        for finding in retention + plan.storage_class:
            if finding.message not in shown:
                lines.append(f"  region {finding.region}: {finding.severity}: {finding.message}")
    lines.append(
        "retention: " + ("FAILED: see the errors above" if report.retention_failed else "ok")
    )
    unusable = report.unusable_regions
    lines.append(
        "regions: "
        + (f"FAILED: not usable: {', '.join(unusable)}" if unusable else "ok (all usable)")
    )
    lines.append("doctor: " + ("FAILED" if report.failed else "ok"))
    return lines


def _finding_json(finding: SettingsFinding) -> dict[str, str]:
    return {"severity": finding.severity, "region": finding.region, "message": finding.message}


def _settings_json(settings: DeletionSettings) -> dict[str, Any]:
    def seconds(value: timedelta | None) -> int | None:
        return None if value is None else int(value.total_seconds())

    return {
        "known": settings.known,
        "note": settings.note,
        "soft_delete_seconds": seconds(settings.soft_delete),
        "versioning": settings.versioning,
        "noncurrent_deleted_after_seconds": seconds(settings.noncurrent_deleted_after),
        "live_deleted_after_seconds": seconds(settings.live_deleted_after),
        "retention_period_seconds": seconds(settings.retention_period),
        "event_based_hold": settings.event_based_hold,
        "object_retention": settings.object_retention,
        "storage_class": settings.storage_class,
        "autoclass_terminal_class": settings.autoclass_terminal,
    }


def doctor_json(report: DoctorReport) -> dict[str, Any]:
    """`drd doctor --json` (its shape is documented in docs/cli.md)."""
    return {
        "ok": not report.failed,
        "retention_ok": not report.retention_failed,
        "regions": [
            {
                "region": c.region,
                "usable": c.probe_error is None,
                "probe_error": c.probe_error,
                "settings_error": c.error,
                "settings": None if c.settings is None else _settings_json(c.settings),
                "findings": [_finding_json(f) for f in c.findings],
            }
            for c in report.regions
        ],
        "plans": [
            {
                "plan": p.plan,
                "max_age_seconds": int(p.max_age.total_seconds()),
                "deleted_at_seconds": {
                    r: int(age.total_seconds()) for r, age in sorted(p.deleted_at.items())
                },
                "findings": [_finding_json(f) for f in p.findings],
                "storage_class_findings": [_finding_json(f) for f in p.storage_class],
            }
            for p in report.plans
        ],
    }
