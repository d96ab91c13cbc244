"""The data path (backup -> regions -> catalog -> restore) on in-memory regions."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import UTC, datetime

import blake3
import pytest

from drd import crypto
from drd.digests import Crc32c
from drd.errors import IntegrityError, KeyringError, NotEnoughCopies, TransientStorageError
from drd.layout import SourceRef
from drd.pipeline.backup import run_backup
from drd.pipeline.restore import restore_backup
from drd.repository.catalog import build_catalog
from drd.repository.manifest import Manifest
from drd.repository.manifest_cache import PROCESS_CACHE
from drd.storage.base import ObjectInfo, ObjectWriter
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import RESTORED, BlobOptions, BlobStrategy, blob_bytes

REF = SourceRef("billing", "db")
SEG = 1024


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def regions(n: int = 2) -> list[MemoryStorage]:
    return [MemoryStorage(f"r{i}", chunk_size=1000) for i in range(n)]


def strategy(size: int, seed: int = 0) -> BlobStrategy:
    return BlobStrategy(BlobOptions(name="db", kind="blob", size=size, seed=seed, chunk=3000))


def clock_at(*args: int):  # type: ignore[no-untyped-def]
    return lambda: datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, 10 * SEG + 17, 300_000])
async def test_round_trip_two_regions(blob_strategy, keyring, size: int) -> None:
    rs = regions()
    result = await run_backup(REF, strategy(size), rs, keyring, min_copies=2, segment_size=SEG)
    assert result.committed_regions == ["r0", "r1"]
    catalog = await build_catalog(rs, keyring)
    (entry,) = catalog.entries
    assert entry.backup_id == result.backup_id and entry.verified
    assert sorted(entry.complete_regions) == ["r0", "r1"]
    for i, region in enumerate(["r0", "r1"]):
        out = await restore_backup(REF, rs, keyring, f"t{i}", prefer_region=region)
        assert out.region == region
        assert RESTORED[f"t{i}"] == blob_bytes(size)


async def test_no_plaintext_reaches_storage(blob_strategy, keyring) -> None:
    rs = regions()
    await run_backup(REF, strategy(200_000), rs, keyring, min_copies=2, segment_size=SEG)
    needle = "customer Zürich".encode()
    for r in rs:
        for info in await r.list():
            data = await r.get(info.key)
            assert needle not in data
            assert keyring.primary.secret not in data


async def test_region_down_with_min_copies_one_reports_the_missing_copy(blob_strategy, keyring):
    good, bad = regions()
    faulty = FaultyStorage(bad)
    faulty.fail("open_writer", TransientStorageError("region r1 is down"))
    result = await run_backup(
        REF, strategy(50_000), [good, faulty], keyring, min_copies=1, segment_size=SEG
    )
    assert result.committed_regions == ["r0"]
    assert [c.region for c in result.missing] == ["r1"]
    assert "down" in result.missing[0].error
    assert await bad.list() == []


async def test_region_failing_mid_upload_with_min_copies_two_fails_and_leaves_nothing(
    blob_strategy, keyring
):
    good, bad = regions()
    faulty = FaultyStorage(bad)
    faulty.fail_writer_after(2_000, TransientStorageError("connection reset"))
    with pytest.raises(NotEnoughCopies, match=r"min_copies is 2.*r1.*connection reset"):
        await run_backup(
            REF, strategy(200_000), [good, faulty], keyring, min_copies=2, segment_size=SEG
        )
    assert await good.list() == [] and await bad.list() == []
    assert (await build_catalog([good, bad], keyring)).entries == []


async def test_manifest_write_failure_below_min_copies_rolls_back(blob_strategy, keyring):
    good, bad = regions()
    faulty = FaultyStorage(bad)
    faulty.fail("put", TransientStorageError("503"), match="billing/db/")
    with pytest.raises(NotEnoughCopies):
        await run_backup(
            REF, strategy(10_000), [good, faulty], keyring, min_copies=2, segment_size=SEG
        )
    assert await good.list() == [] and await bad.list() == []


async def test_source_failure_commits_nothing(blob_strategy, keyring) -> None:
    rs = regions()
    s = strategy(100_000)
    s.fail_after = 30_000
    with pytest.raises(Exception, match="failed on purpose"):
        await run_backup(REF, s, rs, keyring, min_copies=1, segment_size=SEG)
    for r in rs:
        assert await r.list() == []


async def test_newest_complete_and_explicit_backup_id(blob_strategy, keyring) -> None:
    rs = regions()
    first = await run_backup(
        REF,
        strategy(5000, seed=1),
        rs,
        keyring,
        min_copies=2,
        clock=clock_at(2026, 11, 1, 10),
        segment_size=SEG,
    )
    await run_backup(
        REF,
        strategy(5000, seed=2),
        rs,
        keyring,
        min_copies=2,
        clock=clock_at(2026, 11, 2, 10),
        segment_size=SEG,
    )
    await restore_backup(REF, rs, keyring, "newest")
    assert RESTORED["newest"] == blob_bytes(5000, seed=2)
    await restore_backup(REF, rs, keyring, "older", backup_id=first.backup_id)
    assert RESTORED["older"] == blob_bytes(5000, seed=1)


async def _backup(rs, keyring, size=60_000, seed=0):  # type: ignore[no-untyped-def]
    return await run_backup(
        REF, strategy(size, seed), rs, keyring, min_copies=len(rs), segment_size=SEG
    )


async def _corrupt(region: MemoryStorage, key: str, mutate) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(await region.get(key))
    await region.put(key, bytes(mutate(data)))


def _flip(data: bytearray) -> bytearray:
    data[len(data) // 2] ^= 0x01
    return data


@pytest.mark.parametrize(
    ("mutate", "cause"),
    [
        (_flip, "failed authentication"),
        (lambda d: d[: len(d) - 100], "truncated"),
        (lambda d: d[: 40 + 2 * (SEG + 16)], "truncated"),
        (lambda d: d + b"x", "longer than the manifest"),
    ],
    ids=["bitflip", "truncate-mid", "truncate-at-segment", "appended"],
)
async def test_tampered_data_is_refused_in_every_region(blob_strategy, keyring, mutate, cause):
    rs = regions()
    result = await _backup(rs, keyring)
    for r in rs:
        await _corrupt(r, REF.data_key(result.backup_id), mutate)
    with pytest.raises(IntegrityError) as err:
        await restore_backup(REF, rs, keyring, "target")
    message = str(err.value)
    assert result.backup_id in message and cause in message
    assert "r0" in message and "r1" in message
    assert "target" not in RESTORED


async def test_segment_swap_is_refused(blob_strategy, keyring) -> None:
    rs = regions(1)
    result = await _backup(rs, keyring)
    key = REF.data_key(result.backup_id)
    data = bytearray(await rs[0].get(key))
    header = len(data) - (await _segments_len(data))
    seg = SEG + 16
    a, b = data[header : header + seg], data[header + seg : header + 2 * seg]
    data[header : header + seg], data[header + seg : header + 2 * seg] = b, a
    await rs[0].put(key, bytes(data))
    with pytest.raises(IntegrityError, match="segment 0 failed authentication"):
        await restore_backup(REF, rs, keyring, "target")


async def _segments_len(data: bytearray) -> int:
    # header length: 4 magic + 1 version + 2 length + rest (see docs/format.md)
    rest = int.from_bytes(data[5:7], "big")
    return len(data) - (7 + rest)


async def test_object_swap_between_backups_is_refused(blob_strategy, keyring) -> None:
    rs = regions(1)
    one = await _backup(rs, keyring, seed=1)
    two = await _backup(rs, keyring, seed=2)
    other = await rs[0].get(REF.data_key(two.backup_id))
    await rs[0].put(REF.data_key(one.backup_id), other)
    with pytest.raises(IntegrityError, match=one.backup_id):
        await restore_backup(REF, rs, keyring, "target", backup_id=one.backup_id)
    assert "target" not in RESTORED


async def test_forged_manifest_is_refused(blob_strategy, keyring) -> None:
    rs = regions(1)
    result = await _backup(rs, keyring)
    key = REF.manifest_key(result.backup_id)
    forged = (await rs[0].get(key)).replace(b'"plan": "billing"', b'"plan": "billinh"')
    forged = forged.replace(b'"plan":"billing"', b'"plan":"billinh"')
    assert forged != await rs[0].get(key)
    await rs[0].put(key, forged)
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        await restore_backup(REF, rs, keyring, "target", backup_id=result.backup_id)
    # An attacker's own manifest, sealed with their own key, is refused too.
    attacker = crypto.Keyring.parse(crypto.generate_key(), "attacker")
    rs2 = regions(1)
    evil = await _backup(rs2, attacker)
    await rs[0].put(
        REF.manifest_key(evil.backup_id), await rs2[0].get(REF.manifest_key(evil.backup_id))
    )
    await rs[0].put(REF.data_key(evil.backup_id), await rs2[0].get(REF.data_key(evil.backup_id)))
    with pytest.raises(KeyringError, match=attacker.primary.key_id):
        await restore_backup(REF, rs, keyring, "target", backup_id=evil.backup_id)


async def test_one_bad_copy_falls_back_to_the_good_region(blob_strategy, keyring) -> None:
    rs = regions()
    result = await _backup(rs, keyring)
    await _corrupt(rs[0], REF.data_key(result.backup_id), _flip)
    out = await restore_backup(REF, rs, keyring, "target")
    assert out.region == "r1" and "r0" in out.skipped
    assert "failed authentication" in out.skipped["r0"]
    assert RESTORED["target"] == blob_bytes(60_000)


async def test_wrong_key_is_refused_with_the_key_id(blob_strategy, keyring) -> None:
    rs = regions(1)
    await _backup(rs, keyring)
    other = crypto.Keyring.parse(crypto.generate_key(), "other")
    with pytest.raises(Exception, match=keyring.primary.key_id):
        await restore_backup(REF, rs, other, "target")
    assert "target" not in RESTORED


async def test_rotated_key_still_reads_old_backups(blob_strategy, keyring) -> None:
    rs = regions(1)
    await _backup(rs, keyring)
    new = crypto.generate_key()
    old_line = next(iter(keyring))
    rotated = crypto.Keyring([crypto.Keyring.parse(new, "n").primary, old_line])
    await restore_backup(REF, rs, rotated, "target")
    assert RESTORED["target"] == blob_bytes(60_000)


# -- digests: BLAKE3 in new manifests, SHA-256 manifests (drd < 0.2) still verified ------------


async def test_manifest_digests_are_blake3_of_the_dump_and_the_stored_object(
    blob_strategy, keyring
) -> None:
    rs = regions()
    result = await _backup(rs, keyring)
    body = result.manifest.body
    assert body.plaintext_digest == "blake3:" + blake3.blake3(blob_bytes(60_000)).hexdigest()
    for region in rs:
        stored = await region.get(REF.data_key(result.backup_id))
        assert body.ciphertext_digest == "blake3:" + blake3.blake3(stored).hexdigest()
        info = await region.stat(REF.data_key(result.backup_id))
        assert info.checksum == Crc32c(stored).checksum()


async def _rewrite_as_legacy(
    region: MemoryStorage, keyring: crypto.Keyring, backup_id: str, plaintext: bytes
) -> None:
    """Re-seal the backup's manifest as drd 0.1 wrote it: `*_sha256` digests, no algorithm."""
    key = REF.manifest_key(backup_id)
    manifest = Manifest.open(keyring, await region.get(key), key, REF, backup_id)
    body = asdict(manifest.body)
    del body["plaintext_digest"], body["ciphertext_digest"]
    body["plaintext_sha256"] = hashlib.sha256(plaintext).hexdigest()
    body["ciphertext_sha256"] = hashlib.sha256(
        await region.get(REF.data_key(backup_id))
    ).hexdigest()
    await region.put(key, crypto.seal_manifest(keyring, asdict(manifest.public), body))


async def test_a_legacy_sha256_manifest_still_restores(blob_strategy, keyring) -> None:
    rs = regions(1)
    result = await _backup(rs, keyring)
    await _rewrite_as_legacy(rs[0], keyring, result.backup_id, blob_bytes(60_000))
    (entry,) = (await build_catalog(rs, keyring)).entries
    assert entry.manifest is not None
    assert entry.manifest.body.plaintext_digest.startswith("sha256:")
    await restore_backup(REF, rs, keyring, "target")
    assert RESTORED["target"] == blob_bytes(60_000)


async def test_a_legacy_sha256_digest_that_does_not_match_is_refused(blob_strategy, keyring):
    rs = regions(1)
    result = await _backup(rs, keyring)
    # The digest of other bytes: everything authenticates, only the final check can catch it.
    await _rewrite_as_legacy(rs[0], keyring, result.backup_id, blob_bytes(60_000, seed=1))
    with pytest.raises(IntegrityError, match="does not match the manifest's digest"):
        await restore_backup(REF, rs, keyring, "target")


class _CorruptingWriter(ObjectWriter):
    """Stores one byte altered, with a correct checksum of what it stored: silent corruption
    between this process and the disk, which only a comparison with the sent bytes catches."""

    def __init__(self, inner: ObjectWriter) -> None:
        self._inner = inner
        self._first = True

    async def write(self, data: bytes) -> None:
        if self._first and data:
            data = bytes([data[0] ^ 1]) + data[1:]
            self._first = False
        await self._inner.write(data)

    async def commit(self) -> ObjectInfo:
        return await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


class _CorruptingStorage(MemoryStorage):
    async def open_writer(self, key, metadata=None):  # type: ignore[no-untyped-def]
        return _CorruptingWriter(await super().open_writer(key, metadata))


async def test_a_copy_stored_with_other_bytes_is_not_counted_and_removed(blob_strategy, keyring):
    good, bad = MemoryStorage("r0", chunk_size=1000), _CorruptingStorage("r1", chunk_size=1000)
    result = await run_backup(
        REF, strategy(60_000), [good, bad], keyring, min_copies=1, segment_size=SEG
    )
    assert result.committed_regions == ["r0"]
    assert "stored checksum" in result.missing[0].error
    assert await bad.list() == []
    with pytest.raises(NotEnoughCopies, match="stored checksum"):
        await run_backup(REF, strategy(60_000), [good, bad], keyring, min_copies=2)
    assert await bad.list() == []


async def test_a_restore_option_the_kind_does_not_take_is_a_usage_error(
    blob_strategy, keyring
) -> None:
    """`drd restore --create-roles` of a backup whose kind has no such option stops before any
    data is read, naming the flag."""
    from drd.errors import UsageError

    rs = regions(1)
    await _backup(rs, keyring)
    with pytest.raises(UsageError, match="takes no option --create-roles"):
        await restore_backup(REF, rs, keyring, "target", options={"create_roles": True})


# -- issue 13, must-hold 1: a manifest is bound to where it is stored -------------------------


async def test_a_backup_copied_to_another_place_is_refused_as_that_copys_error(
    blob_strategy, keyring
) -> None:
    rs = regions()
    result = await _backup(rs, keyring)
    other = SourceRef("billing", "files")
    for key in (REF.data_key(result.backup_id), REF.manifest_key(result.backup_id)):
        await rs[0].put(key.replace("billing/db/", "billing/files/"), await rs[0].get(key))
    catalog = await build_catalog(rs, keyring)
    moved = next(e for e in catalog.entries if e.ref == other)
    assert not moved.verified and moved.complete_regions == []
    assert "moved from another location" in moved.copy_problems()["r0"]
    with pytest.raises(IntegrityError, match="moved from another location"):
        await restore_backup(other, rs, keyring, "target", backup_id=result.backup_id)
    assert "target" not in RESTORED
    # The original is untouched and restores from either region.
    assert (await restore_backup(REF, rs, keyring, "target")).backup_id == result.backup_id


# -- issue 13, must-hold 3: one bad region cannot stop a restore ------------------------------


async def test_any_failure_of_one_copy_moves_on_to_the_next_region(blob_strategy, keyring):
    r0, r1 = regions()
    faulty = FaultyStorage(r0)
    result = await _backup([faulty, r1], keyring)
    data_key = REF.data_key(result.backup_id)
    # A transient fault reading the data, mid-stream: region r1 is used.
    faulty.fail_reader_after(2000, TransientStorageError("503 after the retry deadline"))
    out = await restore_backup(REF, [faulty, r1], keyring, "t1")
    assert out.region == "r1" and "503 after the retry deadline" in out.skipped["r0"]
    assert RESTORED["t1"] == blob_bytes(60_000)
    # The manifest unreadable in r0: the catalog says so, r1 restores.
    faulty.clear()
    faulty.fail("get", TransientStorageError("manifest read timed out"), match=REF.prefix)
    PROCESS_CACHE.clear()  # a process that has not read these manifests before
    out = await restore_backup(REF, [faulty, r1], keyring, "t2")
    assert out.region == "r1" and "manifest read timed out" in out.unusable["r0"]
    # Both copies failing: every copy is named, the gravest cause gives the exit code.
    faulty.clear()
    faulty.fail_reader_after(10, TransientStorageError("connection reset"))
    await _corrupt(r1, data_key, _flip)
    with pytest.raises(IntegrityError) as err:
        await restore_backup(REF, [faulty, r1], keyring, "t3")
    assert "r0: " in str(err.value) and "connection reset" in str(err.value)
    assert "r1: " in str(err.value) and "failed authentication" in str(err.value)
    assert "t3" not in RESTORED


async def test_an_unverifiable_backup_in_the_same_second_is_never_passed_over(
    blob_strategy, keyring
) -> None:
    """Ids have second resolution: a newer backup whose manifest cannot be verified, taken in
    the same second as an older verified one, must not sort before it."""
    rs = regions()
    old = await _backup(rs, keyring, seed=1)
    new = await run_backup(
        REF,
        strategy(60_000, seed=2),
        rs,
        keyring,
        min_copies=2,
        segment_size=SEG,
        clock=lambda: old.manifest.public.started,
    )
    pair = {old.backup_id, new.backup_id}
    for r in rs:
        key = REF.manifest_key(new.backup_id)
        await r.put(key, (await r.get(key)).replace(b'"kind": "blob"', b'"kind": "blub"'))
    entries = (await build_catalog(rs, keyring)).entries
    assert {e.backup_id for e in entries} == pair and entries[-1].backup_id == new.backup_id
    with pytest.raises(IntegrityError, match=f"newest backup billing/db@{new.backup_id}"):
        await restore_backup(REF, rs, keyring, "target")
    assert "target" not in RESTORED
