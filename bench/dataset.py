"""The benchmark database: pgbench tables plus a table of wide, realistic, partly compressible
rows (prose text, JSON attributes, random bytes, CSV-like attachments).

Generated once per size as `drd_bench_<size>mb` on the local server and kept across runs: a
`drd_bench_meta` table, written last, marks a complete database and records how it was made.
A database without that mark (an interrupted generation) is dropped and made again.
Generation holds an advisory lock, so two runs starting at once do not both generate it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
PG_BIN = "/usr/lib/postgresql/15/bin"
MIB = 1024 * 1024
# pgbench -i at scale 1 is about 15 MiB on disk (tables and indexes).
_PGBENCH_MIB_PER_SCALE = 15.0
_BATCH_ROWS = 2_000

_WORD_TEXT = (
    "the of and to in is was for on that with as by at from this be are or an have it not "
    "which but were has had been their more also its after first into other two new can "
    "customer invoice order payment shipment account balance refund delivery warehouse "
    "pending confirmed cancelled backordered priority standard express return damaged "
    "please note that the package was left at the front door and the customer asked us to "
    "call before delivery next time because nobody was home during the afternoon hours "
    "Zürich Lyon São Paulo Kraków Osaka Toronto Nairobi Melbourne Reykjavík Montréal "
    "quarterly report revenue margin forecast inventory supplier contract renewal audit "
    "ticket escalated resolved reopened duplicate merged assigned engineer support agent "
    "database migration latency timeout retry backoff replica primary failover region"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True)
class Dataset:
    name: str
    size_mb: int
    dsn: str
    on_disk_bytes: int

    @property
    def label(self) -> str:
        return f"{self.size_mb} MB"


def admin_dsn(host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> str:
    return psycopg.conninfo.make_conninfo("", host=host, port=str(port), user=user)


def dsn_for(dbname: str, host: str = "127.0.0.1", port: int = 5432) -> str:
    return psycopg.conninfo.make_conninfo(
        "", host=host, port=str(port), user="postgres", dbname=dbname
    )


def database_name(size_mb: int) -> str:
    return f"drd_bench_{size_mb}mb"


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _is_complete(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT value FROM drd_bench_meta WHERE key = 'generator_version'"
            ).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] == GENERATOR_VERSION


def _size(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def ensure_dataset(size_mb: int, *, host: str = "127.0.0.1", port: int = 5432) -> Dataset:
    """The benchmark database of about `size_mb` MB on disk, generated if missing."""
    name = database_name(size_mb)
    dsn = dsn_for(name, host, port)
    with psycopg.connect(admin_dsn(host, port), autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (_lock_key(name),))
        try:
            if not _is_complete(dsn):
                log.info("generating %s (about %d MB; once, kept across runs)", name, size_mb)
                started = time.monotonic()
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                _generate(dsn, size_mb, host, port)
                log.info("generated %s in %.0fs", name, time.monotonic() - started)
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(name),))
    return Dataset(name, size_mb, dsn, _size(dsn))


def _generate(dsn: str, size_mb: int, host: str, port: int) -> None:
    # Half pgbench (narrow rows, very compressible filler), half wide documents.
    scale = max(1, round(size_mb * 0.5 / _PGBENCH_MIB_PER_SCALE))
    subprocess.run(
        [
            *(f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale)),
            *("-h", host, "-p", str(port), "-U", "postgres", database_name(size_mb)),
        ],
        check=True,
        capture_output=True,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DOCS_TABLE)
        target = size_mb * MIB
        next_id = 1
        while True:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            if int(row[0]) >= target:
                break
            conn.execute(_DOCS_BATCH, {"first": next_id, "n": _BATCH_ROWS, "words": list(_WORDS)})
            next_id += _BATCH_ROWS
        conn.execute("VACUUM ANALYZE bench_docs")
        conn.execute("CREATE INDEX bench_docs_customer_idx ON bench_docs (customer)")
        conn.execute("CREATE TABLE drd_bench_meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute(
            "INSERT INTO drd_bench_meta VALUES ('generator_version', %s), ('size_mb', %s), "
            "('pgbench_scale', %s), ('docs_rows', %s)",
            (GENERATOR_VERSION, str(size_mb), str(scale), str(next_id - 1)),
        )


_DOCS_TABLE = """
CREATE TABLE bench_docs (
    id          bigint PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    customer    text NOT NULL,
    email       text,
    status      text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    attrs       jsonb NOT NULL,
    thumbnail   bytea,
    attachment  bytea
)
"""

# One batch of documents. Prose from a word list (compresses ~3x), a JSON object, random bytes
# (incompressible) and a CSV-like attachment (compresses well). Every random() call sits in a
# subquery that refers to the row (g), so it is evaluated per row. (%% is psycopg's %.)
_DOCS_BATCH = """
INSERT INTO bench_docs
SELECT g,
       timestamptz '2023-01-01 00:00:00+00' + g * interval '41.7 seconds',
       'customer-' || (g * 7919 %% 50000),
       CASE WHEN g %% 9 = 0 THEN NULL ELSE 'user' || (g * 7919 %% 50000) || '@example.com' END,
       (ARRAY['pending', 'confirmed', 'shipped', 'delivered', 'cancelled'])[1 + g %% 5],
       (SELECT string_agg(w[1 + floor(random() * cardinality(w))::int], ' ')
          FROM (SELECT %(words)s::text[] AS w) ws, generate_series(1, 6 + g %% 5)),
       (SELECT string_agg(w[1 + floor(random() * cardinality(w))::int]
                          || CASE WHEN s %% 13 = 0 THEN '. ' ELSE ' ' END, '')
          FROM (SELECT %(words)s::text[] AS w) ws, generate_series(1, 120 + g %% 200) AS s),
       jsonb_build_object(
           'order', g * 31 %% 1000003,
           'amount', round((random() * 10000)::numeric, 2),
           'currency', (ARRAY['EUR', 'USD', 'CHF', 'JPY'])[1 + g %% 4],
           'tags', jsonb_build_array('t' || g %% 17, 'r' || g %% 5),
           'ip', '10.' || g %% 256 || '.' || (g / 256) %% 256 || '.' || g %% 7),
       CASE WHEN g %% 3 = 0 THEN NULL ELSE
           (SELECT string_agg(uuid_send(gen_random_uuid()), ''::bytea)
              FROM generate_series(1, 32 + g %% 64)) END,
       (SELECT convert_to(string_agg(
                   s || ',' || (g + s) %% 1000 || ',' || round((random() * 100)::numeric, 1)
                   || ',OK,' || to_char(date '2024-01-01' + s::int, 'YYYY-MM-DD') || E'\\n', ''),
                   'UTF8')
          FROM generate_series(1, 10 + g %% 40) AS s)
FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(n)s - 1) AS g
"""
