"""The WAL archive of a physical PostgreSQL source: one sealed object per file, and what the
regions hold, rebuilt from their listings.

Layout, under the source's prefix (drd.layout):

    <plan>/<source>/wal/<system id>/<file name>@<through>

- `<system id>`: the cluster's (pg_control), so the WAL of a cluster that was re-created under
  the same source never mixes with the old one's.
- `<file name>`: PostgreSQL's: a segment (`000000010000000A000000FF`), the segment being
  written (`...FF.partial`, shipped periodically while it grows, each time as a new object,
  superseded by the completed segment) or a timeline history (`00000002.history`).
- `<through>`: UTC, milliseconds (`20261203T142849123Z`): all WAL the server had written by
  then is in this object or in earlier ones. The recovery window is read from listings alone.

Each object is self-contained (docs/pitr.md has the byte layout): `DRDW`, a version byte, the
length of a sealed header, the header, then the data as a drd stream (zstd, then AES-256-GCM
segments). The header is a manifest (drd.crypto.seal_manifest): public fields (plan, source,
system id, file name, through, and the object's own location) authenticated as associated
data, and a sealed body holding the data key (wrapped under the KEK and bound to the
location), the plaintext's size and BLAKE3 digest. The stream's header names the location too.
An object read from anywhere but its own key, or altered in any byte, fails as an
IntegrityError; so does a truncated one.

WAL objects are small (one segment, 16 MiB by default) and are sealed and opened whole in memory.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import zstandard

from drd import __version__, crypto
from drd.digests import ContentDigest, Crc32c
from drd.errors import DrdError, IntegrityError
from drd.layout import SourceRef
from drd.storage.base import ObjectInfo, Storage
from drd.strategies.postgres_wal import (
    PARTIAL_SUFFIX,
    Segment,
    is_history_name,
    is_segment_name,
    parse_segment_name,
)

MAGIC = b"DRDW"
VERSION = 1
FORMAT = "drd-wal-1"
_PREAMBLE = struct.Struct(">4sBI")
#: a sealed header is a few hundred bytes; anything much larger is not one
_MAX_HEADER = 64 * 1024
ZSTD_LEVEL = 1
#: WAL objects are handled whole in memory: initdb's largest segment size is refused
MAX_OBJECT_PLAINTEXT = 256 << 20

Kind = str  # "segment" | "partial" | "history"


def format_stamp(when: datetime) -> str:
    when = when.astimezone(UTC)
    return f"{when:%Y%m%dT%H%M%S}{when.microsecond // 1000:03d}Z"


def parse_stamp(text: str) -> datetime:
    if len(text) != 19 or text[8] != "T" or text[-1] != "Z":
        raise ValueError(f"not a WAL stamp: {text!r}")
    base = datetime.strptime(text[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return base.replace(microsecond=int(text[15:18]) * 1000)


def wal_prefix(ref: SourceRef, system_id: str | None = None) -> str:
    base = f"{ref.prefix}wal/"
    return base if system_id is None else f"{base}{system_id}/"


def wal_key(ref: SourceRef, system_id: str, name: str, through: datetime) -> str:
    return f"{wal_prefix(ref, system_id)}{name}@{format_stamp(through)}"


def kind_of(name: str) -> Kind | None:
    if is_segment_name(name):
        return "segment"
    if name.endswith(PARTIAL_SUFFIX) and is_segment_name(name[: -len(PARTIAL_SUFFIX)]):
        return "partial"
    if is_history_name(name):
        return "history"
    return None


@dataclass(frozen=True)
class WalKey:
    """What a WAL object's key says."""

    key: str
    ref: SourceRef
    system_id: str
    name: str
    kind: Kind
    through: datetime

    @property
    def segment_name(self) -> str:
        """The segment a segment or partial is of (the history's own name otherwise)."""
        return self.name[: -len(PARTIAL_SUFFIX)] if self.kind == "partial" else self.name


def parse_wal_key(key: str) -> WalKey | None:
    """The parts of a WAL object's key; None for keys that are not one."""
    parts = key.split("/")
    if len(parts) != 5 or parts[2] != "wal" or not parts[3].isdigit():
        return None
    name, sep, stamp = parts[4].rpartition("@")
    kind = kind_of(name) if sep else None
    if kind is None:
        return None
    try:
        ref = SourceRef.parse(f"{parts[0]}/{parts[1]}")
        through = parse_stamp(stamp)
    except ValueError:
        return None
    return WalKey(key, ref, parts[3], name, kind, through)


# --------------------------------------------------------------------------------------------
# Sealing and opening one object


def seal(
    keyring: crypto.Keyring,
    key: WalKey,
    data: bytes,
    *,
    timeline: int,
    segment_size: int,
    covered_lsn: int | None = None,
    archived_by: str = "",
) -> bytes:
    """The stored bytes of WAL file `data` at `key` (module docstring)."""
    if len(data) > MAX_OBJECT_PLAINTEXT:
        raise ValueError(f"{key.name}: {len(data)} bytes is more than drd archives as one object")
    kek = keyring.primary
    data_key = crypto.new_data_key()
    digest = ContentDigest()
    digest.update(data)
    public: dict[str, Any] = {
        "format": FORMAT,
        "plan": key.ref.plan,
        "source": key.ref.source,
        "system_id": key.system_id,
        "name": key.name,
        "location": key.key,
        "through": key.through.isoformat(),
        "timeline": timeline,
        "segment_size": segment_size,
        "covered_lsn": covered_lsn,
        "key_id": kek.key_id,
        "archived_by": archived_by,
        "drd_version": __version__,
    }
    body = {
        "wrapped_data_key": crypto.wrap_data_key(kek, data_key, key.key),
        "plaintext_size": len(data),
        "plaintext_digest": digest.tagged(),
        "compression": "zstd",
        "data_format": crypto.FORMAT_VERSION,
    }
    header = crypto.seal_manifest(keyring, public, body)
    encryptor = crypto.StreamEncryptor(
        data_key, backup_id=key.name, key_id=kek.key_id, object_name=key.key
    )
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    stream = encryptor.update(compressed) + encryptor.finalize()
    return _PREAMBLE.pack(MAGIC, VERSION, len(header)) + header + stream


@dataclass(frozen=True)
class Opened:
    public: dict[str, Any]
    data: bytes


def read_public(raw: bytes, where: str) -> dict[str, Any]:
    """The header's public fields without verifying them (listing, no key)."""
    header, _ = _split(raw, where)
    return crypto.read_manifest_public(header)


def _split(raw: bytes, where: str) -> tuple[bytes, bytes]:
    if len(raw) < _PREAMBLE.size:
        raise IntegrityError(f"{where}: WAL object truncated (no header)")
    magic, version, length = _PREAMBLE.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError(f"{where}: not a drd WAL object (bad magic)")
    if version != VERSION:
        raise IntegrityError(f"{where}: unsupported WAL object version {version}")
    if length > _MAX_HEADER or _PREAMBLE.size + length > len(raw):
        raise IntegrityError(f"{where}: WAL object truncated or malformed (header length)")
    end = _PREAMBLE.size + length
    return raw[_PREAMBLE.size : end], raw[end:]


def open_object(keyring: crypto.Keyring, raw: bytes, key: WalKey, where: str) -> Opened:
    """Verify and decrypt a WAL object read from `key`; IntegrityError (naming `where`) if it
    is not exactly what drd stored there."""
    header, stream = _split(raw, where)
    try:
        public, body = crypto.open_manifest(keyring, header)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    expected = {
        "format": FORMAT,
        "location": key.key,
        "plan": key.ref.plan,
        "source": key.ref.source,
        "system_id": key.system_id,
        "name": key.name,
        "through": key.through.isoformat(),
    }
    for name, value in expected.items():
        if public.get(name) != value:
            raise IntegrityError(
                f"{where}: WAL object belongs elsewhere ({name} is {public.get(name)!r}, "
                f"expected {value!r})"
            )
    try:
        data_key = crypto.unwrap_data_key(
            keyring, str(public["key_id"]), str(body["wrapped_data_key"]), key.key
        )
        data_format = int(body.get("data_format", crypto.FORMAT_VERSION))
        extra: dict[str, Any] = (
            {} if data_format == crypto.FORMAT_VERSION else {"version": data_format}
        )
        decryptor = crypto.StreamDecryptor(
            data_key,
            backup_id=key.name,
            key_id=str(public["key_id"]),
            object_name=key.key,
            **extra,
        )
        compressed = decryptor.update(stream) + decryptor.finalize()
        size, digest = int(body["plaintext_size"]), str(body["plaintext_digest"])
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{where}: WAL object header is malformed ({exc})") from None
    try:
        data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where}: compressed WAL is corrupt: {exc}") from None
    check = ContentDigest.like(digest)
    check.update(data)
    if len(data) != size or not check.matches(digest):
        raise IntegrityError(f"{where}: WAL content does not match its digest")
    return Opened(public, data)


def checksum(raw: bytes) -> str:
    """The storage checksum of stored bytes (what a backend reports for the object)."""
    return Crc32c(raw).checksum()


# --------------------------------------------------------------------------------------------
# What the regions hold


@dataclass
class WalFile:
    """One WAL file name of one system, with every stored object of it per region."""

    name: str
    kind: Kind
    #: region -> the object keys of this file there (more than one: partials, or a duplicate)
    copies: dict[str, list[WalKey]] = field(default_factory=dict)

    @property
    def newest(self) -> WalKey:
        return max((k for keys in self.copies.values() for k in keys), key=lambda k: k.through)

    @property
    def through(self) -> datetime:
        return self.newest.through

    def regions_with(self, key: str) -> list[str]:
        return [r for r, keys in self.copies.items() if any(k.key == key for k in keys)]

    @property
    def keys(self) -> set[str]:
        return {k.key for keys in self.copies.values() for k in keys}


@dataclass
class WalArchive:
    ref: SourceRef
    #: system id -> file name -> what the regions hold of it
    systems: dict[str, dict[str, WalFile]] = field(default_factory=dict)
    region_errors: dict[str, str] = field(default_factory=dict)
    regions: list[str] = field(default_factory=list)

    def files(self, system_id: str) -> dict[str, WalFile]:
        return self.systems.get(system_id, {})

    def add(self, region: str, key: WalKey) -> None:
        files = self.systems.setdefault(key.system_id, {})
        entry = files.setdefault(key.name, WalFile(key.name, key.kind))
        entry.copies.setdefault(region, []).append(key)

    def segment(self, system_id: str, name: str) -> WalFile | None:
        """The completed segment `name`, else its newest partial; None if neither is held."""
        files = self.files(system_id)
        return files.get(name) or files.get(name + PARTIAL_SUFFIX)

    def all_keys(self) -> list[WalKey]:
        return [
            k
            for files in self.systems.values()
            for f in files.values()
            for keys in f.copies.values()
            for k in keys
        ]


async def list_archive(regions: Sequence[Storage], ref: SourceRef) -> WalArchive:
    """List every region's WAL of `ref` (a region that cannot be listed is in region_errors)."""
    prefix = wal_prefix(ref)
    listings = await asyncio.gather(*(r.list(prefix) for r in regions), return_exceptions=True)
    archive = WalArchive(ref, regions=[r.name for r in regions])
    for storage, listing in zip(regions, listings, strict=True):
        if isinstance(listing, BaseException):
            if not isinstance(listing, Exception):
                raise listing
            archive.region_errors[storage.name] = str(listing) or type(listing).__name__
            continue
        for info in listing:
            parsed = parse_wal_key(info.key)
            if parsed is not None and parsed.ref == ref:
                archive.add(storage.name, parsed)
    return archive


def index_listing(listing: Sequence[ObjectInfo], ref: SourceRef) -> list[WalKey]:
    return [k for k in (parse_wal_key(i.key) for i in listing) if k is not None and k.ref == ref]


# --------------------------------------------------------------------------------------------
# Continuity: which segments follow a start without a gap


@dataclass
class Chain:
    """The WAL after a start segment that is held without a gap."""

    start: Segment
    #: the segments held, in order (a partial may be the last)
    segments: list[tuple[Segment, WalFile]] = field(default_factory=list)
    #: the first segment that is missing in every region, if anything follows it
    gap: Segment | None = None
    #: segments held after the gap (their WAL cannot be replayed)
    after_gap: int = 0

    @property
    def end(self) -> Segment | None:
        return self.segments[-1][0] if self.segments else None

    @property
    def through(self) -> datetime | None:
        return max((f.through for _, f in self.segments), default=None)

    @property
    def ends_partial(self) -> bool:
        return bool(self.segments) and self.segments[-1][1].kind == "partial"


def follow(archive: WalArchive, system_id: str, start: Segment, segment_size: int) -> Chain:
    """The segments from `start` on that are held without a gap, following timeline switches
    (a segment missing on the current timeline continues on a newer one whose history is held
    and which holds that segment)."""
    files = archive.files(system_id)
    by_number: dict[int, dict[int, WalFile]] = {}
    for f in files.values():
        if f.kind == "history":
            continue
        seg = parse_segment_name(f.name[:24], segment_size)
        held = by_number.setdefault(seg.segno, {})
        if seg.timeline not in held or f.kind == "segment":
            held[seg.timeline] = f
    histories = {int(n[:8], 16) for n, f in files.items() if f.kind == "history"}
    chain = Chain(start)
    tli, segno = start.timeline, start.segno
    newest = max(by_number, default=-1)
    while segno <= newest:
        held = by_number.get(segno, {})
        entry = held.get(tli)
        if entry is None:
            newer = sorted(t for t in held if t > tli and t in histories)
            if newer:
                tli = newer[0]
                entry = held[tli]
        if entry is None:
            chain.gap = Segment(tli, segno)
            chain.after_gap = sum(1 for n in by_number if n > segno)
            break
        chain.segments.append((Segment(tli, segno), entry))
        if entry.kind == "partial":
            later = sum(1 for n in by_number if n > segno)
            if later:  # a partial in the middle: the completed segment never arrived
                chain.gap = Segment(tli, segno)
                chain.after_gap = later
            break
        segno += 1
    return chain


def describe_copies(files: Mapping[str, WalFile]) -> int:
    return sum(len(f.copies) for f in files.values())


def error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DrdError) else f"{type(exc).__name__}: {exc}"
