"""SQLite statistics for restore tests: row counts per table, a schema fingerprint, and the
results of the plan's "matches the source" queries.

At backup time they are taken from the private copy the online backup API made (the exact image
that is streamed), on a connection switched to `PRAGMA query_only`, so a capture query can
change neither the source nor the copy. On the restored file the same functions run. The
functions are blocking: callers run them in a worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from drd.strategies.statistics import digest, error_text, result_value


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def row_counts(db: sqlite3.Connection) -> dict[str, int]:
    """count(*) of every ordinary table (virtual tables need their module: left out)."""
    names = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
        )
    ]
    counts = {}
    for name in names:
        counts[name] = int(db.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0])
    return counts


def schema_fingerprint(db: sqlite3.Connection) -> dict[str, Any]:
    """{"digest": sha256} over every schema object's type, name, table and SQL text."""
    rows = db.execute(
        "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name"
    ).fetchall()
    return {"digest": digest(rows)}


def run_query(db: sqlite3.Connection, query: str) -> Any:
    cur = db.execute(query)
    return result_value(cur.fetchmany(1001) if cur.description is not None else [])


def capture(db: sqlite3.Connection, queries: Mapping[str, str]) -> dict[str, Any]:
    """id -> {"value": ...} or {"error": "..."}; the connection is made query-only first."""
    out: dict[str, Any] = {}
    if not queries:
        return out
    db.execute("PRAGMA query_only = ON")
    for key, query in queries.items():
        try:
            out[key] = {"value": run_query(db, query)}
        except (sqlite3.Error, ValueError) as exc:
            out[key] = {"error": error_text(exc)}
    return out


def collect(db: sqlite3.Connection, queries: Mapping[str, str]) -> dict[str, Any]:
    stats: dict[str, Any] = {"snapshot": "the backup API's copy"}
    for name, take in (("row_counts", row_counts), ("schema", schema_fingerprint)):
        try:
            stats[name] = take(db)
        except sqlite3.Error as exc:
            stats[name] = {"error": error_text(exc)}
    stats["captured"] = capture(db, queries)
    return stats
