"""PostgreSQL statistics for restore tests: exact row counts, a schema fingerprint, and the
results of the plan's "matches the source" queries.

At backup time they are taken inside the dump's own snapshot: PostgresStrategy.dump() opens a
REPEATABLE READ READ ONLY transaction, exports its snapshot (pg_export_snapshot) and hands it
to `pg_dump --snapshot`, then counts and queries in that same transaction while pg_dump streams.
Both see exactly the same data, so a restored copy must match the counts to the row, whatever
was written to the source meanwhile. The price is a second full read of every table (count(*)
scans), concurrent with pg_dump's; the transaction is read-only, so a capture query cannot
change the source.

On the restored copy the same functions run against the scratch database.

The schema fingerprint hashes, in four parts, what a restore must reproduce: relations (tables,
views, sequences, ...), columns (name, type, NOT NULL, default, identity, generated),
constraints and indexes, as the catalog functions print them with search_path set to
pg_catalog (so every name is schema-qualified the same way on both sides). Owners and grants are
left out: a scratch restore drops them on purpose. Objects that belong to extensions are left
out too (CREATE EXTENSION recreates them). The catalog functions' output can differ between
major versions, so fingerprints are only comparable between servers of the same major version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


async def collect(conn: Any, queries: Mapping[str, str]) -> dict[str, Any]:
    """Everything restore tests compare, from inside the dump's snapshot transaction. Each part
    is taken in a savepoint that is rolled back afterwards (everything here only reads), so
    neither an error nor a setting a part makes (the fingerprint's search_path) outlives it: a
    released savepoint would hand a SET LOCAL on to the snapshot transaction, and the plan's
    queries after it would run with search_path=pg_catalog. A part that fails is recorded as
    {"error": ...}."""
    import psycopg

    stats: dict[str, Any] = {"snapshot": "the dump's own (pg_export_snapshot)"}
    for name, take in (("row_counts", row_counts), ("schema", schema_fingerprint)):
        try:
            async with conn.transaction(force_rollback=True):
                stats[name] = await take(conn)
        except psycopg.Error as exc:
            stats[name] = {"error": error_text(exc)}
    stats["captured"] = await capture(conn, queries)
    return stats
