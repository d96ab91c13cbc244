"""Checking one region's copy of a backup's data object against its verified manifest,
without decrypting: its size and its ciphertext digest (the manifest's `ciphertext_digest`).

This is what scrubbing and repair read copies with. A copy that does not match is damaged
(DamagedCopy, an IntegrityError); a copy that cannot be read right now raises the storage
error (it may be fine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from drd.digests import ContentDigest, short
from drd.errors import DamagedCopy, IntegrityError
from drd.layout import SourceRef
from drd.repository.manifest import Manifest
from drd.storage.base import Storage


class DigestCheck:
    """Counts and hashes a data object's bytes as they stream by (a copy, a scrub)."""

    def __init__(self, region: str, key: str, manifest: Manifest) -> None:
        self.region = region
        self.key = key
        self.size = manifest.body.ciphertext_size
        self.expected = manifest.body.ciphertext_digest
        try:
            self._digest = ContentDigest.like(self.expected)
        except ValueError as exc:
            raise IntegrityError(f"manifest of {key}: {exc}") from None
        self.count = 0

    def update(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.count > self.size:
            raise DamagedCopy(
                f"region {self.region}: {self.key} is longer than the manifest's {self.size} bytes",
                region=self.region,
            )
        self._digest.update(chunk)

    def finish(self) -> None:
        if self.count != self.size or not self._digest.matches(self.expected):
            raise DamagedCopy(
                f"region {self.region}: {self.key} does not match its manifest "
                f"({self.count} of {self.size} bytes, {short(self._digest.tagged())})",
                region=self.region,
            )


async def check_data(storage: Storage, ref: SourceRef, manifest: Manifest) -> int:
    """Read `storage`'s copy of the backup's data object and check it; the bytes read."""
    key = ref.data_key(manifest.public.backup_id)
    check = DigestCheck(storage.name, key, manifest)
    reader: AsyncIterator[bytes] = storage.open_reader(key)
    try:
        async for chunk in reader:
            check.update(chunk)
    finally:
        aclose = getattr(reader, "aclose", None)
        if aclose is not None:
            await aclose()
    check.finish()
    return check.count
