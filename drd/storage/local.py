"""A region in a local directory (a disk, a NAS mount): the embedded default backend.

Layout under `root`: the key `a/b/c` is the file `root/a/b/c`, byte for byte, so an operator
can copy objects with ordinary tools. Beside each object lives `.c.drd-info` (JSON: size,
crc32c checksum as GCS gives it, metadata). Uploads go to `.c.drd-partial-<random>` in the
same directory and are renamed into place on commit. Every dot-name is bookkeeping: keys never
start a segment with '.' (`validate_key`), so `list()` can skip them all.

Commit order: fsync data, write+fsync info, rename info, rename data, fsync directory. The
data rename is the commit point, so a crash never shows a new object without its info. The
info records the data file's inode, size and mtime (a rename keeps all three), so an info
left behind by a crash or a concurrent overwrite is recognised as stale and ignored (the
object then reads as checksum None, no metadata) rather than misattributed.

Deletes are made durable too (unlink, then fsync the directory): a deleted manifest is the
crypto-shred of a backup, and a crash must not bring it back. Directories drd creates are 0700
and objects 0600, whatever the umask: plan, source and backup names are nobody else's business.
A failed or aborted upload, and the janitor, leave no empty directory behind.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import json
import os
import secrets
import stat as stat_mod
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path

from drd.digests import Crc32c
from drd.errors import (
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from drd.storage.base import ObjectInfo, ObjectWriter, Storage, validate_key

DEFAULT_CHUNK_SIZE = 1024 * 1024
DIR_MODE = 0o700
PARTIAL_MARK = ".drd-partial-"
INFO_SUFFIX = ".drd-info"

# Worth retrying: NFS and friends hiccup; a full or failing disk does not heal in seconds.
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY}


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked; loop. (Also the seam tests use to inject ENOSPC.)"""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _info_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{INFO_SUFFIX}")


def _read_info(path: Path, st: os.stat_result) -> tuple[str | None, dict[str, str]]:
    """(checksum, metadata) from the info beside `path`, if it describes this very file."""
    try:
        info = json.loads(_info_path(path).read_bytes())
    except (OSError, ValueError):
        return None, {}
    if not isinstance(info, dict) or info.get("id") != [st.st_ino, st.st_size, st.st_mtime_ns]:
        return None, {}
    checksum = info.get("checksum")
    metadata = info.get("metadata")
    return (
        checksum if isinstance(checksum, str) else None,
        {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
    )


class LocalWriter(ObjectWriter):
    """Streams into a hidden temp file beside the destination; commit renames it into place."""

    def __init__(self, storage: LocalStorage, key: str, path: Path, metadata: Mapping[str, str]):
        self._storage = storage
        self._key = key
        self._path = path
        self._metadata = dict(metadata)
        self._temp = path.with_name(f".{path.name}{PARTIAL_MARK}{secrets.token_hex(8)}")
        self._fd: int | None = None
        self._crc = Crc32c()
        self._size = 0
        self._state = "open"

    def _open(self) -> None:
        self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _check_open(self) -> None:
        if self._state != "open":
            raise PermanentStorageError(
                f"region {self._storage.name}: writer for {self._key!r} is {self._state}"
            )

    async def write(self, data: bytes) -> None:
        self._check_open()
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            self._state = "failed"
            raise self._storage._error(exc, "write", self._key, self._temp) from exc

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        _write_all(self._fd, data)
        self._crc.update(data)
        self._size += len(data)

    async def commit(self) -> ObjectInfo:
        self._check_open()
        try:
            info = await asyncio.to_thread(self._commit)
        except OSError as exc:
            self._state = "failed"
            await asyncio.to_thread(self._cleanup)
            raise self._storage._error(exc, "commit", self._key, self._path) from exc
        self._state = "committed"
        return info

    def _commit(self) -> ObjectInfo:
        assert self._fd is not None
        os.fsync(self._fd)
        st = os.fstat(self._fd)
        os.close(self._fd)
        self._fd = None
        checksum = self._crc.checksum()
        record = {
            "id": [st.st_ino, st.st_size, st.st_mtime_ns],
            "checksum": checksum,
            "metadata": self._metadata,
        }
        info_temp = self._temp.with_name(self._temp.name + ".info")
        fd = os.open(info_temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, json.dumps(record, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(info_temp, _info_path(self._path))
        os.rename(self._temp, self._path)
        _fsync_dir(self._path.parent)
        return ObjectInfo(self._key, self._size, checksum, self._metadata)

    def _cleanup(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        for leftover in (self._temp, self._temp.with_name(self._temp.name + ".info")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        # The upload may have made the backup's directory: a failed backup leaves none.
        self._storage._prune_empty_dirs(self._path.parent)

    async def abort(self) -> None:
        if self._state in ("open", "failed"):
            self._state = "aborted"
            await asyncio.to_thread(self._cleanup)


class LocalStorage(Storage):
    def __init__(
        self,
        name: str,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        create_root: bool = False,
    ) -> None:
        """`root` must exist unless `create_root`: a missing root usually means an unmounted
        volume, and writing into the mount point underneath would hide that."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.name = name
        self.root = Path(root).absolute()
        self._chunk_size = chunk_size
        self._create_root = create_root

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        # validate_key rules out '', '.', '..', NUL and empty segments: the path stays under root.
        return self.root.joinpath(*validate_key(key).split("/"))

    def _error(self, exc: OSError, op: str, key: str, path: Path) -> StorageError:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        where = f"region {self.name}: {op} {key!r}"
        # ENOTDIR: a path component is an object, e.g. stat("a/b") when "a" is a file.
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and op in ("get", "stat", "read"):
            return ObjectNotFound(f"{where}: object not found ({path})")
        cls = TransientStorageError if exc.errno in _TRANSIENT_ERRNOS else PermanentStorageError
        return cls(f"{where} failed: {exc.strerror or exc} ({code}) at {path}")

    def _check_root(self) -> None:
        if self._create_root and not self.root.is_dir():
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise PermanentStorageError(
                f"region {self.name}: root {self.root} is not a directory (volume not mounted?)"
            )

    def _make_parents(self, path: Path) -> None:
        self._check_root()
        directory = self.root
        for part in path.relative_to(self.root).parts[:-1]:
            child = directory / part
            try:
                os.mkdir(child, DIR_MODE)
            except FileExistsError:
                pass
            else:
                _fsync_dir(directory)  # the new entry must survive a crash too
            directory = child

    @staticmethod
    def _open_file(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        return fd

    def _stat_file(self, key: str, path: Path) -> ObjectInfo:
        st = os.stat(path)
        if not stat_mod.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        checksum, metadata = _read_info(path, st)
        return ObjectInfo(key, st.st_size, checksum, metadata)

    def _walk(self, prefix: str) -> Iterator[tuple[Path, str]]:
        """(directory, key of that directory + '/') for every directory that may hold keys
        starting with `prefix`. Raises on unreadable directories: a silently skipped directory
        would look like missing backups."""
        self._check_root()
        base = prefix.rpartition("/")[0]
        try:
            start = self._path(base) if base else self.root
        except PermanentStorageError:
            return  # no valid key can start with this prefix
        if not start.is_dir():
            return

        def raise_error(exc: OSError) -> None:
            if exc.errno != errno.ENOENT:  # a directory deleted while we walk is fine
                raise exc

        for dirpath, dirnames, _ in os.walk(start, onerror=raise_error):
            here = Path(dirpath)
            rel = here.relative_to(self.root).as_posix()
            dir_key = "" if rel == "." else rel + "/"
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".")
                and ((dir_key + d + "/").startswith(prefix) or prefix.startswith(dir_key + d + "/"))
            )
            yield here, dir_key

    # -- the Storage interface ---------------------------------------------------------------

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectWriter:
        path = self._path(key)
        writer = LocalWriter(self, key, path, metadata or {})
        try:
            await asyncio.to_thread(self._make_parents_and_open, writer, path)
        except OSError as exc:
            raise self._error(exc, "open_writer", key, path) from exc
        return writer

    def _make_parents_and_open(self, writer: LocalWriter, path: Path) -> None:
        # Another upload that fails (or a delete) prunes a directory once it is empty: between
        # our mkdir and our open it may take the directory away. Then make it again.
        for attempt in range(3):
            self._make_parents(path)
            try:
                writer._open()
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except IsADirectoryError:
            raise ObjectNotFound(f"region {self.name}: get {key!r}: object not found") from None
        except OSError as exc:
            raise self._error(exc, "get", key, path) from exc

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        path = self._path(key)
        try:
            # Reading through one descriptor: an overwrite (a rename) mid-read cannot mix
            # the old object's bytes with the new one's.
            fd = await asyncio.to_thread(self._open_file, path)
        except OSError as exc:
            raise self._error(exc, "read", key, path) from exc
        try:
            position = offset
            end = None if length is None else offset + length
            while end is None or position < end:
                size = self._chunk_size if end is None else min(self._chunk_size, end - position)
                try:
                    chunk = await asyncio.to_thread(os.pread, fd, size, position)
                except OSError as exc:
                    raise self._error(exc, "read", key, path) from exc
                if not chunk:
                    break
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            return await asyncio.to_thread(self._stat_file, key, path)
        except OSError as exc:
            raise self._error(exc, "stat", key, path) from exc

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        try:
            return await asyncio.to_thread(self._list, prefix)
        except OSError as exc:
            raise self._error(exc, "list", prefix, Path(exc.filename or self.root)) from exc

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        found: builtins.list[ObjectInfo] = []
        for directory, dir_key in self._walk(prefix):
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()]
            for name in names:
                key = dir_key + name
                if not key.startswith(prefix):
                    continue
                try:
                    found.append(self._stat_file(validate_key(key), directory / name))
                except (FileNotFoundError, PermanentStorageError):
                    continue  # deleted meanwhile, or a stray file no key can name
        return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(self._delete, path)
        except OSError as exc:
            raise self._error(exc, "delete", key, path) from exc

    def _delete(self, path: Path) -> None:
        # Data first: once it is gone the object is gone; a leftover info is swept by
        # remove_partials.
        for victim in (path, _info_path(path)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        with contextlib.suppress(FileNotFoundError):
            _fsync_dir(path.parent)  # the delete (a crypto-shred, for a manifest) is durable
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove `directory` and its parents up to the root while they are empty, so deleted
        backups leave no empty folders behind. rmdir only ever removes an empty directory, and
        an upload creates its own directory right before writing into it, so this cannot take
        a directory away from a writer that already started."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
            with contextlib.suppress(OSError):
                _fsync_dir(directory)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._check)
        except OSError as exc:
            raise self._error(exc, "check", "", self.root) from exc

    def _check(self) -> None:
        self._check_root()
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise PermanentStorageError(f"region {self.name}: root {self.root} is not writable")

    # -- housekeeping ------------------------------------------------------------------------

    async def remove_partials(self, prefix: str = "", older_than: float = 3600.0) -> int:
        """Remove leftovers of killed uploads under `prefix`: temp files, and info files whose
        object is gone, last modified more than `older_than` seconds ago. Returns how many.

        A temp file younger than `older_than` may belong to an upload in flight; pass 0 only
        when no upload under `prefix` can be running (the caller holds the source's lock).
        """
        try:
            return await asyncio.to_thread(self._remove_partials, prefix, older_than)
        except OSError as exc:
            raise self._error(exc, "remove_partials", prefix, self.root) from exc

    def _remove_partials(self, prefix: str, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        emptied: builtins.list[Path] = []
        for directory, dir_key in self._walk(prefix):
            with os.scandir(directory) as entries:
                candidates = [e for e in entries if e.name.startswith(".") and e.is_file()]
            for entry in candidates:
                owner = _leftover_owner(entry.name, directory)
                if owner is None or not (dir_key + owner).startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                        emptied.append(directory)
        for directory in emptied:
            self._prune_empty_dirs(directory)
        # Empty directories a crash left behind (a backup killed between mkdir and its first
        # byte); young ones may be an upload about to start.
        for directory, _ in sorted(self._walk(prefix), key=lambda d: -len(d[0].parts)):
            if directory == self.root or directory in emptied:
                continue
            with contextlib.suppress(OSError):
                if directory.stat().st_mtime <= cutoff and not any(directory.iterdir()):
                    self._prune_empty_dirs(directory)
        return removed


def _leftover_owner(name: str, directory: Path) -> str | None:
    """The object name a leftover dot-file belongs to, or None if it is not a leftover."""
    if PARTIAL_MARK in name:
        return name[1 : name.index(PARTIAL_MARK)]
    if name.endswith(INFO_SUFFIX):
        owner = name[1 : -len(INFO_SUFFIX)]
        return None if (directory / owner).exists() else owner
    return None
