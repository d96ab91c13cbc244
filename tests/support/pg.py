"""Real-PostgreSQL helpers for tests: throwaway databases, a rich test schema, fingerprints.

The server is the local PostgreSQL 15 (127.0.0.1:5432, trust auth, user postgres; see
/work/shared/notes/test-environment.md). Every database a test creates has a unique name and is
dropped in fixture teardown, so tests can run concurrently with other test sessions.

The fixtures `pg_database_factory` and `pg_db` are available to every test: tests/conftest.py
loads this module as a plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import databases
from tests.support.databases import DatabaseFactory

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"


def dsn_for(dbname: str, **extra: str) -> str:
    """A key=value DSN for `dbname` on the test server (extra keywords appended)."""
    return psycopg.conninfo.make_conninfo(
        "", host=PG_HOST, port=str(PG_PORT), user=PG_USER, dbname=dbname, **extra
    )


ADMIN_DSN = dsn_for("postgres")


def unique_name(prefix: str = "drdt") -> str:
    return databases.unique_name(prefix)


def create_database(name: str) -> str:
    """Create database `name`; returns its DSN."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for(name)


def drop_database(name: str) -> None:
    """Drop database `name` if it exists, disconnecting whoever is connected."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def databases_like(pattern: str) -> list[str]:
    """Names of databases matching a LIKE pattern."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,)
        ).fetchall()
    return [r[0] for r in rows]


# Built with generate_series only: ~1-2 s for 200k rows.
_RICH_SCHEMA = """
CREATE SCHEMA sales;
CREATE SCHEMA inventory;
CREATE SCHEMA "Mixed Case";

CREATE TABLE sales.customers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    city        text,
    email       text UNIQUE,
    balance     numeric(12, 2),
    created_at  timestamptz NOT NULL,
    tags        text[],
    profile     jsonb,
    photo       bytea
);
INSERT INTO sales.customers (name, city, email, balance, created_at, tags, profile, photo)
SELECT 'customer ' || g,
       (ARRAY['Zürich', '東京', 'São Paulo', 'Москва', NULL, '🦀 Crabtown'])[1 + g % 6],
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'c' || g || '@example.com' END,
       round((g * 37 % 100000) / 7.0, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute 7.123456 seconds',
       CASE WHEN g % 5 = 0 THEN NULL ELSE ARRAY['t' || g % 3, 'ü' || g % 11] END,
       jsonb_build_object('n', g, 'ok', g % 2 = 0, 'name', 'Grüße ' || g),
       CASE WHEN g % 4 = 0 THEN NULL ELSE decode(md5(g::text) || md5((g + 1)::text), 'hex') END
FROM generate_series(1, @customers@) AS g;

CREATE TABLE sales.orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES sales.customers (id),
    amount       numeric(12, 2) NOT NULL CHECK (amount >= 0),
    note         text,
    ordered_at   timestamp NOT NULL
);
INSERT INTO sales.orders (customer_id, amount, note, ordered_at)
SELECT 1 + g % @customers@,
       (g % 1000) + 0.99,
       CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN 'rush 🚚' ELSE 'Lieferung nach Zürich' END,
       timestamp '2024-02-01' + g * interval '13 seconds'
FROM generate_series(1, @orders@) AS g;
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE INDEX orders_note_idx ON sales.orders (lower(note)) WHERE note IS NOT NULL;

CREATE TABLE sales.events (
    id       bigint NOT NULL,
    happened date NOT NULL,
    payload  text,
    PRIMARY KEY (id, happened)
) PARTITION BY RANGE (happened);
CREATE TABLE sales.events_2024 PARTITION OF sales.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE sales.events_2025 PARTITION OF sales.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO sales.events
SELECT g, date '2024-01-01' + (g % 700), repeat('ev', g % 5)
FROM generate_series(1, @events@) AS g;

CREATE TABLE inventory.items (
    sku      text PRIMARY KEY,
    title    text NOT NULL,
    qty      integer DEFAULT 0,
    price    double precision,
    blob     bytea,
    flags    boolean[]
);
INSERT INTO inventory.items
SELECT 'SKU-' || lpad(g::text, 7, '0'),
       (ARRAY['Käse', '寿司', 'crème brûlée', '🍕 pizza', 'plain'])[1 + g % 5],
       CASE WHEN g % 9 = 0 THEN NULL ELSE g % 500 END,
       g / 3.0,
       CASE WHEN g % 2 = 0 THEN NULL ELSE decode(repeat(to_hex(g % 256), 32), 'hex') END,
       ARRAY[g % 2 = 0, NULL, true]
FROM generate_series(1, @items@) AS g;

CREATE SEQUENCE inventory.ticket_seq START 1000 INCREMENT 7;
SELECT nextval('inventory.ticket_seq') FROM generate_series(1, 5);
CREATE SEQUENCE inventory.untouched_seq;
CREATE SEQUENCE inventory.desc_seq INCREMENT -1 MINVALUE -1000000 MAXVALUE 0 START 0;
SELECT setval('inventory.desc_seq', -4242);

CREATE TABLE "Mixed Case"."Odd Table" ("Weird Column" text, n integer);
INSERT INTO "Mixed Case"."Odd Table"
SELECT CASE WHEN g % 10 = 0 THEN NULL ELSE 'Wert ' || g || ' ✓' END, g % 17
FROM generate_series(1, @odd@) AS g;

CREATE VIEW sales.big_spenders AS
SELECT c.id, c.name, sum(o.amount) AS total
FROM sales.customers c JOIN sales.orders o ON o.customer_id = c.id
GROUP BY c.id, c.name
HAVING sum(o.amount) > 5000;

CREATE FUNCTION sales.order_count(cid bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT count(*) FROM sales.orders WHERE customer_id = cid $$;

COMMENT ON TABLE sales.orders IS 'Bestellungen: orders';
"""


def populate_rich_database(dsn: str, rows: int = 200_000) -> dict[str, int]:
    """Build the rich test schema with about `rows` rows in total; returns rows per table."""
    counts = {
        "customers": max(rows // 10, 10),
        "orders": max(rows * 6 // 10, 10),
        "events": max(rows // 10, 10),
        "items": max(rows // 10, 10),
        "odd": max(rows // 10, 10),
    }
    script = _RICH_SCHEMA
    for key, value in counts.items():
        script = script.replace(f"@{key}@", str(value))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script.encode())  # one simple-query round trip for the whole script
        conn.execute("ANALYZE")
    return counts


_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
ORDER BY 1, 2
"""


def database_fingerprint(dsn: str) -> dict[str, Any]:
    """What must survive a dump and restore unchanged, as comparable plain data.

    Per table: row count and an md5 over every row's text form in a total order (row text
    sorts on all columns, so tables without a primary key compare too). Plus sequence last
    values and states, views, indexes, constraints, functions, table owners and comments.
    """
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(_TABLES_SQL).fetchall()
        out["tables"] = {}
        for schema, table in tables:
            ident = sql.Identifier(schema, table)
            q = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                " FROM {} AS t"
            ).format(ident)
            row = conn.execute(q).fetchone()
            assert row is not None
            out["tables"][f"{schema}.{table}"] = {"rows": row[0], "md5": row[1]}
        out["sequences"] = conn.execute(
            "SELECT schemaname, sequencename, last_value, start_value, increment_by "
            "FROM pg_sequences ORDER BY 1, 2"
        ).fetchall()
        out["views"] = conn.execute(
            "SELECT schemaname, viewname, definition FROM pg_views "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        out["indexes"] = conn.execute(
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        ).fetchall()
        out["constraints"] = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace::regnamespace::text "
            "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        out["functions"] = conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        out["owners"] = conn.execute(
            "SELECT schemaname, tablename, tableowner FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        out["comments"] = conn.execute(
            "SELECT c.oid::regclass::text, d.description FROM pg_description d "
            "JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass "
            "ORDER BY 1"
        ).fetchall()
    return out


@dataclass(frozen=True)
class PgDatabase:
    name: str
    dsn: str


class PgDatabaseFactory(DatabaseFactory[PgDatabase]):
    """PostgreSQL databases on the test server (tests.support.databases: the shared shape)."""

    def __init__(self) -> None:
        super().__init__(
            prefix="drdt",
            create=create_database,
            drop=drop_database,
            like=databases_like,
            handle=lambda name: PgDatabase(name, dsn_for(name)),
        )


@pytest.fixture(name="pg_database_factory")
def pg_database_factory_fixture() -> Iterator[PgDatabaseFactory]:
    """Fixture `pg_database_factory`: make databases; all dropped after the test."""
    factory = PgDatabaseFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(name="pg_db")
def pg_db_fixture() -> Iterator[PgDatabase]:
    """Fixture `pg_db`: one fresh, empty database, dropped after the test."""
    factory = PgDatabaseFactory()
    try:
        yield factory()
    finally:
        factory.cleanup()


__all__: list[str] = [
    "ADMIN_DSN",
    "PgDatabase",
    "PgDatabaseFactory",
    "create_database",
    "database_exists",
    "database_fingerprint",
    "databases_like",
    "drop_database",
    "dsn_for",
    "pg_database_factory_fixture",
    "pg_db_fixture",
    "populate_rich_database",
    "unique_name",
]
