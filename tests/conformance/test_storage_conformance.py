"""One storage contract, every backend: memory, a local directory, and GCS on a real
fake-gcs-server. A backend passes these or it does not ship (after restic's backend suite)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import google_crc32c
import pytest

from drd.errors import ObjectNotFound, PermanentStorageError, StorageError
from drd.storage.base import ObjectInfo, Storage
from drd.storage.gcs import GCSStorage
from drd.storage.google_auth import anonymous_credentials
from drd.storage.local import LocalStorage
from drd.storage.memory import MemoryStorage
from tests.support.fakegcs import make_gcs_storage

KIB = 1024
MIB = 1024 * KIB
CHUNK = 256 * KIB  # the smallest chunk GCS allows: many chunks with little data

MakeStore = Callable[..., Awaitable[Storage]]


@pytest.fixture(
    params=[
        "memory",
        "local",
        pytest.param("gcs", marks=pytest.mark.integration),
        pytest.param("gcs-emulator", marks=pytest.mark.integration),
    ]
)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """`await make_store(chunk_size=...)` -> a fresh, empty region of the parametrized kind."""
    opened: list[Storage] = []

    async def make(chunk_size: int = CHUNK) -> Storage:
        store: Storage
        if request.param == "memory":
            store = MemoryStorage("mem", chunk_size=chunk_size)
        elif request.param == "local":
            root = tmp_path / f"region{len(opened)}"
            store = LocalStorage("disk", root, chunk_size=chunk_size, create_root=True)
        elif request.param == "gcs-emulator":
            emulator = request.getfixturevalue("gcs_emulator")
            if not opened:
                emulator.create_bucket("drd-test")
            store = GCSStorage(
                "gcs",
                "drd-test",
                "deploy/eu",
                project="test",
                endpoint=emulator.endpoint,
                credentials=anonymous_credentials(),
                chunk_size=chunk_size,
                timeout=10,
            )
        else:
            server = request.getfixturevalue("gcs_region")
            # A bucket prefix, so every test also checks that keys are mapped under it.
            store = make_gcs_storage(
                server, "gcs", "drd-test", prefix="deploy/eu", chunk_size=chunk_size, timeout=10
            )
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@asynccontextmanager
async def reading(
    store: Storage, key: str, offset: int = 0, length: int | None = None
) -> AsyncIterator[AsyncIterator[bytes]]:
    """open_reader, closed on exit: every backend returns an async generator."""
    reader = store.open_reader(key, offset, length)
    try:
        yield reader
    finally:
        await reader.aclose()  # type: ignore[attr-defined]


async def read_all(store: Storage, key: str, offset: int = 0, length: int | None = None) -> bytes:
    async with reading(store, key, offset, length) as reader:
        return b"".join([chunk async for chunk in reader])


def assert_checksum(info: ObjectInfo, data: bytes) -> None:
    assert info.checksum is not None, "every backend here computes a checksum"
    kind, _, value = info.checksum.partition(":")
    if kind == "sha256":
        assert value == hashlib.sha256(data).hexdigest()
    elif kind == "crc32c":
        digest = google_crc32c.Checksum(data).digest()  # type: ignore[no-untyped-call]
        assert value == base64.b64encode(digest).decode()
    else:
        pytest.fail(f"unknown checksum kind {info.checksum}")


# -- whole-object operations -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, CHUNK + 1])
async def test_put_get_stat(store: Storage, size: int) -> None:
    data = payload(size)
    info = await store.put("plan/src/obj", data)
    assert (info.key, info.size) == ("plan/src/obj", size)
    assert_checksum(info, data)
    assert await store.get("plan/src/obj") == data
    stat = await store.stat("plan/src/obj")
    assert (stat.key, stat.size, stat.checksum) == ("plan/src/obj", size, info.checksum)


async def test_put_replaces_whole_object(store: Storage) -> None:
    await store.put("k", payload(5000, seed=1), {"v": "1"})
    info = await store.put("k", b"short", {"v": "2"})
    assert await store.get("k") == b"short"
    assert await store.stat("k") == info
    assert info.metadata == {"v": "2"}


async def test_metadata_round_trip(store: Storage) -> None:
    meta = {"backup-id": "20261128T134700Z-9f2c1a0b", "key-id": "k1", "empty": ""}
    put_info = await store.put("a/manifest.json", b"{}", meta)
    writer = await store.open_writer("a/data.drd", {"codec": "zstd"})
    await writer.write(b"x" * 10)
    commit_info = await writer.commit()
    assert put_info.metadata == meta
    assert commit_info.metadata == {"codec": "zstd"}
    assert (await store.stat("a/manifest.json")).metadata == meta
    listed = {info.key: info for info in await store.list("a/")}
    assert listed["a/manifest.json"].metadata == meta
    assert listed["a/data.drd"].metadata == {"codec": "zstd"}
    assert (await store.stat("a/data.drd")).metadata == {"codec": "zstd"}
    await store.put("a/plain", b"")
    assert (await store.stat("a/plain")).metadata == {}


async def test_delete(store: Storage) -> None:
    await store.put("x/1", b"one")
    await store.put("x/2", b"two")
    await store.delete("x/1")
    with pytest.raises(ObjectNotFound):
        await store.stat("x/1")
    assert [i.key for i in await store.list()] == ["x/2"]
    await store.delete("x/1")  # missing: not an error
    await store.delete("never/existed")


async def test_missing_object(store: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("no/such")
    with pytest.raises(ObjectNotFound):
        await store.stat("no/such")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "no/such")


@pytest.mark.parametrize(
    "key", ["", "/abs", "trailing/", "a//b", "../up", "a/../b", "./a", ".hidden", "a/.b", "nul\x00"]
)
async def test_invalid_keys_rejected(store: Storage, key: str) -> None:
    with pytest.raises(PermanentStorageError) as caught:
        await store.put(key, b"data")
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(PermanentStorageError):
        await store.open_writer(key)
    with pytest.raises(PermanentStorageError):
        await store.stat(key)
    assert await store.list() == []


# -- listing -----------------------------------------------------------------------------------


async def test_list_prefix_sorted_nested(store: Storage) -> None:
    keys = ["b/2", "a/sub/y", "ab", "a/1", "a/sub/deep/x", "c", "a/sub/deep/z"]
    for i, key in enumerate(keys):
        await store.put(key, payload(i + 1, seed=i))

    async def listed(prefix: str) -> list[str]:
        return [info.key for info in await store.list(prefix)]

    assert await listed("") == sorted(keys)
    assert await listed("a/") == ["a/1", "a/sub/deep/x", "a/sub/deep/z", "a/sub/y"]
    assert await listed("a") == ["a/1", "a/sub/deep/x", "a/sub/deep/z", "a/sub/y", "ab"]
    assert await listed("a/sub/d") == ["a/sub/deep/x", "a/sub/deep/z"]
    assert await listed("a/sub/deep/x") == ["a/sub/deep/x"]
    assert await listed("zzz") == []
    assert await listed("b/2/") == []
    sizes = {info.key: info.size for info in await store.list()}
    assert sizes == {key: i + 1 for i, key in enumerate(keys)}
    for info in await store.list():
        assert_checksum(info, payload(info.size, seed=keys.index(info.key)))


async def test_check_healthy(store: Storage) -> None:
    await store.check()


# -- streaming writes --------------------------------------------------------------------------


async def test_writer_visible_only_after_commit(store: Storage) -> None:
    data = payload(3 * CHUNK + CHUNK // 2)
    writer = await store.open_writer("plan/src/id/data.drd")
    for start in range(0, len(data), 100 * KIB):  # pieces that do not line up with chunks
        await writer.write(data[start : start + 100 * KIB])
        assert await store.list() == []
        with pytest.raises(ObjectNotFound):
            await store.stat("plan/src/id/data.drd")
    info = await writer.commit()
    assert (info.key, info.size) == ("plan/src/id/data.drd", len(data))
    assert_checksum(info, data)
    assert [i.key for i in await store.list()] == ["plan/src/id/data.drd"]
    assert await store.get("plan/src/id/data.drd") == data


@pytest.mark.parametrize("size", [0, CHUNK, 2 * CHUNK])
async def test_writer_exact_chunk_multiples(store: Storage, size: int) -> None:
    data = payload(size)
    writer = await store.open_writer("k")
    if data:
        await writer.write(data)
    info = await writer.commit()
    assert info.size == size
    assert await read_all(store, "k") == data


async def test_overwrite_keeps_old_object_until_commit(store: Storage) -> None:
    await store.put("k", b"old")
    writer = await store.open_writer("k")
    await writer.write(payload(2 * CHUNK))
    assert await store.get("k") == b"old"
    await writer.commit()
    assert await store.get("k") == payload(2 * CHUNK)


async def test_abort_leaves_nothing(store: Storage) -> None:
    writer = await store.open_writer("gone/data.drd", {"m": "1"})
    await writer.write(payload(2 * CHUNK + 7))
    await writer.abort()
    await writer.abort()  # twice is fine
    with pytest.raises(ObjectNotFound):
        await store.stat("gone/data.drd")
    assert await store.list() == []
    with pytest.raises(StorageError):
        await writer.write(b"more")
    with pytest.raises(StorageError):
        await writer.commit()
    assert await store.list() == []


async def test_abort_after_commit_does_nothing(store: Storage) -> None:
    writer = await store.open_writer("k")
    await writer.write(b"kept")
    await writer.commit()
    await writer.abort()
    assert await store.get("k") == b"kept"
    with pytest.raises(StorageError):
        await writer.commit()  # a second commit is a bug in the caller
    with pytest.raises(StorageError):
        await writer.write(b"late")


async def test_concurrent_writers_to_different_keys(store: Storage) -> None:
    n = 6
    writers = [await store.open_writer(f"c/{i}", {"i": str(i)}) for i in range(n)]
    datas = [payload(CHUNK + 1000 * i, seed=i) for i in range(n)]

    async def pump(i: int) -> ObjectInfo:
        for start in range(0, len(datas[i]), 64 * KIB):
            await writers[i].write(datas[i][start : start + 64 * KIB])
            await asyncio.sleep(0)  # interleave the uploads
        return await writers[i].commit()

    infos = await asyncio.gather(*(pump(i) for i in range(n)))
    assert [info.size for info in infos] == [len(d) for d in datas]
    for i in range(n):
        assert await store.get(f"c/{i}") == datas[i]
        assert (await store.stat(f"c/{i}")).metadata == {"i": str(i)}


# -- streaming reads ---------------------------------------------------------------------------

SIZE = 3 * CHUNK + 1234


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, None),
        (10, 100),
        (CHUNK - 1, 2),  # across a chunk boundary
        (CHUNK, CHUNK),
        (5, 2 * CHUNK + 100),
        (SIZE - 5, None),
        (SIZE - 5, 100),  # a length past the end is cut at the end
        (SIZE, None),  # at the end: nothing
        (SIZE + 10, 5),  # past the end: nothing
        (100, 0),
    ],
)
async def test_reader_ranges(store: Storage, offset: int, length: int | None) -> None:
    data = payload(SIZE)
    await store.put("r", data)
    chunks: list[bytes] = []
    async with reading(store, "r", offset, length) as reader:
        async for chunk in reader:
            chunks.append(chunk)
    end = None if length is None else offset + length
    assert b"".join(chunks) == data[offset:end]
    assert all(0 < len(c) <= CHUNK for c in chunks), "streamed in chunks of at most chunk_size"


async def test_reader_rejects_negative_range(store: Storage) -> None:
    await store.put("r", b"abc")
    with pytest.raises(ValueError):
        await read_all(store, "r", -1)
    with pytest.raises(ValueError):
        await read_all(store, "r", 0, -1)


async def test_reader_stops_early(store: Storage) -> None:
    await store.put("r", payload(SIZE))
    async with reading(store, "r") as reader:
        async for chunk in reader:
            assert chunk == payload(SIZE)[: len(chunk)]
            break
    await store.delete("r")  # nothing (an open file, a thread) keeps the object busy


async def test_large_object_streams_in_bounded_memory(
    make_store: MakeStore, request: pytest.FixtureRequest
) -> None:
    """40 MiB through 2 MiB chunks, written and read back piece by piece: memory stays a few
    chunks, not the object (except in MemoryStorage, which holds its objects in memory)."""
    store = await make_store(chunk_size=2 * MIB)
    piece_count, piece = 40, 1 * MIB
    rng = random.Random(7)
    sent = hashlib.sha256()
    tracemalloc.start()
    try:
        writer = await store.open_writer("big/data.drd")
        for _ in range(piece_count):
            data = rng.randbytes(piece)
            sent.update(data)
            await writer.write(data)
            del data
        info = await writer.commit()
        received = hashlib.sha256()
        largest = 0
        async with reading(store, "big/data.drd") as reader:
            async for chunk in reader:
                received.update(chunk)
                largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == piece_count * piece
    assert received.hexdigest() == sent.hexdigest()
    assert largest <= 2 * MIB
    if not isinstance(store, MemoryStorage):
        assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB for a 40 MiB object"


async def test_create_only_writes_never_replace_an_object(
    store: Storage, request: pytest.FixtureRequest
) -> None:
    """`if_absent`: a new name is written; a taken one raises ObjectExists and keeps the old
    object. fake-gcs-server ignores preconditions on resumable uploads (real GCS answers 412),
    so on it only the first half is a check of the backend; the refusal is checked on the
    backends that enforce it."""
    from drd.errors import ObjectExists

    info = await store.put("c/new", b"first", if_absent=True)
    assert info.size == 5 and await store.get("c/new") == b"first"
    writer = await store.open_writer("c/streamed", if_absent=True)
    await writer.write(b"abc")
    await writer.commit()
    assert await store.get("c/streamed") == b"abc"
    if "gcs" in request.node.name:
        return
    with pytest.raises(ObjectExists):
        await store.put("c/new", b"second", if_absent=True)
    writer = await store.open_writer("c/new", if_absent=True)
    await writer.write(b"third")
    with pytest.raises(ObjectExists):
        await writer.commit()
    await writer.abort()
    assert await store.get("c/new") == b"first"
    assert (await store.stat("c/new")).checksum == (await store.put("c/x", b"first")).checksum
    assert [i.key for i in await store.list("c/")] == ["c/new", "c/streamed", "c/x"]
