"""The storage interface every backend implements.

A backend is one region: a flat namespace of objects addressed by '/'-separated keys. The
interface is deliberately small (after restic's backend.Backend) so that retries, metrics,
fault injection and multi-region policy can all be wrappers around it.

Contract all backends honour (checked by tests/conformance):
- An object written through `open_writer` becomes visible under its key only on `commit()`,
  atomically and complete; `abort()` (or a crash) never leaves a visible object under the key.
  A backend may leave invisible leftovers (temp files) that `list()` does not return.
- `put` is an atomic whole-object write (small objects: manifests, reports).
- `list(prefix)` returns every committed object whose key starts with `prefix`, sorted by key.
- `open_reader` streams an object (optionally a byte range) in chunks.
- Missing objects raise ObjectNotFound; transient faults raise TransientStorageError;
  everything else PermanentStorageError.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Backend checksum of the stored bytes when the backend has one ("crc32c:<b64>",
    # "sha256:<hex>", ...); None when the backend does not compute one.
    checksum: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectWriter(abc.ABC):
    """A streaming upload. Not visible until commit(); abort() discards it."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> ObjectInfo:
        """Finish the upload, verify what the backend stored, make it visible."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard the upload. Safe to call more than once and after a failed write."""


class Storage(abc.ABC):
    """One region's object store."""

    #: region name, used in logs, metrics and catalog output
    name: str

    @abc.abstractmethod
    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectWriter: ...

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        ...

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Read a whole (small) object."""

    @abc.abstractmethod
    def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream an object's bytes (an async generator)."""

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    async def check(self) -> None:
        """Raise StorageError if the region is unreachable or not writable/readable."""
        await self.list("\x00drd-probe/")

    async def close(self) -> None:
        """Release clients and threads."""
