"""The data path feeds drd.progress from its real byte streams: a backup counts the dump as it
is read, a restore the plaintext as it is handed on, each in its phases; the next backup
expects the previous one's size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.layout import SourceRef
from drd.pipeline.backup import run_backup
from drd.pipeline.restore import restore_backup
from drd.pipeline.source_backup import backup_source
from drd.progress import Progress
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.blob_strategy import RESTORED, BlobOptions, BlobStrategy, blob_bytes
from tests.support.drdenv import DrdEnv

REF = SourceRef("p", "db")
SIZE = 200_000
SEG = 4096


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def strategy(size: int = SIZE) -> BlobStrategy:
    return BlobStrategy(BlobOptions(name="db", kind="blob", size=size, chunk=10_000))


class SlowReads(MemoryStorage):
    """Every chunk read takes a moment, so an observer can look in mid-stream."""

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        async for chunk in super().open_reader(key, offset, length):
            await asyncio.sleep(0.001)
            yield chunk


async def sample_while(task: asyncio.Task[object], progress: Progress) -> list[tuple[str, int]]:
    """(phase, bytes) as an observer polling the progress sees them while `task` runs."""
    seen = []
    while not task.done():
        seen.append((progress.current_phase, progress.bytes_done))
        await asyncio.sleep(0.002)
    await task
    return seen


class Recorded(Progress):
    """Every (phase, bytes) the pipeline reports, as it reports them (no polling race)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.seen: list[tuple[str, int]] = []

    def advance(self, n: int) -> None:
        super().advance(n)
        self.seen.append((self.current_phase, self.bytes_done))


async def test_a_backup_counts_its_dump_while_it_streams(blob_strategy, keyring) -> None:
    progress = Recorded("backup", "p", "db")
    result = await run_backup(
        REF,
        strategy(),
        [MemoryStorage("r0")],
        keyring,
        min_copies=1,
        segment_size=SEG,
        progress=progress,
    )
    seen = progress.seen
    assert progress.bytes_done == result.manifest.body.plaintext_size == SIZE
    midway = [b for phase, b in seen if phase == "dumping" and 0 < b < SIZE]
    assert midway, f"never seen mid-dump: {seen[:5]}...{seen[-5:]}"
    assert [b for _, b in seen] == sorted(b for _, b in seen)  # it only goes forward
    assert list(progress.phase_seconds()) == ["starting", "dumping", "verifying", "committing"]


async def test_a_restore_counts_the_plaintext_against_the_manifest_size(
    blob_strategy, keyring
) -> None:
    # Big enough for several plaintext pieces: the opener hands them on about 1 MiB at a time.
    size = 4 << 20
    slow = SlowReads("r0", chunk_size=4000)
    await run_backup(REF, strategy(size), [slow], keyring, min_copies=1, segment_size=SEG)
    progress = Progress("restore", "p", "db")
    task = asyncio.create_task(
        restore_backup(REF, [slow], keyring, "t-progress", progress=progress)
    )
    seen = await sample_while(task, progress)
    assert RESTORED["t-progress"] == blob_bytes(size)
    assert progress.total == size and progress.bytes_done == size
    assert [b for phase, b in seen if phase == "restoring" and 0 < b < size], sorted(set(seen))
    assert list(progress.phase_seconds()) == ["starting", "choosing", "restoring", "finishing"]


async def test_a_restore_moving_to_the_next_region_counts_from_zero(blob_strategy, keyring) -> None:
    from drd.errors import TransientStorageError

    size = 4 << 20
    good, bad = MemoryStorage("a"), MemoryStorage("b")
    result = await run_backup(
        REF, strategy(size), [good, bad], keyring, min_copies=2, segment_size=SEG
    )
    faulty = FaultyStorage(bad)
    # Region b breaks just before the end: most of the plaintext went through from it.
    stored = result.manifest.body.ciphertext_size
    faulty.fail_reader_after(stored - 100, TransientStorageError("connection reset"))
    progress = Progress("restore", "p", "db")
    out = await restore_backup(
        REF, [good, faulty], keyring, "t-next", prefer_region="b", progress=progress
    )
    assert out.region == "a" and "b" in out.skipped
    assert progress.bytes_done == size  # not the failed region's bytes on top


async def test_the_next_backup_expects_the_previous_ones_size(
    blob_strategy, keyring, tmp_path: Path
) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "db", "kind": "blob", "size": SIZE}])
    cfg = load_config(env.write())
    plan = cfg.plan("p")
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    first = Progress("backup", "p", "db")
    await backup_source(plan, plan.sources[0], regions, keyring, cfg.state_dir, progress=first)
    assert first.total is None  # nothing to go by yet
    second = Progress("backup", "p", "db")
    await backup_source(plan, plan.sources[0], regions, keyring, cfg.state_dir, progress=second)
    assert second.total == SIZE
    assert "preparing" in second.phase_seconds()
