"""The manifest cache: a catalog build reads only manifests it has not read before, kept in
the state directory across processes; every byte it serves is still verified with the key; a
changed copy is read again; a copy forged to the same size and CRC32C is found by the scrub and
replaced; `cache=None` reads everything."""

from __future__ import annotations

import asyncio
import builtins
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drd import crypto
from drd.digests import Crc32c
from drd.layout import MANIFEST_OBJECT
from drd.repository.catalog import build_catalog
from drd.repository.manifest_cache import CACHE_FILE, PROCESS_CACHE, ManifestCache, keep_in
from drd.retention.scrub import ScrubMemory, scrub_plan
from drd.storage.base import ObjectInfo, Storage
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.unit.verify.test_restore_run import REF, backed_up, make_plan

NOW = datetime(2026, 11, 28, tzinfo=UTC)


class Counting(FaultyStorage):
    """Counts the GETs each key gets; can show a stale listing entry for one key."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.gets: Counter[str] = Counter()
        self.listed_as: dict[str, ObjectInfo] = {}

    async def get(self, key: str) -> bytes:
        self.gets[key] += 1
        return await super().get(key)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return [self.listed_as.get(i.key, i) for i in await super().list(prefix)]

    def manifest_gets(self) -> int:
        return sum(n for key, n in self.gets.items() if key.endswith("/" + MANIFEST_OBJECT))


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


async def counted(keyring: crypto.Keyring, days: tuple[int, ...]) -> dict[str, Counting]:
    regions = await backed_up(keyring, days=days)
    PROCESS_CACHE.clear()  # as in a process that has not read them yet
    return {name: Counting(storage) for name, storage in regions.items()}


async def test_a_second_build_reads_no_manifest_and_a_new_backup_only_its_own(
    keyring: crypto.Keyring,
) -> None:
    regions = await counted(keyring, days=(25, 26, 27))
    storages = list(regions.values())
    first = await build_catalog(storages, keyring)
    assert [r.manifest_gets() for r in storages] == [3, 3]
    second = await build_catalog(storages, keyring)
    assert [r.manifest_gets() for r in storages] == [3, 3]
    assert [e.backup_id for e in second.entries] == [e.backup_id for e in first.entries]
    assert all(e.verified and set(e.complete_regions) == {"r0", "r1"} for e in second.entries)
    assert PROCESS_CACHE.hits == 6

    from drd.pipeline.backup import run_backup
    from tests.support.blob_strategy import BlobStrategy
    from tests.unit.verify.test_restore_run import SOURCE, clock_at

    await run_backup(
        REF,
        BlobStrategy(SOURCE),
        storages,
        keyring,
        min_copies=2,
        segment_size=1024,
        clock=clock_at(28),
    )
    third = await build_catalog(storages, keyring)
    assert len(third.entries) == 4
    assert [r.manifest_gets() for r in storages] == [4, 4]


async def test_a_region_never_read_is_read_itself(keyring: crypto.Keyring) -> None:
    """One region's copy read before says nothing of another region's: a region added to the
    plan later (or given copies by repair) has each of its copies read once."""
    regions = await counted(keyring, days=(26, 27))
    await build_catalog([regions["r0"]], keyring)
    assert regions["r0"].manifest_gets() == 2
    await build_catalog(list(regions.values()), keyring)
    assert [r.manifest_gets() for r in regions.values()] == [2, 2]


async def test_bytes_from_the_cache_are_verified_with_the_key(keyring: crypto.Keyring) -> None:
    regions = await counted(keyring, days=(27,))
    storages = list(regions.values())
    await build_catalog(storages, keyring)
    other = crypto.Keyring.parse(crypto.generate_key(), "other")
    catalog = await build_catalog(storages, other)  # served from the cache, and refused
    (entry,) = catalog.entries
    assert not entry.verified and entry.verify_error is not None
    assert [r.manifest_gets() for r in storages] == [1, 1]


async def test_a_changed_copy_is_read_again(keyring: crypto.Keyring) -> None:
    regions = await counted(keyring, days=(27,))
    storages = list(regions.values())
    (entry,) = (await build_catalog(storages, keyring)).entries
    key = REF.manifest_key(entry.backup_id)
    inner = regions["r0"].inner
    assert isinstance(inner, MemoryStorage)
    raw = bytearray(await inner.get(key))
    raw[-5] ^= 1
    await inner.put(key, bytes(raw))  # a different CRC32C in the listing
    (entry,) = (await build_catalog(storages, keyring)).entries
    assert regions["r0"].manifest_gets() == 2 and regions["r1"].manifest_gets() == 1
    assert entry.copies["r0"].manifest_invalid and entry.copies["r1"].verified


async def test_a_copy_forged_to_the_same_crc_is_found_by_the_scrub_and_replaced(
    keyring: crypto.Keyring, tmp_path: Path
) -> None:
    """The listing (which a hostile region controls) shows the genuine size and CRC32C for a
    manifest whose bytes were replaced: the catalog uses the bytes it verified before, the
    scrub reads the copy itself, calls it damaged and puts the genuine manifest back."""
    regions = await counted(keyring, days=(27,))
    storages = list(regions.values())
    (entry,) = (await build_catalog(storages, keyring)).entries
    key = REF.manifest_key(entry.backup_id)
    genuine = await regions["r0"].inner.get(key)
    stale = next(i for i in await regions["r0"].list() if i.key == key)
    inner = regions["r0"].inner
    forged = bytearray(genuine)
    forged[-5] ^= 1
    await inner.put(key, bytes(forged))
    regions["r0"].listed_as[key] = stale
    (entry,) = (await build_catalog(storages, keyring)).entries
    assert entry.copies["r0"].verified  # what the cache knows
    plan = make_plan(tmp_path)
    report = await scrub_plan(plan, dict(regions), keyring, ScrubMemory(None), now=NOW, period=None)
    assert [(c.region, c.damaged) for c in report.checked if c.damaged] == [("r0", True)]
    assert "the manifest does not verify" in str(
        next(c.problem for c in report.checked if c.damaged)
    )
    assert await inner.get(key) == genuine
    regions["r0"].listed_as.clear()
    (entry,) = (await build_catalog(storages, keyring, cache=None)).entries
    assert entry.copies["r0"].verified


async def test_without_a_cache_every_copy_is_read(keyring: crypto.Keyring) -> None:
    regions = await counted(keyring, days=(26, 27))
    storages = list(regions.values())
    for _ in range(3):
        await build_catalog(storages, keyring, cache=None)
    assert [r.manifest_gets() for r in storages] == [6, 6]


async def test_kept_in_the_state_dir_across_processes(
    keyring: crypto.Keyring, tmp_path: Path
) -> None:
    regions = await counted(keyring, days=(25, 26, 27))
    storages = list(regions.values())
    keep_in(tmp_path)
    await build_catalog(storages, keyring)
    path = tmp_path / CACHE_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    # "the next process": a cache loaded from the file alone
    fresh = ManifestCache.load(tmp_path)
    assert len(fresh) == 6  # three manifests, each read in both regions
    await build_catalog(storages, keyring, cache=fresh)
    assert [r.manifest_gets() for r in storages] == [3, 3]
    # a destroyed backup leaves the cache with it
    entries = (await build_catalog(storages, keyring, cache=fresh)).entries
    for storage in storages:
        for info in await storage.list(f"{REF}/{entries[0].backup_id}/"):
            await storage.delete(info.key)
    await build_catalog(storages, keyring, cache=fresh)
    assert len(ManifestCache.load(tmp_path)) == 4


@pytest.mark.parametrize(
    "content", [b"not json", b'{"format": 99, "manifests": {}}', b'{"format": 1, "manifests": 3}']
)
def test_an_unreadable_cache_file_is_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / CACHE_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert len(ManifestCache.load(tmp_path)) == 0


def test_what_is_kept_must_match_the_listing() -> None:
    cache = ManifestCache()
    raw = b"sealed manifest bytes"
    crc = Crc32c(raw).checksum()
    cache.store("a", ObjectInfo("p/s/id/manifest.json", len(raw), None), raw)  # no identity
    cache.store("a", ObjectInfo("p/s/id/manifest.json", len(raw) + 1, crc), raw)  # not as listed
    assert len(cache) == 0
    info = ObjectInfo("p/s/id/manifest.json", len(raw), crc)
    cache.store("a", info, raw)
    assert cache.lookup("a", info) == raw
    assert cache.lookup("b", info) is None  # another region's copy is read itself
    assert cache.lookup("a", ObjectInfo(info.key, info.size, "crc32c:AAAAAA==")) is None
    cache.keep_only("p/", [("b", info.key)])
    assert cache.lookup("a", info) is None


async def test_builds_at_once_leave_a_whole_cache_file(
    keyring: crypto.Keyring, tmp_path: Path
) -> None:
    """The daemon's loops build catalogs at the same time: each save writes its own temporary
    file, one at a time, so the file is always one whole snapshot."""
    regions = await counted(keyring, days=(24, 25, 26, 27))
    storages = list(regions.values())
    keep_in(tmp_path)
    await asyncio.gather(*(build_catalog(storages, keyring) for _ in range(6)))
    assert len(ManifestCache.load(tmp_path)) == 8
    assert [p.name for p in (tmp_path / CACHE_FILE).parent.iterdir()] == ["manifests.json"]


async def test_the_file_is_read_at_the_first_build_not_at_start(
    keyring: crypto.Keyring, tmp_path: Path
) -> None:
    """keep_in only names the file: a command that builds no catalog reads none of it; the
    first build merges it in and reads no manifest the file holds."""
    regions = await counted(keyring, days=(26, 27))
    storages = list(regions.values())
    warm = ManifestCache(tmp_path / CACHE_FILE)
    await build_catalog(storages, keyring, cache=warm)
    assert (tmp_path / CACHE_FILE).is_file()
    before = [r.manifest_gets() for r in storages]
    keep_in(tmp_path)
    assert len(PROCESS_CACHE) == 0
    await build_catalog(storages, keyring)
    assert len(PROCESS_CACHE) == 4
    assert [r.manifest_gets() for r in storages] == before
