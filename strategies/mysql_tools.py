"""Finding the MySQL / MariaDB client tools: mariadb-dump or mysqldump (role "dump"), mariadb
or mysql (role "client"), in a plan's client_bin_dir or on PATH, MariaDB's names first, with
the version each reports (recorded in the backup's metadata and the restore's details)."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from typing import Literal

from drd.strategies.mysql_client import client_env


@dataclass(frozen=True)
class Tool:
    """A client program found, and what its --version said."""

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
