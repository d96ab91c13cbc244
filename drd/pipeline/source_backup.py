"""Jobs shared by the CLI and the daemon: one source's backup, with its lock and clean-up."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from drd import crypto
from drd.clock import Clock, utcnow
from drd.config.models import Plan
from drd.errors import ConfigError
from drd.layout import SourceRef
from drd.locks import source_lock
from drd.logs import log_context
from drd.pipeline.backup import BackupResult, run_backup
from drd.progress import Progress
from drd.repository.catalog import newest_manifest
from drd.repository.heads import HeadMemory, Mark, write_head
from drd.repository.leftovers import remove_orphans
from drd.restore_tests.spec import capture_queries
from drd.storage.base import Storage
from drd.strategies import get_strategy
from drd.strategies.base import SourceOptions

log = logging.getLogger(__name__)


def plan_regions(plan: Plan, regions: Mapping[str, Storage]) -> list[Storage]:
    try:
        return [regions[name] for name in plan.storage.regions]
    except KeyError as exc:
        raise ConfigError(f"plan {plan.name}: region {exc.args[0]} is not defined") from None


async def backup_source(
    plan: Plan,
    source: SourceOptions,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    state_dir: Path,
    *,
    clock: Clock = utcnow,
    progress: Progress | None = None,
) -> BackupResult:
    """`progress` (drd.progress): without a `total`, the previous backup's size is looked up
    as the estimate."""
    ref = SourceRef(plan.name, source.name)
    targets: Sequence[Storage] = plan_regions(plan, regions)
    strategy = get_strategy(source.kind)(source)
    # The plan's "matches the source" checks compare with results taken during the dump.
    strategy.capture_queries = capture_queries(plan.restore_test.checks_for(source.name))
    # ... and so do the built-in content digests, sampled or of every row as the plan says.
    strategy.content = plan.restore_test.content_for(source)
    with log_context(job="backup", plan=ref.plan, source=ref.source), source_lock(state_dir, ref):
        # Holding the lock, nothing else writes this source: leftovers are dead work.
        if progress is not None:
            progress.phase("preparing")
        removed = await remove_orphans(ref, targets)
        if removed:
            log.info("%s: removed %d leftover objects of interrupted backups", ref, removed)
        if progress is not None and progress.total is None:
            progress.total = await previous_size(ref, targets, keyring)
        result = await run_backup(
            ref,
            strategy,
            targets,
            keyring,
            min_copies=plan.storage.min_copies,
            clock=clock,
            progress=progress,
        )
        # What a region that later goes back in time is compared with (drd.repository.heads).
        newest = Mark.of(result.backup_id, result.manifest.public.started)
        committed = result.committed_regions
        HeadMemory(state_dir).record_commit(ref, newest, committed)
        await write_head(
            ref, [t for t in targets if t.name in committed], keyring, newest, committed, clock()
        )
        return result


async def previous_size(
    ref: SourceRef, regions: Sequence[Storage], keyring: crypto.Keyring
) -> int | None:
    """The newest backup's dump size: what the next backup's progress expects. An estimate
    only, so any failure to find it is no error (the progress then shows no ETA)."""
    try:
        manifest = await newest_manifest(regions, keyring, ref)
    except Exception as exc:
        log.debug("%s: no size estimate: %s", ref, exc)
        return None
    return manifest.body.plaintext_size if manifest is not None else None
