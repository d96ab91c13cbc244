"""`drd list` shows each physical source's recovery window (drd.pipeline.recovery_window): from
the end of its oldest base backup to its newest archived WAL, and the gap that cuts it, in
text and --json; without the key the window is unknown and says why."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drd import crypto
from drd.cli.main import main
from drd.layout import SourceRef
from drd.pipeline.backup import run_backup
from drd.pipeline.pitr import push_wal
from drd.storage.local import LocalStorage
from drd.strategies.base import SourceOptions, Strategy
from drd.strategies.postgres_wal import Segment

REF = SourceRef("billing", "db")
SYSID = "7715084644530370058"
SEG = 16 << 20
T0 = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


def at(segno: int) -> datetime:
    return T0 + timedelta(minutes=segno)


def name(segno: int) -> str:
    return Segment(1, segno).name(SEG)


class FakeBase(Strategy[SourceOptions]):
    kind = "postgres-physical"
    Options = SourceOptions
    end = 3

    async def dump(self):  # type: ignore[no-untyped-def]
        yield b"tar"
        self._metadata = {
            "format": "pg_basebackup-tar",
            "system_identifier": SYSID,
            "wal_segment_size": SEG,
            "timeline": 1,
            "end_timeline": 1,
            "start_lsn": f"0/{self.end * SEG:X}",
            "end_lsn": f"0/{self.end * SEG + 0x100:X}",
            "end_time": at(self.end).isoformat(),
            "server_version_num": 150000,
        }

    @classmethod
    async def restore(cls, chunks, target, metadata):  # type: ignore[no-untyped-def]
        raise NotImplementedError


async def make_archive(tmp_path: Path, keyring: crypto.Keyring, segnos: list[int]) -> list[str]:
    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        path.mkdir()
    rs = [LocalStorage(p.name, p) for p in paths]
    for end in (3, 8):
        base = FakeBase(SourceOptions(name="db", kind="postgres-physical"))
        base.end = end
        await run_backup(REF, base, rs, keyring, min_copies=2, clock=lambda e=end: at(e))
    for segno in segnos:
        header = struct.pack("<HHIQI4xQII", 0xD110, 2, 1, segno * SEG, 0, int(SYSID), SEG, 8192)
        await push_wal(
            REF,
            rs,
            keyring,
            system_id=SYSID,
            name=name(segno),
            data=header + b"x" * 100,
            through=at(segno) + timedelta(seconds=30),
            timeline=1,
            segment_size=SEG,
            min_copies=2,
        )
    return [f"{p.name}=file:{p}" for p in paths]


def drd_list(
    capsys: pytest.CaptureFixture[str], key: str, storage: list[str], *extra: str
) -> tuple[int, str, str]:
    os.environ["DRD_KEYS"] = key
    args = [a for s in storage for a in ("--storage", s)]
    code = main(["list", *args, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_window_runs_from_the_oldest_base_backups_end_to_the_newest_wal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = crypto.generate_key()
    keyring = crypto.Keyring.parse(key, "test")
    storage = asyncio.run(make_archive(tmp_path, keyring, [3, 4, 5, 6, 7, 8, 9, 10]))

    code, out, _ = drd_list(capsys, key, storage)

    assert code == 0
    assert (
        "recovery window billing/db: 2026-12-03 14:03:00.000 UTC .. 2026-12-03 14:10:30.000 UTC"
    ) in out.splitlines()
    code, out, _ = drd_list(capsys, key, storage, "--json")
    (window,) = json.loads(out)["recovery_windows"]
    assert (window["plan"], window["source"], window["gaps"]) == ("billing", "db", [])
    assert window["start"] == at(3).isoformat()
    assert window["end"] == (at(10) + timedelta(seconds=30)).isoformat()
    assert len(window["windows"]) == 2


def test_a_gap_is_shown_with_each_base_backups_own_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = crypto.generate_key()
    keyring = crypto.Keyring.parse(key, "test")
    # Segment 6 is missing everywhere: the older base backup reaches 14:05:30 only; the newer
    # one (ending in segment 8) carries the window on to the newest WAL.
    storage = asyncio.run(make_archive(tmp_path, keyring, [3, 4, 5, 7, 8, 9]))

    code, out, _ = drd_list(capsys, key, storage)

    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("recovery window billing/db"))
    assert line.endswith(f"GAP: WAL {name(6)} missing everywhere"), line
    assert "14:03:00.000 UTC .. 2026-12-03 14:05:30.000 UTC" in out
    assert f"WAL segment {name(6)} is missing" in out
    code, out, _ = drd_list(capsys, key, storage, "--json")
    (window,) = json.loads(out)["recovery_windows"]
    assert window["gaps"] == [name(6)]

    # Without the key the WAL ranges are sealed: no window, and why.
    code, out, _ = drd_list(capsys, "", storage)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("recovery window billing/db"))
    assert line.startswith("recovery window billing/db: none ("), line
