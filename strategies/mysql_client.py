"""MySQL / MariaDB connections: where a server is and who logs in (Server, a restore target
URL), the private `--defaults-file` that carries the password, the client's environment, and
running SQL through the mariadb/mysql command-line client (Client).

The password never goes on argv (where `ps` shows it) nor into the environment of a long-lived
process: it is written 0600 into a 0700 temporary directory that is removed right after the
child exits. MYSQL_PWD and the client's other variables are removed from every child's
environment, so that only the plan's settings apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from drd.secret_source import child_environment
from drd.strategies._secrets import SecretRef
from drd.strategies._subprocess import redact

MAX_IDENT = 64  # characters, for database and table names
_CLIENT_ENV_DROP = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT")
_QUERY_TIMEOUT = 600.0


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
        if self.socket:
            # The client only takes the socket for host "localhost"; with any other host it
            # would connect over TCP, to whatever server listens there.
            values = {"host": "localhost", "user": self.user, "socket": self.socket}
            values["protocol"] = "SOCKET"
        else:
            values = {"host": self.host, "port": str(self.port), "user": self.user}
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


class ClientError(Exception):
    """The client reported an SQL error; `errno` is the server's error number if known."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


_ERRNO = re.compile(r"ERROR (\d+)")
_ERROR_LINE = re.compile(r"^ERROR (\d+)(?: \((\w+)\))?(?: at line (\d+))?: ?(.*)$")
_TOOL_LINE = re.compile(r"^(?:mariadb|mysql|mariadb-dump|mysqldump)(?: \S+)?: ")
# A quoted part starts where no word goes on (not the apostrophe of "Couldn't").
_QUOTED = re.compile(r"(?<!\w)'(?:[^'\\]|\\.|'')*'|(?<!\w)\"(?:[^\"\\]|\\.|\"\")*\"")
# Errors whose quoted parts are names (of users, databases, tables, columns, routines, keys,
# privileges) or server limits, never values: their message is kept as the server wrote it.
_NAMES_ONLY = frozenset(
    {
        1005,
        1007,
        1008,
        1044,
        1045,
        1046,
        1049,
        1050,
        1051,
        1054,
        1060,
        1061,
        1068,
        1091,
        1109,
        1113,
        1117,
        1118,
        1136,
        1142,
        1143,
        1146,
        1149,
        1153,
        1193,
        1215,
        1227,
        1264,
        1301,
        1305,
        1356,
        1359,
        1370,
        1396,
        1406,
        1419,
        1449,
        1451,
        1452,
        1462,
        1630,
        1792,
        2002,
        2003,
        2005,
        2006,
        2013,
        2026,
        4047,
    }
)
_MAX_ERROR = 2000


def safe_error_text(text: str) -> str:
    """What the client or dump tool said, without row data: only its `ERROR ...` lines and its
    own one-line complaints (the statement echo the client prints on an error, which may hold
    whole rows, is dropped), and messages that can quote values (a duplicate key, a syntax
    error near some text, an invalid string) cut at their first quote."""
    kept: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        m = _ERROR_LINE.match(line)
        if m is not None:
            errno, message = int(m.group(1)), m.group(4)
            if errno not in _NAMES_ONLY and ("'" in message or '"' in message):
                # A value may hold quotes of its own (O'Brien): cut from the first one on.
                cut = min(i for i in (message.find("'"), message.find('"')) if i >= 0)
                message = message[:cut] + "'...' (quoted values cut)"
            head = f"ERROR {errno}" + (f" ({m.group(2)})" if m.group(2) else "")
            if m.group(3):
                head += f" at line {m.group(3)}"
            kept.append(f"{head}: {message[:300]}")
        elif _TOOL_LINE.match(line):
            kept.append(_QUOTED.sub("'...'", line)[:300])
    out = "; ".join(dict.fromkeys(kept))
    return out[-_MAX_ERROR:] if out else "(no error message)"


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

    def __init__(self, server: Server, program: str) -> None:
        self.server = server
        #: the mariadb/mysql client's path (drd.strategies.mysql_tools.find_tool)
        self.program = program

    def _argv(self, cnf: str, database: str | None, *extra: str) -> list[str]:
        return [
            self.program,
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
            raise ClientError(safe_error_text(text), int(m.group(1)) if m else None)
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


def unquote_ident(quoted: str) -> str:
    """The name an ident() stands for."""
    if len(quoted) >= 2 and quoted[0] == quoted[-1] == "`":
        return quoted[1:-1].replace("``", "`")
    return quoted


def lit(text: str) -> str:
    """A string literal that means the same whatever sql_mode (NO_BACKSLASH_ESCAPES, ...) is."""
    return f"CONVERT(X'{text.encode('utf-8').hex()}' USING utf8mb4)"


async def database_exists(client: Client, name: str) -> bool:
    rows = await client.rows(
        f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit(name)}"
    )
    return rows[0][0] == "1"


def parse_server_url(url: str, *, read_secret: bool = True) -> tuple[Server, str]:
    """`mysql://USER@HOST[:PORT][/DATABASE][?password=env:VAR|credential:NAME&socket=PATH]`:
    the server and the database ("" when the URL names none). With read_secret=False the
    password reference is checked but not read (drd validate, away from the secrets)."""
    parts = urlsplit(url)
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
    if "/" in database:
        raise ValueError("the path is one database name")
    if len(database) > MAX_IDENT:
        raise ValueError(f"database name longer than {MAX_IDENT} characters")
    params = dict(parse_qsl(parts.query))
    unknown = sorted(set(params) - {"password", "socket"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} (password, socket)")
    password, env_name = None, None
    if "password" in params:
        ref = SecretRef.parse(params["password"])
        if read_secret:
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


def with_database(url: str, database: str) -> str:
    """`url` naming `database` instead of the one it names (if any)."""
    from urllib.parse import quote, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def parse_target(target: str) -> tuple[Server, str]:
    """`mysql://USER@HOST[:PORT]/DATABASE[?password=env:VAR|credential:NAME&socket=PATH]`."""
    server, database = parse_server_url(target)
    if not database:
        raise ValueError("it must name the database to create (mysql://USER@HOST/DATABASE)")
    return server, database
