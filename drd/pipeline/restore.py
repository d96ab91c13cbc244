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
from drd.errors import BackupNotFound, DrdError, IntegrityError, StorageError, UsageError
from drd.layout import DATA_OBJECT, SourceRef
from drd.pipeline.backup import close_stream
from drd.repository.catalog import CatalogEntry, build_catalog
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
) -> AsyncIterator[bytes]:
    """Authenticated plaintext of a backup's data object, read from one region. `meter`, if
    given, accumulates where the time went."""
    meter = meter if meter is not None else StreamMeter()
    pub, body = manifest.public, manifest.body
    where = f"backup {ref}@{pub.backup_id} in region {storage.name}"
    try:
        data_key = crypto.unwrap_data_key(keyring, pub.key_id, body.wrapped_data_key, pub.backup_id)
        opener = Opener(
            data_key,
            backup_id=pub.backup_id,
            key_id=pub.key_id,
            object_name=DATA_OBJECT,
            expect_ciphertext=(body.ciphertext_size, body.ciphertext_digest),
            expect_plaintext=(body.plaintext_size, body.plaintext_digest),
        )
        reader = storage.open_reader(ref.data_key(pub.backup_id))
        try:
            async for chunk in _TimedReads(reader, meter):
                for piece in _metered(meter, functools.partial(opener.feed, chunk)):
                    yield piece
        finally:
            await close_stream(reader)
        for piece in _metered(meter, opener.finish):
            yield piece
        meter.complete = True
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    except StorageError as exc:
        raise type(exc)(f"{where}: {exc}") from None


async def find_backup(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    backup_id: str | None = None,
) -> CatalogEntry:
    """The backup to restore: `backup_id`, or the newest one with a verified manifest.

    The newest backup is never skipped silently: if every copy of it is damaged the restore
    fails and names the older backups, so the operator chooses to lose more data knowingly.
    """
    catalog = await build_catalog(regions, keyring, ref.prefix)
    entries = catalog.for_source(ref)
    unreachable = _region_note(catalog.region_errors)
    if backup_id is not None:
        entries = [e for e in entries if e.backup_id == backup_id]
        if not entries:
            raise BackupNotFound(f"no backup {backup_id} of {ref} in any region{unreachable}")
    verified = [e for e in entries if e.verified]
    if not verified:
        if not entries:
            raise BackupNotFound(f"no backup of {ref} in any region{unreachable}")
        newest = entries[-1]
        assert newest.verify_error is not None
        raise type(newest.verify_error)(f"backup {ref}@{newest.backup_id}: {newest.verify_error}")
    entry = verified[-1]
    if not entry.complete_regions:
        problems = "; ".join(f"{r}: {p}" for r, p in entry.copy_problems().items())
        older = [e.backup_id for e in verified[:-1] if e.complete_regions]
        hint = f"; older intact backups: {', '.join(older[-3:])} (use --backup)" if older else ""
        raise IntegrityError(
            f"backup {ref}@{entry.backup_id}: no intact copy in any region ({problems}){hint}"
            f"{unreachable}"
        )
    return entry


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
) -> RestoreResult:
    """Restore the backup (`backup_id`, default the newest complete one) into `target`.
    `options` are keyword arguments of the kind's restore() (PostgreSQL: create_roles=True);
    UsageError, before any data is read, if that kind's restore does not take one of them."""
    entry = await find_backup(ref, regions, keyring, backup_id)
    by_name = {r.name: r for r in regions}
    order = sorted(entry.complete_regions, key=lambda name: name != prefer_region)
    strategy = get_strategy(entry.public.kind)
    options = dict(options or {})
    accepted = inspect.signature(strategy.restore).parameters
    unknown = sorted(name for name in options if name not in accepted)
    if unknown:
        raise UsageError(
            f"a {entry.public.kind} backup's restore takes no option "
            f"{', '.join('--' + name.replace('_', '-') for name in unknown)}"
        )
    skipped: dict[str, str] = {}
    first_error: DrdError | None = None
    for region in order:
        storage = by_name[region]
        where = f"{region}:{ref.manifest_key(entry.backup_id)}"
        started = time.monotonic()
        try:
            # Each region's own manifest is verified before its data is trusted.
            manifest = Manifest.open(
                keyring, await storage.get(ref.manifest_key(entry.backup_id)), where
            )
            metadata: dict[str, Any] = dict(manifest.body.strategy_metadata)
            outcome = await strategy.restore(
                stream_plaintext(storage, ref, manifest, keyring), target, metadata, **options
            )
        except (IntegrityError, StorageError) as exc:
            log.error("restore %s@%s from %s failed: %s", ref, entry.backup_id, region, exc)
            skipped[region] = str(exc)
            first_error = first_error or exc
            continue
        result = RestoreResult(
            ref, entry.backup_id, region, target, outcome, time.monotonic() - started, skipped
        )
        log.info(
            "restored %s@%s from %s into %s in %.1fs",
            ref,
            entry.backup_id,
            region,
            redact_target(target),
            result.seconds,
        )
        return result
    assert first_error is not None
    detail = "; ".join(f"{r}: {e}" for r, e in skipped.items())
    raise type(first_error)(
        f"restore of {ref}@{entry.backup_id} failed from every region ({detail})"
    )
