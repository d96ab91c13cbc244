"""The byte transforms of the data path: plaintext <-> zstd <-> segmented AEAD, with digests.

These run in worker threads (zstd and AES-GCM release the GIL), one call per chunk, never
concurrently on one instance. Encryption itself is drd.crypto's; this module only chains it.
"""

from __future__ import annotations

from collections.abc import Iterator

import zstandard

from drd import crypto
from drd.digests import ContentDigest, Crc32c
from drd.errors import IntegrityError

COMPRESSION = "zstd"
# Decompressed output is bounded by feeding the decompressor slices of this size and handing
# its output on in pieces of about _PIECE_SIZE: authenticated input cannot be a decompression
# bomb, but a highly compressible dump can still expand many-fold (pgbench's blank-padded rows:
# ~120x, so one 1 MiB segment is ~120 MiB of plaintext; a 16 KiB slice stays near 2 MiB).
_DECOMPRESS_SLICE = 16 * 1024
_PIECE_SIZE = 1024 * 1024


class Sealer:
    """plaintext -> zstd -> encrypted segments, hashing both ends.

    `level` (zstd's) has no default: it is the backup's choice, made and explained once in
    drd.pipeline.backup (ZSTD_LEVEL). A reader needs no level: the data object's plaintext is a
    plain zstd stream (docs/format.md, section 3)."""

    def __init__(
        self,
        data_key: bytes,
        *,
        backup_id: str,
        key_id: str,
        object_name: str,
        segment_size: int,
        level: int,
    ) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self._encryptor = crypto.StreamEncryptor(
            data_key,
            backup_id=backup_id,
            key_id=key_id,
            object_name=object_name,
            segment_size=segment_size,
        )
        self._plain = ContentDigest()
        self._cipher = ContentDigest()
        # What every storage backend reports for the object (drd.digests): compared after
        # the upload, it ties each stored copy to exactly these bytes.
        self._cipher_crc = Crc32c()
        self.plaintext_size = 0
        self.ciphertext_size = 0

    def feed(self, chunk: bytes) -> bytes:
        self._plain.update(chunk)
        self.plaintext_size += len(chunk)
        return self._count(self._encryptor.update(self._compressor.compress(chunk)))

    def finish(self) -> bytes:
        tail = self._encryptor.update(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        return self._count(tail + self._encryptor.finalize())

    def _count(self, out: bytes) -> bytes:
        self._cipher.update(out)
        self._cipher_crc.update(out)
        self.ciphertext_size += len(out)
        return out

    @property
    def plaintext_digest(self) -> str:
        return self._plain.tagged()

    @property
    def ciphertext_digest(self) -> str:
        return self._cipher.tagged()

    @property
    def ciphertext_checksum(self) -> str:
        return self._cipher_crc.checksum()


class Opener:
    """encrypted segments -> zstd -> plaintext, checking sizes and digests at the end.

    Plaintext is only ever released from authenticated segments (the decryptor's promise); the
    final size and digest checks are a second line against a manifest/data mix-up.

    feed() and finish() authenticate and decrypt at once and return an iterator that
    decompresses lazily, in pieces of about 1 MiB, so memory stays bounded however well the
    dump compressed. Exhaust each iterator before the next call. The stream is complete and
    checked only once finish()'s iterator is exhausted without raising IntegrityError.
    """

    def __init__(
        self,
        data_key: bytes,
        *,
        backup_id: str,
        key_id: str,
        object_name: str,
        expect_ciphertext: tuple[int, str],
        expect_plaintext: tuple[int, str],
    ) -> None:
        """`expect_*`: (size, tagged digest) from the manifest; the digests' algorithms say
        how to hash (BLAKE3, or SHA-256 for manifests older than drd 0.2)."""
        self._decryptor = crypto.StreamDecryptor(
            data_key, backup_id=backup_id, key_id=key_id, object_name=object_name
        )
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._expect_ciphertext = expect_ciphertext
        self._expect_plaintext = expect_plaintext
        try:
            self._plain = ContentDigest.like(expect_plaintext[1])
            self._cipher = ContentDigest.like(expect_ciphertext[1])
        except ValueError as exc:
            raise IntegrityError(f"manifest digest: {exc}") from None
        self.plaintext_size = 0
        self.ciphertext_size = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._cipher.update(chunk)
        self.ciphertext_size += len(chunk)
        if self.ciphertext_size > self._expect_ciphertext[0]:
            raise IntegrityError(
                f"data object is longer than the manifest says ({self._expect_ciphertext[0]} bytes)"
            )
        return self._decompress(self._decryptor.update(chunk))

    def finish(self) -> Iterator[bytes]:
        size, digest = self._expect_ciphertext
        if self.ciphertext_size != size:
            raise IntegrityError(f"data object truncated: {self.ciphertext_size} of {size} bytes")
        # Authentication first: its message names the segment that was altered.
        final = self._decryptor.finalize()
        if not self._cipher.matches(digest):
            raise IntegrityError("data object digest does not match the manifest")
        return self._last_pieces(final)

    def _last_pieces(self, final: bytes) -> Iterator[bytes]:
        yield from self._decompress(final)
        if not self._decompressor.eof:
            raise IntegrityError("compressed stream ended early")
        size, digest = self._expect_plaintext
        if self.plaintext_size != size or not self._plain.matches(digest):
            raise IntegrityError("restored plaintext does not match the manifest's digest")

    def _decompress(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        pending: list[bytes] = []
        pending_size = 0
        for i in range(0, len(view), _DECOMPRESS_SLICE):
            try:
                out = self._decompressor.decompress(view[i : i + _DECOMPRESS_SLICE])
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"compressed stream is corrupt: {exc}") from None
            if not out:
                continue
            self._plain.update(out)
            self.plaintext_size += len(out)
            pending.append(out)
            pending_size += len(out)
            if pending_size >= _PIECE_SIZE:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)
