"""Every cipher drd uses lives here, and only here. docs/format.md is the byte-exact spec.

- Keys: a keyring of 256-bit key-encryption keys (KEKs), the first one primary. A key's id is
  derived from its secret, so a mistyped key string is caught at start-up, not at restore time.
- Data objects: a fresh random 256-bit data key per backup; the (zstd-compressed) dump is
  encrypted as a STREAM of AES-256-GCM segments (the construction of Tink's streaming AEAD and of
  Hoang-Reyhanitabar-Rogaway-Vizar "Online AE"): the per-object key is derived from the data key
  and the whole header, every nonce carries the segment index and a final-segment flag. Any
  truncation, reordering, splicing or bit flip fails authentication.
- The data key is wrapped (AES-256-GCM) under a KEK, bound to its backup id and key id.
- Manifests: public fields in clear (listing and retention need no key) but authenticated as the
  associated data of the sealed body.
- Version 2 binds every object to its location: a data object's header names its full key, and
  a manifest's associated data includes the key it is stored under (given by the reader, never
  taken from the document), so an object copied to another place fails authentication.

Every AEAD key is used for one purpose only: the KEK itself never keys a cipher; the wrapping and
manifest keys are derived from it by HKDF with distinct labels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from drd.errors import IntegrityError, KeyringError, UnknownKey

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MANIFEST_VERSION",
    "MAX_SEGMENT_SIZE",
    "Key",
    "Keyring",
    "Opened",
    "StreamDecryptor",
    "StreamEncryptor",
    "ciphertext_size",
    "generate_key",
    "header_size",
    "new_data_key",
    "open_manifest",
    "open_sealed",
    "read_manifest_public",
    "seal_manifest",
    "unwrap_data_key",
    "wrap_data_key",
]

BytesLike = bytes | bytearray | memoryview

KEY_SIZE: Final = 32  # every key (KEK, data key, derived keys) is AES-256
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 12
SALT_SIZE: Final = 32
NONCE_PREFIX_SIZE: Final = 7

DEFAULT_SEGMENT_SIZE: Final = 1 << 20
# The decryptor buffers one segment, and the segment size comes from the (not yet authenticated)
# header: the cap keeps a hostile header from making it allocate without bound.
MAX_SEGMENT_SIZE: Final = 1 << 26
# The index is a 32-bit field of the nonce; beyond that nonces would repeat.
MAX_SEGMENTS: Final = 1 << 32

MAGIC: Final = b"DRDE"
#: the data object version written now; version 1 (object name `data.drd`) stays readable
FORMAT_VERSION: Final = 2
DATA_FORMAT_VERSIONS: Final = (1, 2)
#: the manifest version written when the writer names the location; 1 stays readable
MANIFEST_VERSION: Final = 2
MANIFEST_VERSIONS: Final = (1, 2)

_PREAMBLE = struct.Struct(">4sBH")  # magic, version, length of the rest of the header
_SEGMENT_SIZE = struct.Struct(">I")
_LENGTH = struct.Struct(">H")
_NONCE_TAIL = struct.Struct(">IB")  # segment index, final flag
_HEADER_FIXED = _SEGMENT_SIZE.size + SALT_SIZE + NONCE_PREFIX_SIZE

_KEY_PREFIX = "drdk1"
_KEY_ID_LABEL = b"drd key id v1"
_WRAP_LABEL = b"drd wrap v1"
_WRAP_VERSION = 1
_WRAPPED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_MANIFEST_LABEL = b"drd manifest v1"
# Top-level manifest fields that are not part of the associated data (they carry the seal).
_SEAL_FIELDS = ("nonce", "sealed_body")
# Version 2: the member of the associated data that holds the object's location. It is supplied
# by the reader (where it read the object), so a document never carries it.
_LOCATION_FIELD = "location"
# Integers outside this range do not survive a round trip through a JSON parser that uses
# doubles, so a re-implementation could not rebuild the associated data byte for byte.
_MAX_SAFE_INT = (1 << 53) - 1

_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding
_KEY_SEPARATORS = re.compile(r"[\s,]+")


# --------------------------------------------------------------------------------------- keys


def _derive_key_id(secret: bytes) -> str:
    return hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).digest()[:8].hex()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Key:
    """A key-encryption key. repr()/str() show the id only, never the secret."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_SIZE:
            raise KeyringError(f"a key secret must be {KEY_SIZE} bytes")
        if not isinstance(self.key_id, str) or not hmac.compare_digest(
            self.key_id.encode("utf-8", "replace"), _derive_key_id(self.secret).encode("ascii")
        ):
            raise KeyringError(
                "key id does not match the key secret (build keys with Key.from_secret() "
                "or Keyring.parse())"
            )

    @classmethod
    def from_secret(cls, secret: bytes) -> Key:
        return cls(_derive_key_id(secret) if isinstance(secret, bytes) else "", secret)


def _key_string(secret: bytes) -> str:
    return f"{_KEY_PREFIX}:{_derive_key_id(secret)}:{_b64url(secret)}"


def generate_key() -> str:
    """A new random key string `drdk1:<key id>:<secret>` (the only place a secret is encoded)."""
    return _key_string(secrets.token_bytes(KEY_SIZE))


def _parse_key_string(entry: str) -> Key:
    """Raise ValueError with a reason that never quotes the entry (it may hold a secret)."""
    parts = entry.split(":")
    if len(parts) != 3 or parts[0] != _KEY_PREFIX:
        raise ValueError(f"expected {_KEY_PREFIX}:<key id>:<secret>")
    key_id, encoded = parts[1], parts[2]
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError("the key id is not 16 lowercase hex digits")
    if not _SECRET_RE.fullmatch(encoded):
        raise ValueError("the secret is not 43 base64url characters")
    secret = base64.urlsafe_b64decode(encoded + "=")
    # 43 characters hold 258 bits: a typo in the 2 unused bits would otherwise go unnoticed.
    if _b64url(secret) != encoded:
        raise ValueError("the secret is not canonical base64url")
    if not hmac.compare_digest(_derive_key_id(secret), key_id):
        raise ValueError("the key id does not match the secret (mistyped key?)")
    return Key(key_id, secret)


def _strip_comments(text: str) -> str:
    return "\n".join(line.partition("#")[0] for line in text.splitlines())


class Keyring:
    """The KEKs this process holds: the first is primary (seals new backups), the others are
    kept so that older backups stay readable after a key rotation."""

    def __init__(self, keys: Sequence[Key]) -> None:
        if not keys:
            raise KeyringError("the keyring is empty: at least one key is needed")
        by_id: dict[str, Key] = {}
        for key in keys:
            if key.key_id in by_id:
                raise KeyringError(f"key {key.key_id} appears more than once in the keyring")
            by_id[key.key_id] = key
        self._keys = tuple(keys)
        self._by_id = by_id

    @classmethod
    def parse(cls, text: str, origin: str) -> Keyring:
        """Parse key strings separated by newlines, commas or blanks; `#` starts a comment.

        `origin` names where the text came from ("environment variable DRD_KEYS") for errors,
        which point at a malformed entry by position and never repeat it.
        """
        entries = [e for e in _KEY_SEPARATORS.split(_strip_comments(text)) if e]
        if not entries:
            raise KeyringError(
                f"{origin}: no keys found (expected one or more {_KEY_PREFIX}:... key strings)"
            )
        keys: list[Key] = []
        for position, entry in enumerate(entries, start=1):
            try:
                keys.append(_parse_key_string(entry))
            except ValueError as exc:
                raise KeyringError(f"{origin}: key #{position} is malformed: {exc}") from None
        try:
            return cls(keys)
        except KeyringError as exc:
            raise KeyringError(f"{origin}: {exc}") from None

    @property
    def primary(self) -> Key:
        return self._keys[0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self._keys)

    def get(self, key_id: str) -> Key:
        try:
            return self._by_id[key_id]
        except (KeyError, TypeError):
            raise UnknownKey(
                f"key {key_id!r} is not in the keyring (it holds {', '.join(self.key_ids)})",
                str(key_id),
            ) from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self.key_ids)!r})"


# -------------------------------------------------------------------------------- primitives


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    # salt=None is RFC 5869's default: HashLen zero bytes.
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(ikm)


def _length_prefixed(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is longer than 65535 bytes")
    return _LENGTH.pack(len(raw)) + raw


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes) or len(data_key) != KEY_SIZE:
        raise ValueError(f"a data key must be {KEY_SIZE} bytes")


def _check_segment_size(segment_size: int) -> None:
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size {segment_size} outside 1..{MAX_SEGMENT_SIZE}")


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (one per backup)."""
    return secrets.token_bytes(KEY_SIZE)


# ---------------------------------------------------------------------------- stream header


@dataclass(frozen=True)
class _Header:
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    backup_id: str
    key_id: str
    object_name: str
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        rest = b"".join(
            (
                _SEGMENT_SIZE.pack(self.segment_size),
                self.salt,
                self.nonce_prefix,
                _length_prefixed(self.backup_id, "backup id"),
                _length_prefixed(self.key_id, "key id"),
                _length_prefixed(self.object_name, "object name"),
            )
        )
        if len(rest) > 0xFFFF:
            raise ValueError("stream header is longer than 65535 bytes")
        return _PREAMBLE.pack(MAGIC, self.version, len(rest)) + rest

    @classmethod
    def decode(cls, raw: bytes) -> _Header:
        """Parse a complete header (the caller has checked magic, version and length)."""
        pos = _PREAMBLE.size
        if len(raw) < pos + _HEADER_FIXED:
            raise IntegrityError("malformed header: too short")
        (segment_size,) = _SEGMENT_SIZE.unpack_from(raw, pos)
        pos += _SEGMENT_SIZE.size
        salt = raw[pos : pos + SALT_SIZE]
        pos += SALT_SIZE
        nonce_prefix = raw[pos : pos + NONCE_PREFIX_SIZE]
        pos += NONCE_PREFIX_SIZE
        texts: list[str] = []
        for what in ("backup id", "key id", "object name"):
            if pos + _LENGTH.size > len(raw):
                raise IntegrityError(f"malformed header: {what} missing")
            (n,) = _LENGTH.unpack_from(raw, pos)
            pos += _LENGTH.size
            if pos + n > len(raw):
                raise IntegrityError(f"malformed header: {what} overruns the header")
            try:
                texts.append(raw[pos : pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                raise IntegrityError(f"malformed header: {what} is not UTF-8") from None
            pos += n
        if pos != len(raw):
            raise IntegrityError("malformed header: unexpected bytes after the object name")
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise IntegrityError(f"malformed header: segment size {segment_size} out of range")
        backup_id, key_id, object_name = texts
        return cls(
            segment_size, salt, nonce_prefix, backup_id, key_id, object_name, raw[len(MAGIC)]
        )


def header_size(*, backup_id: str, key_id: str, object_name: str) -> int:
    """The size of a data object's header with these fields."""
    return (
        _PREAMBLE.size
        + _HEADER_FIXED
        + 3 * _LENGTH.size
        + sum(len(t.encode("utf-8")) for t in (backup_id, key_id, object_name))
    )


def ciphertext_size(plaintext_size: int, segment_size: int, header_size: int) -> int:
    """The exact size of a data object: the header, the plaintext, one tag per segment. An empty
    plaintext still has one (empty, final) segment; a multiple of the segment size has no empty
    trailing segment (the last full one is final)."""
    segments = max(1, -(-plaintext_size // segment_size))
    return header_size + plaintext_size + segments * TAG_SIZE


# ------------------------------------------------------------------------------ segmentation


class _Segmenter:
    """Cuts a byte stream into units of `size` bytes for `process`, always holding back the last
    1..size bytes: whether a unit is the final one is only known when the stream ends.

    Full units are handed to `process` as views of the caller's buffer, so large writes are not
    copied; only the sub-unit remainder is buffered.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending = bytearray()

    def feed(self, data: BytesLike, process: Callable[[BytesLike], bytes]) -> bytes:
        size, pending = self.size, self.pending
        out: list[bytes] = []
        with memoryview(data) as raw, raw.cast("B") as view:
            n = len(view)
            if len(pending) + n <= size:
                pending += view
                return b""
            pos = 0
            if pending:
                # More data follows, so the completed unit cannot be the final one.
                pos = size - len(pending)
                pending += view[:pos]
                out.append(process(pending))
                pending.clear()
            while n - pos > size:
                out.append(process(view[pos : pos + size]))
                pos += size
            pending += view[pos:]
        # join() of a single bytes object returns it without copying.
        return b"".join(out)


def _segment_nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, 1 if final else 0)


# --------------------------------------------------------------------------------- streaming


def _check_data_version(version: int) -> None:
    if version not in DATA_FORMAT_VERSIONS:
        raise ValueError(
            f"data object format version {version} is not one of {DATA_FORMAT_VERSIONS}"
        )


class StreamEncryptor:
    """Encrypts one data object. Not thread-safe; one call at a time (from any thread).

    `object_name` is the object's full key in version 2 (its location: `plan/source/id/data.drd`),
    `data.drd` in version 1. `version` exists to write version 1 for tests and vectors.
    `_salt` and `_nonce_prefix` exist for known-answer tests only: production code must let
    them default to fresh random values.
    """

    def __init__(
        self,
        data_key: bytes,
        *,
        backup_id: str,
        key_id: str,
        object_name: str,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        version: int = FORMAT_VERSION,
        _salt: bytes | None = None,
        _nonce_prefix: bytes | None = None,
    ) -> None:
        _check_data_key(data_key)
        _check_segment_size(segment_size)
        _check_data_version(version)
        salt = secrets.token_bytes(SALT_SIZE) if _salt is None else _salt
        prefix = secrets.token_bytes(NONCE_PREFIX_SIZE) if _nonce_prefix is None else _nonce_prefix
        if len(salt) != SALT_SIZE or len(prefix) != NONCE_PREFIX_SIZE:
            raise ValueError("bad salt or nonce prefix size")
        self._header = _Header(
            segment_size, salt, prefix, backup_id, key_id, object_name, version
        ).encode()
        self._aead = AESGCM(_hkdf(data_key, salt, self._header))
        self._prefix = prefix
        self._index = 0
        self._segments = _Segmenter(segment_size)
        self._header_sent = False
        self._finalized = False

    @property
    def header_size(self) -> int:
        return len(self._header)

    def update(self, data: BytesLike) -> bytes:
        """Ciphertext ready to write; the first output starts with the header."""
        if self._finalized:
            raise ValueError("update() after finalize()")
        return self._with_header(self._segments.feed(data, self._seal_inner))

    def finalize(self) -> bytes:
        """The final segment (and the header, if nothing was output yet). Call exactly once."""
        if self._finalized:
            raise ValueError("finalize() called twice")
        self._finalized = True
        last = self._seal(self._segments.pending, final=True)
        self._segments.pending = bytearray()
        return self._with_header(last)

    def _with_header(self, out: bytes) -> bytes:
        if self._header_sent:
            return out
        self._header_sent = True
        return self._header + out

    def _seal_inner(self, plaintext: BytesLike) -> bytes:
        return self._seal(plaintext, final=False)

    def _seal(self, plaintext: BytesLike, *, final: bool) -> bytes:
        if self._index >= MAX_SEGMENTS:
            raise ValueError("stream too long: more than 2**32 segments")
        out = self._aead.encrypt(
            _segment_nonce(self._prefix, self._index, final), plaintext, self._header
        )
        self._index += 1
        return out


class StreamDecryptor:
    """Decrypts one data object, checking its header against what the manifest says it is:
    the format `version` (the manifest says which), backup id, key id and object name (the
    object's location in version 2).

    update() returns the plaintext of fully authenticated segments only (it lags one segment
    behind, since the last full segment may turn out to be the final one). After an
    IntegrityError the decryptor refuses further input.
    """

    def __init__(
        self,
        data_key: bytes,
        *,
        backup_id: str,
        key_id: str,
        object_name: str,
        version: int = FORMAT_VERSION,
    ) -> None:
        _check_data_key(data_key)
        _check_data_version(version)
        self._version = version
        self._data_key = data_key
        self._expected = (
            ("backup id", backup_id),
            ("key id", key_id),
            ("object name", object_name),
        )
        self._header_buf = bytearray()
        self._header = b""
        self._prefix = b""
        self._aead: AESGCM | None = None
        self._segments: _Segmenter | None = None
        self._index = 0
        self._failed = False
        self._finalized = False

    def update(self, data: BytesLike) -> bytes:
        self._check_usable()
        try:
            if self._segments is None:
                rest = self._read_header(data)
                if rest is None:
                    return b""
                data = rest
            assert self._segments is not None
            return self._segments.feed(data, self._open_inner)
        except IntegrityError:
            self._failed = True
            raise

    def finalize(self) -> bytes:
        """The final segment's plaintext; IntegrityError if the stream is incomplete."""
        self._check_usable()
        self._finalized = True
        try:
            return self._open_final()
        except IntegrityError:
            self._failed = True
            raise

    def _check_usable(self) -> None:
        if self._failed:
            raise IntegrityError("stream already failed authentication")
        if self._finalized:
            raise ValueError("stream decryptor already finalized")

    def _read_header(self, data: BytesLike) -> bytearray | None:
        """Accumulate the header; once complete, check it and return the bytes after it."""
        buf = self._header_buf
        buf += data
        n = min(len(buf), len(MAGIC))
        if buf[:n] != MAGIC[:n]:
            raise IntegrityError("not a drd data object: bad magic")
        if len(buf) < _PREAMBLE.size:
            return None
        _, version, rest_length = _PREAMBLE.unpack_from(buf)
        if version not in DATA_FORMAT_VERSIONS:
            raise IntegrityError(f"unsupported data object format version {version}")
        if version != self._version:
            # A downgrade (or an object swapped in from another backup) is refused outright.
            raise IntegrityError(
                f"data object is format version {version}, its manifest says {self._version}"
            )
        end = _PREAMBLE.size + rest_length
        if len(buf) < end:
            return None
        self._header = bytes(buf[:end])
        rest = buf[end:]
        self._header_buf = bytearray()
        header = _Header.decode(self._header)
        found = (header.backup_id, header.key_id, header.object_name)
        for (what, expected), actual in zip(self._expected, found, strict=True):
            if actual != expected:
                raise IntegrityError(
                    f"header {what} mismatch: expected {expected!r}, found {actual!r}"
                )
        # A header altered in any other way (salt, prefix, segment size) yields another key,
        # so segment 0 fails authentication.
        self._aead = AESGCM(_hkdf(self._data_key, header.salt, self._header))
        self._prefix = header.nonce_prefix
        self._segments = _Segmenter(header.segment_size + TAG_SIZE)
        return rest

    def _try_open(self, ciphertext: BytesLike, *, final: bool) -> bytes | None:
        assert self._aead is not None
        try:
            return self._aead.decrypt(
                _segment_nonce(self._prefix, self._index, final), ciphertext, self._header
            )
        except InvalidTag:
            return None

    def _open_inner(self, ciphertext: BytesLike) -> bytes:
        if self._index >= MAX_SEGMENTS:
            raise IntegrityError("stream too long: more than 2**32 segments")
        plaintext = self._try_open(ciphertext, final=False)
        if plaintext is None:
            # Failure path only: tell "a final segment followed by junk" from tampering.
            if self._try_open(ciphertext, final=True) is not None:
                raise IntegrityError(f"trailing data after final segment {self._index}")
            self._fail_segment(final=False)
        self._index += 1
        return plaintext

    def _open_final(self) -> bytes:
        if self._segments is None:
            if self._header_buf:
                raise IntegrityError("stream truncated inside the header")
            raise IntegrityError("stream truncated: the object is empty")
        last = self._segments.pending
        if not last:
            raise IntegrityError("stream truncated: final segment missing")
        plaintext = self._try_open(last, final=True)
        if plaintext is not None:
            self._segments.pending = bytearray()
            return plaintext
        if len(last) == self._segments.size and (self._try_open(last, final=False) is not None):
            # An intact inner segment at the very end: the stream was cut at a boundary.
            raise IntegrityError(
                f"stream truncated: final segment missing (stream ends after segment {self._index})"
            )
        if len(last) < TAG_SIZE:
            raise IntegrityError(f"stream truncated: final segment {self._index} incomplete")
        self._fail_segment(final=True)

    def _fail_segment(self, *, final: bool) -> NoReturn:
        i = self._index
        if final:
            why = "final segment: truncated or altered"
        elif i == 0:
            why = "altered data or header"
        else:
            raise IntegrityError(f"segment {i} failed authentication")
        if i == 0:
            # A wrong data key fails at the first segment, never later.
            why += ", or wrong data key"
        raise IntegrityError(f"segment {i} failed authentication ({why})")


# ------------------------------------------------------------------------------- key wrapping


def _wrap_aad(backup_id: str, key_id: str) -> bytes:
    return (
        _WRAP_LABEL + _length_prefixed(backup_id, "backup id") + _length_prefixed(key_id, "key id")
    )


def wrap_data_key(kek: Key, data_key: bytes, backup_id: str, *, _nonce: bytes | None = None) -> str:
    """The data key encrypted under `kek`, bound to `backup_id` and the KEK's id (base64 text).

    `_nonce` exists for known-answer tests only.
    """
    _check_data_key(data_key)
    nonce = secrets.token_bytes(NONCE_SIZE) if _nonce is None else _nonce
    sealed = AESGCM(_hkdf(kek.secret, None, _WRAP_LABEL)).encrypt(
        nonce, data_key, _wrap_aad(backup_id, kek.key_id)
    )
    return base64.b64encode(bytes([_WRAP_VERSION]) + nonce + sealed).decode("ascii")


def unwrap_data_key(keyring: Keyring, key_id: str, wrapped: str, backup_id: str) -> bytes:
    kek = keyring.get(key_id)
    try:
        raw = base64.b64decode(wrapped, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise IntegrityError("wrapped data key is malformed: not base64") from None
    if len(raw) != _WRAPPED_SIZE or raw[0] != _WRAP_VERSION:
        raise IntegrityError("wrapped data key is malformed: wrong size or version")
    nonce, sealed = raw[1 : 1 + NONCE_SIZE], raw[1 + NONCE_SIZE :]
    try:
        return AESGCM(_hkdf(kek.secret, None, _WRAP_LABEL)).decrypt(
            nonce, sealed, _wrap_aad(backup_id, key_id)
        )
    except InvalidTag:
        raise IntegrityError(
            "wrapped data key failed authentication (altered, or taken from another backup)"
        ) from None


# ---------------------------------------------------------------------------------- manifests


def _canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) for the values _check_public admits: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check_public(value: Any, where: str = "public") -> None:
    """Admit only JSON whose canonical form every language reproduces byte for byte."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise TypeError(f"manifest {where}: integer beyond 2**53")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_public(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            # ASCII keys: code-point order (Python's) then equals JCS's UTF-16 order.
            if not isinstance(k, str) or not k.isascii():
                raise TypeError(f"manifest {where}: keys must be ASCII strings")
            _check_public(item, f"{where}.{k}")
        return
    raise TypeError(f"manifest {where}: {type(value).__name__} is not allowed in public fields")


def _manifest_key(kek: Key) -> AESGCM:
    return AESGCM(_hkdf(kek.secret, None, _MANIFEST_LABEL))


def _check_location(location: str) -> None:
    if not isinstance(location, str) or not location:
        raise ValueError("a manifest's location must be a non-empty string")


def _associated_data(envelope: Mapping[str, Any], location: str | None) -> bytes:
    """Version 1: the envelope. Version 2: the envelope plus the object's location."""
    if location is None:
        return _canonical_json(envelope)
    return _canonical_json({**envelope, _LOCATION_FIELD: location})


def seal_manifest(
    keyring: Keyring,
    public: dict[str, Any],
    body: dict[str, Any],
    *,
    location: str | None = None,
    _nonce: bytes | None = None,
) -> bytes:
    """A JSON manifest sealed with the primary KEK: `public` in clear but authenticated, `body`
    encrypted. Public values are limited to strings, integers, booleans, null, lists and
    objects (no floats).

    With `location` (the key the document is stored under, e.g. `plan/source/id/manifest.json`)
    this writes version 2, which is bound to that location: opened from anywhere else it fails
    authentication. Without it, version 1 (documents whose writer cannot name their place).
    `_nonce` exists for known-answer tests only."""
    kek = keyring.primary
    if "key_id" in public and public["key_id"] != kek.key_id:
        raise ValueError("public key_id is not the primary key's id")
    _check_public(public)
    if location is not None:
        _check_location(location)
    envelope: dict[str, Any] = {
        "drd_manifest": 1 if location is None else MANIFEST_VERSION,
        "key_id": kek.key_id,
        "public": public,
    }
    nonce = secrets.token_bytes(NONCE_SIZE) if _nonce is None else _nonce
    sealed = _manifest_key(kek).encrypt(
        nonce, _canonical_json(body), _associated_data(envelope, location)
    )
    document = {
        **envelope,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "sealed_body": base64.b64encode(sealed).decode("ascii"),
    }
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes | str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity. ValueError otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _parse_manifest(raw: bytes, problem: str) -> dict[str, Any]:
    try:
        document = _loads(raw)
    except ValueError:
        raise IntegrityError(f"{problem}: not valid JSON") from None
    if not isinstance(document, dict):
        raise IntegrityError(f"{problem}: not a JSON object")
    version = document.get("drd_manifest")
    if type(version) is not int:
        raise IntegrityError(f"{problem}: not a drd manifest")
    if version not in MANIFEST_VERSIONS:
        raise IntegrityError(f"{problem}: unsupported manifest version {version}")
    if not isinstance(document.get("public"), dict):
        raise IntegrityError(f"{problem}: public fields missing")
    for name in ("key_id", *_SEAL_FIELDS):
        if not isinstance(document.get(name), str):
            raise IntegrityError(f"{problem}: {name} missing")
    if version >= 2 and _LOCATION_FIELD in document:
        raise IntegrityError(f"{problem}: a stored manifest never names its own location")
    return document


class Opened(NamedTuple):
    """A verified sealed document."""

    #: the `drd_manifest` version: 2 is bound to its location, 1 is not
    version: int
    public: dict[str, Any]
    body: dict[str, Any]


def open_sealed(keyring: Keyring, raw: bytes, *, location: str | None = None) -> Opened:
    """Verify a sealed manifest (or report) read from `location` and return it with its version.

    A version 2 document authenticates only with the location it was sealed for: read from
    another key, it fails as altered. A version 1 document is not bound to a place (the caller
    checks its public fields against the location); `location` is then not used."""
    problem = "manifest failed authentication"
    document = _parse_manifest(raw, problem)
    version: int = document["drd_manifest"]
    if version >= 2:
        if location is None:
            raise IntegrityError(f"{problem}: a version {version} manifest needs its location")
        _check_location(location)
    kek = keyring.get(document["key_id"])
    try:
        nonce = base64.b64decode(document["nonce"], validate=True)
        sealed = base64.b64decode(document["sealed_body"], validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{problem}: seal is not base64") from None
    if len(nonce) != NONCE_SIZE:
        raise IntegrityError(f"{problem}: bad nonce size")
    # Everything but the seal itself is associated data, so adding, removing or editing any
    # top-level field (not just public ones) is detected.
    envelope = {k: v for k, v in document.items() if k not in _SEAL_FIELDS}
    try:
        aad = _associated_data(envelope, location if version >= 2 else None)
    except ValueError:
        raise IntegrityError(f"{problem}: public fields are not canonicalizable") from None
    try:
        plaintext = _manifest_key(kek).decrypt(nonce, sealed, aad)
    except InvalidTag:
        why = "it was altered or forged" + (
            ", or moved from another location" if version >= 2 else ""
        )
        raise IntegrityError(f"{problem}: {why}") from None
    try:
        body = _loads(plaintext)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # Authentic yet unreadable: only a broken sealer could have written it.
        raise IntegrityError("manifest body is not a JSON object")
    return Opened(version, document["public"], body)


def open_manifest(
    keyring: Keyring, raw: bytes, *, location: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a sealed manifest and return (public, body) (see open_sealed)."""
    opened = open_sealed(keyring, raw, location=location)
    return opened.public, opened.body


def read_manifest_public(raw: bytes) -> dict[str, Any]:
    """The public fields WITHOUT verifying them (listing and retention on a key-less host).
    Anything security-relevant must go through open_manifest()."""
    public: dict[str, Any] = _parse_manifest(raw, "manifest is malformed")["public"]
    return public
