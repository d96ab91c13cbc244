"""The catalog of backups, rebuilt from storage alone.

The daemon's own disk is never the only record: every question "which backups exist, where,
and are they complete" is answered by listing the regions. A backup id is listed when a
manifest object for it exists in some region, readable or not: the newest backup must never
disappear from the list because its manifest cannot be read or verified right now (the entry
then says why, copy by copy). Data of an id without a manifest in any region is a leftover of
interrupted work (an orphan), never a backup.

Every region's copy of a manifest is read and judged on its own: verified with the keyring,
bound to its location (drd.repository.manifest), and equal to the other regions' verified
copies. One bad copy (forged, sealed with a foreign key, moved from another place, unreadable)
only makes that copy unusable: the entry still has every other region's copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drd import crypto
from drd.errors import DrdError, IntegrityError, KeyringError, StorageError, UnknownKey
from drd.layout import DATA_OBJECT, MANIFEST_OBJECT, SourceRef, backup_id_time, is_backup_id
from drd.repository.manifest import Manifest, ManifestPublic, read_public
from drd.repository.manifest_cache import PROCESS_CACHE, ManifestCache
from drd.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

_MANIFEST_READS = 32  # concurrent manifest reads per catalog build (a GCS region runs 8 at a time)


@dataclass
class CopyState:
    region: str
    has_manifest: bool = False
    data_size: int | None = None
    keys: list[str] = field(default_factory=list)
    #: this region's manifest verified with the keyring, is bound to its location and equals
    #: the entry's manifest
    verified: bool = False
    #: why this region's manifest cannot be used (None: usable, or there is none)
    manifest_error: DrdError | None = None
    #: the manifest object as the listing showed it
    manifest_info: ObjectInfo | None = field(default=None, repr=False, compare=False)

    @property
    def manifest_unreadable(self) -> bool:
        """The manifest could not be read (a storage error): it may be fine."""
        return isinstance(self.manifest_error, StorageError)

    @property
    def manifest_invalid(self) -> bool:
        """The manifest was read and is not this backup's (forged, foreign key, moved, ...)."""
        return self.manifest_error is not None and not self.manifest_unreadable


@dataclass
class CatalogEntry:
    ref: SourceRef
    backup_id: str
    #: from the verified manifest, else from a copy whose public half names this place; None
    #: when no copy could be read at all
    public: ManifestPublic | None
    # Set when a copy of the manifest was verified with the keyring; None otherwise.
    manifest: Manifest | None
    # Why no copy of the manifest could be verified (no key, unknown key id, forged, moved,
    # unreadable): kept as the exception so callers can re-raise it with its own exit code.
    verify_error: DrdError | None = None
    copies: dict[str, CopyState] = field(default_factory=dict)
    #: regions whose manifest verified but differs from the entry's (a key was misused)
    disagreeing: list[str] = field(default_factory=list)

    @property
    def captured(self) -> datetime:
        """The capture time: the verified manifest's, else the one in the backup id."""
        if self.manifest is not None:
            return self.manifest.public.started
        return backup_id_time(self.backup_id)

    @property
    def order(self) -> tuple[datetime, datetime, str]:
        """Where the entry sorts among its source's backups: by the second in its id, then by
        the verified capture time; a backup whose manifest cannot be verified sorts last in
        its second (it may be the newer one: it must never be passed over for an older)."""
        second = backup_id_time(self.backup_id)
        if self.manifest is not None:
            return (second, self.manifest.public.started, self.backup_id)
        return (second, second + timedelta(seconds=1), self.backup_id)

    @property
    def complete_regions(self) -> list[str]:
        """Regions holding a usable manifest and a data object of the manifest's size (with a
        keyring: verified copies only)."""
        want = self.manifest.body.ciphertext_size if self.manifest else None
        return [
            c.region
            for c in self.copies.values()
            if c.has_manifest
            and c.manifest_error is None
            and (c.verified or self.manifest is None)
            and c.data_size is not None
            and (want is None or c.data_size == want)
        ]

    @property
    def verified(self) -> bool:
        return self.manifest is not None

    @property
    def unknown_keys(self) -> list[str]:
        """The key ids this backup was sealed with when every copy's manifest is sealed with a
        key the keyring does not hold (an old key left out after a rotation); else []."""
        if self.manifest is not None:
            return []
        errors = [c.manifest_error for c in self.copies.values() if c.has_manifest]
        if not errors or not all(isinstance(e, UnknownKey) for e in errors):
            return []
        return sorted({e.key_id or "?" for e in errors if isinstance(e, UnknownKey)})

    def copy_problems(self) -> dict[str, str]:
        """Region -> what is wrong with its copy, for every region holding part of it."""
        want = self.manifest.body.ciphertext_size if self.manifest else None
        problems = {}
        for c in self.copies.values():
            if not c.has_manifest:
                problems[c.region] = "no manifest (interrupted or lost copy)"
            elif c.manifest_error is not None:
                problems[c.region] = f"manifest unusable: {c.manifest_error}"
            elif c.data_size is None:
                problems[c.region] = "data object missing"
            elif want is not None and c.data_size < want:
                problems[c.region] = f"data object truncated: {c.data_size} of {want} bytes"
            elif want is not None and c.data_size > want:
                problems[c.region] = (
                    f"data object longer than the manifest says: {c.data_size} > {want} bytes"
                )
        return problems


@dataclass
class Orphan:
    """Objects of a backup id that has no manifest in any region listed: interrupted work."""

    ref: SourceRef
    backup_id: str
    region: str
    keys: list[str]


@dataclass
class Catalog:
    entries: list[CatalogEntry]
    orphans: list[Orphan]
    region_errors: dict[str, str]

    @property
    def unknown_key_entries(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.unknown_keys]

    def for_source(self, ref: SourceRef) -> list[CatalogEntry]:
        return [e for e in self.entries if e.ref == ref]

    def newest_complete(self, ref: SourceRef, min_copies: int = 1) -> CatalogEntry | None:
        complete = [
            e for e in self.for_source(ref) if e.verified and len(e.complete_regions) >= min_copies
        ]
        return complete[-1] if complete else None


def _parse_key(key: str) -> tuple[SourceRef, str, str] | None:
    parts = key.split("/", 3)
    if len(parts) != 4 or not is_backup_id(parts[2]):
        return None
    try:
        ref = SourceRef.parse(f"{parts[0]}/{parts[1]}")
    except ValueError:
        return None
    return ref, parts[2], parts[3]


async def _list_region(storage: Storage, prefix: str) -> list[ObjectInfo]:
    return await storage.list(prefix)


def error_class(errors: Iterable[DrdError]) -> type[DrdError]:
    """The exit code of several copies' failures: an integrity failure is the gravest (the
    storage holds something that is not the backup), then a missing key, then the first
    (storage) error."""
    found = list(errors)
    for kind in (IntegrityError, KeyringError):
        if any(isinstance(e, kind) for e in found):
            return kind
    return type(found[0])


def combined_error(errors: dict[str, DrdError], what: str) -> DrdError:
    """One error for several copies' failures, naming every copy (see error_class). A single
    copy's error is returned as it is."""
    if len(errors) == 1:
        return next(iter(errors.values()))
    detail = "; ".join(f"{region}: {exc}" for region, exc in errors.items())
    return error_class(errors.values())(f"{what} ({detail})")


async def build_catalog(
    regions: Sequence[Storage],
    keyring: crypto.Keyring | None,
    prefix: str = "",
    *,
    cache: ManifestCache | None = PROCESS_CACHE,
) -> Catalog:
    """List `prefix` ("", "plan/" or "plan/source/") in every region and assemble the catalog.

    Manifest copies the listing shows unchanged since they were read are taken from `cache`
    (drd.repository.manifest_cache) and verified as if read; `cache=None` reads every copy
    (the scrub does: it must see what the regions hold now)."""
    listings = await asyncio.gather(
        *(_list_region(r, prefix) for r in regions), return_exceptions=True
    )
    if cache is not None:
        await asyncio.to_thread(cache.read_file)
    region_errors: dict[str, str] = {}
    found: dict[tuple[SourceRef, str], dict[str, CopyState]] = {}
    for storage, listing in zip(regions, listings, strict=True):
        if isinstance(listing, BaseException):
            if not isinstance(listing, Exception):
                raise listing
            region_errors[storage.name] = str(listing) or type(listing).__name__
            log.warning("region %s: listing failed: %s", storage.name, listing)
            continue
        for info in listing:
            parsed = _parse_key(info.key)
            if parsed is None:
                continue
            ref, backup_id, name = parsed
            copies = found.setdefault((ref, backup_id), {})
            state = copies.setdefault(storage.name, CopyState(storage.name))
            state.keys.append(info.key)
            if name == MANIFEST_OBJECT:
                state.has_manifest = True
                state.manifest_info = info
            elif name == DATA_OBJECT:
                state.data_size = info.size

    by_name = {r.name: r for r in regions}
    semaphore = asyncio.Semaphore(_MANIFEST_READS)
    entries: list[CatalogEntry] = []
    orphans: list[Orphan] = []

    async def read_one(copy: CopyState, key: str) -> bytes | DrdError:
        if cache is not None and copy.manifest_info is not None:
            raw = cache.lookup(copy.region, copy.manifest_info)
            if raw is not None:
                return raw
        try:
            async with semaphore:
                return await by_name[copy.region].get(key)
        except DrdError as exc:
            return exc

    async def read_entry(ref: SourceRef, backup_id: str, copies: dict[str, CopyState]) -> None:
        key = ref.manifest_key(backup_id)
        holders = [c for c in copies.values() if c.has_manifest]
        raws = await asyncio.gather(*(read_one(c, key) for c in holders))
        public: ManifestPublic | None = None
        manifest: Manifest | None = None
        manifest_from = ""
        opened: dict[bytes, Manifest] = {}  # identical copies are verified once
        disagreeing: list[str] = []
        for copy, raw in zip(holders, raws, strict=True):
            where = f"{copy.region}:{key}"
            if isinstance(raw, DrdError):
                copy.manifest_error = raw
                continue
            try:
                found_public = read_public(raw, where, ref, backup_id)
            except DrdError as exc:
                found_public = None
                copy.manifest_error = exc
            if keyring is None:
                if found_public is not None and public is None:
                    public = found_public
                continue
            result = opened.get(raw)
            if result is None:
                try:
                    result = opened[raw] = Manifest.open(keyring, raw, where, ref, backup_id)
                except DrdError as exc:
                    # Authentication first: its message says more than the location check's.
                    copy.manifest_error = exc
                    continue
            copy.manifest_error = None
            if cache is not None and copy.manifest_info is not None:
                cache.store(copy.region, copy.manifest_info, raw)  # verified: not read again
            if manifest is None:
                manifest, manifest_from = result, copy.region
                public = result.public
                copy.verified = True
            elif result == manifest:
                copy.verified = True
            else:
                disagreeing.append(copy.region)
                copy.manifest_error = IntegrityError(
                    f"{where}: a verified manifest that differs from region {manifest_from}'s"
                )
        verify_error: DrdError | None = None
        if keyring is None:
            verify_error = KeyringError("not verified: no keyring loaded")
        elif manifest is None:
            errors = {c.region: c.manifest_error for c in holders if c.manifest_error is not None}
            verify_error = combined_error(errors, "no copy of the manifest can be verified")
            # A kept old key left out of the keyring makes every older backup unreadable:
            # those are summed up in one line below instead of one warning each.
            if not (errors and all(isinstance(e, UnknownKey) for e in errors.values())):
                log.warning(
                    "backup %s@%s: no verifiable manifest: %s", ref, backup_id, verify_error
                )
        if disagreeing:
            log.error(
                "backup %s@%s: regions %s hold a verified manifest that differs from region "
                "%s's: one of them was sealed with a stolen or misused key",
                ref,
                backup_id,
                ", ".join(disagreeing),
                manifest_from,
            )
        entries.append(
            CatalogEntry(ref, backup_id, public, manifest, verify_error, copies, disagreeing)
        )

    tasks = []
    for (ref, backup_id), copies in found.items():
        if any(c.has_manifest for c in copies.values()):
            tasks.append(read_entry(ref, backup_id, copies))
        else:
            orphans += [Orphan(ref, backup_id, c.region, c.keys) for c in copies.values()]
    await asyncio.gather(*tasks)
    if cache is not None:
        if not region_errors:  # every region listed: what none of them shows is gone
            cache.keep_only(
                prefix,
                (
                    (c.region, c.manifest_info.key)
                    for cs in found.values()
                    for c in cs.values()
                    if c.manifest_info
                ),
            )
        snapshot = cache.snapshot()  # here, in the loop: builds running at once may change it
        if snapshot is not None:
            await asyncio.to_thread(cache.write, snapshot)
    # Capture time first: ids only have second resolution, two backups in one second must
    # still come out in the order they were taken.
    entries.sort(key=lambda e: (e.ref.plan, e.ref.source, *e.order))
    catalog = Catalog(entries, orphans, region_errors)
    if keyring is not None and catalog.unknown_key_entries:
        log.warning("%s", unknown_key_summary(catalog.unknown_key_entries, keyring.key_ids))
    return catalog


def unknown_key_summary(entries: Sequence[CatalogEntry], holds: Sequence[str]) -> str:
    """One line for every backup sealed with a key the keyring lacks: how many, which keys,
    the oldest and the newest."""
    ids = sorted({k for e in entries for k in e.unknown_keys})
    ordered = sorted(entries, key=lambda e: (backup_id_time(e.backup_id), e.backup_id))
    oldest, newest = ordered[0], ordered[-1]
    span = (
        f"{oldest.ref}@{oldest.backup_id}"
        if len(ordered) == 1
        else f"oldest {oldest.ref}@{oldest.backup_id}, newest {newest.ref}@{newest.backup_id}"
    )
    return (
        f"{len(entries)} backup(s) sealed with key(s) not in the keyring "
        f"({', '.join(ids)}; it holds {', '.join(holds) or 'none'}): {span}; they cannot be "
        "verified or restored until those keys are delivered again (after the current key)"
    )


async def newest_manifest(
    regions: Sequence[Storage], keyring: crypto.Keyring, ref: SourceRef
) -> Manifest | None:
    """The newest verified manifest of `ref` in the first region that has one, reading one
    listing and as few manifests as it takes (a progress estimate wants the last backup's
    size, not the whole catalog). None when no region answers or has one."""
    for storage in regions:
        try:
            listing = await storage.list(ref.prefix)
        except DrdError as exc:
            log.debug("region %s: cannot list %s: %s", storage.name, ref.prefix, exc)
            continue
        ids = sorted(
            parsed[1]
            for parsed in map(_parse_key, (info.key for info in listing))
            if parsed is not None and parsed[0] == ref and parsed[2] == MANIFEST_OBJECT
        )
        for backup_id in reversed(ids):
            key = ref.manifest_key(backup_id)
            try:
                raw = await storage.get(key)
                return Manifest.open(keyring, raw, f"{storage.name}:{key}", ref, backup_id)
            except DrdError as exc:
                log.debug("region %s: manifest %s: %s", storage.name, key, exc)
    return None
