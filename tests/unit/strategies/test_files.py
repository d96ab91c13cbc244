"""FilesStrategy: PAX tar dump of a tree, filtered staged restore, and the failure paths."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import socket
import stat
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drd.errors import IntegrityError, RestoreError, SourceError, TargetExists
from drd.strategies import files_dump, get_strategy
from drd.strategies.files import FilesOptions, FilesStrategy

BASE_NS = 1_700_000_000_123_456_789  # 2023-11-14, with nanoseconds


def build_tree(root: Path) -> None:
    """Every kind of entry the strategy handles, with distinctive modes and ns mtimes."""
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    os.chmod(root / "a.txt", 0o640)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "run.sh", 0o755)
    (root / "empty").mkdir()
    deep = root / "nested" / "deeper" / "deepest"
    deep.mkdir(parents=True)
    (deep / "file.bin").write_bytes(os.urandom(3000))
    (root / "zero.bin").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(5 * 2**20))
    (root / "Zürich").mkdir()
    (root / "Zürich" / "東京 🦀.txt").write_text("grüezi ✓")
    long_dir = root / ("d" * 120)
    long_dir.mkdir()
    (long_dir / ("f" * 200)).write_text("a long path, beyond ustar's 100+155 bytes")
    (root / "link-rel").symlink_to("a.txt")
    (root / "nested" / "link-up").symlink_to("../a.txt")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "abs-link").symlink_to("/etc/hostname")
    (root / "hard1").write_text("linked")
    os.link(root / "hard1", root / "hard2")
    (root / "readonly").mkdir()
    (root / "readonly" / "inside.txt").write_text("x")
    # excluded below
    (root / "logs").mkdir()
    (root / "logs" / "app.log").write_text("log")
    (root / "nested" / "deeper" / "trace.log").write_text("log")
    (root / "cache").mkdir()
    (root / "cache" / "blob").write_text("cached")
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "index.js").write_text("js")

    # Distinct ns mtimes everywhere, directories last (writing into them changes theirs).
    entries = sorted(
        root.rglob("*"), key=lambda p: (p.is_dir() and not p.is_symlink(), -len(p.parts))
    )
    for i, p in enumerate(entries):
        ns = BASE_NS + i * 1_000_000_007
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.chmod(root / "readonly", 0o555)
    os.utime(root, ns=(BASE_NS - 5, BASE_NS - 5))


EXCLUDE = ["*.log", "cache/*", "node_modules"]
EXCLUDED = {
    "logs/app.log",
    "nested/deeper/trace.log",
    "cache/blob",
    "node_modules",
    "node_modules/pkg",
    "node_modules/pkg/index.js",
}


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything the restore must reproduce, per relative path ('.' is the root)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]
        ):
            p = Path(dirpath) / name if name != "." else root
            rel = os.path.relpath(p, root)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                extra: Any = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                extra = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size)
            else:
                extra = ("dir",)
            mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            out[rel] = (*extra, mode, st.st_mtime_ns, st.st_uid, st.st_gid)
    return out


def strategy_for(root: Path, exclude: list[str] | None = None) -> FilesStrategy:
    return FilesStrategy(
        FilesOptions(name="tree", kind="files", path=str(root), exclude=exclude or [])
    )


async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in it]


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("drd-files")]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_registry_and_options() -> None:
    assert get_strategy("files") is FilesStrategy
    with pytest.raises(ValueError):
        FilesOptions(name="t", kind="files", path="/x", nope=1)  # type: ignore[call-arg]


async def test_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    strategy = strategy_for(src, EXCLUDE)
    chunks = await collect(strategy.dump())
    assert all(len(c) == 1 << 20 for c in chunks[:-1])
    meta = strategy.restore_metadata()
    assert meta["format"] == "tar-pax"
    assert meta["mtime_precision"] == "ns"

    out = tmp_path / "out"
    out.mkdir()
    target = out / "restored"
    outcome = await FilesStrategy.restore(replay(chunks), str(target), meta)
    assert leftovers(out) == ["restored"]

    expected = {
        k: v
        for k, v in snapshot(src).items()
        if k not in EXCLUDED and not k.startswith("node_modules/")
    }
    assert "cache" in expected  # "cache/*" leaves the directory itself
    got = snapshot(target)
    assert got == expected  # content, modes, symlinks, and st_mtime_ns to the nanosecond
    assert got["a.txt"][-4] == 0o640 and got["bin/run.sh"][-4] == 0o755
    assert got["readonly"][-4] == 0o555
    assert got["dangling"][:2] == ("link", "does/not/exist")
    assert got["abs-link"][:2] == ("link", "/etc/hostname")
    assert (target / "hard1").stat().st_ino == (target / "hard2").stat().st_ino
    assert (target / "empty").is_dir() and not any((target / "empty").iterdir())

    assert outcome.details == {
        "file_count": meta["file_count"],
        "dir_count": meta["dir_count"],
        "symlink_count": 4,
        "total_bytes": meta["total_bytes"],
    }
    files = [k for k, v in expected.items() if v[0] == "file"]
    assert meta["file_count"] == len(files) and meta["hardlink_count"] == 1
    assert meta["total_bytes"] == sum(expected[k][2] for k in files) - len("linked")
    assert worker_threads() == []


async def test_ns_mtime_precision_survives_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    odd = {"a": 1_234_567_891_987_654_321, "b": 999_999_999, "c": 1_700_000_000_000_000_000}
    for name, ns in odd.items():
        (src / name).write_text(name)
        os.utime(src / name, ns=(ns, ns))
    chunks = await collect(strategy_for(src).dump())
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), {})
    for name, ns in odd.items():
        assert (target / name).stat().st_mtime_ns == ns


async def test_empty_target_directory_is_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    chunks = await collect(strategy_for(src).dump())
    target = tmp_path / "dst"
    target.mkdir()
    await FilesStrategy.restore(replay(chunks), str(target), {})
    assert (target / "f").read_text() == "x"
    assert leftovers(tmp_path) == ["dst", "src"]


@pytest.mark.parametrize("kind", ["nonempty-dir", "file", "symlink"])
async def test_existing_target_refused_and_untouched(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("new")
    chunks = await collect(strategy_for(src).dump())
    target = tmp_path / "dst"
    if kind == "nonempty-dir":
        target.mkdir()
        (target / "precious").write_text("keep")
    elif kind == "file":
        target.write_text("keep")
    else:
        (tmp_path / "empty").mkdir()
        target.symlink_to(tmp_path / "empty")
    before = snapshot(tmp_path)
    consumed = False

    async def stream() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        for c in chunks:
            yield c

    with pytest.raises(TargetExists):
        await FilesStrategy.restore(stream(), str(target), {})
    assert not consumed
    assert snapshot(tmp_path) == before


async def test_failure_mid_stream_leaves_neither_target_nor_staging(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    strategy = strategy_for(src)
    chunks = await collect(strategy.dump())
    assert len(chunks) >= 4
    meta = strategy.restore_metadata()
    out = tmp_path / "out"
    out.mkdir()

    async def tampered() -> AsyncIterator[bytes]:
        for c in chunks[:3]:
            yield c
        raise IntegrityError("segment 3 failed authentication")

    with pytest.raises(IntegrityError):
        await FilesStrategy.restore(tampered(), str(out / "dst"), meta)
    assert leftovers(out) == []

    # Truncated without an error from the iterator: tar notices the missing end.
    with pytest.raises(RestoreError):
        await FilesStrategy.restore(replay(chunks[:3]), str(out / "dst"), meta)
    assert leftovers(out) == []

    # An empty directory target stays as it was too.
    (out / "dst").mkdir()
    with pytest.raises(RestoreError):
        await FilesStrategy.restore(replay(chunks[:-1]), str(out / "dst"), meta)
    assert leftovers(out) == ["dst"] and not any((out / "dst").iterdir())
    assert worker_threads() == []


async def test_cancelled_restore_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    chunks = await collect(strategy_for(src).dump())
    out = tmp_path / "out"
    out.mkdir()
    fed = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield chunks[0]
        yield chunks[1]
        fed.set()
        await asyncio.sleep(3600)
        yield chunks[2]

    task = asyncio.ensure_future(FilesStrategy.restore(stalls(), str(out / "dst"), {}))
    await fed.wait()
    await asyncio.sleep(0.1)
    assert len(leftovers(out)) == 1  # staging under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(out) == []
    assert worker_threads() == []


async def test_garbage_and_empty_streams_are_refused(tmp_path: Path) -> None:
    for data in [b"", b"not a tar archive" * 100]:
        with pytest.raises(RestoreError):
            await FilesStrategy.restore(replay([data]), str(tmp_path / "dst"), {})
        assert leftovers(tmp_path) == []


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(lambda o: tar_of((member("../evil"), b"x")), id="dotdot"),
        pytest.param(lambda o: tar_of((member(f"{o}/evil"), b"x")), id="absolute"),
        pytest.param(
            lambda o: tar_of((member("esc", tarfile.SYMTYPE, o), None), (member("esc/evil"), b"x")),
            id="write-through-symlink",
        ),
        pytest.param(
            lambda o: tar_of(
                (member("up", tarfile.SYMTYPE, ".."), None), (member("up/outside/evil"), b"x")
            ),
            id="write-through-relative-symlink",
        ),
        pytest.param(
            lambda o: tar_of((member("h", tarfile.LNKTYPE, f"{o}/secret"), None)),
            id="hardlink-absolute",
        ),
        pytest.param(
            lambda o: tar_of((member("h", tarfile.LNKTYPE, "../outside/secret"), None)),
            id="hardlink-dotdot",
        ),
        pytest.param(
            lambda o: tar_of((member("f"), b"x"), (member("f"), b"y")), id="duplicate-member"
        ),
        pytest.param(
            lambda o: tar_of((member("f"), b"x"), (member("f", tarfile.FIFOTYPE), None)),
            id="duplicate-special",
        ),
    ],
)
async def test_extraction_filter_refuses_escapes(tmp_path: Path, archive: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    restore_dir = tmp_path / "r"
    restore_dir.mkdir()
    data = archive(str(outside))
    before = snapshot(outside)
    with pytest.raises(RestoreError):
        await FilesStrategy.restore(replay([data]), str(restore_dir / "dst"), {})
    assert snapshot(outside) == before
    assert leftovers(restore_dir) == []
    assert leftovers(tmp_path) == ["outside", "r"]


async def test_sockets_skipped_with_warning_fifos_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # FIFOs are archived and recreated (issue 16); a socket cannot be stored in tar.
    src = tmp_path / "src"
    src.mkdir()
    (src / "regular").write_text("x")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
            strategy = strategy_for(src)
            chunks = await collect(strategy.dump())
    finally:
        sock.close()
    assert strategy.restore_metadata()["skipped"] == 1
    assert strategy.restore_metadata()["fifo_count"] == 1
    assert [r.getMessage() for r in caplog.records if "sock" in r.getMessage()] != []
    assert not any("fifo" in r.getMessage() for r in caplog.records)
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), strategy.restore_metadata())
    assert leftovers(target) == ["fifo", "regular"]
    assert stat.S_ISFIFO((target / "fifo").lstat().st_mode)


async def test_entries_vanishing_during_the_dump_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "stays").write_text("x")
    (src / "goes").write_text("x")
    (src / "gonedir").mkdir()
    (src / "gonedir" / "f").write_text("x")
    original = files_dump._Walker._listing

    def listing_then_delete(self: Any, path: str) -> list[os.DirEntry[str]]:
        entries = original(self, path)
        if path == str(src):
            (src / "goes").unlink()
            (src / "gonedir" / "f").unlink()
            (src / "gonedir").rmdir()
        return entries

    monkeypatch.setattr(files_dump._Walker, "_listing", listing_then_delete)
    strategy = strategy_for(src)
    with caplog.at_level(logging.WARNING, logger="drd.strategies.files"):
        chunks = await collect(strategy.dump())
    assert strategy.restore_metadata()["skipped"] == 2
    assert sum("vanished" in r.getMessage() for r in caplog.records) == 2
    target = tmp_path / "dst"
    await FilesStrategy.restore(replay(chunks), str(target), strategy.restore_metadata())
    assert leftovers(target) == ["stays"]


async def test_unreadable_file_is_source_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_text("x")
    original = files_dump._Walker._add_file

    def denied(self: Any, tar: Any, path: str, rel: str, st: Any) -> None:
        if rel == "secret":
            raise PermissionError(13, "Permission denied", path)
        original(self, tar, path, rel, st)

    monkeypatch.setattr(files_dump._Walker, "_add_file", denied)
    strategy = strategy_for(src)
    with pytest.raises(SourceError, match="Permission denied"):
        await collect(strategy.dump())
    with pytest.raises(RuntimeError):
        strategy.restore_metadata()
    assert worker_threads() == []


async def test_missing_source_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        await collect(strategy_for(tmp_path / "nope").dump())


async def test_aclose_mid_dump_stops_the_worker_thread(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"big{i}").write_bytes(os.urandom(4 * 2**20))
    dump = strategy_for(src).dump()
    await anext(dump)
    await asyncio.sleep(0.05)  # let the worker fill the channel and block on it
    assert worker_threads() == ["drd-files-dump"]
    await dump.aclose()
    assert worker_threads() == []
