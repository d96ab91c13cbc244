"""Issue 16 point 1 and issue 15 point 2, against the real PostgreSQL 15: a database shaped like
a real estate (application roles, a database-level ACL, settings and per-role settings, a
setting naming an object of the database, row-level-security policies, user mappings, default
privileges) comes back with all of it:

- restored by the strategy next to the source (the roles exist): the database's ACL, owner,
  comment, connection limit, ALTER DATABASE ... SET and ALTER ROLE ... IN DATABASE ... SET are
  the source's, a role refused on the source is refused on the copy;
- a setting the target cannot apply fails the restore, the target never appears, and the
  message names the setting but not its value;
- `drd restore` into a fresh throwaway server stops before touching it (exit 13) and lists the
  missing roles with what they are for; with --create-roles it creates them NOLOGIN and the
  copy keeps owners, grants, policies and user mappings; the restore test of the same backup
  passes in the default ephemeral scratch server with owners kept.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drd.errors import MissingRoles, RestoreError
from drd.strategies.postgres import PostgresOptions, PostgresStrategy
from drd.verify.scratch.ephemeral_postgres import ephemeral_postgres
from tests.support.drdenv import DrdEnv
from tests.support.pg import (
    ADMIN_DSN,
    PgDatabase,
    PgDatabaseFactory,
    database_exists,
    databases_like,
)

pytestmark = pytest.mark.integration


class Roles:
    """Application roles with names unique to this test (roles are cluster-wide)."""

    def __init__(self) -> None:
        prefix = f"drdt_{secrets.token_hex(3)}"
        self.owner = f"{prefix}_owner"
        self.reader = f"{prefix}_reader"  # LOGIN, granted CONNECT
        self.outsider = f"{prefix}_outsider"  # LOGIN, refused by the database ACL
        self.writer = f"{prefix}_Writer"  # needs quoting; CONNECT, CREATE WITH GRANT OPTION
        self.auditor = f"{prefix}_auditor"  # named by a policy only
        self.mapped = f"{prefix}_mapped"  # named by a user mapping only
        self.login = {self.reader, self.outsider}

    @property
    def all(self) -> list[str]:
        return [self.owner, self.reader, self.outsider, self.writer, self.auditor, self.mapped]


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_source(db: PgDatabase, r: Roles, *, cluster_roles: bool = True) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if cluster_roles:
            for role in r.all:
                login = "LOGIN" if role in r.login else "NOLOGIN"
                conn.execute(f"CREATE ROLE {q(role)} {login}")
        d = q(db.name)
        conn.execute(f"ALTER DATABASE {d} OWNER TO {q(r.owner)}")
        conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {d} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {d} TO {q(r.reader)}")
        conn.execute(f"GRANT CONNECT, CREATE ON DATABASE {d} TO {q(r.writer)} WITH GRANT OPTION")
        conn.execute(f"ALTER DATABASE {d} CONNECTION LIMIT 7")
        conn.execute(f"COMMENT ON DATABASE {d} IS 'Produktion: Zürich ''eu'''")
        conn.execute(f"ALTER ROLE {q(r.reader)} IN DATABASE {d} SET statement_timeout = '5s'")
        conn.execute(f"ALTER ROLE {q(r.reader)} IN DATABASE {d} SET search_path = app, public")
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE SCHEMA app AUTHORIZATION {q(r.owner)};
            CREATE TEXT SEARCH CONFIGURATION app.some_cfg (COPY = pg_catalog.english);
            CREATE TABLE app.accounts (id int PRIMARY KEY, region text NOT NULL, balance int);
            INSERT INTO app.accounts SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g
                FROM generate_series(1, 500) g;
            ALTER TABLE app.accounts OWNER TO {q(r.owner)};
            ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;
            CREATE POLICY eu_only ON app.accounts FOR SELECT TO {q(r.reader)}
                USING (region = 'eu');
            CREATE POLICY audit_all ON app.accounts FOR SELECT TO {q(r.auditor)} USING (true);
            GRANT USAGE ON SCHEMA app TO {q(r.reader)}, {q(r.auditor)};
            GRANT SELECT ON app.accounts TO {q(r.reader)}, {q(r.auditor)};
            GRANT SELECT (id, region), UPDATE (balance) ON app.accounts TO {q(r.writer)};
            ALTER DEFAULT PRIVILEGES FOR ROLE {q(r.owner)} IN SCHEMA app
                GRANT SELECT ON TABLES TO {q(r.reader)};
            CREATE FOREIGN DATA WRAPPER drdt_wrapper;
            CREATE SERVER drdt_remote FOREIGN DATA WRAPPER drdt_wrapper;
            CREATE USER MAPPING FOR {q(r.mapped)} SERVER drdt_remote OPTIONS (user 'remote');
            """
        )
    # A database setting whose value names an object of that database: only valid in it.
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        d = q(db.name)
        conn.execute(f"ALTER DATABASE {d} SET default_text_search_config = 'app.some_cfg'")
        conn.execute(f'ALTER DATABASE {d} SET search_path = app, "$user", public')
        conn.execute(f"ALTER DATABASE {d} SET work_mem = '8MB'")


def drop_roles(roles: list[str], dsn: str = ADMIN_DSN) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in roles:
            conn.execute(f"DROP ROLE IF EXISTS {q(role)}")


def database_properties(admin_dsn: str, name: str) -> dict[str, Any]:
    """The database's own properties as comparable data (role names, not OIDs)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT datacl::text[], datconnlimit, pg_get_userbyid(datdba), "
            "shobj_description(oid, 'pg_database'), datistemplate "
            "FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        assert row is not None, name
        settings = conn.execute(
            "SELECT coalesce(r.rolname, '(database)'), s.setconfig "
            "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
            "LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s ORDER BY 1",
            (name,),
        ).fetchall()
    acl, limit, owner, comment, template = row
    return {
        "acl": sorted(acl or []),
        "connection_limit": limit,
        "owner": owner,
        "comment": comment,
        "template": template,
        "settings": {role: sorted(config) for role, config in settings},
    }


def object_properties(dsn: str) -> dict[str, Any]:
    """Owners, grants, policies, user mappings and default privileges of the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def rows(query: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(query).fetchall()]

        return {
            "relations": rows(
                "SELECT c.relname, pg_get_userbyid(c.relowner), c.relacl::text, "
                "c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'app' ORDER BY 1"
            ),
            "columns": rows(
                "SELECT attname, attacl::text FROM pg_attribute "
                "WHERE attrelid = 'app.accounts'::regclass AND attacl IS NOT NULL ORDER BY 1"
            ),
            "schema": rows(
                "SELECT pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace "
                "WHERE nspname = 'app'"
            ),
            "policies": rows(
                "SELECT policyname, roles::text, cmd, qual FROM pg_policies ORDER BY 1"
            ),
            "user_mappings": rows(
                "SELECT srvname, usename, umoptions::text FROM pg_user_mappings ORDER BY 1, 2"
            ),
            "default_acl": rows(
                "SELECT pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text, "
                "defaclobjtype, defaclacl::text FROM pg_default_acl ORDER BY 1"
            ),
        }


def connect_as(dsn: str, role: str) -> psycopg.Connection[Any]:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = role
    return psycopg.connect(psycopg.conninfo.make_conninfo("", **params), autocommit=True)


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture
def roles(pg_database_factory: PgDatabaseFactory) -> Iterator[Roles]:
    r = Roles()
    try:
        yield r
    finally:
        pg_database_factory.cleanup()  # the databases first: they depend on the roles
        drop_roles(r.all)


# --------------------------------------------------------------------------------------------

#: every test here runs for the default format and the parallel one
FORMATS = pytest.mark.parametrize(
    "fmt", [{}, {"format": "parallel", "jobs": 2}], ids=["custom", "parallel"]
)


@FORMATS
async def test_database_acl_owner_comment_limit_and_settings_come_back(
    fmt: dict[str, Any], pg_database_factory: PgDatabaseFactory, roles: Roles
) -> None:
    source = pg_database_factory("drdt_fid")
    target = pg_database_factory.reserve("drdt_fid")
    try:
        build_source(source, roles)
        strategy = PostgresStrategy(
            PostgresOptions(name="db", kind="postgres", dsn=source.dsn, **fmt)
        )
        chunks = [c async for c in strategy.dump()]
        meta = strategy.restore_metadata()
        uses = meta["role_uses"]
        assert uses[roles.owner] == ["database owner", "default privileges", "owner"]
        assert uses[roles.reader] == [
            "database privileges",
            "default privileges",
            "per-database settings",
            "policy",
            "privileges",
        ]
        assert uses[roles.auditor] == ["policy", "privileges"]
        assert uses[roles.mapped] == ["user mapping"]
        assert "privileges" in uses[roles.writer] and "database privileges" in uses[roles.writer]
        assert roles.outsider not in uses

        outcome = await PostgresStrategy.restore(replay(chunks), target.dsn, meta)
        assert outcome.details["owners"] == "kept" and outcome.details["skipped"] == []
        applied = outcome.details["database_properties"]
        assert "ALTER DATABASE SET default_text_search_config" in applied
        assert f"ALTER ROLE {roles.reader} IN DATABASE SET statement_timeout" in applied
        assert "ALTER DATABASE CONNECTION LIMIT" in applied

        want = database_properties(ADMIN_DSN, source.name)
        assert want["connection_limit"] == 7 and want["owner"] == roles.owner
        assert database_properties(ADMIN_DSN, target.name) == want
        assert object_properties(target.dsn) == object_properties(source.dsn)
        assert databases_like(target.name + "\\_drd\\_restoring\\_%") == []

        # The copy behaves like the source: the database's settings apply to new sessions
        # (the one naming app.some_cfg included), the per-role ones to that role, and the
        # ACL refuses whom the source refused.
        with psycopg.connect(target.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('default_text_search_config'), "
                "current_setting('work_mem'), to_tsvector('running')::text"
            ).fetchone()
            assert row == ("app.some_cfg", "8MB", "'run':1")
        with connect_as(target.dsn, roles.reader) as conn:
            row = conn.execute(
                "SELECT current_setting('statement_timeout'), count(*) FROM accounts"
            ).fetchone()
            assert row == ("5s", 250)  # search_path app, and the eu_only policy
        for dsn in (source.dsn, target.dsn):
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                connect_as(dsn, roles.outsider).close()
    finally:
        pg_database_factory.cleanup()


@FORMATS
async def test_a_setting_the_target_cannot_apply_fails_the_restore(
    fmt: dict[str, Any],
    pg_database_factory: PgDatabaseFactory,
) -> None:
    """Restoring as a role that may create databases but is no superuser: a superuser-only
    database setting cannot be applied. The restore fails, naming the setting (not its value),
    and neither the target nor the staging database is left."""
    restorer = f"drdt_{secrets.token_hex(3)}_restorer"
    source = pg_database_factory("drdt_fid")
    target = pg_database_factory.reserve("drdt_fid")
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {q(restorer)} LOGIN CREATEDB")
            conn.execute(f"ALTER DATABASE {q(source.name)} SET log_min_duration_statement = 4321")
            conn.execute(f"ALTER DATABASE {q(source.name)} SET work_mem = '8MB'")
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g")
        strategy = PostgresStrategy(
            PostgresOptions(name="db", kind="postgres", dsn=source.dsn, **fmt)
        )
        chunks = [c async for c in strategy.dump()]
        as_restorer = psycopg.conninfo.make_conninfo(target.dsn, user=restorer)
        with pytest.raises(RestoreError) as failed:
            await PostgresStrategy.restore(
                replay(chunks), as_restorer, strategy.restore_metadata(), owners="drop"
            )
        message = str(failed.value)
        assert "could not be applied" in message
        assert "ALTER DATABASE SET log_min_duration_statement: permission denied" in message
        assert "4321" not in message and "work_mem" not in message  # only what failed
        assert failed.value.exit_code == 7
        assert not database_exists(target.name)
        assert databases_like(target.name + "\\_drd\\_restoring\\_%") == []
    finally:
        pg_database_factory.cleanup()
        drop_roles([restorer])


# --------------------------------------------------------------------------------------------


def _roles_on(dsn: str, names: list[str]) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
            "rolbypassrls, rolinherit FROM pg_roles WHERE rolname = ANY(%s)",
            (names,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def _databases_on(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]


@contextlib.contextmanager
def _sweep(env: DrdEnv) -> Iterator[None]:
    try:
        yield
    finally:
        import asyncio

        from drd.verify.scratch.registry import sweep_leftovers

        asyncio.run(sweep_leftovers(env.root / "state", []))


@FORMATS
def test_restore_into_a_fresh_server_checks_roles_first_and_creates_them_on_request(
    fmt: dict[str, Any], tmp_path: Path, pg_database_factory: PgDatabaseFactory, roles: Roles
) -> None:
    import asyncio

    source = pg_database_factory("drdt_fid")
    build_source(source, roles)
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("estate", [{"name": "db", "kind": "postgres", "dsn": source.dsn, **fmt}])
    env.write()
    env.ok("backup", "estate")
    restored = "estate_restored"

    async def in_a_fresh_server() -> None:
        async with ephemeral_postgres(tmp_path / "throwaway-state", major=15) as server:
            admin = server.dsn("postgres")
            before = (_databases_on(admin), _roles_on(admin, roles.all))
            assert before[1] == {}

            refused = env.run("restore", "estate/db", "--to", server.dsn(restored))
            assert refused.returncode == 13, refused.stderr
            for role, what in (
                (roles.owner, "database owner, default privileges, owner"),
                (roles.mapped, "user mapping"),
                (roles.auditor, "policy, privileges"),
            ):
                assert f"{role} ({what})" in refused.stderr, refused.stderr
            assert "nothing was changed" in refused.stderr and "--create-roles" in refused.stderr
            assert server.password not in refused.stderr
            # Nothing was touched: no database, no role, no staging leftover.
            assert (_databases_on(admin), _roles_on(admin, roles.all)) == before

            done = env.run("restore", "estate/db", "--to", server.dsn(restored), "--create-roles")
            assert done.returncode == 0, done.stderr
            assert "created roles (NOLOGIN)" in done.stderr
            created = _roles_on(admin, roles.all)
            assert sorted(created) == sorted(set(roles.all) - {roles.outsider})
            # NOLOGIN, and no attribute beyond a plain CREATE ROLE's (INHERIT is its default)
            assert set(created.values()) == {(False, False, False, False, False, False, True)}
            copy = server.dsn(restored)
            assert object_properties(copy) == object_properties(source.dsn)
            want = database_properties(ADMIN_DSN, source.name)
            assert database_properties(admin, restored) == want
            assert _databases_on(admin) == sorted([*before[0], restored])

    asyncio.run(in_a_fresh_server())

    # The restore test of the same backup, in the default scratch environment (an ephemeral
    # server drd starts): roles created there, owners and privileges kept, every check passes.
    with _sweep(env):
        proc = env.ok("restore-test", "estate", "--json", timeout=300)
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    assert report["scratch"]["kind"] == "ephemeral-postgres"
    assert report["restore"]["owners"] == "kept"
    assert sorted(report["restore"]["created_roles"]) == sorted(set(roles.all) - {roles.outsider})
    assert (
        "ALTER DATABASE SET default_text_search_config"
        in (report["restore"]["database_properties"])
    )


@FORMATS
async def test_owners_dropped_still_needs_policy_and_mapping_roles(
    fmt: dict[str, Any], pg_database_factory: PgDatabaseFactory, roles: Roles
) -> None:
    """`owners="drop"` (the postgres-server scratch) leaves owners, grants, the database ACL
    and per-role settings out, says so, and still checks the roles policies and user mappings
    name (pg_restore cannot leave those out) before touching anything."""
    source = pg_database_factory("drdt_fid")
    build_source(source, roles)
    target = pg_database_factory.reserve("drdt_fid")
    strategy = PostgresStrategy(PostgresOptions(name="db", kind="postgres", dsn=source.dsn, **fmt))
    chunks = [c async for c in strategy.dump()]
    meta = strategy.restore_metadata()
    gone = {**meta["role_uses"], "drdt_nobody_policy": ["policy"], "drdt_nobody": ["owner"]}
    with pytest.raises(MissingRoles) as refused:
        await PostgresStrategy.restore(
            replay(chunks), target.dsn, {**meta, "role_uses": gone}, owners="drop"
        )
    assert refused.value.roles == {"drdt_nobody_policy": ["policy"]}
    assert not database_exists(target.name)

    outcome = await PostgresStrategy.restore(replay(chunks), target.dsn, meta, owners="drop")
    skipped = outcome.details["skipped"]
    assert f"ALTER DATABASE OWNER TO {roles.owner}" in skipped
    assert f"ALTER ROLE {roles.reader} IN DATABASE SET statement_timeout" in skipped
    assert any(s.startswith("REVOKE CONNECT,TEMPORARY ON DATABASE") for s in skipped)
    props = database_properties(ADMIN_DSN, target.name)
    assert props["acl"] == [] and props["owner"] == "postgres"
    assert props["connection_limit"] == 7  # not about roles: applied
    assert list(props["settings"]) == ["(database)"]
