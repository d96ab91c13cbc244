"""The restore side's work on the target server: the roles a backup needs, pg_restore's
session, the staging database, the database's own properties as pg_dump --create applies
them, and the rename into place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from drd.errors import RestoreError, TargetExists
from drd.strategies._subprocess import redact
from drd.strategies.postgres_conn import _TOAST_SETTING, ToastCompression, _Conn
from drd.strategies.postgres_source import _UNDROPPABLE_USES, _codec
from drd.strategies.postgres_toc import (
    DatabaseEntries,
    describe,
    quote_ident,
    retarget,
    split_statements,
)

# One logger for the postgres strategy, whichever of its modules speaks.
log = logging.getLogger("drd.strategies.postgres")


def needed_roles(metadata: Mapping[str, Any], *, keep_owners: bool) -> dict[str, list[str]]:
    """The roles a restore of this backup needs on the target, with what for. With owners and
    privileges dropped only policy and user-mapping roles are needed; a backup of an older drd
    (no `role_uses`) needs all its `roles` when they are kept, none otherwise."""
    uses = metadata.get("role_uses")
    if isinstance(uses, Mapping):
        return {
            str(role): [str(u) for u in used]
            for role, used in uses.items()
            if keep_owners or _UNDROPPABLE_USES.intersection(used)
        }
    if not keep_owners:
        return {}
    return {str(role): [] for role in metadata.get("roles") or []}


def _roles_text(missing: list[str], needed: Mapping[str, list[str]]) -> str:
    def one(role: str) -> str:
        uses = needed.get(role) or []
        return f"{role} ({', '.join(uses)})" if uses else role

    noun = "role" if len(missing) == 1 else "roles"
    return f"{noun} {', '.join(one(r) for r in missing)}"


async def _create_roles(db: Any, roles: list[str], where: str) -> list[str]:
    """CREATE ROLE ... NOLOGIN for each, in one transaction (all or none)."""
    import psycopg
    from psycopg import sql

    reserved = [r for r in roles if r.startswith("pg_")]
    if reserved:
        raise RestoreError(
            f"{where}: roles {', '.join(reserved)} do not exist on the target server and cannot "
            "be created (pg_ names are reserved for the server's predefined roles: restore into "
            "a server of the backup's major version or newer)"
        )
    try:
        async with db.transaction():
            for role in roles:
                await db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        raise RestoreError(f"{where}: cannot create the missing roles: {exc}") from None
    log.warning("%s: created the missing roles (NOLOGIN): %s", where, ", ".join(roles))
    return list(roles)


async def _restore_session(
    db: Any, conn: _Conn, toast_compression: ToastCompression
) -> tuple[dict[str, str], str]:
    """pg_restore's environment, and the TOAST compression its session will use."""
    env = conn.env()
    options = env.get("PGOPTIONS", "")
    if toast_compression == "server":
        return env, "server default"
    if _TOAST_SETTING in options:
        return env, "as the connection options set"
    cur = await db.execute("SELECT enumvals FROM pg_settings WHERE name = %s", (_TOAST_SETTING,))
    row = await cur.fetchone()
    if row is None or "lz4" not in (row[0] or []):
        # PostgreSQL < 14 has only pglz; a server built without lz4 does not list it.
        return env, "server default (lz4 not available)"
    env["PGOPTIONS"] = f"{options} -c {_TOAST_SETTING}=lz4".strip()
    return env, "lz4"


async def _database_exists(db: Any, name: str) -> bool:
    cur = await db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


async def _missing_roles(db: Any, roles: list[str]) -> list[str]:
    if not roles:
        return []
    cur = await db.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))
    present = {r[0] for r in await cur.fetchall()}
    return [r for r in roles if r not in present]


async def _create_staging(db: Any, staging: str, metadata: Mapping[str, Any]) -> str:
    """Create the staging database like the source's; returns how the locale was chosen."""
    import psycopg
    from psycopg import sql

    base = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(staging))
    encoding = metadata.get("encoding")
    if not encoding:
        await db.execute(base)
        return "server default"
    parts = [base, sql.SQL("ENCODING {}").format(sql.Literal(encoding))]
    exact = [*parts]
    if metadata.get("lc_collate"):
        exact.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(metadata["lc_collate"])))
    if metadata.get("lc_ctype"):
        exact.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(metadata["lc_ctype"])))
    if metadata.get("locale_provider") == "icu" and metadata.get("icu_locale"):
        exact.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(metadata["icu_locale"]))
        )
    try:
        await db.execute(sql.SQL(" ").join(exact))
        return "as the source"
    except psycopg.Error as exc:
        # The source's locale may not exist on this machine: C works with every encoding.
        log.warning(
            "creating %r with the source's locale failed (%s); using LOCALE 'C'", staging, exc
        )
    await db.execute(sql.SQL(" ").join([*parts, sql.SQL("LOCALE 'C'")]))
    return "C (the source's locale is not available here)"


async def _finish_staging(
    conn: _Conn,
    staging: str,
    entries: DatabaseEntries,
    *,
    keep_owners: bool,
    where: str,
    secret: list[str | None],
) -> tuple[int, list[str], list[str]]:
    """Count the tables restored and apply the database-level entries of the archive, in one
    session connected to the staging database (module docstring). Returns (tables, what was
    applied, what was left out on purpose); RestoreError naming every statement that failed."""
    import psycopg
    from psycopg import sql

    from drd.strategies.statistics import error_text

    steps, skipped = database_statements(entries, staging, keep_owners=keep_owners)
    applied: list[str] = []
    failed: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        conn.with_dbname(staging), autocommit=True
    ) as db:
        await db.execute("SET jit = off")
        cur = await db.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
            "'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"
        )
        row = await cur.fetchone()
        if steps:
            # pg_dump wrote the statements for the archive's encoding and string syntax.
            if entries.encoding:
                await db.execute(
                    sql.SQL("SET client_encoding TO {}").format(sql.Literal(entries.encoding))
                )
            std = "on" if entries.std_strings else "off"
            await db.execute(f"SET standard_conforming_strings TO {std}")
        for label, statement in steps:
            try:
                await db.execute(statement)
            except psycopg.Error as exc:
                failed.append(f"{label}: {redact(error_text(exc), secret)}")
            else:
                applied.append(label)
    if failed:
        raise RestoreError(
            f"{where}: {len(failed)} of the database's own properties recorded by pg_dump could "
            f"not be applied, so the restore was not completed: {'; '.join(failed)}"
        )
    return (int(row[0]) if row else 0), applied, skipped


def database_statements(
    entries: DatabaseEntries, staging: str, *, keep_owners: bool
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The statements restoring the database's own properties into `staging`, in pg_restore
    --create's order (owner, comment, security labels, properties, then the ACL), each with what
    it sets; and what `keep_owners=False` leaves out."""
    codec = _codec(entries.encoding)
    try:
        target = staging.encode(codec)
    except UnicodeError:
        target = staging.encode()
    std = entries.std_strings
    steps: list[tuple[str, bytes]] = []
    skipped: list[str] = []
    if entries.owner:
        owner = entries.owner.decode(codec, "replace")
        if keep_owners:
            statement = b"ALTER DATABASE " + quote_ident(target) + b" OWNER TO "
            steps.append(
                (f"ALTER DATABASE OWNER TO {owner}", statement + quote_ident(entries.owner))
            )
        else:
            skipped.append(f"ALTER DATABASE OWNER TO {owner}")
    groups = [entries.comments, entries.security_labels, entries.properties]
    for group in groups:
        for defn in group:
            for statement in split_statements(defn, std_strings=std):
                label = describe(statement, std_strings=std)
                if not keep_owners and label.startswith("ALTER ROLE "):
                    skipped.append(label)
                    continue
                steps.append((label, retarget(statement, entries.name, target, std_strings=std)))
    for defn in entries.acl:
        for statement in split_statements(defn, std_strings=std):
            label = describe(statement, std_strings=std)
            if keep_owners:
                steps.append((label, retarget(statement, entries.name, target, std_strings=std)))
            else:
                skipped.append(label)
    return steps, skipped


async def _promote(maintenance: str, staging: str, target: str, where: str) -> None:
    """Rename the finished staging database to the target."""
    import psycopg
    from psycopg import errors, sql

    old, new = sql.Identifier(staging), sql.Identifier(target)
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as db:
        # RENAME needs the database to be unused; an autovacuum worker may have connected.
        await db.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(old))
        for attempt in range(50):
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (staging,),
            )
            try:
                await db.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, new))
                break
            except errors.DuplicateDatabase:
                raise TargetExists(f"{where}: the database appeared during the restore") from None
            except errors.ObjectInUse:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        await db.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(new))


async def _drop_database(maintenance: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as db:
        await db.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
