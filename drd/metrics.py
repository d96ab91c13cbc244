"""Every Prometheus metric drd exports, defined in one place.

Dashboards and alert rules (monitoring/) rely on these names and labels. Labels are limited to
plan, source, region, operation and result: all bounded by the config, never by data (no backup
ids, no error strings).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from drd import __version__

PS = ("plan", "source")
#: why a restore test failed (drd.verify.restore_report.CATEGORIES)
RESTORE_TEST_FAILURE_REASONS = (
    "fetch_failed",
    "integrity_failed",
    "restore_failed",
    "check_failed",
    "timeout",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if registry is None:
            # process_* (restarts, memory, open files) and python_info, as the default
            # registry would have them.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        self.build_info = Info("drd_build", "drd build information", registry=r)
        self.build_info.info({"version": __version__})

        # Backups
        self.backup_last_success = Gauge(
            "drd_backup_last_success_timestamp_seconds",
            "Completion time of the last successful backup",
            PS,
            registry=r,
        )
        self.backup_last_status = Gauge(
            "drd_backup_last_status",
            "1 if the last backup succeeded, 0 if it failed",
            PS,
            registry=r,
        )
        self.backups = Counter(
            "drd_backups", "Backups attempted, by result", (*PS, "result"), registry=r
        )
        self.backups_degraded = Counter(
            "drd_backups_degraded",
            "Successful backups that are degraded: complete and restorable, but not a faithful "
            "image of the source (e.g. a file kept changing while being read; drd list says why)",
            PS,
            registry=r,
        )
        self.backup_duration = Histogram(
            "drd_backup_duration_seconds",
            "Wall time of a backup",
            PS,
            registry=r,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
        )
        self.backup_size = Gauge(
            "drd_backup_size_bytes",
            "Stored (compressed, encrypted) size of the newest backup",
            PS,
            registry=r,
        )
        self.backup_source_size = Gauge(
            "drd_backup_source_bytes", "Size of the newest backup's source dump", PS, registry=r
        )
        self.backup_copies = Gauge(
            "drd_backup_copies",
            "1 if the newest complete backup has a committed copy in the region",
            (*PS, "region"),
            registry=r,
        )
        self.plan_min_copies = Gauge(
            "drd_plan_min_copies",
            "Copies a backup needs to count as complete",
            ("plan",),
            registry=r,
        )

        # Objectives
        self.rpo = Gauge(
            "drd_rpo_seconds",
            "Now minus the capture time of the newest backup committed in at least "
            "min_copies regions",
            PS,
            registry=r,
        )
        self.rpo_target = Gauge("drd_rpo_target_seconds", "The plan's RPO target", PS, registry=r)
        self.rto = Gauge(
            "drd_rto_seconds",
            "Duration of the last successful restore test, fetch to checks passed",
            PS,
            registry=r,
        )
        self.rto_target = Gauge("drd_rto_target_seconds", "The plan's RTO target", PS, registry=r)

        # Restore tests (fed by the restore-test scheduler)
        self.restore_test_last_success = Gauge(
            "drd_restore_test_last_success_timestamp_seconds",
            "Completion time of the last passing restore test",
            PS,
            registry=r,
        )
        self.restore_test_last_status = Gauge(
            "drd_restore_test_last_status",
            "1 if the last restore test passed, 0 if it failed",
            PS,
            registry=r,
        )
        self.restore_tests = Counter(
            "drd_restore_tests", "Restore tests, by result", (*PS, "result"), registry=r
        )
        self.restore_test_interval = Gauge(
            "drd_restore_test_interval_seconds",
            "How often the plan tests its restores",
            PS,
            registry=r,
        )
        self.restore_test_failures = Counter(
            "drd_restore_test_failures",
            "Failed restore tests, by reason (" + ", ".join(RESTORE_TEST_FAILURE_REASONS) + ")",
            (*PS, "reason"),
            registry=r,
        )
        self.restore_test_phase = Gauge(
            "drd_restore_test_phase_seconds",
            "Duration of each phase of the last restore test (fetch, decrypt_decompress, "
            "restore and checks make the RTO; scratch_setup and teardown are test overhead)",
            (*PS, "phase"),
            registry=r,
        )

        # Failover drills (fed by drd.verify.drill): one series per plan
        self.drill_last_status = Gauge(
            "drd_drill_last_status",
            "1 if the plan's last failover drill passed, 0 if it failed",
            ("plan",),
            registry=r,
        )
        self.drill_last_timestamp = Gauge(
            "drd_drill_last_timestamp_seconds",
            "When the plan's last failover drill finished (passed or failed)",
            ("plan",),
            registry=r,
        )
        self.drill_rto = Gauge(
            "drd_drill_rto_seconds",
            "RTO achieved by the plan's last drill: its start to the last check passing",
            ("plan",),
            registry=r,
        )
        self.drill_rpo = Gauge(
            "drd_drill_rpo_seconds",
            "RPO achieved by the plan's last drill: the restored data's age at its start",
            ("plan",),
            registry=r,
        )

        # Retention (fed by the retention sweeper)
        self.retention_oldest_age = Gauge(
            "drd_retention_oldest_copy_age_seconds",
            "Age of the oldest backup copy in a region",
            ("plan", "region"),
            registry=r,
        )
        self.retention_max_age = Gauge(
            "drd_retention_max_age_seconds", "The plan's retention max_age", ("plan",), registry=r
        )
        self.retention_deleted = Counter(
            "drd_retention_deleted",
            "Backup copies destroyed by retention",
            ("plan", "region"),
            registry=r,
        )
        self.retention_delete_failures = Counter(
            "drd_retention_delete_failures",
            "Failed attempts to destroy an expired copy",
            ("plan", "region"),
            registry=r,
        )
        self.retention_last_sweep = Gauge(
            "drd_retention_last_sweep_timestamp_seconds",
            "When the retention sweeper last finished a sweep of the plan",
            ("plan",),
            registry=r,
        )
        self.copy_repairs = Counter(
            "drd_copy_repairs",
            "Missing backup copies copied from another region, by result",
            ("plan", "region", "result"),
            registry=r,
        )

        # Storage and plans
        self.storage_operations = Counter(
            "drd_storage_operations",
            "Storage operations by region, operation and result",
            ("region", "operation", "result"),
            registry=r,
        )
        self.region_up = Gauge(
            "drd_region_up", "1 if the region answered the last probe", ("region",), registry=r
        )
        self.state_writable = Gauge(
            "drd_state_writable",
            "1 if the last write to the state directory (job history, audit trail) succeeded",
            registry=r,
        )
        self.state_write_errors = Counter(
            "drd_state_write_errors",
            "Writes to the state directory that failed (each failed the job that needed it)",
            registry=r,
        )
        self.plan_review_age = Gauge(
            "drd_plan_review_age_seconds",
            "Seconds since the plan's reviewed_on date",
            ("plan",),
            registry=r,
        )

    def declare_source(self, plan: str, source: str, regions: list[str]) -> None:
        """Create a source's counter series at zero, so rate() and increase() see the first
        failure instead of the series merely appearing."""
        for result in ("success", "failure"):
            self.backups.labels(plan, source, result)
            self.restore_tests.labels(plan, source, result)
        self.backups_degraded.labels(plan, source)
        for reason in RESTORE_TEST_FAILURE_REASONS:
            self.restore_test_failures.labels(plan, source, reason)
        for region in regions:
            self.retention_deleted.labels(plan, region)
            self.retention_delete_failures.labels(plan, region)
