"""The parallel PostgreSQL dump (`format: parallel`): sections as small archives, each table's
rows copied by one of `jobs` sessions at once, all in the dump's exported snapshot, framed into
one stream (drd.strategies.postgres_frames).

Which relations have rows to copy, and with which column list, is pg_dump's own decision: drd
reads the TABLE DATA entries from the table of contents of `pg_dump --section=data` (written
before any row; the child is stopped there). So partitions are copied leaf by leaf, an
inheritance parent without its children (COPY TO never includes them), generated columns are
left out, unlogged tables are copied, and `exclude_tables` leave no data, exactly as pg_dump
does. The tables copied here are locked (ACCESS SHARE) in a session of the snapshot until the
dump ends, as pg_dump's leader locks them. Extensions' configuration tables
(pg_extension_config_dump, whose rows pg_dump may filter) and any table whose statement drd does
not recognise are left to pg_dump, in the data remainder.

Each table is copied by its own `psql` with pg_dump's session settings (ISO dates, exact float
digits, row security off) in a REPEATABLE READ READ ONLY transaction that imports the snapshot
(`SET TRANSACTION SNAPSHOT`, as `pg_dump -j` workers do); largest tables first. The data
remainder is `pg_dump --section=data` with every table copied here excluded
(`--exclude-table-data`, each name quoted so it matches only itself): sequence values and large
objects, in pg_dump's format. Memory is bounded: at most `2 * jobs` frames of at most 1 MiB wait
for the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from drd.errors import SourceError
from drd.strategies import postgres_frames as frames
from drd.strategies._subprocess import ToolError, redact, stream_stdout
from drd.strategies.postgres_conn import _Conn
from drd.strategies.postgres_toc import TableData, TocScanner

CHUNK_SIZE = 1 << 20
#: when the source does not say, one session per core of this machine, up to this many
MAX_DEFAULT_JOBS = 8
#: what pg_dump sets in its own session, so COPY writes the values as pg_dump would
_SESSION = (
    "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits TO 3; "
    "SET row_security = off; SET statement_timeout = 0; SET lock_timeout = 0; "
    "SET idle_in_transaction_session_timeout = 0; SET synchronize_seqscans TO off"
)
_COPY_FROM = b" FROM stdin;"

_SIZES_SQL = """
SELECT c.oid::int8, c.relpages,
       c.oid IN (SELECT unnest(e.extconfig) FROM pg_catalog.pg_extension e)
FROM pg_catalog.pg_class c WHERE c.oid = ANY(%s::oid[])
"""


def default_jobs() -> int:
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


def copy_to(table: TableData) -> bytes | None:
    """pg_dump's COPY ... FROM stdin turned into the COPY ... TO stdout that reads the same
    columns; None if the statement is not of that shape."""
    statement = table.copy.rstrip(b"\n")
    if not statement.startswith(b"COPY ") or not statement.endswith(_COPY_FROM):
        return None
    return statement[: -len(_COPY_FROM)] + b" TO stdout"


def pattern(table: TableData) -> str:
    """A pg_dump table pattern matching exactly this table: both parts double-quoted (pattern
    characters are literal there), quotes doubled; in the archive's bytes, as argv carries them."""

    def quoted(name: bytes) -> bytes:
        return b'"' + name.replace(b'"', b'""') + b'"'

    return os.fsdecode(quoted(table.namespace) + b"." + quoted(table.tag))


@dataclass
class ParallelDump:
    """One parallel dump's children and what it learnt; `stream()` produces the bytes."""

    dsn: str
    pg_dump: str
    psql: str
    conn: _Conn
    snapshot: str
    jobs: int
    exclude_tables: Sequence[str]
    where: str
    #: the TOC of the data remainder (sequence values), once streamed
    rest_toc: TocScanner | None = None
    #: tables copied in parallel
    tables: int = 0

    def _pg_dump(self, *args: str) -> list[str]:
        return [
            self.pg_dump,
            "--format=custom",
            "--compress=0",
            "--no-password",
            f"--snapshot={self.snapshot}",
            *(f"--exclude-table={t}" for t in self.exclude_tables),
            *args,
            *self.conn.dbname_arg(),
        ]

    def _failed(self, what: str, exc: Exception) -> SourceError:
        return SourceError(f"{self.where}: {what} failed: {redact(str(exc), [self.conn.password])}")

    async def _table_data(self) -> tuple[list[TableData], str]:
        """The TABLE DATA entries pg_dump would write, and the archive's encoding."""
        toc = TocScanner()
        try:
            async with contextlib.aclosing(
                stream_stdout(self._pg_dump("--section=data"), self.conn.env(), chunk_size=1 << 16)
            ) as stream:
                async for chunk in stream:
                    toc.feed(chunk)
                    if toc.done or toc.error is not None:
                        break
        except ToolError as exc:
            raise self._failed("pg_dump (reading which tables have data)", exc) from None
        try:
            found = toc.finish()
        except Exception as exc:
            raise self._failed("reading pg_dump's table of contents", exc) from None
        return found.table_data, found.encoding

    async def _order(self, tables: list[TableData]) -> list[tuple[TableData, bytes]]:
        """The tables to copy here with their COPY TO, largest first."""
        import psycopg

        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as db:
                cur = await db.execute(_SIZES_SQL, ([t.oid for t in tables],))
                facts = {
                    int(oid): (int(pages), bool(ext)) for oid, pages, ext in await cur.fetchall()
                }
        except psycopg.Error as exc:
            raise self._failed("reading the table sizes", exc) from None
        chosen: list[tuple[int, TableData, bytes]] = []
        for table in tables:
            pages, extension_config = facts.get(table.oid, (0, False))
            statement = copy_to(table)
            if statement is not None and not extension_config:
                chosen.append((pages, table, statement))
        chosen.sort(key=lambda c: -c[0])
        return [(t, s) for _, t, s in chosen]

    async def _sections(
        self, section: str, kind: bytes, *extra: str
    ) -> AsyncGenerator[bytes, None]:
        toc = TocScanner() if kind == frames.DATA_REST else None
        try:
            async with contextlib.aclosing(
                stream_stdout(
                    self._pg_dump(f"--section={section}", *extra),
                    self.conn.env(),
                    chunk_size=CHUNK_SIZE,
                )
            ) as stream:
                async for chunk in stream:
                    if toc is not None and not toc.done:
                        toc.feed(chunk)
                    yield frames.frame(kind, 0, chunk)
        except ToolError as exc:
            raise self._failed(f"pg_dump --section={section}", exc) from None
        if toc is not None:
            self.rest_toc = toc

    @contextlib.asynccontextmanager
    async def _locked(self, chosen: list[tuple[TableData, bytes]]) -> AsyncIterator[None]:
        """ACCESS SHARE locks on the tables copied here, held in a session of the snapshot
        until the dump ends, as pg_dump's leader holds them: a TRUNCATE or ALTER TABLE
        meanwhile (neither MVCC-safe) waits instead of changing what a later COPY reads."""
        import psycopg
        from psycopg import sql

        if not chosen:
            yield
            return
        try:
            db = await psycopg.AsyncConnection.connect(self.dsn)
        except psycopg.Error as exc:
            raise self._failed("locking the tables", exc) from None
        try:
            try:
                await db.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await db.set_read_only(True)
                await db.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot))
                )
                await db.execute("SET idle_in_transaction_session_timeout = 0")
                # With an empty search_path every name comes back schema-qualified and quoted.
                await db.execute("SELECT pg_catalog.set_config('search_path', '', true)")
                cur = await db.execute(
                    "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c "
                    "WHERE c.oid = ANY(%s::oid[])",
                    ([t.oid for t, _ in chosen],),
                )
                names = [sql.SQL(str(r[0])) for r in await cur.fetchall()]
                await db.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.SQL(", ").join(names))
                )
            except psycopg.Error as exc:
                raise self._failed("locking the tables", exc) from None
            yield
        finally:
            await db.close()

    async def stream(self) -> AsyncGenerator[bytes, None]:
        tables, encoding = await self._table_data()
        chosen = await self._order(tables) if tables else []
        async with self._locked(chosen), contextlib.aclosing(self._stream(chosen, encoding)) as out:
            async for piece in out:
                yield piece

    async def _stream(
        self, chosen: list[tuple[TableData, bytes]], encoding: str
    ) -> AsyncGenerator[bytes, None]:
        yield frames.MAGIC
        excluded = [f"--exclude-table-data={pattern(t)}" for t, _ in chosen]
        # Each part closed at once when the consumer stops early: that kills its children.
        for part in (
            self._sections("pre-data", frames.PRE_DATA),
            self._tables(chosen, encoding),
            self._sections("data", frames.DATA_REST, *excluded),
            self._sections("post-data", frames.POST_DATA),
        ):
            async with contextlib.aclosing(part) as pieces:
                async for piece in pieces:
                    yield piece
        self.tables = len(chosen)
        yield frames.end_frame(len(chosen))

    async def _tables(
        self, chosen: list[tuple[TableData, bytes]], encoding: str
    ) -> AsyncGenerator[bytes, None]:
        if not chosen:
            return
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Producers wait for room; the end markers do not, so a failed worker never blocks.
        room = asyncio.Semaphore(2 * self.jobs)
        todo = list(enumerate(chosen, start=1))
        todo.reverse()
        env = self.conn.env()
        if encoding:
            env["PGCLIENTENCODING"] = encoding
        failures: list[BaseException] = []

        async def put(piece: bytes) -> None:
            await room.acquire()
            out.put_nowait(piece)

        async def copy_one(number: int, table: TableData, statement: bytes) -> None:
            argv = [
                self.psql,
                "-X",
                "-q",
                "--no-password",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                "-c",
                f"SET TRANSACTION SNAPSHOT '{self.snapshot}'",
                "-c",
                _SESSION,
                "-c",
                os.fsdecode(statement),
                "-c",
                "COMMIT",
                *self.conn.dbname_arg(),
            ]
            await put(frames.frame(frames.TABLE_BEGIN, number, table.copy))
            try:
                async with contextlib.aclosing(
                    stream_stdout(argv, env, chunk_size=CHUNK_SIZE)
                ) as stream:
                    async for chunk in stream:
                        await put(frames.frame(frames.TABLE_DATA, number, chunk))
            except ToolError as exc:
                name = os.fsdecode(table.namespace + b"." + table.tag)
                raise self._failed(f"copying the rows of {name}", exc) from None
            await put(frames.frame(frames.TABLE_END, number))

        async def worker() -> None:
            try:
                while todo:
                    number, (table, statement) = todo.pop()
                    await copy_one(number, table, statement)
            except Exception as exc:
                failures.append(exc)
            finally:
                out.put_nowait(None)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.jobs, len(chosen)))]
        running = len(workers)
        try:
            while running:
                piece = await out.get()
                if piece is None:
                    running -= 1
                    if failures:
                        raise failures[0]
                    continue
                room.release()
                yield piece
        finally:
            for task in workers:
                task.cancel()
            await asyncio.wait(workers)
