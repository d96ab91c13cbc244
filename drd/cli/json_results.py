"""What `--json` prints, one builder per kind of result. The shapes are documented in
docs/cli.md: add keys freely, never rename or remove one (scripts read them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drd.config.findings import Finding, display_path
from drd.errors import DrdError
from drd.pipeline.backup import BackupResult
from drd.pipeline.restore import RestoreResult
from drd.retention.check import CheckReport
from drd.retention.sweep import SweepReport


def finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "severity": finding.severity,
        "file": display_path(finding.file),
        "line": finding.line,
        "field": finding.field,
        "message": finding.message,
        "text": str(finding),
    }


def validate_json(
    config_path: Path, findings: Sequence[Finding], counts: dict[str, int] | None
) -> dict[str, Any]:
    """`counts`: plans, sources and regions of a valid config; None when it is not."""
    return {
        "ok": counts is not None,
        "config": str(config_path),
        "findings": [finding_json(f) for f in findings],
        **(counts or {"plans": None, "sources": None, "regions": None}),
    }


def backup_json(result: BackupResult) -> dict[str, Any]:
    body = result.manifest.body
    return {
        "plan": result.ref.plan,
        "source": result.ref.source,
        "backup_id": result.backup_id,
        "status": result.manifest.public.status,
        "degraded": list(body.degraded),
        "source_bytes": body.plaintext_size,
        "stored_bytes": body.ciphertext_size,
        "regions": result.committed_regions,
        "missing_copies": {c.region: c.error for c in result.missing},
        "error": None,
    }


def failed_source_json(plan: str, source: str, exc: DrdError) -> dict[str, Any]:
    return {
        "plan": plan,
        "source": source,
        "backup_id": None,
        "status": "failed",
        "error": str(exc),
        "exit_code": exc.exit_code,
    }


def restore_json(result: RestoreResult) -> dict[str, Any]:
    from drd.secret_source import redact_target

    return {
        "plan": result.ref.plan,
        "source": result.ref.source,
        "backup_id": result.backup_id,
        "region": result.region,
        "target": redact_target(result.target),
        "seconds": round(result.seconds, 3),
        "created_roles": list(result.outcome.details.get("created_roles") or []),
        "skipped_regions": dict(result.skipped),
        "unusable_regions": dict(result.unusable),
        "passed_over_newer": dict(result.skipped_newer),
        "warnings": list(result.outcome.warnings),
    }


def sweep_json(report: SweepReport) -> dict[str, Any]:
    regions = {}
    for name, region in sorted(report.regions.items()):
        own = report.decisions.get(name, report.decision)
        doomed = {b.key: b for b in own.destroy}
        regions[name] = {
            "error": region.error,
            "destroy_age_seconds": int(report.policy_for(name).destroy_age.total_seconds()),
            "destroyed": sorted(f"{b.ref}@{b.backup_id}" for b in region.destroyed),
            "to_destroy": sorted(
                f"{doomed[k].ref}@{doomed[k].backup_id}" for k in region.holds if k in doomed
            ),
            "failed": {f"{k[0]}@{k[1]}": why for k, why in region.failed.items()},
            "reasons": {
                f"{doomed[k].ref}@{doomed[k].backup_id}": own.reasons[k]
                for k in region.holds
                if k in doomed
            },
            "kept": len([k for k in region.holds if k not in doomed]),
            "partials_removed": region.partials_removed,
            "oldest_copy_age_seconds": (
                None if region.oldest is None else int((report.now - region.oldest).total_seconds())
            ),
            "overdue_unreachable": region.overdue_unreachable,
            "wal": {
                "destroyed": len(region.wal_destroyed),
                "to_destroy": sorted(region.wal_doomed),
                "reasons": region.wal_doomed,
                "failed": region.wal_failed,
                "kept": sum(len(d.keep) for d in region.wal_decisions.values()),
            },
        }
    return {
        "plan": report.plan,
        "dry_run": report.dry_run,
        "ok": report.ok,
        "max_age_seconds": int(report.policy.max_age.total_seconds()),
        "skipped_sources": list(report.skipped_sources),
        "findings": [
            {"severity": f.severity, "region": f.region, "message": f.message}
            for f in report.findings
        ],
        "regions": regions,
        "wal_findings": list(report.wal_findings),
    }


def check_json(report: CheckReport) -> dict[str, Any]:
    scrub = report.scrub
    repair = report.repair
    return {
        "plan": report.plan,
        "backups": report.backups,
        "copies": report.copies,
        "problems": report.problems,
        "findings": [
            {
                "finding": f.finding,
                "source": str(f.ref),
                "region": f.region,
                "backup_id": f.backup_id,
                "message": f.message,
            }
            for f in report.findings
        ],
        "unusable": [
            {"region": region, "backup": backup, "why": why}
            for region, backup, why in report.unusable
        ],
        "unknown_key_copies": [
            {"region": region, "backup": backup, "key_id": key}
            for region, backup, key in report.unknown_key_copies
        ],
        "unreachable_regions": dict(report.unreachable),
        "skipped_sources": list(report.skipped_sources),
        "data_read": None
        if scrub is None
        else {
            "copies": len(scrub.checked),
            "bytes": scrub.bytes_read,
            "damaged": [
                {"backup": f"{c.ref}@{c.backup_id}", "region": c.region, "problem": c.problem}
                for c in scrub.damaged
            ],
        },
        "repaired": []
        if repair is None
        else [
            {
                "backup": f"{c.ref}@{c.backup_id}",
                "region": c.region,
                "from": c.source_region,
                "action": c.action,
                "error": c.error,
            }
            for c in [*repair.repaired, *repair.replaced, *repair.failed]
        ],
        "lines": report.format(),
    }
