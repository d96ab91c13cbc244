"""Files: a directory tree as one POSIX tar stream (PAX format).

Dump: a worker thread walks the tree (sorted, depth first, never following symlinks) and writes
a PAX tar into a bounded channel that the async generator drains in 1 MiB chunks; memory stays
constant whatever the tree size (plus one sorted directory listing at a time, the paths of
files with several hard links, and the data map of the sparse file being read). Closing the
generator closes the channel, which makes the thread stop at its next write. Nothing is
written to disk.

Archived: regular files, directories (empty ones too), symlinks (as links), hard links (as
links to the first path archived), FIFOs and device nodes, each with mode, owner (uid/gid and
names), mtime and extended attributes. Sockets cannot be stored in tar: they are skipped with a
warning (the program listening on one creates it again).
- xattrs of every namespace the kernel lists (user.*, trusted.*, security.* with file
  capabilities, system.posix_acl_access/_default: POSIX ACLs) travel as PAX `SCHILY.xattr.*`
  records, as GNU tar and bsdtar write them, plus GNU tar's `SCHILY.acl.access/default` text
  for ACLs (drd.strategies.file_xattrs): `tar -x --xattrs --xattrs-include='*' --acls` on a
  decrypted stream restores them too.
- Sparse files (SEEK_DATA/SEEK_HOLE finds their holes) are stored in GNU sparse format 1.0:
  only the data regions are in the stream (drd.strategies.sparse_files), and the restore
  leaves the holes as holes: a 1 GiB file with 12 KiB of data restores with ~12 KiB allocated.
- A file that changes while being read (size, mtime or ctime differ between before and after
  the read, or it ends before its size) is read again, up to MAX_READS reads: each new read is
  a new member of the same name (marked `DRD.reread`) that supersedes the one before, as the
  last member of a name wins in any tar extraction. A read that notices a change mid-way
  stops reading (the rest of that superseded member is zeros, which compress to nothing). A
  file still changing after MAX_READS reads is archived as last read and listed in the
  metadata (`unstable_files`, with the zero padding that stands in for the bytes of a file
  that shrank): the backup is `degraded` (metadata "degraded"), never plain `ok`.
- A file that vanishes during the dump is skipped with a warning. A tree being written to has
  no single snapshot: each file is copied as it is when read.

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
(`.<name>.drd-partial-<random>`, stripped of any ACL inherited from its parent, so that the
tree's ACLs are the archive's only). Every member passes a filter first: absolute names, ".."
components, hard links whose target is outside the tree, a name that appears twice (except a
re-read), and any member whose path would resolve outside the staging directory (through a
symlink extracted earlier) are refused and fail the restore. Symlinks are restored verbatim
(they may point anywhere, as in the source) but are never followed while extracting. Device
nodes need root (CAP_MKNOD): without it each is skipped with a warning. After each entry: the
owner (when running as root, by name like GNU tar), then its xattrs (after chown, which drops
file capabilities), then its mode (after chown, which clears set-id bits), then its mtime;
directories get theirs at the end, deepest first, after their contents (so that a default ACL
is not inherited by entries that did not have it). An attribute the target cannot hold (a
filesystem without xattrs, trusted.* without root, ...) is a per-entry warning; the outcome
counts them (`xattrs_not_restored`, `devices_not_restored`) and says so in its warnings. The
staging tree is flushed (syncfs) and renamed onto the target only after the stream ended
cleanly. The target must not exist or be an empty directory (which the rename then replaces);
a mount point cannot be replaced this way and is refused.
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
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import Field

from drd.errors import RestoreError, SourceError, TargetExists
from drd.fsutil import remove_tree
from drd.strategies import file_digests, file_xattrs, sparse_files
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "tar-pax"
#: reads of a file that changes while being read, before it is archived as unstable
MAX_READS = 3
#: the PAX record of a member that supersedes the one before it (a re-read of the same file)
REREAD_RECORD = "DRD.reread"
#: unstable files (and unarchivable xattrs) named in the metadata; the rest are counted
UNSTABLE_LISTED = 100
_CHANNEL_CHUNKS = 4
_NS = 10**9
_ENCODING = "utf-8"
_READ_AHEAD = 1 << 20
_ZEROS = memoryview(bytes(_READ_AHEAD))
#: while a re-read may follow, how often a file being read is checked for changes
_CHECK_EVERY = 8 << 20
_REREAD_PAUSE = 0.05
_ALWAYS_SHOWN = ("file_count", "dir_count", "symlink_count", "total_bytes")
#: per-entry restore warnings logged; the outcome counts all of them
_WARN_LIMIT = 50

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


class _PaxInfo(tarfile.TarInfo):
    """tarfile's TarInfo, except for PAX headers whose only non-UTF-8 values are xattr values:
    those are written as raw bytes without the `hdrcharset=BINARY` record tarfile would add
    (it is meant for names; GNU tar, which writes xattr values raw, warns about the record).
    tarfile reads them back the same (a value that is not UTF-8 is decoded with
    surrogateescape). Anything else, non-UTF-8 names included, is tarfile's own encoding."""

    @classmethod
    def _create_pax_generic_header(
        cls, pax_headers: Mapping[str, str], type: bytes, encoding: str
    ) -> bytes:
        raw = [k for k, v in pax_headers.items() if not _is_utf8(v)]
        if not raw or not all(k.startswith(file_xattrs.PAX_PREFIX) for k in raw):
            return cast(
                bytes,
                super()._create_pax_generic_header(pax_headers, type, encoding),  # type: ignore[misc]
            )
        records = bytearray()
        for keyword, value in pax_headers.items():
            key, data = keyword.encode("utf-8"), value.encode("utf-8", "surrogateescape")
            length = len(key) + len(data) + 3  # " ", "=", "\n"; plus its own digits:
            size = previous = 0
            while True:
                size = length + len(str(previous))
                if size == previous:
                    break
                previous = size
            records += str(size).encode("ascii") + b" " + key + b"=" + data + b"\n"
        info = {"name": "././@PaxHeader", "type": type, "size": len(records)}
        info["magic"] = tarfile.POSIX_MAGIC
        helpers = cast(Any, cls)
        header: bytes = helpers._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace")
        payload: bytes = helpers._create_payload(bytes(records))
        return header + payload


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return False
    return True


def _state(st: os.stat_result) -> tuple[int, int, int]:
    """What tells that a file changed: size, mtime and ctime (ctime also moves on a write that
    restores the mtime, and on chmod, chown and xattr changes)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _FileReader:
    """Serves one regular file's member data to tarfile: the sparse map (if any), then each
    data region, read with pread. It always serves exactly the member's size, whatever happens
    to the file meanwhile:
    - the file ends early (it shrank): the rest is zeros; `padding` counts them;
    - while `stop_early`, a change seen mid-way (fstat every _CHECK_EVERY bytes) ends the
      reading: the rest is zeros, and the member is superseded by a re-read right after it.
    `sha256` is the digest of the content as archived (holes hashed as the zeros they are)."""

    def __init__(
        self,
        fd: int,
        st: os.stat_result,
        regions: sparse_files.Regions | None,
        *,
        stop_early: bool,
    ) -> None:
        self._fd = fd
        self._state = _state(st)
        self._stop_early = stop_early
        self._head = memoryview(sparse_files.map_block(regions) if regions is not None else b"")
        self._regions = deque(regions if regions is not None else [(0, st.st_size)])
        self._offset, self._left = 0, 0
        self._content_pos = 0  # logical position in the file (for hashing holes)
        self._buf = memoryview(b"")
        self._since_check = 0
        self.padding = 0
        self.changed = False
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes | memoryview] = []
        if n < 0:
            n = 1 << 62
        if self._head:
            take = self._head[:n]
            self._head = self._head[len(take) :]
            parts.append(take)
            n -= len(take)
        while n > 0:
            if not self._left:
                if not self._regions:
                    break
                self._offset, self._left = self._regions.popleft()
                if not self.changed:
                    file_digests.hash_zeros(self.sha256, self._offset - self._content_pos)
                self._content_pos = self._offset
                continue
            data = self._next(min(n, self._left))
            parts.append(data)
            n -= len(data)
            self._offset += len(data)
            self._left -= len(data)
            self._content_pos += len(data)
        return b"".join(parts)

    def _next(self, want: int) -> bytes | memoryview:
        if not self._buf and not self.changed and not self.padding:
            data = os.pread(self._fd, min(_READ_AHEAD, self._left), self._offset)
            self._buf = memoryview(data)
            self._since_check += len(data)
            if self._stop_early and self._since_check >= _CHECK_EVERY:
                self._since_check = 0
                if _state(os.fstat(self._fd)) != self._state:
                    self.changed = True  # superseded by a re-read: stop reading
                    self._buf = memoryview(b"")
        if self._buf:
            out = self._buf[:want]
            self._buf = self._buf[len(out) :]
            self.sha256.update(out)
            return out
        # The file ended before its size (or reading stopped): zeros keep the stream valid.
        zeros = _ZEROS[: min(want, len(_ZEROS))]
        if not self.changed:
            self.padding += len(zeros)
            self.sha256.update(zeros)
        return zeros

    def hexdigest(self) -> str:
        """The content digest, once tarfile has read the whole member (a hole at the end of the
        file is hashed here: tarfile never asks for the zero-length region that marks it)."""
        while self._regions:
            offset, _ = self._regions.popleft()
            if not self.changed:
                file_digests.hash_zeros(self.sha256, offset - self._content_pos)
            self._content_pos = offset
        return self.sha256.hexdigest()


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
            "fifo_count": 0,
            "device_count": 0,
            "sparse_count": 0,
            "xattr_count": 0,
            "total_bytes": 0,
            "skipped": 0,
            "reread": 0,
            "unstable": 0,
            "xattrs_not_archived": 0,
        }
        self._links: dict[tuple[int, int], str] = {}
        self.digests = file_digests.TreeDigests()
        self._link_entries: dict[str, tuple[str, file_digests.Entry]] = {}
        self._names = file_digests.Names()
        #: path -> why, for the first UNSTABLE_LISTED files still changing after MAX_READS reads
        self.unstable: dict[str, str] = {}
        self.padded = 0
        #: "path: name", for the first UNSTABLE_LISTED xattrs that could not be archived
        self.xattrs_not_archived: list[str] = []

    def run(self, channel: _Channel) -> dict[str, int]:
        out = _ChannelWriter(channel)
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], out),
                mode="w|",
                format=tarfile.PAX_FORMAT,
                encoding=_ENCODING,
                errors="surrogateescape",
            ) as tar:
                self._walk(tar)
            out.finish()
        except _Closed:
            raise
        except BaseException:
            channel.close()
            raise
        return self.stats

    def degraded(self) -> list[str]:
        """Why this dump is not a faithful copy of the tree (empty when it is)."""
        reasons: list[str] = []
        n = self.stats["unstable"]
        if n:
            listed = ", ".join(list(self.unstable)[:10]) + (f" and {n - 10} more" if n > 10 else "")
            text = (
                f"{n} file(s) kept changing while being read ({MAX_READS} reads each) and are "
                f"archived as last read, a state they may never have had: {listed}"
            )
            if self.padded:
                text += (
                    f"; {self.padded} of them shrank while being read: zero padding stands in "
                    "for their missing bytes (see unstable_files)"
                )
            reasons.append(text)
        n = self.stats["xattrs_not_archived"]
        if n:
            listed = ", ".join(self.xattrs_not_archived[:10])
            reasons.append(
                f"{n} extended attribute(s) could not be archived (a name that cannot be a PAX "
                f"keyword: it contains '=' or is not valid UTF-8): {listed}"
            )
        return reasons

    def _excluded(self, rel: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns) or any(
            fnmatch.fnmatchcase(rel, p) for p in self.path_patterns
        )

    def _xattrs(self, rel: str, target: int | str) -> file_xattrs.Xattrs:
        found, refused = file_xattrs.read(target)
        for name in refused:
            shown = file_digests.display_path(name)
            log.warning(
                "%s: %s: extended attribute %r cannot be stored in a PAX record; not archived",
                self.where,
                rel,
                shown,
            )
            self.stats["xattrs_not_archived"] += 1
            if len(self.xattrs_not_archived) < UNSTABLE_LISTED:
                self.xattrs_not_archived.append(f"{file_digests.display_path(rel)}: {shown}")
        return found

    def _header(
        self,
        rel: str,
        st: os.stat_result,
        kind: bytes,
        xattrs: file_xattrs.Xattrs,
        target: str = "",
    ) -> tuple[tarfile.TarInfo, file_digests.Entry]:
        """The member's header, and the entry's metadata as the restore test will compare it."""
        info = _PaxInfo(rel)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = self._names.user(st.st_uid)
        info.gname = self._names.group(st.st_gid)
        ns = st.st_mtime_ns
        info.mtime = ns // _NS
        pax: dict[str, str] = {}
        if ns % _NS:
            pax["mtime"] = _ns_to_pax(ns)
        pax.update(file_xattrs.pax_records(xattrs))
        info.pax_headers = pax
        if kind == tarfile.SYMTYPE:
            info.linkname = target
        elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            target = f"{info.devmajor},{info.devminor}"
        self.stats["xattr_count"] += len(xattrs)
        entry = file_digests.Entry(
            file_digests.kind_of(st.st_mode),
            stat.S_IMODE(st.st_mode),
            file_digests.owner_text(st.st_uid, info.uname, st.st_gid, info.gname),
            ns,
            target,
            xattrs,
        )
        return info, entry

    def _vanished(self, rel: str) -> None:
        log.warning("%s: %s vanished during the dump; skipped", self.where, rel)
        self.stats["skipped"] += 1

    def _listing(self, path: str) -> list[os.DirEntry[str]]:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)

    def _walk(self, tar: tarfile.TarFile) -> None:
        root = str(self.root)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            info, entry = self._header(".", os.fstat(fd), tarfile.DIRTYPE, self._xattrs(".", fd))
        finally:
            os.close(fd)
        tar.addfile(info)
        self.digests.add_entry(".", entry)
        stack = [("", iter(self._listing(root)))]
        while stack:
            reldir, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            rel = reldir + item.name
            if self._excluded(rel, item.name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    children = self._listing(item.path)
                    self._add_plain(tar, item.path, rel, st, tarfile.DIRTYPE, "dir_count")
                    stack.append((rel + "/", iter(children)))
                elif stat.S_ISREG(st.st_mode):
                    self._add_file(tar, item.path, rel, st)
                elif stat.S_ISLNK(st.st_mode):
                    self._add_plain(tar, item.path, rel, st, tarfile.SYMTYPE, "symlink_count")
                elif stat.S_ISFIFO(st.st_mode):
                    self._add_plain(tar, item.path, rel, st, tarfile.FIFOTYPE, "fifo_count")
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    kind = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                    self._add_plain(tar, item.path, rel, st, kind, "device_count")
                else:
                    log.warning(
                        "%s: %s is a socket, which tar cannot store (the program listening on "
                        "it creates it again); skipped",
                        self.where,
                        rel,
                    )
                    self.stats["skipped"] += 1
            except FileNotFoundError:
                self._vanished(rel)

    def _add_plain(
        self, tar: tarfile.TarFile, path: str, rel: str, st: os.stat_result, kind: bytes, count: str
    ) -> None:
        """A directory, symlink, FIFO or device node: a header without data."""
        target = os.readlink(path) if kind == tarfile.SYMTYPE else ""
        info, entry = self._header(rel, st, kind, self._xattrs(rel, path), target)
        tar.addfile(info)
        self.digests.add_entry(rel, entry)
        self.stats[count] += 1

    def _add_file(self, tar: tarfile.TarFile, path: str, rel: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._links:
            first = self._links[key]
            digest, entry = self._link_entries[first]
            info = tarfile.TarInfo(rel)
            info.type = tarfile.LNKTYPE
            info.linkname = first
            info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            info.uname, info.gname = self._names.user(st.st_uid), self._names.group(st.st_gid)
            info.mtime = st.st_mtime_ns // _NS
            tar.addfile(info)
            self.stats["file_count"] += 1
            self.stats["hardlink_count"] += 1
            self.digests.add(rel, digest)
            self.digests.add_entry(rel, entry)  # the same inode: the first path's metadata
            self.digests.add_link(key, rel)
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self._vanished(rel)  # replaced by a symlink since it was listed
            return
        try:
            self._add_file_fd(tar, fd, rel, key)
        finally:
            os.close(fd)

    def _add_file_fd(self, tar: tarfile.TarFile, fd: int, rel: str, key: tuple[int, int]) -> None:
        """Archive an open regular file; read it again (a new member of the same name, which
        supersedes the one before) while it changes under the reader, up to MAX_READS reads."""
        for attempt in range(1, MAX_READS + 1):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced by something else since lstat
                self._vanished(rel)
                return
            info, entry = self._header(rel, st, tarfile.REGTYPE, self._xattrs(rel, fd))
            xattr_count = len(entry.xattrs)
            regions = sparse_files.data_regions(fd, st.st_size)
            pax = dict(info.pax_headers)
            if regions is not None:
                pax.update(sparse_files.pax_records(rel, st.st_size))
                info.name = sparse_files.placeholder_name(rel)
                info.size = sparse_files.stored_size(regions)
            else:
                info.size = st.st_size
            if attempt > 1:
                pax[REREAD_RECORD] = str(attempt)
            info.pax_headers = pax
            final = attempt == MAX_READS
            reader = _FileReader(fd, st, regions, stop_early=not final)
            tar.addfile(info, cast(IO[bytes], reader))
            changed = reader.changed or reader.padding > 0 or _state(os.fstat(fd)) != _state(st)
            if not changed:
                break
            if not final:
                log.info(
                    "%s: %s changed while being read; reading it again (read %d of at most %d)",
                    self.where,
                    rel,
                    attempt + 1,
                    MAX_READS,
                )
                self.stats["xattr_count"] -= xattr_count  # superseded by the next member
                time.sleep(_REREAD_PAUSE)
        if changed:
            self._unstable(rel, reader.padding)
        elif attempt > 1:
            self.stats["reread"] += 1
            log.info(
                "%s: %s was read %d times; the last read was consistent", self.where, rel, attempt
            )
        digest = reader.hexdigest()
        self.digests.add(rel, digest)
        self.digests.add_entry(rel, entry)
        if st.st_nlink > 1:
            self._links[key] = rel
            self._link_entries[rel] = (digest, entry)
            self.digests.add_link(key, rel)
        self.stats["file_count"] += 1
        self.stats["total_bytes"] += st.st_size
        self.stats["sparse_count"] += regions is not None

    def _unstable(self, rel: str, padding: int) -> None:
        why = f"kept changing while being read ({MAX_READS} reads)"
        if padding:
            why += (
                f"; it shrank while being read: its last {padding} bytes in the archive are zero "
                "padding, not its content"
            )
            self.padded += 1
        log.warning(
            "%s: %s %s; archived as last read, a state it may never have had: the backup is "
            "degraded",
            self.where,
            rel,
            why,
        )
        self.stats["unstable"] += 1
        if len(self.unstable) < UNSTABLE_LISTED:
            self.unstable[file_digests.display_path(rel)] = why


# ---------------------------------------------------------------------------------------------
# Restore


class _Refused(Exception):
    """An archive member the extraction filter will not write."""


def _blocks(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Extractor:
    """Extracts a tar stream into `staging` (runs in the worker thread)."""

    def __init__(self, staging: Path, where: str) -> None:
        self.staging = str(staging)
        self.real_staging = os.path.realpath(staging)
        self.where = where
        self.stats = {
            "file_count": 0,
            "dir_count": 0,
            "symlink_count": 0,
            "fifo_count": 0,
            "device_count": 0,
            "sparse_count": 0,
            "xattr_count": 0,
            "total_bytes": 0,
        }
        #: what the target could not take: attributes, device nodes
        self.not_restored = {"xattrs_not_restored": 0, "devices_not_restored": 0}
        #: the first per-entry problems, for the outcome
        self.samples: list[str] = []
        self._warned = 0
        self._root = os.geteuid() == 0
        self._dirs: list[tuple[str, tarfile.TarInfo, str]] = []
        #: the last regular file written and what it added to the counts (a re-read replaces)
        self._last: tuple[str, dict[str, int]] | None = None
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}

    def run(self, channel: _Channel) -> dict[str, int]:
        reader = _ChannelReader(channel)
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], reader),
                mode="r|",
                errorlevel=2,
                encoding=_ENCODING,
                errors="surrogateescape",
            ) as tar:
                while (member := tar.next()) is not None:
                    # Stream mode would otherwise keep every member read (memory grows).
                    cast(Any, tar).members.clear()
                    self._extract(tar, member)
                # Directory attributes last, deepest first: their contents are all written
                # (and a default ACL set earlier would be inherited by them).
                self._dirs.sort(key=lambda d: d[0].count(os.sep), reverse=True)
                for path, member, name in self._dirs:
                    self._set_attrs(path, member, name, symlink=False)
            reader.drain()  # the end-of-archive padding; returns only at the stream's end
            _sync_filesystem(self.staging)
        except _Closed:
            raise
        except BaseException:
            channel.close()
            raise
        return {**self.stats, **self.not_restored}

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.real_staging or real.startswith(self.real_staging + os.sep)

    def _check(self, member: tarfile.TarInfo) -> str:
        """The normalised name of a member that may be extracted; _Refused otherwise."""
        name = member.name
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise _Refused(f"unsafe member name {name!r}")
        name = os.path.normpath(name)
        if not (
            member.isreg()
            or member.isdir()
            or member.issym()
            or member.islnk()
            or member.isfifo()
            or member.isdev()
        ):
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
            self._dirs.append((path, member, name))
            self._last = None
            return
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o700, exist_ok=True)
        if member.isreg():
            self._extract_file(tar, member, name, path)
            return
        self._last = None
        try:
            if member.issym():
                os.symlink(member.linkname, path)
                self.stats["symlink_count"] += 1
            elif member.islnk():
                os.link(os.path.join(self.staging, member.linkname), path, follow_symlinks=False)
                self.stats["file_count"] += 1
                return  # the same inode as its target: its attributes are set already
            elif member.isfifo():
                os.mkfifo(path, 0o600)
                self.stats["fifo_count"] += 1
            else:
                self.stats["device_count"] += 1
                if not self._mknod(member, name, path):
                    return
        except FileExistsError:
            raise _Refused(f"{name!r} appears twice in the archive") from None
        self._set_attrs(path, member, name, symlink=member.issym())

    def _mknod(self, member: tarfile.TarInfo, name: str, path: str) -> bool:
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, 0o600 | kind, os.makedev(member.devmajor, member.devminor))
        except PermissionError:
            self.not_restored["devices_not_restored"] += 1
            self._problem(
                name,
                f"device node {member.devmajor},{member.devminor} not recreated: creating device "
                "nodes needs root (CAP_MKNOD)",
            )
            return False
        return True

    def _extract_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, path: str
    ) -> None:
        size = member.size
        if member.sparse is not None:
            size = sparse_files.real_size(member.pax_headers, member.size)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if REREAD_RECORD in member.pax_headers:
            # The file changed while the dump read it, which read it again: this member
            # replaces the one just before it (a plain tar extraction does the same).
            if self._last is None or self._last[0] != name:
                raise _Refused(f"{name!r}: a re-read of a file that does not precede it")
            for key, value in self._last[1].items():
                counts = self.not_restored if key in self.not_restored else self.stats
                counts[key] -= value
            flags |= os.O_TRUNC
        else:
            flags |= os.O_CREAT | os.O_EXCL
        before = {**self.stats, **self.not_restored}
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise _Refused(f"{name!r} appears twice in the archive") from None
        try:
            self._write_data(tar, member, fd, size)
            self._set_attrs(fd, member, name, symlink=False)
        finally:
            os.close(fd)
        self.stats["file_count"] += 1
        self.stats["total_bytes"] += size
        self.stats["sparse_count"] += member.sparse is not None
        after = {**self.stats, **self.not_restored}
        self._last = (name, {k: after[k] - before[k] for k in after if after[k] != before[k]})

    def _write_data(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int, size: int
    ) -> None:
        """Copy the member's data into `fd`; a sparse member's holes stay holes."""
        source = cast(Any, tar).fileobj
        source.seek(member.offset_data)
        sparse: sparse_files.Regions | None = cast(Any, member).sparse
        regions = sparse if sparse is not None else [(0, member.size)]
        stored = 0
        for offset, length in regions:
            left = length
            while left:
                data = source.read(min(left, _READ_AHEAD))
                if not data:
                    raise tarfile.ReadError("unexpected end of data")
                _write_all(fd, data, offset + length - left)
                left -= len(data)
            stored += length
        if sparse is not None:
            os.ftruncate(fd, size)
            # tarfile's idea of where the next header starts is off when a `size` record
            # follows the sparse ones: the data is the map (read) and the regions.
            cast(Any, tar).offset = member.offset_data + _blocks(stored)

    def _uid(self, member: tarfile.TarInfo) -> int:
        if member.uname:
            if member.uname not in self._uids:
                try:
                    self._uids[member.uname] = pwd.getpwnam(member.uname).pw_uid
                except KeyError:
                    self._uids[member.uname] = None
            found = self._uids[member.uname]
            if found is not None:
                return found
        return member.uid

    def _gid(self, member: tarfile.TarInfo) -> int:
        if member.gname:
            if member.gname not in self._gids:
                try:
                    self._gids[member.gname] = grp.getgrnam(member.gname).gr_gid
                except KeyError:
                    self._gids[member.gname] = None
            found = self._gids[member.gname]
            if found is not None:
                return found
        return member.gid

    def _set_attrs(
        self, target: int | str, member: tarfile.TarInfo, name: str, *, symlink: bool
    ) -> None:
        """Owner (as root, by name like GNU tar, else by number), then xattrs (the kernel drops
        file capabilities on chown), then the mode (after chown, which clears set-id bits),
        then the mtime (last: the others change the ctime only)."""
        if self._root:
            if isinstance(target, int):
                os.chown(target, self._uid(member), self._gid(member))
            else:
                os.chown(target, self._uid(member), self._gid(member), follow_symlinks=False)
        xattrs = file_xattrs.from_pax(member.pax_headers)
        self.stats["xattr_count"] += len(xattrs)
        failed = file_xattrs.apply(target, xattrs)
        if failed:
            self.not_restored["xattrs_not_restored"] += len(failed)
            shown = ", ".join(f"{file_digests.display_path(n)} ({why})" for n, why in failed)
            self._problem(name, f"extended attribute(s) not restored: {shown}")
        if not symlink:
            os.chmod(target, member.mode & 0o7777)
        ns = _mtime_ns(member)
        if isinstance(target, int):
            os.utime(target, ns=(ns, ns))
        else:
            os.utime(target, ns=(ns, ns), follow_symlinks=False)

    def _problem(self, name: str, what: str) -> None:
        """A per-entry warning: logged (the first _WARN_LIMIT), counted in the outcome."""
        shown = file_digests.display_path(name)
        if self._warned < _WARN_LIMIT:
            log.warning("%s: %s: %s", self.where, shown, what)
        elif self._warned == _WARN_LIMIT:
            log.warning(
                "%s: more entries could not be restored in full; the restore outcome counts them",
                self.where,
            )
        self._warned += 1
        if len(self.samples) < 10:
            self.samples.append(f"{shown}: {what}")

    def warnings(self) -> list[str]:
        """What the outcome says the target could not take (empty when it took everything)."""
        out: list[str] = []
        n = self.not_restored["xattrs_not_restored"]
        if n:
            out.append(
                f"{n} extended attribute(s) (xattrs, ACLs, capabilities) could not be restored: "
                "the target filesystem or the restore's privileges do not allow them"
            )
        n = self.not_restored["devices_not_restored"]
        if n:
            out.append(f"{n} device node(s) not recreated: the restore is not running as root")
        if out and self.samples:
            out.append("first ones: " + "; ".join(self.samples))
        return out


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
    try:
        # A default ACL of the parent would be inherited by everything restored (as ACLs the
        # source entries did not have): the tree's ACLs come from the archive only.
        file_xattrs.remove_inherited_acls(str(staging), {})
    except OSError as exc:
        _discard(staging, where)
        raise RestoreError(
            f"{where}: cannot clear {staging.name}'s inherited ACLs: {exc}"
        ) from None
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
            # PAX SCHILY.xattr.* records (POSIX ACLs and capabilities included) and GNU sparse
            # 1.0 members: what a restore (or `tar --xattrs`) finds in the stream
            "xattrs": "pax-schily",
            "sparse": "gnu-1.0",
            "max_reads": MAX_READS,
            **stats,
            "unstable_files": dict(walker.unstable),
            "statistics": {"file_digests": walker.digests.as_json()},
        }
        degraded = walker.degraded()
        if degraded:
            self._metadata["degraded"] = degraded

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
        extractor = _Extractor(staging, where)
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
        warnings = extractor.warnings()
        for line in warnings:
            log.warning("%s: %s", where, line)
        # The four counts always; the others (special files, xattrs, what was not restored)
        # when there is something to say.
        details = {k: v for k, v in stats.items() if k in _ALWAYS_SHOWN or v}
        return RestoreOutcome(target=str(path), details=details, warnings=warnings)
