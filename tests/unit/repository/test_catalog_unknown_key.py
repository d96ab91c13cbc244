"""After a key rotation that left the old key out of the keyring, every older backup is sealed
with a key drd does not hold: the catalog says so in one line (how many, which keys, the oldest
and the newest) instead of one warning per backup, and still lists each one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from drd import crypto
from drd.errors import UnknownKey
from drd.layout import SourceRef
from drd.pipeline.backup import run_backup
from drd.repository.catalog import build_catalog
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import BlobOptions, BlobStrategy

REF = SourceRef("billing", "db")
T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


async def backups(regions: list[MemoryStorage], keyring: crypto.Keyring, n: int) -> list[str]:
    ids = []
    for i in range(n):
        result = await run_backup(
            REF,
            BlobStrategy(BlobOptions(name="db", kind="blob", size=2000, seed=i, chunk=1000)),
            list(regions),
            keyring,
            min_copies=len(regions),
            clock=lambda i=i: T0 + timedelta(hours=i),
        )
        ids.append(result.backup_id)
    return ids


def test_the_keyring_names_the_missing_key() -> None:
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    with pytest.raises(UnknownKey) as info:
        keyring.get("deadbeefdeadbeef")
    assert info.value.key_id == "deadbeefdeadbeef"


async def test_backups_sealed_with_a_missing_key_are_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = crypto.Keyring.parse(crypto.generate_key(), "old")
    new = crypto.Keyring.parse(crypto.generate_key(), "new")
    regions = [MemoryStorage("a"), MemoryStorage("b")]
    sealed_old = await backups(regions, old, 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="drd.repository.catalog"):
        catalog = await build_catalog(regions, new)
    lines = [r.getMessage() for r in caplog.records if r.name == "drd.repository.catalog"]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("5 backup(s) sealed with key(s) not in the keyring")
    assert old.primary.key_id in line and new.primary.key_id in line
    assert f"oldest {REF}@{sealed_old[0]}" in line and f"newest {REF}@{sealed_old[-1]}" in line
    # Every backup is still listed, unverified, with the key it needs.
    assert [e.backup_id for e in catalog.entries] == sealed_old
    assert all(e.unknown_keys == [old.primary.key_id] for e in catalog.entries)


async def test_other_failures_are_still_reported_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = crypto.Keyring.parse(crypto.generate_key(), "k")
    regions = [MemoryStorage("a")]
    (backup_id,) = await backups(regions, key, 1)
    manifest = REF.manifest_key(backup_id)
    raw = bytearray(await regions[0].get(manifest))
    raw[-5] ^= 1  # forged: not a missing key
    await regions[0].put(manifest, bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="drd.repository.catalog"):
        catalog = await build_catalog(regions, key)
    lines = [r.getMessage() for r in caplog.records if r.name == "drd.repository.catalog"]
    assert len(lines) == 1 and backup_id in lines[0] and "not in the keyring" not in lines[0]
    assert catalog.entries[0].unknown_keys == []
