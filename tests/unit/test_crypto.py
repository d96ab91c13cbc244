"""drd.crypto: streaming AEAD, key wrapping, sealed manifests, keyrings, and the format spec.

The known-answer tests at the end check the code byte for byte against frozen vectors, and
decrypt those vectors (and fresh output) with `Spec`, a minimal second implementation written
from docs/format.md only, so that the spec and the code cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from drd import crypto
from drd.crypto import (
    DEFAULT_SEGMENT_SIZE,
    Key,
    Keyring,
    StreamDecryptor,
    StreamEncryptor,
    ciphertext_size,
    generate_key,
    header_size,
    new_data_key,
    open_manifest,
    read_manifest_public,
    seal_manifest,
    unwrap_data_key,
    wrap_data_key,
)
from drd.errors import DrdError, IntegrityError, KeyringError

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "format_v1.json").read_text(encoding="utf-8")
)
VECTORS_V2 = json.loads(
    (Path(__file__).parent.parent / "vectors" / "format_v2.json").read_text(encoding="utf-8")
)
#: every frozen stream, with the data object version it was written in
STREAMS = [dict(v, version=v.get("version", 1)) for v in VECTORS["streams"]] + VECTORS_V2["streams"]

BACKUP = "20261128T134700Z-9f2c1a0b"
OTHER_BACKUP = "20261129T010203Z-00c0ffee"
OBJECT = "data.drd"
KEY_ID = "fa9a15b3147140fe"


# ----------------------------------------------------------------------------------- helpers


def encrypt(
    plaintext: bytes,
    data_key: bytes,
    *,
    segment_size: int = 16,
    chunk: int | None = None,
    backup_id: str = BACKUP,
    key_id: str = KEY_ID,
    object_name: str = OBJECT,
) -> bytes:
    enc = StreamEncryptor(
        data_key,
        backup_id=backup_id,
        key_id=key_id,
        object_name=object_name,
        segment_size=segment_size,
    )
    step = chunk or max(1, len(plaintext))
    parts = [enc.update(plaintext[i : i + step]) for i in range(0, len(plaintext), step)]
    parts.append(enc.finalize())
    return b"".join(parts)


def decrypt(
    ciphertext: bytes,
    data_key: bytes,
    *,
    chunk: int | None = None,
    backup_id: str = BACKUP,
    key_id: str = KEY_ID,
    object_name: str = OBJECT,
    released: list[bytes] | None = None,
) -> bytes:
    """Decrypt in `chunk`-sized writes; plaintext released so far is appended to `released`."""
    out = [] if released is None else released
    dec = StreamDecryptor(data_key, backup_id=backup_id, key_id=key_id, object_name=object_name)
    step = chunk or max(1, len(ciphertext))
    for i in range(0, len(ciphertext), step):
        out.append(dec.update(ciphertext[i : i + step]))
    out.append(dec.finalize())
    return b"".join(out)


def hsize(backup_id: str = BACKUP, key_id: str = KEY_ID, object_name: str = OBJECT) -> int:
    return header_size(backup_id=backup_id, key_id=key_id, object_name=object_name)


def segments(ciphertext: bytes, segment_size: int) -> tuple[bytes, list[bytes]]:
    """Split a data object into its header and its segments (test-side bookkeeping)."""
    h = hsize()
    unit = segment_size + crypto.TAG_SIZE
    body = ciphertext[h:]
    return ciphertext[:h], [body[i : i + unit] for i in range(0, len(body), unit)]


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    buf = bytearray(data)
    buf[index] ^= mask
    return bytes(buf)


@pytest.fixture
def data_key() -> bytes:
    return new_data_key()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.parse(generate_key(), "test")


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("segment_size", [1, 7, 16])
@pytest.mark.parametrize("kind", ["0", "1", "seg-1", "seg", "seg+1", "2seg", "3seg+5"])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_round_trip_sizes(data_key: bytes, segment_size: int, kind: str, chunk: int | None) -> None:
    seg = segment_size
    size = {
        "0": 0,
        "1": 1,
        "seg-1": seg - 1,
        "seg": seg,
        "seg+1": seg + 1,
        "2seg": 2 * seg,
        "3seg+5": 3 * seg + 5,
    }[kind]
    plaintext = os.urandom(size)
    ct = encrypt(plaintext, data_key, segment_size=seg, chunk=chunk)
    assert len(ct) == ciphertext_size(size, seg, hsize())
    assert decrypt(ct, data_key, chunk=chunk) == plaintext
    assert decrypt(ct, data_key, chunk=3) == plaintext


def test_round_trip_default_segment_size_large_unaligned_writes(data_key: bytes) -> None:
    plaintext = os.urandom(3 * DEFAULT_SEGMENT_SIZE + 12345)
    ct = encrypt(plaintext, data_key, segment_size=DEFAULT_SEGMENT_SIZE, chunk=300_001)
    assert len(ct) == ciphertext_size(len(plaintext), DEFAULT_SEGMENT_SIZE, hsize())
    assert decrypt(ct, data_key, chunk=777_777) == plaintext
    assert decrypt(ct, data_key) == plaintext  # one big write


def test_accepts_bytearray_and_memoryview(data_key: bytes) -> None:
    plaintext = os.urandom(100)
    enc = StreamEncryptor(
        data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT, segment_size=16
    )
    source = bytearray(plaintext)
    ct = enc.update(memoryview(source)[:50]) + enc.update(source[50:]) + enc.finalize()
    source.extend(b"x")  # the encryptor must not keep the caller's buffer exported
    dec = StreamDecryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    assert dec.update(memoryview(ct)) + dec.finalize() == plaintext


def test_header_comes_first_and_segments_are_emitted_whole(data_key: bytes) -> None:
    enc = StreamEncryptor(
        data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT, segment_size=16
    )
    assert enc.header_size == hsize()
    first = enc.update(b"abc")
    assert first[:4] == crypto.MAGIC and len(first) == hsize()  # header only, data buffered
    assert enc.update(b"x" * 13) == b""  # exactly one segment: might still be the final one
    assert len(enc.update(b"y")) == 16 + 16  # now segment 0 is known not to be final
    assert len(enc.finalize()) == 1 + 16


def test_finalize_alone_emits_header_and_empty_final_segment(data_key: bytes) -> None:
    enc = StreamEncryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    ct = enc.finalize()
    assert len(ct) == hsize() + 16 == ciphertext_size(0, DEFAULT_SEGMENT_SIZE, hsize())
    assert decrypt(ct, data_key) == b""


def test_same_plaintext_encrypts_differently(data_key: bytes) -> None:
    a, b = encrypt(b"same" * 10, data_key), encrypt(b"same" * 10, data_key)
    assert a != b
    assert a[: hsize()] != b[: hsize()]  # fresh salt and nonce prefix per object


def test_decryptor_lags_one_segment_and_releases_only_whole_segments(data_key: bytes) -> None:
    plaintext = bytes(range(64))
    ct = encrypt(plaintext, data_key, segment_size=16)
    dec = StreamDecryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    released = b""
    for i in range(len(ct)):
        out = dec.update(ct[i : i + 1])
        assert len(out) in (0, 16)
        released += out
        assert plaintext.startswith(released)
    assert released == plaintext[:48]  # the last full segment waits for finalize()
    assert dec.finalize() == plaintext[48:]


def test_misuse_is_refused(data_key: bytes) -> None:
    enc = StreamEncryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        enc.finalize()
    dec = StreamDecryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    dec.update(encrypt(b"", data_key))
    dec.finalize()
    with pytest.raises(ValueError):
        dec.finalize()
    with pytest.raises(ValueError):
        StreamEncryptor(b"short", backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    for bad in (0, crypto.MAX_SEGMENT_SIZE + 1):
        with pytest.raises(ValueError):
            StreamEncryptor(
                data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT, segment_size=bad
            )
    with pytest.raises(ValueError):
        StreamDecryptor(b"\0" * 31, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)


def test_ciphertext_size() -> None:
    assert ciphertext_size(0, 16, 100) == 116
    assert ciphertext_size(1, 16, 100) == 117
    assert ciphertext_size(16, 16, 100) == 132
    assert ciphertext_size(17, 16, 100) == 149
    assert ciphertext_size(48, 16, 100) == 100 + 48 + 48


# -------------------------------------------------------------------------------- tampering


def fails(
    ciphertext: bytes,
    data_key: bytes,
    match: str | None = None,
    plaintext: bytes | None = None,
    *,
    chunk: int | None = None,
    backup_id: str = BACKUP,
) -> IntegrityError:
    """Assert decryption fails, and that whatever was released first is a true prefix."""
    released: list[bytes] = []
    with pytest.raises(IntegrityError, match=match) as info:
        decrypt(ciphertext, data_key, chunk=chunk, backup_id=backup_id, released=released)
    if plaintext is not None:
        assert plaintext.startswith(b"".join(released))
    return info.value


def test_bit_flip_anywhere_is_detected(data_key: bytes) -> None:
    plaintext = os.urandom(40)
    ct = encrypt(plaintext, data_key, segment_size=16)  # header + 16 + 16 + final 8
    for i in range(len(ct)):
        for mask in (0x01, 0x80):
            fails(flip(ct, i, mask), data_key, plaintext=plaintext)


def test_bit_flip_in_each_part_names_the_segment(data_key: bytes) -> None:
    ct = encrypt(os.urandom(40), data_key, segment_size=16)
    h = hsize()
    fails(flip(ct, 0), data_key, "bad magic")
    fails(flip(ct, 4), data_key, "unsupported data object format version")
    fails(flip(ct, 20), data_key, "segment 0 failed authentication")  # salt
    fails(flip(ct, h + 3), data_key, "segment 0 failed authentication")  # ciphertext
    fails(flip(ct, h + 32 + 31), data_key, "segment 1 failed authentication")  # tag
    fails(flip(ct, len(ct) - 1), data_key, "segment 2 failed authentication")


def test_plaintext_of_a_bad_segment_is_never_released(data_key: bytes) -> None:
    plaintext = os.urandom(16 * 5)
    ct = encrypt(plaintext, data_key, segment_size=16)
    bad = flip(ct, hsize() + 2 * 32 + 5)
    for chunk in (1, 7, 32, len(bad)):
        released: list[bytes] = []
        with pytest.raises(IntegrityError, match="segment 2 failed authentication"):
            decrypt(bad, data_key, chunk=chunk, released=released)
        assert b"".join(released) == plaintext[: len(b"".join(released))]
        assert len(b"".join(released)) <= 32


def test_truncation_at_every_byte_is_detected(data_key: bytes) -> None:
    plaintext = os.urandom(45)
    ct = encrypt(plaintext, data_key, segment_size=16)
    for cut in range(len(ct)):
        fails(ct[:cut], data_key, plaintext=plaintext)
        fails(ct[:cut], data_key, chunk=1, plaintext=plaintext)


def test_truncation_messages(data_key: bytes) -> None:
    ct = encrypt(os.urandom(48), data_key, segment_size=16)  # 3 full segments, last is final
    h = hsize()
    fails(b"", data_key, "stream truncated: the object is empty")
    fails(ct[:10], data_key, "stream truncated inside the header")
    fails(ct[:h], data_key, "stream truncated: final segment missing")
    fails(ct[: h + 32], data_key, "stream truncated: final segment missing")
    fails(ct[: h + 64], data_key, "stream truncated: final segment missing")
    fails(ct[: h + 64 + 10], data_key, "stream truncated: final segment 2 incomplete")
    fails(ct[: h + 64 + 20], data_key, r"segment 2 failed authentication \(final")


def test_dropping_the_final_segment_at_a_boundary_is_detected(data_key: bytes) -> None:
    for size in (33, 40, 48):  # final segment short, and final segment full
        ct = encrypt(os.urandom(size), data_key, segment_size=16)
        header, segs = segments(ct, 16)
        assert len(segs) == 3
        fails(header + segs[0] + segs[1], data_key, "final segment missing")


def test_reordered_segments_are_detected(data_key: bytes) -> None:
    ct = encrypt(os.urandom(64), data_key, segment_size=16)
    header, s = segments(ct, 16)
    fails(header + s[1] + s[0] + s[2] + s[3], data_key, "segment 0 failed authentication")
    fails(header + s[0] + s[2] + s[1] + s[3], data_key, "segment 1 failed authentication")
    # The final segment moved forward: it is not accepted as an inner one.
    fails(header + s[0] + s[3] + s[1] + s[2], data_key, "segment 1 failed authentication")
    fails(header + s[0] + s[1] + s[3], data_key, "segment 2 failed authentication")


def test_segment_spliced_from_another_stream_is_detected(data_key: bytes) -> None:
    ct = encrypt(os.urandom(48), data_key, segment_size=16)
    same_key = encrypt(os.urandom(48), data_key, segment_size=16)
    other_key = encrypt(os.urandom(48), new_data_key(), segment_size=16)
    header, s = segments(ct, 16)
    for donor in (same_key, other_key):
        _, d = segments(donor, 16)
        fails(header + s[0] + d[1] + s[2], data_key, "segment 1 failed authentication")
        fails(header + s[0] + s[1] + d[2], data_key, "segment 2 failed authentication")
        # A header taken along with the segments does not help either.
        dh, _ = segments(donor, 16)
        fails(dh + s[0] + s[1] + s[2], data_key, "segment 0 failed authentication")


def test_object_swapped_between_backups_is_a_header_mismatch(data_key: bytes) -> None:
    theirs = encrypt(b"other backup", data_key, backup_id=OTHER_BACKUP)
    err = fails(theirs, data_key, "header backup id mismatch")
    assert str(err) == (f"header backup id mismatch: expected {BACKUP!r}, found {OTHER_BACKUP!r}")
    fails(encrypt(b"x", data_key, key_id="0" * 16), data_key, "header key id mismatch")
    fails(encrypt(b"x", data_key, object_name="other.drd"), data_key, "header object name")


def test_header_relabelled_to_another_backup_fails_authentication(data_key: bytes) -> None:
    ct = encrypt(b"secret dump", data_key, backup_id=OTHER_BACKUP)
    assert len(OTHER_BACKUP) == len(BACKUP)
    relabelled = ct.replace(OTHER_BACKUP.encode(), BACKUP.encode(), 1)
    fails(relabelled, data_key, "segment 0 failed authentication")


def test_wrong_data_key_or_expectation(data_key: bytes) -> None:
    ct = encrypt(b"secret dump", data_key)
    fails(ct, new_data_key(), "segment 0 failed authentication.*wrong data key")
    fails(ct, data_key, "backup id mismatch", backup_id=OTHER_BACKUP)


def test_trailing_data_is_detected(data_key: bytes) -> None:
    ct = encrypt(os.urandom(32), data_key, segment_size=16)  # final segment is a full one
    _, s = segments(ct, 16)
    fails(ct + b"x", data_key, "trailing data after final segment 1")
    fails(ct + s[1], data_key, "trailing data after final segment 1")
    short = encrypt(os.urandom(20), data_key, segment_size=16)
    fails(short + b"junk", data_key, "segment 1 failed authentication")


def test_malformed_headers(data_key: bytes) -> None:
    ct = encrypt(b"x", data_key)
    h = hsize()
    too_long = ct[:5] + (h - 7 + 1).to_bytes(2, "big") + ct[7:]
    fails(too_long, data_key, "malformed header")
    too_short = ct[:5] + (10).to_bytes(2, "big") + ct[7:]
    fails(too_short, data_key, "malformed header: too short")
    zero_segment = ct[:7] + (0).to_bytes(4, "big") + ct[11:]
    fails(zero_segment, data_key, "segment size 0 out of range")
    huge_segment = ct[:7] + (1 << 30).to_bytes(4, "big") + ct[11:]
    fails(huge_segment, data_key, "out of range")
    fails(b"PK\x03\x04" + ct[4:], data_key, "bad magic")
    fails(b"D", data_key, "stream truncated inside the header")


def test_decryptor_stays_failed(data_key: bytes) -> None:
    ct = encrypt(os.urandom(64), data_key, segment_size=16)
    bad = flip(ct, hsize() + 1)
    dec = StreamDecryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT)
    with pytest.raises(IntegrityError):
        dec.update(bad)
    with pytest.raises(IntegrityError, match="already failed"):
        dec.update(b"")
    with pytest.raises(IntegrityError, match="already failed"):
        dec.finalize()


# ------------------------------------------------------------------------------ key wrapping


def test_wrap_round_trip(keyring: Keyring, data_key: bytes) -> None:
    wrapped = wrap_data_key(keyring.primary, data_key, BACKUP)
    assert base64.b64decode(wrapped, validate=True)[0] == 1
    assert unwrap_data_key(keyring, keyring.primary.key_id, wrapped, BACKUP) == data_key
    assert wrap_data_key(keyring.primary, data_key, BACKUP) != wrapped  # fresh nonce


def test_wrapped_key_moved_to_another_backup_fails(keyring: Keyring, data_key: bytes) -> None:
    wrapped = wrap_data_key(keyring.primary, data_key, BACKUP)
    with pytest.raises(IntegrityError, match="wrapped data key failed authentication"):
        unwrap_data_key(keyring, keyring.primary.key_id, wrapped, OTHER_BACKUP)


def test_unwrap_with_the_wrong_key(data_key: bytes) -> None:
    a, b = (Keyring.parse(generate_key(), "t").primary for _ in range(2))
    both = Keyring([a, b])
    wrapped = wrap_data_key(a, data_key, BACKUP)
    with pytest.raises(IntegrityError, match="failed authentication"):
        unwrap_data_key(both, b.key_id, wrapped, BACKUP)
    with pytest.raises(KeyringError, match=a.key_id):
        unwrap_data_key(Keyring([b]), a.key_id, wrapped, BACKUP)


def test_unwrap_malformed(keyring: Keyring, data_key: bytes) -> None:
    kid = keyring.primary.key_id
    wrapped = wrap_data_key(keyring.primary, data_key, BACKUP)
    raw = base64.b64decode(wrapped)
    for bad, match in [
        ("not base64!", "not base64"),
        ("ünïcode", "not base64"),
        (base64.b64encode(raw[:-1]).decode(), "wrong size"),
        (base64.b64encode(b"\x02" + raw[1:]).decode(), "version"),
        (base64.b64encode(flip(raw, 30)).decode(), "failed authentication"),
    ]:
        with pytest.raises(IntegrityError, match=match):
            unwrap_data_key(keyring, kid, bad, BACKUP)


# --------------------------------------------------------------------------------- manifests

PUBLIC = {
    "format": "drd-backup-1",
    "backup_id": BACKUP,
    "plan": "prod",
    "source": "orders-db",
    "kind": "postgres",
    "started_at": "2026-11-28T13:47:00+00:00",
    "tags": ["a", "ü"],
    "count": 3,
    "pinned": False,
    "extra": None,
}
BODY = {"wrapped_data_key": "abc", "segment_size": 1 << 20, "ratio": 2.5, "meta": {"k": [1]}}


def sealed(keyring: Keyring, public: dict[str, Any] | None = None) -> bytes:
    pub = dict(PUBLIC if public is None else public, key_id=keyring.primary.key_id)
    return seal_manifest(keyring, pub, BODY)


def edit(raw: bytes, change: Any) -> bytes:
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc).encode()


def test_manifest_round_trip(keyring: Keyring) -> None:
    raw = sealed(keyring)
    public, body = open_manifest(keyring, raw)
    assert public == dict(PUBLIC, key_id=keyring.primary.key_id)
    assert body == BODY


def test_manifest_public_fields_are_readable_without_key(keyring: Keyring) -> None:
    raw = sealed(keyring)
    assert read_manifest_public(raw) == dict(PUBLIC, key_id=keyring.primary.key_id)
    doc = json.loads(raw)
    assert doc["public"]["plan"] == "prod" and doc["key_id"] == keyring.primary.key_id
    assert b"wrapped_data_key" not in raw and b"2.5" not in raw  # the body is encrypted


def test_manifest_survives_reformatting(keyring: Keyring) -> None:
    raw = sealed(keyring)
    doc = json.loads(raw)
    reformatted = json.dumps(dict(reversed(list(doc.items()))), ensure_ascii=True).encode()
    assert open_manifest(keyring, reformatted)[1] == BODY


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["public"].update(plan="staging"),
        lambda d: d["public"].update(started_at="2020-01-01T00:00:00+00:00"),
        lambda d: d["public"].update(pinned=True),
        lambda d: d["public"].update(new_field="x"),
        lambda d: d["public"].pop("source"),
        lambda d: d["public"]["tags"].reverse(),
        lambda d: d.update(comment="added"),
        lambda d: d.update(sealed_body=d["sealed_body"][:-8] + "AAAAAAA="),
        lambda d: d.update(nonce=base64.b64encode(b"\0" * 12).decode()),
    ],
    ids=[
        "plan",
        "time",
        "bool",
        "add-public",
        "drop-public",
        "reorder",
        "add-top",
        "body",
        "nonce",
    ],
)
def test_manifest_alterations_fail_authentication(keyring: Keyring, change: Any) -> None:
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        open_manifest(keyring, edit(sealed(keyring), change))


def test_manifest_bodies_swapped_between_manifests(keyring: Keyring) -> None:
    a = json.loads(sealed(keyring))
    b = json.loads(sealed(keyring, dict(PUBLIC, backup_id=OTHER_BACKUP)))
    for fields in (["sealed_body"], ["sealed_body", "nonce"]):
        forged = dict(a, **{f: b[f] for f in fields})
        with pytest.raises(IntegrityError, match="manifest failed authentication"):
            open_manifest(keyring, json.dumps(forged).encode())


def test_manifest_key_ids(keyring: Keyring) -> None:
    old = keyring.primary
    raw = sealed(keyring)
    new = Keyring.parse(generate_key(), "t").primary
    rotated = Keyring([new, old])
    assert open_manifest(rotated, raw)[1] == BODY  # older keys stay readable
    with pytest.raises(KeyringError, match=old.key_id) as info:
        open_manifest(Keyring([new]), raw)
    assert "not in the keyring" in str(info.value)
    relabelled = edit(raw, lambda d: d.update(key_id=new.key_id))
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        open_manifest(rotated, relabelled)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"public": {}}',
        b'{"drd_manifest": 3, "public": {}, "key_id": "k", "nonce": "", "sealed_body": ""}',
        b'{"drd_manifest": true, "public": {}, "key_id": "k", "nonce": "", "sealed_body": ""}',
        b'{"drd_manifest": 1, "public": [], "key_id": "k", "nonce": "", "sealed_body": ""}',
        b'{"drd_manifest": 1, "public": {"a": NaN}, "key_id": "k", "nonce": "", "sealed_body": ""}',
        b'{"drd_manifest": 1, "public": {}, "public": {}, "key_id": "k", "nonce": "", '
        b'"sealed_body": ""}',
        b"[" * 100_000,
    ],
)
def test_malformed_manifests(keyring: Keyring, raw: bytes) -> None:
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        open_manifest(keyring, raw)
    with pytest.raises(IntegrityError, match="manifest is malformed"):
        read_manifest_public(raw)


def test_manifest_bad_seal_encoding(keyring: Keyring) -> None:
    raw = sealed(keyring)
    for change in (
        lambda d: d.update(nonce="!!"),
        lambda d: d.update(nonce=base64.b64encode(b"\0" * 8).decode()),
        lambda d: d.update(sealed_body="@@@"),
    ):
        with pytest.raises(IntegrityError, match="manifest failed authentication"):
            open_manifest(keyring, edit(raw, change))


def test_seal_manifest_rejects_non_portable_public_fields(keyring: Keyring) -> None:
    for bad in ({"x": 1.5}, {"x": [float("nan")]}, {"ü": 1}, {"x": 1 << 60}, {"x": b"raw"}):
        with pytest.raises(TypeError):
            seal_manifest(keyring, bad, {})
    with pytest.raises(ValueError, match="key_id"):
        seal_manifest(keyring, {"key_id": "0" * 16}, {})


# ----------------------------------------------------------------------------------- keyring


def test_generate_and_parse_key() -> None:
    text = generate_key()
    prefix, key_id, secret = text.split(":")
    assert prefix == "drdk1" and len(key_id) == 16 and len(secret) == 43
    key = Keyring.parse(text, "t").primary
    assert key.key_id == key_id
    assert key == Key.from_secret(key.secret)
    assert generate_key() != text


def test_parse_several_keys_primary_first() -> None:
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    text = f"# rotated 2026-11\n{k1}, {k2}\n\n\t{k3}  # oldest\n"
    ring = Keyring.parse(text, "t")
    ids = [k.split(":")[1] for k in (k1, k2, k3)]
    assert ring.key_ids == tuple(ids)
    assert ring.primary.key_id == ids[0]
    assert ring.get(ids[2]).key_id == ids[2]
    assert ids[1] in ring and "0" * 16 not in ring
    assert len(ring) == 3 and [k.key_id for k in ring] == ids


def mistype(key_string: str, position: int) -> str:
    ch = key_string[position]
    return key_string[:position] + ("B" if ch != "B" else "C") + key_string[position + 1 :]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda k: mistype(k, 30), "key id does not match the secret"),
        (lambda k: mistype(k, 60), "key id does not match the secret"),
        (lambda k: k[:6] + "0123456789abcdef" + k[22:], "key id does not match the secret"),
        (lambda k: k[:6] + k[6:22].upper() + k[22:], "16 lowercase hex digits"),
        (lambda k: k[:-1], "43 base64url characters"),
        (lambda k: k + "A", "43 base64url characters"),
        (lambda k: k[:-5] + "+/+/" + k[-1], "43 base64url characters"),
        (lambda k: "drdk2" + k[5:], "expected drdk1:<key id>:<secret>"),
        (lambda k: k.replace(":", ";"), "expected drdk1:<key id>:<secret>"),
    ],
)
def test_parse_malformed_key_names_position_not_value(bad: Any, reason: str) -> None:
    good = generate_key()
    broken = bad(good)
    with pytest.raises(KeyringError) as info:
        Keyring.parse(f"{generate_key()}\n{good}\n{broken}", "environment variable DRD_KEYS")
    message = str(info.value)
    assert message.startswith("environment variable DRD_KEYS: key #3 is malformed")
    assert reason in message
    assert_no_secret(message, [broken, good])


def test_non_canonical_base64_is_a_typo() -> None:
    secret = bytes(range(32))
    text = crypto._key_string(secret)
    assert text[-1] == "8"  # ...Hh8: the last char carries 2 unused (zero) bits
    with pytest.raises(KeyringError, match="not canonical"):
        Keyring.parse(text[:-1] + "9", "t")


def test_empty_keyrings() -> None:
    for text in ("", "  \n ,, \n", "# only a comment\n"):
        with pytest.raises(KeyringError, match="credential 'drd-keys': no keys found"):
            Keyring.parse(text, "credential 'drd-keys'")
    with pytest.raises(KeyringError, match="empty"):
        Keyring([])


def test_duplicate_key_is_refused() -> None:
    k = generate_key()
    with pytest.raises(KeyringError, match="more than once"):
        Keyring.parse(f"{k},{k}", "t")


def test_key_checks_its_id() -> None:
    secret = os.urandom(32)
    with pytest.raises(KeyringError, match="does not match"):
        Key("0" * 16, secret)
    with pytest.raises(KeyringError, match="32 bytes"):
        Key.from_secret(secret[:16])


def test_keyring_get_unknown_names_the_id(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="'deadbeefdeadbeef' is not in the keyring"):
        keyring.get("deadbeefdeadbeef")


# ---------------------------------------------------------------------------- secret hygiene


def secret_forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1][:24],
    ]


def assert_no_secret(
    text: str, key_strings: Iterable[str] = (), secrets: Iterable[bytes] = ()
) -> None:
    for k in key_strings:
        assert k not in text
        if k.count(":") == 2:
            assert k.split(":")[2] not in text
    for s in secrets:
        for form in secret_forms(s):
            assert form not in text


def test_repr_and_str_do_not_show_secrets() -> None:
    text = generate_key()
    ring = Keyring.parse(text + "\n" + generate_key(), "t")
    key = ring.primary
    for shown in (repr(key), str(key), repr(ring), str(ring), f"{key}", f"{ring!r}"):
        assert key.key_id in shown
        assert_no_secret(shown, [text], [k.secret for k in ring])


def test_no_secret_in_any_error_message(data_key: bytes) -> None:
    text = generate_key()
    ring = Keyring.parse(text, "t")
    key = ring.primary
    other = Keyring.parse(generate_key(), "t")
    wrapped = wrap_data_key(key, data_key, BACKUP)
    ct = encrypt(os.urandom(40), data_key, key_id=key.key_id)
    manifest = seal_manifest(ring, {"backup_id": BACKUP}, {"wrapped_data_key": wrapped})
    attempts: list[Callable[[], object]] = [
        lambda: Keyring.parse(mistype(text, 40), "t"),
        lambda: Keyring.parse(text[:-1], "t"),
        lambda: Keyring.parse(f"{text},{text}", "t"),
        lambda: Key("0" * 16, key.secret),
        lambda: unwrap_data_key(ring, key.key_id, wrapped, OTHER_BACKUP),
        lambda: unwrap_data_key(other, key.key_id, wrapped, BACKUP),
        lambda: decrypt(ct, new_data_key(), key_id=key.key_id),
        lambda: decrypt(ct[:-1], data_key, key_id=key.key_id),
        lambda: decrypt(ct, data_key, backup_id=OTHER_BACKUP, key_id=key.key_id),
        lambda: open_manifest(other, manifest),
        lambda: open_manifest(ring, edit(manifest, lambda d: d["public"].update(x=1))),
        lambda: StreamEncryptor(data_key[:-1], backup_id=BACKUP, key_id="k", object_name="o"),
        lambda: wrap_data_key(key, data_key + b"\0", BACKUP),
    ]
    for attempt in attempts:
        with pytest.raises((DrdError, ValueError)) as info:
            attempt()
        assert_no_secret(str(info.value), [text], [key.secret, data_key])
        assert_no_secret(repr(info.value), [text], [key.secret, data_key])


# ------------------------------------------------------------------ the spec (docs/format.md)


class Spec:
    """A minimal decoder written from docs/format.md alone, using only standard primitives.
    It deliberately shares no code with drd.crypto."""

    @staticmethod
    def hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)

    @staticmethod
    def lp(text: str) -> bytes:
        raw = text.encode("utf-8")
        return len(raw).to_bytes(2, "big") + raw

    @staticmethod
    def parse_key(key_string: str) -> tuple[str, bytes]:
        prefix, key_id, encoded = key_string.split(":")
        assert prefix == "drdk1" and len(encoded) == 43
        secret = base64.urlsafe_b64decode(encoded + "=")
        digest = hmac.new(secret, b"drd key id v1", hashlib.sha256).digest()
        assert digest[:8].hex() == key_id
        return key_id, secret

    @classmethod
    def unwrap(cls, kek: bytes, key_id: str, backup_id: str, wrapped: str) -> bytes:
        raw = base64.b64decode(wrapped)
        assert raw[0] == 0x01 and len(raw) == 61
        aad = b"drd wrap v1" + cls.lp(backup_id) + cls.lp(key_id)
        key = cls.hkdf(kek, None, b"drd wrap v1")
        return AESGCM(key).decrypt(raw[1:13], raw[13:], aad)

    @classmethod
    def open_manifest(
        cls, keks: dict[str, bytes], text: str, location: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        doc = json.loads(text)
        assert doc["drd_manifest"] in (1, 2)
        envelope = {k: v for k, v in doc.items() if k not in ("nonce", "sealed_body")}
        if doc["drd_manifest"] == 2:
            # Section 4: the reader adds where it read the document from.
            assert location is not None and "location" not in doc
            envelope["location"] = location
        aad = json.dumps(
            envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        key = cls.hkdf(keks[doc["key_id"]], None, b"drd manifest v1")
        nonce, sealed_body = base64.b64decode(doc["nonce"]), base64.b64decode(doc["sealed_body"])
        body = json.loads(AESGCM(key).decrypt(nonce, sealed_body, aad))
        return doc["public"], body

    @classmethod
    def parse_header(cls, obj: bytes) -> tuple[bytes, int, bytes, bytes, list[str]]:
        assert obj[0:4] == b"DRDE" and obj[4] in (1, 2)
        header = obj[: 7 + int.from_bytes(obj[5:7], "big")]
        segment_size = int.from_bytes(header[7:11], "big")
        salt, prefix = header[11:43], header[43:50]
        fields, pos = [], 50
        for _ in range(3):
            n = int.from_bytes(header[pos : pos + 2], "big")
            fields.append(header[pos + 2 : pos + 2 + n].decode("utf-8"))
            pos += 2 + n
        assert pos == len(header)
        return header, segment_size, salt, prefix, fields

    @classmethod
    def decrypt_object(
        cls,
        data_key: bytes,
        obj: bytes,
        backup_id: str,
        key_id: str,
        object_name: str,
        version: int = 2,
    ) -> bytes:
        """`version` is what the manifest says (`data_format`); `object_name` the object's
        location in version 2, `data.drd` in version 1."""
        header, segment_size, salt, prefix, fields = cls.parse_header(obj)
        assert header[4] == version
        assert fields == [backup_id, key_id, object_name]
        aead = AESGCM(cls.hkdf(data_key, salt, header))
        rest, chunk, out, i = obj[len(header) :], segment_size + 16, [], 0
        while True:
            final = len(rest) <= chunk
            nonce = prefix + i.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
            out.append(aead.decrypt(nonce, rest[:chunk], header))
            if final:
                return b"".join(out)
            rest, i = rest[chunk:], i + 1

    @classmethod
    def encrypt_object(
        cls,
        data_key: bytes,
        plaintexts: list[bytes],
        segment_size: int,
        fields: tuple[str, str, str],
        finals: list[bool] | None = None,
        version: int = 2,
    ) -> bytes:
        """Encrypt pre-cut segment plaintexts as section 3 says (by default only the last one is
        flagged final)."""
        if finals is None:
            finals = [i == len(plaintexts) - 1 for i in range(len(plaintexts))]
        salt, prefix = os.urandom(32), os.urandom(7)
        rest = segment_size.to_bytes(4, "big") + salt + prefix + b"".join(map(cls.lp, fields))
        header = b"DRDE" + bytes([version]) + len(rest).to_bytes(2, "big") + rest
        aead = AESGCM(cls.hkdf(data_key, salt, header))
        out = [header]
        for i, pt in enumerate(plaintexts):
            flag = b"\x01" if finals[i] else b"\x00"
            out.append(aead.encrypt(prefix + i.to_bytes(4, "big") + flag, pt, header))
        return b"".join(out)


def test_vector_keys() -> None:
    for v in VECTORS["keys"]:
        secret = bytes.fromhex(v["secret_hex"])
        assert Spec.parse_key(v["key_string"]) == (v["key_id"], secret)
        key = Keyring.parse(v["key_string"], "vector").primary
        assert (key.key_id, key.secret) == (v["key_id"], secret)
        assert crypto._key_string(secret) == v["key_string"]


@pytest.mark.parametrize("v", STREAMS, ids=lambda v: f"v{v['version']}: {v['name']}")
def test_vector_streams_byte_for_byte(v: dict[str, Any]) -> None:
    data_key = bytes.fromhex(v["data_key_hex"])
    plaintext = bytes.fromhex(v["plaintext_hex"])
    expected = bytes.fromhex(v["ciphertext_hex"])
    fields = {"backup_id": v["backup_id"], "key_id": v["key_id"], "object_name": v["object_name"]}
    for chunk in (None, 1, 7):
        enc = StreamEncryptor(
            data_key,
            **fields,
            segment_size=v["segment_size"],
            version=v["version"],
            _salt=bytes.fromhex(v["salt_hex"]),
            _nonce_prefix=bytes.fromhex(v["nonce_prefix_hex"]),
        )
        step = chunk or max(1, len(plaintext))
        out = b"".join(enc.update(plaintext[i : i + step]) for i in range(0, len(plaintext), step))
        assert out + enc.finalize() == expected
        dec = StreamDecryptor(data_key, **fields, version=v["version"])
        step = chunk or len(expected)
        opened = [dec.update(expected[i : i + step]) for i in range(0, len(expected), step)]
        assert b"".join(opened) + dec.finalize() == plaintext
    assert ciphertext_size(len(plaintext), v["segment_size"], hsize(**fields)) == len(expected)


@pytest.mark.parametrize("v", STREAMS, ids=lambda v: f"v{v['version']}: {v['name']}")
def test_vector_streams_decrypt_with_the_spec(v: dict[str, Any]) -> None:
    data_key = bytes.fromhex(v["data_key_hex"])
    obj = bytes.fromhex(v["ciphertext_hex"])
    header, segment_size, salt, prefix, _ = Spec.parse_header(obj)
    assert header.hex() == v["header_hex"]
    assert (segment_size, salt.hex(), prefix.hex()) == (
        v["segment_size"],
        v["salt_hex"],
        v["nonce_prefix_hex"],
    )
    assert Spec.hkdf(data_key, salt, header).hex() == v["object_key_hex"]
    plaintext = Spec.decrypt_object(
        data_key, obj, v["backup_id"], v["key_id"], v["object_name"], v["version"]
    )
    assert plaintext.hex() == v["plaintext_hex"]


def test_vector_wrap_and_manifest() -> None:
    (w,) = VECTORS["wraps"]
    (m,) = VECTORS["manifests"]
    kek = Key.from_secret(bytes.fromhex(w["kek_secret_hex"]))
    data_key = bytes.fromhex(w["data_key_hex"])
    nonce = bytes.fromhex(w["nonce_hex"])
    assert wrap_data_key(kek, data_key, w["backup_id"], _nonce=nonce) == w["wrapped"]
    assert Spec.unwrap(kek.secret, w["key_id"], w["backup_id"], w["wrapped"]) == data_key
    assert unwrap_data_key(Keyring([kek]), w["key_id"], w["wrapped"], w["backup_id"]) == data_key

    ring = Keyring([Key.from_secret(bytes.fromhex(s)) for s in m["keyring_secrets_hex"]])
    raw = seal_manifest(ring, m["public"], m["body"], _nonce=bytes.fromhex(m["nonce_hex"]))
    assert raw.decode("utf-8") == m["manifest"]
    assert open_manifest(ring, raw) == (m["public"], m["body"])
    keks = {k.key_id: k.secret for k in ring}
    assert Spec.open_manifest(keks, m["manifest"]) == (m["public"], m["body"])


def test_spec_restores_a_backup_from_vectors_alone() -> None:
    """Section 5 of the spec, end to end: key string -> manifest -> data key -> plaintext."""
    keks = dict(Spec.parse_key(v["key_string"]) for v in VECTORS["keys"])
    (m,) = VECTORS["manifests"]
    public, body = Spec.open_manifest(keks, m["manifest"])
    data_key = Spec.unwrap(
        keks[public["key_id"]], public["key_id"], public["backup_id"], body["wrapped_data_key"]
    )
    stream = VECTORS["streams"][1]
    obj = bytes.fromhex(stream["ciphertext_hex"])
    plaintext = Spec.decrypt_object(
        data_key, obj, public["backup_id"], public["key_id"], "data.drd", version=1
    )
    assert plaintext.hex() == stream["plaintext_hex"]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 48, 100])
def test_spec_decrypts_fresh_output(data_key: bytes, size: int) -> None:
    zstandard = pytest.importorskip("zstandard")
    dump = os.urandom(size // 2) * 2
    compressed = zstandard.ZstdCompressor().compress(dump)  # as the pipeline stores it
    obj = encrypt(compressed, data_key, segment_size=16, chunk=5)
    plaintext = Spec.decrypt_object(data_key, obj, BACKUP, KEY_ID, OBJECT)
    assert zstandard.ZstdDecompressor().decompress(plaintext) == dump


@pytest.mark.parametrize(
    "cut",
    [[b""], [b"abc"], [b"a" * 16], [b"a" * 16, b"b" * 16], [b"a" * 16, b"b" * 3]],
)
def test_code_decrypts_what_the_spec_encrypts(data_key: bytes, cut: list[bytes]) -> None:
    obj = Spec.encrypt_object(data_key, cut, 16, (BACKUP, KEY_ID, OBJECT))
    assert decrypt(obj, data_key) == b"".join(cut)
    assert decrypt(obj, data_key, chunk=1) == b"".join(cut)


def test_empty_final_segment_after_full_ones_is_accepted(data_key: bytes) -> None:
    """drd never writes this shape, but the spec allows it and readers must accept it."""
    cut = [b"a" * 16, b"b" * 16, b""]
    obj = Spec.encrypt_object(data_key, cut, 16, (BACKUP, KEY_ID, OBJECT))
    assert decrypt(obj, data_key, chunk=5) == b"a" * 16 + b"b" * 16
    fails(obj[:-16], data_key, "final segment missing")  # dropping it is still detected


def test_final_flag_before_the_end_is_refused(data_key: bytes) -> None:
    """Two segments both flagged final (a stream glued after a complete one) are refused."""
    obj = Spec.encrypt_object(
        data_key, [b"a" * 16, b"b" * 5], 16, (BACKUP, KEY_ID, OBJECT), finals=[True, True]
    )
    fails(obj, data_key, "trailing data after final segment 0")


# ------------------------------------------------- version 2: every object bound to its location

LOCATION = f"prod/orders-db/{BACKUP}/manifest.json"


def test_vector_manifest_v2_is_bound_to_its_location() -> None:
    (m,) = VECTORS_V2["manifests"]
    ring = Keyring([Key.from_secret(bytes.fromhex(s)) for s in m["keyring_secrets_hex"]])
    raw = seal_manifest(
        ring, m["public"], m["body"], location=m["location"], _nonce=bytes.fromhex(m["nonce_hex"])
    )
    assert raw.decode("utf-8") == m["manifest"]
    assert json.loads(raw)["drd_manifest"] == 2 and "location" not in json.loads(raw)
    assert crypto.open_sealed(ring, raw, location=m["location"]) == (2, m["public"], m["body"])
    keks = {k.key_id: k.secret for k in ring}
    assert Spec.open_manifest(keks, m["manifest"], m["location"]) == (m["public"], m["body"])
    elsewhere = m["location"].replace("orders-db", "other-db")
    with pytest.raises(IntegrityError, match="moved from another location"):
        open_manifest(ring, raw, location=elsewhere)
    with pytest.raises(InvalidTag):
        Spec.open_manifest(keks, m["manifest"], elsewhere)


def test_spec_restores_a_v2_backup_from_vectors_alone() -> None:
    keks = dict(Spec.parse_key(v["key_string"]) for v in VECTORS_V2["keys"])
    (m,) = VECTORS_V2["manifests"]
    public, body = Spec.open_manifest(keks, m["manifest"], m["location"])
    data_key = Spec.unwrap(
        keks[public["key_id"]], public["key_id"], public["backup_id"], body["wrapped_data_key"]
    )
    stream = VECTORS_V2["streams"][1]
    location = f"{public['plan']}/{public['source']}/{public['backup_id']}/data.drd"
    assert stream["object_name"] == location
    obj = bytes.fromhex(stream["ciphertext_hex"])
    assert body["data_format"] == 2 and body["ciphertext_size"] == len(obj)
    plaintext = Spec.decrypt_object(
        data_key, obj, public["backup_id"], public["key_id"], location, body["data_format"]
    )
    assert plaintext.hex() == stream["plaintext_hex"]


def test_manifest_v2_refuses_another_place_a_missing_location_and_a_downgrade(
    keyring: Keyring,
) -> None:
    pub = dict(PUBLIC, key_id=keyring.primary.key_id)
    raw = seal_manifest(keyring, pub, BODY, location=LOCATION)
    assert open_manifest(keyring, raw, location=LOCATION) == (pub, BODY)
    assert read_manifest_public(raw) == pub  # listing without a key still works
    for other in (LOCATION.replace(BACKUP, OTHER_BACKUP), LOCATION.replace("prod/", "staging/")):
        with pytest.raises(IntegrityError, match="moved from another location"):
            open_manifest(keyring, raw, location=other)
    with pytest.raises(IntegrityError, match="needs its location"):
        open_manifest(keyring, raw)
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        open_manifest(keyring, edit(raw, lambda d: d.update(drd_manifest=1)), location=LOCATION)
    with pytest.raises(IntegrityError, match="never names its own location"):
        open_manifest(keyring, edit(raw, lambda d: d.update(location=LOCATION)), location=LOCATION)
    # Version 1 carries no location: it opens wherever it is (callers check its public fields).
    v1 = seal_manifest(keyring, pub, BODY)
    assert json.loads(v1)["drd_manifest"] == 1
    assert crypto.open_sealed(keyring, v1, location="anywhere").version == 1


def test_data_object_v2_names_its_location_and_the_version_must_match(data_key: bytes) -> None:
    location = f"prod/orders-db/{BACKUP}/data.drd"
    plaintext = os.urandom(50)
    v2 = encrypt(plaintext, data_key, object_name=location)
    assert v2[4] == 2 and location.encode() in v2[: hsize(object_name=location)]
    assert decrypt(v2, data_key, object_name=location) == plaintext
    fails_as = [
        (dict(object_name="data.drd"), "header object name mismatch"),
        (dict(object_name=location.replace("orders-db", "files")), "header object name mismatch"),
    ]
    for expect, match in fails_as:
        with pytest.raises(IntegrityError, match=match):
            decrypt(v2, data_key, **expect)
    # A version 1 object where the manifest says version 2 (a downgrade) is refused at once.
    enc = StreamEncryptor(
        data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=location, segment_size=16, version=1
    )
    v1 = enc.update(plaintext) + enc.finalize()
    with pytest.raises(IntegrityError, match="format version 1, its manifest says 2"):
        decrypt(v1, data_key, object_name=location)
    dec = StreamDecryptor(
        data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=location, version=1
    )
    assert dec.update(v1) + dec.finalize() == plaintext
    with pytest.raises(ValueError):
        StreamEncryptor(data_key, backup_id=BACKUP, key_id=KEY_ID, object_name=OBJECT, version=3)
