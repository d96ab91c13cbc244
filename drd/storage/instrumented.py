"""Wrappers composed around every region (in drd.regions): bounded retries of idempotent
operations, then per-operation metrics. Streaming uploads are not retried here: a failed upload
is restarted whole by the job's own retry, never resumed from a guess."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from drd.errors import ObjectNotFound, StorageError, TransientStorageError
from drd.storage.base import ObjectInfo, ObjectWriter, Storage

T = TypeVar("T")

# operation, result -> None; result is "ok", "not_found" or "error"
Observer = Callable[[str, str, str], None]


class ObservedStorage(Storage):
    """Retries transient failures of whole-object operations and reports every outcome."""

    def __init__(
        self,
        inner: Storage,
        observe: Observer | None = None,
        *,
        attempts: int = 4,
        max_delay: float = 30.0,
        initial_wait: float = 0.2,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._observe = observe or (lambda region, op, result: None)
        self._attempts = attempts
        self._max_delay = max_delay
        self._initial_wait = initial_wait

    def _record(self, op: str, exc: BaseException | None) -> None:
        if exc is None:
            result = "ok"
        elif isinstance(exc, ObjectNotFound):
            result = "not_found"
        else:
            result = "error"
        self._observe(self.name, op, result)

    async def _call(self, op: str, fn: Callable[[], Any], retry: bool = True) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts if retry else 1)
            | stop_after_delay(self._max_delay),
            wait=wait_exponential_jitter(initial=self._initial_wait, max=5.0),
            retry=retry_if_exception_type(TransientStorageError),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await fn()
        except BaseException as exc:
            self._record(op, exc)
            raise
        self._record(op, None)
        return result

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectWriter:
        writer = await self._call("open_writer", lambda: self.inner.open_writer(key, metadata))
        return _ObservedWriter(writer, self._record)

    async def put(
        self, key: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        info: ObjectInfo = await self._call("put", lambda: self.inner.put(key, data, metadata))
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
        # No retries: readiness wants to know about the region now.
        await self._call("check", self.inner.check, retry=False)

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
