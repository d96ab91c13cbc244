"""The scratch environment a restore test restores into, whatever its kind.

`open_scratch` turns a plan's ScratchSpec into a ScratchEnv: what Strategy.restore() gets as its
target (and options), where the checks find the restored copy, and the environment variables a
command check gets. An ephemeral PostgreSQL server is drd's own: the roles the backup refers to
are created there (NOLOGIN, no privileges beyond the dump's) and the copy keeps its owners and
grants, policies and user mappings, as a DR restore would. On a `postgres-server` (shared by
every test, the roles cluster-wide) databases are restored without owners and grants
(`owners="drop"`); roles that policies or user mappings name must exist there. Checks read as
the server's superuser.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drd.errors import RestoreError
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import ScratchSpec

# libpq keywords a command check gets as PG* variables (drd.verify.scratch never passes the rest).
_PG_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}
_RESERVED_DBS = {"postgres", "template0", "template1"}


@dataclass
class ScratchEnv:
    kind: str
    #: what Strategy.restore() restores into: a DSN (postgres) or a path (sqlite, files)
    target: str = field(repr=False)
    #: extra keyword arguments for Strategy.restore()
    restore_options: dict[str, Any]
    #: for reports and logs (no secrets)
    description: str
    #: the scratch resource itself: the server's or the temporary directory, the database name
    resource: str = ""
    #: the restored database (postgres), with its password
    dsn: str | None = field(default=None, repr=False)
    #: the restored file (sqlite) or tree (files)
    path: Path | None = None
    #: the restored server's major version (postgres)
    server_major: int | None = None
    #: what the environment wants known in the report (e.g. another major version was used)
    note: str = ""
    #: the environment's own checks of the restored copy, run right after the restore (a
    #: Cloud SQL scratch instance: the API's view; it may set `dsn` for the checks after it)
    after_restore: Callable[[], Awaitable[list[CheckResult]]] | None = field(
        default=None, repr=False
    )

    def command_env(self) -> dict[str, str]:
        """Where the restored copy is, for a command check (added to its environment)."""
        env = {"DRD_SCRATCH_KIND": self.kind}
        if self.dsn is not None:
            from psycopg.conninfo import conninfo_to_dict

            params = conninfo_to_dict(self.dsn)
            env.update({_PG_ENV[k]: str(v) for k, v in params.items() if k in _PG_ENV and v})
            env["DRD_RESTORED_DSN"] = self.dsn
        if self.path is not None:
            env["DRD_RESTORED_PATH"] = str(self.path)
        return env


def _database_name(metadata: Mapping[str, Any]) -> str:
    """In a server of its own the copy keeps the source database's name (checks and commands
    written for the source then work unchanged)."""
    name = str(metadata.get("database") or "")
    ok = name and name not in _RESERVED_DBS and len(name.encode()) <= 40
    return name if ok else "restored"


def _major(metadata: Mapping[str, Any]) -> int:
    num = metadata.get("server_version_num")
    if isinstance(num, int) and num >= 100000:
        return num // 10000
    version = str(metadata.get("pg_dump_version") or metadata.get("server_version") or "")
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise RestoreError("the backup does not say which PostgreSQL version it came from")
    return int(head)


@contextlib.asynccontextmanager
async def open_scratch(
    spec: ScratchSpec,
    source_kind: str,
    metadata: Mapping[str, Any],
    *,
    state_dir: Path,
    label: str,
    source: Any = None,
) -> AsyncIterator[ScratchEnv]:
    """The scratch environment for restoring a backup of `source_kind`; destroyed on exit.
    `source` (its SourceOptions) is needed by kinds that act with its credentials (cloudsql)."""
    if spec.kind == "cloudsql-scratch-project":
        from drd.verify.scratch.cloudsql_env import open_cloudsql_scratch

        async with open_cloudsql_scratch(spec, source, metadata, state_dir=state_dir) as env:
            yield env
    elif spec.kind == "ephemeral-postgres":
        from drd.verify.scratch.ephemeral_postgres import ephemeral_postgres

        major = _major(metadata)
        async with ephemeral_postgres(
            state_dir,
            major=major,
            parent=spec.dir,
            bin_dir=spec.bin_dir,
            user=spec.user,
            label=label,
        ) as server:
            dsn = server.dsn(_database_name(metadata))
            yield ScratchEnv(
                kind=spec.kind,
                target=dsn,
                restore_options={
                    "owners": "keep",
                    "create_roles": True,
                    "pg_bin_dir": str(server.bin_dir),
                },
                description=server.describe(),
                resource=str(server.root),
                dsn=dsn,
                server_major=int(server.version.split(".")[0]),
                note=server.note,
            )
    elif spec.kind == "postgres-server":
        from drd.verify.scratch.postgres_server import scratch_database, server_major

        assert spec.dsn is not None
        async with scratch_database(state_dir, spec.dsn, label=label) as database:
            yield ScratchEnv(
                kind=spec.kind,
                target=database.dsn,
                restore_options={"owners": "drop"},
                description=database.describe(),
                resource=database.name,
                dsn=database.dsn,
                server_major=await server_major(spec.dsn),
            )
    else:
        from drd.verify.scratch.tempdir import scratch_dir

        async with scratch_dir(state_dir, spec.dir, label=label) as directory:
            restored = directory / ("restored.db" if source_kind == "sqlite" else "restored")
            yield ScratchEnv(
                kind=spec.kind,
                target=str(restored),
                restore_options={},
                description=f"scratch directory {directory}",
                resource=str(directory),
                path=restored,
            )
