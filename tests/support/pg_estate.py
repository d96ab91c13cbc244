"""A PostgreSQL database shaped like a real estate, for restore-test proofs: application roles
with grants (column grants, default privileges), row-level-security policies, a user mapping,
identifiers with spaces and quotes, range and list partitions (with a default one), populated
and unpopulated materialized views, large objects, extensions in their own schema, enums,
domains, composite and range types, triggers (and an event trigger), a rule, identity and
generated columns, sequences, comments, a big table without a key, and values whose text form
depends on session settings (timestamptz, interval, money, float, bytea).

Roles are cluster-wide: each Estate names its own (unique) roles and drops them afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.support.pg import ADMIN_DSN, PgDatabase, PgDatabaseFactory


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class EstateRoles:
    owner: str
    reader: str
    writer: str  # needs quoting
    auditor: str  # named by a policy only
    mapped: str  # named by a user mapping only

    @classmethod
    def unique(cls) -> EstateRoles:
        p = f"drdt_{secrets.token_hex(3)}"
        return cls(f"{p}_owner", f"{p}_reader", f"{p}_Writer", f"{p}_auditor", f"{p}_mapped")

    @property
    def all(self) -> list[str]:
        return [self.owner, self.reader, self.writer, self.auditor, self.mapped]


#: schema and table with a space and a double quote in their names
ODD_SCHEMA = 'Odd "Schema"'
ODD_TABLE = "Tab le"
ODD = f"{q(ODD_SCHEMA)}.{q(ODD_TABLE)}"
ODD_COLUMN = q('Weird "Col"')
#: a sequence whose name has a space and a double quote
TICKETS = "app." + q('Ticket "No"')


def _script(r: EstateRoles, rows: int) -> str:
    o, rd, w, a, m = (q(x) for x in r.all)
    return f"""
CREATE SCHEMA ext;
CREATE EXTENSION pg_trgm WITH SCHEMA ext;
CREATE EXTENSION hstore WITH SCHEMA ext;
CREATE EXTENSION citext WITH SCHEMA ext;
GRANT USAGE ON SCHEMA ext TO PUBLIC;

CREATE SCHEMA app AUTHORIZATION {o};
CREATE SCHEMA {q(ODD_SCHEMA)} AUTHORIZATION {o};
SET ROLE {o};

CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE app.address AS (street text, zip text);
CREATE TYPE app.price_range AS RANGE (subtype = numeric);
CREATE DOMAIN app.email AS ext.citext CHECK (VALUE ~ '@');
CREATE DOMAIN app.positive AS integer NOT NULL DEFAULT 1 CHECK (VALUE > 0);

CREATE TABLE app.accounts (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region    text NOT NULL,
    email     app.email,
    mood      app.mood DEFAULT 'ok',
    home      app.address,
    balance   money,
    ratio     double precision,
    opened    timestamptz NOT NULL,
    term      interval,
    secret    bytea,
    attrs     ext.hstore,
    prices    app.price_range,
    qty       app.positive,
    doubled   bigint GENERATED ALWAYS AS (qty * 2) STORED
);
INSERT INTO app.accounts (region, email, mood, home, balance, ratio, opened, term, secret,
                          attrs, prices, qty)
SELECT CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END,
       'user' || g || '@Example.com',
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::app.mood,
       ROW('Straße ' || g, lpad((g % 99999)::text, 5, '0'))::app.address,
       (g * 1.25)::numeric::money,
       g / 7.0::float8,
       timestamptz '2024-03-01 12:00:00+01' + g * interval '1 hour 3.5 seconds',
       make_interval(days => g % 40, secs => g % 61),
       decode(md5(g::text), 'hex'),
       ext.hstore('k' || g % 5, 'v ' || g),
       app.price_range(g, g + 10),
       1 + g % 9
FROM generate_series(1, {rows}) g;
CREATE INDEX accounts_email_trgm ON app.accounts USING gin ((email::text) ext.gin_trgm_ops);
ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY eu_only ON app.accounts FOR SELECT TO {rd} USING (region = 'eu');
CREATE POLICY audit_all ON app.accounts FOR SELECT TO {a} USING (true);
COMMENT ON TABLE app.accounts IS 'Konten ''eu'' & "us"';
COMMENT ON COLUMN app.accounts.secret IS 'never shown';

CREATE TABLE app.measurements (
    sensor  text NOT NULL,
    at      date NOT NULL,
    value   numeric(10, 3),
    PRIMARY KEY (sensor, at)
) PARTITION BY RANGE (at);
CREATE TABLE app.measurements_2024 PARTITION OF app.measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.measurements_rest PARTITION OF app.measurements DEFAULT;
INSERT INTO app.measurements
SELECT 's-' || (g % 37), date '2023-06-01' + (g / 5), g * 0.125
FROM generate_series(1, {rows}) g;

CREATE TABLE app.events (id int NOT NULL, kind text NOT NULL, payload jsonb,
                         UNIQUE (kind, id)) PARTITION BY LIST (kind);
CREATE TABLE app.events_login PARTITION OF app.events FOR VALUES IN ('login');
CREATE TABLE app.events_other PARTITION OF app.events DEFAULT;
INSERT INTO app.events
SELECT g, (ARRAY['login', 'logout', 'buy'])[1 + g % 3], jsonb_build_object('n', g, 'ü', g % 3)
FROM generate_series(1, {rows // 2}) g;

CREATE TABLE {ODD} ({ODD_COLUMN} text, "n n" integer, tags text[]);
INSERT INTO {ODD} SELECT 'w ' || g || ' ✓', g % 11, ARRAY['a', 'b ' || g]
FROM generate_series(1, {rows}) g;

CREATE TABLE app.audit_log (id bigserial PRIMARY KEY, account bigint, what text,
                            at timestamptz DEFAULT now());
CREATE FUNCTION app.log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.audit_log (account, what) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_audit AFTER UPDATE ON app.accounts
    FOR EACH ROW EXECUTE FUNCTION app.log_change();
CREATE TRIGGER accounts_noop BEFORE INSERT ON app.accounts
    FOR EACH ROW EXECUTE FUNCTION app.log_change();
ALTER TABLE app.accounts DISABLE TRIGGER accounts_noop;
CREATE RULE no_delete AS ON DELETE TO app.audit_log DO INSTEAD NOTHING;
INSERT INTO app.audit_log (account, what, at)
SELECT g, 'seed', timestamptz '2024-01-01' + g * interval '1 minute'
FROM generate_series(1, 50) g;

CREATE FUNCTION app.total(region text) RETURNS money LANGUAGE sql STABLE
    SET search_path = app AS $$ SELECT sum(balance) FROM accounts WHERE accounts.region = $1 $$;
CREATE PROCEDURE app.touch(n int) LANGUAGE sql AS $$ SELECT n $$;
CREATE AGGREGATE app.concat_all(text) (SFUNC = textcat, STYPE = text, INITCOND = '');

CREATE VIEW app.eu_accounts WITH (security_barrier) AS
    SELECT id, email FROM app.accounts WHERE region = 'eu';
CREATE MATERIALIZED VIEW app.balances AS
    SELECT region, count(*) AS n FROM app.accounts GROUP BY region;
CREATE MATERIALIZED VIEW app.not_yet AS SELECT 1 AS one WITH NO DATA;
CREATE UNIQUE INDEX balances_region ON app.balances (region);

CREATE SEQUENCE {TICKETS} START 100 INCREMENT 3 CACHE 5;
SELECT nextval('{TICKETS}') FROM generate_series(1, 4);
CREATE SEQUENCE app.never_used;

CREATE TABLE app.blobs (id int PRIMARY KEY, doc oid);
INSERT INTO app.blobs VALUES
    (1, lo_from_bytea(0, convert_to(repeat('large object ', 2000), 'UTF8'))),
    (2, lo_from_bytea(0, '\\x00ff00ff'::bytea)),
    (3, lo_create(0));

CREATE TABLE app.bigheap (a int, b text);
INSERT INTO app.bigheap SELECT g % 1000, 'row ' || g FROM generate_series(1, {rows}) g;

CREATE STATISTICS app.acc_stats (dependencies) ON region, mood FROM app.accounts;
CREATE TEXT SEARCH CONFIGURATION app.simple_cfg (COPY = pg_catalog.simple);

GRANT USAGE ON SCHEMA app TO {rd}, {a};
GRANT SELECT ON app.accounts TO {rd}, {a};
GRANT SELECT (id, region), UPDATE (mood) ON app.accounts TO {w};
GRANT EXECUTE ON FUNCTION app.total(text) TO {rd};
REVOKE EXECUTE ON FUNCTION app.total(text) FROM PUBLIC;
GRANT USAGE ON TYPE app.mood TO {w};
GRANT SELECT, UPDATE ON SEQUENCE {TICKETS} TO {w} WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO {rd};
RESET ROLE;

CREATE FOREIGN DATA WRAPPER drdt_wrapper;
CREATE SERVER drdt_remote FOREIGN DATA WRAPPER drdt_wrapper OPTIONS (host 'db.example');
CREATE USER MAPPING FOR {m} SERVER drdt_remote OPTIONS (user 'remote', password 'sEcReT');
CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN END $$;
CREATE EVENT TRIGGER drdt_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl();
ALTER EVENT TRIGGER drdt_ddl DISABLE;
"""


def build_estate(db: PgDatabase, roles: EstateRoles, *, rows: int = 3000) -> None:
    """Create the roles (cluster-wide) and the estate's objects in `db`."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for role in roles.all:
            conn.execute(f"CREATE ROLE {q(role)} NOLOGIN")
        conn.execute(f"ALTER DATABASE {q(db.name)} OWNER TO {q(roles.owner)}")
        conn.execute(f"ALTER DATABASE {q(db.name)} CONNECTION LIMIT 20")
        conn.execute(f"COMMENT ON DATABASE {q(db.name)} IS 'Estate ü'")
        conn.execute(f"GRANT CONNECT ON DATABASE {q(db.name)} TO {q(roles.reader)}")
        conn.execute(f"ALTER DATABASE {q(db.name)} SET work_mem = '8MB'")
        conn.execute(
            f"ALTER ROLE {q(roles.reader)} IN DATABASE {q(db.name)} SET statement_timeout = '9s'"
        )
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(_script(roles, rows).encode())
        conn.execute("ANALYZE")


def drop_roles(roles: list[str]) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for role in roles:
            conn.execute(f"DROP ROLE IF EXISTS {q(role)}")


@dataclass(frozen=True)
class Estate:
    db: PgDatabase
    roles: EstateRoles


@pytest.fixture
def estate(pg_database_factory: PgDatabaseFactory) -> Iterator[Estate]:
    """A fresh estate database (3000 rows a table), its roles dropped afterwards (after every
    database of the test: restored copies reference them too)."""
    roles = EstateRoles.unique()
    db = pg_database_factory("drdt_estate")
    try:
        build_estate(db, roles)
        yield Estate(db, roles)
    finally:
        pg_database_factory.cleanup()
        drop_roles(roles.all)
