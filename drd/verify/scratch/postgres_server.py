"""A scratch database on a dedicated PostgreSQL server, for one restore test.

The plan names the server's maintenance database (`dsn`); the restore creates
`drd_scratch_<id>` there (through its own staging database, `drd_scratch_<id>_drd_restoring_...`)
and afterwards both are dropped WITH (FORCE), which also ends any session a check left open.
The registry record keeps the DSN without its password; the sweep after a crash uses the
configured DSN that matches it, so a password given inline still works.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DB_PREFIX, new_id, register
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

_STAGING_INFIX = "_drd_restoring_"  # drd.strategies.postgres.STAGING_INFIX
_CONNECT_TIMEOUT = "10"
_DROP_TIMEOUT = 60.0


def _params(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}


def public_dsn(dsn: str) -> str:
    """The DSN without its password (for records, reports and logs)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        "", **{k: v for k, v in _params(dsn).items() if k not in ("password", "sslpassword")}
    )


def with_dbname(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    params = _params(dsn)
    params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
    return make_conninfo("", **{**params, "dbname": dbname})


@dataclass(frozen=True)
class ScratchDatabase:
    name: str
    admin_dsn: str = field(repr=False)

    @property
    def dsn(self) -> str:
        """The scratch database's DSN (with the password, if the configured one has it)."""
        return with_dbname(self.admin_dsn, self.name)

    def describe(self) -> str:
        return f"scratch database {self.name} on {public_dsn(self.admin_dsn)}"


@contextlib.asynccontextmanager
async def scratch_database(
    state_dir: Path, admin_dsn: str, *, label: str = ""
) -> AsyncIterator[ScratchDatabase]:
    """A database name reserved for one restore test; dropped afterwards however it ends."""
    resource_id = new_id()
    name = f"{DB_PREFIX}{resource_id}"
    registration = register(
        state_dir,
        resource_id,
        "postgres-server",
        dsn=public_dsn(admin_dsn),
        database=name,
        label=label,
    )
    try:
        yield ScratchDatabase(name, admin_dsn)
    finally:
        try:
            await run_to_completion(_drop(admin_dsn, name))
        except Exception as exc:
            log.error("could not drop the scratch database %s (at next start): %s", name, exc)
            registration.abandon()
        else:
            registration.release()


async def destroy(record: Mapping[str, Any], known_dsns: Sequence[str] = ()) -> None:
    """Drop the scratch database a registry record describes (and its staging leftovers)."""
    stored = str(record["dsn"])
    dsn = next((d for d in known_dsns if public_dsn(d) == stored), stored)
    await _drop(dsn, str(record["database"]))


async def _drop(admin_dsn: str, name: str) -> None:
    import asyncio

    import psycopg
    from psycopg import sql

    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name}: not a drd scratch database")
    async with asyncio.timeout(_DROP_TIMEOUT):
        async with await psycopg.AsyncConnection.connect(
            with_dbname(admin_dsn, _params(admin_dsn).get("dbname") or "postgres"),
            autocommit=True,
        ) as db:
            pattern = _like_escape(name + _STAGING_INFIX) + "%"
            cur = await db.execute(
                "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                (name, pattern),
            )
            for (found,) in await cur.fetchall():
                await db.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(found))
                )
                log.info("dropped scratch database %s", found)


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The postgres-server scratch kind: the copy restored into a scratch database of its own
    on the plan's server."""
    assert spec.dsn is not None
    async with scratch_database(request.state_dir, spec.dsn, label=request.label) as database:
        yield ScratchEnv(
            kind=spec.kind,
            target=database.dsn,
            restore_options={"owners": "drop"},
            description=database.describe(),
            resource=database.name,
            dsn=database.dsn,
            server_major=await server_major(spec.dsn),
        )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def server_major(admin_dsn: str) -> int:
    """The scratch server's major version (schema fingerprints compare within one major)."""
    import psycopg

    from drd.errors import RestoreError

    try:
        async with await psycopg.AsyncConnection.connect(
            with_dbname(admin_dsn, _params(admin_dsn).get("dbname") or "postgres"),
            autocommit=True,
        ) as db:
            cur = await db.execute("SELECT current_setting('server_version_num')::int")
            row = await cur.fetchone()
    except psycopg.Error as exc:
        password = _params(admin_dsn).get("password")
        text = str(exc).replace(password, "***") if password else str(exc)
        raise RestoreError(f"scratch server {public_dsn(admin_dsn)}: {text}") from None
    assert row is not None
    return int(row[0]) // 10000
