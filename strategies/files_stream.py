"""The files strategy's bridge between the thread that runs tarfile (blocking reads and
writes of the tree) and the event loop (the dump and restore streams): a bounded channel of
chunks, and the worker that runs a blocking job beside it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from drd.strategies.files_tar import CHUNK_SIZE

_CHANNEL_CHUNKS = 4

T = TypeVar("T")


class _Closed(Exception):
    """The channel was closed: the other side gave up."""


class _EndOfStream:
    pass


_EOF = _EndOfStream()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Channel:
    """A FIFO of at most `capacity` items between the event loop and one thread.

    The loop side (`put`, `get`) never blocks a thread; the thread side (`put_sync`,
    `get_sync`) blocks. `close()`, from either side, abandons the channel: every pending and
    later operation on both sides raises _Closed.
    """

    def __init__(self, capacity: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._items: deque[object] = deque()
        self._capacity = capacity
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def _notify_loop(self) -> None:  # called with the lock held
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                self._loop.call_soon_threadsafe(_wake, waiter)

    async def put(self, item: object) -> None:
        while True:
            with self._cond:
                if self._closed:
                    raise _Closed
                if len(self._items) < self._capacity:
                    self._items.append(item)
                    self._cond.notify_all()
                    return
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def get(self) -> object:
        while True:
            with self._cond:
                if self._closed:
                    raise _Closed
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def put_sync(self, item: object) -> None:
        with self._cond:
            while not self._closed and len(self._items) >= self._capacity:
                self._cond.wait()
            if self._closed:
                raise _Closed
            self._items.append(item)
            self._notify_loop()

    def get_sync(self) -> object:
        with self._cond:
            while not self._closed and not self._items:
                self._cond.wait()
            if self._closed:
                raise _Closed
            item = self._items.popleft()
            self._notify_loop()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
            self._notify_loop()


class _Worker(Generic[T]):
    """Runs `fn` in a dedicated thread (not the default executor: it may run for hours and
    must not starve it). `result()` / `settle()` return only once the thread has ended."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, exc: BaseException | None) -> None:
            if self._future.done():
                return
            if exc is not None:
                self._future.set_exception(exc)
            else:
                self._future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                outcome: tuple[T | None, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(deliver, *outcome)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    async def result(self) -> T:
        """What `fn` returned (or raised). Cancelling the caller does not stop the thread."""
        try:
            return await asyncio.shield(self._future)
        finally:
            if self._future.done():
                # It delivered its outcome as its very last action: this join is immediate.
                self._thread.join()

    async def settle(self) -> None:
        """Wait for the thread to end, ignoring its outcome."""
        with contextlib.suppress(BaseException):
            await self.result()


class _ChannelWriter:
    """File-like sink for tarfile: cuts what it is given into CHUNK_SIZE items."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK_SIZE:
            self._channel.put_sync(bytes(self._buf[:CHUNK_SIZE]))
            del self._buf[:CHUNK_SIZE]
        return len(data)

    def finish(self) -> None:
        if self._buf:
            self._channel.put_sync(bytes(self._buf))
            self._buf.clear()
        self._channel.put_sync(_EOF)


class _ChannelReader:
    """File-like source for tarfile, reading the chunks put into a channel until _EOF."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._view = memoryview(b"")
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while not self._view:
            if self._eof:
                return b""
            item = self._channel.get_sync()
            if item is _EOF:
                self._eof = True
                return b""
            assert isinstance(item, bytes)
            self._view = memoryview(item)
        n = len(self._view) if size < 0 else size
        out = bytes(self._view[:n])
        self._view = self._view[n:]
        return out

    def drain(self) -> int:
        """Read (and discard) up to the end of the stream; the number of bytes skipped."""
        skipped = 0
        while data := self.read(CHUNK_SIZE):
            skipped += len(data)
        return skipped


# ---------------------------------------------------------------------------------------------
# mtimes with nanoseconds
