"""Digests of a backup's bytes, written as `<algorithm>:<value>`, and storage checksums.

- Content digests (the manifest's `plaintext_digest` and `ciphertext_digest`): BLAKE3 for
  every new backup. It is a cryptographic hash like SHA-256 but ~10x cheaper per byte on
  one core (SIMD tree hashing), and a backup hashes every dump byte and every stored byte:
  with SHA-256 these two digests were a fifth of a backup's CPU (bench/README.md).
  Manifests written before drd 0.2 carry `sha256` digests and are still verified.
- Storage checksums (`ObjectInfo.checksum`): CRC32C, `crc32c:<base64 big-endian>`, the form
  GCS reports, so every backend's checksum can be compared with one computed while streaming.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Protocol

import blake3
import google_crc32c

CONTENT_ALGORITHM = "blake3"
_CONTENT_ALGORITHMS = ("blake3", "sha256")


class _Hash(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


class ContentDigest:
    """A streaming content digest; `tagged()` gives `<algorithm>:<hex>`."""

    def __init__(self, algorithm: str = CONTENT_ALGORITHM) -> None:
        if algorithm == "blake3":
            self._hash: _Hash = blake3.blake3()
        elif algorithm == "sha256":
            self._hash = hashlib.sha256()
        else:
            raise ValueError(
                f"unknown digest algorithm {algorithm!r} (known: {', '.join(_CONTENT_ALGORITHMS)})"
            )
        self.algorithm = algorithm

    @classmethod
    def like(cls, tagged: str) -> ContentDigest:
        """A new digest of the algorithm `tagged` was computed with."""
        return cls(split(tagged)[0])

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def tagged(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def matches(self, tagged: str) -> bool:
        return hmac.compare_digest(self.tagged(), tagged)


def split(tagged: str) -> tuple[str, str]:
    """(`algorithm`, `value`) of `<algorithm>:<value>`; ValueError if it is not one."""
    algorithm, sep, value = tagged.partition(":")
    if not sep or algorithm not in _CONTENT_ALGORITHMS or not value:
        raise ValueError(f"not a tagged digest: {tagged[:80]!r}")
    return algorithm, value


def short(tagged: str) -> str:
    """For messages: the algorithm and the first 16 hex digits."""
    algorithm, _, value = tagged.partition(":")
    return f"{algorithm}:{value[:16]}..."


class Crc32c:
    """CRC32C as GCS computes it (google_crc32c is typed but unannotated: the ignores live
    here, once)."""

    def __init__(self, data: bytes = b"") -> None:
        self._checksum = google_crc32c.Checksum(data)  # type: ignore[no-untyped-call]

    def update(self, data: bytes) -> None:
        self._checksum.update(data)  # type: ignore[no-untyped-call]

    def b64(self) -> str:
        """The encoding GCS uses in object resources and X-Goog-Hash."""
        digest = self._checksum.digest()  # type: ignore[no-untyped-call]
        return base64.b64encode(digest).decode("ascii")

    def checksum(self) -> str:
        """As `ObjectInfo.checksum`."""
        return "crc32c:" + self.b64()
