"""The restore side of the files strategy: extracting the tar stream into a staging tree
through a filter that refuses escapes, and applying owners, xattrs, modes and times in the
order the kernel needs (see drd.strategies.files)."""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
import tarfile
from pathlib import Path
from typing import IO, Any, cast

from drd.strategies import file_digests, file_xattrs, sparse_files
from drd.strategies.files_stream import _Channel, _ChannelReader, _Closed
from drd.strategies.files_tar import _ENCODING, _READ_AHEAD, _WARN_LIMIT, REREAD_RECORD, _mtime_ns

# One logger for the files strategy, whichever of its modules speaks.
log = logging.getLogger("drd.strategies.files")


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
