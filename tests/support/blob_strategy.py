"""A minimal real strategy for unit tests of the pipeline: the source is a bytes object, the
restore target is a key in a dict. It follows the Strategy rules (staging, hand over on a clean
end) so pipeline tests exercise the same contract the real strategies do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import pytest

from drd import strategies
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy

RESTORED: dict[str, bytes] = {}


class BlobOptions(SourceOptions):
    size: int = 0
    seed: int = 0
    chunk: int = 64 * 1024


def blob_bytes(size: int, seed: int = 0) -> bytes:
    # Partly compressible: repeating text with a counter, like a dump.
    out = bytearray()
    i = 0
    while len(out) < size:
        out += f"row {seed}:{i} customer Zürich 東京 amount {i * 7 % 1000}\n".encode()
        i += 1
    return bytes(out[:size])


class BlobStrategy(Strategy):
    kind: ClassVar[str] = "blob"
    Options: ClassVar[type[SourceOptions]] = BlobOptions
    fail_after: int | None = None  # raise mid-dump after this many bytes (tests set it)

    async def dump(self) -> AsyncIterator[bytes]:
        opts = self.options
        assert isinstance(opts, BlobOptions)
        data = blob_bytes(opts.size, opts.seed)
        sent = 0
        for i in range(0, len(data), opts.chunk):
            if self.fail_after is not None and sent >= self.fail_after:
                from drd.errors import SourceError

                raise SourceError("blob source failed on purpose")
            yield data[i : i + opts.chunk]
            sent += opts.chunk

    def restore_metadata(self) -> dict[str, Any]:
        return {"format": "blob"}

    @classmethod
    async def restore(
        cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
    ) -> RestoreOutcome:
        from drd.errors import TargetExists

        if target in RESTORED:
            raise TargetExists(f"{target} exists")
        staging = bytearray()
        async for chunk in chunks:
            staging += chunk
        RESTORED[target] = bytes(staging)
        return RestoreOutcome(target, {"bytes": len(staging)})


@pytest.fixture
def blob_strategy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[BlobStrategy]]:
    """The blob kind is the only one known during the test."""
    RESTORED.clear()
    monkeypatch.setattr(BlobStrategy, "fail_after", None)
    with strategies.registered(BlobStrategy, only=True):
        yield BlobStrategy
