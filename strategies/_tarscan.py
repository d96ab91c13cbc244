"""Reading a tar stream as it passes: which members it has, and the contents of a few small ones.

pg_basebackup writes the cluster as a ustar archive (512-byte headers, data padded to 512). A
`TarScanner` is fed the stream in whatever pieces it arrives in and keeps, for the member names
it was asked about, their contents (or only their last `tail` bytes): nothing else is buffered
beyond one header, so a base backup of any size passes through in constant memory. It checks
what a reader would: every header's checksum, and that the archive ends with its two zero
blocks; a stream cut short or corrupted is a TarError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

BLOCK = 512


class TarError(Exception):
    """The stream is not a complete, well-formed tar archive."""


def _octal(field_bytes: bytes, what: str) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for large values
        value = int.from_bytes(field_bytes[1:], "big")
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"malformed tar header: {what} is not octal") from None


@dataclass
class _Wanted:
    tail: int | None  # None: keep everything
    data: bytearray = field(default_factory=bytearray)
    seen: bool = False


class TarScanner:
    def __init__(self, wanted: dict[str, int | None]) -> None:
        """`wanted`: member name -> how many of its last bytes to keep (None: all of it)."""
        self._wanted = {name: _Wanted(tail) for name, tail in wanted.items()}
        self._header = bytearray()
        self._member: _Wanted | None = None
        self._remaining = 0  # data bytes of the current member still to come
        self._padding = 0  # padding after it
        self._zero_blocks = 0
        self.finished = False
        self.members = 0
        self.bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.bytes += len(view)
        pos = 0
        n = len(view)
        while pos < n:
            if self.finished:
                # GNU tar and pg_basebackup may pad the archive to a record size with zeros.
                if any(view[pos:]):
                    raise TarError("data after the end of the tar archive")
                return
            if self._remaining:
                take = min(self._remaining, n - pos)
                if self._member is not None:
                    self._keep(self._member, view[pos : pos + take])
                self._remaining -= take
                pos += take
                continue
            if self._padding:
                take = min(self._padding, n - pos)
                self._padding -= take
                pos += take
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                self._parse_header(bytes(self._header))
                self._header.clear()

    @staticmethod
    def _keep(member: _Wanted, piece: memoryview) -> None:
        member.data += piece
        if member.tail is not None and len(member.data) > 2 * member.tail:
            del member.data[: len(member.data) - member.tail]

    def _parse_header(self, block: bytes) -> None:
        if not any(block):
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self.finished = True
            return
        if self._zero_blocks:
            raise TarError("a zero block inside the tar archive")
        stored = _octal(block[148:156], "checksum")
        computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
        if stored != computed:
            raise TarError("tar header checksum mismatch (corrupt stream)")
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:262] == b"ustar":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        size = _octal(block[124:136], "size")
        typeflag = block[156:157]
        self.members += 1
        text = name.decode("utf-8", "replace")
        while text.startswith("./"):
            text = text[2:]
        member = self._wanted.get(text) if typeflag in (b"0", b"\0") else None
        if member is not None:
            member.seen = True
            member.data.clear()
        self._member = member
        if typeflag in (b"0", b"\0", b"7", b"x", b"g", b"L", b"K"):
            self._remaining = size
            self._padding = -size % BLOCK
        else:  # directories, links, devices carry no data
            self._remaining = self._padding = 0

    def finish(self) -> None:
        """TarError unless the archive ended properly."""
        if not self.finished:
            raise TarError("the tar archive ended early (no end-of-archive blocks)")

    def member(self, name: str) -> bytes | None:
        """The kept bytes of `name` (its tail if a tail was asked for); None if it was not in
        the archive."""
        wanted = self._wanted[name]
        if not wanted.seen:
            return None
        data = bytes(wanted.data)
        return data if wanted.tail is None else data[-wanted.tail :]


class ScannedStream:
    """Passes an async iterator of chunks through a TarScanner (a plain iterator, nothing to
    close when the consumer stops early)."""

    def __init__(self, inner: AsyncIterator[bytes], scanner: TarScanner) -> None:
        self._inner = inner
        self.scanner = scanner

    def __aiter__(self) -> ScannedStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._inner.__anext__()
        self.scanner.feed(chunk)
        return chunk
