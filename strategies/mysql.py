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
    (`_RowCounter` recognises mysqldump's data statements), so they belong to the dump's own
    snapshot; a restore compares them with `COUNT(*)` in the restored copy.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field

from drd.errors import ConfigError, RestoreError, SourceError, TargetExists
from drd.secret_source import child_environment
from drd.strategies._secrets import SecretRef
from drd.strategies._subprocess import CountingStream, ToolError, feed_stdin, redact, stream_stdout
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.statistics import digest, error_text, result_value

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FORMAT = "mysqldump-sql"
STAGING_INFIX = "_drd_restoring_"
_MAX_IDENT = 64  # characters, for database and table names
_CLIENT_ENV_DROP = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT")
_QUERY_TIMEOUT = 600.0
# Table types whose data lives in the table (RENAME TABLE moves them); views are recreated.
_VIEW = "VIEW"


class MysqlOptions(SourceOptions):
    kind: Literal["mysql"] = "mysql"
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    #: a Unix socket instead of host:port
    socket: str | None = None
    user: str = Field(min_length=1)
    #: the database to dump
    database: str = Field(min_length=1, max_length=_MAX_IDENT)
    #: where the password comes from (never inline): {source: env|credential, name: ...}
    password_from: SecretRef | None = None
    #: directory holding mariadb-dump/mysqldump and mariadb/mysql; default: PATH
    client_bin_dir: str | None = None
    #: tables (exact names) left out of the dump
    exclude_tables: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Connections and client tools


@dataclass(frozen=True)
class Server:
    """Where a MySQL/MariaDB server is and who logs in; the password is already resolved."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    socket: str | None = None
    password: str | None = field(default=None, repr=False)
    #: the environment variable the password came from: kept out of every child's environment
    password_env: str | None = None

    def describe(self) -> str:
        where = self.socket or f"{self.host}:{self.port}"
        return f"{self.user}@{where}"

    def options_file_text(self) -> str:
        """A [client] option group for --defaults-file (values quoted, escapes doubled)."""
        lines = ["[client]"]
        values = {"host": self.host, "port": str(self.port), "user": self.user}
        if self.socket:
            values["socket"] = self.socket
            values["protocol"] = "SOCKET"
        else:
            values["protocol"] = "TCP"
        if self.password is not None:
            values["password"] = self.password
        for key, value in values.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"{key} must not contain a line break")
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key}="{escaped}"')
        return "\n".join(lines) + "\n"


@contextlib.contextmanager
def options_file(server: Server) -> Iterator[str]:
    """A private --defaults-file for `server` (0600 in a 0700 directory), deleted on exit."""
    tmpdir = tempfile.mkdtemp(prefix="drd-mysql-")
    path = os.path.join(tmpdir, "client.cnf")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(server.options_file_text())
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def client_env(server: Server | None = None) -> dict[str, str]:
    """This process's environment without the client's own variables (MYSQL_PWD, ...) and
    without the variable holding the server's password."""
    drop = {*_CLIENT_ENV_DROP, *([server.password_env] if server and server.password_env else [])}
    return child_environment(drop=drop)


@dataclass(frozen=True)
class Tool:
    path: str
    version: str


_TOOL_NAMES = {"dump": ("mariadb-dump", "mysqldump"), "client": ("mariadb", "mysql")}


async def find_tool(role: Literal["dump", "client"], bin_dir: str | None = None) -> Tool | None:
    """mariadb-dump/mysqldump (role "dump") or mariadb/mysql ("client"), from bin_dir or PATH."""
    for name in _TOOL_NAMES[role]:
        if bin_dir is not None:
            candidate: str | None = os.path.join(bin_dir, name)
            if not os.access(candidate or "", os.X_OK):
                candidate = None
        else:
            candidate = shutil.which(name)
        if candidate is None:
            continue
        try:
            proc = await asyncio.create_subprocess_exec(
                candidate,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=client_env(),
            )
        except OSError:
            continue
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return Tool(candidate, out.decode("utf-8", "replace").strip())
    return None


class ClientError(Exception):
    """The client reported an SQL error; `errno` is the server's error number if known."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


_ERRNO = re.compile(r"ERROR (\d+)")


def _decode_batch(field_text: str) -> str | None:
    """A field of the client's --batch output: NULL, and \\0 \\t \\n \\\\ escapes undone."""
    if field_text == "NULL":
        return None
    if "\\" not in field_text:
        return field_text
    out: list[str] = []
    i = 0
    while i < len(field_text):
        c = field_text[i]
        if c == "\\" and i + 1 < len(field_text):
            nxt = field_text[i + 1]
            out.append({"0": "\0", "t": "\t", "n": "\n", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Client:
    """Runs SQL through the mariadb/mysql command-line client (one process per call).

    No Python driver is needed: the strategy needs the client tools anyway, and the same
    option-file handling keeps the password out of argv and environment.
    """

    def __init__(self, server: Server, tool: Tool) -> None:
        self.server = server
        self.tool = tool

    def _argv(self, cnf: str, database: str | None, *extra: str) -> list[str]:
        return [
            self.tool.path,
            f"--defaults-file={cnf}",
            "--default-character-set=utf8mb4",
            "--batch",
            "--skip-column-names",
            *extra,
            *([f"--database={database}"] if database else []),
        ]

    async def _run(self, sql: str, database: str | None, *extra: str) -> str:  # returns stdout text
        with options_file(self.server) as cnf:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(cnf, database, *extra),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=client_env(self.server),
            )
            try:
                async with asyncio.timeout(_QUERY_TIMEOUT):
                    out, err = await proc.communicate(sql.encode("utf-8"))
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        if proc.returncode != 0:
            text = redact(err.decode("utf-8", "replace").strip(), [self.server.password])
            m = _ERRNO.search(text)
            raise ClientError(text[-2000:], int(m.group(1)) if m else None)
        return out.decode("utf-8", "replace")

    async def rows(self, sql: str, database: str | None = None) -> list[list[str | None]]:
        """The rows of the last result set of `sql`, fields decoded (NULL -> None)."""
        out = await self._run(sql, database)
        return [[_decode_batch(f) for f in line.split("\t")] for line in out.splitlines()]

    async def json_rows(self, sql: str, database: str | None = None) -> list[Any]:
        """Rows of a query selecting one JSON value per row (read raw: JSON escapes itself)."""
        out = await self._run(sql, database, "--raw")
        return [json.loads(line) for line in out.splitlines() if line]

    async def execute(self, sql: str, database: str | None = None) -> None:
        await self._run(sql, database)


def ident(name: str) -> str:
    """A quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def lit(text: str) -> str:
    """A string literal that means the same whatever sql_mode (NO_BACKSLASH_ESCAPES, ...) is."""
    return f"CONVERT(X'{text.encode('utf-8').hex()}' USING utf8mb4)"


# ---------------------------------------------------------------------------------------------
# The schema fingerprint (information_schema, no database names)

_SCHEMA_QUERIES: dict[str, str] = {
    "tables": "SELECT JSON_ARRAY(TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION) "
    "FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "columns": "SELECT JSON_ARRAY(TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, "
    "IS_NULLABLE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, "
    "GENERATION_EXPRESSION) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, ORDINAL_POSITION",
    "indexes": "SELECT JSON_ARRAY(TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, "
    "NON_UNIQUE, SUB_PART, INDEX_TYPE) FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    "constraints": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE) "
    "FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE",
    "foreign_keys": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, REFERENCED_TABLE_NAME, "
    "UPDATE_RULE, DELETE_RULE) FROM information_schema.REFERENTIAL_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = {db} ORDER BY TABLE_NAME, CONSTRAINT_NAME",
    "views": "SELECT JSON_ARRAY(TABLE_NAME, CHECK_OPTION, IS_UPDATABLE, SECURITY_TYPE) "
    "FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "routines": "SELECT JSON_ARRAY(ROUTINE_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, "
    "ROUTINE_DEFINITION, IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE) "
    "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} "
    "ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
    "triggers": "SELECT JSON_ARRAY(TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, "
    "EVENT_MANIPULATION, ACTION_ORDER, ACTION_STATEMENT) FROM information_schema.TRIGGERS "
    "WHERE TRIGGER_SCHEMA = {db} ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME",
    "events": "SELECT JSON_ARRAY(EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, "
    "INTERVAL_FIELD) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db} "
    "ORDER BY EVENT_NAME",
}
# The column holding the table name in each section (to leave excluded tables out).
_TABLE_COLUMN = {
    "tables": 0,
    "columns": 0,
    "indexes": 0,
    "constraints": 0,
    "foreign_keys": 0,
    "views": 0,
    "triggers": 1,
}


@dataclass
class SchemaInfo:
    """The schema of one database as plain rows, per section."""

    sections: dict[str, list[list[Any]]]

    def fingerprint(self) -> dict[str, Any]:
        """{"digest": sha256, "parts": {section: sha256}} (the shape drd.strategies.statistics
        uses for every kind)."""
        parts = {name: digest(self.sections[name]) for name in sorted(self.sections)}
        return {"digest": digest(sorted(parts.items())), "parts": parts}

    def tables(self) -> dict[str, str]:
        """{table name: TABLE_TYPE} (BASE TABLE, VIEW, SEQUENCE, SYSTEM VERSIONED)."""
        return {str(row[0]): str(row[1]) for row in self.sections["tables"]}


async def schema_info(client: Client, database: str, exclude: Sequence[str] = ()) -> SchemaInfo:
    # One client process for all sections: the queries' results are separated by a marker row.
    marker = f"drd-section-{secrets.token_hex(4)}"
    script = []
    for name, query in _SCHEMA_QUERIES.items():
        script.append(f"SELECT JSON_ARRAY({lit(marker)}, {lit(name)});")
        script.append(query.format(db=lit(database)) + ";")
    rows = await client.json_rows("\n".join(script))
    sections: dict[str, list[list[Any]]] = {name: [] for name in _SCHEMA_QUERIES}
    current: str | None = None
    for row in rows:
        if len(row) == 2 and row[0] == marker:
            current = str(row[1])
            continue
        assert current is not None
        sections[current].append(row)
    skip = set(exclude)
    if skip:
        for name, column in _TABLE_COLUMN.items():
            sections[name] = [r for r in sections[name] if r[column] not in skip]
    return SchemaInfo(sections)


def fingerprint_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The schema parts that differ between two fingerprints ([] when equal)."""
    if expected.get("digest") == actual.get("digest"):
        return []
    want, got = expected.get("parts") or {}, actual.get("parts") or {}
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k)) or ["digest"]


async def row_counts(client: Client, database: str, tables: Sequence[str]) -> dict[str, int]:
    """Exact COUNT(*) of each table (one client process), keyed by the plain table name."""
    if not tables:
        return {}
    parts = [
        f"SELECT JSON_ARRAY({lit(t)}, (SELECT COUNT(*) FROM {ident(database)}.{ident(t)}));"
        for t in tables
    ]
    return {str(r[0]): int(r[1]) for r in await client.json_rows("\n".join(parts))}


async def database_exists(client: Client, name: str) -> bool:
    rows = await client.rows(
        f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit(name)}"
    )
    return rows[0][0] == "1"


# ---------------------------------------------------------------------------------------------
# Counting rows in the dump as it streams by


class _RowCounter:
    """Counts the rows of mysqldump's data statements, `INSERT INTO `t` VALUES (..),(..);`.

    A data statement starts at the beginning of a line while the client delimiter is `;` (the
    dump switches to `;;` around trigger, routine and event bodies, which may contain INSERTs
    of their own). Inside the statement, top-level parentheses are rows; string literals
    (backslash escapes and doubled quotes) are skipped with regex jumps, so the cost is per
    token, not per byte. Memory: the current line's first bytes only.
    """

    _LINE_PREFIX = b"INSERT INTO `"
    _DELIMITER = b"DELIMITER "
    _IN_VALUES = re.compile(rb"[()';]")
    _IN_STRING = re.compile(rb"['\\]")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._state = "line_start"
        self._head = bytearray()  # start of the current line (state line_start)
        self._name = bytearray()
        self._table = ""
        self._depth = 0
        self._delimiter = b";"
        self._skip_next = False  # a backslash ended the previous chunk inside a string
        self._quote_pending = False  # a quote ended the previous chunk inside a string
        self._tick_pending = False  # a backtick ended the previous chunk inside the name

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == "line_start":
                pos = self._line_start(data, pos)
            elif state == "skip_line":
                nl = data.find(b"\n", pos)
                if nl < 0:
                    return
                pos = nl + 1
                self._state = "line_start"
            elif state == "delimiter":
                pos = self._delimiter_line(data, pos)
            elif state == "name":
                pos = self._read_name(data, pos)
            elif state == "values":
                pos = self._values(data, pos)
            else:  # string
                pos = self._string(data, pos)

    def _line_start(self, data: bytes, pos: int) -> int:
        """Collect a line's first bytes (up to the INSERT prefix's length) and decide."""
        want = len(self._LINE_PREFIX)
        stop = min(len(data), pos + want - len(self._head))
        nl = data.find(b"\n", pos, stop)
        end = nl if nl >= 0 else stop
        self._head += data[pos:end]
        if nl < 0 and len(self._head) < want:
            return end  # the chunk ended: decide with the next one
        head = bytes(self._head)
        self._head.clear()
        if head == self._LINE_PREFIX and self._delimiter == b";":
            self._name.clear()
            self._state = "name"
            return end
        if head.startswith(self._DELIMITER):
            if nl >= 0:
                self._delimiter = head[len(self._DELIMITER) :].strip() or b";"
                return nl + 1
            self._head += head[len(self._DELIMITER) :]
            self._state = "delimiter"
            return end
        if nl >= 0:
            return nl + 1
        self._state = "skip_line"
        return end

    def _delimiter_line(self, data: bytes, pos: int) -> int:
        nl = data.find(b"\n", pos)
        self._head += data[pos : len(data) if nl < 0 else nl]
        if len(self._head) > 256:  # not a delimiter anyone uses: keep the current one
            self._head.clear()
            self._state = "skip_line"
            return len(data) if nl < 0 else nl
        if nl < 0:
            return len(data)
        self._delimiter = bytes(self._head).strip() or b";"
        self._head.clear()
        self._state = "line_start"
        return nl + 1

    def _read_name(self, data: bytes, pos: int) -> int:
        """The backquoted table name (a doubled backtick is a literal one)."""
        n = len(data)
        while pos < n:
            if self._tick_pending:
                self._tick_pending = False
                if data[pos : pos + 1] == b"`":
                    self._name += b"`"
                    pos += 1
                    continue
                self._finish_name()
                return pos
            tick = data.find(b"`", pos)
            if tick < 0:
                self._name += data[pos:]
                return n
            self._name += data[pos:tick]
            if tick + 1 >= n:
                self._tick_pending = True  # a doubled backtick or the end: the next chunk says
                return n
            if data[tick + 1 : tick + 2] == b"`":
                self._name += b"`"
                pos = tick + 2
                continue
            self._finish_name()
            return tick + 1
        return pos

    def _finish_name(self) -> None:
        self._table = self._name.decode("utf-8", "replace")
        self.counts.setdefault(self._table, 0)
        self._depth = 0
        self._state = "values"

    def _values(self, data: bytes, pos: int) -> int:
        search = self._IN_VALUES.search
        while True:
            m = search(data, pos)
            if m is None:
                return len(data)
            c = m.group()
            pos = m.end()
            if c == b"'":
                self._state = "string"
                return pos
            if c == b"(":
                if self._depth == 0:
                    self.counts[self._table] += 1
                self._depth += 1
            elif c == b")":
                self._depth = max(0, self._depth - 1)
            elif self._depth == 0:  # ';' ends the statement
                self._state = "skip_line"
                return pos

    def _string(self, data: bytes, pos: int) -> int:
        n = len(data)
        if self._skip_next:
            self._skip_next = False
            pos += 1
        if self._quote_pending:
            self._quote_pending = False
            if pos < n and data[pos : pos + 1] == b"'":
                pos += 1  # a doubled quote: still inside the string
            else:
                self._state = "values"
                return pos
        search = self._IN_STRING.search
        while pos < n:
            m = search(data, pos)
            if m is None:
                return n
            if m.group() == b"\\":
                if m.end() >= n:
                    self._skip_next = True
                    return n
                pos = m.end() + 1
                continue
            if m.end() >= n:
                self._quote_pending = True
                return n
            if data[m.end() : m.end() + 1] == b"'":
                pos = m.end() + 1
                continue
            self._state = "values"
            return m.end()
        return pos


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
        client = Client(server, client_tool)
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
        counter = _RowCounter()
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
                ident(n): counter.counts.get(n, 0) for n, kind in tables.items() if kind != _VIEW
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
        client = Client(server, tool)
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
    room = _MAX_IDENT - len(STAGING_INFIX) - 8
    return f"{target[:room]}{STAGING_INFIX}{secrets.token_hex(4)}"


def parse_target(target: str) -> tuple[Server, str]:
    """`mysql://USER@HOST[:PORT]/DATABASE[?password=env:VAR|credential:NAME&socket=PATH]`."""
    parts = urlsplit(target)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError("expected mysql://USER@HOST[:PORT]/DATABASE[?password=env:VAR]")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError("invalid port") from None
    if parts.password is not None:
        raise ValueError(
            "never put a password in the URL: use ?password=env:VAR or credential:NAME"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError("it must name the database to create (mysql://USER@HOST/DATABASE)")
    if len(database) > _MAX_IDENT:
        raise ValueError(f"database name longer than {_MAX_IDENT} characters")
    params = dict(parse_qsl(parts.query))
    unknown = sorted(set(params) - {"password", "socket"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} (password, socket)")
    password, env_name = None, None
    if "password" in params:
        ref = SecretRef.parse(params["password"])
        password = ref.read("restore target password")
        env_name = ref.name if ref.source == "env" else None
    server = Server(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "root"),
        socket=params.get("socket"),
        password=password,
        password_env=env_name,
    )
    return server, database


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
    tables = [name for name, kind in info.tables().items() if kind != _VIEW]
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


# ---------------------------------------------------------------------------------------------
# Statistics for restore tests (the same functions on the source and on the restored copy)


@dataclass
class Statistics:
    row_counts: dict[str, int]  # keyed by the quoted table name, like postgres_stats
    schema: dict[str, Any]

    @property
    def plain_counts(self) -> dict[str, int]:
        return {name[1:-1].replace("``", "`"): n for name, n in self.row_counts.items()}

    def compare(self, metadata: Mapping[str, Any]) -> list[str]:
        """What differs from the statistics recorded at dump time ([] when all matches)."""
        recorded = metadata.get("statistics") or {}
        problems = []
        schema = recorded.get("schema")
        if isinstance(schema, dict) and "digest" in schema:
            changed = fingerprint_differences(schema, self.schema)
            if changed:
                problems.append(f"the schema differs in: {', '.join(changed)}")
        counts = recorded.get("row_counts")
        if isinstance(counts, dict) and "error" not in counts:
            for name in sorted(set(counts) | set(self.row_counts)):
                want, got = counts.get(name), self.row_counts.get(name)
                if want != got:
                    problems.append(f"table {name}: {got} rows, the dump had {want}")
        return problems


async def collect_statistics(client: Client, database: str) -> Statistics:
    info = await schema_info(client, database)
    tables = [name for name, kind in info.tables().items() if kind != _VIEW]
    counts = await row_counts(client, database, tables)
    return Statistics({ident(t): n for t, n in counts.items()}, info.fingerprint())


async def capture_queries(
    client: Client, database: str, queries: Mapping[str, str]
) -> dict[str, Any]:
    """id -> {"value": ...} or {"error": ...}, each query in a read-only consistent snapshot.

    Values are the client's text form (drd.strategies.statistics.result_value); NULL and the
    string 'NULL' read the same, on both sides alike."""
    out: dict[str, Any] = {}
    for key, sql in queries.items():
        try:
            body = sql.rstrip().rstrip(";")
            script = f"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n{body};\nCOMMIT;"
            rows = await client.rows(script, database)
            out[key] = {"value": result_value(rows)}
        except (ClientError, ValueError) as exc:
            out[key] = {"error": error_text(exc)}
    return out
