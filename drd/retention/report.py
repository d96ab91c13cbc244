"""What `drd prune` and `drd doctor` print: sweeps region by region, and deletion settings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from drd.config.models import MAX_RETENTION, Config
from drd.retention.policy import (
    SettingsFinding,
    describe,
    human_age,
    region_findings,
    region_leads,
)
from drd.retention.sweep import SweepReport
from drd.storage.base import DeletionSettings, Storage

_SETTINGS_TIMEOUT = 30.0


def format_sweep(report: SweepReport) -> list[str]:
    """A sweep, region by region: every backup destroyed (or to be, in a dry run) and why."""
    policy = report.policy
    verb = "would destroy" if report.dry_run else "destroyed"
    head = f"plan {report.plan}: max_age {human_age(policy.max_age)}"
    lines = [head + (" [dry run: nothing is changed]" if report.dry_run else "")]
    for name, region_policy in sorted(report.policies.items()):
        if region_policy.deletion_delay:
            lines.append(
                f"  region {name} deletes its copies at age "
                f"{human_age(region_policy.destroy_age)} (its storage keeps deleted data "
                f"{human_age(region_policy.deletion_delay)})"
            )
    lines += [f"  {finding}" for finding in report.findings if finding.severity != "info"]
    if report.skipped_sources:
        lines.append(
            "  skipped (busy: a backup or another sweep holds the lock): "
            + ", ".join(report.skipped_sources)
            + ": next time"
        )
    for name, region in sorted(report.regions.items()):
        own = report.decisions.get(name, report.decision)
        destroy = {b.key: b for b in own.destroy}
        if region.error is not None:
            oldest = (
                f"oldest copy {human_age(report.now - region.oldest)} ({region.oldest_from})"
                if region.oldest
                else "no copy known"
            )
            state = "OVERDUE COPIES CANNOT BE DESTROYED" if region.overdue_unreachable else oldest
            lines.append(f"  region {name}: UNREACHABLE ({region.error}): {state}")
            continue
        doomed = [destroy[k] for k in region.holds if k in destroy]
        kept = len(region.holds) - len(doomed)
        summary = f"{len(doomed)} to destroy, {kept} kept"
        if not report.dry_run:
            summary = f"{len(region.destroyed)} destroyed, {len(region.failed)} failed, {kept} kept"
            if region.partials_removed:
                summary += f", {region.partials_removed} unfinished upload(s) removed"
        if region.oldest is not None:
            left = "" if report.dry_run else " left"
            summary += f"; oldest copy{left} {human_age(report.now - region.oldest)}"
        lines.append(f"  region {name}: {summary}")
        for backup in sorted(doomed, key=lambda b: (str(b.ref), b.captured)):
            reason = own.reasons[backup.key]
            error = region.failed.get(backup.key)
            if error is not None:
                lines.append(f"    FAILED {backup}: {reason}: {error}")
            else:
                lines.append(f"    {verb} {backup}: {reason}")
    return lines


# --------------------------------------------------------------------------------------------
# drd doctor


@dataclass
class RegionCheck:
    region: str
    settings: DeletionSettings | None
    error: str | None = None
    findings: list[SettingsFinding] = field(default_factory=list)


@dataclass
class DoctorReport:
    regions: list[RegionCheck]
    #: plan -> (each region's deletion lead, findings for its max_age)
    plans: dict[str, tuple[dict[str, timedelta], list[SettingsFinding]]]

    @property
    def failed(self) -> bool:
        return any(
            check.error or any(f.severity == "error" for f in check.findings)
            for check in self.regions
        ) or any(f.severity == "error" for _, found in self.plans.values() for f in found)


async def check_deletion(cfg: Config, regions: Sequence[Storage]) -> DoctorReport:
    """Read every region's deletion settings and judge them: against the 14-day ceiling for
    the region, and against each plan's max_age for the plans that use it."""

    async def read(storage: Storage) -> DeletionSettings:
        return await asyncio.wait_for(storage.deletion_settings(), _SETTINGS_TIMEOUT)

    results = await asyncio.gather(*(read(r) for r in regions), return_exceptions=True)
    checks: list[RegionCheck] = []
    known: dict[str, DeletionSettings] = {}
    for storage, result in zip(regions, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            checks.append(RegionCheck(storage.name, None, str(result) or type(result).__name__))
            continue
        known[storage.name] = result
        checks.append(
            RegionCheck(
                storage.name, result, None, region_findings(storage.name, result, MAX_RETENTION)
            )
        )
    plans = {
        plan.name: region_leads(
            plan.retention.max_age, {r: known[r] for r in plan.storage.regions if r in known}
        )
        for plan in cfg.plans
    }
    return DoctorReport(checks, plans)


def format_doctor(report: DoctorReport, cfg: Config) -> list[str]:
    lines = []
    shown: set[str] = set()
    for check in report.regions:
        if check.settings is None:
            lines.append(f"region {check.region}: UNREACHABLE: {check.error}")
            continue
        lines.append(f"region {check.region}: {describe(check.settings)}")
        for finding in check.findings:
            lines.append(f"  {finding.severity}: {finding.message}")
            shown.add(finding.message)
    for plan in cfg.plans:
        leads, found = report.plans[plan.name]
        max_age = plan.retention.max_age
        by_age: dict[timedelta, list[str]] = {}
        for region in plan.storage.regions:
            by_age.setdefault(max_age - leads.get(region, timedelta(0)), []).append(region)
        ages = "; ".join(
            f"at age {human_age(age)} in region(s) {', '.join(names)}"
            for age, names in sorted(by_age.items(), reverse=True)
        )
        lines.append(f"plan {plan.name}: max_age {human_age(max_age)}: backups are deleted {ages}")
        for finding in found:
            if finding.severity != "info" and finding.message not in shown:
                lines.append(f"  region {finding.region}: {finding.severity}: {finding.message}")
    verdict = "FAILED: see the errors above" if report.failed else "ok"
    lines.append(f"retention: {verdict}")
    return lines
