"""What `drd prune` prints: sweeps region by region (`drd doctor`'s is drd.retention.doctor)."""

from __future__ import annotations

from drd.retention.policy import human_age
from drd.retention.sweep import RegionSweep, SweepReport
from drd.retention.wal_retention import group_reasons


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
        lines += _wal_lines(region, verb, report.dry_run)
    lines += [f"  WARNING {finding}" for finding in report.wal_findings]
    return lines


def _wal_lines(region: RegionSweep, verb: str, dry_run: bool) -> list[str]:
    """WAL comes in thousands of files: one line per source and reason, first..last name."""
    lines = []
    for ref, decision in sorted(region.wal_decisions.items(), key=lambda kv: str(kv[0])):
        kept = len(decision.keep)
        doomed = len(decision.destroy)
        if dry_run:
            head = f"    WAL {ref}: {doomed} to destroy, {kept} kept"
        else:
            failed = len([k for k in decision.destroy if k in region.wal_failed])
            head = f"    WAL {ref}: {doomed - failed} destroyed, {failed} failed, {kept} kept"
        if decision.not_cut:
            head += f" ({decision.not_cut})"
        lines.append(head)
        for reason, keys in group_reasons(decision.destroy):
            names = [k.rsplit("/", 1)[-1].split("@")[0] for k in keys]
            span = names[0] if len(names) == 1 else f"{min(names)}..{max(names)}"
            lines.append(f"      {verb} {len(keys)} WAL file(s) {span}: {reason}")
        for key in sorted(k for k in decision.destroy if k in region.wal_failed):
            lines.append(f"      FAILED {key}: {region.wal_failed[key]}")
    return lines
