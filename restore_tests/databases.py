"""Running a check's query against the restored copy, PostgreSQL or SQLite alike.

Each query gets a connection of its own: a query that times out or breaks its session cannot
take the next check down with it. SQLite files are opened read-only; a query that runs past its
check's timeout is interrupted (sqlite3's interrupt()), since its worker thread cannot be
cancelled.

drd's own sessions on a restored PostgreSQL copy run with `jit=off` (`check_dsn`): under the
shipped unit's MemoryDenyWriteExecute a JIT-compiled query fails in any server drd started, and a
check must judge the copy, not the server's JIT.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

#: rows fetched per check query: one more than a captured result may have
ROW_LIMIT = 1001


def check_dsn(dsn: str) -> str:
    """`dsn` with `-c jit=off` added to its options (those it has are kept, and come first)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["options"] = f"{params.get('options', '')} -c jit=off".strip()
    return make_conninfo("", **params)


async def pg_rows(dsn: str, query: str, limit: int = ROW_LIMIT) -> list[tuple[Any, ...]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(check_dsn(dsn), autocommit=True) as db:
        cur = await db.execute(query)
        if cur.description is None:
            return []
        return list(await cur.fetchmany(limit))


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _sqlite_fetch(db: sqlite3.Connection, query: str, limit: int) -> list[tuple[Any, ...]]:
    cur = db.execute(query)
    return list(cur.fetchmany(limit)) if cur.description is not None else []


async def sqlite_rows(path: Path, query: str, limit: int = ROW_LIMIT) -> list[tuple[Any, ...]]:
    db = await asyncio.to_thread(_sqlite_connect, path)
    work = asyncio.ensure_future(asyncio.to_thread(_sqlite_fetch, db, query, limit))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        db.interrupt()  # the thread stops at its next step; wait for it before closing
        await asyncio.wait([work])
        raise
    finally:
        if work.done():
            db.close()


async def rows(restored_as: str | None, target: str | Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of `query` on the restored database, by what it is (Strategy.restored_as): a file
    for "sqlite", else a libpq DSN."""
    if restored_as == "sqlite":
        return await sqlite_rows(Path(target), query)
    return await pg_rows(str(target), query)
