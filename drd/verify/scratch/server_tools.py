"""Running the tools of a throwaway database server (initdb, pg_ctl, mariadb-install-db, ...)
for ephemeral_postgres and ephemeral_mariadb: their output goes to a log file in the server's
directory, never to a pipe (a server a tool starts would inherit the pipe and hold it open),
with a minimal environment and a time limit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from drd.errors import RestoreError

HOST = "127.0.0.1"
#: what a server tool runs with: nothing of drd's environment (no secret), C locale
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "LANG": "C"}


def append(path: Path) -> BinaryIO:
    return open(path, "ab")


def tail(path: Path, limit: int = 2000) -> str:
    """The end of a log file, for an error message."""
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


async def run_tool(
    argv: Sequence[str], log_path: Path, *, kind: str, tool: str, limit: float
) -> None:
    """Run a server tool, its output appended to `log_path`; RestoreError (naming the scratch
    `kind` and the `tool`) if it cannot start, fails or outlives `limit` seconds."""
    with append(log_path) as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=TOOL_ENV,
            )
        except OSError as exc:
            raise RestoreError(f"{kind}: cannot run {tool}: {exc}") from None
    try:
        async with asyncio.timeout(limit):
            returncode = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if returncode != 0:
        raise RestoreError(f"{kind}: {tool} exited with status {returncode}: {tail(log_path)}")


def free_port() -> int:
    """A loopback port free now (a server that loses the race is started on another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
