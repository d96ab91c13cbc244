"""Restoring one backup: storage -> AES-256-GCM -> zstd -> strategy.restore(target).

Works from nothing but the regions and the keyring: the manifest says which strategy restores
the backup and carries everything it needs. Copies are tried region by region: a region that is
down, or whose copy fails authentication, is reported and the next copy is used, because in a
disaster one bad copy must not stop the restore. The strategy restores into a staging location
and hands it over only when the whole stream authenticated.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drd import crypto
from drd.durations import format_elapsed
from drd.errors import (
    BackupNotFound,
    DrdError,
    IntegrityError,
    KeyringError,
    StorageError,
    UsageError,
)
from drd.layout import SourceRef
from drd.pipeline.backup import close_stream
from drd.progress import Progress
from drd.repository.catalog import CatalogEntry, build_catalog, error_class
from drd.repository.manifest import Manifest
from drd.repository.sealing import Opener
from drd.secret_source import redact_target
from drd.storage.base import Storage
from drd.strategies import get_strategy
from drd.strategies.base import RestoreOutcome

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    ref: SourceRef
    backup_id: str
    region: str
    target: str
    outcome: RestoreOutcome
    seconds: float
    # regions tried before the one that worked, with why they were skipped
    skipped: dict[str, str] = field(default_factory=dict)
    # regions whose copy was found unusable before any was tried (not tried), with why
    unusable: dict[str, str] = field(default_factory=dict)
    # newer backups passed over with --allow-older, with why none of their copies was usable
    skipped_newer: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamMeter:
    """Where the time of a streamed restore goes, for restore tests' phases. The stream is one
    pipeline in one task (read a chunk, open it, hand it to the restore, repeat), so the time
    splits cleanly: reading from storage, opening (decrypt + decompress), and the rest of the
    restore's wall time, which is the restore tool itself (including its backpressure)."""

    #: awaiting the storage: time to first byte plus every read
    fetch_seconds: float = 0.0
    #: authenticating, decrypting and decompressing
    open_seconds: float = 0.0
    ciphertext_bytes: int = 0
    plaintext_bytes: int = 0
    #: the whole object was read and authenticated, and matched the manifest
    complete: bool = False


class _TimedReads:
    """Passes a storage reader through, adding the time spent waiting for it to the meter."""

    def __init__(self, inner: AsyncIterator[bytes], meter: StreamMeter) -> None:
        self._inner = inner
        self._meter = meter

    def __aiter__(self) -> _TimedReads:
        return self

    async def __anext__(self) -> bytes:
        started = time.perf_counter()
        try:
            chunk = await self._inner.__anext__()
        finally:
            self._meter.fetch_seconds += time.perf_counter() - started
        self._meter.ciphertext_bytes += len(chunk)
        return chunk


def _metered(meter: StreamMeter, step: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
    """The plaintext pieces `step()` releases (the Opener decompresses lazily, piece by piece),
    adding the time spent producing them to the meter."""
    started = time.perf_counter()
    pieces = step()
    while True:
        piece = next(pieces, None)
        meter.open_seconds += time.perf_counter() - started
        if piece is None:
            return
        meter.plaintext_bytes += len(piece)
        yield piece
        started = time.perf_counter()


async def stream_plaintext(
    storage: Storage,
    ref: SourceRef,
    manifest: Manifest,
    keyring: crypto.Keyring,
    *,
    meter: StreamMeter | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[bytes]:
    """Authenticated plaintext of a backup's data object, read from one region. `meter`, if
    given, accumulates where the time went; `progress` counts the plaintext handed on (its
    total: the manifest's size), and is in phase `finishing` once the last byte is out (the
    restore tool may work on for a while: indexes, constraints)."""
    meter = meter if meter is not None else StreamMeter()
    pub, body = manifest.public, manifest.body
    where = f"backup {ref}@{pub.backup_id} in region {storage.name}"
    try:
        data_key = crypto.unwrap_data_key(keyring, pub.key_id, body.wrapped_data_key, pub.backup_id)
        opener = Opener(
            data_key,
            backup_id=pub.backup_id,
            key_id=pub.key_id,
            object_name=manifest.data_object_name(),
            expect_ciphertext=(body.ciphertext_size, body.ciphertext_digest),
            expect_plaintext=(body.plaintext_size, body.plaintext_digest),
            version=body.data_format,
        )
        reader = storage.open_reader(ref.data_key(pub.backup_id))
        if progress is not None:
            progress.restart_bytes(body.plaintext_size)
        try:
            async for chunk in _TimedReads(reader, meter):
                for piece in _metered(meter, functools.partial(opener.feed, chunk)):
                    if progress is not None:
                        progress.advance(len(piece))
                    yield piece
        finally:
            await close_stream(reader)
        for piece in _metered(meter, opener.finish):
            if progress is not None:
                progress.advance(len(piece))
            yield piece
        meter.complete = True
        if progress is not None:
            progress.phase("finishing")
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    except StorageError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def unusable(entry: CatalogEntry) -> str | None:
    """Why no copy of `entry` can be restored (None: a verified manifest and an intact copy)."""
    if not entry.verified:
        return str(entry.verify_error or "no copy of the manifest can be verified")
    if not entry.complete_regions:
        problems = "; ".join(f"{r}: {p}" for r, p in entry.copy_problems().items())
        return f"no intact copy in any region ({problems})"
    return None


@dataclass(frozen=True)
class Choice:
    """The backup chosen for a restore, and any newer ones passed over (`--allow-older`)."""

    entry: CatalogEntry
    #: backup id -> why none of its copies could be used
    skipped_newer: dict[str, str] = field(default_factory=dict)


def choose(
    ref: SourceRef,
    entries: Sequence[CatalogEntry],
    *,
    backup_id: str | None = None,
    allow_older: bool = False,
    unreachable: str = "",
) -> Choice:
    """The backup to restore: `backup_id`, or the newest one.

    The newest backup is never skipped silently: when no copy of it can be verified (its
    manifest forged, moved, sealed with an unknown key, unreadable in every region) or none is
    intact, the choice fails and names it, why, and the older backups that would restore, so
    the operator decides to lose more data knowingly: `allow_older` takes the newest backup
    that can be restored, and the choice says which newer ones it passed over."""
    if backup_id is not None:
        chosen = [e for e in entries if e.backup_id == backup_id]
        if not chosen:
            raise BackupNotFound(f"no backup {backup_id} of {ref} in any region{unreachable}")
        entry = chosen[0]
        why = unusable(entry)
        if why is not None:
            raise _unusable_error(entry)(f"backup {ref}@{entry.backup_id}: {why}{unreachable}")
        return Choice(entry)
    if not entries:
        raise BackupNotFound(f"no backup of {ref} in any region{unreachable}")
    skipped: dict[str, str] = {}
    for entry in reversed(entries):
        why = unusable(entry)
        if why is None:
            return Choice(entry, skipped)
        skipped[entry.backup_id] = why
        if not allow_older:
            break
    newest = entries[-1]
    older = [e.backup_id for e in entries[:-1] if unusable(e) is None]
    if allow_older:
        raise _unusable_error(newest)(
            f"no backup of {ref} can be restored: "
            + "; ".join(f"{i}: {w}" for i, w in skipped.items())
            + unreachable
        )
    hint = (
        f"; older backups that verify: {', '.join(older[-3:])} (use --allow-older to restore "
        f"the newest of them, or --backup ID)"
        if older
        else "; no older backup verifies either"
    )
    raise _unusable_error(newest)(
        f"the newest backup {ref}@{newest.backup_id} cannot be restored: "
        f"{skipped[newest.backup_id]}{hint}{unreachable}"
    )


def _unusable_error(entry: CatalogEntry) -> type[DrdError]:
    """Its own exit code: a missing key (4), a storage failure (6), else integrity (5)."""
    error = entry.verify_error
    if not entry.verified and isinstance(error, KeyringError | StorageError):
        return type(error)
    return IntegrityError


async def choose_backup(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    backup_id: str | None = None,
    *,
    allow_older: bool = False,
) -> Choice:
    catalog = await build_catalog(regions, keyring, ref.prefix)
    return choose(
        ref,
        catalog.for_source(ref),
        backup_id=backup_id,
        allow_older=allow_older,
        unreachable=_region_note(catalog.region_errors),
    )


async def find_backup(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    backup_id: str | None = None,
    *,
    allow_older: bool = False,
) -> CatalogEntry:
    """The backup to restore (see choose)."""
    choice = await choose_backup(ref, regions, keyring, backup_id, allow_older=allow_older)
    return choice.entry


def _region_note(errors: dict[str, str]) -> str:
    if not errors:
        return ""
    return " (unreachable: " + "; ".join(f"{r}: {e}" for r, e in errors.items()) + ")"


async def restore_backup(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    target: str,
    *,
    backup_id: str | None = None,
    prefer_region: str | None = None,
    options: Mapping[str, Any] | None = None,
    allow_older: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore the chosen backup (see choose) from the first region whose copy works.

    Any failure of one copy (its manifest forged, moved, sealed with a foreign key or
    unreadable; its data truncated, altered or unreadable) moves on to the next region: one bad
    region cannot stop a restore. When every copy fails, the error names every copy tried and
    why, and the copies the catalog had already found unusable. A failure of the target (it
    exists, the restore tool failed) stops at once.

    `options` are keyword arguments of the kind's restore() (PostgreSQL: create_roles=True);
    UsageError, before any data is read, if that kind's restore does not take one of them.
    `progress`: phases choosing, restoring (the stream, counted in plaintext bytes), finishing."""
    if progress is not None:
        progress.phase("choosing")
    choice = await choose_backup(ref, regions, keyring, backup_id, allow_older=allow_older)
    entry = choice.entry
    assert entry.manifest is not None and entry.public is not None  # a verified entry
    strategy = get_strategy(entry.public.kind)
    options = dict(options or {})
    accepted = inspect.signature(strategy.restore).parameters
    unknown = sorted(name for name in options if name not in accepted)
    if unknown:
        raise UsageError(
            f"a {entry.public.kind} backup's restore takes no option "
            f"{', '.join('--' + name.replace('_', '-') for name in unknown)}"
        )
    for newer, why in choice.skipped_newer.items():
        log.warning("restore %s: newer backup %s passed over (--allow-older): %s", ref, newer, why)
    by_name = {r.name: r for r in regions}
    order = sorted(entry.complete_regions, key=lambda name: name != prefer_region)
    failed: dict[str, DrdError] = {}
    for region in order:
        storage = by_name[region]
        where = f"{region}:{ref.manifest_key(entry.backup_id)}"
        started = time.monotonic()
        try:
            # Each region's own manifest is verified before its data is trusted.
            manifest = Manifest.open(
                keyring,
                await storage.get(ref.manifest_key(entry.backup_id)),
                where,
                ref,
                entry.backup_id,
            )
            if manifest != entry.manifest:
                raise IntegrityError(f"{where}: manifest differs from the verified one")
            metadata: dict[str, Any] = dict(manifest.body.strategy_metadata)
            if progress is not None:
                progress.phase("restoring")
            outcome = await strategy.restore(
                stream_plaintext(storage, ref, manifest, keyring, progress=progress),
                target,
                metadata,
                **options,
            )
        except (IntegrityError, KeyringError, StorageError) as exc:
            log.error("restore %s@%s from %s failed: %s", ref, entry.backup_id, region, exc)
            failed[region] = exc
            continue
        result = RestoreResult(
            ref,
            entry.backup_id,
            region,
            target,
            outcome,
            time.monotonic() - started,
            {r: str(e) for r, e in failed.items()},
            unusable={r: p for r, p in entry.copy_problems().items() if r not in failed},
            skipped_newer=choice.skipped_newer,
        )
        log.info(
            "restored %s@%s from %s into %s in %s",
            ref,
            entry.backup_id,
            region,
            redact_target(target),
            format_elapsed(result.seconds),
        )
        return result
    assert failed
    detail = "; ".join(f"{r}: {e}" for r, e in failed.items())
    untried = {r: p for r, p in entry.copy_problems().items() if r not in failed}
    if untried:
        detail += "; not tried: " + "; ".join(f"{r}: {p}" for r, p in untried.items())
    raise error_class(failed.values())(
        f"restore of {ref}@{entry.backup_id} failed from every region ({detail})"
    )
