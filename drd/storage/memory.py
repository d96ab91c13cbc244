"""An in-memory region: a real backend (not a mock) for unit tests and dry runs.

It honours the whole contract, so tests that run against it exercise the same semantics as
the disk and cloud backends: writes stay invisible until commit, readers stream in chunks,
keys are validated, and every object carries a crc32c checksum, as the other backends do.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from drd.digests import Crc32c
from drd.errors import ObjectExists, ObjectNotFound, PermanentStorageError
from drd.storage.base import ObjectInfo, ObjectWriter, Storage, validate_key

DEFAULT_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class _Object:
    data: bytes
    info: ObjectInfo


def _make_object(key: str, data: bytes, metadata: Mapping[str, str] | None) -> _Object:
    checksum = Crc32c(data).checksum()
    return _Object(data, ObjectInfo(key, len(data), checksum, dict(metadata or {})))


class MemoryWriter(ObjectWriter):
    def __init__(
        self,
        storage: MemoryStorage,
        key: str,
        metadata: Mapping[str, str] | None,
        if_absent: bool = False,
    ):
        self._storage = storage
        self._key = key
        self._if_absent = if_absent
        self._metadata = dict(metadata or {})
        self._buffer = bytearray()
        self._state = "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise PermanentStorageError(
                f"region {self._storage.name}: writer for {self._key!r} is {self._state}"
            )

    async def write(self, data: bytes) -> None:
        self._check_open()
        self._buffer += data

    async def commit(self) -> ObjectInfo:
        self._check_open()
        if self._if_absent and self._key in self._storage._objects:
            self._state = "failed"
            raise ObjectExists(f"region {self._storage.name}: {self._key!r} exists already")
        obj = _make_object(self._key, bytes(self._buffer), self._metadata)
        self._buffer = bytearray()
        self._state = "committed"
        self._storage._objects[self._key] = obj
        return obj.info

    async def abort(self) -> None:
        if self._state in ("open", "failed"):
            self._state = "aborted"
            self._buffer = bytearray()


class MemoryStorage(Storage):
    def __init__(self, name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.name = name
        self._chunk_size = chunk_size
        self._objects: dict[str, _Object] = {}

    def _lookup(self, key: str) -> _Object:
        validate_key(key)
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(f"region {self.name}: object {key!r} not found") from None

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False
    ) -> ObjectWriter:
        return MemoryWriter(self, validate_key(key), metadata, if_absent)

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> ObjectInfo:
        obj = _make_object(validate_key(key), bytes(data), metadata)
        if if_absent and key in self._objects:
            raise ObjectExists(f"region {self.name}: {key!r} exists already")
        self._objects[key] = obj
        return obj.info

    async def get(self, key: str) -> bytes:
        return self._lookup(key).data

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        data = self._lookup(key).data
        end = len(data) if length is None else min(len(data), offset + length)
        for start in range(offset, end, self._chunk_size):
            yield data[start : min(start + self._chunk_size, end)]

    async def stat(self, key: str) -> ObjectInfo:
        return self._lookup(key).info

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return [obj.info for key, obj in sorted(self._objects.items()) if key.startswith(prefix)]

    async def delete(self, key: str) -> None:
        self._objects.pop(validate_key(key), None)
