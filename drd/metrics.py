"""Every Prometheus metric drd exports, defined in one place.

Dashboards and alert rules (monitoring/) rely on these names and labels. Labels are limited to
plan, source, region, operation, phase, reason, result and kind (a job's: JOB_KINDS): all
bounded by the config, never by data (no backup ids, no error strings).

- `result` has one vocabulary everywhere (RESULTS): `success` and `failure`; storage
  operations add `not_found`, a region's answer that an object does not exist, which is
  neither (reading a manifest that is not there is how drd finds out).
- Per-plan series exist only for the plan's own regions, per-source series only for the
  sources of the loaded config (a reload that removes one removes its series: `forget`).
- No `_created` series: they double the series count and no rule or dashboard reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from drd import __version__
from drd.progress import Snapshot

PS = ("plan", "source")
#: the values of every `result` label (storage operations also say `not_found`)
RESULTS = ("success", "failure")
STORAGE_RESULTS = (*RESULTS, "not_found")
#: why a restore test failed (drd.verify.restore_report.CATEGORIES)
#: the kinds of job whose progress is exported (drd.progress)
JOB_KINDS = ("backup", "restore-test", "drill")
#: the labels of the running-job series
JOB_LABELS = (*PS, "kind")
RESTORE_TEST_FAILURE_REASONS = (
    "fetch_failed",
    "integrity_failed",
    "restore_failed",
    "check_failed",
    "timeout",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A process-wide switch of prometheus_client (read at every scrape).
        disable_created_metrics()  # type: ignore[no-untyped-call]
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
            "min_copies regions (a continuously archived physical source: minus the time its "
            "archive in min_copies regions reaches)",
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
        self.retention_wal_deleted = Counter(
            "drd_retention_wal_deleted",
            "Archived WAL objects (segments, partials, timeline histories) destroyed by retention",
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
            "Missing or damaged backup copies copied from another region, by result",
            ("plan", "region", "result"),
            registry=r,
        )
        self.integrity_findings = Gauge(
            "drd_integrity_findings",
            "Standing integrity findings in a region, by kind (rollback, disagreement, "
            "future_dated, invalid_record): what a writer to the region may have done",
            ("plan", "region", "finding"),
            registry=r,
        )
        self.copies_damaged = Counter(
            "drd_copies_damaged",
            "Backup copies found damaged (data not what the verified manifest says), by region",
            ("plan", "region"),
            registry=r,
        )

        # Scrubbing (fed by drd.daemon.scrub_loop): re-reading stored copies
        self.scrub_oldest_verified = Gauge(
            "drd_scrub_oldest_verified_timestamp_seconds",
            "When the least recently verified copy of the source in the region was last read "
            "and checked (or written)",
            (*PS, "region"),
            registry=r,
        )
        self.scrub_period = Gauge(
            "drd_scrub_period_seconds",
            "Every copy is to be re-read and checked within this period",
            registry=r,
        )
        self.scrub_bytes = Counter(
            "drd_scrub_read_bytes",
            "Bytes of stored copies read and checked by scrubbing",
            ("region",),
            registry=r,
        )

        # Running jobs (drd.progress, published at every scrape by publish_jobs); a drill's
        # series are those of the source it is restoring
        self.job_running = Gauge(
            "drd_job_running",
            "1 while a job of this kind runs for the source, 0 once it has ended",
            JOB_LABELS,
            registry=r,
        )
        self.job_bytes_done = Gauge(
            "drd_job_bytes_done",
            "Bytes the running job has moved so far (a backup: the source's dump read; a "
            "restore test or a drill: the plaintext restored)",
            JOB_LABELS,
            registry=r,
        )
        self.job_started = Gauge(
            "drd_job_started_timestamp_seconds",
            "When the running job started",
            JOB_LABELS,
            registry=r,
        )
        self._jobs_seen: set[tuple[str, str, str]] = set()
        # WAL archiving of physical PostgreSQL sources (fed by drd.daemon.wal_loop)
        self.wal_last_archived = Gauge(
            "drd_wal_last_archived_timestamp_seconds",
            "When the newest WAL held in min_copies regions was written (its file's time)",
            PS,
            registry=r,
        )
        self.wal_archive_lag = Gauge(
            "drd_wal_archive_lag_bytes",
            "WAL the source has written that is not yet held in min_copies regions",
            PS,
            registry=r,
        )
        self.wal_slot_retained = Gauge(
            "drd_wal_slot_retained_bytes",
            "WAL the source keeps on its disk for drd's replication slot "
            "(pg_current_wal_lsn() - restart_lsn)",
            PS,
            registry=r,
        )
        self.wal_slot_retained_limit = Gauge(
            "drd_wal_slot_retained_limit_bytes",
            "The source's max_slot_retained: more retained WAL than this is an alert",
            PS,
            registry=r,
        )
        self.wal_gaps = Gauge(
            "drd_wal_gaps",
            "WAL segments missing in every region with later WAL held (a restore cannot "
            "replay past them)",
            PS,
            registry=r,
        )
        self.wal_receiver_up = Gauge(
            "drd_wal_receiver_up",
            "1 while pg_receivewal runs for the source, 0 while it is down (restarted with "
            "a backoff)",
            PS,
            registry=r,
        )
        self.wal_receiver_restarts = Counter(
            "drd_wal_receiver_restarts",
            "Times pg_receivewal ended and had to be started again",
            PS,
            registry=r,
        )
        self.wal_archived = Counter(
            "drd_wal_archived_files",
            "WAL files (segments, partial segments, timeline histories) stored in min_copies "
            "regions",
            PS,
            registry=r,
        )
        self.pitr_window_start = Gauge(
            "drd_pitr_window_start_timestamp_seconds",
            "The earliest point the source can be recovered to: the end of its oldest kept "
            "base backup (set by each retention sweep)",
            PS,
            registry=r,
        )
        self.pitr_window_end = Gauge(
            "drd_pitr_window_end_timestamp_seconds",
            "The latest point the source can be recovered to: its newest WAL held in "
            "min_copies regions, or the last time the archive held all it had written",
            PS,
            registry=r,
        )
        self.wal_slot_drop_failures = Counter(
            "drd_wal_slot_drop_failures",
            "Attempts to drop the replication slot of a source that left drd that failed",
            PS,
            registry=r,
        )
        self.wal_slot_left_behind = Gauge(
            "drd_wal_slot_left_behind",
            "1 while the replication slot of a source that left drd could not be dropped "
            "(it keeps WAL on the server's disk)",
            (*PS, "slot"),
            registry=r,
        )
        self.wal_copy_repairs = Counter(
            "drd_wal_copy_repairs",
            "WAL objects copied to a plan region that lacked them, by result",
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
            "drd_region_up",
            "1 if the region's last storage operation or probe succeeded, 0 if it failed",
            ("region",),
            registry=r,
        )
        self.region_up_changed = Gauge(
            "drd_region_up_changed_timestamp_seconds",
            "When drd_region_up last changed (or was first set)",
            ("region",),
            registry=r,
        )
        self.region_last_probe = Gauge(
            "drd_region_last_probe_timestamp_seconds",
            "When the daemon's periodic probe of the region last finished (answered or not)",
            ("region",),
            registry=r,
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
        self.config_reload_ok = Gauge(
            "drd_config_last_reload_successful",
            "1 if the last config reload (SIGHUP) took effect, 0 if it was refused",
            registry=r,
        )
        self.config_reload_time = Gauge(
            "drd_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (at start, or by the last good reload)",
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
        for result in RESULTS:
            self.backups.labels(plan, source, result)
            self.restore_tests.labels(plan, source, result)
        self.backups_degraded.labels(plan, source)
        for reason in RESTORE_TEST_FAILURE_REASONS:
            self.restore_test_failures.labels(plan, source, reason)
        for region in regions:
            self.retention_deleted.labels(plan, region)
            self.retention_wal_deleted.labels(plan, region)
            self.retention_delete_failures.labels(plan, region)

    def publish_jobs(self, running: Iterable[Snapshot]) -> None:
        """The running-job series from the jobs running now: 1 with their bytes and start, and
        for a job that has ended, drd_job_running 0 while the other two series go."""
        now: set[tuple[str, str, str]] = set()
        for snap in running:
            labels = (snap.plan, snap.source, snap.kind)
            now.add(labels)
            self.job_running.labels(*labels).set(1)
            self.job_bytes_done.labels(*labels).set(snap.bytes_done)
            self.job_started.labels(*labels).set(snap.started_at.timestamp())
        for labels in self._jobs_seen - now:
            if labels in self.job_running._metrics:  # else forget() took the plan's series
                self.job_running.labels(*labels).set(0)
            for gauge in (self.job_bytes_done, self.job_started):
                with contextlib.suppress(KeyError):  # forget() may have removed it
                    gauge.remove(*labels)
        self._jobs_seen = now | {
            labels for labels in self._jobs_seen if labels in self.job_running._metrics
        }

    def forget(self, plan: str, source: str | None = None, region: str | None = None) -> int:
        """Remove every series of `plan` (of its `source`, or of its `region`, if given): a
        plan, source or region the config no longer has must not linger as a stale value
        alerts keep firing on. Returns how many series went."""
        wanted = {"plan": plan, "source": source, "region": region}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        removed = 0
        for metric in vars(self).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            names = metric._labelnames
            if not set(wanted) <= set(names):
                continue
            for values in list(metric._metrics):
                labels = dict(zip(names, values, strict=True))
                if all(labels[k] == v for k, v in wanted.items()):
                    metric.remove(*values)
                    removed += 1
        return removed
