"""Running a check's query against the restored copy, PostgreSQL, SQLite or MySQL alike.

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


async def mysql_rows(
    url: str, query: str, *, password: str | None = None, utc: bool = False, limit: int = ROW_LIMIT
) -> list[tuple[Any, ...]]:
    """Rows of `query` on a MySQL/MariaDB copy (a mysql:// URL; `password` when it has none),
    as the client's text, the form a "matches the source" result was captured in. At most
    `limit` rows come back (the session's sql_select_limit); `utc`: TIMESTAMP values in UTC."""
    from drd.strategies import mysql_client, mysql_tools

    server, database = mysql_client.parse_target(url)
    if password is not None and server.password is None:
        server = mysql_client.Server(
            server.host, server.port, server.user, server.socket, password, None
        )
    tool = await mysql_tools.find_tool("client")
    if tool is None:
        raise RuntimeError("no mariadb/mysql client found")
    body = query.rstrip().rstrip(";")
    settings = f"SET SESSION sql_select_limit = {int(limit)};"
    if utc:
        settings += " SET SESSION time_zone = '+00:00';"
    fetched = await mysql_client.Client(server, tool.path).rows(f"{settings}\n{body};", database)
    return [tuple(row) for row in fetched[:limit]]


async def rows(
    restored_as: str | None, target: str | Path, query: str, *, password: str | None = None
) -> list[tuple[Any, ...]]:
    """Rows of `query` on the restored database, by what it is (Strategy.restored_as): a file
    for "sqlite", a mysql:// URL for "mysql", else a libpq DSN."""
    if restored_as == "sqlite":
        return await sqlite_rows(Path(target), query)
    if restored_as == "mysql":
        return await mysql_rows(str(target), query, password=password)
    return await pg_rows(str(target), query)
