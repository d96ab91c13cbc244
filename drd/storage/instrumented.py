"""The wrapper composed around every region (in drd.runtime): per-operation metrics, and the
region's health (drd.storage.health) from each operation's outcome.

Retries are not added here: the backends retry their own transient failures within a short,
bounded deadline (GCS), and a job that still fails is retried whole by the daemon. Stacking a
second retry layer would multiply how long a region that is down holds every backup up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from drd.errors import ObjectNotFound, StorageError
from drd.storage.base import DeletionSettings, ObjectInfo, ObjectWriter, Storage
from drd.storage.health import RegionHealth

T = TypeVar("T")

# region, operation, result -> None; result is "success", "failure" or "not_found"
# (drd.metrics.STORAGE_RESULTS)
Observer = Callable[[str, str, str], None]


class ObservedStorage(Storage):
    """Reports the outcome of every operation to `observe(region, operation, result)`, and to
    `health` (drd_region_up)."""

    def __init__(
        self,
        inner: Storage,
        observe: Observer | None = None,
        health: RegionHealth | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._observe = observe or (lambda region, op, result: None)
        self._health = health

    def _record(self, op: str, exc: BaseException | None) -> None:
        if self._health is not None:
            self._health.observe(self.name, op, exc)
        if exc is None:
            result = "success"
        elif isinstance(exc, ObjectNotFound):
            result = "not_found"
        else:
            result = "failure"
        self._observe(self.name, op, result)

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await fn()
        except BaseException as exc:
            self._record(op, exc)
            raise
        self._record(op, None)
        return result

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False
    ) -> ObjectWriter:
        writer = await self._call(
            "open_writer", lambda: self.inner.open_writer(key, metadata, if_absent=if_absent)
        )
        return _ObservedWriter(writer, self._record)

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> ObjectInfo:
        info: ObjectInfo = await self._call(
            "put", lambda: self.inner.put(key, data, metadata, if_absent=if_absent)
        )
        return info

    async def get(self, key: str) -> bytes:
        data: bytes = await self._call("get", lambda: self.inner.get(key))
        return data

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner.open_reader(key, offset, length):
                yield chunk
        except BaseException as exc:
            self._record("read", exc)
            raise
        self._record("read", None)

    async def stat(self, key: str) -> ObjectInfo:
        info: ObjectInfo = await self._call("stat", lambda: self.inner.stat(key))
        return info

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        items: list[ObjectInfo] = await self._call("list", lambda: self.inner.list(prefix))
        return items

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key))

    async def check(self) -> None:
        await self._call("check", self.inner.check)

    async def deletion_settings(self) -> DeletionSettings:
        # Explicit: the base class has a default, so __getattr__ would never reach the inner one.
        settings: DeletionSettings = await self._call(
            "deletion_settings", self.inner.deletion_settings
        )
        return settings

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (LocalStorage.remove_partials) stay reachable.
        return getattr(self.inner, name)


class _ObservedWriter(ObjectWriter):
    def __init__(self, inner: ObjectWriter, record: Callable[[str, BaseException | None], None]):
        self._inner = inner
        self._record = record
        self._failed = False

    async def write(self, data: bytes) -> None:
        try:
            await self._inner.write(data)
        except StorageError as exc:
            if not self._failed:
                self._failed = True
                self._record("write", exc)
            raise

    async def commit(self) -> ObjectInfo:
        try:
            info = await self._inner.commit()
        except BaseException as exc:
            self._record("commit", exc)
            raise
        self._record("commit", None)
        return info

    async def abort(self) -> None:
        await self._inner.abort()
