"""The dump side of the files strategy: walking the tree into a PAX tar stream, with files
that change while read re-read a bounded number of times (see drd.strategies.files)."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import stat
import tarfile
import time
from collections import deque
from pathlib import Path
from typing import IO, cast

from drd.strategies import file_digests, file_xattrs, sparse_files
from drd.strategies.files_stream import _Channel, _ChannelWriter, _Closed
from drd.strategies.files_tar import (
    _CHECK_EVERY,
    _ENCODING,
    _NS,
    _READ_AHEAD,
    _REREAD_PAUSE,
    _ZEROS,
    MAX_READS,
    REREAD_RECORD,
    UNSTABLE_LISTED,
    _ns_to_pax,
    _PaxInfo,
    _state,
)

# One logger for the files strategy, whichever of its modules speaks.
log = logging.getLogger("drd.strategies.files")


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
