"""Repair: a complete backup with fewer copies than its plan has regions gets the missing ones.

A region that was down during a backup, or that lost a copy, is given the copy of a healthy
region: the ciphertext as stored (never decrypted or re-encrypted: the copy is the same bytes,
sealed to the same backup id and key id), then the manifest, last, as in a backup. Only then
does the region count as holding the backup.

Verification, in order:
- the healthy region's manifest is verified with the keyring and must be the catalog's backup;
- while streaming, the bytes read are counted and hashed with the manifest's content digest
  (BLAKE3; SHA-256 for manifests written before drd 0.2: drd.digests), and must match the
  manifest's ciphertext size and digest before the copy is committed (a damaged source is
  never copied: the next healthy region is tried);
- the target's commit must report the manifest's size and, as every backend gives one, the
  CRC32C storage checksum of the bytes sent (GCS checks it on upload and computes its own from
  what it received; the memory and local-directory backends compute it while storing);
- the manifest bytes are written unchanged, and a listing of the target's backup prefix must
  show both objects with the right sizes.

Memory stays constant: the data streams chunk by chunk from reader to writer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drd import crypto
from drd.config.models import Plan
from drd.digests import ContentDigest, Crc32c, short
from drd.errors import DrdError, IntegrityError, StorageError
from drd.layout import backup_id_time
from drd.metrics import Metrics
from drd.pipeline.backup import close_stream
from drd.repository.catalog import CatalogEntry, build_catalog
from drd.repository.manifest import Manifest
from drd.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyRepair:
    ref: str
    backup_id: str
    region: str
    #: the region copied from (None when no healthy copy could be read)
    source_region: str | None
    error: str | None = None


@dataclass
class RepairReport:
    plan: str
    repaired: list[CopyRepair] = field(default_factory=list)
    failed: list[CopyRepair] = field(default_factory=list)
    #: plan regions that could not be listed: nothing was copied to them
    unreachable: dict[str, str] = field(default_factory=dict)


class _SourceDamaged(IntegrityError):
    """The healthy region's copy is not what its manifest says."""


async def _copy_data(
    src: Storage, dst: Storage, key: str, size: int, expected: str, backup_id: str
) -> None:
    """Copy `key`, checking it against the manifest's size and tagged digest `expected`."""
    try:
        digest = ContentDigest.like(expected)
    except ValueError as exc:
        raise IntegrityError(f"manifest of {key}: {exc}") from None
    crc, count = Crc32c(), 0
    reader = src.open_reader(key)
    writer = await dst.open_writer(key, metadata={"drd-backup-id": backup_id})
    try:
        async for chunk in reader:
            count += len(chunk)
            if count > size:
                raise _SourceDamaged(f"region {src.name}: {key} is longer than {size} bytes")
            digest.update(chunk)
            crc.update(chunk)
            await writer.write(chunk)
        if count != size or not digest.matches(expected):
            raise _SourceDamaged(
                f"region {src.name}: {key} does not match its manifest "
                f"({count} of {size} bytes, {short(digest.tagged())})"
            )
        info = await writer.commit()
    except BaseException:
        await writer.abort()  # also when cancelled: a half copy never becomes visible
        raise
    finally:
        await close_stream(reader)
    if info.size != size:
        raise StorageError(f"region {dst.name}: stored {info.size} bytes of {key}, sent {size}")
    if info.checksum and info.checksum.startswith("crc32c:") and info.checksum != crc.checksum():
        raise StorageError(f"region {dst.name}: stored checksum of {key} differs from the sent")


async def _copy_backup(
    entry: CatalogEntry, src: Storage, dst: Storage, keyring: crypto.Keyring
) -> None:
    ref, backup_id = entry.ref, entry.backup_id
    assert entry.manifest is not None
    where = f"{src.name}:{ref.manifest_key(backup_id)}"
    raw = await src.get(ref.manifest_key(backup_id))
    manifest = Manifest.open(keyring, raw, where)  # this region's own copy, verified
    if manifest != entry.manifest:
        raise _SourceDamaged(f"{where}: manifest differs from the one verified in the catalog")
    body = manifest.body
    await _copy_data(
        src,
        dst,
        ref.data_key(backup_id),
        body.ciphertext_size,
        body.ciphertext_digest,
        backup_id,
    )
    try:
        # Last, as in a backup: the region holds the backup only once its data is complete.
        await dst.put(ref.manifest_key(backup_id), raw, metadata={"drd-backup-id": backup_id})
        listed = {i.key: i.size for i in await dst.list(ref.backup_prefix(backup_id))}
    except BaseException:
        # Without its manifest the copied data is a leftover: take it back now rather than
        # leave it to the next sweep.
        try:
            await dst.delete(ref.data_key(backup_id))
        except DrdError as exc:
            log.warning("region %s: removing half-repaired %s failed: %s", dst.name, ref, exc)
        raise
    want = {ref.data_key(backup_id): body.ciphertext_size, ref.manifest_key(backup_id): len(raw)}
    if any(listed.get(key) != size for key, size in want.items()):
        raise StorageError(f"region {dst.name}: after the copy the listing shows {listed}")


async def repair(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    metrics: Metrics | None = None,
    now: datetime | None = None,
    destroy_age: timedelta | None = None,
    skip_sources: Collection[str] = (),
) -> RepairReport:
    """Copy every complete backup of `plan` to the plan regions that lack it.

    A backup is complete with a verified manifest and `min_copies` intact copies; anything less
    is not a backup and is not spread further. With `now` and `destroy_age`, backups retention
    is about to destroy are not copied."""
    targets = [regions[name] for name in plan.storage.regions]
    by_name = {r.name: r for r in targets}
    catalog = await build_catalog(targets, keyring, f"{plan.name}/")
    report = RepairReport(plan.name, unreachable=dict(catalog.region_errors))
    for entry in catalog.entries:
        complete = entry.complete_regions
        expiring = (
            now is not None
            and destroy_age is not None
            and now - backup_id_time(entry.backup_id) >= destroy_age
        )
        if (
            expiring
            or entry.ref.source in skip_sources
            or not entry.verified
            or len(complete) < plan.storage.min_copies
        ):
            continue
        missing = [
            r for r in plan.storage.regions if r not in complete and r not in catalog.region_errors
        ]
        for region in missing:
            outcome = await _repair_copy(entry, complete, by_name, region, keyring)
            (report.failed if outcome.error else report.repaired).append(outcome)
            if metrics is not None:
                result = "failure" if outcome.error else "success"
                metrics.copy_repairs.labels(plan.name, region, result).inc()
    return report


async def _repair_copy(
    entry: CatalogEntry,
    complete: list[str],
    by_name: Mapping[str, Storage],
    region: str,
    keyring: crypto.Keyring,
) -> CopyRepair:
    """Copy from the first complete region that works. Any failure moves on to the next one:
    a damaged or unreadable source is the likely cause, and a target that is the cause fails
    the same way from every source."""
    what = f"{entry.ref}@{entry.backup_id}"
    problems = []
    for source in complete:
        try:
            await _copy_backup(entry, by_name[source], by_name[region], keyring)
        except DrdError as exc:
            log.error("repair %s: copying from %s to %s failed: %s", what, source, region, exc)
            problems.append(f"from {source}: {exc}")
            continue
        log.info("repair %s: copied from region %s to region %s", what, source, region)
        return CopyRepair(str(entry.ref), entry.backup_id, region, source)
    return CopyRepair(
        str(entry.ref), entry.backup_id, region, None, "; ".join(problems) or "no healthy copy"
    )
