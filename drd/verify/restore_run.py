"""One restore test: prove that a backup restores and holds the right data, and time it.

    choose the backup (the newest complete one; optionally also a random older one)
    choose the region (in turn: every region's copy gets exercised)
    fetch + verify that region's manifest
    set up the scratch environment (never the source: drd.config.guard)
    stream: storage -> AES-GCM -> zstd -> Strategy.restore(scratch target)
    checks: integrity, the built-ins, the plan's (drd.restore_tests.runner)
    tear the scratch environment down (always: success, failure, timeout, cancellation)
    store the report next to the backup in every region holding it; update the metrics

Phases (drd.verify.restore_report.Phases): fetch = waiting for the region (manifest, time to first
byte and every read); decrypt_decompress = opening the stream; restore = the rest of the
restore's wall time (the restore tool writing the copy); checks. The stream is one pipeline in
one task, so those parts add up to the restore's wall time: the RTO is their sum. Setting up
and tearing down the scratch environment is reported, not counted.

Failures fall in one category each: fetch_failed (the region, the manifest or the data object
could not be read), integrity_failed (something failed authentication, or the backup's key is
not in the keyring), restore_failed (the scratch environment or the restore tool failed),
check_failed (a critical check did not hold), timeout (the whole test ran past
restore_test.timeout; it was stopped and cleaned up).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drd import crypto
from drd.clock import Clock, utcnow
from drd.config.guard import refusal
from drd.config.models import Config, Plan
from drd.durations import format_duration
from drd.errors import (
    BackupNotFound,
    DrdError,
    IntegrityError,
    KeyringError,
    StorageError,
)
from drd.layout import SourceRef
from drd.locks import restore_test_lock
from drd.logs import log_context
from drd.metrics import Metrics
from drd.pipeline.restore import StreamMeter, choose, stream_plaintext, unusable
from drd.pipeline.source_backup import plan_regions
from drd.progress import Progress
from drd.repository.catalog import CatalogEntry, build_catalog
from drd.repository.manifest import STATUS_OK, Manifest
from drd.restore_tests import builtin
from drd.restore_tests.runner import CheckTarget, run_checks
from drd.restore_tests.spec import ScratchSpec
from drd.storage.base import Storage
from drd.strategies import get_strategy
from drd.strategies.base import AnyStrategy, SourceOptions
from drd.verify import pitr_restore_test
from drd.verify.restore_report import Category, RestoreTestReport, store_report
from drd.verify.scratch.base import ScratchEnv
from drd.verify.scratch.environment import open_scratch

log = logging.getLogger(__name__)

ROTATION_FILE = "restore-tests/rotation.json"


@dataclass(frozen=True)
class Candidate:
    """A backup to test and why it was chosen (newest | newest-usable | random-older |
    requested)."""

    entry: CatalogEntry
    selection: str
    #: newer backups passed over (allow_older), with why none of their copies can be used
    skipped_newer: Mapping[str, str] = field(default_factory=dict)
    #: why this backup, in a sentence for the report's reader
    reason: str = ""


async def choose_backups(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    *,
    min_copies: int,
    backup_id: str | None = None,
    also_random_older: bool = False,
    rng: random.Random | None = None,
    allow_older: bool = False,
) -> list[Candidate]:
    """The backups a run tests. The newest backup is never skipped silently: when no copy of
    it can be verified, or none is intact, it is still chosen and the test fails on it, naming
    it and why, unless `allow_older`: then the newest backup that can be restored is tested
    ("newest-usable"), and the candidate names the newer ones passed over.

    `min_copies` is kept for callers; a backup is tested whatever its number of copies (the
    missing ones are in the report and have their own alert)."""
    del min_copies
    catalog = await build_catalog(regions, keyring, ref.prefix)
    entries = catalog.for_source(ref)
    if backup_id is not None:
        chosen = [e for e in entries if e.backup_id == backup_id]
        if not chosen:
            raise BackupNotFound(f"no backup {backup_id} of {ref} in any region")
        return [Candidate(chosen[0], "requested", reason=f"backup {backup_id} was asked for")]
    if not entries:
        raise BackupNotFound(f"no backup of {ref} in any region to test")
    newest = entries[-1]
    held = f"{len(entries)} backup(s) of {ref} in the catalog"
    if unusable(newest) is None or not allow_older:
        why = f"the newest of the {held}"
        problem = unusable(newest)
        if problem is not None:
            why += f", tested although no copy can be used ({problem}): it is never skipped"
        out = [Candidate(newest, "newest", reason=why)]
    else:
        choice = choose(ref, entries, allow_older=True)
        why = (
            f"the newest usable of the {held}: --allow-older passed over "
            f"{len(choice.skipped_newer)} newer one(s) without a usable copy"
        )
        out = [Candidate(choice.entry, "newest-usable", choice.skipped_newer, why)]
    if also_random_older:
        first = out[0].entry
        older = [e for e in entries if unusable(e) is None and e.captured < first.captured]
        if older:
            picked = (rng or random.SystemRandom()).choice(older)
            why = (
                f"chosen at random among the {len(older)} older usable backup(s) "
                "(restore_test.also_random_older): old backups must restore too"
            )
            out.append(Candidate(picked, "random-older", reason=why))
    return out


def next_region(
    state_dir: Path, ref: SourceRef, order: Sequence[str], available: Sequence[str]
) -> str:
    """The region after the one the last test of `ref` read, in plan order, among those with
    an intact copy; remembered in the state directory so every region takes its turn."""
    path = state_dir / ROTATION_FILE
    last: dict[str, str] = {}
    try:
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            last = {str(k): str(v) for k, v in loaded.items()}
    except (OSError, ValueError):
        pass
    ring = [r for r in order if r in available] + [r for r in available if r not in order]
    sequence = list(order)
    previous = last.get(str(ref))
    chosen = ring[0]
    if previous is not None and previous in sequence:
        at = sequence.index(previous)
        after = sequence[at + 1 :] + sequence[: at + 1]
        chosen = next((r for r in after if r in ring), ring[0])
    last[str(ref)] = chosen
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(last, indent=1, sort_keys=True))
    os.replace(temp, path)
    return chosen


def categorise(exc: BaseException) -> Category:
    if isinstance(exc, IntegrityError | KeyringError):
        return "integrity_failed"
    if isinstance(exc, StorageError):
        return "fetch_failed"
    return "restore_failed"


async def run_restore_test(
    plan: Plan,
    source: SourceOptions,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    state_dir: Path,
    base_dir: Path,
    candidate: Candidate,
    region: str | None = None,
    clock: Clock = utcnow,
    metrics: Metrics | None = None,
    progress: Progress | None = None,
    rng: random.Random | None = None,
) -> RestoreTestReport:
    """Test one backup (see the module docstring); never raises for a failed test: the report
    says what failed. Raises LockBusy if a test of this source is already running. `progress`
    follows the phases as they happen (fetch, scratch_setup, restore, finishing: the restore
    tool after the last byte, checks, teardown) and the restored plaintext bytes."""
    ref = SourceRef(plan.name, source.name)
    entry = candidate.entry
    report = RestoreTestReport(
        plan=plan.name,
        source=source.name,
        backup_id=entry.backup_id,
        kind=entry.public.kind if entry.public is not None else "unknown",
        backup_captured_at=entry.captured.isoformat(),
        selection=candidate.selection,
        selection_reason=candidate.reason,
        skipped_newer=dict(candidate.skipped_newer),
        started_at=clock(),
        rto_target_seconds=plan.targets.rto.total_seconds(),
        copy_problems=entry.copy_problems(),
    )
    storages = plan_regions(plan, regions)
    with log_context(plan=plan.name, source=source.name, backup_id=entry.backup_id):
        with restore_test_lock(state_dir, ref):
            log.info("restore test %s@%s (%s): starting", ref, entry.backup_id, candidate.selection)
            tested = await _run(
                report,
                plan,
                source,
                storages,
                keyring,
                state_dir,
                base_dir,
                entry,
                region,
                progress,
                rng,
            )
            report.finished_at = clock()
            # Next to the backup wherever its manifest is: a report lives as long as the backup.
            holders = [
                s
                for s in storages
                if s.name in tested.copies and tested.copies[s.name].has_manifest
            ]
            if holders:
                await store_report(report, holders, keyring)
        if metrics is not None:
            record_metrics(metrics, report)
        head, *rest = report.summary_lines()
        if report.passed:
            log.info("restore test %s; %s", head, rest[0].strip() if rest else "")
        else:
            failing = [
                line.strip() for line in rest if line.strip().startswith(("FAILED", "WARNING"))
            ]
            log.error("restore test %s", "; ".join([head, *failing]))
    return report


async def _run(
    report: RestoreTestReport,
    plan: Plan,
    source: SourceOptions,
    storages: Sequence[Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    base_dir: Path,
    entry: CatalogEntry,
    forced_region: str | None,
    progress: Progress | None,
    rng: random.Random | None = None,
) -> CatalogEntry:
    """Run the test; the backup it tested (a point-in-time test restores the base backup
    before its point, not necessarily `entry`)."""
    ref = report.ref
    # A base backup asked for by id is tested itself, not the point before a probe.
    if pitr_restore_test.applies(plan, source) and report.selection != "requested":
        tested: CatalogEntry | None = None

        async def at_a_point() -> None:
            nonlocal tested
            probe, eligible, recorded, windows = await pitr_restore_test.pick(
                plan,
                source,
                storages,
                keyring,
                state_dir,
                newest=report.selection == "drill",
                rng=rng,
            )
            if probe is None:
                # A new source, or probes not yet archived: its base backup is tested instead.
                log.warning(
                    "restore test %s: none of the %d recorded point-in-time probe(s) is inside "
                    "the recovery window (%s): testing the base backup",
                    ref,
                    recorded,
                    windows.describe(),
                )
                report.selection_reason += (
                    f"; no point-in-time probe inside the recovery window ({recorded} recorded)"
                )
                return
            tested = entry
            tested = await pitr_restore_test.run_pitr_test(
                report,
                plan,
                source,
                storages,
                keyring,
                state_dir,
                pitr_restore_test.Chosen(probe, eligible, windows),
                prefer_region=forced_region,
                progress=progress,
                base_dir=base_dir,
            )

        await _guarded(report, plan, at_a_point())
        if tested is not None or report.failure_category is not None:
            return tested or entry
    if not entry.verified:
        category: Category = (
            "fetch_failed" if isinstance(entry.verify_error, StorageError) else "integrity_failed"
        )
        report.fail(
            category,
            f"no copy of the manifest can be verified: {entry.verify_error} (a restore would "
            "fail on this backup; `--allow-older` tests the newest backup that verifies)",
        )
        return entry
    available = entry.complete_regions
    order = list(plan.storage.regions)
    if forced_region is not None:
        if forced_region not in available:
            problem = entry.copy_problems().get(forced_region, "no copy there")
            report.region = forced_region
            report.fail("fetch_failed", f"region {forced_region} has no intact copy: {problem}")
            return entry
        report.region = forced_region
    elif not available:
        report.fail("fetch_failed", "no region holds an intact copy")
        return entry
    else:
        report.region = next_region(state_dir, ref, order, available)
    storage = next(s for s in storages if s.name == report.region)
    spec = plan.restore_test.scratch_for(source)
    fitting = get_strategy(source.kind).scratch_kinds
    if spec is None or (fitting and spec.kind not in fitting):
        report.fail(
            "restore_failed",
            f"no scratch environment for source {source.name} (kind {source.kind}): add "
            f"restore_test.scratch.{source.name} with kind {' or '.join(fitting)}",
        )
        return entry
    refused = refusal(spec, source)
    if refused is not None:
        report.fail("restore_failed", f"scratch {refused[0]} {refused[1]}")
        return entry
    await _guarded(
        report,
        plan,
        _fetch_restore_check(
            report, plan, source, storage, keyring, state_dir, base_dir, entry, spec, progress
        ),
    )
    return entry


async def _guarded(report: RestoreTestReport, plan: Plan, work: Awaitable[None]) -> None:
    """Run a test's work within restore_test.timeout; whatever it raises fails the report."""
    ref = report.ref
    timeout = plan.restore_test.timeout
    try:
        async with asyncio.timeout(timeout.total_seconds()) as deadline:
            await work
    except TimeoutError:
        if deadline.expired():
            report.fail(
                "timeout",
                f"the test ran past restore_test.timeout ({format_duration(timeout)}); it was "
                "stopped and its scratch environment removed",
            )
        else:
            report.fail("restore_failed", "a step timed out")
    except DrdError as exc:
        report.fail(categorise(exc), str(exc))
    except Exception as exc:  # an unexpected failure is still a failed test, with a report
        log.exception("restore test %s: unexpected error", ref)
        report.fail("restore_failed", f"{type(exc).__name__}: {exc}")


async def _fetch_restore_check(
    report: RestoreTestReport,
    plan: Plan,
    source: SourceOptions,
    storage: Storage,
    keyring: crypto.Keyring,
    state_dir: Path,
    base_dir: Path,
    entry: CatalogEntry,
    spec: ScratchSpec,
    progress: Progress | None,
) -> None:
    ref, phases = report.ref, report.phases
    where = f"{storage.name}:{ref.manifest_key(entry.backup_id)}"
    _phase(progress, "fetch")
    started = time.perf_counter()
    raw = await storage.get(ref.manifest_key(entry.backup_id))
    phases.fetch = time.perf_counter() - started
    manifest = Manifest.open(keyring, raw, where, ref, entry.backup_id)
    metadata: dict[str, Any] = dict(manifest.body.strategy_metadata)
    strategy = get_strategy(manifest.public.kind)
    meter = StreamMeter()
    if progress is not None:
        progress.restart_bytes(manifest.body.plaintext_size)
    _phase(progress, "scratch_setup")
    started = time.perf_counter()
    teardown_from: float | None = None
    try:
        async with open_scratch(
            spec,
            manifest.public.kind,
            metadata,
            state_dir=state_dir,
            label=str(ref),
            source=source,
        ) as env:
            phases.scratch_setup = time.perf_counter() - started
            report.scratch = {
                "kind": env.kind,
                "description": env.description,
                "resource": env.resource,
                "note": env.note,
            }
            try:
                await _restore_and_check(
                    report,
                    plan,
                    source,
                    storage,
                    keyring,
                    manifest,
                    metadata,
                    strategy,
                    meter,
                    env,
                    base_dir,
                    progress,
                )
            finally:
                teardown_from = time.perf_counter()
                _phase(progress, "teardown")
    finally:
        if teardown_from is not None:
            phases.teardown = time.perf_counter() - teardown_from
        report.bytes = {"fetched": meter.ciphertext_bytes, "restored": meter.plaintext_bytes}


async def _restore_and_check(
    report: RestoreTestReport,
    plan: Plan,
    source: SourceOptions,
    storage: Storage,
    keyring: crypto.Keyring,
    manifest: Manifest,
    metadata: dict[str, Any],
    strategy: type[AnyStrategy],
    meter: StreamMeter,
    env: ScratchEnv,
    base_dir: Path,
    progress: Progress | None,
) -> None:
    ref, phases = report.ref, report.phases
    _phase(progress, "restore")
    started = time.perf_counter()
    try:
        outcome = await strategy.restore(
            stream_plaintext(storage, ref, manifest, keyring, meter=meter, progress=progress),
            env.target,
            metadata,
            **env.restore_options,
        )
    except IntegrityError:
        report.checks.append(
            builtin.integrity(False, meter.ciphertext_bytes, meter.plaintext_bytes)
        )
        raise
    finally:
        wall = time.perf_counter() - started
        phases.fetch += meter.fetch_seconds
        phases.decrypt_decompress = meter.open_seconds
        phases.restore = max(0.0, wall - meter.fetch_seconds - meter.open_seconds)
    report.restore = dict(outcome.details)
    if outcome.warnings:  # what the scratch target could not take (xattrs, device nodes)
        report.restore["warnings"] = list(outcome.warnings)
    _phase(progress, "checks")
    started = time.perf_counter()
    report.checks.append(
        builtin.integrity(meter.complete, meter.ciphertext_bytes, meter.plaintext_bytes)
    )
    if manifest.public.status != STATUS_OK:  # a degraded backup: the report says what it lacks
        report.checks.append(builtin.backup_status(manifest.public.status, manifest.body.degraded))
    if env.after_restore is not None:
        report.checks.extend(await env.after_restore())
    target = CheckTarget(
        kind=manifest.public.kind,
        target=env.dsn if env.dsn is not None else str(env.path or env.target),
        metadata=metadata,
        captured_at=manifest.public.started,
        server_major=env.server_major,
        command_env={
            **env.command_env(),
            "DRD_PLAN": ref.plan,
            "DRD_SOURCE": ref.source,
            "DRD_BACKUP_ID": report.backup_id,
            "DRD_BACKUP_CAPTURED_AT": manifest.public.started_at,
        },
        cwd=base_dir,
        restore_options=env.restore_options,
        restore_details=outcome.details,
    )
    report.checks.extend(await run_checks(target, plan.restore_test.checks_for(source.name)))
    phases.checks = time.perf_counter() - started
    report.measured = True
    failing = [c for c in report.checks if c.fails_test]
    if failing:
        first = failing[0]
        message = f"{len(failing)} check(s) failed: " + ", ".join(c.name for c in failing)
        message += f"; {first.name}: {first.detail or 'failed'}"
        if first.query:
            message += f" [query: {first.query}]"
        compared = first.comparison(lambda value: json.dumps(value, default=str))
        if compared:
            message += f" ({compared})"
        report.fail("check_failed", message)


def _phase(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress.phase(name)


def record_metrics(metrics: Metrics, report: RestoreTestReport) -> None:
    labels = (report.plan, report.source)
    metrics.restore_tests.labels(*labels, "success" if report.passed else "failure").inc()
    metrics.restore_test_last_status.labels(*labels).set(1 if report.passed else 0)
    if report.passed:
        finished = report.finished_at or report.started_at
        metrics.restore_test_last_success.labels(*labels).set(finished.timestamp())
        metrics.rto.labels(*labels).set(report.phases.rto)
    elif report.failure_category is not None:
        metrics.restore_test_failures.labels(*labels, report.failure_category).inc()
    for phase, seconds in report.phases.as_json().items():
        metrics.restore_test_phase.labels(*labels, phase).set(seconds)


async def restore_tests_for(
    plan: Plan,
    source: SourceOptions,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    state_dir: Path,
    base_dir: Path,
    backup_id: str | None = None,
    region: str | None = None,
    clock: Clock = utcnow,
    metrics: Metrics | None = None,
    allow_older: bool = False,
    progress: Progress | None = None,
    rng: random.Random | None = None,
) -> list[RestoreTestReport]:
    """A whole run for one source: the newest backup (or `backup_id`; with `allow_older` the
    newest that can be verified), plus a random older one when the plan asks for it.
    `progress` follows each test in turn (see run_restore_test), after phase `choosing`."""
    ref = SourceRef(plan.name, source.name)
    _phase(progress, "choosing")
    with log_context(job="restore-test", plan=plan.name, source=source.name):
        candidates = await choose_backups(
            ref,
            plan_regions(plan, regions),
            keyring,
            min_copies=plan.storage.min_copies,
            backup_id=backup_id,
            also_random_older=plan.restore_test.also_random_older and backup_id is None,
            allow_older=allow_older,
        )
        reports = []
        for candidate in candidates:
            reports.append(
                await run_restore_test(
                    plan,
                    source,
                    regions,
                    keyring,
                    state_dir=state_dir,
                    base_dir=base_dir,
                    candidate=candidate,
                    region=region,
                    clock=clock,
                    metrics=metrics,
                    progress=progress,
                    rng=rng,
                )
            )
    return reports


def configured_scratch_dsns(cfg: Config) -> list[str]:
    """Every postgres-server scratch DSN of the config (the leftover sweep needs them: records
    keep DSNs without their password)."""
    return [
        spec.dsn
        for plan in cfg.plans
        for spec in plan.restore_test.scratch.values()
        if spec.dsn is not None
    ]
