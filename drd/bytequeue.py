"""A FIFO of byte pieces that hands bytes on without joining them unless it must.

A backup moves gigabytes through a few buffers (a child's stdout, a region's unconfirmed upload);
joining every piece into one big buffer costs a copy of every byte under the GIL and one big
allocation per buffer. Here pieces stay as they came; a piece cut at a boundary becomes a
memoryview of it, not a copy.
"""

from __future__ import annotations

import collections

Piece = bytes | memoryview


class ByteQueue:
    def __init__(self) -> None:
        self._pieces: collections.deque[Piece] = collections.deque()
        #: bytes queued
        self.size = 0

    def append(self, data: bytes) -> None:
        if data:
            # Kept as is until taken, so it must not change meanwhile: only bytes are immutable.
            self._pieces.append(data if type(data) is bytes else bytes(data))
            self.size += len(data)

    def peek(self, count: int) -> list[Piece]:
        """The first `count` bytes (count <= size) as pieces, left in the queue."""
        parts: list[Piece] = []
        wanted = count
        for piece in self._pieces:
            if not wanted:
                break
            part = piece if len(piece) <= wanted else memoryview(piece)[:wanted]
            parts.append(part)
            wanted -= len(part)
        return parts

    def drop(self, count: int) -> None:
        """Remove the first `count` bytes (count <= size)."""
        self.size -= count
        while count:
            piece = self._pieces.popleft()
            if len(piece) > count:
                self._pieces.appendleft(memoryview(piece)[count:])
                return
            count -= len(piece)

    def take(self, count: int) -> bytes:
        """Remove and return the first `count` bytes: the piece itself when one piece is
        exactly that, else one joined copy."""
        parts = self.peek(count)
        self.drop(count)
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    def clear(self) -> None:
        self._pieces.clear()
        self.size = 0
