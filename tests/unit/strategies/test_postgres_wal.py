"""PostgreSQL WAL file names, positions and headers (drd.strategies.postgres_wal), and reading a
tar stream as it passes (drd.strategies._tarscan)."""

from __future__ import annotations

import io
import struct
import tarfile

import pytest

from drd.strategies._tarscan import TarError, TarScanner
from drd.strategies.postgres_wal import (
    Segment,
    check_segment,
    format_lsn,
    parse_history,
    parse_lsn,
    parse_segment_name,
    read_segment_header,
    read_system_identifier,
    segment_of,
)

MiB16 = 16 << 20


def test_lsn_round_trip() -> None:
    for text in ("0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn("1/0") == 1 << 32
    for bad in ("", "0", "x/1", "1/2/3", "123456789/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


def test_segment_names_follow_postgresql() -> None:
    # 16 MiB segments: 256 per 4 GiB log id, so segment 0x1FF is log 1, seg 0xFF.
    seg = Segment(1, 0x1FF)
    assert seg.name(MiB16) == "0000000100000001000000FF"
    assert parse_segment_name("0000000100000001000000FF", MiB16) == seg
    assert segment_of(parse_lsn("1/FF000028"), 1, MiB16) == seg
    assert seg.start_lsn(MiB16) == parse_lsn("1/FF000000")
    assert seg.end_lsn(MiB16) == parse_lsn("2/0")
    # 64 MiB segments: 64 per log id.
    assert Segment(2, 65).name(64 << 20) == "000000020000000100000001"
    with pytest.raises(ValueError):
        parse_segment_name("000000010000000000000100", MiB16)  # seg part beyond FF
    with pytest.raises(ValueError):
        parse_segment_name("00000001000000000000001", MiB16)


def _header(tli: int, pageaddr: int, sysid: int, seg_size: int = MiB16) -> bytes:
    return struct.pack("<HHIQI4xQII", 0xD110, 0x0002, tli, pageaddr, 0, sysid, seg_size, 8192)


def test_segment_header_is_checked_against_the_name() -> None:
    data = _header(1, 3 * MiB16, 7715084644530370058) + bytes(100)
    header = check_segment(data, "000000010000000000000003")
    assert header.system_identifier == 7715084644530370058
    assert header.segment_size == MiB16
    with pytest.raises(ValueError, match="not what the file name says"):
        check_segment(data, "000000010000000000000004")
    with pytest.raises(ValueError, match="not what the file name says"):
        check_segment(data, "000000020000000000000003")
    with pytest.raises(ValueError, match="long page header"):
        read_segment_header(bytes(64))
    with pytest.raises(ValueError):
        read_segment_header(b"short")


def test_system_identifier_from_pg_control() -> None:
    assert read_system_identifier(struct.pack("<Q", 42) + bytes(100)) == 42


def test_timeline_history() -> None:
    text = "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000A28\tbefore 2026\n"
    entries = parse_history(text)
    assert [(e.parent, format_lsn(e.switch_lsn)) for e in entries] == [
        (1, "0/3000000"),
        (2, "0/5000A28"),
    ]


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("piece", [1, 7, 512, 513, 4096, 1 << 20])
def test_tar_scanner_keeps_the_members_asked_for_in_any_piece_size(piece: int) -> None:
    label = b"START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n"
    manifest = b"x" * 70_000 + b'"WAL-Ranges": [...]'
    raw = _tar({"base/1/1259": bytes(20_000), "backup_label": label, "backup_manifest": manifest})
    scanner = TarScanner({"backup_label": None, "backup_manifest": 1000})
    for i in range(0, len(raw), piece):
        scanner.feed(raw[i : i + piece])
    scanner.finish()
    assert scanner.member("backup_label") == label
    assert scanner.member("backup_manifest") == manifest[-1000:]
    assert scanner.members == 3
    assert scanner.bytes == len(raw)


def test_tar_scanner_refuses_a_cut_or_corrupt_stream() -> None:
    raw = _tar({"backup_label": b"label"})
    cut = TarScanner({})
    cut.feed(raw[:1024])
    with pytest.raises(TarError, match="ended early"):
        cut.finish()
    corrupt = bytearray(raw)
    corrupt[10] ^= 0xFF  # in the first header's name
    with pytest.raises(TarError, match="checksum"):
        TarScanner({}).feed(bytes(corrupt))
    assert TarScanner({"missing": None}).member("missing") is None
