"""The catalog of backups, rebuilt from storage alone.

The daemon's own disk is never the only record: every question "which backups exist, where,
and are they complete" is answered by listing the regions. A backup is listed only when a
manifest for it is committed somewhere; data without a manifest is a leftover of interrupted
work (an orphan), never a backup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from drd import crypto
from drd.errors import DrdError, KeyringError
from drd.layout import DATA_OBJECT, MANIFEST_OBJECT, SourceRef, is_backup_id
from drd.repository.manifest import Manifest, ManifestPublic, read_public
from drd.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

_MANIFEST_READS = 8  # concurrent manifest reads per catalog build


@dataclass
class CopyState:
    region: str
    has_manifest: bool = False
    data_size: int | None = None
    keys: list[str] = field(default_factory=list)


@dataclass
class CatalogEntry:
    ref: SourceRef
    backup_id: str
    public: ManifestPublic
    # Set when the manifest was verified with the keyring; None without a usable key.
    manifest: Manifest | None
    # Why the manifest could not be verified (no key, unknown key id, forged): kept as the
    # exception so callers can re-raise it with its own exit code.
    verify_error: DrdError | None = None
    copies: dict[str, CopyState] = field(default_factory=dict)

    @property
    def complete_regions(self) -> list[str]:
        """Regions holding a committed manifest and a data object of the manifest's size."""
        want = self.manifest.body.ciphertext_size if self.manifest else None
        return [
            c.region
            for c in self.copies.values()
            if c.has_manifest and c.data_size is not None and (want is None or c.data_size == want)
        ]

    @property
    def verified(self) -> bool:
        return self.manifest is not None

    def copy_problems(self) -> dict[str, str]:
        """Region -> what is wrong with its copy, for every region holding part of it."""
        want = self.manifest.body.ciphertext_size if self.manifest else None
        problems = {}
        for c in self.copies.values():
            if not c.has_manifest:
                problems[c.region] = "no manifest (interrupted or lost copy)"
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
    """Objects of a backup id that has no manifest in a region: interrupted work."""

    ref: SourceRef
    backup_id: str
    region: str
    keys: list[str]


@dataclass
class Catalog:
    entries: list[CatalogEntry]
    orphans: list[Orphan]
    region_errors: dict[str, str]

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


async def build_catalog(
    regions: Sequence[Storage], keyring: crypto.Keyring | None, prefix: str = ""
) -> Catalog:
    """List `prefix` ("", "plan/" or "plan/source/") in every region and assemble the catalog."""
    listings = await asyncio.gather(
        *(_list_region(r, prefix) for r in regions), return_exceptions=True
    )
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
            elif name == DATA_OBJECT:
                state.data_size = info.size

    by_name = {r.name: r for r in regions}
    semaphore = asyncio.Semaphore(_MANIFEST_READS)
    entries: list[CatalogEntry] = []
    orphans: list[Orphan] = []

    async def read_entry(ref: SourceRef, backup_id: str, copies: dict[str, CopyState]) -> None:
        holders = [c.region for c in copies.values() if c.has_manifest]
        errors: list[str] = []
        for region in holders:
            where = f"{region}:{ref.manifest_key(backup_id)}"
            try:
                async with semaphore:
                    raw = await by_name[region].get(ref.manifest_key(backup_id))
                public = read_public(raw, where)
            except DrdError as exc:
                errors.append(str(exc))
                continue
            manifest: Manifest | None = None
            verify_error: DrdError | None = None
            if keyring is None:
                verify_error = KeyringError("not verified: no keyring loaded")
            else:
                try:
                    manifest = Manifest.open(keyring, raw, where)
                except DrdError as exc:
                    verify_error = exc
            if verify_error is not None and keyring is not None and region != holders[-1]:
                # A copy that fails verification may be the only bad one: try the next region.
                errors.append(str(verify_error))
                continue
            entries.append(CatalogEntry(ref, backup_id, public, manifest, verify_error, copies))
            return
        if errors:
            log.warning("backup %s@%s: no readable manifest: %s", ref, backup_id, "; ".join(errors))

    tasks = []
    for (ref, backup_id), copies in found.items():
        for state in copies.values():
            if not state.has_manifest:
                orphans.append(Orphan(ref, backup_id, state.region, state.keys))
        if any(c.has_manifest for c in copies.values()):
            tasks.append(read_entry(ref, backup_id, copies))
    await asyncio.gather(*tasks)
    # Capture time first: ids only have second resolution, two backups in one second must
    # still come out in the order they were taken.
    entries.sort(key=lambda e: (e.ref.plan, e.ref.source, e.public.started, e.backup_id))
    return Catalog(entries, orphans, region_errors)
