"""LocalStorage beyond the shared contract: the on-disk layout, keys that try to escape the
root, leftovers of killed uploads, disk errors. Also the URL registry that picks it, and the
fault-injecting wrapper used by failure tests."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drd.errors import (
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from drd.storage import local
from drd.storage.faults import FaultyStorage
from drd.storage.local import LocalStorage
from drd.storage.memory import MemoryStorage
from drd.storage.registry import open_storage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "region"
    path.mkdir()
    return path


@pytest.fixture
async def store(root: Path) -> AsyncIterator[LocalStorage]:
    storage = LocalStorage("disk", root)
    yield storage
    await storage.close()


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def partials(root: Path) -> list[str]:
    return [name for name in files_under(root) if local.PARTIAL_MARK in name]


# -- layout and keys ---------------------------------------------------------------------------


async def test_objects_are_plain_files_at_their_key(store: LocalStorage, root: Path) -> None:
    await store.put("plan/src/id/data.drd", b"bytes as they are", {"m": "1"})
    assert (root / "plan/src/id/data.drd").read_bytes() == b"bytes as they are"
    assert files_under(root) == ["plan/src/id/.data.drd.drd-info", "plan/src/id/data.drd"]


@pytest.mark.parametrize(
    "key", ["../outside", "a/../../outside", "/etc/passwd", "a//b", "a/./b", "a\x00b", "..", ""]
)
async def test_keys_cannot_escape_root(store: LocalStorage, root: Path, key: str) -> None:
    for attempt in (
        store.put(key, b"x"),
        store.get(key),
        store.stat(key),
        store.delete(key),
        store.open_writer(key),
    ):
        with pytest.raises(PermanentStorageError):
            await attempt
    assert files_under(root.parent) == []


async def test_missing_root_is_an_error_not_an_empty_region(tmp_path: Path) -> None:
    store = LocalStorage("disk", tmp_path / "unmounted")
    with pytest.raises(PermanentStorageError, match="not a directory"):
        await store.put("k", b"x")
    with pytest.raises(PermanentStorageError, match="not a directory"):
        await store.list()
    with pytest.raises(PermanentStorageError):
        await store.check()
    assert not (tmp_path / "unmounted").exists()
    created = LocalStorage("disk", tmp_path / "new", create_root=True)
    await created.put("k", b"x")
    assert (tmp_path / "new" / "k").read_bytes() == b"x"


async def test_stale_info_is_not_attributed_to_a_replaced_file(
    store: LocalStorage, root: Path
) -> None:
    await store.put("k", b"original", {"m": "1"})
    replacement = root / "elsewhere"
    replacement.write_bytes(b"replaced by hand")
    os.replace(replacement, root / "k")
    info = await store.stat("k")
    assert (info.size, info.checksum, info.metadata) == (len(b"replaced by hand"), None, {})


async def test_a_key_below_an_object_is_missing(store: LocalStorage) -> None:
    await store.put("a", b"an object, so the directory a/ cannot exist")
    with pytest.raises(ObjectNotFound):
        await store.stat("a/b")
    with pytest.raises(ObjectNotFound):
        await store.get("a/b")
    assert [i.key for i in await store.list("a/")] == []


async def test_stray_files_are_not_listed(store: LocalStorage, root: Path) -> None:
    await store.put("a/k", b"x")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / ".snapshot").mkdir()
    (root / ".snapshot" / "old").write_bytes(b"junk")
    assert [i.key for i in await store.list()] == ["a/k"]


# -- leftovers of killed uploads ---------------------------------------------------------------


async def test_unfinished_upload_is_hidden_and_removed_by_age(
    store: LocalStorage, root: Path
) -> None:
    writer = await store.open_writer("plan/src/id/data.drd")
    await writer.write(b"half a backup")  # ...and then the process is killed
    other = await store.open_writer("plan/other/id/data.drd")
    await other.write(b"another source")
    assert len(partials(root)) == 2
    assert await store.list() == []

    assert await store.remove_partials("plan/src/", older_than=3600) == 0  # may still be running
    for name in partials(root):
        os.utime(root / name, (time.time() - 7200, time.time() - 7200))
    assert await store.remove_partials("plan/src/", older_than=3600) == 1
    assert [name.split("/")[1] for name in partials(root)] == ["other"]
    assert await store.remove_partials("", older_than=0) == 1
    assert partials(root) == []
    await writer.abort()  # the temp is already gone: still fine
    await other.abort()


async def test_orphaned_info_is_removed(store: LocalStorage, root: Path) -> None:
    await store.put("a/k", b"x", {"m": "1"})
    (root / "a" / "k").unlink()  # a crash between deleting the data and its info
    await store.put("a/kept", b"y", {"m": "2"})
    assert await store.remove_partials("a/", older_than=0) == 1
    assert files_under(root) == ["a/.kept.drd-info", "a/kept"]
    assert (await store.stat("a/kept")).metadata == {"m": "2"}


# -- durability and hygiene (issue 14, point 6) -------------------------------------------------


def dirs_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir())


async def test_directories_are_0700_and_objects_0600_whatever_the_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        storage = LocalStorage("disk", tmp_path / "new-region", create_root=True)
        await storage.put("plan/src/id/data.drd", b"x")
    finally:
        os.umask(old)
    root = tmp_path / "new-region"
    for directory in [root, root / "plan", root / "plan/src", root / "plan/src/id"]:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    for name in files_under(root):
        assert (root / name).stat().st_mode & 0o777 == 0o600, name


async def test_delete_is_made_durable_with_a_directory_fsync(
    store: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.put("plan/src/id/manifest.drd", b"m")
    await store.put("plan/src/id/data.drd", b"d")
    synced: list[Path] = []
    real = local._fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(local, "_fsync_dir", spy)
    await store.delete("plan/src/id/manifest.drd")
    assert synced == [root / "plan/src/id"]
    synced.clear()
    await store.delete("plan/src/id/data.drd")
    # The file's directory, then each parent whose entry for an emptied directory went away.
    assert synced[0] == root / "plan/src/id"
    assert root / "plan/src" in synced
    assert dirs_under(root) == []


async def test_a_failed_upload_leaves_no_empty_directory(store: LocalStorage, root: Path) -> None:
    await store.put("plan/src/old/data.drd", b"kept")
    writer = await store.open_writer("plan/src/new/data.drd")
    await writer.write(b"half")
    await writer.abort()
    assert dirs_under(root) == ["plan", "plan/src", "plan/src/old"]


async def test_janitor_removes_old_empty_directories_only(store: LocalStorage, root: Path) -> None:
    await store.put("plan/src/kept/data.drd", b"kept")
    (root / "plan/src/crashed").mkdir()  # a backup killed right after its mkdir
    (root / "plan/src/young").mkdir()  # an upload about to start
    old = time.time() - 7200
    os.utime(root / "plan/src/crashed", (old, old))
    assert await store.remove_partials("plan/", older_than=3600) == 0
    assert dirs_under(root) == ["plan", "plan/src", "plan/src/kept", "plan/src/young"]


async def test_upload_survives_a_concurrent_prune_of_its_directory(
    store: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = local.LocalWriter._open
    calls: list[int] = []

    def open_after_prune(self: local.LocalWriter) -> None:
        if not calls:  # another upload's abort empties and removes the directory right now
            (root / "plan/src/id").rmdir()
        calls.append(1)
        real(self)

    monkeypatch.setattr(local.LocalWriter, "_open", open_after_prune)
    await store.put("plan/src/id/data.drd", b"d")
    assert (root / "plan/src/id/data.drd").read_bytes() == b"d"
    assert len(calls) == 2


# -- disk errors -------------------------------------------------------------------------------


async def test_disk_full_while_writing(
    store: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = await store.open_writer("plan/src/id/data.drd")
    await writer.write(b"fits")

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(local, "_write_all", disk_full)
    with pytest.raises(PermanentStorageError) as caught:
        await writer.write(b"does not fit")
    message = str(caught.value)
    assert "ENOSPC" in message and "No space left" in message
    assert str(root / "plan/src/id") in message and "data.drd" in message
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError):
        await writer.commit()  # a failed writer is dead
    await writer.abort()
    assert files_under(root) == []


async def test_io_error_on_commit_leaves_no_object(
    store: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = await store.open_writer("k")
    await writer.write(b"data")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(PermanentStorageError, match="EIO"):
        await writer.commit()
    monkeypatch.undo()
    assert files_under(root) == []
    with pytest.raises(ObjectNotFound):
        await store.stat("k")


async def test_transient_errnos_are_transient(store: LocalStorage, root: Path) -> None:
    error = store._error(OSError(errno.ESTALE, "Stale file handle"), "get", "k", root / "k")
    assert isinstance(error, TransientStorageError)
    error = store._error(OSError(errno.ENOENT, "gone"), "get", "k", root / "k")
    assert isinstance(error, ObjectNotFound)
    error = store._error(OSError(errno.ENOENT, "gone"), "write", "k", root / "k")
    assert type(error) is PermanentStorageError


# -- the registry ------------------------------------------------------------------------------


async def test_registry_file_urls(tmp_path: Path) -> None:
    absolute = open_storage("a", f"file://{tmp_path}/abs", chunk_size=4096)
    assert isinstance(absolute, LocalStorage) and absolute.root == tmp_path / "abs"
    assert absolute.name == "a"
    relative = open_storage("b", "file:backups/eu", base_dir=tmp_path)
    assert isinstance(relative, LocalStorage) and relative.root == tmp_path / "backups/eu"
    localhost = open_storage("c", f"file://localhost{tmp_path}")
    assert isinstance(localhost, LocalStorage) and localhost.root == tmp_path
    assert isinstance(open_storage("m", "mem://scratch"), MemoryStorage)


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("s3://user:hunter2@bucket/x", {}, "unsupported storage URL scheme s3:"),
        ("/no/scheme", {}, "unsupported storage URL scheme (none)"),
        ("file:relative", {}, "needs a base directory"),
        ("file://nas/share", {}, "remote host"),
        ("file:///x", {"timeout": 3}, "unknown option"),
        ("file:///x", {"endpoint": "http://127.0.0.1:1"}, "gs:// storage only"),
        ("file:///x?y=1", {}, "query"),
        ("gs://Not_A_Bucket", {}, "invalid GCS bucket name"),
    ],
)
def test_registry_rejects(url: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_storage("r", url, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_registry_gs_needs_credentials_without_an_emulator() -> None:
    with pytest.raises(PermanentStorageError, match="credentials"):
        open_storage("r", "gs://drd-backups/eu")


def test_registry_local_use_never_imports_google(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from drd.storage.registry import open_storage\n"
        f"open_storage('a', 'file://{tmp_path}')\n"
        "open_storage('b', 'mem://x')\n"
        # google_crc32c (a small C extension, the checksum every backend uses) is allowed;
        # the Google client libraries (the `google` namespace) are not.
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'google'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# -- the fault-injecting wrapper ---------------------------------------------------------------


async def test_faulty_storage_fails_chosen_ops_and_keys(store: LocalStorage) -> None:
    faulty = FaultyStorage(store)
    faulty.fail("put", TransientStorageError("503"), match="plan/a/", times=2)
    for _ in range(2):
        with pytest.raises(TransientStorageError):
            await faulty.put("plan/a/k", b"x")
    await faulty.put("plan/a/k", b"x")  # the fault was used up
    await faulty.put("plan/b/k", b"y")  # another prefix never failed
    faulty.fail("*", PermanentStorageError("403"))
    with pytest.raises(PermanentStorageError):
        await faulty.list()
    faulty.clear()
    assert [i.key for i in await faulty.list()] == ["plan/a/k", "plan/b/k"]
    assert ("put", "plan/a/k") in faulty.calls
    with pytest.raises(ValueError, match="unknown storage operation"):
        faulty.fail("upload", TransientStorageError("typo"))


async def test_faulty_writer_fails_after_n_bytes(store: LocalStorage, root: Path) -> None:
    faulty = FaultyStorage(store)
    faulty.fail_writer_after(10, PermanentStorageError("disk full"), times=1)
    writer = await faulty.open_writer("k")
    await writer.write(b"12345")
    with pytest.raises(PermanentStorageError, match="disk full"):
        await writer.write(b"6789012345")
    await writer.abort()
    assert files_under(root) == []
    second = await faulty.open_writer("k")  # times=1: the next writer is fine
    await second.write(b"6789012345")
    await second.commit()
    assert await faulty.get("k") == b"6789012345"


async def test_faulty_reader_and_latency(store: LocalStorage) -> None:
    faulty = FaultyStorage(store)
    await faulty.put("k", b"0123456789")
    faulty.fail_reader_after(4, TransientStorageError("reset"))
    got = b""
    with pytest.raises(TransientStorageError):
        async for chunk in faulty.open_reader("k"):
            got += chunk
    assert got == b"0123"
    faulty.clear()
    faulty.add_latency(0.05, op="get")
    started = time.monotonic()
    assert await faulty.get("k") == b"0123456789"
    assert time.monotonic() - started >= 0.05
