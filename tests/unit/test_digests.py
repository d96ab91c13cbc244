"""drd.digests: tagged content digests and the storage checksum."""

from __future__ import annotations

import hashlib

import blake3
import pytest

from drd.digests import ContentDigest, Crc32c, short, split
from drd.repository.manifest import ManifestBody


def test_blake3_is_the_default_and_streams_like_one_update() -> None:
    streamed = ContentDigest()
    for piece in (b"ab", b"", b"c" * 100_000):
        streamed.update(piece)
    assert streamed.tagged() == "blake3:" + blake3.blake3(b"ab" + b"c" * 100_000).hexdigest()


def test_like_reads_the_algorithm_from_a_tagged_digest() -> None:
    legacy = "sha256:" + hashlib.sha256(b"dump").hexdigest()
    digest = ContentDigest.like(legacy)
    digest.update(b"dump")
    assert digest.algorithm == "sha256" and digest.matches(legacy)
    assert not digest.matches(legacy.replace("sha256:", "blake3:"))


@pytest.mark.parametrize("bad", ["", "abc", "md5:00", "blake3:", ":00", "sha256"])
def test_untagged_or_unknown_digests_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        ContentDigest.like(bad)
    with pytest.raises(ValueError):
        split(bad)


def test_short_keeps_the_algorithm() -> None:
    assert short("blake3:" + "ab" * 32) == "blake3:" + "ab" * 8 + "..."


def test_crc32c_is_the_gcs_encoding() -> None:
    # RFC 3720 B.4: CRC32C of 32 zero bytes is 0x8a9136aa; GCS gives it base64 big-endian.
    assert Crc32c(bytes(32)).checksum() == "crc32c:ipE2qg=="
    streamed = Crc32c()
    streamed.update(bytes(16))
    streamed.update(bytes(16))
    assert streamed.b64() == "ipE2qg=="


def test_a_legacy_manifest_body_maps_sha256_fields_to_tagged_digests() -> None:
    raw = {
        "wrapped_data_key": "k",
        "segment_size": 1,
        "compression": "zstd",
        "plaintext_size": 0,
        "plaintext_sha256": "aa" * 32,
        "ciphertext_size": 0,
        "ciphertext_sha256": "bb" * 32,
    }
    body = ManifestBody.from_dict(raw, "m")
    assert body.plaintext_digest == "sha256:" + "aa" * 32
    assert body.ciphertext_digest == "sha256:" + "bb" * 32
