"""A scratch database on a dedicated MySQL/MariaDB server, for one restore test.

The plan names the server (`url: mysql://USER@HOST[:PORT][?password=env:VAR&socket=PATH]`,
a password only by reference); the restore creates `drd_scratch_<id>` there (through its own
staging database, `drd_scratch_<id>_drd_restoring_...`) and afterwards both are dropped. The
restoring user needs CREATE, DROP and the rights the dump's objects need on `drd\\_scratch\\_%`
databases (and SET USER to keep other definers). A database named in the URL is only where
the session starts; the guard refuses one that is the source's own database (drd.config.guard).
The registry record keeps the URL as the plan gives it: it holds no secret, only where to read
it, so the sweep after a crash reaches the server the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from drd.errors import RestoreError
from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DB_PREFIX, new_id, register
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

_STAGING_INFIX = "_drd_restoring_"  # drd.strategies.mysql.STAGING_INFIX
_DROP_TIMEOUT = 120.0


async def _client(url: str) -> Any:
    from drd.strategies.mysql_client import Client, parse_server_url
    from drd.strategies.mysql_tools import find_tool

    server, _ = parse_server_url(url)
    tool = await find_tool("client")
    if tool is None:
        raise RestoreError("mysql-server: no mariadb/mysql client found")
    return Client(server, tool.path)


async def _drop(url: str, name: str) -> None:
    """Drop the scratch database `name` and any staging database of a restore into it."""
    from drd.strategies.mysql_client import ident, lit

    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name}: not a drd scratch database")
    client = await _client(url)
    pattern = _like_escape(name + _STAGING_INFIX) + "%"
    async with asyncio.timeout(_DROP_TIMEOUT):
        rows = await client.rows(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME = {lit(name)} OR SCHEMA_NAME LIKE {lit(pattern)}"
        )
        for (found,) in rows:
            assert found is not None
            await client.execute(f"DROP DATABASE IF EXISTS {ident(found)}")
            log.info("dropped scratch database %s", found)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@contextlib.asynccontextmanager
async def scratch_database(
    state_dir: Path, url: str, *, label: str = ""
) -> AsyncIterator[tuple[str, str]]:
    """(database name, its URL), reserved for one restore test; dropped afterwards however it
    ends."""
    from drd.strategies.mysql_client import with_database

    resource_id = new_id()
    name = f"{DB_PREFIX}{resource_id}"
    registration = register(
        state_dir, resource_id, "mysql-server", url=url, database=name, label=label
    )
    try:
        yield name, with_database(url, name)
    finally:
        try:
            await run_to_completion(_drop(url, name))
        except Exception as exc:
            log.error("could not drop the scratch database %s (at next start): %s", name, exc)
            registration.abandon()
        else:
            registration.release()


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    """Drop the scratch database a registry record describes (and its staging leftovers)."""
    await _drop(str(record["url"]), str(record["database"]))


def describe_url(url: str) -> str:
    from drd.strategies.mysql_client import parse_server_url

    server, _ = parse_server_url(url, read_secret=False)
    return server.describe()


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The mysql-server scratch kind: the copy restored into a scratch database of its own on
    the plan's server."""
    assert spec.url is not None
    async with scratch_database(request.state_dir, spec.url, label=request.label) as (name, url):
        yield ScratchEnv(
            kind=spec.kind,
            target=url,
            restore_options={},
            description=f"scratch database {name} on {describe_url(spec.url)}",
            resource=name,
            env={"DRD_RESTORED_URL": url, "DRD_RESTORED_DATABASE": name},
        )
