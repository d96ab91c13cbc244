"""MySQL / MariaDB: one database through mariadb-dump (or mysqldump), restored with the client.

Dump, one stream in two parts, both of them SQL a `mariadb` client can load as they are:
1. the tables, sequences and data: `mariadb-dump --single-transaction --skip-triggers
   --default-character-set=utf8mb4 --max-allowed-packet=1G [--dump-history] DB`, views left
   out (`--ignore-table`), streamed from its stdout. `--single-transaction` reads every
   InnoDB table from one consistent snapshot without locking writers (MyISAM/Aria tables are
   not transactional and are read as they are; DDL during the dump is not isolated either,
   which is why the schema is fingerprinted before and after and a change fails the dump).
   BLOBs are written as escaped strings, not `--hex-blob` (which doubles every statement: a
   9 MiB BLOB would not fit the server's default 16 MiB max_allowed_packet);
   `--dump-history` (MariaDB's dump tool) keeps the history of system-versioned tables; where
   the tool cannot, the loss is recorded (`history_lost`) and every restore warns of it;
2. after a marker line at byte `objects_offset`: drd's script of the database's routines,
   views (dependencies first), triggers and events, each with the sql_mode, character sets
   (and time zone) it was created under and its DEFINER, read with SHOW CREATE right after
   the dump (the schema fingerprint taken after the dump covers them).
Connection settings, the password included, go into a `--defaults-file` written 0600 in a
private 0700 temp directory and deleted right after the child exits: never argv (where `ps`
shows it), never the environment of a long-lived process. MYSQL_PWD is removed from the child's
environment so that only the plan's settings apply. The dump names no database (no CREATE
DATABASE / USE), so it restores into any database name.

What the metadata records (restore_metadata):
- `tables`: every table and view with its type (BASE TABLE, VIEW, SEQUENCE, SYSTEM VERSIONED).
- `statistics` (the shape drd.strategies.statistics defines for every kind, for restore tests),
  all of it taken from the dump stream itself (drd.strategies.mysql_dump), so it belongs to the
  dump's own snapshot, except the schema:
  - `row_counts`: rows per table (quoted name) in the dump (history rows included where the
    history was dumped); a restore compares them with `COUNT(*)` in the restored copy;
  - `sequences`: each sequence's `DO SETVAL` (next value, is_used);
  - `content`: per-table digests of the rows' text as the dump wrote it (order-independent:
    drd.strategies.mysql_dump.TableDigest). With `content: sampled` (the default) a table whose
    primary key is one integer column that comes first is sampled by key: 10 key ranges
    spread from its smallest to its largest key (read from the index before the dump), about
    `content_rows` rows together by the server's row estimate, so rows deep inside a big
    table are covered too; any other table by its first `content_rows` rows in the dump's
    order. `content: full` digests every row, `content: off` none. A restore test dumps the
    same rows of the restored copy (`--where` on the key ranges, or `LIMIT`) with the same
    tool and options and compares;
  - `schema`: {digest, parts} over information_schema (tables, columns, indexes, constraints,
    foreign keys, views, routines, triggers, events; no database names), taken before and
    after the dump: they must be equal, else the dump raced a DDL statement and fails
    (SourceError; the next attempt will do); `inventory`: each view, routine, trigger and
    event by name with its definer and a digest of its definition;
  - `captured`: the plan's "matches the source" queries. MySQL cannot share a snapshot between
    sessions, so they run in a consistent-snapshot transaction of their own started with the
    dump: on a database written to meanwhile they may see slightly different data.
- the server and tool versions, the database's default character set and collation, the size
  of the dump's largest statement (`largest_statement`).

Restore (a target URL `mysql://USER@HOST[:PORT]/DATABASE[?password=env:VAR&socket=PATH]`):
MariaDB has no RENAME DATABASE, so the hand-over is done per object:
1. refuse a target database that exists (TargetExists); refuse, before touching anything, a
   target whose max_allowed_packet is smaller than the dump's largest statement;
2. create the staging database `<target>_drd_restoring_<random8>` with the source's character
   set and collation and feed part 1 of the dump into it with `mariadb --binary-mode`;
3. check the staging copy's row counts against the dump's;
4. hand over: create the target database (failing if it appeared meanwhile), move every table
   and sequence with ONE `RENAME TABLE` statement (atomic in MariaDB 10.6+ and MySQL 8), then
   run part 2 (routines, views, triggers, events) in the target, and drop the staging
   database;
5. check the target's row counts and schema fingerprint against the dump's.
Views and routines are created only after the rename, under the target's own name, because a
DEFINER's rights are often granted by database name (`GRANT SELECT, EXECUTE ON shop.* TO app`):
created in the staging database, `CREATE VIEW` fails with "execute command denied ... for
routine '<staging>.f'", as a plain load into another name would. Restored into the name the
grants name, they load as a plain `mariadb-dump | mariadb` would; into another name, a definer
without rights there fails the restore the same way, naming the object.
Any failure drops the staging database and, if this restore had created it, the target
database; the target never stays half-restored. Only step 4 touches the target name and it is
metadata work (no data is copied), so the window in which a reader could see a partial target is
short; a process killed inside it leaves a target without some views/routines, which the
fingerprint check of the next restore test would flag. A killed restore before step 4 leaves
only a `*_drd_restoring_*` database, never a plausible-looking target. Backups taken before
the dump had two parts (no `objects_offset`) are loaded whole into the staging database, and
their objects re-created in the target from there, as then.

Error messages never carry row data: of what the client says only its ERROR lines are kept,
and quoted values in them are cut (drd.strategies.mysql_client.safe_error_text).

Privileges: the dumping user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database and,
on MariaDB, SELECT on mysql.proc (to read routine definitions it did not define).

Definers: views, triggers, routines and events are restored with their DEFINER; the restoring
user needs the privilege to name another definer (SET USER in MariaDB, SET_USER_ID /
SYSTEM_USER in MySQL) when the definers differ from it. A definer that does not exist on the
target only draws a warning there; such a view or routine fails when used.

The parts, by job: this module is the strategy (dump, restore and its hand-over);
drd.strategies.mysql_client the connection settings, option file, environment and the client
that runs SQL; mysql_tools finding mariadb-dump/mysqldump and mariadb/mysql; mysql_dump reading
the dump stream (row counts, sequences, content digests); mysql_stats the schema fingerprint,
inventory, row counts, content digests and captured queries of a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from drd.errors import ConfigError, RestoreError, SourceError, TargetExists
from drd.strategies._secrets import SecretRef
from drd.strategies._subprocess import ToolError, feed_stdin, redact, stream_stdout
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
    safe_error_text,
)
from drd.strategies.mysql_dump import ContentPlan, RowCounter, TableDigest
from drd.strategies.mysql_stats import (
    SEQUENCE,
    VERSIONED,
    VIEW,
    capture_queries,
    collect_statistics,
    fingerprint_differences,
    integer_keys,
    inventory,
    sample_ranges,
    schema_info,
    transaction_precise,
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
    #: per-table content digests for restore tests, taken from the dump stream: "sampled" (key
    #: ranges spread over each table with an integer primary key, else its first rows; about
    #: `content_rows` rows per table), "full" (every row) or "off". Unset: the plan's
    #: restore_test.content, as for every source kind ("sample" is the older spelling)
    content: Literal["sampled", "sample", "full", "off"] | None = None
    #: the per-table row budget of sampled content (a restore test reads this many rows of
    #: each table of the restored copy); unset: the plan's restore_test.sample_rows
    content_rows: int | None = Field(default=None, ge=1, le=10_000_000)


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


def dump_argv(
    tool: str,
    cnf: str,
    database: str,
    *,
    ignore: Sequence[str] = (),
    history: bool = False,
    extra: Sequence[str] = (),
    tables: Sequence[str] = (),
) -> list[str]:
    """mariadb-dump's argv for the tables and data of `database` (part 1 of a dump; also what
    a restore test reads the restored copy's content with, so both are formatted alike)."""
    return [
        tool,
        f"--defaults-file={cnf}",
        "--single-transaction",
        "--skip-lock-tables",
        "--skip-triggers",
        "--default-character-set=utf8mb4",
        "--max-allowed-packet=1G",
        "--quick",
        "--skip-dump-date",
        *(["--dump-history"] if history else []),
        *extra,
        *(f"--ignore-table={database}.{t}" for t in ignore),
        "--",
        database,
        *tables,
    ]


def objects_marker() -> bytes:
    return b"\n-- drd: the routines, views, triggers and events, created after the tables\n"


class MysqlStrategy(Strategy[MysqlOptions]):
    kind: ClassVar[str] = "mysql"
    Options: ClassVar[type[SourceOptions]] = MysqlOptions
    scratch_kinds: ClassVar[tuple[str, ...]] = ("ephemeral-mariadb", "mysql-server")
    default_scratch: ClassVar[str | None] = "ephemeral-mariadb"
    check_kinds: ClassVar[tuple[str, ...]] = ("sql", "freshness", "command")
    restored_as: ClassVar[str | None] = "mysql"

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
        tables = before.tables()
        views = [name for name, kind in tables.items() if kind == VIEW]
        versioned = sorted(name for name, kind in tables.items() if kind == VERSIONED)
        # All or nothing: --dump-history refuses a table versioned by transaction id.
        history = (
            bool(versioned)
            and not transaction_precise(before)
            and await dump_tool.supports("--dump-history")
        )
        # The source's own setting wins over the plan's (restore_test.content, sample_rows).
        mode = opts.content or self.content.mode
        rows = opts.content_rows or self.content.sample_rows
        content = (
            None if mode == "off" else ContentPlan("full" if mode == "full" else "sample", rows)
        )
        keys: dict[str, str] = {}
        ranges: dict[str, list[list[int]]] = {}
        if content is not None and content.mode == "sample":
            keys = integer_keys(before)
            try:
                ranges = await sample_ranges(
                    client, opts.database, keys, content.rows, versioned if history else []
                )
            except ClientError as exc:
                raise SourceError(f"{where}: {exc}") from None
        # MySQL cannot share a snapshot between sessions: the captured queries run in their own
        # consistent snapshot, started together with the dump's.
        capture = asyncio.ensure_future(
            capture_queries(client, opts.database, self.capture_queries)
        )
        counter = RowCounter(None if content is None else content.digest_rows, ranges)
        size = 0
        with options_file(server) as cnf:
            argv = dump_argv(
                dump_tool.path,
                cnf,
                opts.database,
                ignore=[*opts.exclude_tables, *views],
                history=history,
            )
            try:
                async with contextlib.aclosing(
                    stream_stdout(argv, client_env(server), chunk_size=CHUNK_SIZE)
                ) as stream:
                    async for chunk in stream:
                        counter.feed(chunk)
                        size += len(chunk)
                        yield chunk
            except ToolError as exc:
                raise SourceError(f"{where}: {tool_failure(exc, secret)}") from None
            except BaseException:
                capture.cancel()
                with contextlib.suppress(BaseException):
                    await capture
                raise
        captured = await capture
        try:
            script = _creation_script(
                await _definitions(client, opts.database, opts.exclude_tables)
            )
            after = await schema_info(client, opts.database, opts.exclude_tables)
            objects = await inventory(client, opts.database, opts.exclude_tables)
        except ClientError as exc:
            raise SourceError(f"{where}: {exc}") from None
        except RestoreError as exc:
            raise SourceError(f"{where}: {exc}") from None
        changed = fingerprint_differences(before.fingerprint(), after.fingerprint())
        if changed:
            raise SourceError(
                f"{where}: the schema changed during the dump ({', '.join(changed)}); "
                "the dump is not consistent, try again"
            )
        objects_offset = size
        tail = objects_marker() + script.encode("utf-8")
        yield tail
        size += len(tail)
        tables = after.tables()
        statistics: dict[str, Any] = {
            "snapshot": "row counts, sequences and content digests from the dump stream "
            "itself; schema equal before and after the dump; captured queries in a "
            "consistent-snapshot transaction of their own",
            "row_counts": {
                ident(n): counter.counts.get(n, 0)
                for n, kind in tables.items()
                if kind not in (VIEW, SEQUENCE)
            },
            "sequences": {
                ident(n): counter.sequences.get(n) for n, kind in tables.items() if kind == SEQUENCE
            },
            "schema": after.fingerprint(),
            "inventory": objects,
            "captured": captured,
        }
        if content is not None:
            statistics["content"] = {
                "mode": content.mode,
                "rows_per_table": content.rows if content.mode == "sample" else None,
                "history": history,
                "tool": dump_tool.version,
                "tables": {
                    ident(n): _sampled(counter.digests.get(n, TableDigest()), keys, ranges, n)
                    for n, kind in tables.items()
                    if kind not in (VIEW, SEQUENCE)
                },
            }
        self._metadata = {
            "format": FORMAT,
            "dump_tool": dump_tool.version,
            **facts,
            "tables": tables,
            "exclude_tables": list(opts.exclude_tables),
            "dump_bytes": size,
            "objects_offset": objects_offset,
            "history": history,
            "history_lost": [] if history else [ident(n) for n in versioned],
            "largest_statement": {
                "table": counter.largest.table,
                "bytes": counter.largest.bytes,
            },
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
        password: str | None = None,
    ) -> RestoreOutcome:
        """Restore into the new database the target URL names (module docstring). `password`
        is used when the URL gives none (a scratch server drd started)."""
        try:
            server, dbname = parse_target(target)
        except ValueError as exc:
            raise RestoreError(f"restore target: {exc}") from None
        if password is not None and server.password is None:
            server = dataclasses.replace(server, password=password)
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
        offset = metadata.get("objects_offset")
        split = _Split(chunks, offset if isinstance(offset, int) else None)
        try:
            if await database_exists(client, dbname):
                raise TargetExists(f"{where}: the database already exists")
            await _check_packet_size(client, metadata, where)
            await client.execute(_create_database_sql(staging, metadata))
            created.append(staging)
            with options_file(server) as cnf:
                argv = [
                    tool.path,
                    f"--defaults-file={cnf}",
                    "--default-character-set=utf8mb4",
                    "--binary-mode",
                    "--batch",
                    "--max-allowed-packet=1G",
                    f"--database={staging}",
                ]
                warnings = await feed_stdin(argv, client_env(server), split)
            objects = await split.rest()
            if warnings:
                log.info(
                    "%s: the client said: %s", where, safe_error_text(redact(warnings, secret))
                )
            counts = await _check_copy(client, staging, metadata, where)
            await _hand_over(client, staging, dbname, metadata, where, created, objects)
            problems = (await collect_statistics(client, dbname, metadata)).compare(metadata)
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
            if isinstance(exc, ToolError):
                raise RestoreError(f"{where}: {tool_failure(exc, secret)}") from None
            if isinstance(exc, ClientError):
                raise RestoreError(f"{where}: {redact(str(exc), secret)}") from None
            raise
        details: dict[str, Any] = {
            "database": dbname,
            "tables": len(counts),
            "rows": counts,
            "bytes": split.bytes,
            "client": tool.version,
            "checks": {"row_counts": "ok", "schema": "ok"},
        }
        lost = [str(t) for t in metadata.get("history_lost") or []]
        not_kept = [
            f"the history of system-versioned table {t} (the dump tool could not dump it; only "
            "the current rows were restored)"
            for t in lost
        ]
        if lost:
            details["history_lost"] = lost
            log.warning("%s: %s", where, "; ".join(not_kept))
        return RestoreOutcome(target=shown, details=details, warnings=not_kept)


def _sampled(
    digest: TableDigest, keys: Mapping[str, str], ranges: Mapping[str, Any], table: str
) -> dict[str, Any]:
    """A table's content digest and, when it was sampled by key ranges, which."""
    out = digest.as_json()
    if table in ranges:
        out["key"] = keys[table]
        out["ranges"] = ranges[table]
    return out


def tool_failure(exc: ToolError, secrets: Sequence[str | None]) -> str:
    """What a failed client or dump tool said, secrets redacted and without row data."""
    if exc.returncode is None:
        return redact(str(exc), secrets)  # could not start: an OS error, no data
    status = (
        f"was killed by signal {-exc.returncode}"
        if exc.returncode < 0
        else f"exited with status {exc.returncode}"
    )
    return f"{exc.program} {status}: {safe_error_text(redact(exc.stderr_tail, secrets))}"


class _Split:
    """The dump stream up to `offset` (its first part, for the client), then the rest kept in
    memory for rest(). With no offset (an older dump) everything goes to the client. A plain
    iterator, so there is nothing left to close when the client stops early."""

    #: part 2 is DDL; more than this is not a dump drd wrote
    LIMIT = 256 << 20

    def __init__(self, inner: AsyncIterator[bytes], offset: int | None) -> None:
        self._inner = inner
        self._offset = offset
        self._rest = bytearray()
        self.bytes = 0

    def __aiter__(self) -> _Split:
        return self

    async def __anext__(self) -> bytes:
        if self._offset is not None and self.bytes >= self._offset:
            raise StopAsyncIteration
        chunk = await self._inner.__anext__()
        self.bytes += len(chunk)
        if self._offset is not None and self.bytes > self._offset:
            keep = len(chunk) - (self.bytes - self._offset)
            self._rest += chunk[keep:]
            return chunk[:keep]
        return chunk

    async def rest(self) -> bytes:
        """Part 2, read to the stream's end (which is what authenticates it)."""
        if self._offset is None:
            async for _ in self:
                pass
            return b""
        async for chunk in self._inner:
            self.bytes += len(chunk)
            self._rest += chunk
            if len(self._rest) > self.LIMIT:
                raise RestoreError(f"the dump's objects part is larger than {self.LIMIT} bytes")
        return bytes(self._rest)


async def _check_packet_size(client: Client, metadata: Mapping[str, Any], where: str) -> None:
    """Stop before touching anything when the target cannot take the dump's largest statement
    (one row at least: mariadb-dump never splits a row)."""
    largest = metadata.get("largest_statement")
    if not isinstance(largest, Mapping) or not isinstance(largest.get("bytes"), int):
        return
    rows = await client.rows("SELECT @@max_allowed_packet")
    limit = int(rows[0][0] or 0)
    if limit and largest["bytes"] > limit:
        raise RestoreError(
            f"{where}: the dump holds a statement of {largest['bytes']} bytes (table "
            f"{ident(str(largest.get('table')))}), more than the target's max_allowed_packet "
            f"({limit}); raise it there (SET GLOBAL max_allowed_packet = ...) and restore again"
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
    """Row counts of the staging copy against the dump's (and, for a dump loaded whole, the
    schema fingerprint: its objects are there already)."""
    stats = await collect_statistics(client, staging, metadata)
    whole = metadata.get("objects_offset") is None
    problems = stats.compare(metadata, schema=whole)
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


async def _definitions(
    client: Client, staging: str, exclude: Sequence[str] = ()
) -> list[_Definition]:
    """Routines, views, triggers and events of `staging`, in the order they must be created;
    views named in `exclude` and triggers of excluded tables left out (as --ignore-table
    leaves them out of a dump)."""
    db = lit(staging)
    skip = set(exclude)
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
        if name in skip:
            continue
        (row,) = await client.rows(f"SHOW CREATE VIEW {ident(name)}", staging)
        _, statement, cs, coll = row[:4]
        view_defs.append(_Definition("VIEW", name, str(statement), None, str(cs), str(coll)))
    found.extend(_views_in_dependency_order(view_defs))
    triggers = await client.rows(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
        f"WHERE TRIGGER_SCHEMA = {db} "
        "ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
    )
    for name, table in triggers:
        assert name is not None
        if table in skip:
            continue
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
    objects: bytes,
) -> None:
    """Move the finished staging database's content to the new target database, then create
    the routines, views, triggers and events there: from the dump's second part, or (a dump
    loaded whole) from their definitions in the staging database."""
    whole = metadata.get("objects_offset") is None
    defs = await _definitions(client, staging) if whole else []
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
    if objects.strip():
        await client.execute(objects.decode("utf-8"), target)
    await client.execute(f"DROP DATABASE {ident(staging)}")
    created.remove(staging)
