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
import errno
import logging
import os
import secrets
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from drd.errors import RestoreError, SourceError, TargetExists
from drd.fsutil import remove_tree
from drd.strategies import file_xattrs
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.files_dump import _Walker
from drd.strategies.files_restore import _Extractor, _Refused
from drd.strategies.files_stream import _CHANNEL_CHUNKS, _EOF, _Channel, _Closed, _Worker
from drd.strategies.files_tar import _ALWAYS_SHOWN, FORMAT, MAX_READS

log = logging.getLogger(__name__)


class FilesOptions(SourceOptions):
    kind: Literal["files"] = "files"
    #: the directory to back up
    path: str
    #: glob patterns (relative to path) of entries to leave out
    exclude: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# A bounded channel between the event loop and one worker thread


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
