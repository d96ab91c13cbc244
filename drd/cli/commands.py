"""What each CLI command does. Output goes to stdout; diagnostics to stderr via logging."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from drd import crypto
from drd.cli.output import print_json
from drd.config import Config, Plan, load_config
from drd.config import validate as validate_config
from drd.errors import ConfigError, DrdError, UsageError
from drd.jobs import backup_source
from drd.layout import SourceRef, check_name
from drd.repository.catalog import Catalog, CatalogEntry, build_catalog
from drd.restore import restore_backup
from drd.runtime import keyring_for, open_regions
from drd.strategies.base import SourceOptions
from drd.verify.restore_report import latest_summaries

EXIT_FAILED = 1


def keygen(*, quiet: bool) -> int:
    print(crypto.generate_key())
    if not quiet:
        print(
            "# Keep this key in your secret store; without it no backup can be read.\n"
            "# Deliver it at process start: DRD_KEYS=<key> (env), a systemd credential, or stdin.\n"
            "# To rotate, put the new key first and keep the old ones after it.",
            file=sys.stderr,
        )
    return 0


def token(name: str, role: str) -> int:
    from drd.server.auth import generate_token, token_hash

    check_name("token", name)
    secret = generate_token()
    print(secret)
    print(
        "# Give the token above to its holder (deliver it like a key: an environment variable\n"
        "# or a systemd credential). Add this entry under `api: tokens:` in drd.yaml:\n"
        f"#   - {{name: {name}, role: {role}, sha256: {token_hash(secret)}}}",
        file=sys.stderr,
    )
    return 0


def validate(config_path: Path | None) -> int:
    assert config_path is not None
    findings = validate_config(config_path)
    errors = [f for f in findings if f.severity == "error"]
    for finding in findings:
        print(str(finding), file=sys.stderr if finding.severity == "error" else sys.stdout)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return ConfigError.exit_code
    cfg = load_config(config_path)
    sources = sum(len(p.sources) for p in cfg.plans)
    print(
        f"ok: {config_path}: {len(cfg.plans)} plan(s), {sources} source(s), "
        f"{len(cfg.regions)} region(s)"
    )
    return 0


async def backup(config_path: Path | None, what: str, keys: str | None) -> int:
    assert config_path is not None
    cfg = load_config(config_path)
    plan_name, _, source_name = what.partition("/")
    plan = find_plan(cfg, plan_name)
    sources = [find_source(plan, source_name)] if source_name else list(plan.sources)
    keyring = keyring_for(cfg, keys)
    failed = 0
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        for source in sources:
            ref = SourceRef(plan.name, source.name)
            try:
                result = await backup_source(plan, source, regions, keyring, cfg.state_dir)
            except DrdError as exc:
                failed += 1
                print(f"FAILED {ref}: {exc}", file=sys.stderr)
                last_error: DrdError = exc
                continue
            missing = "; ".join(f"{c.region}: {c.error}" for c in result.missing)
            print(
                f"ok {ref}@{result.backup_id}: "
                f"{result.manifest.body.plaintext_size} bytes -> "
                f"{result.manifest.body.ciphertext_size} stored in "
                f"{','.join(result.committed_regions)}"
                + (f" (MISSING COPIES: {missing})" if missing else "")
            )
    if failed:
        return last_error.exit_code if failed == len(sources) else EXIT_FAILED
    return 0


def find_plan(cfg: Config, name: str) -> Plan:
    try:
        return cfg.plan(check_name("plan", name))
    except (KeyError, ValueError):
        known = ", ".join(p.name for p in cfg.plans) or "none"
        raise UsageError(f"unknown plan {name!r} in {cfg.path} (plans: {known})") from None


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
        "verified": entry.verified,
        "problem": str(entry.verify_error) if entry.verify_error else None,
        "damaged_copies": entry.copy_problems(),
        "source_bytes": body.plaintext_size if body else None,
        "stored_bytes": body.ciphertext_size if body else None,
        "regions": sorted(entry.complete_regions),
    }


def _print_catalog(catalog: Catalog, as_json: bool, tests: TestSummaries | None = None) -> None:

    tests = tests or {}
    if as_json:
        print_json(
            {
                "backups": [
                    _entry_json(e, tests.get((e.ref, e.backup_id))) for e in catalog.entries
                ],
                "unreachable_regions": catalog.region_errors,
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
        damaged = e.copy_problems()
        if damaged:
            status += "  DAMAGED: " + "; ".join(f"{r}: {p}" for r, p in damaged.items())
        tested = tests.get((e.ref, e.backup_id))
        if tested:
            status += "  " + _test_summary(tested)
        print(
            f"{e.ref!s:<28} {e.backup_id:<26} {e.captured:%Y-%m-%d %H:%M:%S}  "
            f"{_human(body.plaintext_size) if body else '?':>10} "
            f"{_human(body.ciphertext_size) if body else '?':>10}  "
            f"{','.join(sorted(e.complete_regions)) or '-'}{status}"
        )
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
    text += f", RTO {rto:.1f}s)" if isinstance(rto, int | float) else ")"
    if tested.get("failure_category"):
        text += f": {tested['failure_category']}"
    return text


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TiB"


async def list_backups(
    config_path: Path | None,
    what: str | None,
    keys: str | None,
    storage_args: Sequence[str],
    *,
    as_json: bool,
) -> int:
    cfg = load_config(config_path) if config_path is not None else None
    prefix = ""
    if what:
        plan, _, source = what.partition("/")
        prefix = f"{check_name('plan', plan)}/" + (
            f"{check_name('source', source)}/" if source else ""
        )
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
    _print_catalog(catalog, as_json, tests)
    return 0


async def restore(
    config_path: Path | None,
    what: str,
    keys: str | None,
    storage_args: Sequence[str],
    *,
    target: str,
    backup_id: str | None,
    region: str | None,
    allow_older: bool = False,
) -> int:
    try:
        ref = SourceRef.parse(what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = load_config(config_path) if config_path is not None else None
    keyring = keyring_for(cfg, keys)
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, storage_args)
        if cfg is not None and not storage_args:
            plan = find_plan(cfg, ref.plan)
            regions = [r for r in regions if r.name in plan.storage.regions]
        result = await restore_backup(
            ref,
            regions,
            keyring,
            target,
            backup_id=backup_id,
            prefer_region=region,
            allow_older=allow_older,
        )
    print(
        f"restored {ref}@{result.backup_id} from region {result.region} into {result.target} "
        f"in {result.seconds:.1f}s"
    )
    for newer, why in result.skipped_newer.items():
        print(
            f"warning: NEWER backup {ref}@{newer} was passed over (--allow-older): {why}",
            file=sys.stderr,
        )
    for skipped, why in result.skipped.items():
        print(f"warning: region {skipped} was skipped: {why}", file=sys.stderr)
    for region_name, why in result.unusable.items():
        print(f"warning: region {region_name} holds no usable copy: {why}", file=sys.stderr)
    return 0


async def prune(config_path: Path | None, what: str | None, *, dry_run: bool) -> int:
    """Sweep expired backups out of every region now (`--dry-run`: only say what and why)."""
    from drd.backup import utcnow
    from drd.daemon.retention_loop import lock_free_sources
    from drd.errors import StorageError
    from drd.retention.policy import DEFAULT_ORPHAN_GRACE
    from drd.retention.report import format_sweep
    from drd.retention.sweep import RetentionMemory, sweep

    assert config_path is not None
    cfg = load_config(config_path)
    plans = [find_plan(cfg, what)] if what else list(cfg.plans)
    grace = max(DEFAULT_ORPHAN_GRACE, cfg.daemon.job_timeout)
    now = utcnow()
    failed = False
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        for plan in plans:
            with lock_free_sources(cfg.state_dir, plan) as busy:
                report = await sweep(
                    plan,
                    regions,
                    now=now,
                    dry_run=dry_run,
                    orphan_grace=grace,
                    # The daemon's memory: when backups were first seen, regions' oldest copy.
                    memory=RetentionMemory(cfg.state_dir / "retention.json"),
                    skip_sources=() if dry_run else busy,
                )
            print("\n".join(format_sweep(report)))
            failed = failed or not report.ok
    return StorageError.exit_code if failed else 0


async def doctor(config_path: Path | None) -> int:
    """Check that every region can destroy backups in time (its deletion settings)."""
    from drd.retention.report import check_deletion, format_doctor

    assert config_path is not None
    cfg = load_config(config_path)
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, [])
        report = await check_deletion(cfg, regions)
    print("\n".join(format_doctor(report, cfg)))
    return EXIT_FAILED if report.failed else 0


async def check(
    config_path: Path | None,
    what: str | None,
    keys: str | None,
    *,
    read_data: bool,
    repair_copies: bool = True,
) -> int:
    """Check (and repair) every copy of PLAN, or of every plan, now (drd.retention.check).
    Exit 5 when anything damaged, forged or suspicious was found (even if repaired), 6 when a
    region could not be listed, else 0."""
    from drd.backup import utcnow
    from drd.daemon.retention_loop import lock_free_sources
    from drd.errors import IntegrityError, StorageError
    from drd.repository.heads import HeadMemory
    from drd.retention.check import check_plan
    from drd.retention.scrub import ScrubMemory

    assert config_path is not None
    cfg = load_config(config_path)
    plans = [find_plan(cfg, what)] if what else list(cfg.plans)
    keyring = keyring_for(cfg, keys)
    memory = ScrubMemory(cfg.state_dir / "scrub.json")
    heads = HeadMemory(cfg.state_dir)
    problems, unreachable = 0, False
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
            print("\n".join(report.format()))
            problems += report.problems
            unreachable = unreachable or bool(report.unreachable)
    if problems:
        print(f"check: FAILED ({problems} problem(s))")
        return IntegrityError.exit_code
    if unreachable:
        print("check: INCOMPLETE (a region could not be listed)")
        return StorageError.exit_code
    print("check: ok")
    return 0


async def restore_test(
    config_path: Path | None,
    what: str,
    keys: str | None,
    *,
    backup_id: str | None,
    region: str | None,
    as_json: bool,
    allow_older: bool = False,
) -> int:
    """Restore tests of PLAN or PLAN/SOURCE now; exit 11 if any failed (drd.verify.restore_run)."""
    from drd.errors import RestoreTestFailed
    from drd.verify.restore_run import configured_scratch_dsns, restore_tests_for
    from drd.verify.scratch.registry import sweep_leftovers

    assert config_path is not None
    cfg = load_config(config_path)
    plan_name, _, source_name = what.partition("/")
    plan = find_plan(cfg, plan_name)
    sources = [find_source(plan, source_name)] if source_name else list(plan.sources)
    if region is not None and region not in plan.storage.regions:
        raise UsageError(f"plan {plan.name} has no region {region!r}")
    keyring = keyring_for(cfg, keys)
    # What a killed test left behind (its owner is dead) goes first.
    await sweep_leftovers(cfg.state_dir, configured_scratch_dsns(cfg))
    reports = []
    errors: list[DrdError] = []
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        for source in sources:
            try:
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
        return RestoreTestFailed.exit_code
    if errors:
        return errors[0].exit_code if len(errors) == len(sources) else EXIT_FAILED
    return 0


async def drill(
    config_path: Path | None,
    plan_name: str,
    keys: str | None,
    *,
    lose_region: str | None,
    as_json: bool,
) -> int:
    """A failover drill of PLAN, in this process; exit 12 if it failed (drd.verify.drill)."""
    import getpass

    from drd.daemon.drill_loop import audit_drill
    from drd.errors import DrillFailed
    from drd.server.audit import AuditLog
    from drd.verify.drill import new_report, render_markdown, run_drill
    from drd.verify.restore_run import configured_scratch_dsns
    from drd.verify.scratch.registry import sweep_leftovers

    assert config_path is not None
    cfg = load_config(config_path)
    plan = find_plan(cfg, plan_name)
    if lose_region is not None and lose_region not in plan.storage.regions:
        raise UsageError(f"plan {plan.name} has no region {lose_region!r}")
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
        try:
            await run_drill(
                plan,
                regions,
                keyring,
                state_dir=cfg.state_dir,
                base_dir=cfg.path.parent,
                report=report,
            )
        finally:
            await audit_drill(audit, report, "finish")
    if as_json:
        print_json(report.as_json())
    else:
        print(render_markdown(report))
    return 0 if report.passed else DrillFailed.exit_code
