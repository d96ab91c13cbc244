"""The archive format of gcs-bucket backups: a POSIX tar stream in PAX format, one member per
object, with the object's properties in `DRD.gcs.*` PAX records (drd.strategies.gcs_bucket's
docstring lists them). Written and read here without tarfile's file object, so a member is
streamed in the pieces it arrives in; shared by the bucket restore and the local-directory one
(drd.strategies.gcs_bucket_local).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

from drd.errors import RestoreError

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records

PAX = "DRD.gcs."
PROPERTIES = (
    "content_type",
    "content_encoding",
    "content_language",
    "content_disposition",
    "cache_control",
)


def object_digest(content_sha256: str, properties: Mapping[str, Any]) -> str:
    """The digest listed for one object: its content and its properties (content type, ...,
    custom metadata), so that a restored object matches only if all of them came back."""
    text = json.dumps(
        {"sha256": content_sha256, **dict(properties)}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Tar framing


def member_header(rel: str, size: int, mtime: float, pax: dict[str, str]) -> bytes:
    info = tarfile.TarInfo(rel if rel and not rel.endswith("/") else (rel or ".") + "_")
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: "<len> <key>=<value>\\n"."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("bad PAX record length")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class Reader:
    """Exact reads from an async iterator of chunks (buffering at most one chunk)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._it = chunks.__aiter__()
        self._buf = bytearray()
        self.total = 0

    async def _fill(self) -> bool:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            return False
        self.total += len(chunk)
        self._buf += chunk
        return True

    async def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                raise RestoreError("the archive ended in the middle of a member")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def pieces(self, n: int) -> AsyncIterator[bytes]:
        """`n` bytes, in the pieces they arrive in."""
        left = n
        while left:
            if not self._buf and not await self._fill():
                raise RestoreError("the archive ended in the middle of a member")
            take = bytes(self._buf[:left])
            del self._buf[: len(take)]
            left -= len(take)
            yield take

    async def drain(self) -> None:
        """Consume the rest (its end-of-stream checks must run)."""
        self._buf.clear()
        while await self._fill():
            self._buf.clear()


async def read_member(reader: Reader) -> tuple[str, int, dict[str, str]] | None:
    """The next member's (name, size, PAX records); None at the end of the archive."""
    block = await reader.read_exact(BLOCK)
    if block == bytes(BLOCK):
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        pax: dict[str, str] = {}
        if info.type == tarfile.XHDTYPE:
            records = await reader.read_exact(info.size + len(padding(info.size)))
            pax = _parse_pax(records[: info.size])
            info = tarfile.TarInfo.frombuf(
                await reader.read_exact(BLOCK), "utf-8", "surrogateescape"
            )
    except (tarfile.TarError, ValueError, UnicodeDecodeError) as exc:
        raise RestoreError(f"not a valid archive: {exc}") from None
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise RestoreError(f"unexpected archive member type {info.type!r}")
    pax.setdefault("mtime", str(info.mtime))  # the object's last update (restored as mtime)
    size = int(pax.get("size", info.size))
    rel = pax.get(f"{PAX}name", pax.get("path", info.name))
    return rel, size, pax


def member_properties(pax: Mapping[str, str], where: str) -> dict[str, Any]:
    """An archived object's properties (content type, ..., custom metadata), as listed in its
    digest (object_digest)."""
    props: dict[str, Any] = {}
    for key in PROPERTIES:
        if f"{PAX}{key}" in pax:
            props[key] = pax[f"{PAX}{key}"]
    try:
        metadata = json.loads(pax.get(f"{PAX}metadata", "{}"))
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise RestoreError(f"{where}: malformed metadata record")
    props["metadata"] = metadata
    return props
