"""PostgreSQL: one database through pg_dump's custom format, restored with pg_restore.

Dump: `pg_dump --format=custom --compress=0` (the pipeline compresses with zstd itself) streamed
from its stdout. pg_dump uses one snapshot for the whole dump, so the image is consistent; no
option that would break that (parallel jobs need a directory archive) is used. The snapshot is
exported by a read-only transaction drd holds open (`--snapshot`), in which the statistics for
restore tests (row counts, schema fingerprint, captured query results) are taken meanwhile, so
they describe exactly the dumped data (drd.strategies.postgres_stats). Connection
details travel in the child's environment (PGHOST, PGPASSWORD, ...), never in argv where `ps`
would show them; argv carries only the database name and those libpq keywords that have no
environment variable (keepalives, ...), none of them secret. The exit status is checked after
the stream ended: a failed pg_dump raises SourceError instead of ending the stream.

Restore: into a staging database `<target>_drd_restoring_<random8>` created from template0 with
the source's encoding and locale, fed to `pg_restore --exit-on-error --single-transaction` from
stdin, then renamed to the target only once pg_restore succeeded and the chunk stream ended
cleanly. Any failure (a tool error, an IntegrityError from the stream, cancellation) kills
pg_restore and drops the staging database WITH (FORCE); the target never exists half-restored.

Roles, ownership and privileges (`owners=`, `create_roles=`). Roles are cluster objects: a
dump of one database names them (object owners, GRANT grantees, row-level-security policies,
user mappings, default privileges, the database's owner and ACL, `ALTER ROLE ... IN DATABASE`
settings) but does not contain them. The dump records every role it references, with what for,
in the metadata (`roles`, `role_uses`, read from pg_shdepend and pg_db_role_setting right after
the dump). Before anything is created on the target, restore() checks that those roles
exist there; the ones that do not are either created (`create_roles=True`, `drd restore
--create-roles`: `CREATE ROLE ... NOLOGIN`, no other attribute, no privilege beyond what the dump
grants) or the restore stops with MissingRoles, listing them.
- "keep" (default): owners and privileges as dumped, the database's owner and ACL included.
- "drop": `--no-owner --no-privileges`: everything belongs to the restoring user, no GRANTs, and
  the database's owner, ACL and per-role settings are not applied (they are listed in
  `details["skipped"]`). Policies and user mappings still name their roles (pg_restore cannot
  leave them out), so those roles must exist even then.

Restore speed (`toast_compression=`): a restore's time is the server's single backend loading
the data, and for wide text a large part of that is compressing TOAST values again (pglz). By
default ("lz4") pg_restore's session runs with `default_toast_compression=lz4` when the target
server offers it (PostgreSQL 14 and newer built with lz4, as Debian's and PGDG's packages are):
pg_restore of the 1 GB bench dump took 7.1-7.4 s instead of 9.9-10.2 s. Values read back the
same; only their on-disk compression differs from a pglz source. Columns with an explicit
`SET COMPRESSION` keep theirs (pg_dump restores it), and a `default_toast_compression` in the
DSN's `options` wins. "server" leaves the server's default alone. `details["toast_compression"]`
says which applied.

Database-level properties: pg_dump writes what `--create` restores about the database (its
owner, comment, security labels, ACL, connection limit, template flag, `ALTER DATABASE ... SET`
and `ALTER ROLE ... IN DATABASE ... SET`) into the archive's TOC, which pg_restore without
`--create` skips. drd reads those entries from the stream it feeds pg_restore
(drd.strategies.postgres_toc) and, once pg_restore succeeded, runs pg_dump's own statements in a
session connected to the staging database (as `--create` output runs them connected to the new
database, so a value naming an object of that database, e.g. `default_text_search_config =
app.cfg`, is accepted), the database's name changed to the staging one. They run after the data
is in, in one session opened before them, so a setting such as `default_transaction_read_only`
cannot get in the way of the load or of the statements after it. If any of them fails, the
restore fails (RestoreError naming each failed statement by what it sets, never by its value)
and the staging database is dropped: a restore that exits 0 has every property the dump had.
What pg_dump itself does not carry is listed in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from drd.errors import MissingRoles, RestoreError, SourceError, TargetExists
from drd.secret_source import child_environment
from drd.strategies._subprocess import CountingStream, ToolError, feed_stdin, redact, stream_stdout
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.postgres_toc import (
    DatabaseEntries,
    TocError,
    TocWatcher,
    describe,
    quote_ident,
    retarget,
    split_statements,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "pg_dump-custom"
MAINTENANCE_DB = "postgres"
STAGING_INFIX = "_drd_restoring_"
_MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1

# libpq connection keywords and the environment variable each one can be passed in.
_ENV_FOR_KEYWORD = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "client_encoding": "PGCLIENTENCODING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcertmode": "PGSSLCERTMODE",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "krbsrvname": "PGKRBSRVNAME",
    "channel_binding": "PGCHANNELBINDING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
# Secret keywords without an environment variable: refused rather than put in argv.
_SECRET_KEYWORDS = frozenset({"sslpassword"})

Owners = Literal["keep", "drop"]
ToastCompression = Literal["lz4", "server"]
_TOAST_SETTING = "default_toast_compression"


class PostgresOptions(SourceOptions):
    kind: Literal["postgres"] = "postgres"
    #: libpq connection string (URL or key=value) naming the database to dump
    dsn: str = Field(repr=False)
    #: directory holding pg_dump; default: the newest pg_dump found on this machine
    pg_bin_dir: str | None = None
    #: pg_dump --exclude-table patterns
    exclude_tables: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class _Conn:
    """A parsed DSN, split into what goes into the child's environment and argv."""

    params: dict[str, str]

    @classmethod
    def parse(cls, dsn: str) -> _Conn:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(dsn)
        except Exception:
            # libpq quotes the offending part of the string, which may be the password.
            raise ValueError("not a valid libpq connection string") from None
        return cls({k: str(v) for k, v in params.items() if v is not None})

    @property
    def dbname(self) -> str | None:
        return self.params.get("dbname")

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def env(self) -> dict[str, str]:
        return child_environment(
            {_ENV_FOR_KEYWORD[k]: v for k, v in self.params.items() if k in _ENV_FOR_KEYWORD}
        )

    def dbname_arg(self, dbname: str | None = None) -> list[str]:
        """`--dbname=<conninfo>` with the database name and the keywords without env var."""
        from psycopg.conninfo import make_conninfo

        secret = _SECRET_KEYWORDS.intersection(self.params)
        if secret:
            raise ValueError(f"{', '.join(sorted(secret))} in the DSN is not supported")
        rest = {k: v for k, v in self.params.items() if k not in _ENV_FOR_KEYWORD}
        if dbname is not None:
            rest["dbname"] = dbname
        return [f"--dbname={make_conninfo('', **rest)}"] if rest else []

    def with_dbname(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **{**self.params, "dbname": dbname})

    def describe(self) -> str:
        """The DSN without its password, for messages and reports."""
        from psycopg.conninfo import make_conninfo

        shown = {k: v for k, v in self.params.items() if k not in {"password", "sslpassword"}}
        return make_conninfo("", **shown)


# ---------------------------------------------------------------------------------------------
# Finding pg_dump / pg_restore


@dataclass(frozen=True)
class _Tool:
    path: str
    version: str
    version_tuple: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version_tuple[0]


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


def parse_version(text: str) -> tuple[str, tuple[int, ...]] | None:
    """('15.20', (15, 20)) from `pg_dump --version` output."""
    m = _VERSION_RE.search(text)
    if m is None:
        return None
    return m.group(1), tuple(int(p) for p in m.group(1).split("."))


async def _probe(path: str) -> _Tool | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    out, _ = await proc.communicate()
    parsed = parse_version(out.decode("utf-8", "replace"))
    if proc.returncode != 0 or parsed is None:
        return None
    return _Tool(path, parsed[0], parsed[1])


_PG_WRAPPER = "pg_wrapper"


def _candidates(name: str, bin_dir: str | None) -> list[str]:
    if bin_dir is not None:
        candidates = [os.path.join(bin_dir, name)]
    else:
        candidates = [
            *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")),
            *sorted(glob.glob(f"/usr/pgsql-*/bin/{name}")),
            f"/usr/local/pgsql/bin/{name}",
        ]
        on_path = shutil.which(name)
        if on_path is not None:
            candidates.append(on_path)
    seen: set[str] = set()
    unique: list[str] = []
    for c in candidates:
        real = os.path.realpath(c)
        if os.access(c, os.X_OK) and real not in seen:
            seen.add(real)
            unique.append(c)
    # Debian's /usr/bin/pg_* is pg_wrapper, a Perl script that runs one of the
    # /usr/lib/postgresql/*/bin binaries listed above anyway: probing it costs a Perl start
    # (~0.1-0.5 s, on every backup and restore) and finds nothing new.
    direct = [c for c in unique if os.path.basename(os.path.realpath(c)) != _PG_WRAPPER]
    return direct or unique


async def find_tool(name: str, bin_dir: str | None = None) -> _Tool | None:
    """The newest `name` (pg_dump, pg_restore) on this machine, or the one in `bin_dir`."""
    unique = _candidates(name, bin_dir)
    tools = [t for t in await asyncio.gather(*(_probe(c) for c in unique)) if t is not None]
    if not tools:
        return None
    # The newest; on a tie the earlier candidate (the versioned directory) wins.
    return max(tools, key=lambda t: t.version_tuple)


# ---------------------------------------------------------------------------------------------
# Facts about the source, recorded at dump time

_FACTS_SQL = """
SELECT current_database(),
       current_setting('server_version'),
       current_setting('server_version_num')::int,
       pg_encoding_to_char(d.encoding),
       d.datcollate,
       d.datctype,
       pg_get_userbyid(d.datdba),
       shobj_description(d.oid, 'pg_database')
FROM pg_database d
WHERE d.datname = current_database()
"""

# Every role the dump refers to, with what for: owners, ACL grantees and policy roles of this
# database's objects (pg_shdepend rows of this database), user mappings and default privileges
# (by their catalog), the database's own owner and ACL (shared pg_shdepend rows of its
# pg_database entry), per-role settings in this database, and the bootstrap superuser (pinned:
# it owns objects without pg_shdepend rows).
_ROLES_SQL = """
WITH db AS (SELECT oid, datdba FROM pg_catalog.pg_database WHERE datname = current_database()),
uses AS (
    SELECT d.refobjid AS role,
           CASE
               WHEN d.classid = 'pg_catalog.pg_database'::regclass AND d.deptype = 'o'
                   THEN 'database owner'
               WHEN d.classid = 'pg_catalog.pg_database'::regclass THEN 'database privileges'
               WHEN d.classid = 'pg_catalog.pg_user_mapping'::regclass THEN 'user mapping'
               WHEN d.classid = 'pg_catalog.pg_default_acl'::regclass THEN 'default privileges'
               WHEN d.deptype = 'r' THEN 'policy'
               WHEN d.deptype = 'o' THEN 'owner'
               ELSE 'privileges'
           END AS use
    FROM pg_catalog.pg_shdepend d, db
    WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass
      AND (d.dbid = db.oid
           OR (d.dbid = 0 AND d.classid = 'pg_catalog.pg_database'::regclass
               AND d.objid = db.oid))
    UNION SELECT datdba, 'database owner' FROM db
    UNION SELECT s.setrole, 'per-database settings'
          FROM pg_catalog.pg_db_role_setting s, db
          WHERE s.setdatabase = db.oid AND s.setrole <> 0
    UNION SELECT 10, 'bootstrap superuser'
)
SELECT r.rolname, array_agg(DISTINCT u.use ORDER BY u.use)
FROM uses u JOIN pg_catalog.pg_roles r ON r.oid = u.role
GROUP BY r.rolname
ORDER BY 1
"""
#: the uses of a role that pg_restore needs it for even with --no-owner --no-privileges
_UNDROPPABLE_USES = frozenset({"policy", "user mapping"})

_SETTINGS_SQL = """
SELECT unnest(s.setconfig)
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database() AND s.setrole = 0
"""


async def _source_facts(dsn: str) -> dict[str, Any]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(_FACTS_SQL)
        row = await cur.fetchone()
        assert row is not None
        dbname, version, version_num, encoding, collate, ctype, owner, comment = row
        locale: dict[str, Any] = {"encoding": encoding, "lc_collate": collate, "lc_ctype": ctype}
        if version_num >= 150000:
            column = "datlocale" if version_num >= 170000 else "daticulocale"
            cur = await conn.execute(
                f"SELECT datlocprovider::text, {column} FROM pg_database "
                "WHERE datname = current_database()"
            )
            loc = await cur.fetchone()
            assert loc is not None
            locale["locale_provider"] = {"c": "libc", "i": "icu", "b": "builtin"}.get(
                loc[0], loc[0]
            )
            locale["icu_locale"] = loc[1]
        cur = await conn.execute(_ROLES_SQL)
        role_uses = {str(name): [str(u) for u in uses] for name, uses in await cur.fetchall()}
        cur = await conn.execute(_SETTINGS_SQL)
        settings = [r[0] for r in await cur.fetchall()]
    return {
        "database": dbname,
        "server_version": version,
        "server_version_num": version_num,
        **locale,
        "database_owner": owner,
        "database_comment": comment,
        "database_settings": settings,
        "roles": sorted(role_uses),
        "role_uses": role_uses,
    }


class _Snapshot:
    """A REPEATABLE READ READ ONLY transaction whose exported snapshot pg_dump imports, and in
    which the restore-test statistics are taken while pg_dump runs. Held open until the dump
    ended (pg_dump needs it only to start, the statistics until they are done)."""

    def __init__(self, db: Any, snapshot_id: str) -> None:
        self._db = db
        self.id = snapshot_id
        self._task: asyncio.Task[dict[str, Any]] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str, where: str, password: str | None) -> AsyncIterator[_Snapshot]:
        import psycopg

        try:
            db = await psycopg.AsyncConnection.connect(dsn)
        except psycopg.Error as exc:
            raise SourceError(
                f"{where}: pg_dump failed: cannot connect: {redact(str(exc), [password])}"
            ) from None
        snapshot: _Snapshot | None = None
        try:
            try:
                await db.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await db.set_read_only(True)
                cur = await db.execute("SELECT pg_catalog.pg_export_snapshot()")
                row = await cur.fetchone()
                assert row is not None
                # The statistics may finish long before pg_dump: stay open while idle.
                await db.execute("SET idle_in_transaction_session_timeout = 0")
            except psycopg.Error as exc:
                raise SourceError(
                    f"{where}: cannot export a snapshot for pg_dump: {redact(str(exc), [password])}"
                ) from None
            snapshot = cls(db, str(row[0]))
            yield snapshot
        finally:
            if snapshot is not None:
                await snapshot._stop()
            await db.close()

    def start_statistics(self, queries: Mapping[str, str]) -> None:
        from drd.strategies import postgres_stats

        self._task = asyncio.ensure_future(postgres_stats.collect(self._db, dict(queries)))

    async def statistics(self) -> dict[str, Any]:
        """The statistics, or {"error": ...} if the session failed (never fails the dump)."""
        from drd.strategies.statistics import error_text

        if self._task is None:
            return {"error": "not taken"}
        try:
            return await self._task
        except Exception as exc:
            return {"error": error_text(exc)}

    async def _stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


# ---------------------------------------------------------------------------------------------


def staging_name(target: str) -> str:
    """`<target>_drd_restoring_<random8>`, the target part cut so the whole fits 63 bytes."""
    room = _MAX_IDENT_BYTES - len(STAGING_INFIX) - 8
    prefix = target.encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}{STAGING_INFIX}{secrets.token_hex(4)}"


class PostgresStrategy(Strategy[PostgresOptions]):
    kind: ClassVar[str] = "postgres"
    Options: ClassVar[type[SourceOptions]] = PostgresOptions
    # Restore tests: into a server of the backup's major version (or a database on a scratch
    # server), checked by row counts, schema fingerprint and SQL.
    scratch_kinds: ClassVar[tuple[str, ...]] = ("ephemeral-postgres", "postgres-server")
    default_scratch: ClassVar[str | None] = "ephemeral-postgres"
    check_kinds: ClassVar[tuple[str, ...]] = ("sql", "freshness", "command")
    restored_as: ClassVar[str | None] = "postgres"

    # -- dump -----------------------------------------------------------------------------

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        opts = self.opts
        where = f"source {opts.name!r}"
        try:
            conn = _Conn.parse(opts.dsn)
            dbname_arg = conn.dbname_arg()
        except ValueError as exc:
            raise SourceError(f"{where}: dsn: {exc}") from None
        tool = await find_tool("pg_dump", opts.pg_bin_dir)
        if tool is None:
            place = opts.pg_bin_dir or "/usr/lib/postgresql/*/bin or PATH"
            raise SourceError(f"{where}: no working pg_dump found in {place}")
        argv = [
            tool.path,
            "--format=custom",
            "--compress=0",
            "--no-password",
            *(f"--exclude-table={t}" for t in opts.exclude_tables),
            *dbname_arg,
        ]
        size = 0
        # pg_dump imports the snapshot of a transaction held open here, in which the restore-test
        # statistics are taken meanwhile: both see the same data (drd.strategies.postgres_stats).
        async with _Snapshot.open(opts.dsn, where, conn.password) as snapshot:
            argv.insert(1, f"--snapshot={snapshot.id}")
            snapshot.start_statistics(self.capture_queries)
            try:
                async with contextlib.aclosing(
                    stream_stdout(argv, conn.env(), chunk_size=CHUNK_SIZE)
                ) as stream:
                    async for chunk in stream:
                        size += len(chunk)
                        yield chunk
            except ToolError as exc:
                raise SourceError(
                    f"{where}: pg_dump failed: {redact(str(exc), [conn.password])}"
                ) from None
            statistics = await snapshot.statistics()
        try:
            facts = await _source_facts(opts.dsn)
        except Exception as exc:
            raise SourceError(
                f"{where}: cannot read the server facts after pg_dump: "
                f"{redact(str(exc), [conn.password])}"
            ) from None
        self._metadata = {
            "format": FORMAT,
            "pg_dump_version": tool.version,
            **facts,
            "exclude_tables": list(opts.exclude_tables),
            "dump_bytes": size,
            "statistics": statistics,
        }

    # -- restore --------------------------------------------------------------------------

    @classmethod
    async def restore(
        cls,
        chunks: AsyncIterator[bytes],
        target: str,
        metadata: Mapping[str, Any],
        *,
        owners: Owners = "keep",
        create_roles: bool = False,
        pg_bin_dir: str | None = None,
        toast_compression: ToastCompression = "lz4",
    ) -> RestoreOutcome:
        """Restore into the database `target` (a DSN) names, which must not exist yet.

        `owners` chooses how ownership and privileges are restored and `create_roles` what
        happens to roles the backup refers to that the target server lacks (module docstring);
        `pg_bin_dir` forces a pg_restore, by default the newest one on this machine is used;
        `toast_compression` (module docstring) trades a pglz-identical layout for speed.
        """
        import psycopg

        try:
            conn = _Conn.parse(target)
            dbname = conn.dbname
            if not dbname:
                raise ValueError("it must name the database to create (dbname)")
            if len(dbname.encode()) > _MAX_IDENT_BYTES:
                raise ValueError(f"database name longer than {_MAX_IDENT_BYTES} bytes")
            staging = staging_name(dbname)
            dbname_arg = conn.dbname_arg(staging)
        except ValueError as exc:
            raise RestoreError(f"restore target DSN: {exc}") from None
        shown = conn.describe()
        where = f"restore into database {dbname!r} ({shown})"
        secret = [conn.password]

        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"{where}: unsupported dump format {fmt!r}")
        tool = await find_tool("pg_restore", pg_bin_dir)
        if tool is None:
            raise RestoreError(f"{where}: no working pg_restore found")
        parsed = parse_version(f"(PostgreSQL) {metadata.get('pg_dump_version', '0')}")
        dump_major = parsed[1][0] if parsed else 0
        if tool.major < dump_major:
            raise RestoreError(
                f"{where}: the dump was written by pg_dump {metadata.get('pg_dump_version')}; "
                f"{tool.path} is {tool.version}: pg_restore {dump_major} or newer is needed"
            )

        keep_owners = owners == "keep"
        maintenance = conn.with_dbname(MAINTENANCE_DB)
        staging_created = False
        counted = CountingStream(chunks)
        watched = TocWatcher(counted)
        created: list[str] = []
        try:
            async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as db:
                if await _database_exists(db, dbname):
                    raise TargetExists(f"{where}: the database already exists")
                needed = needed_roles(metadata, keep_owners=keep_owners)
                missing = await _missing_roles(db, list(needed))
                if missing and not create_roles:
                    raise MissingRoles(
                        f"{where}: {_roles_text(missing, needed)} "
                        f"{'does' if len(missing) == 1 else 'do'} not exist on the target "
                        "server; nothing was changed. Create them there first, or restore with "
                        "--create-roles (drd then creates them NOLOGIN, without privileges "
                        "beyond what the backup grants)",
                        {r: needed[r] for r in missing},
                    )
                if missing:
                    created = await _create_roles(db, missing, where)
                staging_created = True
                locale_note = await _create_staging(db, staging, metadata)
                env, toast = await _restore_session(db, conn, toast_compression)

            argv = [
                tool.path,
                "--format=custom",
                "--exit-on-error",
                "--single-transaction",
                "--no-password",
                *([] if keep_owners else ["--no-owner", "--no-privileges"]),
                *dbname_arg,
            ]
            warnings = await feed_stdin(argv, env, watched)
            if warnings:
                log.info("%s: pg_restore said: %s", where, redact(warnings, secret))
            entries = watched.scanner.finish()
            tables, applied, skipped = await _finish_staging(
                conn, staging, entries, keep_owners=keep_owners, where=where, secret=secret
            )
            await _promote(maintenance, staging, dbname, where)
        except BaseException as exc:
            if staging_created:
                drop = asyncio.ensure_future(_drop_database(maintenance, staging))
                try:
                    await asyncio.shield(drop)
                except Exception as drop_exc:
                    log.error(
                        "%s: could not drop the staging database %r: %s",
                        where,
                        staging,
                        redact(str(drop_exc), secret),
                    )
            if created:
                log.warning(
                    "%s: the restore failed; the roles it created stay: %s",
                    where,
                    ", ".join(created),
                )
            if isinstance(exc, TocError):
                raise RestoreError(
                    f"{where}: cannot read the archive's table of contents, where pg_dump keeps "
                    f"the database's own properties (ACL, settings, owner): {exc}"
                ) from None
            if isinstance(exc, ToolError | psycopg.Error):
                raise RestoreError(f"{where}: {redact(str(exc), secret)}") from None
            raise
        return RestoreOutcome(
            target=shown,
            details={
                "database": dbname,
                "tables": tables,
                "bytes": counted.bytes,
                "owners": "kept" if keep_owners else "dropped",
                "missing_roles": missing,
                "created_roles": created,
                "database_properties": applied,
                "skipped": skipped,
                "pg_restore_version": tool.version,
                "locale": locale_note,
                "toast_compression": toast,
            },
        )


def needed_roles(metadata: Mapping[str, Any], *, keep_owners: bool) -> dict[str, list[str]]:
    """The roles a restore of this backup needs on the target, with what for. With owners and
    privileges dropped only policy and user-mapping roles are needed; a backup of an older drd
    (no `role_uses`) needs all its `roles` when they are kept, none otherwise."""
    uses = metadata.get("role_uses")
    if isinstance(uses, Mapping):
        return {
            str(role): [str(u) for u in used]
            for role, used in uses.items()
            if keep_owners or _UNDROPPABLE_USES.intersection(used)
        }
    if not keep_owners:
        return {}
    return {str(role): [] for role in metadata.get("roles") or []}


def _roles_text(missing: list[str], needed: Mapping[str, list[str]]) -> str:
    def one(role: str) -> str:
        uses = needed.get(role) or []
        return f"{role} ({', '.join(uses)})" if uses else role

    noun = "role" if len(missing) == 1 else "roles"
    return f"{noun} {', '.join(one(r) for r in missing)}"


async def _create_roles(db: Any, roles: list[str], where: str) -> list[str]:
    """CREATE ROLE ... NOLOGIN for each, in one transaction (all or none)."""
    import psycopg
    from psycopg import sql

    reserved = [r for r in roles if r.startswith("pg_")]
    if reserved:
        raise RestoreError(
            f"{where}: roles {', '.join(reserved)} do not exist on the target server and cannot "
            "be created (pg_ names are reserved for the server's predefined roles: restore into "
            "a server of the backup's major version or newer)"
        )
    try:
        async with db.transaction():
            for role in roles:
                await db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        raise RestoreError(f"{where}: cannot create the missing roles: {exc}") from None
    log.warning("%s: created the missing roles (NOLOGIN): %s", where, ", ".join(roles))
    return list(roles)


async def _restore_session(
    db: Any, conn: _Conn, toast_compression: ToastCompression
) -> tuple[dict[str, str], str]:
    """pg_restore's environment, and the TOAST compression its session will use."""
    env = conn.env()
    options = env.get("PGOPTIONS", "")
    if toast_compression == "server":
        return env, "server default"
    if _TOAST_SETTING in options:
        return env, "as the connection options set"
    cur = await db.execute("SELECT enumvals FROM pg_settings WHERE name = %s", (_TOAST_SETTING,))
    row = await cur.fetchone()
    if row is None or "lz4" not in (row[0] or []):
        # PostgreSQL < 14 has only pglz; a server built without lz4 does not list it.
        return env, "server default (lz4 not available)"
    env["PGOPTIONS"] = f"{options} -c {_TOAST_SETTING}=lz4".strip()
    return env, "lz4"


async def _database_exists(db: Any, name: str) -> bool:
    cur = await db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


async def _missing_roles(db: Any, roles: list[str]) -> list[str]:
    if not roles:
        return []
    cur = await db.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))
    present = {r[0] for r in await cur.fetchall()}
    return [r for r in roles if r not in present]


async def _create_staging(db: Any, staging: str, metadata: Mapping[str, Any]) -> str:
    """Create the staging database like the source's; returns how the locale was chosen."""
    import psycopg
    from psycopg import sql

    base = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(staging))
    encoding = metadata.get("encoding")
    if not encoding:
        await db.execute(base)
        return "server default"
    parts = [base, sql.SQL("ENCODING {}").format(sql.Literal(encoding))]
    exact = [*parts]
    if metadata.get("lc_collate"):
        exact.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(metadata["lc_collate"])))
    if metadata.get("lc_ctype"):
        exact.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(metadata["lc_ctype"])))
    if metadata.get("locale_provider") == "icu" and metadata.get("icu_locale"):
        exact.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(metadata["icu_locale"]))
        )
    try:
        await db.execute(sql.SQL(" ").join(exact))
        return "as the source"
    except psycopg.Error as exc:
        # The source's locale may not exist on this machine: C works with every encoding.
        log.warning(
            "creating %r with the source's locale failed (%s); using LOCALE 'C'", staging, exc
        )
    await db.execute(sql.SQL(" ").join([*parts, sql.SQL("LOCALE 'C'")]))
    return "C (the source's locale is not available here)"


async def _finish_staging(
    conn: _Conn,
    staging: str,
    entries: DatabaseEntries,
    *,
    keep_owners: bool,
    where: str,
    secret: list[str | None],
) -> tuple[int, list[str], list[str]]:
    """Count the tables restored and apply the database-level entries of the archive, in one
    session connected to the staging database (module docstring). Returns (tables, what was
    applied, what was left out on purpose); RestoreError naming every statement that failed."""
    import psycopg
    from psycopg import sql

    from drd.strategies.statistics import error_text

    steps, skipped = database_statements(entries, staging, keep_owners=keep_owners)
    applied: list[str] = []
    failed: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        conn.with_dbname(staging), autocommit=True
    ) as db:
        await db.execute("SET jit = off")
        cur = await db.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
            "'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"
        )
        row = await cur.fetchone()
        if steps:
            # pg_dump wrote the statements for the archive's encoding and string syntax.
            if entries.encoding:
                await db.execute(
                    sql.SQL("SET client_encoding TO {}").format(sql.Literal(entries.encoding))
                )
            std = "on" if entries.std_strings else "off"
            await db.execute(f"SET standard_conforming_strings TO {std}")
        for label, statement in steps:
            try:
                await db.execute(statement)
            except psycopg.Error as exc:
                failed.append(f"{label}: {redact(error_text(exc), secret)}")
            else:
                applied.append(label)
    if failed:
        raise RestoreError(
            f"{where}: {len(failed)} of the database's own properties recorded by pg_dump could "
            f"not be applied, so the restore was not completed: {'; '.join(failed)}"
        )
    return (int(row[0]) if row else 0), applied, skipped


def database_statements(
    entries: DatabaseEntries, staging: str, *, keep_owners: bool
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The statements restoring the database's own properties into `staging`, in pg_restore
    --create's order (owner, comment, security labels, properties, then the ACL), each with what
    it sets; and what `keep_owners=False` leaves out."""
    codec = _codec(entries.encoding)
    try:
        target = staging.encode(codec)
    except UnicodeError:
        target = staging.encode()
    std = entries.std_strings
    steps: list[tuple[str, bytes]] = []
    skipped: list[str] = []
    if entries.owner:
        owner = entries.owner.decode(codec, "replace")
        if keep_owners:
            statement = b"ALTER DATABASE " + quote_ident(target) + b" OWNER TO "
            steps.append(
                (f"ALTER DATABASE OWNER TO {owner}", statement + quote_ident(entries.owner))
            )
        else:
            skipped.append(f"ALTER DATABASE OWNER TO {owner}")
    groups = [entries.comments, entries.security_labels, entries.properties]
    for group in groups:
        for defn in group:
            for statement in split_statements(defn, std_strings=std):
                label = describe(statement, std_strings=std)
                if not keep_owners and label.startswith("ALTER ROLE "):
                    skipped.append(label)
                    continue
                steps.append((label, retarget(statement, entries.name, target, std_strings=std)))
    for defn in entries.acl:
        for statement in split_statements(defn, std_strings=std):
            label = describe(statement, std_strings=std)
            if keep_owners:
                steps.append((label, retarget(statement, entries.name, target, std_strings=std)))
            else:
                skipped.append(label)
    return steps, skipped


def _codec(encoding: str) -> str:
    """Python's codec for a PostgreSQL encoding name (UTF8, LATIN1, ...); utf-8 if unknown."""
    import codecs

    import psycopg
    from psycopg._encodings import pg2pyenc

    if not encoding:
        return "utf-8"
    try:
        codec = pg2pyenc(encoding.encode())
        codecs.lookup(codec)
    except (LookupError, psycopg.Error):
        return "utf-8"
    return codec


async def _promote(maintenance: str, staging: str, target: str, where: str) -> None:
    """Rename the finished staging database to the target."""
    import psycopg
    from psycopg import errors, sql

    old, new = sql.Identifier(staging), sql.Identifier(target)
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as db:
        # RENAME needs the database to be unused; an autovacuum worker may have connected.
        await db.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(old))
        for attempt in range(50):
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (staging,),
            )
            try:
                await db.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, new))
                break
            except errors.DuplicateDatabase:
                raise TargetExists(f"{where}: the database appeared during the restore") from None
            except errors.ObjectInUse:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        await db.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(new))


async def _drop_database(maintenance: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as db:
        await db.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
