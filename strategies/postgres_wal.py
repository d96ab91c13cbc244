"""PostgreSQL write-ahead log as files: names, positions, segment headers, timeline histories.

Pure functions, no I/O beyond what the caller hands in. What they rely on is PostgreSQL's
on-disk format, stable since 9.x:

- An LSN is a 64-bit byte position, written `X/Y` (high and low 32 bits in hex).
- A segment holds `wal_segment_size` bytes of WAL (16 MiB unless initdb chose otherwise); its
  file name is 24 hex digits: timeline, then the segment number split in "log" (segno divided
  by segments per 4 GiB) and "seg" (the remainder), 8 digits each.
- The first page of every segment starts with a long page header: magic (u16), info (u16),
  timeline (u32), page address (u64), remaining length (u32), padding to 24 bytes, then the
  cluster's system identifier (u64), the segment size (u32) and the block size (u32), in the
  server's byte order (little-endian on every platform drd runs on).
- A timeline history file `TTTTTTTT.history` lists, one line per ancestor, its timeline id,
  the LSN where the next timeline branched off, and a reason.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

#: 24 hex digits: a WAL segment file
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
#: a timeline history file
HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")
#: pg_receivewal's segment in progress
PARTIAL_SUFFIX = ".partial"
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size
#: the smallest and largest wal_segment_size initdb accepts (powers of two)
MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30
_XLP_LONG_HEADER = 0x0002


def parse_lsn(text: str) -> int:
    """`16/B374D848` -> its 64-bit position; ValueError otherwise."""
    m = _LSN_RE.match(text.strip())
    if m is None:
        raise ValueError(f"not an LSN: {text!r} (expected X/Y, e.g. 0/16B3748)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(segment_size: int) -> int:
    """Segments per 4 GiB "log id" (the middle 8 digits of a segment name)."""
    return 0x100000000 // segment_size


@dataclass(frozen=True, order=True)
class Segment:
    """A WAL segment: its timeline and number (for a segment size)."""

    timeline: int
    segno: int

    def name(self, segment_size: int) -> str:
        per = segments_per_id(segment_size)
        return f"{self.timeline:08X}{self.segno // per:08X}{self.segno % per:08X}"

    def start_lsn(self, segment_size: int) -> int:
        return self.segno * segment_size

    def end_lsn(self, segment_size: int) -> int:
        return (self.segno + 1) * segment_size


def parse_segment_name(name: str, segment_size: int) -> Segment:
    """`000000010000000000000003` -> Segment(1, 3); ValueError for anything else."""
    if not SEGMENT_RE.match(name):
        raise ValueError(f"not a WAL segment file name: {name!r}")
    per = segments_per_id(segment_size)
    log, seg = int(name[8:16], 16), int(name[16:24], 16)
    if seg >= per:
        raise ValueError(
            f"{name}: segment part beyond {per - 1:X} for {segment_size} byte segments"
        )
    return Segment(int(name[:8], 16), log * per + seg)


def segment_of(lsn: int, timeline: int, segment_size: int) -> Segment:
    return Segment(timeline, lsn // segment_size)


def is_segment_name(name: str) -> bool:
    return SEGMENT_RE.match(name) is not None


def is_history_name(name: str) -> bool:
    return HISTORY_RE.match(name) is not None


def history_timeline(name: str) -> int:
    return int(name[:8], 16)


@dataclass(frozen=True)
class SegmentHeader:
    """What the first page of a segment says about it."""

    timeline: int
    page_address: int
    system_identifier: int
    segment_size: int
    block_size: int


def read_segment_header(data: bytes) -> SegmentHeader:
    """The long page header at the start of a segment file; ValueError if `data` does not
    start with one (not a WAL segment, or an unwritten one)."""
    if len(data) < LONG_HEADER_SIZE:
        raise ValueError("too short for a WAL segment header")
    _magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & _XLP_LONG_HEADER:
        raise ValueError("no long page header: not the start of a WAL segment")
    if seg_size & (seg_size - 1) or not MIN_SEGMENT_SIZE <= seg_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"implausible segment size {seg_size} in the WAL header")
    if pageaddr % seg_size:
        raise ValueError("page address is not at a segment boundary")
    return SegmentHeader(tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(data: bytes, name: str) -> SegmentHeader:
    """The header of segment file `name` (a full name, not .partial), checked against the name:
    timeline and position must be the ones the name says."""
    header = read_segment_header(data)
    segment = parse_segment_name(name, header.segment_size)
    if header.timeline != segment.timeline or header.page_address != segment.start_lsn(
        header.segment_size
    ):
        raise ValueError(
            f"{name}: the header says timeline {header.timeline} at "
            f"{format_lsn(header.page_address)}, not what the file name says"
        )
    return header


def read_system_identifier(pg_control: bytes) -> int:
    """The first field of global/pg_control (ControlFileData.system_identifier)."""
    if len(pg_control) < 8:
        raise ValueError("pg_control is too short")
    (sysid,) = struct.unpack_from("<Q", pg_control)
    return int(sysid)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a timeline history file: timeline `parent` ended at `switch_lsn`."""

    parent: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """The entries of a timeline history file (comments and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ValueError(f"malformed timeline history line: {line[:80]!r}")
        out.append(HistoryEntry(int(parts[0]), parse_lsn(parts[1]), parts[2] if parts[2:] else ""))
    return out
