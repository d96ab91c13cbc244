"""What every scratch environment is, and which module opens each scratch kind.

A scratch kind's module (ephemeral_postgres, postgres_server, tempdir, cloudsql_env,
ephemeral_mariadb, mysql_server, gcs_scratch) has an
`open_env(spec, request)`: an async context manager that sets the environment up, yields its
ScratchEnv and destroys it however the block ends. `OPENERS` says which module that is for each
kind; drd.verify.scratch.environment.open_scratch picks it. The modules are imported only when a
test uses their kind (a cloud SDK is not loaded for nothing), and none imports another's: they
all import this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class ScratchEnv:
    """One scratch environment, set up for one restore test."""

    #: the scratch kind (restore_test.scratch `kind:`)
    kind: str
    #: what Strategy.restore() restores into: a DSN (postgres), a mysql:// URL or a path
    #: (sqlite, files)
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
    #: more environment for a command check (a MySQL copy: where it is, how to log in)
    env: dict[str, str] = field(default_factory=dict, repr=False)

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
        env.update(self.env)
        return env


@dataclass(frozen=True)
class ScratchRequest:
    """What a restore test asks of a scratch environment, besides the plan's spec."""

    #: the kind of the source the backup is of (its strategy says what the copy is)
    source_kind: str
    #: the backup's strategy metadata (versions, database name, format)
    metadata: Mapping[str, Any]
    #: where the leftover registry lives (drd.verify.scratch.registry)
    state_dir: Path
    #: which source this is for, in the registry's records
    label: str
    #: the source's SourceOptions, for kinds that act with its credentials (cloudsql)
    source: Any = None


#: sets up one scratch kind's environment for a restore test and tears it down afterwards
Opener = Callable[[ScratchSpec, ScratchRequest], AbstractAsyncContextManager[ScratchEnv]]

#: scratch kind -> the module whose `open_env` (an Opener) provides it
OPENERS: dict[str, str] = {
    "ephemeral-postgres": "drd.verify.scratch.ephemeral_postgres",
    "postgres-server": "drd.verify.scratch.postgres_server",
    "tempdir": "drd.verify.scratch.tempdir",
    "cloudsql-scratch-project": "drd.verify.scratch.cloudsql_env",
    "ephemeral-mariadb": "drd.verify.scratch.ephemeral_mariadb",
    "mysql-server": "drd.verify.scratch.mysql_server",
    "gcs-scratch-bucket": "drd.verify.scratch.gcs_scratch",
}


def opener(kind: str) -> Opener:
    """The Opener of a scratch kind (importing its module)."""
    open_env: Opener = importlib.import_module(OPENERS[kind]).open_env
    return open_env
