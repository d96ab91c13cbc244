"""What the postgres strategy reads from the source besides the dump: its facts (versions,
encoding, settings), the roles the dump refers to and what for, and the exported snapshot
the dump and the statistics share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from drd.errors import SourceError
from drd.strategies._subprocess import redact
from drd.strategies.base import ContentDigest
from drd.strategies.postgres_toc import (
    TocError,
    TocScanner,
)

# One logger for the postgres strategy, whichever of its modules speaks.
log = logging.getLogger("drd.strategies.postgres")


_FACTS_SQL = """
SELECT current_database(),
       current_setting('server_version'),
       current_setting('server_version_num')::int,
       pg_encoding_to_char(d.encoding),
       d.datcollate,
       d.datctype,
       pg_get_userbyid(d.datdba),
       shobj_description(d.oid, 'pg_database')
FROM pg_database d
WHERE d.datname = current_database()
"""

# Every role the dump refers to, with what for: owners, ACL grantees and policy roles of this
# database's objects (pg_shdepend rows of this database), user mappings and default privileges
# (by their catalog), the database's own owner and ACL (shared pg_shdepend rows of its
# pg_database entry), per-role settings in this database, and the bootstrap superuser (pinned:
# it owns objects without pg_shdepend rows).
_ROLES_SQL = """
WITH db AS (SELECT oid, datdba FROM pg_catalog.pg_database WHERE datname = current_database()),
uses AS (
    SELECT d.refobjid AS role,
           CASE
               WHEN d.classid = 'pg_catalog.pg_database'::regclass AND d.deptype = 'o'
                   THEN 'database owner'
               WHEN d.classid = 'pg_catalog.pg_database'::regclass THEN 'database privileges'
               WHEN d.classid = 'pg_catalog.pg_user_mapping'::regclass THEN 'user mapping'
               WHEN d.classid = 'pg_catalog.pg_default_acl'::regclass THEN 'default privileges'
               WHEN d.deptype = 'r' THEN 'policy'
               WHEN d.deptype = 'o' THEN 'owner'
               ELSE 'privileges'
           END AS use
    FROM pg_catalog.pg_shdepend d, db
    WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass
      AND (d.dbid = db.oid
           OR (d.dbid = 0 AND d.classid = 'pg_catalog.pg_database'::regclass
               AND d.objid = db.oid))
    UNION SELECT datdba, 'database owner' FROM db
    UNION SELECT s.setrole, 'per-database settings'
          FROM pg_catalog.pg_db_role_setting s, db
          WHERE s.setdatabase = db.oid AND s.setrole <> 0
    UNION SELECT 10, 'bootstrap superuser'
)
SELECT r.rolname, array_agg(DISTINCT u.use ORDER BY u.use)
FROM uses u JOIN pg_catalog.pg_roles r ON r.oid = u.role
GROUP BY r.rolname
ORDER BY 1
"""
#: the uses of a role that pg_restore needs it for even with --no-owner --no-privileges
_UNDROPPABLE_USES = frozenset({"policy", "user mapping"})

_SETTINGS_SQL = """
SELECT unnest(s.setconfig)
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database() AND s.setrole = 0
"""


async def _source_facts(dsn: str) -> dict[str, Any]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(_FACTS_SQL)
        row = await cur.fetchone()
        assert row is not None
        dbname, version, version_num, encoding, collate, ctype, owner, comment = row
        locale: dict[str, Any] = {"encoding": encoding, "lc_collate": collate, "lc_ctype": ctype}
        if version_num >= 150000:
            column = "datlocale" if version_num >= 170000 else "daticulocale"
            cur = await conn.execute(
                f"SELECT datlocprovider::text, {column} FROM pg_database "
                "WHERE datname = current_database()"
            )
            loc = await cur.fetchone()
            assert loc is not None
            locale["locale_provider"] = {"c": "libc", "i": "icu", "b": "builtin"}.get(
                loc[0], loc[0]
            )
            locale["icu_locale"] = loc[1]
        cur = await conn.execute(_ROLES_SQL)
        role_uses = {str(name): [str(u) for u in uses] for name, uses in await cur.fetchall()}
        cur = await conn.execute(_SETTINGS_SQL)
        settings = [r[0] for r in await cur.fetchall()]
    return {
        "database": dbname,
        "server_version": version,
        "server_version_num": version_num,
        **locale,
        "database_owner": owner,
        "database_comment": comment,
        "database_settings": settings,
        "roles": sorted(role_uses),
        "role_uses": role_uses,
    }


class _Snapshot:
    """A REPEATABLE READ READ ONLY transaction whose exported snapshot pg_dump imports, and in
    which the restore-test statistics are taken while pg_dump runs. Held open until the dump
    ended (pg_dump needs it only to start, the statistics until they are done)."""

    def __init__(self, db: Any, snapshot_id: str) -> None:
        self._db = db
        self.id = snapshot_id
        self._task: asyncio.Task[dict[str, Any]] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str, where: str, password: str | None) -> AsyncIterator[_Snapshot]:
        import psycopg

        try:
            db = await psycopg.AsyncConnection.connect(dsn)
        except psycopg.Error as exc:
            raise SourceError(
                f"{where}: pg_dump failed: cannot connect: {redact(str(exc), [password])}"
            ) from None
        snapshot: _Snapshot | None = None
        try:
            try:
                await db.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await db.set_read_only(True)
                cur = await db.execute("SELECT pg_catalog.pg_export_snapshot()")
                row = await cur.fetchone()
                assert row is not None
                # The statistics may finish long before pg_dump: stay open while idle.
                await db.execute("SET idle_in_transaction_session_timeout = 0")
            except psycopg.Error as exc:
                raise SourceError(
                    f"{where}: cannot export a snapshot for pg_dump: {redact(str(exc), [password])}"
                ) from None
            snapshot = cls(db, str(row[0]))
            yield snapshot
        finally:
            if snapshot is not None:
                await snapshot._stop()
            await db.close()

    def start_statistics(self, queries: Mapping[str, str], content: ContentDigest) -> None:
        from drd.strategies import postgres_stats

        self._task = asyncio.ensure_future(postgres_stats.collect(self._db, dict(queries), content))

    async def statistics(self) -> dict[str, Any]:
        """The statistics, or {"error": ...} if the session failed (never fails the dump)."""
        from drd.strategies.statistics import error_text

        if self._task is None:
            return {"error": "not taken"}
        try:
            return await self._task
        except Exception as exc:
            return {"error": error_text(exc)}

    async def _stop(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # Waited for, not awaited: a CancelledError raised into the dump generator while it
            # closes leaves it marked running (CPython 3.11), and a later anext() then fails.
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: its failure is the dump's business, not logged


def _toc_sequences(toc: TocScanner) -> dict[str, Any]:
    """The sequence values the archive holds, or {"error": ...} (never fails the dump)."""
    from drd.strategies.postgres_stats import sequences_from_toc

    try:
        entries = toc.finish()
        return sequences_from_toc(entries, _codec(entries.encoding))
    except TocError as exc:
        return {"error": f"cannot read the archive's table of contents: {exc}"}


# ---------------------------------------------------------------------------------------------


def _codec(encoding: str) -> str:
    """Python's codec for a PostgreSQL encoding name (UTF8, LATIN1, ...); utf-8 if unknown."""
    import codecs

    import psycopg
    from psycopg._encodings import pg2pyenc

    if not encoding:
        return "utf-8"
    try:
        codec = pg2pyenc(encoding.encode())
        codecs.lookup(codec)
    except (LookupError, psycopg.Error):
        return "utf-8"
    return codec
