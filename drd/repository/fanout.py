"""Write one stream to several regions at once, tolerating the loss of some of them.

Each region gets a small bounded queue and a pump task, so memory stays at
regions x queue depth x chunk size whatever the backup size, and a slow region applies
back-pressure instead of buffering. A region whose upload fails is dropped (its pump keeps
draining so the producer never blocks on a dead queue) and its error kept for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drd.storage.base import ObjectInfo, ObjectWriter, Storage

log = logging.getLogger(__name__)

QUEUE_DEPTH = 4


@dataclass
class RegionUpload:
    storage: Storage
    writer: ObjectWriter | None = None
    error: BaseException | None = None
    info: ObjectInfo | None = None
    queue: asyncio.Queue[bytes | None] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.error is None

    def describe_error(self) -> str:
        if self.error is None:
            return ""
        return str(self.error) or type(self.error).__name__


class FanOut:
    def __init__(self, regions: Sequence[Storage], key: str) -> None:
        self.key = key
        self.uploads = [RegionUpload(storage) for storage in regions]

    @property
    def alive(self) -> list[RegionUpload]:
        return [u for u in self.uploads if u.alive]

    async def open(self, metadata: Mapping[str, str] | None = None) -> None:
        async def open_one(u: RegionUpload) -> None:
            try:
                u.writer = await u.storage.open_writer(self.key, metadata)
            except Exception as exc:  # a region that cannot start the upload is just dropped
                u.error = exc
                log.warning(
                    "region %s: cannot start upload of %s: %s", u.storage.name, self.key, exc
                )
                return
            u.queue = asyncio.Queue(maxsize=QUEUE_DEPTH)
            u.task = asyncio.create_task(self._pump(u), name=f"upload:{u.storage.name}")

        await asyncio.gather(*(open_one(u) for u in self.uploads))

    async def _pump(self, u: RegionUpload) -> None:
        assert u.queue is not None and u.writer is not None
        while True:
            chunk = await u.queue.get()
            if chunk is None:
                return
            if u.error is not None:
                continue  # keep draining so send() never blocks on a dead region
            try:
                await u.writer.write(chunk)
            except Exception as exc:
                u.error = exc
                log.warning("region %s: upload of %s failed: %s", u.storage.name, self.key, exc)

    async def send(self, chunk: bytes) -> None:
        if not chunk:
            return
        for u in self.alive:
            assert u.queue is not None
            await u.queue.put(chunk)

    async def commit(self) -> None:
        """Finish every live upload; afterwards each upload has `info` or `error`."""

        async def commit_one(u: RegionUpload) -> None:
            assert u.queue is not None and u.task is not None and u.writer is not None
            await u.queue.put(None)
            await u.task
            if u.error is not None:
                await self._abort_writer(u)
                return
            try:
                u.info = await u.writer.commit()
            except Exception as exc:
                u.error = exc
                log.warning("region %s: commit of %s failed: %s", u.storage.name, self.key, exc)
                await self._abort_writer(u)

        await asyncio.gather(*(commit_one(u) for u in self.uploads if u.task is not None))

    async def abort(self) -> None:
        """Discard every upload that has not been committed. Safe to call at any point."""
        for u in self.uploads:
            if u.task is not None and not u.task.done():
                u.task.cancel()
                with contextlib.suppress(BaseException):
                    await u.task
            if u.info is None:
                await self._abort_writer(u)

    @staticmethod
    async def _abort_writer(u: RegionUpload) -> None:
        if u.writer is None:
            return
        try:
            await u.writer.abort()
        except Exception as exc:
            log.warning(
                "region %s: abort failed (leftover is swept later): %s", u.storage.name, exc
            )
