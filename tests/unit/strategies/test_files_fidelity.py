"""Files-source fidelity (issue 16 point 3, issue 15 point 4), against the real filesystem:
xattrs, POSIX ACLs and file capabilities in PAX SCHILY.xattr records; sparse files stored and
restored sparse; FIFOs and device nodes; files that change while being read (re-read, or the
backup is degraded); and the restore check comparing every entry's metadata.

Privileged parts (trusted.* and security.* xattrs, capabilities, device nodes, owners, a ramfs
mount for a filesystem without xattrs) need root, which the test machine runs as; they are
skipped elsewhere. Attributes are set with os.setxattr, so no attr/acl package is needed.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from drd.restore_tests import builtin
from drd.strategies import file_digests, files_dump
from drd.strategies import files as files_module
from drd.strategies.file_digests import tree_digests
from drd.strategies.files import FilesOptions, FilesStrategy

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (privileged xattrs, mknod, mount)")
NS = 1_700_000_000_123_456_789

# POSIX ACL tags and the "no id" value of the kernel's binary form
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int]) -> bytes:
    """The binary value of system.posix_acl_access / _default (version 2)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACCESS_ACL = acl(
    (USER_OBJ, 6, NO_ID),
    (USER, 4, 1000),
    (GROUP_OBJ, 4, NO_ID),
    (MASK, 4, NO_ID),
    (OTHER, 4, NO_ID),
)
DEFAULT_ACL = acl(
    (USER_OBJ, 7, NO_ID),
    (GROUP_OBJ, 5, NO_ID),
    (GROUP, 5, 1000),
    (MASK, 5, NO_ID),
    (OTHER, 0, NO_ID),
)
# cap_net_bind_service (10), permitted and effective: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
CAPABILITY = struct.pack("<IIIII", 0x02000000 | 1, 1 << 10, 0, 0, 0)


def xattrs_of(path: Path) -> dict[str, bytes]:
    names = os.listxattr(path, follow_symlinks=False)
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def full_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about every entry ('.' is the root): type, mode, owner, ns mtime, symlink
    target or device numbers, content digest, xattrs, and the other paths of its hard links."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    paths = [root, *sorted(root.rglob("*"))]
    for p in paths:
        rel = "." if p == root else str(p.relative_to(root))
        st = p.lstat()
        kind = file_digests.kind_of(st.st_mode)
        extra: Any = None
        if kind == "symlink":
            extra = os.readlink(p)
        elif kind in ("chr", "blk"):
            extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif kind == "file":
            extra = file_digests.file_sha256(str(p))
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
        out[rel] = (kind, mode, st.st_uid, st.st_gid, st.st_mtime_ns, extra, xattrs_of(p))
    for group in inodes.values():
        for rel in group:
            out[rel] = (*out[rel], tuple(sorted(set(group) - {rel})))
    return out


def strategy_for(root: Path) -> FilesStrategy:
    return FilesStrategy(FilesOptions(name="tree", kind="files", path=str(root)))


async def dump(root: Path) -> tuple[list[bytes], dict[str, Any]]:
    strategy = strategy_for(root)
    chunks = [c async for c in strategy.dump()]
    return chunks, strategy.restore_metadata()


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def members(chunks: list[bytes]) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:", encoding="utf-8") as tar:
        return tar.getmembers()


def settle_mtimes(root: Path) -> None:
    """Distinct ns mtimes everywhere, directories last (writing into them changes theirs)."""
    entries = sorted(
        root.rglob("*"), key=lambda p: (p.is_dir() and not p.is_symlink(), -len(p.parts))
    )
    for i, p in enumerate(entries):
        ns = NS + i * 1_000_000_007
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(NS - 5, NS - 5))


def build_xattr_tree(root: Path) -> None:
    root.mkdir()
    f = root / "file.txt"
    f.write_text("with attributes\n")
    os.setxattr(f, "user.binary", b"\x00\xff\xfe not utf-8 \x80")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.text", "grüezi ✓".encode())
    os.setxattr(f, "user.big", os.urandom(3000))
    os.setxattr(f, "system.posix_acl_access", ACCESS_ACL)
    d = root / "shared"
    d.mkdir()
    os.setxattr(d, "system.posix_acl_default", DEFAULT_ACL)
    os.setxattr(d, "user.dir", b"on a directory")
    (d / "inherited.txt").write_text("created under a default ACL\n")  # inherits one
    (root / "plain.txt").write_text("no attributes\n")
    if ROOT:
        os.setxattr(f, "trusted.secret", b"only root reads this")
        os.setxattr(f, "security.label", b"system_u:object_r:etc_t:s0")
        tool = root / "ping"
        tool.write_bytes(b"\x7fELF pretend binary")
        os.chown(tool, 1000, 1000)
        os.chmod(tool, 0o4755)  # set-uid and a capability: both survive only in order
        os.setxattr(tool, "security.capability", CAPABILITY)
        (root / "link").symlink_to("file.txt")
        os.setxattr(root / "link", "trusted.on-link", b"symlink attribute", follow_symlinks=False)
        os.mkfifo(root / "fifo")
        os.setxattr(root / "fifo", "trusted.on-fifo", b"fifo attribute")
    settle_mtimes(root)


async def test_xattrs_acls_and_capabilities_survive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_xattr_tree(src)
    before = full_state(src)
    assert "system.posix_acl_access" in before["shared/inherited.txt"][-2]  # from the default
    chunks, meta = await dump(src)

    # In the stream as GNU tar writes them: SCHILY.xattr.<name> with the raw value, and the ACL
    # in text form too (for `tar --acls`).
    by_name = {m.name: m for m in members(chunks)}
    pax = by_name["file.txt"].pax_headers
    assert pax["SCHILY.xattr.user.binary"].encode("utf-8", "surrogateescape") == (
        b"\x00\xff\xfe not utf-8 \x80"
    )
    assert pax["SCHILY.xattr.user.empty"] == ""
    assert pax["SCHILY.acl.access"] == "user::rw-,user:1000:r--,group::r--,mask::r--,other::r--"
    assert by_name["shared"].pax_headers["SCHILY.acl.default"] == (
        "user::rwx,group::r-x,group:1000:r-x,mask::r-x,other::---"
    )
    assert "hdrcharset" not in pax  # raw xattr values need no BINARY charset record

    target = tmp_path / "dst"
    outcome = await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert full_state(target) == before
    assert outcome.warnings == [] and "xattrs_not_restored" not in outcome.details
    assert (
        outcome.details["xattr_count"]
        == meta["xattr_count"]
        == sum(len(v[6]) for v in before.values())
    )
    if ROOT:
        ping = full_state(target)["ping"]
        assert ping[1] == 0o4755 and ping[2:4] == (1000, 1000)
        assert ping[6]["security.capability"] == CAPABILITY
    check = builtin.digests(meta["statistics"]["file_digests"], tree_digests(target))
    assert check.status == "passed", check.detail
    assert "xattrs/ACLs" in check.detail
    entries = meta["statistics"]["file_digests"]["entries"]
    assert entries["with_acls"] == 3  # file.txt, shared (default), shared/inherited.txt


async def test_a_default_acl_above_the_target_is_not_inherited(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("x")
    (src / "g").write_text("y")
    settle_mtimes(src)
    before = full_state(src)
    chunks, meta = await dump(src)
    parent = tmp_path / "restores"
    parent.mkdir()
    os.setxattr(parent, "system.posix_acl_default", DEFAULT_ACL)
    target = parent / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert full_state(target) == before  # no ACL appeared on any restored entry


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A filesystem without any xattr support (ramfs), mounted for the test."""
    if not ROOT:
        pytest.skip("mounting ramfs needs root")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ramfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_a_target_without_xattrs_gets_per_file_warnings_and_a_count(
    tmp_path: Path, ramfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    os.setxattr(src / "a.txt", "user.one", b"1")
    os.setxattr(src / "a.txt", "user.two", b"2")
    (src / "dir").mkdir()
    os.setxattr(src / "dir", "system.posix_acl_default", DEFAULT_ACL)
    (src / "b.txt").write_text("b")
    chunks, meta = await dump(src)
    with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
        outcome = await FilesStrategy.restore(replay(chunks), str(ramfs / "dst"), meta)
    assert (ramfs / "dst" / "a.txt").read_text() == "a"  # everything else is there
    assert outcome.details["xattrs_not_restored"] == 3
    assert outcome.warnings[0].startswith("3 extended attribute(s)")
    per_file = [r.getMessage() for r in caplog.records if "not restored" in r.getMessage()]
    assert any(
        "a.txt: extended attribute(s) not restored: user.one (the filesystem does not support "
        "it), user.two" in m
        for m in per_file
    )
    assert any(
        "dir: extended attribute(s) not restored: system.posix_acl_default" in m for m in per_file
    )
    # The restore check says what the copy lacks, by entry and aspect.
    check = builtin.digests(meta["statistics"]["file_digests"], tree_digests(ramfs / "dst"))
    assert check.failed and check.critical
    assert "metadata differs: a.txt (xattrs), dir (xattrs)" in check.detail


async def test_a_sparse_1gib_file_is_stored_and_restored_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = [os.urandom(4096) for _ in range(3)]
    with open(src / "disk.img", "wb") as f:
        f.truncate(1 << 30)
        for block, offset in zip(data, (0, 512 << 20, (1 << 30) - 4096), strict=True):
            f.seek(offset)
            f.write(block)
    with open(src / "tail-hole", "wb") as f:  # data, then a hole up to the end
        f.seek(1 << 20)
        f.write(b"x" * 4096)
        f.truncate(10 << 20)
    with open(src / "all-hole", "wb") as f:
        f.truncate(5 << 20)
    (src / "dense").write_bytes(bytes(64 << 10))  # written zeros: data, not a hole
    for name in ("disk.img", "tail-hole", "all-hole"):
        st = (src / name).stat()
        if st.st_blocks * 512 >= st.st_size:
            pytest.skip("this filesystem does not keep holes")
    settle_mtimes(src)
    before = full_state(src)

    chunks, meta = await dump(src)
    assert meta["sparse_count"] == 3
    assert sum(map(len, chunks)) < 1 << 20  # the holes are not in the stream
    by_name = {m.name: m for m in members(chunks)}
    image = by_name["disk.img"]
    assert (
        image.pax_headers["GNU.sparse.major"] == "1"
        and image.pax_headers["GNU.sparse.minor"] == "0"
    )
    assert image.pax_headers["GNU.sparse.realsize"] == str(1 << 30)
    assert image.sparse == [(0, 4096), (512 << 20, 4096), ((1 << 30) - 4096, 4096)]
    assert by_name["tail-hole"].sparse == [(1 << 20, 4096), (10 << 20, 0)]
    assert by_name["all-hole"].sparse == [(5 << 20, 0)]

    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert full_state(target) == before
    restored = (target / "disk.img").stat()
    assert restored.st_size == 1 << 30
    assert restored.st_blocks * 512 <= 64 << 10  # ~12 KiB allocated, not 1 GiB
    assert (target / "all-hole").stat().st_blocks == 0
    assert (target / "dense").stat().st_blocks * 512 >= 64 << 10  # kept dense, as it was
    with open(target / "disk.img", "rb") as f:
        f.seek(512 << 20)
        assert f.read(4096) == data[1]


@needs_root
async def test_fifos_and_device_nodes_are_recreated(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o640)
    os.chown(src / "pipe", 1000, 1000)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop200", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(src / "loop200", 0, 6)
    os.chmod(src / "pipe", 0o640)
    os.chmod(src / "null", 0o666)
    settle_mtimes(src)
    before = full_state(src)
    chunks, meta = await dump(src)
    assert (meta["fifo_count"], meta["device_count"], meta["skipped"]) == (1, 2, 0)
    target = tmp_path / "dst"
    outcome = await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert full_state(target) == before
    assert (outcome.details["fifo_count"], outcome.details["device_count"]) == (1, 2)
    check = builtin.digests(meta["statistics"]["file_digests"], tree_digests(target))
    assert check.status == "passed" and "2 device nodes" in check.detail


async def test_device_nodes_without_the_privilege_are_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    if ROOT:
        os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(src / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    else:
        pytest.skip("making the device nodes to archive needs root")
    chunks, meta = await dump(src)

    def refused(*args: Any, **kwargs: Any) -> None:  # what the kernel says without CAP_MKNOD
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files_module.os, "mknod", refused)
    target = tmp_path / "dst"
    with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
        outcome = await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert sorted(os.listdir(target)) == ["f"]
    assert outcome.details["devices_not_restored"] == 2
    assert any("not running as root" in w for w in outcome.warnings)
    per_file = [r.getMessage() for r in caplog.records if r.getMessage().endswith("(CAP_MKNOD)")]
    assert [m.split(": ")[1] for m in per_file if "first ones" not in m] == ["null", "zero"]
    expected = meta["statistics"]["file_digests"]
    lenient = builtin.digests(expected, tree_digests(target), privileged=False)
    assert lenient.status == "passed"
    assert "not compared: 2 device node(s) (only root can create them)" in lenient.detail
    strict = builtin.digests(expected, tree_digests(target), privileged=True)
    assert strict.failed and "0 device nodes restored, 2 archived" in strict.detail


async def test_a_file_rewritten_while_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    moving = src / "moving.bin"
    moving.write_bytes(b"A" * (3 << 20))
    (src / "still.txt").write_text("untouched")
    new = b"B" * (2 << 20)
    original = files_dump._FileReader.read
    rewritten = threading.Event()

    def read_and_rewrite_once(self: Any, n: int = -1) -> bytes:
        out = original(self, n)
        if not rewritten.is_set():
            rewritten.set()
            moving.write_bytes(new)  # truncated and rewritten under the reader
        return out

    monkeypatch.setattr(files_dump._FileReader, "read", read_and_rewrite_once)
    chunks, meta = await dump(src)
    assert rewritten.is_set()
    assert (meta["reread"], meta["unstable"]) == (1, 0)
    assert "degraded" not in meta
    names = [m.name for m in members(chunks)]
    assert names.count("moving.bin") == 2  # the second supersedes the first
    assert members(chunks)[names.index("moving.bin") + 1].pax_headers["DRD.reread"] == "2"
    target = tmp_path / "dst"
    outcome = await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert (target / "moving.bin").read_bytes() == new
    assert outcome.details["file_count"] == 2 and outcome.details["total_bytes"] == len(new) + 9
    check = builtin.digests(meta["statistics"]["file_digests"], tree_digests(target))
    assert check.status == "passed", check.detail
    if shutil.which("tar"):  # a plain tar extraction keeps the last copy too
        out = tmp_path / "tar"
        out.mkdir()
        subprocess.run(["tar", "-x", "-C", str(out)], input=b"".join(chunks), check=True)
        assert (out / "moving.bin").read_bytes() == new


async def test_a_file_shrinking_on_every_read_says_where_the_padding_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shrinking = src / "shrinking.log"
    shrinking.write_bytes(b"L" * (1 << 20))
    original = files_dump._FileReader.__init__

    def shrink_after_stat(self: Any, fd: int, st: os.stat_result, *args: Any, **kw: Any) -> None:
        original(self, fd, st, *args, **kw)
        os.truncate(shrinking, st.st_size // 2)  # after the header said st.st_size

    monkeypatch.setattr(files_dump._FileReader, "__init__", shrink_after_stat)
    with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
        chunks, meta = await dump(src)
    last = (1 << 20) // 4  # the size the third (last) read started from
    assert meta["unstable"] == 1
    why = meta["unstable_files"]["shrinking.log"]
    assert why == (
        "kept changing while being read (3 reads); it shrank while being read: its last "
        f"{last // 2} bytes in the archive are zero padding, not its content"
    )
    assert "zero padding stands in for their missing bytes" in meta["degraded"][0]
    assert any(
        "degraded" in r.getMessage() and "shrinking.log" in r.getMessage() for r in caplog.records
    )
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), meta)
    restored = (target / "shrinking.log").read_bytes()
    assert restored == b"L" * (last // 2) + bytes(last // 2)  # as archived, and as said


async def test_a_file_that_keeps_changing_makes_the_backup_degraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "stable.txt").write_text("stays the same\n")
    hot = src / "hot.bin"
    block = 256 << 10
    hot.write_bytes(b"\1" * (16 << 20))
    stop = threading.Event()
    rewrites = 0

    def writer() -> None:
        # Truncate and rewrite it, over and over, as a careless program does (it never gets
        # shorter than 15 MiB, so no read of it can be quick enough to look consistent).
        nonlocal rewrites
        fd = os.open(hot, os.O_WRONLY)
        try:
            while not stop.is_set():
                os.ftruncate(fd, 15 << 20)
                fill = bytes([rewrites % 250 + 2]) * block
                for offset in range(0, 16 << 20, block):
                    os.pwrite(fd, fill, offset)
                rewrites += 1
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer, name="test-writer")
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
            chunks, meta = await dump(src)
    finally:
        stop.set()
        thread.join()
    assert rewrites > 0
    assert meta["unstable"] == 1 and meta["reread"] == 0
    assert meta["unstable_files"]["hot.bin"].startswith("kept changing while being read (3 reads)")
    assert meta["degraded"][0].startswith("1 file(s) kept changing while being read (3 reads each)")
    assert meta["degraded"][0].endswith("hot.bin") or "hot.bin;" in meta["degraded"][0]
    assert any("hot.bin" in r.getMessage() and "degraded" in r.getMessage() for r in caplog.records)
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert (target / "stable.txt").read_text() == "stays the same\n"
    # The restored copy is what was archived (its last read), and the check proves that much.
    check = builtin.digests(meta["statistics"]["file_digests"], tree_digests(target))
    assert check.status == "passed", check.detail


def build_mixed_tree(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "dir" / "b.txt").write_text("b")
    (root / "x.txt").write_text("x")
    os.setxattr(root / "x.txt", "user.tag", b"1")
    (root / "link").symlink_to("a.txt")
    os.mkfifo(root / "pipe")
    (root / "h1").write_text("hard")
    os.link(root / "h1", root / "h2")
    if ROOT:
        (root / "owned.txt").write_text("o")
        os.chown(root / "owned.txt", 1000, 1000)
    settle_mtimes(root)


async def test_the_restore_check_names_every_difference(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_mixed_tree(src)
    chunks, meta = await dump(src)
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), meta)
    expected = meta["statistics"]["file_digests"]

    ok = builtin.digests(expected, tree_digests(target), privileged=True)
    assert ok.status == "passed"
    assert ok.detail.startswith(
        f"compared content (sha256) of {meta['file_count']} regular files; type, mode, owner, "
        "mtime (ns), symlink target / device numbers, xattrs/ACLs, trusted.*/security.* xattrs "
        "(capabilities, labels) of "
    )
    assert "1 fifo" in ok.detail and "1 hard-link groups" in ok.detail

    os.chmod(target / "a.txt", 0o600)
    os.utime(target / "dir", ns=(1, 1))
    (target / "link").unlink()
    (target / "link").symlink_to("x.txt")
    os.removexattr(target / "x.txt", "user.tag")
    (target / "pipe").unlink()
    (target / "pipe").mkdir()
    (target / "h2").unlink()
    (target / "h2").write_text("hard")  # same content, no longer the same inode
    os.utime(target / "h2", ns=((target / "h1").stat().st_mtime_ns,) * 2)
    if ROOT:
        os.chown(target / "owned.txt", 0, 0)
    bad = builtin.digests(expected, tree_digests(target), privileged=True)
    assert bad.failed and bad.critical
    for difference in (
        "a.txt (mode)",
        "dir (mtime)",
        "link (mtime, target)",  # a new symlink: a new mtime too
        "pipe (type, mode, mtime)",
        "x.txt (xattrs)",
        ". (mtime)",  # the changes above touched the root directory
    ):
        assert difference in bad.detail, bad.detail
    assert (
        "hard links differ: 1 groups of paths sharing an inode archived, 0 restored" in bad.detail
    )
    if ROOT:
        assert "owned.txt (owner)" in bad.detail
        lenient = builtin.digests(expected, tree_digests(target), privileged=False)
        assert "owned.txt" not in lenient.detail
        assert "not compared: owners and trusted.*/security.* xattrs" in lenient.detail


def test_trees_too_large_to_list_still_compare_every_aspect(tmp_path: Path) -> None:
    root = tmp_path / "t"
    build_mixed_tree(root)
    expected = tree_digests(root, limit=2).as_json()
    assert expected["entries"]["entries"] is None
    assert builtin.digests(expected, tree_digests(root, limit=2)).status == "passed"
    os.chmod(root / "dir" / "b.txt", 0o600)
    result = builtin.digests(expected, tree_digests(root, limit=2))
    assert result.failed
    assert "mode differ for some entries (too many to list which)" in result.detail


def test_an_old_backup_without_entry_metadata_compares_content_only(tmp_path: Path) -> None:
    root = tmp_path / "t"
    build_mixed_tree(root)
    old = file_digests.DigestList()
    actual = tree_digests(root)
    for name, digest in (actual.files or {}).items():
        old.add(name, digest)
    result = builtin.digests(old.as_json(), actual)
    assert result.status == "passed"
    assert result.detail.endswith("not compared: entry metadata (the backup predates it)")


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
async def test_gnu_tar_restores_the_decrypted_stream_in_full(tmp_path: Path) -> None:
    """`tar --xattrs --xattrs-include='*' --acls -x` on the plain stream gives back the same
    tree: xattrs, ACLs, capabilities, sparse files, FIFOs, device nodes, hard links, ns
    mtimes; and says nothing about it on stderr."""
    src = tmp_path / "src"
    build_xattr_tree(src)
    build_mixed_tree(src / "mixed")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(os.urandom(8192))
    if ROOT:
        os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    settle_mtimes(src)
    before = full_state(src)
    chunks, _ = await dump(src)
    out = tmp_path / "tar"
    out.mkdir()
    done = subprocess.run(
        ["tar", "-x", "--xattrs", "--xattrs-include=*", "--acls", "-C", str(out)],
        input=b"".join(chunks),
        capture_output=True,
    )
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
    got = full_state(out)
    assert got.pop(".")[1:5] == before.pop(".")[1:5]  # tar leaves the root's own xattrs alone
    assert got == before
    assert (out / "sparse.img").stat().st_blocks * 512 <= 64 << 10
