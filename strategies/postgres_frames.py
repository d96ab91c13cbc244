"""The byte layout of a parallel PostgreSQL dump: framed pieces of several streams in one.

A parallel dump is produced by several sessions at once (drd.strategies.postgres_parallel) but
stored as the one plaintext stream every backup is. Each piece is a frame: a kind byte, a 4-byte
stream number and a 4-byte payload length (big-endian), then the payload. The stream starts
with MAGIC; its frames, in this order:

- `P` pieces of the pre-data archive (pg_dump custom format), stream 0;
- per table: `T` (the COPY ... FROM stdin statement that loads it), `D` pieces of its COPY
  data, `E` (its end), under the table's own stream number; the tables' frames interleave in
  the order the dump's sessions produced them, and at most `jobs` tables are open at once;
- `R` pieces of the rest of the data section (sequence values, large objects, the tables left
  to pg_dump) as a custom-format archive, then `Q` pieces of the post-data archive;
- `Z`, whose payload is the number of tables, then nothing.

The restore reads it front to back with bounded memory: a frame's payload is at most
MAX_PAYLOAD bytes, and the reader holds one frame at a time.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from drd.bytequeue import ByteQueue

MAGIC = b"DRDPGPAR\x01\n"
PRE_DATA = b"P"
TABLE_BEGIN = b"T"
TABLE_DATA = b"D"
TABLE_END = b"E"
DATA_REST = b"R"
POST_DATA = b"Q"
END = b"Z"
_KINDS = frozenset({PRE_DATA, TABLE_BEGIN, TABLE_DATA, TABLE_END, DATA_REST, POST_DATA, END})
_HEADER = struct.Struct(">cII")
#: a frame's payload never exceeds this: the restore's memory bound per frame
MAX_PAYLOAD = 4 << 20


class FrameError(Exception):
    """The stream is not a well-formed parallel dump."""


@dataclass(frozen=True)
class Frame:
    kind: bytes
    stream: int
    payload: bytes


def frame(kind: bytes, stream: int, payload: bytes = b"") -> bytes:
    if kind not in _KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(kind, stream, len(payload)) + payload


def end_frame(tables: int) -> bytes:
    return frame(END, 0, struct.pack(">I", tables))


def end_count(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError("the end frame is damaged")
    return int(struct.unpack(">I", payload)[0])


class FrameReader:
    """The frames of a chunk stream, one at a time (`next`, `peek`); FrameError on a stream that
    does not start with MAGIC, a damaged header, or an end inside a frame."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = ByteQueue()
        self._eof = False
        self._started = False
        self._peeked: Frame | None = None

    async def _fill(self, size: int) -> bool:
        while self._buf.size < size and not self._eof:
            try:
                self._buf.append(await self._chunks.__anext__())
            except StopAsyncIteration:
                self._eof = True
        return self._buf.size >= size

    async def _read(self) -> Frame | None:
        if not self._started:
            if not await self._fill(len(MAGIC)) or self._buf.take(len(MAGIC)) != MAGIC:
                raise FrameError("not a drd parallel PostgreSQL dump (no header)")
            self._started = True
        if not await self._fill(1):
            return None
        if not await self._fill(_HEADER.size):
            raise FrameError("the stream ended inside a frame header")
        kind, stream, length = _HEADER.unpack(self._buf.take(_HEADER.size))
        if kind not in _KINDS:
            raise FrameError(f"unknown frame kind {kind!r}")
        if length > MAX_PAYLOAD:
            raise FrameError(f"a frame of {length} bytes exceeds {MAX_PAYLOAD}")
        if not await self._fill(length):
            raise FrameError("the stream ended inside a frame")
        return Frame(kind, stream, self._buf.take(length) if length else b"")

    async def peek(self) -> Frame | None:
        """The next frame, left to be read; None at the end of the stream."""
        if self._peeked is None:
            self._peeked = await self._read()
        return self._peeked

    async def next(self) -> Frame | None:
        got = await self.peek()
        self._peeked = None
        return got

    async def payloads(self, kind: bytes) -> AsyncIterator[bytes]:
        """The payloads of the consecutive frames of `kind` from here on."""
        while (got := await self.peek()) is not None and got.kind == kind:
            self._peeked = None
            yield got.payload
