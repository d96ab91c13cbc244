"""A fault-injecting wrapper for failure tests: any backend, chosen operations made to fail.

    faulty = FaultyStorage(MemoryStorage("eu"))
    faulty.fail("put", TransientStorageError("503"), match="plan/src/", times=2)
    faulty.fail_writer_after(1024, PermanentStorageError("disk full"))
    faulty.add_latency(0.05, op="get")

Operations: open_writer put get open_reader stat list delete check deletion_settings (the
Storage methods) and write commit abort (the writer's). `match` is a key prefix (for list:
compared with the listing prefix). `times=None` fails forever. Every call is recorded in
`calls` as (op, key).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from drd.storage.base import DeletionSettings, ObjectInfo, ObjectWriter, Storage

OPS = frozenset(
    {"open_writer", "put", "get", "open_reader", "stat", "list", "delete", "check"}
    | {"deletion_settings", "write", "commit", "abort"}
)


@dataclass
class _Rule:
    op: str  # an op, "*" for all, or "write_bytes"/"read_bytes" for byte-count faults
    exc: Exception | None
    match: str
    times: int | None
    nbytes: int = 0
    latency: float = 0.0

    def applies(self, op: str, key: str) -> bool:
        return self.op in (op, "*") and key.startswith(self.match) and self.times != 0

    def use(self) -> None:
        if self.times is not None:
            self.times -= 1


def _check_op(op: str) -> None:
    if op != "*" and op not in OPS:
        raise ValueError(f"unknown storage operation {op!r} (one of {', '.join(sorted(OPS))})")


class FaultyStorage(Storage):
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: builtins.list[tuple[str, str]] = []
        self._rules: builtins.list[_Rule] = []

    # -- configuring faults ------------------------------------------------------------------

    def fail(self, op: str, exc: Exception, match: str = "", times: int | None = None) -> None:
        """Make `op` ("*": every op) raise `exc` for keys starting with `match`."""
        _check_op(op)
        self._rules.append(_Rule(op, exc, match, times))

    def fail_writer_after(
        self, nbytes: int, exc: Exception, match: str = "", times: int | None = None
    ) -> None:
        """Writers pass the first `nbytes` bytes to the inner writer, then raise `exc`."""
        self._rules.append(_Rule("write_bytes", exc, match, times, nbytes=nbytes))

    def fail_reader_after(
        self, nbytes: int, exc: Exception, match: str = "", times: int | None = None
    ) -> None:
        """Readers yield the first `nbytes` bytes, then raise `exc`."""
        self._rules.append(_Rule("read_bytes", exc, match, times, nbytes=nbytes))

    def add_latency(self, seconds: float, op: str = "*", match: str = "") -> None:
        _check_op(op)
        self._rules.append(_Rule(op, None, match, None, latency=seconds))

    def clear(self) -> None:
        """Remove every fault and latency (the call log stays)."""
        self._rules.clear()

    # -- applying them -----------------------------------------------------------------------

    async def _enter(self, op: str, key: str) -> None:
        self.calls.append((op, key))
        for rule in builtins.list(self._rules):
            if rule.latency and rule.applies(op, key):
                await asyncio.sleep(rule.latency)
        for rule in self._rules:
            if rule.exc is not None and rule.applies(op, key):
                rule.use()
                raise rule.exc.with_traceback(None)

    def _byte_limit(self, kind: str, key: str) -> _Rule | None:
        for rule in self._rules:
            if rule.op == kind and rule.applies(kind, key):
                rule.use()
                return rule
        return None

    # -- the Storage interface ---------------------------------------------------------------

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False
    ) -> ObjectWriter:
        await self._enter("open_writer", key)
        inner = await self.inner.open_writer(key, metadata, if_absent=if_absent)
        return FaultyWriter(self, key, inner, self._byte_limit("write_bytes", key))

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> ObjectInfo:
        await self._enter("put", key)
        return await self.inner.put(key, data, metadata, if_absent=if_absent)

    async def get(self, key: str) -> bytes:
        await self._enter("get", key)
        return await self.inner.get(key)

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        await self._enter("open_reader", key)
        limit = self._byte_limit("read_bytes", key)
        passed = 0
        async for chunk in self.inner.open_reader(key, offset, length):
            if limit is not None and limit.exc is not None and passed + len(chunk) > limit.nbytes:
                if limit.nbytes > passed:
                    yield chunk[: limit.nbytes - passed]
                raise limit.exc.with_traceback(None)
            passed += len(chunk)
            yield chunk

    async def stat(self, key: str) -> ObjectInfo:
        await self._enter("stat", key)
        return await self.inner.stat(key)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        await self._enter("list", prefix)
        return await self.inner.list(prefix)

    async def delete(self, key: str) -> None:
        await self._enter("delete", key)
        await self.inner.delete(key)

    async def check(self) -> None:
        await self._enter("check", "")
        await self.inner.check()

    async def deletion_settings(self) -> DeletionSettings:
        await self._enter("deletion_settings", "")
        return await self.inner.deletion_settings()

    async def close(self) -> None:
        await self.inner.close()


class FaultyWriter(ObjectWriter):
    def __init__(
        self, storage: FaultyStorage, key: str, inner: ObjectWriter, limit: _Rule | None
    ) -> None:
        self._storage = storage
        self._key = key
        self._inner = inner
        self._limit = limit
        self._written = 0

    async def write(self, data: bytes) -> None:
        await self._storage._enter("write", self._key)
        limit = self._limit
        if limit is not None and limit.exc is not None and self._written + len(data) > limit.nbytes:
            room = max(0, limit.nbytes - self._written)
            if room:
                await self._inner.write(data[:room])
                self._written += room
            raise limit.exc.with_traceback(None)
        await self._inner.write(data)
        self._written += len(data)

    async def commit(self) -> ObjectInfo:
        await self._storage._enter("commit", self._key)
        return await self._inner.commit()

    async def abort(self) -> None:
        await self._storage._enter("abort", self._key)
        await self._inner.abort()
