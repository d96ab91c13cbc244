"""The parallel PostgreSQL format without a server: its frames (written, read back in pieces
of any size, damage refused), the TABLE DATA entries read from pg_dump's TOC, the COPY TO and
exclusion pattern made from them, and the options (drd.strategies.postgres_frames,
postgres_parallel_dump, postgres_toc). Against a real server: tests/integration/
test_postgres_parallel.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from drd.strategies import postgres_frames as frames
from drd.strategies.postgres import PostgresOptions
from drd.strategies.postgres_parallel_dump import copy_to, pattern
from drd.strategies.postgres_parallel_restore import TABLE_QUEUE, Work, demultiplex
from drd.strategies.postgres_toc import TableData, TocError, TocScanner

INT_SIZE = 4
OFF_SIZE = 8


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(INT_SIZE, "little")


def _str(value: bytes | None) -> bytes:
    return _int(-1) if value is None else _int(len(value)) + value


def _entry(dump_id: int, desc: bytes, oid: bytes, namespace: bytes, tag: bytes,
           copy: bytes) -> bytes:  # fmt: skip
    out = _int(dump_id) + _int(1) + _str(b"0") + _str(oid) + _str(tag) + _str(desc)
    out += _int(3) + _str(b"") + _str(b"") + _str(copy) + _str(namespace) + _str(b"")
    out += _str(b"heap") + _str(b"app") + _str(b"false") + _str(None)
    return out + bytes([3]) + bytes(OFF_SIZE)


def _archive(entries: list[bytes]) -> bytes:
    head = b"PGDMP" + bytes([1, 14, 0, INT_SIZE, OFF_SIZE, 1]) + _int(0)
    head += b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    head += _str(b"shop") + _str(b"15.20") + _str(b"15.20")
    return head + _int(len(entries)) + b"".join(entries) + b"rows that are never parsed"


ORDERS_COPY = b"COPY app.orders (id) FROM stdin;\n"
ODD_COPY = b'COPY "Odd ""S"""."t\xe9 *" (a, "b c") FROM stdin;\n'


def test_the_toc_scanner_keeps_each_table_data_entry_with_its_copy_statement() -> None:
    data = _archive(
        [
            _entry(1, b"TABLE DATA", b"16390", b"app", b"orders", ORDERS_COPY),
            _entry(2, b"SEQUENCE SET", b"0", b"app", b"orders_id_seq", b""),
            _entry(3, b"TABLE DATA", b"16400", b'Odd "S"', b"t\xe9 *", ODD_COPY),
        ]
    )  # fmt: skip
    scanner = TocScanner()
    for i in range(0, len(data), 7):
        scanner.feed(data[i : i + 7])
    assert scanner.finish().table_data == [
        TableData(16390, b"app", b"orders", ORDERS_COPY),
        TableData(16400, b'Odd "S"', b"t\xe9 *", ODD_COPY),
    ]
    broken = TocScanner()
    broken.feed(
        _archive([_entry(1, b"TABLE DATA", b"x1", b"app", b"t", b"COPY app.t FROM stdin;")])
    )
    with pytest.raises(TocError, match="TABLE DATA oid"):
        broken.finish()


def test_copy_to_reads_the_columns_pg_dump_restores_and_refuses_other_shapes() -> None:
    odd = TableData(1, b'Odd "S"', b"t\xe9 *", ODD_COPY)
    assert copy_to(odd) == b'COPY "Odd ""S"""."t\xe9 *" (a, "b c") TO stdout'
    assert copy_to(TableData(2, b"a", b"t", b"COPY a.t  FROM stdin;\n")) == b"COPY a.t  TO stdout"
    for statement in (b"", b"INSERT INTO a.t VALUES (1);", b"COPY a.t FROM '/etc/passwd';"):
        assert copy_to(TableData(3, b"a", b"t", statement)) is None


def test_the_exclusion_pattern_quotes_both_parts_and_keeps_the_archive_bytes() -> None:
    odd = TableData(1, b'Odd "S"', b"t\xe9 *", ODD_COPY)
    shown = pattern(odd)
    # argv carries exactly the archive's bytes (here LATIN1 é), whatever Python's encoding.
    assert os.fsencode(shown) == b'"Odd ""S"""."t\xe9 *"'


async def _pieces(blob: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(blob), size):
        yield blob[i : i + size]


@pytest.mark.parametrize("size", [1, 5, 9, 4096, 1 << 22])
async def test_frames_read_back_in_pieces_of_any_size(size: int) -> None:
    stream = b"".join(
        [
            frames.MAGIC,
            frames.frame(frames.PRE_DATA, 0, b"PGDMP pre"),
            frames.frame(frames.PRE_DATA, 0, b" more"),
            frames.frame(frames.TABLE_BEGIN, 1, b"COPY a.t FROM stdin;"),
            frames.frame(frames.TABLE_BEGIN, 2, b"COPY a.u FROM stdin;"),
            frames.frame(frames.TABLE_DATA, 2, b"1\n"),
            frames.frame(frames.TABLE_DATA, 1, b"x" * 70000),
            frames.frame(frames.TABLE_END, 1),
            frames.frame(frames.TABLE_END, 2),
            frames.frame(frames.DATA_REST, 0, b"rest"),
            frames.frame(frames.POST_DATA, 0, b"post"),
            frames.end_frame(2),
        ]
    )
    reader = frames.FrameReader(_pieces(stream, size))
    assert b"".join([p async for p in reader.payloads(frames.PRE_DATA)]) == b"PGDMP pre more"
    seen = []
    while (got := await reader.next()) is not None and got.kind != frames.DATA_REST:
        seen.append((got.kind, got.stream, len(got.payload)))
    assert seen == [
        (b"T", 1, 20),
        (b"T", 2, 20),
        (b"D", 2, 2),
        (b"D", 1, 70000),
        (b"E", 1, 0),
        (b"E", 2, 0),
    ]
    assert [p async for p in reader.payloads(frames.POST_DATA)] == [b"post"]
    end = await reader.next()
    assert end is not None and end.kind == frames.END and frames.end_count(end.payload) == 2
    assert await reader.next() is None


async def test_a_damaged_stream_is_refused_saying_how() -> None:
    good = frames.frame(frames.TABLE_DATA, 1, b"abc")
    oversize = b"D" + (1).to_bytes(4, "big") + (frames.MAX_PAYLOAD + 1).to_bytes(4, "big")
    for stream, message in (
        (b"PGDMP" + good, "not a drd parallel PostgreSQL dump"),
        (frames.MAGIC + b"X" + good[1:], "unknown frame kind"),
        (frames.MAGIC + good[:5], "ended inside a frame header"),
        (frames.MAGIC + good[:-1], "ended inside a frame"),
        (frames.MAGIC + oversize, "exceeds"),
    ):
        reader = frames.FrameReader(_pieces(stream, 3))
        with pytest.raises(frames.FrameError, match=message):
            while await reader.next() is not None:
                pass
    with pytest.raises(frames.FrameError, match="end frame is damaged"):
        frames.end_count(b"\x00")
    with pytest.raises(ValueError, match="exceeds"):
        frames.frame(frames.TABLE_DATA, 1, bytes(frames.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="unknown frame kind"):
        frames.frame(b"?", 1)


def test_the_options_name_jobs_when_they_are_wrong() -> None:
    dsn = "host=127.0.0.1 dbname=shop"
    opts = PostgresOptions(name="db", kind="postgres", dsn=dsn, format="parallel", jobs=4)
    assert opts.jobs == 4
    assert PostgresOptions(name="db", kind="postgres", dsn=dsn).format == "custom"
    with pytest.raises(ValidationError, match="jobs: only a source with format: parallel"):
        PostgresOptions(name="db", kind="postgres", dsn=dsn, jobs=2)
    with pytest.raises(ValidationError, match="jobs"):
        PostgresOptions(name="db", kind="postgres", dsn=dsn, format="parallel", jobs=0)
    with pytest.raises(ValidationError, match="format"):
        PostgresOptions(name="db", kind="postgres", dsn=dsn, format="directory")  # type: ignore[arg-type]


def _dump(*body: bytes) -> bytes:
    return frames.MAGIC + b"".join(body) + frames.frame(frames.DATA_REST, 0, b"rest")


async def _sessions(work: Work, jobs: int, got: dict[bytes, bytes], depth: list[int]) -> None:
    """`jobs` sessions reading their tables' rows slowly (a few loop turns per piece)."""

    async def session() -> None:
        while (job := await work.get()) is not None:
            statement, rows = job
            data = b""
            while True:
                depth.append(rows.qsize())
                piece = await rows.get()
                if piece is None:
                    break
                data += piece
                for _ in range(3):
                    await asyncio.sleep(0)
            got[statement] = data

    await asyncio.gather(*(session() for _ in range(jobs)))


async def test_the_demultiplexer_hands_every_table_its_rows_through_bounded_queues() -> None:
    t, d, e = frames.TABLE_BEGIN, frames.TABLE_DATA, frames.TABLE_END
    body = [
        frames.frame(t, 1, b"COPY a.x FROM stdin;"),
        frames.frame(t, 2, b"COPY a.y FROM stdin;"),
    ]
    for i in range(60):
        body.append(frames.frame(d, 1 + i % 2, b"%d\n" % i))
    body += [frames.frame(e, 2), frames.frame(e, 1)]
    reader = frames.FrameReader(_pieces(_dump(*body), 11))
    work: Work = asyncio.Queue()
    got: dict[bytes, bytes] = {}
    depth: list[int] = []
    count, _ = await asyncio.gather(demultiplex(reader, 2, work), _sessions(work, 2, got, depth))
    assert count == 2
    assert got == {
        b"COPY a.x FROM stdin;": b"".join(b"%d\n" % i for i in range(0, 60, 2)),
        b"COPY a.y FROM stdin;": b"".join(b"%d\n" % i for i in range(1, 60, 2)),
    }
    assert max(depth) <= TABLE_QUEUE  # the sessions are slower than the reader, yet bounded
    after = await reader.next()
    assert after is not None and after.kind == frames.DATA_REST  # left for the next step


async def test_the_demultiplexer_refuses_frames_no_dump_writes() -> None:
    t, d, e = frames.TABLE_BEGIN, frames.TABLE_DATA, frames.TABLE_END
    for body, jobs, message in (
        ([frames.frame(t, 1, b"C1"), frames.frame(t, 2, b"C2")], 1, "begins while 1 tables"),
        ([frames.frame(t, 1, b"C1"), frames.frame(t, 1, b"C1")], 2, "table 1 begins"),
        ([frames.frame(d, 3, b"rows")], 1, "rows of table 3, which has not begun"),
        ([frames.frame(e, 3)], 1, "which has not begun"),
        ([frames.frame(t, 4, b"C4"), frames.frame(d, 4, b"r")], 1, "ended inside table 4"),
    ):
        reader = frames.FrameReader(_pieces(_dump(*body), 64))
        work: Work = asyncio.Queue()
        with pytest.raises(frames.FrameError, match=message):
            await demultiplex(reader, jobs, work)
