"""What the files strategy's tar stream is: its format's constants and the PAX details both
sides share (nanosecond times, raw binary xattr records, file states)."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, cast

from drd.strategies import file_xattrs

CHUNK_SIZE = 1 << 20
FORMAT = "tar-pax"
#: reads of a file that changes while being read, before it is archived as unstable
MAX_READS = 3
#: the PAX record of a member that supersedes the one before it (a re-read of the same file)
REREAD_RECORD = "DRD.reread"
#: unstable files (and unarchivable xattrs) named in the metadata; the rest are counted
UNSTABLE_LISTED = 100

_NS = 10**9
_ENCODING = "utf-8"
_READ_AHEAD = 1 << 20
_ZEROS = memoryview(bytes(_READ_AHEAD))
#: while a re-read may follow, how often a file being read is checked for changes
_CHECK_EVERY = 8 << 20
_REREAD_PAUSE = 0.05
_ALWAYS_SHOWN = ("file_count", "dir_count", "symlink_count", "total_bytes")
#: per-entry restore warnings logged; the outcome counts all of them
_WARN_LIMIT = 50


def _ns_to_pax(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), _NS)
    return f"{sign}{sec}.{frac:09d}"


def _mtime_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    if text is not None:
        try:
            return int(Decimal(text).scaleb(9).to_integral_value(ROUND_FLOOR))
        except (InvalidOperation, ValueError):
            pass
    return int(member.mtime * _NS)


# ---------------------------------------------------------------------------------------------
# Dump


class _PaxInfo(tarfile.TarInfo):
    """tarfile's TarInfo, except for PAX headers whose only non-UTF-8 values are xattr values:
    those are written as raw bytes without the `hdrcharset=BINARY` record tarfile would add
    (it is meant for names; GNU tar, which writes xattr values raw, warns about the record).
    tarfile reads them back the same (a value that is not UTF-8 is decoded with
    surrogateescape). Anything else, non-UTF-8 names included, is tarfile's own encoding."""

    @classmethod
    def _create_pax_generic_header(
        cls, pax_headers: Mapping[str, str], type: bytes, encoding: str
    ) -> bytes:
        raw = [k for k, v in pax_headers.items() if not _is_utf8(v)]
        if not raw or not all(k.startswith(file_xattrs.PAX_PREFIX) for k in raw):
            return cast(
                bytes,
                super()._create_pax_generic_header(pax_headers, type, encoding),  # type: ignore[misc]
            )
        records = bytearray()
        for keyword, value in pax_headers.items():
            key, data = keyword.encode("utf-8"), value.encode("utf-8", "surrogateescape")
            length = len(key) + len(data) + 3  # " ", "=", "\n"; plus its own digits:
            size = previous = 0
            while True:
                size = length + len(str(previous))
                if size == previous:
                    break
                previous = size
            records += str(size).encode("ascii") + b" " + key + b"=" + data + b"\n"
        info = {"name": "././@PaxHeader", "type": type, "size": len(records)}
        info["magic"] = tarfile.POSIX_MAGIC
        helpers = cast(Any, cls)
        header: bytes = helpers._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace")
        payload: bytes = helpers._create_payload(bytes(records))
        return header + payload


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return False
    return True


def _state(st: os.stat_result) -> tuple[int, int, int]:
    """What tells that a file changed: size, mtime and ctime (ctime also moves on a write that
    restores the mtime, and on chmod, chown and xattr changes)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
