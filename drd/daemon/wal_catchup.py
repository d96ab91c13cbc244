"""Bringing every region of a plan up to the WAL archive the others hold, and reading the
archive's state (newest archived WAL, gaps) from the listings.

- A WAL segment or history file some region holds and another plan region (reachable now)
  does not is copied there: the stored bytes as they are (a WAL object is bound to its key,
  the same in every region), after they were opened and verified with the keyring, written
  create-only, never over anything. A region that was down gets what it missed this way,
  also what already left the spool. Never WAL that retention destroyed in that region
  (`cuts`: the newest segment it cut there, recorded by drd.retention.sweep): retention cuts
  each region's archive at its own age and oldest kept base backup
  (drd.retention.wal_retention), and that must not come back from a region that keeps WAL
  longer; a region that only missed WAL (down, or added later) gets all of it.
- Partial segments a region no longer needs (its completed segment is there, or a newer
  partial of it is) are deleted there: a partial is shipped every `partial_every`, and only the
  newest is ever used.
- A gap is a segment missing in every region while later WAL is held
  (drd.repository.wal.follow); they are counted per source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drd import crypto
from drd.errors import IntegrityError, StorageError
from drd.layout import SourceRef
from drd.repository.wal import WalArchive, WalFile, WalKey, follow, list_archive, open_object
from drd.storage.base import Storage
from drd.strategies.postgres_wal import parse_segment_name

log = logging.getLogger(__name__)


@dataclass
class CatchUp:
    archive: WalArchive
    #: region -> keys copied there
    copied: dict[str, list[str]] = field(default_factory=dict)
    #: region -> why a copy failed
    failed: dict[str, str] = field(default_factory=dict)
    deleted: int = 0
    gaps: list[str] = field(default_factory=list)
    #: the newest WAL object held in min_copies regions
    newest: WalKey | None = None


def count_gaps(archive: WalArchive, segment_size: int) -> list[str]:
    """The first missing segment of every gap, over every system in the archive."""
    gaps: list[str] = []
    for system_id, files in archive.systems.items():
        held = sorted(
            {
                parse_segment_name(f.name[:24], segment_size)
                for f in files.values()
                if f.kind != "history"
            },
            key=lambda s: (s.segno, s.timeline),
        )
        if not held:
            continue
        start = held[0]
        while True:
            chain = follow(archive, system_id, start, segment_size)
            if chain.gap is None or not chain.after_gap:
                break
            gaps.append(chain.gap.name(segment_size))
            later = [s for s in held if s.segno > chain.gap.segno]
            if not later:
                break
            start = later[0]
    return gaps


def _position(key: WalKey) -> tuple[str, str, bool, datetime]:
    return (key.name[8:24], key.name[:8], key.kind == "segment", key.through)


def newest_archived(archive: WalArchive, min_copies: int) -> WalKey | None:
    """The WAL object furthest in the WAL (then the newest) that min_copies regions hold."""
    best: WalKey | None = None
    for files in archive.systems.values():
        for f in files.values():
            if f.kind == "history":
                continue
            for key in {k.key: k for keys in f.copies.values() for k in keys}.values():
                if len(f.regions_with(key.key)) >= min_copies and (
                    best is None or _position(key) > _position(best)
                ):
                    best = key
    return best


async def catch_up(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    *,
    min_copies: int,
    segment_size: int | None,
    cuts: Mapping[str, Mapping[str, str]] | None = None,
) -> CatchUp:
    """One pass over the source's archive in every region (module docstring). `cuts`: system
    id -> region -> the newest segment retention destroyed there."""
    archive = await list_archive(regions, ref)
    out = CatchUp(archive)
    by_name = {r.name: r for r in regions}
    reachable = [r.name for r in regions if r.name not in archive.region_errors]
    for system, files in archive.systems.items():
        floors = (cuts or {}).get(system, {})
        for f in list(files.values()):
            if f.kind == "partial":
                continue
            missing = [r for r in reachable if r not in f.copies and _above(f, floors.get(r))]
            if not missing:
                continue
            key = min((k for keys in f.copies.values() for k in keys), key=lambda k: k.key)
            raw = await _verified(by_name, keyring, key, f.regions_with(key.key))
            if raw is None:
                continue  # no intact copy anywhere: nothing to spread (fetch says so)
            for region in missing:
                try:
                    await by_name[region].put(key.key, raw, {"drd-wal": f.name}, if_absent=True)
                except Exception as exc:  # one region's failure leaves the others to do
                    out.failed[region] = str(exc) or type(exc).__name__
                    continue
                out.copied.setdefault(region, []).append(key.key)
                archive.add(region, key)
    out.deleted = await _drop_superseded_partials(archive, by_name, reachable)
    if segment_size is not None:
        out.gaps = count_gaps(archive, segment_size)
    out.newest = newest_archived(archive, min_copies)
    return out


def _above(f: WalFile, cut: str | None) -> bool:
    """Whether `f` lies after what retention cut in a region (its newest destroyed segment)."""
    if cut is None:
        return True
    if f.kind == "history":
        return f.name[:8] >= cut[:8]  # a timeline's history: needed from that timeline on
    return f.name > cut


async def _verified(
    by_name: dict[str, Storage], keyring: crypto.Keyring, key: WalKey, holders: list[str]
) -> bytes | None:
    for region in holders:
        try:
            raw = await by_name[region].get(key.key)
            await asyncio.to_thread(open_object, keyring, raw, key, f"region {region}: {key.key}")
        except (IntegrityError, StorageError) as exc:
            log.error("WAL %s in region %s cannot be copied from: %s", key.key, region, exc)
            continue
        return raw
    return None


async def _drop_superseded_partials(
    archive: WalArchive, by_name: dict[str, Storage], reachable: list[str]
) -> int:
    deleted = 0
    for files in archive.systems.values():
        for f in list(files.values()):
            if f.kind != "partial":
                continue
            complete = files.get(f.name[:24])
            for region, keys in list(f.copies.items()):
                if region not in reachable:
                    continue
                done = complete is not None and region in complete.copies
                newest = max(keys, key=lambda k: k.through)
                drop = keys if done else [k for k in keys if k is not newest]
                for key in drop:
                    try:
                        await by_name[region].delete(key.key)
                    except Exception as exc:  # the next pass tries again
                        log.warning(
                            "region %s: superseded WAL %s not deleted: %s", region, key.key, exc
                        )
                        continue
                    deleted += 1
                    keys.remove(key)
                if not keys:
                    del f.copies[region]
            if not f.copies:
                del files[f.name]
    return deleted


def describe(result: CatchUp) -> str:
    parts = [f"{len(v)} copied to {r}" for r, v in result.copied.items()]
    if result.deleted:
        parts.append(f"{result.deleted} superseded partial(s) deleted")
    return ", ".join(parts)
