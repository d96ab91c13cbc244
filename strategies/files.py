"""Files: a directory tree as one POSIX tar stream (PAX format).

Dump: a worker thread walks the tree (sorted, depth first, never following symlinks) and writes
a PAX tar into a bounded channel that the async generator drains in 1 MiB chunks; memory stays
constant whatever the tree size (plus one sorted directory listing at a time, and the paths of
files with several hard links). Closing the generator closes the channel, which makes the thread
stop at its next write. Archived: regular files, directories (empty ones too), symlinks (as
links), hard links (as links to the first path archived), with mode, owner (uid/gid and names)
and mtime. Sockets, FIFOs and devices are skipped with a warning. A file that vanishes during the
dump is skipped with a warning; one that changes while being read is archived as read (padded
with zeros if it shrank) with a warning. A tree being written to has no single snapshot: each
file is copied as it is when read.

`exclude` globs are matched against paths relative to `path`: a pattern without "/" matches an
entry's name at any depth ("*.log", "__pycache__"); a pattern with "/" matches the whole relative
path ("cache/*", "data/tmp"); `*` also matches "/". An excluded directory is not descended into.

mtime precision: full nanoseconds. PAX stores the mtime as a decimal string; the dump writes the
exact `st_mtime_ns` ("1700000000.123456789") and the restore parses that string exactly (tarfile
itself would go through a float and keep only ~0.1-1 µs) and sets it with
`os.utime(ns=...)`, so st_mtime_ns survives bit for bit on filesystems with ns timestamps
(ext4, xfs, btrfs, tmpfs). Directory and symlink mtimes are restored too; atime is set to mtime.

Restore: a worker thread reads the tar from a bounded channel fed by the async chunks
(tarfile's streaming mode "r|") and extracts into a hidden staging directory next to the target
(`.<name>.drd-partial-<random>`). Every member passes a filter first: absolute names, ".."
components, device/FIFO members, hard links whose target is outside the tree, and any member
whose path would resolve outside the staging directory (through a symlink extracted earlier) are
refused and fail the restore. Symlinks are restored verbatim (they may point anywhere, as in the
source) but are never followed while extracting. Modes, owners (when running as root, by name
like GNU tar) and mtimes are applied after each file; directories get theirs at the end, deepest
first, after their contents. The staging tree is flushed (syncfs) and renamed onto the target
only after the stream ended cleanly. The target must not exist or be an empty directory (which
the rename then replaces); a mount point cannot be replaced this way and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fnmatch
import grp
import hashlib
import logging
import os
import pwd
import secrets
import stat
import tarfile
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, BinaryIO, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import Field

from drd.errors import RestoreError, SourceError, TargetExists
from drd.fsutil import remove_tree
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.file_digests import DigestList

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "tar-pax"
_CHANNEL_CHUNKS = 4
_NS = 10**9

T = TypeVar("T")


class FilesOptions(SourceOptions):
    kind: Literal["files"] = "files"
    #: the directory to back up
    path: str
    #: glob patterns (relative to path) of entries to leave out
    exclude: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# A bounded channel between the event loop and one worker thread


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


class _ExactReader:
    """Reads exactly `size` bytes of a file for tarfile, padding with zeros if it shrank."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size
        self.short = False
        # the archived bytes' digest, for the restore test's per-file digest list
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        parts: list[bytes] = []
        got = 0
        while got < want:
            data = self._f.read(want - got)
            if not data:
                self.short = True
                parts.append(bytes(want - got))
                got = want
                break
            parts.append(data)
            got += len(data)
        self._left -= got
        out = b"".join(parts)
        self.sha256.update(out)
        return out


class _Walker:
    """Writes the tree under `root` as a PAX tar (runs in the worker thread)."""

    def __init__(self, root: Path, exclude: list[str], where: str) -> None:
        self.root = root
        self.where = where
        self.name_patterns = [p.rstrip("/") for p in exclude if "/" not in p.rstrip("/")]
        self.path_patterns = [p.strip("/") for p in exclude if "/" in p.rstrip("/")]
        self.stats = {
            "file_count": 0,
            "hardlink_count": 0,
            "dir_count": 0,
            "symlink_count": 0,
            "total_bytes": 0,
            "skipped": 0,
            "changed": 0,
        }
        self._links: dict[tuple[int, int], str] = {}
        self.digests = DigestList()
        self._link_digests: dict[str, str] = {}
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def run(self, channel: _Channel) -> dict[str, int]:
        out = _ChannelWriter(channel)
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                self._walk(tar)
            out.finish()
        except _Closed:
            raise
        except BaseException:
            channel.close()
            raise
        return self.stats

    def _excluded(self, rel: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns) or any(
            fnmatch.fnmatchcase(rel, p) for p in self.path_patterns
        )

    def _info(self, rel: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(rel)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = self._user(st.st_uid)
        info.gname = self._group(st.st_gid)
        ns = st.st_mtime_ns
        info.mtime = ns // _NS
        if ns % _NS:
            info.pax_headers = {"mtime": _ns_to_pax(ns)}
        return info

    def _user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def _group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]

    def _vanished(self, rel: str) -> None:
        log.warning("%s: %s vanished during the dump; skipped", self.where, rel)
        self.stats["skipped"] += 1

    def _listing(self, path: str) -> list[os.DirEntry[str]]:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)

    def _walk(self, tar: tarfile.TarFile) -> None:
        root = str(self.root)
        tar.addfile(self._info(".", os.stat(root), tarfile.DIRTYPE))
        stack = [("", iter(self._listing(root)))]
        while stack:
            reldir, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            rel = reldir + entry.name
            if self._excluded(rel, entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    children = self._listing(entry.path)
                    tar.addfile(self._info(rel, st, tarfile.DIRTYPE))
                    self.stats["dir_count"] += 1
                    stack.append((rel + "/", iter(children)))
                elif stat.S_ISREG(st.st_mode):
                    self._add_file(tar, entry.path, rel, st)
                elif stat.S_ISLNK(st.st_mode):
                    info = self._info(rel, st, tarfile.SYMTYPE)
                    info.linkname = os.readlink(entry.path)
                    tar.addfile(info)
                    self.stats["symlink_count"] += 1
                else:
                    log.warning(
                        "%s: %s is not a regular file, directory or symlink; skipped",
                        self.where,
                        rel,
                    )
                    self.stats["skipped"] += 1
            except FileNotFoundError:
                self._vanished(rel)

    def _add_file(self, tar: tarfile.TarFile, path: str, rel: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._links:
            info = self._info(rel, st, tarfile.LNKTYPE)
            info.linkname = self._links[key]
            tar.addfile(info)
            self.stats["file_count"] += 1
            self.stats["hardlink_count"] += 1
            self.digests.add(rel, self._link_digests[info.linkname])
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self._vanished(rel)  # replaced by a symlink since it was listed
            return
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced by something else since lstat
                self._vanished(rel)
                return
            info = self._info(rel, st, tarfile.REGTYPE)
            info.size = st.st_size
            reader = _ExactReader(f, st.st_size)
            tar.addfile(info, reader)
            after = os.fstat(fd)
        if reader.short or (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            log.warning(
                "%s: %s changed while being read; its archived copy may be inconsistent%s",
                self.where,
                rel,
                " (it shrank: padded with zeros)" if reader.short else "",
            )
            self.stats["changed"] += 1
        digest = reader.sha256.hexdigest()
        self.digests.add(rel, digest)
        if st.st_nlink > 1:
            self._links[key] = rel
            self._link_digests[rel] = digest
        self.stats["file_count"] += 1
        self.stats["total_bytes"] += st.st_size


# ---------------------------------------------------------------------------------------------
# Restore


class _Refused(Exception):
    """An archive member the extraction filter will not write."""


class _Extractor:
    """Extracts a tar stream into `staging` (runs in the worker thread)."""

    def __init__(self, staging: Path) -> None:
        self.staging = str(staging)
        self.real_staging = os.path.realpath(staging)
        self.stats = {"file_count": 0, "dir_count": 0, "symlink_count": 0, "total_bytes": 0}
        self._dirs: list[tuple[str, tarfile.TarInfo]] = []

    def run(self, channel: _Channel) -> dict[str, int]:
        reader = _ChannelReader(channel)
        try:
            with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|", errorlevel=2) as tar:
                while (member := tar.next()) is not None:
                    # Stream mode would otherwise keep every member read (memory grows).
                    cast(Any, tar).members.clear()
                    self._extract(tar, member)
                # Directory attributes last, deepest first: their contents are all written.
                self._dirs.sort(key=lambda d: d[0].count(os.sep), reverse=True)
                for path, member in self._dirs:
                    self._set_attrs(tar, path, member)
            reader.drain()  # the end-of-archive padding; returns only at the stream's end
            _sync_filesystem(self.staging)
        except _Closed:
            raise
        except BaseException:
            channel.close()
            raise
        return self.stats

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.real_staging or real.startswith(self.real_staging + os.sep)

    def _check(self, member: tarfile.TarInfo) -> str:
        """The normalised name of a member that may be extracted; _Refused otherwise."""
        name = member.name
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise _Refused(f"unsafe member name {name!r}")
        name = os.path.normpath(name)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _Refused(f"{name!r}: unsupported member type {member.type!r}")
        if name == "." and not member.isdir():
            raise _Refused("the archive root is not a directory")
        if not self._inside(os.path.join(self.staging, name)):
            raise _Refused(f"{name!r} would be written outside the restore directory")
        if member.islnk():
            link = member.linkname
            if not link or link.startswith("/") or ".." in link.split("/"):
                raise _Refused(f"{name!r}: unsafe hard link target {link!r}")
            if not self._inside(os.path.join(self.staging, link)):
                raise _Refused(f"{name!r}: hard link target {link!r} is outside the tree")
        return name

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = self._check(member)
        path = os.path.join(self.staging, name) if name != "." else self.staging
        if member.isdir():
            if name != ".":
                os.makedirs(path, 0o700, exist_ok=True)
                self.stats["dir_count"] += 1
            self._dirs.append((path, member))
            return
        member.name = name
        tar.extract(member, self.staging, set_attrs=False, filter="fully_trusted")
        self._set_attrs(tar, path, member)
        if member.issym():
            self.stats["symlink_count"] += 1
        else:
            self.stats["file_count"] += 1
            if member.isreg():
                self.stats["total_bytes"] += member.size

    def _set_attrs(self, tar: tarfile.TarFile, path: str, member: tarfile.TarInfo) -> None:
        tar.chown(member, path, numeric_owner=False)  # does something only as root
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        ns = _mtime_ns(member)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _sync_filesystem(path: str) -> None:
    """Flush everything written to the filesystem holding `path` (syncfs, else sync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is not None and syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


def _check_source(root: Path, where: str) -> None:
    if not root.is_dir():
        raise SourceError(f"{where}: not a directory")


def _discard(staging: Path, where: str) -> None:
    try:
        remove_tree(staging)
    except OSError as exc:
        log.error("%s: could not remove the staging directory %s: %s", where, staging, exc)


def _prepare(target: str) -> tuple[Path, Path]:
    """Check the target and create the staging directory next to it."""
    path = Path(os.path.abspath(target))
    where = f"restore into {path}"
    if not path.name:
        raise RestoreError(f"{where}: not a usable target directory")
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_dir():
            raise TargetExists(f"{where}: the target exists and is not a directory")
        with os.scandir(path) as it:
            if next(it, None) is not None:
                raise TargetExists(f"{where}: the target directory is not empty")
        if os.path.ismount(path):
            raise RestoreError(
                f"{where}: the target is a mount point, which cannot be replaced atomically; "
                "restore into a new directory inside it"
            )
    if not path.parent.is_dir():
        raise RestoreError(f"{where}: the directory {path.parent} does not exist")
    staging = path.with_name(f".{path.name}.drd-partial-{secrets.token_hex(4)}")
    try:
        os.mkdir(staging, 0o700)
    except OSError as exc:
        raise RestoreError(f"{where}: cannot create {staging.name}: {exc.strerror}") from None
    return path, staging


def _install(staging: Path, path: Path, where: str) -> None:
    """Rename the finished staging tree onto the target (absent or an empty directory)."""
    try:
        os.rename(staging, path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise TargetExists(f"{where}: the target changed during the restore") from None
        raise RestoreError(f"{where}: cannot rename the staging directory: {exc}") from None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesStrategy(Strategy[FilesOptions]):
    kind: ClassVar[str] = "files"
    Options: ClassVar[type[SourceOptions]] = FilesOptions
    # Restore tests: a tree in a scratch directory (never inside the source's own tree),
    # checked by file digests and the plan's file checks.
    scratch_kinds: ClassVar[tuple[str, ...]] = ("tempdir",)
    check_kinds: ClassVar[tuple[str, ...]] = ("file", "command")
    restored_as: ClassVar[str | None] = "tree"
    source_is_tree: ClassVar[bool] = True

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        root = Path(self.opts.path)
        where = f"source {self.opts.name!r} ({root})"
        _check_source(root, where)
        channel = _Channel(_CHANNEL_CHUNKS)
        walker = _Walker(root, list(self.opts.exclude), where)
        worker = _Worker(lambda: walker.run(channel), "drd-files-dump")
        try:
            while True:
                try:
                    item = await channel.get()
                except _Closed:
                    break  # the walker failed: its result says why
                if item is _EOF:
                    break
                assert isinstance(item, bytes)
                yield item
            try:
                stats = await worker.result()
            except OSError as exc:
                raise SourceError(f"{where}: {exc}") from None
            except (tarfile.TarError, ValueError) as exc:
                raise SourceError(f"{where}: cannot archive: {exc}") from None
        finally:
            channel.close()
            await worker.settle()
        self._metadata = {
            "format": FORMAT,
            "mtime_precision": "ns",
            **stats,
            "statistics": {"file_digests": walker.digests.as_json()},
        }

    @classmethod
    async def restore(
        cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
    ) -> RestoreOutcome:
        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"restore into {target}: unsupported dump format {fmt!r}")
        path, staging = _prepare(target)
        where = f"restore into {path}"
        channel = _Channel(_CHANNEL_CHUNKS)
        extractor = _Extractor(staging)
        worker = _Worker(lambda: extractor.run(channel), "drd-files-restore")
        try:
            try:
                async for chunk in chunks:
                    await channel.put(chunk)
                await channel.put(_EOF)
            except _Closed:
                pass  # the extractor failed: its result says why
            try:
                stats = await worker.result()
            except tarfile.TarError as exc:
                raise RestoreError(f"{where}: not a valid tar stream: {exc}") from None
            except (_Refused, OSError, KeyError, ValueError) as exc:
                raise RestoreError(f"{where}: {exc}") from None
            for key, value in stats.items():
                if key in metadata and metadata[key] != value:
                    raise RestoreError(
                        f"{where}: restored {value} for {key}, the dump recorded {metadata[key]}"
                    )
            _install(staging, path, where)
        except BaseException:
            channel.close()
            await worker.settle()
            with contextlib.suppress(BaseException):
                await asyncio.shield(
                    asyncio.ensure_future(asyncio.to_thread(_discard, staging, where))
                )
            raise
        return RestoreOutcome(target=str(path), details=stats)
