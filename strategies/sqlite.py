"""SQLite: one database file, copied with SQLite's online backup API.

Dump: the backup API (`sqlite3.Connection.backup`) writes a page-by-page copy into another
*database file*; it cannot write to a pipe. So the copy goes to a temp file in a private temp
directory (0700, from `tempfile`), which is then streamed out in 1 MiB chunks and deleted in
`finally` whatever happens. The copy is taken in a single backup step, under one read
transaction, so it is a consistent snapshot even while the application keeps writing (in WAL
mode writers are not blocked at all; in rollback-journal mode they wait for the copy). The
source is opened read-only (`file:...?mode=ro`); the copy needs disk space the size of the
database for the duration of the dump.

Restore: the chunks go to a hidden file next to the target (`.<name>.drd-partial-<random>`),
which is fsynced and checked with `PRAGMA integrity_check`, then linked into place (never
replacing a file that appeared meanwhile) and the directory fsynced. Any failure removes the
partial file; the target is never touched unless everything succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

from drd.errors import RestoreError, SourceError, TargetExists
from drd.strategies import sqlite_stats
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy

CHUNK_SIZE = 1 << 20
FORMAT = "sqlite3-database-file"
_HEADER = b"SQLite format 3\x00"


class SqliteOptions(SourceOptions):
    kind: Literal["sqlite"] = "sqlite"
    #: path of the database file
    path: str


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{path.absolute().as_uri()}?{query}"


def _backup(source: Path, dest: Path, queries: Mapping[str, str]) -> dict[str, Any]:
    """Copy `source` into the new database file `dest`; facts about the copy, and the
    restore-test statistics taken from it (drd.strategies.sqlite_stats)."""
    src = sqlite3.connect(_uri(source, mode="ro"), uri=True, timeout=60)
    try:
        dst = sqlite3.connect(dest)
        try:
            # pages=-1: the whole database in one step, i.e. one read transaction, one
            # snapshot. (Stepping would restart on every concurrent write and might never end.)
            src.backup(dst, pages=-1)
            page_size = dst.execute("PRAGMA page_size").fetchone()[0]
            page_count = dst.execute("PRAGMA page_count").fetchone()[0]
            user_version = dst.execute("PRAGMA user_version").fetchone()[0]
            statistics = sqlite_stats.collect(dst, queries)
        finally:
            dst.close()
        journal_mode = src.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        src.close()
    return {
        "page_size": page_size,
        "page_count": page_count,
        "user_version": user_version,
        "journal_mode": journal_mode,
        "statistics": statistics,
    }


def _check(path: Path) -> tuple[list[str], int]:
    """integrity_check messages ('ok' when sound) and the table count of a database file."""
    # immutable=1: nobody else uses the partial file; no -shm/-wal files are created.
    db = sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True)
    try:
        messages = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
        tables = db.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()
    finally:
        db.close()
    return messages, int(tables[0])


class SqliteStrategy(Strategy[SqliteOptions]):
    kind: ClassVar[str] = "sqlite"
    Options: ClassVar[type[SourceOptions]] = SqliteOptions
    # Restore tests: a database file in a scratch directory, checked like a database.
    scratch_kinds: ClassVar[tuple[str, ...]] = ("tempdir",)
    check_kinds: ClassVar[tuple[str, ...]] = ("sql", "freshness", "command")
    restored_as: ClassVar[str | None] = "sqlite"
    restored_name: ClassVar[str] = "restored.db"

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        source = Path(self.opts.path)
        where = f"source {self.opts.name!r} ({source})"
        mode = _source_mode(source, where)
        tmpdir = Path(tempfile.mkdtemp(prefix="drd-sqlite-"))  # mode 0700
        copy = tmpdir / "copy.sqlite"
        # The backup runs in a thread that cannot be interrupted: on cancellation, wait for it
        # before removing the directory it writes into.
        queries = dict(self.capture_queries)
        backup = asyncio.ensure_future(asyncio.to_thread(_backup, source, copy, queries))
        f: BinaryIO | None = None
        try:
            try:
                facts = await asyncio.shield(backup)
            except sqlite3.Error as exc:
                raise SourceError(f"{where}: backup failed: {exc}") from None
            f = await asyncio.to_thread(_open_read, copy)
            size = 0
            while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
                size += len(chunk)
                yield chunk
            self._metadata = {
                "format": FORMAT,
                "sqlite_version": sqlite3.sqlite_version,
                **facts,
                "size": size,
                "mode": mode,
            }
        finally:
            if f is not None:
                f.close()
            if not backup.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(backup)
            shutil.rmtree(tmpdir, ignore_errors=True)

    @classmethod
    async def restore(
        cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
    ) -> RestoreOutcome:
        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"restore into {target}: unsupported dump format {fmt!r}")
        path, partial, out = _prepare(target)
        where = f"restore into {path}"
        try:
            size = 0
            with out:
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
                await asyncio.to_thread(_flush_and_sync, out)
            if "size" in metadata and size != metadata["size"]:
                raise RestoreError(f"{where}: got {size} bytes, the dump had {metadata['size']}")
            tables = await asyncio.to_thread(_verify, partial, where)
            mode = int(metadata.get("mode", 0o600)) & 0o777
            await asyncio.to_thread(_link_into_place, partial, path, mode, where)
        except BaseException:
            _remove_partial(partial)
            raise
        return RestoreOutcome(
            target=str(path),
            details={"bytes": size, "tables": tables, "integrity_check": "ok"},
        )


def _source_mode(source: Path, where: str) -> int:
    try:
        st = source.stat()
    except OSError as exc:
        raise SourceError(f"{where}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{where}: not a file")
    return stat.S_IMODE(st.st_mode)


def _open_read(path: Path) -> BinaryIO:
    return open(path, "rb")


def _prepare(target: str) -> tuple[Path, Path, BinaryIO]:
    """Check the target; create the hidden partial file next to it."""
    path = Path(target).absolute()
    where = f"restore into {path}"
    if os.path.lexists(path):
        raise TargetExists(f"{where}: the target already exists")
    if not path.parent.is_dir():
        raise RestoreError(f"{where}: the directory {path.parent} does not exist")
    partial = path.with_name(f".{path.name}.drd-partial-{secrets.token_hex(4)}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RestoreError(f"{where}: cannot create {partial.name}: {exc.strerror}") from None
    return path, partial, open(fd, "wb")


def _verify(partial: Path, where: str) -> int:
    """Check that the file is a sound SQLite database; its table count."""
    with open(partial, "rb") as f:
        if f.read(len(_HEADER)) != _HEADER:
            raise RestoreError(f"{where}: the stream is not an SQLite database")
    try:
        messages, tables = _check(partial)
    except sqlite3.Error as exc:
        raise RestoreError(f"{where}: integrity check failed: {exc}") from None
    if messages != ["ok"]:
        raise RestoreError(f"{where}: integrity check failed: {'; '.join(messages[:5])}")
    return tables


def _remove_partial(partial: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{partial}{suffix}")


def _flush_and_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _link_into_place(partial: Path, path: Path, mode: int, where: str) -> None:
    """Move `partial` to `path` without ever replacing an existing file; fsync the directory."""
    os.chmod(partial, mode)
    try:
        os.link(partial, path)
    except FileExistsError:
        raise TargetExists(f"{where}: the target appeared during the restore") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise RestoreError(f"{where}: {exc.strerror}") from None
        # No hard links on this filesystem: check, then rename (a tiny race remains).
        if os.path.lexists(path):
            raise TargetExists(f"{where}: the target appeared during the restore") from None
        os.rename(partial, path)
    else:
        os.unlink(partial)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
