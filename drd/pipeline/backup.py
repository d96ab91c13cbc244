"""Taking one backup: the whole data path in one readable function.

    strategy.dump() --plaintext--> zstd --> AES-256-GCM segments --> every region at once
    then: verify each region's stored object, seal the manifest, write it (last) everywhere.

A backup is complete only when its manifest is committed in at least `min_copies` regions.
Until then nothing is visible to `drd list`; if that bar is missed the copies already written
are removed again, so a failed backup never looks complete and never leaves a manifest behind.
A backup the strategy says is not a faithful image of the source (its metadata's "degraded"
list: a file that kept changing while being read, ...) is committed with status `degraded`
instead of `ok`: restorable, and flagged everywhere it is shown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from drd import __version__, crypto
from drd.clock import Clock, utcnow
from drd.durations import format_size
from drd.errors import NotEnoughCopies, PermanentStorageError
from drd.layout import SourceRef, new_backup_id
from drd.logs import add_log_context
from drd.progress import Progress
from drd.repository.fanout import FanOut
from drd.repository.manifest import (
    DATA_FORMAT,
    STATUS_DEGRADED,
    STATUS_OK,
    Manifest,
    ManifestBody,
    ManifestPublic,
)
from drd.repository.sealing import COMPRESSION, Sealer
from drd.storage.base import Storage
from drd.strategies.base import AnyStrategy

log = logging.getLogger(__name__)

# zstd level 1, not 3: on pg_dump output it compresses about twice as fast (~460 vs ~230 MiB/s
# on one core of the benchmark machine) for ~1% more bytes (ratio 4.08 vs 4.14), and the dump's
# compression is the largest CPU cost of a backup (see bench/README.md).
ZSTD_LEVEL = 1


@dataclass
class RegionCopy:
    region: str
    committed: bool
    error: str = ""


@dataclass
class BackupResult:
    ref: SourceRef
    backup_id: str
    manifest: Manifest
    copies: list[RegionCopy] = field(default_factory=list)

    @property
    def committed_regions(self) -> list[str]:
        return [c.region for c in self.copies if c.committed]

    @property
    def missing(self) -> list[RegionCopy]:
        return [c for c in self.copies if not c.committed]

    @property
    def status(self) -> str:
        """ok, or degraded: complete and restorable, but not a faithful image (`degraded`)."""
        return self.manifest.public.status

    @property
    def degraded(self) -> list[str]:
        return self.manifest.body.degraded


async def run_backup(
    ref: SourceRef,
    strategy: AnyStrategy,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    *,
    min_copies: int,
    segment_size: int = crypto.DEFAULT_SEGMENT_SIZE,
    zstd_level: int = ZSTD_LEVEL,
    clock: Clock = utcnow,
    progress: Progress | None = None,
) -> BackupResult:
    """`progress`, if given, follows the dump's plaintext bytes and the phases: dumping (the
    source read and written to every region at once), verifying (each stored object checked),
    committing (the manifests)."""
    if not 1 <= min_copies <= len(regions):
        raise ValueError(f"min_copies {min_copies} outside 1..{len(regions)}")
    started = clock()
    backup_id = new_backup_id(started)
    where = f"backup {ref}@{backup_id}"
    data_key = crypto.new_data_key()
    kek = keyring.primary
    sealer = Sealer(
        data_key,
        backup_id=backup_id,
        key_id=kek.key_id,
        # Version 2: the header names the object's location, so it cannot pass for another.
        object_name=ref.data_key(backup_id),
        segment_size=segment_size,
        level=zstd_level,
        version=DATA_FORMAT,
    )
    fan = FanOut(regions, ref.data_key(backup_id))
    # For the rest of the job (the caller's log_context, in
    # drd.pipeline.source_backup.backup_source, bounds it).
    add_log_context(plan=ref.plan, source=ref.source, backup_id=backup_id)
    log.info("%s: starting (%d regions, min_copies %d)", where, len(regions), min_copies)
    try:
        await fan.open(metadata={"drd-backup-id": backup_id})
        _require(fan, min_copies, where, "before the upload started")
        dump = strategy.dump()
        if progress is not None:
            progress.phase("dumping")
        try:
            async for chunk in dump:
                await fan.send(await asyncio.to_thread(sealer.feed, chunk))
                _require(fan, min_copies, where, "during the upload")
                if progress is not None:
                    progress.advance(len(chunk))
        finally:
            await close_stream(dump)
        await fan.send(await asyncio.to_thread(sealer.finish))
        if progress is not None:
            progress.phase("verifying")
        await fan.commit()
        for u in fan.uploads:
            # Size and checksum tie each stored object to exactly the bytes this process
            # produced (GCS computes its CRC32C on the server, from what it received).
            if u.info is None:
                continue
            if u.info.size != sealer.ciphertext_size:
                u.error = RuntimeError(
                    f"stored size {u.info.size} != written {sealer.ciphertext_size}"
                )
            elif u.info.checksum and u.info.checksum != sealer.ciphertext_checksum:
                u.error = RuntimeError(
                    f"stored checksum {u.info.checksum} != written {sealer.ciphertext_checksum}"
                )
        # A copy that does not match is never referenced by a manifest: remove it now.
        await _delete_quietly(
            [u.storage for u in fan.uploads if u.info is not None and not u.alive],
            ref.data_key(backup_id),
        )
        _require(fan, min_copies, where, "after the upload")
    except BaseException:
        await fan.abort()
        await _delete_quietly(
            [u.storage for u in fan.uploads if u.info is not None], ref.data_key(backup_id)
        )
        raise

    metadata = {**strategy.restore_metadata(), "host": socket.gethostname()}
    degraded = metadata.get("degraded")
    manifest = Manifest(
        ManifestPublic(
            backup_id=backup_id,
            plan=ref.plan,
            source=ref.source,
            kind=strategy.kind,
            key_id=kek.key_id,
            started_at=started.isoformat(),
            completed_at=clock().isoformat(),
            status=STATUS_DEGRADED if degraded else STATUS_OK,
        ),
        ManifestBody(
            wrapped_data_key=crypto.wrap_data_key(kek, data_key, backup_id),
            segment_size=segment_size,
            compression=COMPRESSION,
            plaintext_size=sealer.plaintext_size,
            plaintext_digest=sealer.plaintext_digest,
            ciphertext_size=sealer.ciphertext_size,
            ciphertext_digest=sealer.ciphertext_digest,
            strategy_metadata=metadata,
            drd_version=__version__,
            data_format=DATA_FORMAT,
        ),
    )
    sealed = manifest.seal(keyring)
    if progress is not None:
        progress.phase("committing")
    good = [u for u in fan.uploads if u.alive and u.info is not None]
    copies = {
        u.storage.name: RegionCopy(u.storage.name, False, u.describe_error()) for u in fan.uploads
    }

    manifest_errors: dict[str, BaseException] = {}

    async def commit_manifest(storage: Storage) -> None:
        try:
            await storage.put(
                ref.manifest_key(backup_id), sealed, metadata={"drd-backup-id": backup_id}
            )
            copies[storage.name].committed = True
        except Exception as exc:
            manifest_errors[storage.name] = exc
            copies[storage.name].error = f"manifest write failed: {exc}"
            log.warning("%s: region %s: manifest write failed: %s", where, storage.name, exc)

    try:
        await asyncio.gather(*(commit_manifest(u.storage) for u in good))
    except BaseException:
        # Cancelled while committing: take back whatever manifests landed, then the data.
        await _rollback(ref, backup_id, [u.storage for u in good])
        raise
    committed = [c for c in copies.values() if c.committed]
    if len(committed) < min_copies:
        await _rollback(ref, backup_id, [u.storage for u in good])
        raise NotEnoughCopies(
            f"{where}: committed in {len(committed)} of {len(regions)} regions, "
            f"min_copies is {min_copies}; " + _reasons(copies.values()),
            transient=_any_transient(manifest_errors.values()),
        )
    result = BackupResult(ref, backup_id, manifest, list(copies.values()))
    log.info(
        "%s: complete: %s -> %s stored, regions %s%s",
        where,
        format_size(sealer.plaintext_size),
        format_size(sealer.ciphertext_size),
        ",".join(result.committed_regions),
        f"; MISSING {_reasons(result.missing)}" if result.missing else "",
    )
    if result.degraded:
        log.warning(
            "%s: the backup is DEGRADED (not a faithful image of the source): %s",
            where,
            "; ".join(result.degraded),
        )
    return result


async def close_stream(stream: AsyncIterator[bytes]) -> None:
    """Stop a strategy's dump early (reaps its child process); a no-op once it is exhausted."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _require(fan: FanOut, min_copies: int, where: str, when: str) -> None:
    alive = fan.alive
    if len(alive) < min_copies:
        failed = [u for u in fan.uploads if not u.alive]
        reasons = "; ".join(f"{u.storage.name}: {u.describe_error()}" for u in failed)
        raise NotEnoughCopies(
            f"{where}: only {len(alive)} of {len(fan.uploads)} regions still writable {when}, "
            f"min_copies is {min_copies}; {reasons}",
            transient=_any_transient(u.error for u in failed),
        )


def _any_transient(errors: Iterable[BaseException | None]) -> bool:
    """Could a retry succeed? Only permanent storage errors say no."""
    return any(not isinstance(e, PermanentStorageError) for e in errors if e is not None)


def _reasons(copies: Iterable[RegionCopy]) -> str:
    return "; ".join(f"{c.region}: {c.error or 'not committed'}" for c in copies if not c.committed)


async def _rollback(ref: SourceRef, backup_id: str, regions: Sequence[Storage]) -> None:
    # Manifest first: once it is gone the backup is invisible, whatever happens to the data.
    await _delete_quietly(regions, ref.manifest_key(backup_id))
    await _delete_quietly(regions, ref.data_key(backup_id))


async def _delete_quietly(regions: Sequence[Storage], key: str) -> None:
    async def one(storage: Storage) -> None:
        try:
            await storage.delete(key)
        except Exception as exc:
            log.warning("region %s: could not delete %s (swept later): %s", storage.name, key, exc)

    await asyncio.shield(asyncio.gather(*(one(s) for s in regions)))
