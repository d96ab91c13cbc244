"""SqliteStrategy: online-backup dump, verified restore, and the failure paths."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drd.errors import IntegrityError, RestoreError, SourceError, TargetExists
from drd.strategies import get_strategy
from drd.strategies.sqlite import SqliteOptions, SqliteStrategy


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at a directory of our own so tests can see what the dump leaves."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def make_db(path: Path, rows: int = 2000, wal: bool = False) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.executescript(
        """
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, photo BLOB);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, person INTEGER REFERENCES people(id),
                            body TEXT, score REAL);
        CREATE INDEX notes_person ON notes(person);
        CREATE VIEW busy AS SELECT person, count(*) AS n FROM notes GROUP BY person;
        CREATE TABLE ledger (id INTEGER PRIMARY KEY, account TEXT, amount INTEGER);
        """
    )
    cities = ["Zürich", "東京", None, "🦀 Crabtown"]
    db.executemany(
        "INSERT INTO people VALUES (?, ?, ?, ?)",
        [
            (i, f"person {i}", cities[i % 4], os.urandom(i % 3000) if i % 5 else None)
            for i in range(rows)
        ],
    )
    db.executemany(
        "INSERT INTO notes VALUES (?, ?, ?, ?)",
        [(i, i % rows, "note ✓ " * (i % 20), i / 7) for i in range(rows * 2)],
    )
    db.commit()
    db.close()


def content(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def strategy_for(path: Path) -> SqliteStrategy:
    return SqliteStrategy(SqliteOptions(name="app", kind="sqlite", path=str(path)))


async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in it]


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def partials(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".drd-partial-" in p.name]


async def test_registry() -> None:
    assert get_strategy("sqlite") is SqliteStrategy
    with pytest.raises(ValueError):
        SqliteOptions(name="app", kind="sqlite", path="x", extra=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
async def test_round_trip(tmp_path: Path, private_tempdir: Path, wal: bool) -> None:
    source = tmp_path / "app ?#%ü.db"  # URI-special characters in the path
    make_db(source, wal=wal)
    os.chmod(source, 0o640)
    strategy = strategy_for(source)
    chunks = await collect(strategy.dump())
    assert all(len(c) == 1 << 20 for c in chunks[:-1])
    meta = strategy.restore_metadata()
    assert meta["format"] == "sqlite3-database-file"
    assert meta["sqlite_version"] == sqlite3.sqlite_version
    assert meta["page_size"] == 4096
    assert meta["size"] == sum(map(len, chunks)) == meta["page_size"] * meta["page_count"]
    assert meta["journal_mode"] == ("wal" if wal else "delete")
    assert list(private_tempdir.iterdir()) == []  # the temp copy is gone

    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    outcome = await SqliteStrategy.restore(replay(chunks), str(target), meta)
    assert outcome.details["integrity_check"] == "ok"
    assert outcome.details["tables"] == 3
    assert content(target) == content(source)
    assert (target.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.db"]


async def test_dump_is_consistent_while_another_connection_writes(tmp_path: Path) -> None:
    source = tmp_path / "busy.db"
    make_db(source, rows=20_000, wal=True)
    stop = threading.Event()
    written = 0

    def writer() -> None:
        # Each transaction moves money between two accounts: every snapshot sums to zero.
        nonlocal written
        db = sqlite3.connect(source, timeout=30)
        try:
            while not stop.is_set():
                with db:
                    db.execute("INSERT INTO ledger (account, amount) VALUES ('a', 10)")
                    db.execute(
                        "INSERT INTO people (name, photo) VALUES ('new', ?)", (os.urandom(2000),)
                    )
                    db.execute("INSERT INTO ledger (account, amount) VALUES ('b', -10)")
                written += 1
        finally:
            db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written < 20:
            await asyncio.sleep(0.01)
        strategy = strategy_for(source)
        before = written
        chunks = await collect(strategy.dump())
        after = written
    finally:
        stop.set()
        thread.join()

    target = tmp_path / "copy.db"
    await SqliteStrategy.restore(replay(chunks), str(target), strategy.restore_metadata())
    db = sqlite3.connect(target)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        total, n = db.execute("SELECT coalesce(sum(amount), 0), count(*) FROM ledger").fetchone()
        new_people = db.execute("SELECT count(*) FROM people WHERE name = 'new'").fetchone()[0]
    finally:
        db.close()
    # One snapshot: the ledger balances, and it is from some moment during the dump.
    assert total == 0
    assert n == 2 * new_people
    assert before <= new_people <= after + 1


async def test_truncated_stream_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "app.db"
    make_db(source)
    strategy = strategy_for(source)
    chunks = await collect(strategy.dump())
    meta = strategy.restore_metadata()
    target = tmp_path / "out" / "app.db"
    target.parent.mkdir()

    async def broken() -> AsyncIterator[bytes]:
        yield chunks[0]
        raise IntegrityError("stream truncated")

    with pytest.raises(IntegrityError):
        await SqliteStrategy.restore(broken(), str(target), meta)
    assert list(target.parent.iterdir()) == []

    # A stream that just stops short, without metadata to compare sizes with.
    short = b"".join(chunks)[: meta["size"] // 2]
    with pytest.raises(RestoreError, match="integrity check"):
        await SqliteStrategy.restore(replay([short]), str(target), {})
    assert list(target.parent.iterdir()) == []

    with pytest.raises(RestoreError, match="bytes"):
        await SqliteStrategy.restore(replay([short]), str(target), meta)
    assert list(target.parent.iterdir()) == []


async def test_garbage_stream_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RestoreError, match="not an SQLite database"):
        await SqliteStrategy.restore(replay([b"hello" * 1000]), str(out / "x.db"), {})
    assert list(out.iterdir()) == []


async def test_corrupt_database_fails_integrity_check(tmp_path: Path) -> None:
    source = tmp_path / "app.db"
    make_db(source)
    strategy = strategy_for(source)
    data = bytearray(b"".join(await collect(strategy.dump())))
    # Scramble the middle of the file, keeping the header valid.
    data[len(data) // 2 : len(data) // 2 + 8192] = os.urandom(8192)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RestoreError, match="integrity check"):
        await SqliteStrategy.restore(replay([bytes(data)]), str(out / "x.db"), {})
    assert list(out.iterdir()) == []


async def test_existing_target_refused(tmp_path: Path) -> None:
    source = tmp_path / "app.db"
    make_db(source, rows=10)
    strategy = strategy_for(source)
    chunks = await collect(strategy.dump())
    target = tmp_path / "existing.db"
    target.write_bytes(b"precious")
    consumed = False

    async def stream() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        for c in chunks:
            yield c

    with pytest.raises(TargetExists):
        await SqliteStrategy.restore(stream(), str(target), strategy.restore_metadata())
    assert target.read_bytes() == b"precious"
    assert not consumed
    assert partials(tmp_path) == []

    dangling = tmp_path / "link.db"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(TargetExists):
        await SqliteStrategy.restore(replay(chunks), str(dangling), {})
    assert not (tmp_path / "nowhere").exists()


async def test_missing_source_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="No such file"):
        await collect(strategy_for(tmp_path / "nope.db").dump())
    with pytest.raises(SourceError, match="not a file"):
        await collect(strategy_for(tmp_path).dump())
    notdb = tmp_path / "text.db"
    notdb.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SourceError, match="backup failed"):
        await collect(strategy_for(notdb).dump())


async def test_aclose_mid_stream_removes_the_temp_copy(
    tmp_path: Path, private_tempdir: Path
) -> None:
    source = tmp_path / "big.db"
    make_db(source, rows=5000)
    assert source.stat().st_size > 3 << 20
    strategy = strategy_for(source)
    dump = strategy.dump()
    await anext(dump)
    assert len(list(private_tempdir.iterdir())) == 1
    (copy_dir,) = private_tempdir.iterdir()
    assert copy_dir.stat().st_mode & 0o777 == 0o700
    await dump.aclose()
    assert list(private_tempdir.iterdir()) == []
    with pytest.raises(RuntimeError):
        strategy.restore_metadata()


async def test_cancelled_restore_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "app.db"
    make_db(source, rows=5000)
    strategy = strategy_for(source)
    chunks = await collect(strategy.dump())
    out = tmp_path / "out"
    out.mkdir()
    fed = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield chunks[0]
        fed.set()
        await asyncio.sleep(3600)
        yield chunks[1]

    task = asyncio.ensure_future(
        SqliteStrategy.restore(stalls(), str(out / "app.db"), strategy.restore_metadata())
    )
    await fed.wait()
    await asyncio.sleep(0.05)
    assert len(partials(out)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(out.iterdir()) == []
