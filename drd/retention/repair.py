"""Repair: a committed backup with fewer good copies than its plan has regions gets them back.

A region that was down during a backup, that lost a copy or its manifest (a kill -9 between
the manifest writes leaves some regions without one), or whose copy is damaged, is given the
copy of a healthy region: the ciphertext as stored (never decrypted or re-encrypted: the copy
is the same bytes, sealed to the same backup id, key id and location), then the manifest, last,
as in a backup. Any backup with a verified manifest is repaired, whatever min_copies is: a
committed backup that lost copies is still the backup.

Repair never destroys:
- it copies only from a copy that verifies completely: that region's own manifest verified
  with the keyring, bound to its location and equal to the catalog's; the data streamed with
  its size and ciphertext digest checked against the manifest before the copy is committed (a
  damaged source is never copied: the next healthy region is tried). Regions the caller does
  not trust (a rollback, drd.retention.integrity) and copies that disagree are never sources;
- it never overwrites an object: every write is create-only (`if_absent`). What a target
  holds is only ever removed once it is proven not to be this backup's (a manifest that fails
  verification or names another place; data of the wrong size or digest), and damaged data
  only once a source has been read and verified in full;
- it verifies what it wrote: the data object is read back and checked against the manifest's
  size and digest, the manifest read back byte for byte, and the backup's prefix listed.

Memory stays constant: the data streams chunk by chunk from reader to writer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drd import crypto
from drd.config.models import Plan
from drd.digests import Crc32c
from drd.errors import (
    DamagedCopy,
    DrdError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
)
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.pipeline.backup import close_stream
from drd.repository.catalog import CatalogEntry, build_catalog
from drd.repository.copies import DigestCheck, check_data
from drd.repository.heads import HeadMemory
from drd.repository.manifest import Manifest
from drd.retention.integrity import IntegrityFinding, assess, is_future_dated
from drd.storage.base import Storage

log = logging.getLogger(__name__)

#: (source, backup id, region): one region's copy of one backup
CopyKey = tuple[SourceRef, str, str]


@dataclass(frozen=True)
class CopyRepair:
    ref: str
    backup_id: str
    region: str
    #: the region copied from (None when no healthy copy could be read)
    source_region: str | None
    error: str | None = None
    #: "copied" (data and manifest), "manifest" (the data there verified, its manifest was
    #: missing or not this backup's), "replaced" (damaged data removed and copied again)
    action: str = "copied"

    @property
    def key(self) -> CopyKey:
        return (SourceRef.parse(self.ref), self.backup_id, self.region)


@dataclass
class RepairReport:
    plan: str
    repaired: list[CopyRepair] = field(default_factory=list)
    failed: list[CopyRepair] = field(default_factory=list)
    #: plan regions that could not be listed: nothing was copied to them
    unreachable: dict[str, str] = field(default_factory=dict)
    #: copies found damaged while reading them (as a source), with why
    damaged: list[CopyRepair] = field(default_factory=list)
    #: damaged copies replaced from an intact one (or not: `error` says why)
    replaced: list[CopyRepair] = field(default_factory=list)
    #: backups left alone, with why (an integrity finding: copies that disagree, a future id)
    untrusted: dict[str, str] = field(default_factory=dict)
    #: what comparing the regions found (drd.retention.integrity), when it was asked for
    findings: list[IntegrityFinding] = field(default_factory=list)


class _NoSource(DrdError):
    """No region holds a copy that verifies: nothing can be copied."""


async def _exists(storage: Storage, key: str) -> bool:
    try:
        await storage.stat(key)
    except ObjectNotFound:
        return False
    return True


async def _copy_data(src: Storage, dst: Storage, key: str, manifest: Manifest) -> None:
    """Stream `key` from `src` to a create-only writer on `dst`, checking it against the
    manifest's size and digest before committing; then read back what `dst` stored."""
    backup_id = manifest.public.backup_id
    check = DigestCheck(src.name, key, manifest)
    crc = Crc32c()
    if await _exists(dst, key):
        # Real GCS and the other backends refuse at commit too (if_absent); fake-gcs-server
        # does not enforce it on resumable uploads, this look does.
        raise ObjectExists(f"region {dst.name}: {key} exists already")
    reader = src.open_reader(key)
    writer = await dst.open_writer(key, metadata={"drd-backup-id": backup_id}, if_absent=True)
    try:
        async for chunk in reader:
            check.update(chunk)
            crc.update(chunk)
            await writer.write(chunk)
        check.finish()
        info = await writer.commit()
    except BaseException:
        await writer.abort()  # also when cancelled: a half copy never becomes visible
        raise
    finally:
        await close_stream(reader)
    if info.size != check.size:
        raise StorageError(
            f"region {dst.name}: stored {info.size} bytes of {key}, sent {check.size}"
        )
    if info.checksum and info.checksum.startswith("crc32c:") and info.checksum != crc.checksum():
        raise StorageError(f"region {dst.name}: stored checksum of {key} differs from the sent")


@dataclass
class _Target:
    """What repair does to one region's copy of one backup."""

    entry: CatalogEntry
    storage: Storage
    #: the data there is known to be damaged (found by a scrub, or while copying from it)
    damaged: bool = False


class _Repairer:
    def __init__(
        self,
        plan: Plan,
        by_name: Mapping[str, Storage],
        keyring: crypto.Keyring,
        report: RepairReport,
        metrics: Metrics | None,
        distrust: Mapping[SourceRef, Collection[str]],
    ) -> None:
        self.plan = plan
        self.by_name = by_name
        self.keyring = keyring
        self.report = report
        self.metrics = metrics
        self.distrust = distrust
        #: copies found damaged this round
        self.found_damaged: dict[CopyKey, str] = {}

    def sources(self, entry: CatalogEntry, exclude: str) -> list[str]:
        """Regions whose copy may be copied from, in plan order: complete, trusted, not
        known damaged."""
        distrusted = set(self.distrust.get(entry.ref, ())) | set(entry.disagreeing)
        return [
            r
            for r in entry.complete_regions
            if r != exclude
            and r not in distrusted
            and (entry.ref, entry.backup_id, r) not in self.found_damaged
        ]

    async def source_manifest(self, entry: CatalogEntry, region: str) -> bytes:
        """`region`'s own manifest bytes, verified and equal to the catalog's."""
        ref, backup_id = entry.ref, entry.backup_id
        where = f"{region}:{ref.manifest_key(backup_id)}"
        raw = await self.by_name[region].get(ref.manifest_key(backup_id))
        manifest = Manifest.open(self.keyring, raw, where, ref, backup_id)
        if manifest != entry.manifest:
            raise IntegrityError(f"{where}: manifest differs from the one verified in the catalog")
        return raw

    def note_damaged(self, entry: CatalogEntry, exc: DamagedCopy) -> None:
        key = (entry.ref, entry.backup_id, exc.region)
        if key in self.found_damaged:
            return
        self.found_damaged[key] = str(exc)
        self.report.damaged.append(
            CopyRepair(str(entry.ref), entry.backup_id, exc.region, None, str(exc), "damaged")
        )
        if self.metrics is not None:
            self.metrics.copies_damaged.labels(self.plan.name, exc.region).inc()
        log.error("repair %s@%s: %s", entry.ref, entry.backup_id, exc)

    async def verified_source(self, entry: CatalogEntry, exclude: str) -> tuple[str, bytes]:
        """The first source whose manifest verifies and whose data is read and checked in full
        (before anything damaged is removed from a target)."""
        assert entry.manifest is not None
        problems = []
        for region in self.sources(entry, exclude):
            try:
                raw = await self.source_manifest(entry, region)
                await check_data(self.by_name[region], entry.ref, entry.manifest)
            except DamagedCopy as exc:
                self.note_damaged(entry, exc)
                problems.append(f"from {region}: {exc}")
                continue
            except DrdError as exc:
                problems.append(f"from {region}: {exc}")
                continue
            return region, raw
        raise _NoSource("; ".join(problems) or "no intact copy to copy from")

    async def repair(self, target: _Target) -> CopyRepair:
        entry, dst = target.entry, target.storage
        region = dst.name
        what = f"{entry.ref}@{entry.backup_id}"
        try:
            outcome = await self._repair(target)
        except DrdError as exc:
            log.error("repair %s: region %s: %s", what, region, exc)
            return CopyRepair(str(entry.ref), entry.backup_id, region, None, str(exc))
        log.info(
            "repair %s: region %s: %s from region %s",
            what,
            region,
            outcome.action,
            outcome.source_region,
        )
        return outcome

    async def _repair(self, target: _Target) -> CopyRepair:
        entry, dst = target.entry, target.storage
        assert entry.manifest is not None
        ref, backup_id, region = entry.ref, entry.backup_id, dst.name
        mkey, dkey = ref.manifest_key(backup_id), ref.data_key(backup_id)
        want = entry.manifest.body.ciphertext_size
        state = entry.copies.get(region)
        has_manifest = state is not None and state.has_manifest
        data_size = state.data_size if state is not None else None
        if state is not None and state.manifest_unreadable:
            raise StorageError(f"its manifest cannot be read now ({state.manifest_error})")
        manifest_ok = state is not None and state.verified
        need_data = data_size is None or data_size != want or target.damaged
        if not need_data and not manifest_ok:
            # Data of the right size without a usable manifest (lost, or never written): the
            # bytes themselves decide whether only the manifest is missing.
            try:
                await check_data(dst, ref, entry.manifest)
            except DamagedCopy as exc:
                self.note_damaged(entry, exc)
                need_data = True
        source: str | None = None
        raw: bytes | None = None
        if need_data and data_size is not None:
            # Something that is not this backup's data is in the way: remove it only once a
            # source has been read and verified in full.
            source, raw = await self.verified_source(entry, region)
        if has_manifest and not manifest_ok:
            log.warning(
                "repair %s@%s: region %s: removing a manifest that is not this backup's: %s",
                ref,
                backup_id,
                region,
                state.manifest_error if state else "",
            )
            await dst.delete(mkey)
        if need_data and data_size is not None:
            log.warning(
                "repair %s@%s: region %s: removing damaged data (%s bytes, the manifest says %d)",
                ref,
                backup_id,
                region,
                data_size,
                want,
            )
            await dst.delete(dkey)
        if need_data:
            source, raw = await self._copy_from_a_source(entry, dst, source, raw)
        elif raw is None:
            source, raw = await self._any_source_manifest(entry, region)
        assert raw is not None
        if not manifest_ok:
            await self._put_manifest(dst, mkey, raw, backup_id)
        # Verify what was written: the data read back in full, the manifest byte for byte.
        await check_data(dst, ref, entry.manifest)
        if await dst.get(mkey) != raw:
            raise IntegrityError(f"region {region}: the manifest read back differs")
        listed = {i.key: i.size for i in await dst.list(ref.backup_prefix(backup_id))}
        if listed.get(dkey) != want or listed.get(mkey) != len(raw):
            raise StorageError(f"region {region}: after the copy the listing shows {listed}")
        action = "manifest" if not need_data else "replaced" if data_size is not None else "copied"
        return CopyRepair(str(ref), backup_id, region, source, None, action)

    async def _any_source_manifest(self, entry: CatalogEntry, exclude: str) -> tuple[str, bytes]:
        problems = []
        for region in self.sources(entry, exclude):
            try:
                return region, await self.source_manifest(entry, region)
            except DrdError as exc:
                problems.append(f"from {region}: {exc}")
        raise _NoSource("; ".join(problems) or "no verified manifest to copy")

    async def _copy_from_a_source(
        self, entry: CatalogEntry, dst: Storage, first: str | None, first_raw: bytes | None
    ) -> tuple[str, bytes]:
        """Copy the data from the first source that works. Any failure moves on to the next
        one: a damaged or unreadable source is the likely cause, and a target that is the cause
        fails the same way from every source."""
        assert entry.manifest is not None
        dkey = entry.ref.data_key(entry.backup_id)
        order = self.sources(entry, dst.name)
        if first is not None:
            order = [first] + [r for r in order if r != first]
        problems = []
        for region in order:
            try:
                raw = first_raw if region == first and first_raw else None
                raw = raw or await self.source_manifest(entry, region)
                try:
                    await _copy_data(self.by_name[region], dst, dkey, entry.manifest)
                except ObjectExists:
                    # Written meanwhile (another repair): it must be this backup's, intact.
                    await check_data(dst, entry.ref, entry.manifest)
                return region, raw
            except DamagedCopy as exc:
                if exc.region == region:
                    self.note_damaged(entry, exc)
                problems.append(f"from {region}: {exc}")
            except DrdError as exc:
                problems.append(f"from {region}: {exc}")
        raise _NoSource("; ".join(problems) or "no intact copy to copy from")

    @staticmethod
    async def _put_manifest(dst: Storage, key: str, raw: bytes, backup_id: str) -> None:
        """Last, as in a backup: the region holds the backup only once its data is complete."""
        try:
            if await _exists(dst, key):
                raise ObjectExists(f"region {dst.name}: {key} exists already")
            await dst.put(key, raw, metadata={"drd-backup-id": backup_id}, if_absent=True)
        except ObjectExists:
            if await dst.get(key) != raw:
                raise IntegrityError(
                    f"region {dst.name}: another manifest was written under {key} meanwhile"
                ) from None


def _destroy_age(ages: timedelta | Mapping[str, timedelta] | None, region: str) -> timedelta | None:
    if ages is None or isinstance(ages, timedelta):
        return ages
    return ages.get(region)


async def repair(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    metrics: Metrics | None = None,
    now: datetime | None = None,
    destroy_age: timedelta | Mapping[str, timedelta] | None = None,
    skip_sources: Collection[str] = (),
    damaged: Collection[CopyKey] = (),
    distrust: Mapping[SourceRef, Collection[str]] | None = None,
    memory: HeadMemory | None = None,
) -> RepairReport:
    """Give every committed backup of `plan` a good copy in every plan region.

    `damaged`: copies known to be damaged (a scrub found them): replaced. `distrust`: per
    source, regions never copied from. With `now` and `destroy_age` (per region, or one for
    all), a backup retention is about to destroy in a region is not copied there, and one
    dated in the future is not copied at all. With `now` and `memory`, the regions are first
    compared with each other and with drd's records (drd.retention.integrity): a region that
    went back in time is not copied from."""
    targets = [regions[name] for name in plan.storage.regions]
    by_name = {r.name: r for r in targets}
    # Copies a scrub found damaged: every manifest read as the regions hold it now, not as
    # the manifest cache remembers it (drd.repository.manifest_cache).
    catalog = await build_catalog(
        targets, keyring, f"{plan.name}/", **({"cache": None} if damaged else {})
    )
    report = RepairReport(plan.name, unreachable=dict(catalog.region_errors))
    untrusted_sources: dict[SourceRef, set[str]] = {
        ref: set(names) for ref, names in (distrust or {}).items()
    }
    if now is not None and memory is not None:
        assessment = await assess(
            plan,
            catalog,
            targets,
            keyring,
            memory,
            now,
            destroy_age=destroy_age,
            skip_sources=skip_sources,
        )
        report.findings = assessment.findings
        for ref, names in assessment.distrusted().items():
            untrusted_sources.setdefault(ref, set()).update(names)
        if metrics is not None:
            assessment.publish(metrics, list(plan.storage.regions))
    repairer = _Repairer(plan, by_name, keyring, report, metrics, untrusted_sources)
    known_damaged = set(damaged)

    def count(outcome: CopyRepair) -> None:
        if metrics is not None:
            result = "failure" if outcome.error else "success"
            metrics.copy_repairs.labels(plan.name, outcome.region, result).inc()

    def expiring(entry: CatalogEntry, region: str) -> bool:
        age = _destroy_age(destroy_age, region)
        return now is not None and age is not None and now - entry.captured >= age

    work: list[_Target] = []
    for entry in catalog.entries:
        if entry.ref.source in skip_sources or not entry.verified:
            continue
        if entry.disagreeing:
            report.untrusted[f"{entry.ref}@{entry.backup_id}"] = (
                f"regions {', '.join(entry.disagreeing)} hold a verified manifest that differs"
            )
            continue
        if now is not None and is_future_dated(entry.captured, now):
            # Never spread: copied everywhere, it would look like a backup to keep.
            report.untrusted[f"{entry.ref}@{entry.backup_id}"] = (
                f"dated {entry.captured.isoformat()}, in the future"
            )
            continue
        complete = entry.complete_regions
        for name in plan.storage.regions:
            if name in catalog.region_errors or expiring(entry, name):
                continue
            is_damaged = (entry.ref, entry.backup_id, name) in known_damaged
            if name not in complete or is_damaged:
                work.append(_Target(entry, by_name[name], damaged=is_damaged))
    for target in work:
        outcome = await repairer.repair(target)
        (report.failed if outcome.error else report.repaired).append(outcome)
        count(outcome)
    # Sources found damaged while copying from them: replaced now, from a copy that verifies.
    entries = {(e.ref, e.backup_id): e for e in catalog.entries}
    for ref, backup_id, name in list(repairer.found_damaged):
        entry = entries[(ref, backup_id)]
        if name in catalog.region_errors or expiring(entry, name):
            continue
        if any(t.entry is entry and t.storage.name == name for t in work):
            continue  # it was a target already
        outcome = await repairer.repair(_Target(entry, by_name[name], damaged=True))
        report.replaced.append(outcome)
        count(outcome)
    return report
