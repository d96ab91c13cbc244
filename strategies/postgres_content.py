"""Content digests of a PostgreSQL database's tables: proof that the restored rows hold the
source's values, not only that there are as many of them.

A row's digest is md5 of its text form, `ROW(c1, c2, ...)::text` with the columns in name
order (a restore may create a partition with another column order) and the output settings of
drd.strategies.postgres_inventory.READ_SETTINGS (time zone, date style, float digits, ...) on
both sides. Per table, at backup time inside the dump's snapshot:

- `whole`: tables of at most `sample_rows` rows (every table with `content: full`): the count
  and the sum of the rows' digests (order-independent, computed by the server: no row leaves
  it, a table without any key compares too);
- `sampled`: bigger tables with a primary key (or a unique index on NOT NULL columns): up to
  RANGES ranges of consecutive keys, `sample_rows` rows in all, starting at the smallest key and
  at keys spread over the table (picked from a TABLESAMPLE SYSTEM of a few pages, REPEATABLE
  with a seed derived from the table's name). Each range is recorded by its first and last key,
  its row count and the digest of its rows in key order; the restored copy digests exactly the
  rows between those keys. Reading a range is an index range scan: a terabyte table costs a few
  thousand rows, not a scan;
- `none`: bigger tables without such a key are not sampled (their row count is still checked);
  the report says so, and `content: full` digests them whole.

The key values travel as text and are cast back with their column's type. Ranges follow the
key's collation: a copy restored with another locale (the report says when) may disagree on
text keys.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drd.strategies.base import ContentDigest
from drd.strategies.postgres_inventory import USER_NS, not_member, reading
from drd.strategies.statistics import error_text

#: ranges a sampled table is read in
RANGES = 8
#: pages TABLESAMPLE reads (about) to pick the start keys from
_SAMPLE_PAGES = RANGES * 4

_TABLES_SQL = f"""
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       pg_relation_size(c.oid) / current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_NS}
  AND {not_member("pg_class", "c.oid")}
ORDER BY 2
"""

# Unique keys usable for ranges: valid, immediate, not partial, no expressions, NOT NULL.
_KEYS_SQL = """
SELECT i.indrelid, i.indisprimary, ci.relname,
       array_agg(a.attname::text ORDER BY k.ord),
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisunique AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL
  AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
GROUP BY i.indrelid, i.indisprimary, ci.relname
HAVING bool_and(a.attnotnull)
"""


@dataclass(frozen=True)
class Table:
    name: str
    schema: str
    table: str
    columns: list[str]
    pages: int
    key: list[str] | None
    key_types: list[str] | None


async def tables(conn: Any) -> dict[str, Table]:
    """Every user table, by its quoted qualified name, with its best key."""
    cur = await conn.execute(_KEYS_SQL)
    best: dict[int, tuple[tuple[int, int, str], list[str], list[str]]] = {}
    for oid, primary, index, names, types in await cur.fetchall():
        rank = (0 if primary else 1, len(names), str(index))
        if oid not in best or rank < best[oid][0]:
            best[oid] = (rank, list(names), list(types))
    cur = await conn.execute(_TABLES_SQL)
    out: dict[str, Table] = {}
    for oid, name, schema, table, columns, pages in await cur.fetchall():
        key = best.get(oid)
        out[str(name)] = Table(
            str(name),
            str(schema),
            str(table),
            sorted(str(c) for c in columns),
            int(pages or 0),
            key[1] if key else None,
            key[2] if key else None,
        )
    return out


def _row(t: Table) -> Any:
    from psycopg import sql

    return sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(map(sql.Identifier, t.columns)))


def _relation(t: Table) -> Any:
    from psycopg import sql

    return sql.SQL("ONLY {}").format(sql.Identifier(t.schema, t.table))


def _key_list(key: Sequence[str]) -> Any:
    from psycopg import sql

    return sql.SQL(", ").join(map(sql.Identifier, key))


def _key_text(key: Sequence[str]) -> Any:
    from psycopg import sql

    return sql.SQL("ARRAY[{}]").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key)
    )


def _bound(key: Sequence[str], types: Sequence[str], op: str) -> Any:
    """`(k1, k2) op (CAST(%s AS t1), CAST(%s AS t2))`."""
    from psycopg import sql

    casts = sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(sql.SQL(t)) for t in types)
    return sql.SQL("({}) {} ({})").format(_key_list(key), sql.SQL(op), casts)


async def _whole(conn: Any, t: Table) -> dict[str, Any]:
    from psycopg import sql

    query = sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || left({}, 16))::bit(64)::bigint::numeric), 0)::text"
        " FROM {}"
    ).format(_row(t), _relation(t))
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return {"mode": "whole", "rows": int(row[0]), "digest": str(row[1])}


def _range_digest(hashes: Sequence[str]) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


async def _read_range(
    conn: Any,
    t: Table,
    first: Sequence[str],
    *,
    last: Sequence[str] | None = None,
    after: Sequence[str] | None = None,
    limit: int,
) -> list[tuple[list[str], str]]:
    """(key as text, row digest) of the rows from `first` (and after `after`) to `last` in key
    order, at most `limit` of them."""
    from psycopg import sql

    assert t.key is not None and t.key_types is not None
    conditions = [_bound(t.key, t.key_types, ">=")]
    params: list[Any] = list(first)
    if after is not None:
        conditions.append(_bound(t.key, t.key_types, ">"))
        params.extend(after)
    if last is not None:
        conditions.append(_bound(t.key, t.key_types, "<="))
        params.extend(last)
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        _key_text(t.key),
        _row(t),
        _relation(t),
        sql.SQL(" AND ").join(conditions),
        _key_list(t.key),
        sql.Literal(limit),
    )
    cur = await conn.execute(query, params)
    return [([str(v) for v in key], str(h)) for key, h in await cur.fetchall()]


async def _starts(conn: Any, t: Table) -> list[list[str]]:
    """The smallest key, and keys spread over the table (module docstring), sorted."""
    from psycopg import sql

    assert t.key is not None
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(
            _key_text(t.key), _relation(t), _key_list(t.key)
        )
    )
    first = await cur.fetchone()
    if first is None:
        return []
    percent = min(100.0, 100.0 * _SAMPLE_PAGES / max(t.pages, 1))
    seed = int.from_bytes(hashlib.sha256(t.name.encode()).digest()[:3], "big")
    cur = await conn.execute(
        sql.SQL(
            "SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) REPEATABLE ({}) ORDER BY {} LIMIT 100000"
        ).format(
            _key_text(t.key),
            _relation(t),
            sql.Literal(percent),
            sql.Literal(seed),
            _key_list(t.key),
        )
    )
    sample = [[str(v) for v in row[0]] for row in await cur.fetchall()]
    starts = [[str(v) for v in first[0]]]
    if sample:
        step = len(sample) / RANGES
        for i in range(1, RANGES):
            candidate = sample[min(len(sample) - 1, int(i * step))]
            if candidate not in starts:
                starts.append(candidate)
    return starts


async def _sampled(conn: Any, t: Table, budget: int) -> dict[str, Any]:
    starts = await _starts(conn, t)
    ranges: list[dict[str, Any]] = []
    previous: list[str] | None = None
    left = budget
    for index, start in enumerate(starts):
        if left <= 0:
            break
        take = math.ceil(left / (len(starts) - index))
        rows = await _read_range(conn, t, start, after=previous, limit=take)
        if not rows:
            continue
        ranges.append(
            {
                "first": rows[0][0],
                "last": rows[-1][0],
                "rows": len(rows),
                "digest": _range_digest([h for _, h in rows]),
            }
        )
        previous = rows[-1][0]
        left -= len(rows)
    return {"mode": "sampled", "key": t.key, "key_types": t.key_types, "ranges": ranges}


async def capture(conn: Any, counts: Mapping[str, int], content: ContentDigest) -> dict[str, Any]:
    """The content digests of every table (module docstring), inside the caller's snapshot;
    `counts` are the tables' row counts taken in it. {"mode", "sample_rows", "tables"}."""
    import psycopg

    out: dict[str, Any] = {}
    async with reading(conn):
        found = await tables(conn)
        for name, t in found.items():
            rows = counts.get(name)
            try:
                async with conn.transaction(force_rollback=True):
                    if content.mode == "full" or rows is None or rows <= content.sample_rows:
                        out[name] = await _whole(conn, t)
                    elif t.key is None:
                        out[name] = {"mode": "none", "rows": rows}
                    else:
                        out[name] = {**await _sampled(conn, t, content.sample_rows), "of": rows}
            except psycopg.Error as exc:
                out[name] = {"mode": "error", "error": error_text(exc)}
    return {"mode": content.mode, "sample_rows": content.sample_rows, "tables": out}


async def verify(conn: Any, expected: Any) -> dict[str, Any]:
    """The restored copy's digests of what `expected` (the backup's capture) covers, in the
    same shape: per table {"mode": "whole", "rows", "digest"}, {"mode": "sampled", "ranges":
    [{"rows", "digest"}]}, {"mode": "missing"} or {"mode": "error", "error"}."""
    import psycopg

    wanted = expected.get("tables") if isinstance(expected, Mapping) else None
    if not isinstance(wanted, Mapping):
        return {}
    out: dict[str, Any] = {}
    async with reading(conn):
        found = await tables(conn)
        for name, spec in wanted.items():
            mode = spec.get("mode") if isinstance(spec, Mapping) else None
            if mode not in ("whole", "sampled"):
                continue
            t = found.get(name)
            if t is None:
                out[name] = {"mode": "missing"}
                continue
            try:
                async with conn.transaction(force_rollback=True):
                    if mode == "whole":
                        out[name] = await _whole(conn, t)
                    else:
                        out[name] = await _verify_ranges(conn, t, spec)
            except psycopg.Error as exc:
                out[name] = {"mode": "error", "error": error_text(exc)}
    return out


async def _verify_ranges(conn: Any, t: Table, spec: Mapping[str, Any]) -> dict[str, Any]:
    keyed = Table(
        t.name, t.schema, t.table, t.columns, t.pages, list(spec["key"]), list(spec["key_types"])
    )
    ranges = []
    for r in spec.get("ranges") or []:
        rows = await _read_range(conn, keyed, r["first"], last=r["last"], limit=int(r["rows"]) + 1)
        ranges.append({"rows": len(rows), "digest": _range_digest([h for _, h in rows])})
    return {"mode": "sampled", "ranges": ranges}
