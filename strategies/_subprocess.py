"""Running a source tool (pg_dump, pg_restore, ...) as a child process, streaming its data.

Two shapes, both with bounded memory whatever the data size:

- `stream_stdout`: an async generator of the child's stdout in ~chunk_size pieces. The exit code
  is checked after stdout reached EOF; a non-zero exit raises ToolError *instead of* ending the
  stream normally, so a consumer never mistakes a failed dump for a complete one.
- `feed_stdin`: writes an async iterator of chunks into the child's stdin, then checks the exit
  code. The iterator is always consumed to its end on success, even when the child stopped
  reading early: its own end-of-stream check is what proves the data was complete.

Both drain stderr concurrently (a child blocked on a full stderr pipe would deadlock) and keep
only its last STDERR_TAIL_BYTES for error messages. On any exception, cancellation or aclose()
the child is killed and reaped before the exception propagates: no orphan keeps a database
connection or a snapshot open.

The child's environment is passed explicitly; secrets (passwords) travel there, never in argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

from drd.bytequeue import ByteQueue

STDERR_TAIL_BYTES = 8 * 1024
# How long cleanup waits for a killed child's pipes to reach EOF (a grandchild could hold them).
_REAP_TIMEOUT = 10.0
# Pipes to and from the child: Linux's default 64 KiB makes the child and this process take
# turns in 64 KiB steps (a wakeup and an event-loop round per step); 1 MiB (the unprivileged
# maximum, /proc/sys/fs/pipe-max-size) lets both run at once and read in large pieces.
PIPE_SIZE = 1 << 20


class ToolError(Exception):
    """The child could not be started or exited non-zero.

    `returncode` is None when the program could not be started at all. The message holds the
    program name, the exit status and the stderr tail, exactly as the tool wrote them: callers
    must redact secrets before showing it (see `redact`).
    """

    def __init__(self, program: str, returncode: int | None, stderr_tail: str) -> None:
        self.program = program
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        if returncode is None:
            status = "could not be started"
        elif returncode < 0:
            status = f"was killed by signal {-returncode}"
        else:
            status = f"exited with status {returncode}"
        detail = f": {stderr_tail}" if stderr_tail else ""
        super().__init__(f"{program} {status}{detail}")


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """`text` with every non-empty secret replaced by '***'."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _enlarge_pipe(transport: asyncio.BaseTransport | None) -> None:
    """Best effort: give the pipe behind `transport` PIPE_SIZE bytes of buffer."""
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class _Tail:
    """The last `limit` bytes written to it."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._limit:
            del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        return self._buf.decode("utf-8", "replace").strip()


async def _collect_stderr(stream: asyncio.StreamReader, tail: _Tail) -> None:
    while data := await stream.read(64 * 1024):
        tail.add(data)


class _Pieces:
    """A child's stdout as the bytes objects the event loop read from the pipe.

    asyncio's StreamReader copies every byte twice on the way (into its buffer, then out of it
    for readexactly), on the event loop's thread, under the GIL; a dump is gigabytes. Here a
    chunk is handed on as read whenever one read filled it (the pipe was full: the consumer is
    the bottleneck), and joined from smaller reads otherwise. Reading pauses above
    `high_water` bytes, so memory stays bounded.
    """

    def __init__(self, high_water: int) -> None:
        self._queue = ByteQueue()
        self._high_water = high_water
        self.eof = False
        self._pipe: asyncio.ReadTransport | None = None
        self._paused = False
        self._discarding = False
        self._waiter: asyncio.Future[None] | None = None

    def attach(self, pipe: asyncio.ReadTransport, read_size: int) -> None:
        self._pipe = pipe
        # One read per callback of up to a whole chunk (asyncio reads 256 KiB by default).
        with contextlib.suppress(AttributeError):
            pipe.max_size = read_size  # type: ignore[attr-defined]

    @property
    def size(self) -> int:
        return self._queue.size

    def feed(self, data: bytes) -> None:
        if self._discarding or not data:
            return
        self._queue.append(data)
        if self.size >= self._high_water and not self._paused and self._pipe is not None:
            self._pipe.pause_reading()
            self._paused = True
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_for(self, size: int) -> None:
        """Until `size` bytes are buffered or the pipe reached EOF."""
        while self.size < size and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self, size: int) -> bytes:
        """Exactly `size` bytes (size <= self.size)."""
        chunk = self._queue.take(size)
        if self._paused and self.size < self._high_water // 2 and self._pipe is not None:
            self._paused = False
            self._pipe.resume_reading()
        return chunk

    def take_all(self) -> bytes:
        return self.take(self.size) if self.size else b""

    def discard(self) -> None:
        """Drop what is buffered and whatever comes, reading on to EOF (cleanup)."""
        self._discarding = True
        self._queue.clear()
        if self._paused and self._pipe is not None:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self._pipe.resume_reading()


class _ChildProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own subprocess protocol, except that stdout goes to `_Pieces` if given."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop, stdout: _Pieces | None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._pieces = stdout
        # `limit` is the chunk size the caller reads in: one pipe read may fill a whole chunk.
        self._read_size = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.SubprocessTransport)
        pipe = transport.get_pipe_transport(1)
        if self._pieces is not None and isinstance(pipe, asyncio.ReadTransport):
            self._pieces.attach(pipe, self._read_size)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd == 1 and self._pieces is not None:
            assert isinstance(data, bytes)
            self._pieces.feed(data)
        else:
            super().pipe_data_received(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self._pieces is not None:
            self._pieces.feed_eof()
        super().pipe_connection_lost(fd, exc)


class _Child:
    """One started child process plus the task draining its stderr."""

    def __init__(
        self, program: str, proc: asyncio.subprocess.Process, stdout: _Pieces | None = None
    ) -> None:
        self.program = program
        self.proc = proc
        self.stdout = stdout
        self.tail = _Tail()
        assert proc.stderr is not None
        self._stderr_task = asyncio.get_running_loop().create_task(
            _collect_stderr(proc.stderr, self.tail)
        )

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        limit: int = 2**16,
        pieces: _Pieces | None = None,
    ) -> _Child:
        """`pieces`: collect stdout there (stdout must be PIPE) instead of in proc.stdout."""
        program = os.path.basename(argv[0])
        loop = asyncio.get_running_loop()
        try:
            # What asyncio.create_subprocess_exec does, with our protocol.
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(limit, loop, pieces),
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
            )
            proc = asyncio.subprocess.Process(transport, protocol, loop)
        except OSError as exc:
            raise ToolError(program, None, f"{argv[0]}: {exc.strerror or exc}") from None
        # asyncio has no public handle on the child's stdout pipe; without it the pipe keeps
        # the default size, which is only slower.
        subprocess_transport = getattr(proc, "_transport", None)
        if stdout == asyncio.subprocess.PIPE and isinstance(
            subprocess_transport, asyncio.SubprocessTransport
        ):
            _enlarge_pipe(subprocess_transport.get_pipe_transport(1))
        if proc.stdin is not None:
            _enlarge_pipe(proc.stdin.transport)
        return cls(program, proc, pieces)

    async def finish(self) -> None:
        """Wait for a child whose input is complete; ToolError unless it exited 0."""
        returncode = await self.proc.wait()
        await self._stderr_task
        if returncode != 0:
            raise ToolError(self.program, returncode, self.tail.text())

    async def kill(self) -> None:
        """Kill (if still running) and reap the child; close every pipe. Never raises."""
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if proc.stdin is not None and not proc.stdin.transport.is_closing():
            proc.stdin.transport.abort()
        if self.stdout is not None:
            self.stdout.discard()
        try:
            async with asyncio.timeout(_REAP_TIMEOUT):
                if proc.stdout is not None:
                    # Reading to EOF lets the transport close itself (no ResourceWarning).
                    while await proc.stdout.read(2**16):
                        pass
                await proc.wait()
                await self._stderr_task
        except (TimeoutError, OSError):
            pass
        finally:
            if not self._stderr_task.done():
                self._stderr_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stderr_task


async def stream_stdout(
    argv: Sequence[str], env: Mapping[str, str], *, chunk_size: int = 1 << 20
) -> AsyncGenerator[bytes, None]:
    """Yield the child's stdout in chunks of `chunk_size` bytes (the last one may be shorter).

    Raises ToolError after stdout's EOF if the child exited non-zero (or could not start).
    Use with `contextlib.aclosing` so that an early exit kills the child at once.
    """
    pieces = _Pieces(high_water=2 * chunk_size)
    child = await _Child.start(
        argv,
        env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        limit=chunk_size,
        pieces=pieces,
    )
    finished = False
    try:
        while True:
            await pieces.wait_for(chunk_size)
            if pieces.size < chunk_size:  # EOF: what is left is the last chunk
                break
            yield pieces.take(chunk_size)
        await child.finish()
        finished = True
        tail = pieces.take_all()
        if tail:
            yield tail
    finally:
        if not finished:
            await child.kill()


async def feed_stdin(
    argv: Sequence[str], env: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> str:
    """Write `chunks` into the child's stdin, close it and wait for the child.

    Returns the child's stderr tail (warnings) on success. Raises ToolError if the child could
    not start or exited non-zero; any exception raised by `chunks` (and cancellation) kills the
    child and propagates unchanged. Should the child exit 0 before reading everything, the rest
    of `chunks` is still consumed (and discarded) so that the iterator's end-of-stream checks run.
    """
    child = await _Child.start(
        argv, env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
    )
    stdin = child.proc.stdin
    assert stdin is not None
    try:
        reading = True
        async for chunk in chunks:
            if not reading:
                continue
            try:
                stdin.write(chunk)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                # The child closed its stdin: either it failed (report that, not EPIPE) or it
                # has everything it needs; then keep draining the iterator to its end.
                await child.finish()
                reading = False
        if reading:
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()
        await child.finish()
    except BaseException:
        await child.kill()
        raise
    return child.tail.text()


class CountingStream:
    """Passes an async iterator of chunks through, counting bytes. A plain iterator rather than
    a generator, so there is nothing left to close when the consumer stops early."""

    def __init__(self, inner: AsyncIterator[bytes]) -> None:
        self._inner = inner
        self.bytes = 0

    def __aiter__(self) -> CountingStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._inner.__anext__()
        self.bytes += len(chunk)
        return chunk
