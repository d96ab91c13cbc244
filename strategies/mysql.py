"""MySQL / MariaDB: one database through mariadb-dump (or mysqldump), restored with the client.

Dump: `mariadb-dump --single-transaction --routines --triggers --events --hex-blob
--default-character-set=utf8mb4 DB` streamed from its stdout. `--single-transaction` reads every
InnoDB table from one consistent snapshot without locking writers (MyISAM/Aria tables are not
transactional and are read as they are; DDL during the dump is not isolated either, which is
why the schema is fingerprinted before and after and a change fails the dump). Connection
settings, the password included, go into a `--defaults-file` written 0600 in a private 0700
temp directory and deleted right after the child exits: never argv (where `ps` shows it), never
the environment of a long-lived process. MYSQL_PWD is removed from the child's environment so
that only the plan's settings apply. The dump names no database (no CREATE DATABASE / USE), so
it restores into any database name.

What the metadata records (restore_metadata):
- `tables`: every table and view with its type (BASE TABLE, VIEW, SEQUENCE, ...).
- `statistics` (the shape drd.strategies.statistics defines for every kind, for restore tests):
  - `row_counts`: rows per table (quoted name) *in the dump*: counted while the dump streams by
    (drd.strategies.mysql_dump recognises mysqldump's data statements), so they belong to the
    dump's own snapshot; a restore compares them with `COUNT(*)` in the restored copy.
  - `schema`: {digest, parts} over information_schema (tables, columns, indexes, constraints,
    foreign keys, views, routines, triggers, events; no database names), taken before and
    after the dump: they must be equal, else the dump raced a DDL statement and fails
    (SourceError; the next attempt will do).
  - `captured`: the plan's "matches the source" queries. MySQL cannot share a snapshot between
    sessions, so they run in a consistent-snapshot transaction of their own started with the
    dump: on a database written to meanwhile they may see slightly different data.
- the server and tool versions, the database's default character set and collation.

Restore (a target URL `mysql://USER@HOST[:PORT]/DATABASE[?password=env:VAR&socket=PATH]`):
MariaDB has no RENAME DATABASE, so the hand-over is done per object:
1. refuse a target database that exists (TargetExists);
2. create the staging database `<target>_drd_restoring_<random8>` with the source's character
   set and collation and feed the dump into it with `mariadb --binary-mode`;
3. check the staging copy: row count of every table, and the schema fingerprint;
4. hand over: read the definitions of views, triggers, routines and events in the staging
   database (SHOW CREATE ..., with their sql_mode and character sets), drop the triggers there
   (a table with triggers cannot be renamed into another database), create the target database
   (failing if it appeared meanwhile), move every table with ONE `RENAME TABLE` statement (atomic
   in MariaDB 10.6+ and MySQL 8), then create routines, views (dependencies first), triggers and
   events in the target, and drop the staging database;
5. check the target's fingerprint against the dump's.
Any failure drops the staging database and, if this restore had created it, the target
database; the target never stays half-restored. Only step 4 touches the target name and it is
metadata work (no data is copied), so the window in which a reader could see a partial target is
short; a process killed inside it leaves a target without some views/routines, which the
fingerprint check of the next restore test would flag. A killed restore before step 4 leaves
only a `*_drd_restoring_*` database, never a plausible-looking target.

Privileges: the dumping user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database and,
on MariaDB, SELECT on mysql.proc (to read routine definitions it did not define).

Definers: views, triggers, routines and events are restored with their DEFINER, as mariadb-dump
writes them; the restoring user needs the privilege to name another definer (SET USER in
MariaDB, SET_USER_ID / SYSTEM_USER in MySQL) when the definers differ from it.

The parts, by job: this module is the strategy (dump, restore and its hand-over);
drd.strategies.mysql_client the connection settings, option file, environment and the client
that runs SQL; mysql_tools finding mariadb-dump/mysqldump and mariadb/mysql; mysql_dump reading
the dump stream (row counts); mysql_stats the schema fingerprint, row counts and captured
queries of a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from drd.errors import ConfigError, RestoreError, SourceError, TargetExists
from drd.strategies._secrets import SecretRef
from drd.strategies._subprocess import CountingStream, ToolError, feed_stdin, redact, stream_stdout
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.mysql_client import (
    MAX_IDENT,
    Client,
    ClientError,
    Server,
    client_env,
    database_exists,
    ident,
    lit,
    options_file,
    parse_target,
)
from drd.strategies.mysql_dump import RowCounter
from drd.strategies.mysql_stats import (
    VIEW,
    capture_queries,
    collect_statistics,
    fingerprint_differences,
    schema_info,
)
from drd.strategies.mysql_tools import find_tool

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "mysqldump-sql"
STAGING_INFIX = "_drd_restoring_"


class MysqlOptions(SourceOptions):
    kind: Literal["mysql"] = "mysql"
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    #: a Unix socket instead of host:port
    socket: str | None = None
    user: str = Field(min_length=1)
    #: the database to dump
    database: str = Field(min_length=1, max_length=MAX_IDENT)
    #: where the password comes from (never inline): {source: env|credential, name: ...}
    password_from: SecretRef | None = None
    #: directory holding mariadb-dump/mysqldump and mariadb/mysql; default: PATH
    client_bin_dir: str | None = None
    #: tables (exact names) left out of the dump
    exclude_tables: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The strategy


def _server_from_options(opts: MysqlOptions, where: str) -> Server:
    password = None
    ref = opts.password_from
    if ref is not None:
        try:
            password = ref.read(f"{where}: password_from")
        except ConfigError as exc:
            raise SourceError(str(exc)) from None
    env_name = ref.name if ref is not None and ref.source == "env" else None
    return Server(opts.host, opts.port, opts.user, opts.socket, password, env_name)


class MysqlStrategy(Strategy[MysqlOptions]):
    kind: ClassVar[str] = "mysql"
    Options: ClassVar[type[SourceOptions]] = MysqlOptions

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        opts = self.opts
        where = f"source {opts.name!r} (mysql database {opts.database!r})"
        server = _server_from_options(opts, where)
        secret = [server.password]
        dump_tool = await find_tool("dump", opts.client_bin_dir)
        client_tool = await find_tool("client", opts.client_bin_dir)
        if dump_tool is None or client_tool is None:
            place = opts.client_bin_dir or "PATH"
            raise SourceError(f"{where}: mariadb-dump/mysqldump and mariadb/mysql not in {place}")
        client = Client(server, client_tool.path)
        try:
            if not await database_exists(client, opts.database):
                raise SourceError(f"{where}: no such database on {server.describe()}")
            before = await schema_info(client, opts.database, opts.exclude_tables)
            facts = await _server_facts(client, opts.database)
        except ClientError as exc:
            raise SourceError(f"{where}: {exc}") from None
        # MySQL cannot share a snapshot between sessions: the captured queries run in their own
        # consistent snapshot, started together with the dump's.
        capture = asyncio.ensure_future(
            capture_queries(client, opts.database, self.capture_queries)
        )
        counter = RowCounter()
        size = 0
        with options_file(server) as cnf:
            argv = [
                dump_tool.path,
                f"--defaults-file={cnf}",
                "--single-transaction",
                "--skip-lock-tables",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--default-character-set=utf8mb4",
                "--quick",
                "--skip-dump-date",
                *(f"--ignore-table={opts.database}.{t}" for t in opts.exclude_tables),
                "--",
                opts.database,
            ]
            try:
                async with contextlib.aclosing(
                    stream_stdout(argv, client_env(server), chunk_size=CHUNK_SIZE)
                ) as stream:
                    async for chunk in stream:
                        counter.feed(chunk)
                        size += len(chunk)
                        yield chunk
            except ToolError as exc:
                raise SourceError(
                    f"{where}: {os.path.basename(dump_tool.path)} failed: "
                    f"{redact(str(exc), secret)}"
                ) from None
            except BaseException:
                capture.cancel()
                with contextlib.suppress(BaseException):
                    await capture
                raise
        captured = await capture
        try:
            after = await schema_info(client, opts.database, opts.exclude_tables)
        except ClientError as exc:
            raise SourceError(f"{where}: {exc}") from None
        changed = fingerprint_differences(before.fingerprint(), after.fingerprint())
        if changed:
            raise SourceError(
                f"{where}: the schema changed during the dump ({', '.join(changed)}); "
                "the dump is not consistent, try again"
            )
        tables = after.tables()
        statistics: dict[str, Any] = {
            "snapshot": "row counts from the dump stream itself; schema equal before and after "
            "the dump; captured queries in a consistent-snapshot transaction of their own",
            "row_counts": {
                ident(n): counter.counts.get(n, 0) for n, kind in tables.items() if kind != VIEW
            },
            "schema": after.fingerprint(),
            "captured": captured,
        }
        self._metadata = {
            "format": FORMAT,
            "dump_tool": dump_tool.version,
            **facts,
            "tables": tables,
            "exclude_tables": list(opts.exclude_tables),
            "dump_bytes": size,
            "statistics": statistics,
        }

    @classmethod
    async def restore(
        cls,
        chunks: AsyncIterator[bytes],
        target: str,
        metadata: Mapping[str, Any],
        *,
        client_bin_dir: str | None = None,
    ) -> RestoreOutcome:
        """Restore into the new database the target URL names (module docstring)."""
        try:
            server, dbname = parse_target(target)
        except ValueError as exc:
            raise RestoreError(f"restore target: {exc}") from None
        shown = f"mysql://{server.describe()}/{dbname}"
        where = f"restore into {shown}"
        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"{where}: unsupported dump format {fmt!r}")
        tool = await find_tool("client", client_bin_dir)
        if tool is None:
            raise RestoreError(f"{where}: no mariadb/mysql client found")
        client = Client(server, tool.path)
        staging = staging_name(dbname)
        secret = [server.password]
        created: list[str] = []
        try:
            if await database_exists(client, dbname):
                raise TargetExists(f"{where}: the database already exists")
            await client.execute(_create_database_sql(staging, metadata))
            created.append(staging)
            with options_file(server) as cnf:
                argv = [
                    tool.path,
                    f"--defaults-file={cnf}",
                    "--default-character-set=utf8mb4",
                    "--binary-mode",
                    "--batch",
                    f"--database={staging}",
                ]
                counted = CountingStream(chunks)
                warnings = await feed_stdin(argv, client_env(server), counted)
            if warnings:
                log.info("%s: the client said: %s", where, redact(warnings, secret))
            counts = await _check_copy(client, staging, metadata, where)
            await _hand_over(client, staging, dbname, metadata, where, created)
            problems = (await collect_statistics(client, dbname)).compare(metadata)
            if problems:
                raise RestoreError(f"{where}: after the hand-over: {'; '.join(problems)}")
        except BaseException as exc:
            for name in reversed(created):
                drop = asyncio.ensure_future(
                    client.execute(f"DROP DATABASE IF EXISTS {ident(name)}")
                )
                try:
                    await asyncio.shield(drop)
                except Exception as drop_exc:
                    log.error("%s: could not drop %r: %s", where, name, drop_exc)
            if isinstance(exc, ToolError | ClientError):
                raise RestoreError(f"{where}: {redact(str(exc), secret)}") from None
            raise
        return RestoreOutcome(
            target=shown,
            details={
                "database": dbname,
                "tables": len(counts),
                "rows": counts,
                "bytes": counted.bytes,
                "client": tool.version,
                "checks": {"row_counts": "ok", "schema": "ok"},
            },
        )


async def _server_facts(client: Client, database: str) -> dict[str, Any]:
    rows = await client.json_rows(
        "SELECT JSON_ARRAY(VERSION(), DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME) "
        f"FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit(database)}"
    )
    version, charset, collation = rows[0]
    return {
        "database": database,
        "server_version": version,
        "charset": charset,
        "collation": collation,
    }


def staging_name(target: str) -> str:
    room = MAX_IDENT - len(STAGING_INFIX) - 8
    return f"{target[:room]}{STAGING_INFIX}{secrets.token_hex(4)}"


def _create_database_sql(name: str, metadata: Mapping[str, Any]) -> str:
    sql = f"CREATE DATABASE {ident(name)}"
    charset, collation = metadata.get("charset"), metadata.get("collation")
    if charset:
        sql += f" CHARACTER SET {ident(str(charset))}"
    if collation:
        sql += f" COLLATE {ident(str(collation))}"
    return sql


async def _check_copy(
    client: Client, staging: str, metadata: Mapping[str, Any], where: str
) -> dict[str, int]:
    """Row counts and schema fingerprint of the staging copy against the dump's."""
    stats = await collect_statistics(client, staging)
    problems = stats.compare(metadata)
    if problems:
        raise RestoreError(
            f"{where}: the restored copy differs from the dump: {'; '.join(problems)}"
        )
    return stats.plain_counts


@dataclass
class _Definition:
    kind: Literal["PROCEDURE", "FUNCTION", "VIEW", "TRIGGER", "EVENT"]
    name: str
    statement: str
    sql_mode: str | None
    charset_client: str
    collation_connection: str
    time_zone: str | None = None


async def _definitions(client: Client, staging: str) -> list[_Definition]:
    """Routines, views, triggers and events of `staging`, in the order they must be created."""
    db = lit(staging)
    found: list[_Definition] = []
    routines = await client.rows(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
        f"WHERE ROUTINE_SCHEMA = {db} ORDER BY ROUTINE_TYPE, ROUTINE_NAME"
    )
    for kind, name in routines:
        assert name is not None
        routine: Literal["PROCEDURE", "FUNCTION"] = (
            "PROCEDURE" if kind == "PROCEDURE" else "FUNCTION"
        )
        (row,) = await client.rows(f"SHOW CREATE {routine} {ident(name)}", staging)
        _, sql_mode, statement, cs, coll = row[:5]
        if statement is None:
            raise RestoreError(f"cannot read the definition of {routine.lower()} {name!r}")
        found.append(_Definition(routine, name, statement, sql_mode, str(cs), str(coll)))
    views = await client.rows(
        f"SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db} "
        "ORDER BY TABLE_NAME"
    )
    view_defs = []
    for (name,) in views:
        assert name is not None
        (row,) = await client.rows(f"SHOW CREATE VIEW {ident(name)}", staging)
        _, statement, cs, coll = row[:4]
        view_defs.append(_Definition("VIEW", name, str(statement), None, str(cs), str(coll)))
    found.extend(_views_in_dependency_order(view_defs))
    triggers = await client.rows(
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
        f"WHERE TRIGGER_SCHEMA = {db} "
        "ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
    )
    for (name,) in triggers:
        assert name is not None
        (row,) = await client.rows(f"SHOW CREATE TRIGGER {ident(name)}", staging)
        _, sql_mode, statement, cs, coll = row[:5]
        found.append(_Definition("TRIGGER", name, str(statement), sql_mode, str(cs), str(coll)))
    events = await client.rows(
        f"SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db} "
        "ORDER BY EVENT_NAME"
    )
    for (name,) in events:
        assert name is not None
        (row,) = await client.rows(f"SHOW CREATE EVENT {ident(name)}", staging)
        _, sql_mode, time_zone, statement, cs, coll = row[:6]
        found.append(
            _Definition("EVENT", name, str(statement), sql_mode, str(cs), str(coll), time_zone)
        )
    return found


def _views_in_dependency_order(views: list[_Definition]) -> list[_Definition]:
    """Views that others select from first. A view is taken to depend on every other view whose
    quoted name appears in its text (a false positive only changes the order); on a cycle of
    such mentions the remaining views keep their name order."""
    pending = {v.name: v for v in views}
    ordered: list[_Definition] = []
    while pending:
        ready = [
            v
            for v in pending.values()
            if not any(ident(o) in v.statement for o in pending if o != v.name)
        ]
        if not ready:
            ready = list(pending.values())
        for v in ready:
            ordered.append(v)
            del pending[v.name]
    return ordered


def _creation_script(defs: Sequence[_Definition]) -> str:
    delimiter = "$$" + secrets.token_hex(5) + "$$"  # the client allows at most 16 characters
    lines = [f"DELIMITER {delimiter}"]
    for d in defs:
        if delimiter in d.statement:  # astronomically unlikely; never ambiguous
            raise RestoreError(f"{d.kind.lower()} {d.name!r} contains the statement delimiter")
        settings = [
            f"SET SESSION character_set_client = {lit(d.charset_client)}",
            f"SET SESSION collation_connection = {lit(d.collation_connection)}",
        ]
        if d.sql_mode is not None:
            settings.append(f"SET SESSION sql_mode = {lit(d.sql_mode)}")
        if d.time_zone is not None:
            settings.append(f"SET SESSION time_zone = {lit(d.time_zone)}")
        for s in settings:
            lines.append(s + delimiter)
        lines.append(d.statement + delimiter)
    lines.append("DELIMITER ;")
    return "\n".join(lines) + "\n"


async def _hand_over(
    client: Client,
    staging: str,
    target: str,
    metadata: Mapping[str, Any],
    where: str,
    created: list[str],
) -> None:
    """Move the finished staging database's content to the new target database."""
    defs = await _definitions(client, staging)
    info = await schema_info(client, staging)
    tables = [name for name, kind in info.tables().items() if kind != VIEW]
    for d in defs:
        if d.kind == "TRIGGER":
            await client.execute(f"DROP TRIGGER {ident(staging)}.{ident(d.name)}")
    try:
        await client.execute(_create_database_sql(target, metadata))
    except ClientError as exc:
        if exc.errno == 1007:  # ER_DB_CREATE_EXISTS
            raise TargetExists(f"{where}: the database appeared during the restore") from None
        raise
    created.append(target)
    if tables:
        moves = ", ".join(
            f"{ident(staging)}.{ident(t)} TO {ident(target)}.{ident(t)}" for t in tables
        )
        await client.execute(f"RENAME TABLE {moves}")
    if defs:
        await client.execute(_creation_script(defs), target)
    await client.execute(f"DROP DATABASE {ident(staging)}")
    created.remove(staging)
