"""PostgreSQL: one database through pg_dump's custom format, restored with pg_restore.

Dump: `pg_dump --format=custom --compress=0` (the pipeline compresses with zstd itself) streamed
from its stdout. pg_dump uses one snapshot for the whole dump, so the image is consistent
(`format: parallel` copies the tables in several sessions of that same snapshot instead:
drd.strategies.postgres_parallel_dump, restored by postgres_parallel_restore). The snapshot is
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
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drd.errors import MissingRoles, RestoreError, SourceError, TargetExists
from drd.strategies._subprocess import CountingStream, ToolError, feed_stdin, redact, stream_stdout
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.postgres_conn import Owners, ToastCompression, _Conn
from drd.strategies.postgres_frames import FrameError
from drd.strategies.postgres_parallel_dump import ParallelDump, default_jobs
from drd.strategies.postgres_parallel_restore import copy_session, restore_parallel
from drd.strategies.postgres_source import _Snapshot, _source_facts, _toc_sequences
from drd.strategies.postgres_target import (
    _create_roles,
    _create_staging,
    _database_exists,
    _drop_database,
    _finish_staging,
    _missing_roles,
    _promote,
    _restore_session,
    _roles_text,
    needed_roles,
)
from drd.strategies.postgres_toc import (
    TocError,
    TocScanner,
    TocWatcher,
)
from drd.strategies.postgres_tools import find_tool, parse_version

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "pg_dump-custom"
PARALLEL_FORMAT = "drd-pg-parallel"
MAINTENANCE_DB = "postgres"
STAGING_INFIX = "_drd_restoring_"
_MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1


class PostgresOptions(SourceOptions):
    kind: Literal["postgres"] = "postgres"
    #: libpq connection string (URL or key=value) naming the database to dump
    dsn: str = Field(repr=False)
    #: directory holding pg_dump; default: the newest pg_dump found on this machine
    pg_bin_dir: str | None = None
    #: pg_dump --exclude-table patterns
    exclude_tables: list[str] = Field(default_factory=list)
    #: "custom": one pg_dump archive, restored by one session; "parallel": sections as small
    #: archives and every table's rows copied by `jobs` sessions at once, restored as many
    #: at once (drd.strategies.postgres_parallel_dump)
    format: Literal["custom", "parallel"] = "custom"
    #: sessions of a parallel dump and of its restores; default: this machine's cores, up to 8
    jobs: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="after")
    def _jobs_need_parallel(self) -> PostgresOptions:
        if self.jobs is not None and self.format != "parallel":
            raise ValueError("jobs: only a source with format: parallel dumps in several sessions")
        return self


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
        if opts.format == "parallel":
            async with contextlib.aclosing(self._dump_parallel()) as stream:
                async for chunk in stream:
                    yield chunk
            return
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
            snapshot.start_statistics(self.capture_queries, self.content)
            # The TOC at the archive's head holds the sequence values pg_dump read.
            toc = TocScanner()
            try:
                async with contextlib.aclosing(
                    stream_stdout(argv, conn.env(), chunk_size=CHUNK_SIZE)
                ) as stream:
                    async for chunk in stream:
                        size += len(chunk)
                        if not toc.done and toc.error is None:
                            toc.feed(chunk)
                        yield chunk
            except ToolError as exc:
                raise SourceError(
                    f"{where}: pg_dump failed: {redact(str(exc), [conn.password])}"
                ) from None
            statistics = await snapshot.statistics()
            if "error" not in statistics:
                statistics["sequences"] = _toc_sequences(toc)
        self._metadata = await self._finished(
            where,
            conn,
            format=FORMAT,
            pg_dump_version=tool.version,
            dump_bytes=size,
            statistics=statistics,
        )

    async def _dump_parallel(self) -> AsyncGenerator[bytes, None]:
        opts = self.opts
        where = f"source {opts.name!r}"
        try:
            conn = _Conn.parse(opts.dsn)
            conn.dbname_arg()  # refuses a secret keyword before any child or session starts
        except ValueError as exc:
            raise SourceError(f"{where}: dsn: {exc}") from None
        tools = {}
        for name in ("pg_dump", "psql"):
            tool = await find_tool(name, opts.pg_bin_dir)
            if tool is None:
                place = opts.pg_bin_dir or "/usr/lib/postgresql/*/bin or PATH"
                raise SourceError(f"{where}: no working {name} found in {place}")
            tools[name] = tool
        jobs = opts.jobs or default_jobs()
        size = 0
        async with _Snapshot.open(opts.dsn, where, conn.password) as snapshot:
            snapshot.start_statistics(self.capture_queries, self.content)
            dump = ParallelDump(
                dsn=opts.dsn,
                pg_dump=tools["pg_dump"].path,
                psql=tools["psql"].path,
                conn=conn,
                snapshot=snapshot.id,
                jobs=jobs,
                exclude_tables=opts.exclude_tables,
                where=where,
            )
            async with contextlib.aclosing(dump.stream()) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    yield chunk
            statistics = await snapshot.statistics()
            if "error" not in statistics:
                rest = dump.rest_toc or TocScanner()
                statistics["sequences"] = _toc_sequences(rest)
        self._metadata = await self._finished(
            where,
            conn,
            format=PARALLEL_FORMAT,
            pg_dump_version=tools["pg_dump"].version,
            jobs=jobs,
            parallel_tables=dump.tables,
            dump_bytes=size,
            statistics=statistics,
        )

    async def _finished(self, where: str, conn: _Conn, **fields: Any) -> dict[str, Any]:
        """The restore metadata of a finished dump: `fields` and the server's facts (read after
        the dump: they say what the restore needs, e.g. its version and encoding)."""
        try:
            facts = await _source_facts(self.opts.dsn)
        except Exception as exc:
            raise SourceError(
                f"{where}: cannot read the server facts after pg_dump: "
                f"{redact(str(exc), [conn.password])}"
            ) from None
        return {**facts, **fields, "exclude_tables": list(self.opts.exclude_tables)}

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
        if fmt not in (FORMAT, PARALLEL_FORMAT):
            raise RestoreError(f"{where}: unsupported dump format {fmt!r}")
        jobs = metadata.get("jobs", 1)
        if fmt == PARALLEL_FORMAT and not (isinstance(jobs, int) and 1 <= jobs <= 64):
            raise RestoreError(f"{where}: the backup's metadata has no valid jobs ({jobs!r})")
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
                "--no-password",
                *([] if keep_owners else ["--no-owner", "--no-privileges"]),
                *dbname_arg,
            ]
            if fmt == PARALLEL_FORMAT:
                entries, warnings = await restore_parallel(
                    counted,
                    pg_restore=argv,
                    env=env,
                    staging_dsn=conn.with_dbname(staging),
                    session=copy_session(toast),
                    jobs=jobs,
                    where=where,
                )
            else:
                warnings = await feed_stdin([*argv, "--single-transaction"], env, watched)
                entries = watched.scanner.finish()
            if warnings:
                log.info("%s: pg_restore said: %s", where, redact(warnings, secret))
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
            if isinstance(exc, FrameError):
                raise RestoreError(f"{where}: the parallel dump is damaged: {exc}") from None
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
                "jobs": jobs if fmt == PARALLEL_FORMAT else 1,
            },
        )
