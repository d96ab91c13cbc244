"""Restoring a parallel PostgreSQL dump (drd.strategies.postgres_frames) into the staging
database: pre-data with pg_restore in one transaction, then the tables' rows through `jobs`
COPY sessions fed by a demultiplexer, then the data remainder with pg_restore, then post-data
(indexes, constraints, triggers) with `pg_restore --jobs` from a temporary file.

The restore uses as many COPY sessions as the dump had: the dump never has more tables open at
once, so every table that has begun has a session reading it and the demultiplexer never waits
on a table nobody reads. Each table's queue holds at most TABLE_QUEUE frames (1 MiB each), so
memory is bounded by `jobs` whatever the tables' sizes. The post-data archive holds definitions
only; it is written to a private temporary directory because `pg_restore --jobs` needs a file,
and the stream is read to its end (where the pipeline authenticates it) before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import Any

from drd.errors import RestoreError
from drd.strategies import postgres_frames as frames
from drd.strategies._subprocess import feed_stdin
from drd.strategies.postgres_toc import DatabaseEntries, TocWatcher

TABLE_QUEUE = 4
#: the tables for the COPY sessions: (COPY ... FROM stdin, its rows ending with None), or None
Work = asyncio.Queue[tuple[bytes, asyncio.Queue[bytes | None]] | None]


def copy_session(toast: str) -> list[str]:
    """What pg_restore's own session sets, for the COPY sessions; and lz4 TOAST when the restore
    chose it (drd.strategies.postgres)."""
    return [
        "SET statement_timeout = 0",
        "SET lock_timeout = 0",
        "SET idle_in_transaction_session_timeout = 0",
        "SET DateStyle = ISO",
        "SET IntervalStyle = postgres",
        "SET standard_conforming_strings = on",
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SET check_function_bodies = false",
        "SET xmloption = content",
        "SET client_min_messages = warning",
        "SET row_security = off",
        *(["SET default_toast_compression = lz4"] if toast == "lz4" else []),
    ]


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def restore_parallel(
    chunks: AsyncIterator[bytes],
    *,
    pg_restore: Sequence[str],
    env: dict[str, str],
    staging_dsn: str,
    session: Sequence[str],
    jobs: int,
    where: str,
) -> tuple[DatabaseEntries, str]:
    """Restore the stream into the staging database. `pg_restore` is its argv without the
    options that differ per step; `session` the SET statements every COPY session runs first.
    Returns the database-level entries of the pre-data archive and pg_restore's warnings."""
    reader = frames.FrameReader(chunks)
    first = await reader.peek()
    if first is None or first.kind != frames.PRE_DATA:
        raise frames.FrameError("the dump does not start with its pre-data archive")
    pre = TocWatcher(reader.payloads(frames.PRE_DATA))
    warnings = [await feed_stdin([*pg_restore, "--single-transaction"], env, pre)]
    entries = pre.scanner.finish()
    encoding = entries.encoding
    setup = [*session, *([f"SET client_encoding TO '{encoding}'"] if encoding else [])]
    tables = await _copy_tables(reader, staging_dsn, setup, jobs, where)
    warnings.append(
        await feed_stdin(
            [*pg_restore, "--single-transaction"], env, reader.payloads(frames.DATA_REST)
        )
    )
    with tempfile.TemporaryDirectory(prefix="drd-post-data-") as tmp:
        path = os.path.join(tmp, "post-data.dump")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            async for payload in reader.payloads(frames.POST_DATA):
                out.write(payload)
        end = await reader.next()
        if end is None or end.kind != frames.END:
            raise frames.FrameError("the dump ended before its end frame")
        if frames.end_count(end.payload) != tables:
            raise frames.FrameError(
                f"the dump says it holds {frames.end_count(end.payload)} tables; "
                f"{tables} were in it"
            )
        if await reader.next() is not None:
            raise frames.FrameError("bytes follow the dump's end frame")
        warnings.append(await feed_stdin([*pg_restore, f"--jobs={jobs}", path], env, _nothing()))
    return entries, "\n".join(w for w in warnings if w)


async def demultiplex(reader: frames.FrameReader, jobs: int, work: Work) -> int:
    """Hand each table to the sessions (`work`: its COPY statement and the queue of its rows,
    None once per session at the end) and its rows to its queue, until the tables' frames
    end; returns how many tables there were. FrameError if the frames are not a dump's."""
    open_tables: dict[int, asyncio.Queue[bytes | None]] = {}
    count = 0
    kinds = (frames.TABLE_BEGIN, frames.TABLE_DATA, frames.TABLE_END)
    while (got := await reader.peek()) is not None and got.kind in kinds:
        await reader.next()
        if got.kind == frames.TABLE_BEGIN:
            if got.stream in open_tables or len(open_tables) >= jobs:
                raise frames.FrameError(
                    f"table {got.stream} begins while {len(open_tables)} tables are open "
                    f"({jobs} sessions)"
                )
            rows: asyncio.Queue[bytes | None] = asyncio.Queue(TABLE_QUEUE)
            open_tables[got.stream] = rows
            work.put_nowait((got.payload, rows))
            count += 1
            continue
        queue = open_tables.get(got.stream)
        if queue is None:
            raise frames.FrameError(f"rows of table {got.stream}, which has not begun")
        if got.kind == frames.TABLE_DATA:
            await queue.put(got.payload)
        else:
            del open_tables[got.stream]
            await queue.put(None)
    if open_tables:
        raise frames.FrameError(f"the dump ended inside table {min(open_tables)}")
    for _ in range(jobs):
        work.put_nowait(None)
    return count


async def _copy_tables(
    reader: frames.FrameReader, dsn: str, setup: list[str], jobs: int, where: str
) -> int:
    """Load every table's frames through `jobs` sessions; returns how many tables there were."""
    import psycopg

    work: Work = asyncio.Queue()

    async def copier() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
            for statement in setup:
                await db.execute(statement)
            while (job := await work.get()) is not None:
                copy_from, rows = job
                async with db.cursor() as cur, cur.copy(copy_from) as copy:
                    while (piece := await rows.get()) is not None:
                        await copy.write(piece)

    demux = asyncio.ensure_future(demultiplex(reader, jobs, work))
    copiers = [asyncio.ensure_future(copier()) for _ in range(jobs)]
    tasks: list[asyncio.Future[Any]] = [demux, *copiers]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()
    if not demux.done() or demux.cancelled():
        raise RestoreError(f"{where}: the tables' rows were not all loaded")
    return int(demux.result())
