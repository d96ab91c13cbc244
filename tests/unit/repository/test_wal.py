"""The WAL archive on in-memory regions: sealed objects bound to their key (drd.repository.wal),
shipping without duplicates and with min_copies, fetching from the next region when a copy is
refused, gaps, and recovery windows (drd.pipeline.pitr)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drd import crypto
from drd.errors import IntegrityError, NotEnoughCopies, TransientStorageError
from drd.layout import SourceRef
from drd.pipeline.pitr import (
    Expect,
    OutsideWindow,
    Target,
    WalFetcher,
    WalFetchFailed,
    WalNotFound,
    choose,
    push_wal,
    recovery_windows,
)
from drd.repository.wal import (
    follow,
    list_archive,
    open_object,
    parse_stamp,
    parse_wal_key,
    seal,
    wal_key,
)
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from drd.strategies.postgres_wal import Segment, parse_segment_name

REF = SourceRef("billing", "db")
SYSID = "7715084644530370058"
SEG = 16 << 20
T0 = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


def segment_bytes(segno: int, tli: int = 1, fill: int = 0) -> bytes:
    """A (short) WAL segment: a valid long page header, then recognisable content."""
    header = struct.pack("<HHIQI4xQII", 0xD110, 2, tli, segno * SEG, 0, int(SYSID), SEG, 8192)
    return header + bytes([fill or segno % 251]) * 5000


def name(segno: int, tli: int = 1) -> str:
    return Segment(tli, segno).name(SEG)


async def push(rs: list[Any], keyring: crypto.Keyring, segno: int, **kw: Any) -> Any:
    defaults: dict[str, Any] = {
        "system_id": SYSID,
        "name": name(segno),
        "data": segment_bytes(segno),
        "through": T0 + timedelta(seconds=segno),
        "timeline": 1,
        "segment_size": SEG,
        "min_copies": len(rs),
    }
    return await push_wal(REF, rs, keyring, **{**defaults, **kw})


def test_keys_carry_name_system_and_time() -> None:
    key = wal_key(REF, SYSID, name(3), datetime(2026, 12, 3, 14, 28, 49, 123456, tzinfo=UTC))
    assert key == f"billing/db/wal/{SYSID}/000000010000000000000003@20261203T142849123Z"
    parsed = parse_wal_key(key)
    assert parsed is not None
    assert (parsed.kind, parsed.system_id, parsed.name) == ("segment", SYSID, name(3))
    assert parsed.through == parse_stamp("20261203T142849123Z")
    partial = parse_wal_key(key.replace("03@", "03.partial@"))
    assert partial is not None and partial.kind == "partial" and partial.segment_name == name(3)
    assert parse_wal_key(f"billing/db/wal/{SYSID}/00000002.history@20261203T142849123Z")
    for other in ("billing/db/20261203T142849Z-9f2c1a0b/data.drd", "billing/db/wal/x/y@z"):
        assert parse_wal_key(other) is None


def test_an_object_opens_only_at_its_own_key(keyring: crypto.Keyring) -> None:
    key = parse_wal_key(wal_key(REF, SYSID, name(3), T0))
    assert key is not None
    data = segment_bytes(3)
    raw = seal(keyring, key, data, timeline=1, segment_size=SEG)
    assert open_object(keyring, raw, key, "here").data == data
    elsewhere = [
        wal_key(REF, SYSID, name(4), T0),  # another segment
        wal_key(REF, SYSID, name(3), T0 + timedelta(seconds=1)),  # another time
        wal_key(SourceRef("billing", "other"), SYSID, name(3), T0),  # another source
        wal_key(REF, "1234", name(3), T0),  # another cluster
    ]
    for other in elsewhere:
        moved = parse_wal_key(other)
        assert moved is not None
        with pytest.raises(IntegrityError):
            open_object(keyring, raw, moved, "copied")
    for i in (0, 9, len(raw) // 2, len(raw) - 1):  # magic, header, data, last tag byte
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            open_object(keyring, bytes(tampered), key, "tampered")
    with pytest.raises(IntegrityError):
        open_object(keyring, raw[:-100], key, "truncated")
    other_keys = crypto.Keyring.parse(crypto.generate_key(), "other")
    with pytest.raises(Exception, match="key"):
        open_object(other_keys, raw, key, "no key")


async def test_a_segment_is_stored_once_per_region(keyring: crypto.Keyring) -> None:
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    first = await push(rs, keyring, 5)
    assert sorted(first.holding) == ["a", "b"] and not first.already
    # A restarted archiver receives the segment again, and ships it later.
    again = await push(rs, keyring, 5, through=T0 + timedelta(hours=1))
    assert sorted(again.already) == ["a", "b"]
    for r in rs:
        keys = [i.key for i in await r.list(f"billing/db/wal/{SYSID}/")]
        assert len(keys) == 1 and keys[0].endswith(name(5) + "@20261203T140005000Z")


async def test_min_copies_and_a_region_down(keyring: crypto.Keyring) -> None:
    b = FaultyStorage(MemoryStorage("b"))
    rs = [MemoryStorage("a"), b]
    b.fail("put", TransientStorageError("503 from b"))
    with pytest.raises(NotEnoughCopies, match="held by 1 of 2 regions"):
        await push(rs, keyring, 6)
    result = await push(rs, keyring, 7, min_copies=1)
    assert result.holding == ["a"] and "b" in result.failed
    b._rules.clear()
    # The next attempt writes only where it is missing.
    done = await push(rs, keyring, 6)
    assert done.already == ["a"] and sorted(done.holding) == ["a", "b"]


async def test_fetch_refuses_a_tampered_copy_and_uses_the_next_region(
    keyring: crypto.Keyring,
) -> None:
    a, b = MemoryStorage("a"), MemoryStorage("b")
    await push([a, b], keyring, 8)
    (info,) = await a.list(f"billing/db/wal/{SYSID}/")
    raw = bytearray(await a.get(info.key))
    raw[len(raw) // 2] ^= 0xFF
    await a.put(info.key, bytes(raw))
    fetcher = WalFetcher(REF, [a, b], keyring, SYSID, prefer_region="a")
    got = await fetcher.fetch(name(8))
    assert got.region == "b" and got.data == segment_bytes(8)
    assert "a" in got.skipped and "authentication" in got.skipped["a"]
    # Truncated in b as well: nothing intact anywhere is fatal, not "missing".
    await b.put(info.key, (await b.get(info.key))[:-10])
    with pytest.raises(WalFetchFailed, match="no intact copy"):
        await fetcher.fetch(name(8))


async def test_missing_past_the_end_and_gaps(keyring: crypto.Keyring) -> None:
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    for segno in (3, 4, 6):
        await push(rs, keyring, segno)
    expect = Expect(Segment(1, 3), Segment(1, 6))
    fetcher = WalFetcher(REF, rs, keyring, SYSID, expect=expect)
    assert (await fetcher.fetch(name(4))).data == segment_bytes(4)
    with pytest.raises(WalFetchFailed, match="gap"):
        await fetcher.fetch(name(5))
    with pytest.raises(WalNotFound, match="past the end"):
        await fetcher.fetch(name(7))
    with pytest.raises(WalNotFound):  # another timeline: legitimately absent
        await fetcher.fetch(name(4, tli=2))
    with pytest.raises(WalNotFound):
        await fetcher.fetch("00000002.history")
    assert Expect.parse(expect.text(SEG), SEG) == expect


async def test_a_partial_is_served_when_the_segment_is_not_complete(
    keyring: crypto.Keyring,
) -> None:
    rs = [MemoryStorage("a")]
    await push(rs, keyring, 9, name=name(9) + ".partial", data=segment_bytes(9, fill=1))
    later = T0 + timedelta(minutes=5)
    await push(
        rs, keyring, 9, name=name(9) + ".partial", data=segment_bytes(9, fill=2), through=later
    )
    fetcher = WalFetcher(REF, rs, keyring, SYSID)
    assert (await fetcher.fetch(name(9))).data == segment_bytes(9, fill=2)  # the newest
    await push(rs, keyring, 9, data=segment_bytes(9, fill=3))
    assert (await fetcher.fetch(name(9))).data == segment_bytes(9, fill=3)  # complete wins


async def test_follow_reports_the_first_gap(keyring: crypto.Keyring) -> None:
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    for segno in (3, 4, 5, 7, 8):
        await push(rs, keyring, segno)
    archive = await list_archive(rs, REF)
    chain = follow(archive, SYSID, Segment(1, 3), SEG)
    assert [s.segno for s, _ in chain.segments] == [3, 4, 5]
    assert chain.gap == Segment(1, 6) and chain.after_gap == 2
    tail = follow(archive, SYSID, Segment(1, 7), SEG)
    assert tail.gap is None and tail.end == Segment(1, 8)
    # A timeline switch: 9 and on exist on timeline 2 only, with its history.
    await push(rs, keyring, 9, name=name(9, 2), data=segment_bytes(9, 2), timeline=2)
    await push(rs, keyring, 0, name="00000002.history", data=b"1\t0/9000000\tpromoted\n")
    switched = follow(await list_archive(rs, REF), SYSID, Segment(1, 7), SEG)
    assert switched.end == Segment(2, 9) and switched.gap is None
    assert parse_segment_name(name(9, 2), SEG) == Segment(2, 9)


async def test_windows_and_choosing_a_base_backup(keyring: crypto.Keyring) -> None:
    from drd.pipeline.backup import run_backup
    from drd.strategies.base import SourceOptions, Strategy

    class FakeBase(Strategy[SourceOptions]):
        kind = "postgres-physical"
        Options = SourceOptions
        end_segment = 3

        async def dump(self):  # type: ignore[no-untyped-def]
            yield b"tar"
            seg = self.end_segment
            self._metadata = {
                "format": "pg_basebackup-tar",
                "system_identifier": SYSID,
                "wal_segment_size": SEG,
                "timeline": 1,
                "end_timeline": 1,
                "start_lsn": f"0/{seg * SEG:X}",
                "end_lsn": f"0/{seg * SEG + 0x100:X}",
                "end_time": (T0 + timedelta(seconds=seg)).isoformat(),
                "server_version_num": 150000,
            }

        @classmethod
        async def restore(cls, chunks, target, metadata):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    rs = [MemoryStorage("a"), MemoryStorage("b")]
    opts = SourceOptions(name="db", kind="postgres-physical")
    for end in (3, 6):
        base = FakeBase(opts)
        base.end_segment = end
        await run_backup(REF, base, rs, keyring, min_copies=2)
    for segno in (3, 4, 5, 6, 7, 9):
        await push(rs, keyring, segno)
    windows = await recovery_windows(REF, rs, keyring)
    old, new = windows.windows
    assert old.chain.end == Segment(1, 7) and old.chain.gap == Segment(1, 8)
    assert old.start == T0 + timedelta(seconds=3) and old.end == T0 + timedelta(seconds=7)
    at = T0 + timedelta(seconds=4)
    assert choose(windows, Target("time", time=at)) is old
    assert choose(windows, Target("time", time=T0 + timedelta(seconds=6.5))) is new
    with pytest.raises(OutsideWindow, match="000000010000000000000008"):
        choose(windows, Target("time", time=T0 + timedelta(seconds=9)))
    with pytest.raises(OutsideWindow, match="outside the recovery window"):
        choose(windows, Target("time", time=T0))
    with pytest.raises(OutsideWindow, match="gap"):
        choose(windows, Target("latest"))
    await push(rs, keyring, 8)
    healed = await recovery_windows(REF, rs, keyring)
    assert choose(healed, Target("latest")).chain.end == Segment(1, 9)
    assert choose(healed, Target("lsn", lsn=9 * SEG + 5)).base.end_lsn == 6 * SEG + 0x100


async def test_a_push_never_replaces_an_object_under_its_key(keyring: crypto.Keyring) -> None:
    rs = [MemoryStorage("a"), MemoryStorage("b")]
    key = wal_key(REF, SYSID, name(9), T0 + timedelta(seconds=9))
    await rs[0].put(key, b"what is there already")
    # The caller believes region a does not hold it (a listing from before a kill).
    result = await push(rs, keyring, 9, held={"a": False, "b": False})
    assert result.already == ["a"] and sorted(result.holding) == ["a", "b"]
    assert await rs[0].get(key) == b"what is there already"
    assert await rs[1].get(key) != b"what is there already"
