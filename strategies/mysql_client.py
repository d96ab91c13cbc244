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


async def database_exists(client: Client, name: str) -> bool:
    rows = await client.rows(
        f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit(name)}"
    )
    return rows[0][0] == "1"


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
    if len(database) > MAX_IDENT:
        raise ValueError(f"database name longer than {MAX_IDENT} characters")
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
