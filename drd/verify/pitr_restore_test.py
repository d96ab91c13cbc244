"""A restore test of a physical PostgreSQL source at a random point in time.

When the plan has `restore_test.pitr_probe`, the daemon records probes of the source while it
archives (drd.pipeline.pitr_probes). A restore test of such a source then

    picks one probe inside the recovery window, at random (a drill: the newest one)
    restores to its LSN (drd.pipeline.pitr.restore_to_point) into a new data directory in a
        registered scratch directory (drd.verify.scratch.recovered_postgres)
    starts that directory as the scratch server itself (loopback, a free port, jit off) and
        waits until recovery ended
    checks that recovery reached the probe (pg_last_wal_replay_lsn() >= its LSN, the server
        promoted: recovery_target_action is promote), and that every row count and query
        result the probe recorded is what the recovered copy holds; then the plan's checks of
        the source (command checks: PG* variables name the recovered server,
        DRD_RESTORED_PATH its data directory, DRD_PITR_PROBE_TIME/LSN the probe)
    stops the server and removes the directory

The report names the probe (its time and LSN), the base backup restored, the point reached
(the last WAL record replayed and the last transaction's commit time) and the achieved RPO of
that point: the probe's time minus the commit time of the last transaction replayed.

Without probes (the plan has no pitr_probe, or none is inside the window yet) the source is
restore-tested as before: its newest base backup restored into the scratch directory.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from drd import crypto
from drd.config.models import Plan
from drd.errors import RestoreError
from drd.pipeline.pitr import (
    Target,
    Windows,
    choose,
    default_drd_argv,
    recovery_windows,
    restore_to_point,
)
from drd.pipeline.pitr_probes import Probe, ProbeStore, Span, choose_probe, quote_table
from drd.progress import Progress
from drd.repository.catalog import CatalogEntry
from drd.restore_tests import builtin
from drd.restore_tests.expectations import same
from drd.restore_tests.results import CheckResult, failed, passed
from drd.restore_tests.runner import CheckTarget, run_checks
from drd.storage.base import Storage
from drd.strategies.base import SourceOptions
from drd.strategies.postgres_physical import KIND, bin_dir_for, run_as_user, stop_cluster
from drd.strategies.postgres_wal import format_lsn, parse_lsn
from drd.verify.restore_report import RestoreTestReport
from drd.verify.scratch.recovered_postgres import RecoveredScratch, recovered_scratch

log = logging.getLogger(__name__)


def applies(plan: Plan, source: SourceOptions) -> bool:
    return source.kind == KIND and plan.restore_test.pitr_probe is not None


def spans(windows: Windows) -> list[Span]:
    return [
        Span(w.start, w.end, w.base.end_lsn, w.end_lsn, w.base.system_id)
        for w in windows.windows
        if w.chain.gap is None or not w.chain.after_gap
    ]


async def pick(
    plan: Plan,
    source: SourceOptions,
    storages: Sequence[Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    *,
    newest: bool,
    rng: random.Random | None,
) -> tuple[Probe | None, int, int, Windows]:
    """(the probe, how many were eligible, how many are recorded, the windows)."""
    from drd.layout import SourceRef

    ref = SourceRef(plan.name, source.name)
    windows = await recovery_windows(ref, storages, keyring, read_partial_lsn=True)
    probes = ProbeStore(state_dir, ref).load()
    probe, eligible = choose_probe(probes, spans(windows), newest=newest, rng=rng)
    return probe, eligible, len(probes), windows


@dataclass(frozen=True)
class Chosen:
    """The probe a test recovers to, how many were eligible, and the windows it was chosen in."""

    probe: Probe
    eligible: int
    windows: Windows


async def run_pitr_test(
    report: RestoreTestReport,
    plan: Plan,
    source: SourceOptions,
    storages: Sequence[Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    chosen: Chosen,
    *,
    prefer_region: str | None = None,
    progress: Progress | None = None,
    base_dir: Path | None = None,
) -> CatalogEntry:
    """Restore to the chosen probe and check (module docstring); failures go into `report`.
    `prefer_region`: read the base backup and WAL there first; `base_dir`: where the plan's
    command checks run. Returns the base backup restored (the report is kept next to it)."""
    probe, eligible, windows = chosen.probe, chosen.eligible, chosen.windows
    ref = report.ref
    target = Target("lsn", lsn=probe.lsn)
    window = choose(windows, target)
    base = window.base
    report.backup_id = base.backup_id
    report.backup_captured_at = base.entry.captured.isoformat()
    why = "the newest probe" if report.selection == "drill" else "chosen at random"
    report.selection_reason = (
        f"{probe.describe()}, {why} among the {eligible} probe(s) inside the recovery window "
        f"{window.describe()}; base backup {base.backup_id} is the newest before it"
    )
    pitr: dict[str, Any] = {
        "probe": {"time": probe.time.isoformat(), "lsn": format_lsn(probe.lsn)},
        "target": target.describe(),
        "base_backup": base.backup_id,
        "window": window.as_json(),
    }
    report.restore = {"pitr": pitr}
    run_as = run_as_user(None)
    bin_dir = await bin_dir_for(int(base.metadata["server_version_num"]) // 10000)
    phases = report.phases
    _phase(progress, "scratch_setup")
    began = time.perf_counter()
    async with recovered_scratch(
        state_dir, bin_dir=bin_dir, run_as=run_as, label=str(ref)
    ) as scratch:
        phases.scratch_setup = time.perf_counter() - began
        report.scratch = {
            "kind": "recovered-postgres",
            "description": scratch.describe(),
            "resource": str(scratch.root),
            "note": "",
        }
        try:
            _phase(progress, "restore")
            await _recover_and_check(
                report,
                plan,
                storages,
                keyring,
                scratch,
                probe,
                target,
                pitr,
                prefer_region,
                progress,
                base_dir or Path.cwd(),
            )
        finally:
            _phase(progress, "teardown")
            stopping = time.perf_counter()
            try:
                await stop_cluster(
                    scratch.datadir, bin_dir=bin_dir, run_as=run_as, mode="immediate"
                )
            except RestoreError as exc:
                log.warning("%s: stopping the recovered server: %s", ref, exc)
            phases.teardown = time.perf_counter() - stopping
    return base.entry


async def _recover_and_check(
    report: RestoreTestReport,
    plan: Plan,
    storages: Sequence[Storage],
    keyring: crypto.Keyring,
    scratch: RecoveredScratch,
    probe: Probe,
    target: Target,
    pitr: dict[str, Any],
    prefer_region: str | None,
    progress: Progress | None,
    base_dir: Path,
) -> None:
    ref, phases = report.ref, report.phases
    spec = plan.restore_test.pitr_probe
    started = time.perf_counter()
    result = await restore_to_point(
        ref,
        storages,
        keyring,
        scratch.datadir,
        target,
        fetch_argv=[*default_drd_argv(), "wal-fetch", str(ref)],
        start=True,
        user=scratch.run_as,
        port=scratch.port,
        server_options=scratch.server_options(),
        limit=plan.restore_test.timeout.total_seconds(),
        socket_dir=scratch.root,
        prefer_region=prefer_region,
        drd_argv=spec.drd_argv if spec is not None else None,
    )
    phases.restore = time.perf_counter() - started
    report.region = result.restore.region
    details = result.restore.outcome.details
    report.bytes = {"restored": int(details.get("bytes", 0))}
    pitr["wal_fetched"] = result.wal_fetched
    pitr["stop"] = result.recovery.stop_message if result.recovery else None
    _phase(progress, "checks")
    started = time.perf_counter()
    restored_bytes = int(details.get("bytes", 0))
    report.checks.append(builtin.integrity(True, restored_bytes, restored_bytes))
    import psycopg

    dsn = scratch.dsn(probe.database, probe.superuser)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        cur = await db.execute(
            "SELECT pg_catalog.pg_last_wal_replay_lsn()::text, "
            "pg_catalog.pg_last_xact_replay_timestamp(), pg_catalog.pg_is_in_recovery()"
        )
        row = await cur.fetchone()
        assert row is not None
        replay_text, last_xact, in_recovery = row
        replayed = parse_lsn(replay_text) if replay_text else None
        report.checks.append(reached(probe, replayed, bool(in_recovery)))
        pitr["achieved"] = achieved(probe, replayed, last_xact)
        report.checks.append(await counts_check(db, probe))
        if probe.results:
            report.checks.append(await queries_check(db, probe))
    checks = plan.restore_test.checks_for(ref.source)
    if checks:
        report.checks.extend(
            await run_checks(plan_check_target(report, scratch, probe, dsn, base_dir), checks)
        )
    phases.checks = time.perf_counter() - started
    report.measured = True
    failing = [c for c in report.checks if c.fails_test]
    if failing:
        first = failing[0]
        report.fail(
            "check_failed",
            f"{len(failing)} check(s) failed: {', '.join(c.name for c in failing)}; "
            f"{first.name}: {first.detail}",
        )


def plan_check_target(
    report: RestoreTestReport, scratch: RecoveredScratch, probe: Probe, dsn: str, base_dir: Path
) -> CheckTarget:
    """The plan's own checks of the source (command checks) run against the recovered server:
    PG* variables name it, DRD_RESTORED_PATH its data directory, DRD_PITR_* the probe."""
    env = {
        "DRD_SCRATCH_KIND": "recovered-postgres",
        "PGHOST": str(scratch.socket_dir),
        "PGPORT": str(scratch.port),
        "PGUSER": probe.superuser,
        "PGDATABASE": probe.database,
        "DRD_RESTORED_DSN": dsn,
        "DRD_RESTORED_PATH": str(scratch.datadir),
        "DRD_PLAN": report.plan,
        "DRD_SOURCE": report.source,
        "DRD_BACKUP_ID": report.backup_id,
        "DRD_BACKUP_CAPTURED_AT": report.backup_captured_at,
        "DRD_PITR_PROBE_TIME": probe.time.isoformat(),
        "DRD_PITR_PROBE_LSN": format_lsn(probe.lsn),
    }
    return CheckTarget(
        kind=KIND,
        target=dsn,
        metadata={},
        captured_at=probe.time,
        command_env=env,
        cwd=base_dir,
    )


def achieved(probe: Probe, replayed: int | None, last_xact: datetime | None) -> dict[str, Any]:
    """The point recovery reached, and the achieved RPO at the probe's time (the probe's time
    minus the last replayed transaction's commit time)."""
    rpo = None
    if last_xact is not None:
        rpo = max(0.0, (probe.time - last_xact).total_seconds())
    return {
        "replay_lsn": format_lsn(replayed) if replayed is not None else None,
        "last_transaction_at": last_xact.isoformat() if last_xact is not None else None,
        "rpo_seconds": round(rpo, 3) if rpo is not None else None,
    }


def reached(probe: Probe, replayed: int | None, in_recovery: bool) -> CheckResult:
    name = "recovery_target"
    expected = f"WAL replayed to at least {format_lsn(probe.lsn)}, the server promoted"
    compared = (
        "pg_last_wal_replay_lsn() of the recovered server with the probe's LSN, and "
        "pg_is_in_recovery() (recovery_target_action: promote)"
    )
    shown = format_lsn(replayed) if replayed is not None else "nothing replayed"
    actual = f"replayed to {shown}, {'still in recovery' if in_recovery else 'promoted'}"
    ok = replayed is not None and replayed >= probe.lsn and not in_recovery
    make = passed if ok else failed
    detail = "" if ok else f"recovery stopped before the probe: {actual}"
    return make(
        name,
        "pitr",
        expected=expected,
        actual=actual,
        detail=detail,
        compared=compared,
        coverage=f"probe LSN {format_lsn(probe.lsn)}",
    )


async def counts_check(db: Any, probe: Probe) -> CheckResult:
    found: dict[str, int | str] = {}
    for table in probe.counts:
        try:
            cur = await db.execute(f"SELECT count(*) FROM {quote_table(table)}")
            row = await cur.fetchone()
            found[table] = int(row[0]) if row is not None else "no result"
        except Exception as exc:
            found[table] = f"error: {str(exc).strip().splitlines()[0]}"
    wrong = [t for t in probe.counts if found[t] != probe.counts[t]]
    total = sum(probe.counts.values())
    detail = "; ".join(
        f"table {t}: {found[t]} rows restored, the probe recorded {probe.counts[t]}" for t in wrong
    )
    make = failed if wrong else passed
    return make(
        "pitr_row_counts",
        "pitr",
        expected=dict(probe.counts),
        actual=found,
        detail=detail,
        compared="count(*) of each table of restore_test.pitr_probe, at the probe and restored",
        coverage=f"{len(probe.counts)} table(s), {total} rows",
    )


async def queries_check(db: Any, probe: Probe) -> CheckResult:
    from drd.strategies.postgres_stats import capture

    queries = {key: str(item.get("query", "")) for key, item in probe.results.items()}
    got = await capture(db, queries)
    wrong = []
    for key, recorded in probe.results.items():
        now = got.get(key, {})
        if "error" in recorded or "error" in now:
            if recorded.get("error") != now.get("error"):
                wrong.append(key)
        elif not same(recorded.get("value"), now.get("value")):
            wrong.append(key)
    detail = "; ".join(
        f"query {queries[k]!r}: the probe recorded {_result(probe.results[k])}, "
        f"restored {_result(got.get(k, {}))}"
        for k in wrong
    )
    make = failed if wrong else passed
    return make(
        "pitr_queries",
        "pitr",
        expected={queries[k]: _result(v) for k, v in probe.results.items()},
        actual={queries[k]: _result(got.get(k, {})) for k in probe.results},
        detail=detail,
        compared="each probe query and matches_source check, at the probe and restored",
        coverage=f"{len(probe.results)} quer(ies)",
    )


def _phase(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress.phase(name)


def _result(item: dict[str, Any]) -> Any:
    return f"error: {item['error']}" if "error" in item else item.get("value")
