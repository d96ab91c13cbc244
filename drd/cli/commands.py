"""What each CLI command does. Output goes to stdout; diagnostics to stderr via logging.

A command that cannot go on raises a DrdError. One that ran to its end returns its Outcome:
None when everything worked, else the error class of what failed, which it has already
reported (per source, or in its report). drd.cli.main turns both into the exit code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from drd import crypto
from drd.cli import json_results
from drd.cli.output import print_json
from drd.cli.progress_display import DEFAULT_LOG_EVERY, showing
from drd.config.loader import load_config
from drd.config.loader import validate as validate_config
from drd.config.models import Config, Plan
from drd.durations import format_elapsed, format_size
from drd.errors import (
    ConfigError,
    DoctorFailed,
    DrdError,
    DrillFailed,
    IntegrityError,
    PartialFailure,
    RestoreTestFailed,
    StorageError,
    UsageError,
)
from drd.layout import SourceRef, check_name
from drd.pipeline.pitr import Windows
from drd.pipeline.recovery_window import catalog_windows, window_json, window_lines
from drd.pipeline.restore import restore_backup
from drd.pipeline.source_backup import backup_source
from drd.progress import ProgressBoard
from drd.repository import manifest_cache
from drd.repository.catalog import Catalog, CatalogEntry, build_catalog
from drd.repository.manifest import STATUS_OK
from drd.runtime import keyring_for, open_regions
from drd.secret_source import redact_target
from drd.strategies.base import SourceOptions
from drd.verify.restore_report import latest_summaries

#: None: every part worked; else the class of the failure the command reported (see above)
Outcome = type[DrdError] | None


def _load_config(config_path: Path) -> Config:
    """drd.yaml, and the state directory it names keeps this command's manifest cache: the
    next command's catalog reads only the manifests it has not seen."""
    cfg = load_config(config_path)
    manifest_cache.keep_in(cfg.state_dir)
    return cfg


def failed_sources(errors: Sequence[DrdError], sources: int) -> Outcome:
    """Every source failed: the (first) failure's class; some did: PartialFailure."""
    if not errors:
        return None
    return type(errors[0]) if len(errors) == sources else PartialFailure


def keygen(*, quiet: bool, as_json: bool = False) -> Outcome:
    key = crypto.generate_key()
    if as_json:
        print_json({"key": key, "key_id": key.split(":")[1]})
    else:
        print(key)
    if not quiet:
        print(
            "# Keep this key in your secret store; without it no backup can be read.\n"
            "# Deliver it at process start: DRD_KEYS=<key> (env), a systemd credential, or stdin.\n"
            "# To rotate, put the new key first and keep the old ones after it.",
            file=sys.stderr,
        )
    return None


def token(name: str, role: str, *, as_json: bool = False) -> Outcome:
    from drd.server.auth import generate_token, token_hash

    check_name("token", name)
    secret = generate_token()
    if as_json:
        entry = {"name": name, "role": role, "sha256": token_hash(secret)}
        print_json({"token": secret, "config_entry": entry})
        return None
    print(secret)
    print(
        "# Give the token above to its holder (deliver it like a key: an environment variable\n"
        "# or a systemd credential). Add this entry under `api: tokens:` in drd.yaml:\n"
        f"#   - {{name: {name}, role: {role}, sha256: {token_hash(secret)}}}",
        file=sys.stderr,
    )
    return None


def validate(config_path: Path | None, *, as_json: bool = False) -> Outcome:
    assert config_path is not None
    findings = validate_config(config_path)
    errors = [f for f in findings if f.severity == "error"]
    if as_json:
        counts = None
        if not errors:
            cfg = load_config(config_path)
            counts = {
                "plans": len(cfg.plans),
                "sources": sum(len(p.sources) for p in cfg.plans),
                "regions": len(cfg.regions),
            }
        print_json(json_results.validate_json(config_path, findings, counts))
        return ConfigError if errors else None
    for finding in findings:
        print(str(finding), file=sys.stderr if finding.severity == "error" else sys.stdout)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return ConfigError
    cfg = _load_config(config_path)
    sources = sum(len(p.sources) for p in cfg.plans)
    print(
        f"ok: {config_path}: {len(cfg.plans)} plan(s), {sources} source(s), "
        f"{len(cfg.regions)} region(s)"
    )
    return None


async def backup(
    config_path: Path | None,
    what: str,
    keys: str | None,
    *,
    as_json: bool = False,
    progress_every: float = DEFAULT_LOG_EVERY,
) -> Outcome:
    """Back up now; progress on stderr while it runs (drd.cli.progress_display), one line per
    source at the end (`--json`: one document)."""
    assert config_path is not None
    cfg = _load_config(config_path)
    plan_name, _, source_name = what.partition("/")
    plan = find_plan(cfg, plan_name)
    sources = [find_source(plan, source_name)] if source_name else list(plan.sources)
    keyring = keyring_for(cfg, keys)
    failed: list[DrdError] = []
    results: list[dict[str, Any]] = []
    board = ProgressBoard()
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        await stack.enter_async_context(
            showing(board, sys.stderr, as_json=as_json, every=progress_every)
        )
        for source in sources:
            ref = SourceRef(plan.name, source.name)
            began = time.monotonic()
            try:
                with board.track("backup", plan.name, source.name) as progress:
                    result = await backup_source(
                        plan, source, regions, keyring, cfg.state_dir, progress=progress
                    )
            except DrdError as exc:
                failed.append(exc)
                results.append(json_results.failed_source_json(plan.name, source.name, exc))
                print(f"FAILED {ref}: {exc}", file=sys.stderr)
                continue
            seconds = time.monotonic() - began
            results.append({**json_results.backup_json(result), "seconds": round(seconds, 3)})
            for reason in result.degraded:
                print(f"warning: {ref}@{result.backup_id} is DEGRADED: {reason}", file=sys.stderr)
            if as_json:
                continue
            body = result.manifest.body
            missing = "; ".join(f"{c.region}: {c.error}" for c in result.missing)
            speed = _speed(body.plaintext_size, seconds)
            print(
                f"{result.status} {ref}@{result.backup_id}: "
                f"{format_size(body.plaintext_size)} -> {format_size(body.ciphertext_size)} "
                f"stored in {','.join(result.committed_regions)} in {format_elapsed(seconds)}"
                + (f" ({speed})" if speed else "")
                + (f" (MISSING COPIES: {missing})" if missing else "")
            )
    if as_json:
        print_json({"backups": results})
    # When every source failed, the exit code is the last failure's (as it always was).
    return failed_sources(failed[::-1], len(sources))


def _speed(size: int, seconds: float) -> str | None:
    """`38.5MiB/s`, or None when there is nothing to divide."""
    return f"{format_size(size / seconds)}/s" if seconds > 0 and size else None


def find_plan(cfg: Config, name: str) -> Plan:
    try:
        return cfg.plan(check_name("plan", name))
    except (KeyError, ValueError):
        known = ", ".join(p.name for p in cfg.plans) or "none"
        raise UsageError(f"unknown plan {name!r} in {cfg.path} (plans: {known})") from None


def check_region(
    region: str | None, names: Sequence[str], plan: str | None = None, option: str = "--region"
) -> None:
    """`--region` must name one of the regions the command reads (a typo would otherwise be
    silently ignored, and the restore read from wherever)."""
    if region is not None and region not in names:
        whose = f"plan {plan} has" if plan else "there is"
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"{option}: {whose} no region {region!r} (regions: {known})")


def find_source(plan: Plan, name: str) -> SourceOptions:
    try:
        return plan.source(name)
    except KeyError:
        known = ", ".join(s.name for s in plan.sources)
        raise UsageError(f"plan {plan.name} has no source {name!r} (sources: {known})") from None


def _entry_json(entry: CatalogEntry, tested: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body = entry.manifest.body if entry.manifest else None
    return {
        "last_restore_test": dict(tested) if tested else None,
        "plan": entry.ref.plan,
        "source": entry.ref.source,
        "backup_id": entry.backup_id,
        "kind": entry.public.kind if entry.public else None,
        "started_at": entry.public.started_at if entry.public else None,
        "completed_at": entry.public.completed_at if entry.public else None,
        "key_id": entry.public.key_id if entry.public else None,
        "status": entry.public.status if entry.public else None,
        "degraded": body.degraded if body else None,
        "verified": entry.verified,
        "problem": str(entry.verify_error) if entry.verify_error else None,
        "unknown_keys": entry.unknown_keys,
        "damaged_copies": entry.copy_problems(),
        "source_bytes": body.plaintext_size if body else None,
        "stored_bytes": body.ciphertext_size if body else None,
        "regions": sorted(entry.complete_regions),
    }


def _print_catalog(
    catalog: Catalog,
    as_json: bool,
    tests: TestSummaries | None = None,
    windows: Sequence[Windows] = (),
) -> None:
    tests = tests or {}
    if as_json:
        print_json(
            {
                "backups": [
                    _entry_json(e, tests.get((e.ref, e.backup_id))) for e in catalog.entries
                ],
                "unreachable_regions": catalog.region_errors,
                "unknown_key_backups": len(catalog.unknown_key_entries),
                "recovery_windows": [window_json(w) for w in windows],
            }
        )
        return
    print(
        f"{'PLAN/SOURCE':<28} {'BACKUP ID':<26} {'STARTED (UTC)':<20} "
        f"{'SOURCE':>10} {'STORED':>10}  REGIONS"
    )
    for e in catalog.entries:
        body = e.manifest.body if e.manifest else None
        status = "" if e.verified else f"  UNVERIFIED: {e.verify_error}"
        if e.unknown_keys:
            # The catalog's one summary line says which and why; a row only names its key.
            status = (
                f"  UNVERIFIED: sealed with key {', '.join(e.unknown_keys)} (not in the keyring)"
            )
        if e.public is not None and e.public.status != STATUS_OK:
            status += f"  {e.public.status.upper()}"
            if body and body.degraded:
                status += ": " + "; ".join(body.degraded)
        # Copies sealed with a key the keyring lacks are not damaged: the row said why.
        damaged = {} if e.unknown_keys else e.copy_problems()
        if damaged:
            status += "  DAMAGED: " + "; ".join(f"{r}: {p}" for r, p in damaged.items())
        tested = tests.get((e.ref, e.backup_id))
        if tested:
            status += "  " + _test_summary(tested)
        print(
            f"{e.ref!s:<28} {e.backup_id:<26} {e.captured:%Y-%m-%d %H:%M:%S}  "
            f"{format_size(body.plaintext_size) if body else '?':>10} "
            f"{format_size(body.ciphertext_size) if body else '?':>10}  "
            f"{','.join(sorted(e.complete_regions)) or '-'}{status}"
        )
    for line in window_lines(windows):
        print(line)
    for region, error in catalog.region_errors.items():
        print(f"warning: region {region} unreachable: {error}", file=sys.stderr)


#: the newest restore test report of each backup (drd.verify.restore_report.latest_summaries)
TestSummaries = Mapping[tuple[SourceRef, str], Mapping[str, Any]]


def _test_summary(tested: Mapping[str, Any]) -> str:
    """`TESTED passed 2026-11-28 14:42 (region a, RTO 0.3s)` / `TESTED FAILED ...: timeout`."""
    result = "passed" if tested.get("result") == "passed" else "FAILED"
    when = str(tested.get("tested_at") or "")[:16].replace("T", " ")
    rto = tested.get("rto_seconds")
    text = f"TESTED {result} {when} (region {tested.get('region') or '-'}"
    text += f", RTO {format_elapsed(rto)})" if isinstance(rto, int | float) else ")"
    if tested.get("failure_category"):
        text += f": {tested['failure_category']}"
    return text


async def list_backups(
    config_path: Path | None,
    what: str | None,
    keys: str | None,
    storage_args: Sequence[str],
    *,
    as_json: bool,
) -> Outcome:
    cfg = _load_config(config_path) if config_path is not None else None
    prefix = ""
    if what:
        plan, _, source = what.partition("/")
        if cfg is not None and not storage_args:
            found = find_plan(cfg, plan)
            if source:
                find_source(found, source)
        try:
            prefix = f"{check_name('plan', plan)}/" + (
                f"{check_name('source', source)}/" if source else ""
            )
        except ValueError as exc:
            raise UsageError(f"{what!r}: {exc} (expected PLAN or PLAN/SOURCE)") from None
    try:
        keyring: crypto.Keyring | None = keyring_for(cfg, keys)
    except DrdError as exc:
        # Listing works without the key (public manifest fields), but says it cannot verify.
        print(f"warning: {exc}; listing without verification", file=sys.stderr)
        keyring = None
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, storage_args)
        catalog = await build_catalog(regions, keyring, prefix)
        tests = await latest_summaries(catalog, regions, keyring)
        windows = await catalog_windows(catalog, regions)
    _print_catalog(catalog, as_json, tests, windows)
    return None


async def restore(
    config_path: Path | None,
    what: str,
    keys: str | None,
    storage_args: Sequence[str],
    *,
    target: str,
    backup_id: str | None,
    region: str | None,
    create_roles: bool = False,
    allow_older: bool = False,
    pitr: Mapping[str, Any] | None = None,
    progress_every: float = DEFAULT_LOG_EVERY,
) -> Outcome:
    """Restore a backup; for a physical PostgreSQL source, to a point in time
    (drd.cli.pitr_commands: `pitr` holds its flags, `as_json` among them). Progress on stderr
    while it runs (drd.cli.progress_display)."""
    from drd.cli import pitr_commands

    try:
        ref = SourceRef.parse(what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = _load_config(config_path) if config_path is not None else None
    pitr = dict(pitr or {})
    asked = [f"--{k}" for k in pitr_commands.FLAGS if pitr.get(k)]
    keyring = keyring_for(cfg, keys)
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, storage_args)
        if cfg is not None and not storage_args:
            plan = find_plan(cfg, ref.plan)
            find_source(plan, ref.source)
            regions = [r for r in regions if r.name in plan.storage.regions]
        check_region(region, [r.name for r in regions])
        if await pitr_commands.is_physical(cfg, ref, regions):
            if create_roles:
                raise UsageError("--create-roles: a physical restore brings the roles back itself")
            return await pitr_commands.restore(
                ref,
                regions,
                keyring,
                config_path=config_path,
                keys=keys,
                storage_args=storage_args,
                target_dir=target,
                backup_id=backup_id,
                region=region,
                flags=pitr,
            )
        if asked:
            raise UsageError(
                f"{', '.join(asked)}: only for point-in-time recovery of postgres-physical sources"
            )
        as_json = bool(pitr.get("as_json"))
        board = ProgressBoard()
        async with showing(board, sys.stderr, as_json=as_json, every=progress_every):
            with board.track("restore", ref.plan, ref.source) as progress:
                result = await restore_backup(
                    ref,
                    regions,
                    keyring,
                    target,
                    backup_id=backup_id,
                    prefer_region=region,
                    options={"create_roles": True} if create_roles else {},
                    allow_older=allow_older,
                    progress=progress,
                )
    restored = progress.bytes_done
    if as_json:
        print_json({**json_results.restore_json(result), "bytes": restored})
    else:
        speed = _speed(restored, result.seconds)
        print(
            f"restored {ref}@{result.backup_id} from region {result.region} into "
            f"{redact_target(result.target)} in {format_elapsed(result.seconds)} "
            f"({format_size(restored)}" + (f", {speed})" if speed else ")")
        )
    created = result.outcome.details.get("created_roles")
    if created:
        print(f"created roles (NOLOGIN): {', '.join(created)}", file=sys.stderr)
    for newer, why in result.skipped_newer.items():
        print(
            f"warning: NEWER backup {ref}@{newer} was passed over (--allow-older): {why}",
            file=sys.stderr,
        )
    for skipped, why in result.skipped.items():
        print(f"warning: region {skipped} was skipped: {why}", file=sys.stderr)
    for region_name, why in result.unusable.items():
        print(f"warning: region {region_name} holds no usable copy: {why}", file=sys.stderr)
    for line in result.outcome.warnings:
        print(f"warning: not everything could be restored: {line}", file=sys.stderr)
    return None


async def prune(
    config_path: Path | None, what: str | None, *, dry_run: bool, as_json: bool = False
) -> Outcome:
    """Sweep expired backups out of every region now (`--dry-run`: only say what and why)."""
    from drd.clock import utcnow
    from drd.daemon.retention_loop import lock_free_sources
    from drd.logs import log_context
    from drd.retention.policy import DEFAULT_ORPHAN_GRACE
    from drd.retention.report import format_sweep
    from drd.retention.sweep import RETENTION_STATE, RetentionMemory, sweep

    assert config_path is not None
    cfg = _load_config(config_path)
    plans = [find_plan(cfg, what)] if what else list(cfg.plans)
    grace = max(DEFAULT_ORPHAN_GRACE, cfg.daemon.job_timeout)
    now = utcnow()
    failed = False
    reports: list[dict[str, Any]] = []
    keyring = _wal_keyring(cfg, plans)
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        for plan in plans:
            context = log_context(job="retention", plan=plan.name)
            with context, lock_free_sources(cfg.state_dir, plan) as busy:
                report = await sweep(
                    plan,
                    regions,
                    now=now,
                    dry_run=dry_run,
                    orphan_grace=grace,
                    # The daemon's memory: when backups were first seen, regions' oldest copy.
                    memory=RetentionMemory(cfg.state_dir / RETENTION_STATE),
                    skip_sources=() if dry_run else busy,
                    keyring=keyring,
                )
            if as_json:
                reports.append(json_results.sweep_json(report))
            else:
                print("\n".join(format_sweep(report)))
            failed = failed or not report.ok
    if as_json:
        print_json({"plans": reports, "ok": not failed})
    return StorageError if failed else None


def _wal_keyring(cfg: Config, plans: Sequence[Plan]) -> crypto.Keyring | None:
    """The keys prune reads where base backups start with (the WAL before the oldest kept one
    goes); only for plans with physical PostgreSQL sources, never waiting on a terminal."""
    from drd.strategies.postgres_physical import KIND

    if not any(s.kind == KIND for plan in plans for s in plan.sources):
        return None
    if cfg.keys.source == "stdin" and sys.stdin.isatty():
        print(
            "warning: keys come from stdin, which is a terminal: archived WAL is destroyed at "
            "max_age only",
            file=sys.stderr,
        )
        return None
    try:
        return keyring_for(cfg, None)
    except DrdError as exc:
        print(f"warning: {exc}; archived WAL is destroyed at max_age only", file=sys.stderr)
        return None


async def doctor(config_path: Path | None, *, as_json: bool = False) -> Outcome:
    """Check that every region is usable (a write-read-delete probe) and can destroy backups in
    time (its deletion settings and storage class) (drd.retention.doctor)."""
    from drd.retention.doctor import doctor_json, format_doctor, run_doctor

    assert config_path is not None
    cfg = _load_config(config_path)
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, [])
        report = await run_doctor(cfg, regions)
    if as_json:
        print_json(doctor_json(report))
    else:
        print("\n".join(format_doctor(report)))
    return DoctorFailed if report.failed else None


async def check(
    config_path: Path | None,
    what: str | None,
    keys: str | None,
    *,
    read_data: bool,
    repair_copies: bool = True,
    as_json: bool = False,
) -> Outcome:
    """Check (and repair) every copy of PLAN, or of every plan, now (drd.retention.check).
    Exit 5 when anything damaged, forged or suspicious was found (even if repaired), 6 when a
    region could not be listed, else 0."""
    from drd.clock import utcnow
    from drd.daemon.retention_loop import lock_free_sources
    from drd.errors import IntegrityError, StorageError
    from drd.repository.heads import HeadMemory
    from drd.retention.check import check_plan
    from drd.retention.scrub import ScrubMemory

    assert config_path is not None
    cfg = _load_config(config_path)
    plans = [find_plan(cfg, what)] if what else list(cfg.plans)
    keyring = keyring_for(cfg, keys)
    memory = ScrubMemory(cfg.state_dir / "scrub.json")
    heads = HeadMemory(cfg.state_dir)
    problems, unreachable = 0, False
    reports: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        for plan in plans:
            # Holding the locks: no backup of these sources writes while copies are judged.
            with lock_free_sources(cfg.state_dir, plan) as busy:
                report = await check_plan(
                    plan,
                    regions,
                    keyring,
                    memory=memory,
                    heads=heads,
                    now=utcnow(),
                    read_data=read_data,
                    repair_copies=repair_copies,
                    skip_sources=busy,
                )
            if as_json:
                reports.append(json_results.check_json(report))
            else:
                print("\n".join(report.format()))
            problems += report.problems
            unreachable = unreachable or bool(report.unreachable)
    if as_json:
        result = "failed" if problems else "incomplete" if unreachable else "ok"
        print_json({"plans": reports, "problems": problems, "result": result})
        return IntegrityError if problems else StorageError if unreachable else None
    if problems:
        print(f"check: FAILED ({problems} problem(s))")
        return IntegrityError
    if unreachable:
        print("check: INCOMPLETE (a region could not be listed)")
        return StorageError
    print("check: ok")
    return None


async def restore_test(
    config_path: Path | None,
    what: str,
    keys: str | None,
    *,
    backup_id: str | None,
    region: str | None,
    as_json: bool,
    allow_older: bool = False,
    progress_every: float = DEFAULT_LOG_EVERY,
) -> Outcome:
    """Restore tests of PLAN or PLAN/SOURCE now; exit 11 if any failed (drd.verify.restore_run).
    Progress on stderr while they run (drd.cli.progress_display)."""
    from drd.verify.restore_run import configured_scratch_dsns, restore_tests_for
    from drd.verify.scratch.registry import sweep_leftovers

    assert config_path is not None
    cfg = _load_config(config_path)
    plan_name, _, source_name = what.partition("/")
    plan = find_plan(cfg, plan_name)
    sources = [find_source(plan, source_name)] if source_name else list(plan.sources)
    check_region(region, plan.storage.regions, plan.name)
    keyring = keyring_for(cfg, keys)
    # What a killed test left behind (its owner is dead) goes first.
    await sweep_leftovers(cfg.state_dir, configured_scratch_dsns(cfg))
    reports = []
    errors: list[DrdError] = []
    board = ProgressBoard()
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        await stack.enter_async_context(
            showing(board, sys.stderr, as_json=as_json, every=progress_every)
        )
        for source in sources:
            try:
                with board.track("restore-test", plan.name, source.name) as progress:
                    found = await restore_tests_for(
                        plan,
                        source,
                        regions,
                        keyring,
                        state_dir=cfg.state_dir,
                        base_dir=cfg.path.parent,
                        backup_id=backup_id,
                        region=region,
                        allow_older=allow_older,
                        progress=progress,
                    )
                    failed = [r for r in found if not r.passed]
                    if failed:
                        # A failed test is a report, not an error: the progress must be told.
                        progress.fail(
                            "; ".join(
                                f"{r.backup_id}: {r.failure_category}: {r.failure_message}"
                                for r in failed
                            )
                        )
            except DrdError as exc:
                errors.append(exc)
                print(f"FAILED {plan.name}/{source.name}: {exc}", file=sys.stderr)
                continue
            reports.extend(found)
            if not as_json:
                for report in found:
                    print("\n".join(report.summary_lines()))
    if as_json:
        print_json({"reports": [r.as_json() for r in reports]})
    if any(not r.passed for r in reports):
        return RestoreTestFailed
    return failed_sources(errors, len(sources))


async def drill(
    config_path: Path | None,
    plan_name: str,
    keys: str | None,
    *,
    lose_region: str | None,
    as_json: bool,
    html: Path | None = None,
    progress_every: float = DEFAULT_LOG_EVERY,
) -> Outcome:
    """A failover drill of PLAN, in this process; exit 12 if it failed (drd.verify.drill).
    `html`: also write its one-page report there (drd.verify.drill_html). Progress on stderr
    while it runs, source by source (drd.cli.progress_display)."""
    import getpass

    from drd.cli.html_output import check_output, drill_page, write_output
    from drd.daemon.drill_loop import audit_drill
    from drd.server.audit import AuditLog
    from drd.verify.drill import new_report, render_markdown, run_drill
    from drd.verify.restore_run import configured_scratch_dsns
    from drd.verify.scratch.registry import sweep_leftovers

    assert config_path is not None
    cfg = _load_config(config_path)
    plan = find_plan(cfg, plan_name)
    check_region(lose_region, plan.storage.regions, plan.name, "--lose-region")
    if html is not None:
        check_output("--html", html)
    keyring = keyring_for(cfg, keys)
    await sweep_leftovers(cfg.state_dir, configured_scratch_dsns(cfg))
    report = new_report(
        plan, lose_region=lose_region, requested_by={"user": getpass.getuser(), "via": "cli"}
    )
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        # The trail goes to the surviving regions only: a lost region is not touched.
        audit = AuditLog(
            cfg.state_dir / "audit.jsonl",
            {n: s for n, s in regions.items() if n != lose_region},
            keyring,
        )
        await audit_drill(audit, report, "start", outcome="started")
        board = ProgressBoard()
        try:
            async with showing(board, sys.stderr, as_json=as_json, every=progress_every):
                await run_drill(
                    plan,
                    regions,
                    keyring,
                    state_dir=cfg.state_dir,
                    base_dir=cfg.path.parent,
                    report=report,
                    board=board,
                )
        finally:
            await audit_drill(audit, report, "finish")
            await audit.close(grace=30.0)  # a one-shot process: ship before exiting
        page = None
        if html is not None:
            # The history from the surviving regions only: a lost region is not touched.
            survivors = {n: s for n, s in regions.items() if n != lose_region}
            page = await drill_page(plan, survivors, keyring, report.as_json())
    if as_json:
        print_json(report.as_json())
    else:
        print(render_markdown(report))
    if html is not None and page is not None:
        write_output("--html", html, page)  # after the outcome is printed, whatever happens here
    return None if report.passed else DrillFailed


async def audit_verify(
    config_path: Path | None, keys: str | None, *, chain: str | None, as_json: bool
) -> Outcome:
    """`drd audit verify`: any gap, edit, reorder or truncation of the trail, in the local file
    or in any region's sealed copies, is reported; exit 5 (integrity) if there is one."""
    from drd.server.audit import verify_trail

    assert config_path is not None
    cfg = _load_config(config_path)
    keyring = keyring_for(cfg, keys)
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        report = await verify_trail(cfg.state_dir / "audit.jsonl", regions, keyring, chain)
    if as_json:
        print_json(report.as_json())
    else:
        counts = ", ".join(f"{n}: {c}" for n, c in sorted(report.region_records.items()))
        print(
            f"audit trail {report.chain}: {report.local_records} local record(s); "
            f"in the regions: {counts or 'none'}"
        )
        for finding in report.findings:
            print(f"BROKEN: {finding}")
        for note in report.notes:
            print(f"note: {note}")
        print("ok: the trail is intact" if report.ok else f"{len(report.findings)} finding(s)")
    return None if report.ok else IntegrityError
