"""PostgreSQL statistics for restore tests, taken inside the dump's own snapshot and read again
from the restored copy by the same functions:

- `row_counts`: exact count(*) of every table (partitions included, each on its own);
- `schema`: a fingerprint of relations, columns, constraints and indexes (below);
- `inventory`, `grants`, `database`: the other objects, their owners and privileges, and the
  database's own properties (drd.strategies.postgres_inventory), each entry named so that a
  difference names the object;
- `large_objects`: their count and total size;
- `content`: digests of the rows themselves, sampled by key ranges or of every row
  (drd.strategies.postgres_content);
- `sequences`: the values pg_dump wrote into the backup (read from its TOC as it streams:
  sequences are not transactional, see sequences_from_toc);
- `captured`: the results of the plan's "matches the source" queries.

At backup time PostgresStrategy.dump() opens a REPEATABLE READ READ ONLY transaction, exports
its snapshot (pg_export_snapshot) and hands it to `pg_dump --snapshot`, then takes these in that
same transaction while pg_dump streams. Both see exactly the same data, so a restored copy must
match them to the row, whatever was written to the source meanwhile. The price is a second full
read of every table (count(*) scans; with `content: full` each row is also digested),
concurrent with pg_dump's; the transaction is read-only, so a capture query cannot change the
source.

The schema fingerprint hashes, in four parts, what a restore must reproduce: relations (tables,
views, sequences, ...), columns (name, type, NOT NULL, default, identity, generated),
constraints and indexes, as the catalog functions print them with search_path set to
pg_catalog (so every name is schema-qualified the same way on both sides). Owners and grants are
compared apart (`grants`): a restore onto a shared scratch server drops them on purpose. Objects
that belong to extensions are left out (CREATE EXTENSION recreates them). The catalog
functions' output can differ between major versions, so fingerprints and inventories are only
comparable between servers of the same major version.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from drd.strategies.base import ContentDigest
from drd.strategies.postgres_toc import DatabaseEntries
from drd.strategies.statistics import digest, error_text, result_value

# Every user table that holds rows (plain tables and partitions), as quote_ident() names them.
_TABLES_SQL = r"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
ORDER BY 1
"""

_USER_RELATIONS = r"""
  n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND c.relpersistence <> 't'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
"""

_SCHEMA_PARTS: dict[str, str] = {
    "relations": f"""
SELECT n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {_USER_RELATIONS}
ORDER BY 1, 2
""",
    "columns": f"""
SELECT n.nspname, c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attnotnull, coalesce(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), ''),
       a.attidentity::text, a.attgenerated::text
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND {_USER_RELATIONS}
ORDER BY n.nspname, c.relname, a.attnum
""",
    "constraints": f"""
SELECT n.nspname, c.relname, con.conname, pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE {_USER_RELATIONS}
ORDER BY 1, 2, 3
""",
    "indexes": f"""
SELECT n.nspname, c.relname, ci.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_class ci ON ci.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE {_USER_RELATIONS}
ORDER BY 1, 2, 3
""",
}

#: how long one "matches the source" query may run at backup time
CAPTURE_STATEMENT_TIMEOUT = "300s"


async def row_counts(conn: Any) -> dict[str, int]:
    """Exact count(*) of every user table, keyed by its quoted, qualified name."""
    from psycopg import sql

    cur = await conn.execute(_TABLES_SQL)
    tables = await cur.fetchall()
    counts: dict[str, int] = {}
    for name, schema, table in tables:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        )
        row = await cur.fetchone()
        counts[name] = int(row[0])
    return counts


async def schema_fingerprint(conn: Any) -> dict[str, Any]:
    """{"digest": sha256, "parts": {part: sha256}} of the database's schema (module docstring).

    Runs in a transaction of its own (a savepoint when one is open), so that the search_path
    it sets does not leak into the caller's session."""
    parts: dict[str, str] = {}
    async with conn.transaction():
        await conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
        for part, query in _SCHEMA_PARTS.items():
            cur = await conn.execute(query)
            parts[part] = digest(await cur.fetchall())
    return {"digest": digest(sorted(parts.items())), "parts": parts}


async def run_query(conn: Any, query: str) -> Any:
    """The result of one check query as a JSON value (drd.strategies.statistics.result_value)."""
    cur = await conn.execute(query)
    rows = await cur.fetchmany(1001) if cur.description is not None else []
    return result_value(rows)


async def capture(conn: Any, queries: Mapping[str, str]) -> dict[str, Any]:
    """Run each query in a savepoint (an error must not abort the snapshot transaction):
    id -> {"value": ...} or {"error": "..."}."""
    import psycopg

    out: dict[str, Any] = {}
    if not queries:
        return out
    await conn.execute(
        "SELECT pg_catalog.set_config('statement_timeout', %s, true)",
        (CAPTURE_STATEMENT_TIMEOUT,),
    )
    for key, query in queries.items():
        try:
            # Rolled back: whatever the query sets (SET LOCAL) ends with it.
            async with conn.transaction(force_rollback=True):
                out[key] = {"value": await run_query(conn, query)}
        except (psycopg.Error, ValueError) as exc:
            out[key] = {"error": error_text(exc)}
    await conn.execute("SELECT pg_catalog.set_config('statement_timeout', '0', true)")
    return out


async def collect(
    conn: Any, queries: Mapping[str, str], content: ContentDigest | None = None
) -> dict[str, Any]:
    """Everything restore tests compare, from inside the dump's snapshot transaction (the
    sequences come from the dump's own TOC: sequences_from_toc). Each part is taken in a
    savepoint that is rolled back afterwards (everything here only reads), so neither an error
    nor a setting a part makes (the fingerprint's search_path) outlives it: a released
    savepoint would hand a SET LOCAL on to the snapshot transaction, and the plan's queries
    after it would run with search_path=pg_catalog. A part that fails is recorded as
    {"error": ...}."""
    import psycopg

    from drd.strategies import postgres_content, postgres_inventory

    content = content or ContentDigest()
    stats: dict[str, Any] = {"snapshot": "the dump's own (pg_export_snapshot)"}
    parts: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
        ("row_counts", row_counts),
        ("schema", schema_fingerprint),
        ("inventory", postgres_inventory.inventory),
        ("grants", postgres_inventory.grants),
        ("database", postgres_inventory.database_properties),
        ("large_objects", large_objects),
    ]
    for name, take in parts:
        try:
            async with conn.transaction(force_rollback=True):
                stats[name] = await take(conn)
        except psycopg.Error as exc:
            stats[name] = {"error": error_text(exc)}
    counts = stats["row_counts"]
    if isinstance(counts, Mapping) and "error" not in counts:
        try:
            async with conn.transaction(force_rollback=True):
                stats["content"] = await postgres_content.capture(conn, counts, content)
        except psycopg.Error as exc:
            stats["content"] = {"error": error_text(exc)}
    else:
        stats["content"] = {"error": "the row counts could not be taken"}
    stats["captured"] = await capture(conn, queries)
    return stats


# ---------------------------------------------------------------------------------------------
# Sequences: the values the dump holds


_SETVAL = re.compile(rb"setval\('(?:[^']|'')*',\s*(-?\d+),\s*(true|false)\)")
_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


def qualified(schema: str, name: str) -> str:
    """schema.name with each part double-quoted unless it is a plain lower-case word (the same
    on both sides: the sequences' keys)."""

    def quote(part: str) -> str:
        return part if _PLAIN_IDENT.match(part) else '"' + part.replace('"', '""') + '"'

    return f"{quote(schema)}.{quote(name)}"


def sequences_from_toc(entries: DatabaseEntries, codec: str = "utf-8") -> dict[str, Any]:
    """The value and is_called of every sequence, as this dump will restore them: pg_dump's
    SEQUENCE SET entries. Sequences are not transactional: a sequence read in the dump's
    snapshot says what it is *now*, not what pg_dump read, so the statistics session does not
    read them itself; the backup's own values are what a restore must give back. `codec`:
    Python's codec of the archive's encoding (the names are in it)."""
    out: dict[str, Any] = {}
    for schema, name, statement in entries.sequences:
        match = _SETVAL.search(statement)
        if match is None:
            continue
        key = qualified(schema.decode(codec, "replace"), name.decode(codec, "replace"))
        out[key] = {"value": match.group(1).decode(), "is_called": match.group(2) == b"true"}
    return out


_SEQUENCES_SQL = f"""
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {_USER_RELATIONS}
ORDER BY 1, 2
"""


async def sequence_values(conn: Any) -> dict[str, Any]:
    """The value and is_called of every sequence of the (restored) database."""
    from psycopg import sql

    cur = await conn.execute(_SEQUENCES_SQL)
    out: dict[str, Any] = {}
    for schema, name in await cur.fetchall():
        cur = await conn.execute(
            sql.SQL("SELECT last_value::text, is_called FROM {}").format(
                sql.Identifier(schema, name)
            )
        )
        row = await cur.fetchone()
        out[qualified(schema, name)] = {"value": str(row[0]), "is_called": bool(row[1])}
    return out


# ---------------------------------------------------------------------------------------------
# Large objects

# The logical size of every large object: its last page's offset plus that page's length (a
# sparse object's holes count, as lo_lseek64 to its end says).
_LO_SQL = """
SELECT count(*), coalesce(sum(size), 0)::text FROM (
    SELECT coalesce((SELECT l.pageno::bigint * (current_setting('block_size')::int / 4)
                            + length(l.data)
                     FROM pg_catalog.pg_largeobject l WHERE l.loid = m.oid
                     ORDER BY l.pageno DESC LIMIT 1), 0) AS size
    FROM pg_catalog.pg_largeobject_metadata m
) s
"""
# Without the right to read pg_largeobject (not a superuser): each object opened and sought to
# its end, a batch at a time, in a savepoint rolled back afterwards (it closes the descriptors).
_LO_BATCH_SQL = """
SELECT m.oid, pg_catalog.lo_lseek64(pg_catalog.lo_open(m.oid, 262144), 0, 2)
FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid > %s ORDER BY m.oid LIMIT 1000
"""


async def large_objects(conn: Any) -> dict[str, Any]:
    """{"count": n, "bytes": total} of the database's large objects."""
    import psycopg

    try:
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(_LO_SQL)
            row = await cur.fetchone()
            return {"count": int(row[0]), "bytes": str(row[1])}
    except psycopg.errors.InsufficientPrivilege:
        pass
    count, total, after = 0, 0, 0
    while True:
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(_LO_BATCH_SQL, (after,))
            batch = await cur.fetchall()
        if not batch:
            return {"count": count, "bytes": str(total)}
        count += len(batch)
        total += sum(int(size) for _, size in batch)
        after = int(batch[-1][0])
