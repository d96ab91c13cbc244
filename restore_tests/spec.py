"""The plan's `restore_test:` section, beyond its schedule: where a source is restored to
(scratch) and what is checked afterwards (checks). drd.config validates and loads them; the
rules that need the plan's sources (a scratch environment must never be the source itself, a
check must fit its source's kind) live there, in `_check_restore_test_sources`.

    restore_test:
      every: 24h
      timeout: 30m
      also_random_older: true          # also test one randomly chosen older backup
      scratch:                         # by source name or by source kind; a name wins
        postgres: {kind: ephemeral-postgres}
        main-db: {kind: postgres-server, dsn: "host=10.0.0.9 dbname=postgres"}
        mysql: {kind: ephemeral-mariadb}
        orders-db: {kind: mysql-server, url: "mysql://drd@10.0.0.8?password=env:SCRATCH_PW"}
        files: {kind: tempdir, dir: /var/tmp/drd}
      checks:                          # by source name
        main-db:
          - sql: SELECT count(*) FROM billing.invoices
            expect: {at_least: 1000}
          - name: ledger-total
            sql: SELECT sum(amount) FROM billing.ledger
            expect: {matches_source: true}   # the same query's result at backup time
          - freshness: {table: billing.invoices, column: created_at, within: 2h}
          - command: [./checks/invoices.sh]  # PG* variables name the restored database
        uploads:
          - file: {path: logo.png, min_size: 1KiB}
      pitr_probe:                      # postgres-physical sources: restore tests at a probe
        tables: [invoices, app.ledger]
        queries: ["SELECT sum(amount) FROM app.ledger"]
        every: 10m

Defaults come from each source kind's strategy (Strategy.default_scratch): postgres sources get
an ephemeral server of the backup's major version, mysql sources an ephemeral server of the
source's flavour (MariaDB or MySQL), sqlite and files sources a temporary directory; cloudsql
sources have none (the plan names a scratch project).
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drd.fields import PositiveDuration, Size
from drd.fields import rule as _rule
from drd.strategies import get_strategy

SCRATCH_KINDS = (
    "ephemeral-postgres",
    "postgres-server",
    "tempdir",
    "cloudsql-scratch-project",
    "ephemeral-mariadb",
    "mysql-server",
    "gcs-scratch-bucket",
)
#: gcs-scratch-bucket: the default prefix of the tests' own prefixes in the scratch bucket
GCS_SCRATCH_PREFIX = "drd-restore-tests/"
# Which scratch kinds can hold a source kind, and which checks fit it, is the source kind's own
# business: its strategy says (Strategy.scratch_kinds, default_scratch, check_kinds).
CHECK_KINDS = ("sql", "freshness", "file", "command")


Argv = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
_CHECK_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Scratch environments


#: the optional fields each scratch kind takes
_APPLIES: dict[str, tuple[str, ...]] = {
    "ephemeral-postgres": ("dir", "bin_dir", "user"),
    "postgres-server": ("dsn",),
    "tempdir": ("dir",),
    "cloudsql-scratch-project": ("project", "staging", "tier", "region", "connect", "pitr"),
    "ephemeral-mariadb": ("dir", "bin_dir", "user"),
    "mysql-server": ("url",),
    "gcs-scratch-bucket": ("bucket", "prefix", "project", "endpoint", "credentials"),
}


class ScratchSpec(_Spec):
    """Where a restore test restores to. Never the source: drd.config refuses a scratch
    server database or directory that is the source's own."""

    kind: Literal[
        "ephemeral-postgres",
        "postgres-server",
        "tempdir",
        "cloudsql-scratch-project",
        "ephemeral-mariadb",
        "mysql-server",
        "gcs-scratch-bucket",
    ]
    #: postgres-server: a libpq DSN of the scratch server's maintenance database (no password:
    #: libpq reads PGPASSWORD or ~/.pgpass); drd creates and drops its own database there
    dsn: str | None = Field(default=None, repr=False)
    #: mysql-server: the scratch server, `mysql://USER@HOST[:PORT][?password=env:VAR|
    #: credential:NAME&socket=PATH]` (never the source's database); drd creates and drops its
    #: own database there
    url: str | None = Field(default=None, repr=False)
    #: ephemeral-postgres, ephemeral-mariadb, tempdir: the directory the scratch copy is made
    #: in (default: the system's temp directory); it needs room for the restored copy
    dir: Path | None = None
    #: ephemeral-postgres: directory of initdb/pg_ctl/postgres (default: those of the backup's
    #: major version, /usr/lib/postgresql/<major>/bin); ephemeral-mariadb: directory of
    #: mariadbd and mariadb-install-db, or mysqld (default: /usr/sbin, /usr/bin, PATH)
    bin_dir: Path | None = None
    #: ephemeral-postgres, ephemeral-mariadb: the OS user the server runs as when drd runs as
    #: root (default postgres, or mysql; neither server runs as root)
    user: str | None = None
    #: cloudsql-scratch-project: the GCP project the scratch instances are created in (never
    #: the source's own); drd.verify.scratch.cloudsql. gcs-scratch-bucket: the scratch bucket's
    #: project (billing for requester-pays buckets), optional
    project: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    #: gcs-scratch-bucket: the scratch bucket; each test restores under its own new prefix
    #: `<prefix>drd-scratch-<id>/` there and deletes every object under it afterwards
    bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
    #: gcs-scratch-bucket: where in the scratch bucket the tests' prefixes are made
    prefix: str | None = None
    #: gcs-scratch-bucket: the storage API endpoint (default Google's; an emulator on loopback)
    endpoint: str | None = None
    #: gcs-scratch-bucket: {source: credential|env, name: ...} (a service-account JSON with
    #: storage.objects.create/get/list/delete on the scratch bucket), or {source: anonymous}
    #: with a loopback endpoint
    credentials: dict[str, str] | None = Field(default=None, repr=False)
    #: cloudsql-scratch-project: the GCS staging of the import (drd.strategies.cloudsql
    #: StagingOptions: bucket, prefix, project, endpoint, credentials); default: the source's
    staging: dict[str, Any] | None = None
    #: cloudsql-scratch-project: the scratch instance's machine tier (default db-f1-micro)
    tier: str | None = Field(default=None, min_length=1)
    #: cloudsql-scratch-project: the scratch instance's region (default: the source's)
    region: str | None = Field(default=None, min_length=1)
    #: cloudsql-scratch-project: how drd reaches the scratch instance's PostgreSQL for the row
    #: count check: a libpq DSN template with {ip} (the instance's private address, else its
    #: primary one), {database}, {instance}, {project} and {connection_name}, e.g. "host={ip}
    #: dbname={database} user=drd sslmode=require" (password in PGPASSWORD/.pgpass), or
    #: "host=127.0.0.1 port=5433 dbname={database} user=drd" behind a Cloud SQL Auth Proxy.
    #: Without it the row counts are skipped (the API's checks still run).
    connect: str | None = Field(default=None, min_length=1)
    #: cloudsql-scratch-project: test Cloud SQL's own point-in-time recovery instead of
    #: restoring drd's copy: the source is cloned (instances.clone) at a random point of its
    #: recovery window into a drd-scratch-<id> instance, checked and deleted.
    #: `clone-in-source-project`: the clone is created in the source's project, next to the
    #: source (Cloud SQL clones only within a project); `clone`: into `project`, a cross-project
    #: clone Google allows only for allowlisted projects (drd.strategies.cloudsql_pitr)
    pitr: Literal["clone", "clone-in-source-project"] | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Self:
        for name in (
            "dsn",
            "url",
            "dir",
            "bin_dir",
            "user",
            "project",
            "staging",
            "tier",
            "region",
            "connect",
            "bucket",
            "prefix",
            "endpoint",
            "credentials",
            "pitr",
        ):
            if getattr(self, name) is not None and name not in _APPLIES[self.kind]:
                kinds = [k for k in SCRATCH_KINDS if name in _APPLIES[k]]
                raise _rule(name, f"only applies to kind: {' or '.join(kinds)}")
        if self.kind == "postgres-server":
            if self.dsn is None:
                raise _rule(
                    "dsn", "field required for kind: postgres-server (its maintenance database)"
                )
            try:
                from psycopg.conninfo import conninfo_to_dict

                conninfo_to_dict(self.dsn)
            except Exception:
                raise _rule("dsn", "not a valid libpq connection string") from None
        if self.kind == "mysql-server":
            if self.url is None:
                raise _rule("url", "field required for kind: mysql-server (the scratch server)")
            from drd.strategies.mysql_client import parse_server_url

            try:
                parse_server_url(self.url, read_secret=False)
            except ValueError as exc:
                raise _rule("url", str(exc)) from None
        if self.kind == "gcs-scratch-bucket":
            self._check_gcs_scratch()
        in_source = self.pitr == "clone-in-source-project"
        if self.kind == "cloudsql-scratch-project" and in_source and self.project is not None:
            raise _rule(
                "project",
                "does not apply with pitr: clone-in-source-project (the clone is made in the "
                "source's project); use pitr: clone to name another project",
            )
        if self.kind == "cloudsql-scratch-project":
            if self.project is None and not in_source:
                raise _rule(
                    "project",
                    "field required for kind: cloudsql-scratch-project (the scratch GCP project)",
                )
            if self.staging is not None:
                from pydantic import ValidationError

                from drd.strategies.cloudsql import StagingOptions

                try:
                    StagingOptions.model_validate(self.staging)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise _rule(f"staging.{where}".rstrip("."), first["msg"]) from None
            if self.connect is not None:
                try:
                    self.connect.format(
                        ip="", database="", instance="", project="", connection_name=""
                    )
                except (KeyError, IndexError, ValueError):
                    raise _rule(
                        "connect",
                        "unknown placeholder: use {ip}, {database}, {instance}, {project}, "
                        "{connection_name}",
                    ) from None
        return self

    def _check_gcs_scratch(self) -> None:
        from pydantic import ValidationError

        from drd.storage.google_auth import GoogleCredentials, anonymous_allowed, check_endpoint

        if self.bucket is None:
            raise _rule(
                "bucket", "field required for kind: gcs-scratch-bucket (the scratch bucket)"
            )
        if self.prefix and (
            self.prefix.startswith("/") or "//" in self.prefix or not self.prefix.endswith("/")
        ):
            raise _rule(
                "prefix", "an object prefix ends with '/' and neither starts with '/' nor has '//'"
            )
        if self.credentials is None:
            raise _rule(
                "credentials",
                "field required for kind: gcs-scratch-bucket ({source: credential|env, name: ...}"
                " or {source: anonymous} with a loopback endpoint)",
            )
        try:
            check_endpoint(self.endpoint)
        except ValueError as exc:
            raise _rule("endpoint", str(exc)) from None
        try:
            creds = GoogleCredentials.model_validate(self.credentials)
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise _rule("credentials", message) from None
        if creds.source == "anonymous" and not anonymous_allowed(self.endpoint):
            raise _rule("credentials", "anonymous credentials only with a loopback endpoint")

    @property
    def gcs_prefix(self) -> str:
        """gcs-scratch-bucket: the prefix the tests' own prefixes are made under."""
        return self.prefix if self.prefix is not None else GCS_SCRATCH_PREFIX

    def gcs_target(self, prefix: str) -> str:
        """The gs:// restore target (drd.strategies.gcs_bucket.open_target) of a prefix in the
        scratch bucket: it names the credentials' source, never the credentials."""
        from urllib.parse import urlencode

        assert self.bucket is not None and self.credentials is not None
        creds = self.credentials
        query: dict[str, str] = {}
        if self.endpoint:
            query["endpoint"] = self.endpoint
        if self.project:
            query["project"] = self.project
        source = creds.get("source", "")
        query["credentials"] = source if source == "anonymous" else f"{source}:{creds['name']}"
        return f"gs://{self.bucket}/{prefix}?{urlencode(query, safe=':/')}"


_TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$"
#: the most probes kept per source (the oldest go first), whatever `keep` says
MAX_PROBES = 10_000


class PitrProbeSpec(_Spec):
    """restore_test.pitr_probe: what the daemon records of each physical PostgreSQL source
    while it archives its WAL, for restore tests at a random point in time
    (drd.pipeline.pitr_probes). Tables and queries are read in the database the source's dsn
    names (default postgres), by the source's role."""

    #: tables whose row count each probe records (`name` or `schema.name`)
    tables: list[str] = Field(default_factory=list)
    #: queries whose result each probe records (the plan's matches_source checks of the
    #: source are recorded too)
    queries: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    #: how often a probe is taken
    every: PositiveDuration = timedelta(minutes=10)
    #: how many probes are kept per source (older ones also go once past retention.max_age)
    keep: int = Field(default=1000, ge=1, le=MAX_PROBES)
    #: how the recovered server's OS user runs drd for its restore_command (a command line,
    #: e.g. /usr/bin/drd); default: this drd's own interpreter, which that user must be able
    #: to run
    drd_command: str | None = None

    @field_validator("drd_command")
    @classmethod
    def _command_line(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import shlex

        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"not a command line: {exc}") from None
        if not words:
            raise ValueError("must not be empty")
        return value

    @property
    def drd_argv(self) -> list[str] | None:
        import shlex

        return shlex.split(self.drd_command) if self.drd_command is not None else None

    @field_validator("queries")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        for index, query in enumerate(value):
            if not query.strip():
                raise ValueError(f"queries[{index}] is blank")
        return value

    @field_validator("tables")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen = set()
        for index, name in enumerate(value):
            if not re.fullmatch(_TABLE_NAME, name):
                raise ValueError(
                    f"tables[{index}]: {name!r} is not a table name or schema.name (letters, "
                    "digits, _ and $, each part at most 63 characters, as written in the "
                    "catalog: no quotes)"
                )
            if name in seen:
                raise ValueError(f"table {name} is listed twice")
            seen.add(name)
        return value


def default_scratch(source_kind: str) -> ScratchSpec | None:
    """Where a source is restored when the plan names no scratch environment: its strategy's
    default_scratch; None when its kind has none (the plan must name one)."""
    kind = get_strategy(source_kind).default_scratch
    return None if kind is None else ScratchSpec.model_validate({"kind": kind})


# --------------------------------------------------------------------------------------------
# Checks


class Expectation(_Spec):
    """What a check query's result must be. `at_least` and `at_most` may be combined (a range);
    the others stand alone."""

    #: the result (one value, or a list of rows) equals this
    equals: Any = None
    #: the (numeric) result is at least / at most this
    at_least: float | None = None
    at_most: float | None = None
    #: the query returns at least one row
    non_empty: Literal[True] | None = None
    #: the result equals the same query's result on the source, captured at backup time
    matches_source: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [name for name in type(self).model_fields if name in self.model_fields_set]
        if not given:
            raise _rule("", "give one of equals, at_least, at_most, non_empty or matches_source")
        if len(given) > 1 and set(given) != {"at_least", "at_most"}:
            raise _rule(given[1], f"cannot be combined with {given[0]}")
        low, high = self.at_least, self.at_most
        if low is not None and high is not None and low > high:
            raise _rule("at_most", "is smaller than at_least")
        return self

    @property
    def kind(self) -> str:
        given = [name for name in type(self).model_fields if name in self.model_fields_set]
        return "range" if len(given) == 2 else given[0]


class FreshnessSpec(_Spec):
    """The newest value of a timestamp column is no older than the backup's capture time minus
    `within`. Either `table` and `column` (the newest is max(column)), or `sql` returning it."""

    table: str | None = None
    column: str | None = None
    sql: str | None = None
    within: PositiveDuration

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.sql is not None and (self.table is not None or self.column is not None):
            raise _rule("sql", "give either sql or table and column, not both")
        if self.sql is None:
            if self.table is None:
                raise _rule("table", "field required (or give sql)")
            if self.column is None:
                raise _rule("column", "field required with table")
        return self


class FileSpec(_Spec):
    """A file of the restored tree: it exists (or not), with a size or digest."""

    #: relative to the restored tree's root
    path: str = Field(min_length=1)
    exists: bool = True
    size: Size | None = None
    min_size: Size | None = None
    max_size: Size | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parts = self.path.split("/")
        if self.path.startswith("/") or ".." in parts:
            raise _rule("path", "must be relative to the restored tree, without '..'")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise _rule("sha256", "expected 64 lowercase hex digits")
        if not self.exists:
            for name in ("size", "min_size", "max_size", "sha256"):
                if getattr(self, name) is not None:
                    raise _rule(name, "cannot be checked on a file that must not exist")
        if self.size is not None and (self.min_size is not None or self.max_size is not None):
            raise _rule("size", "give size, or min_size/max_size, not both")
        return self


class CheckSpec(_Spec):
    """One declarative check: exactly one of sql (with expect), freshness, file or command."""

    #: shown in reports; default "<kind>-<n>" (n counts from 1 within the source)
    name: Annotated[str, Field(pattern=_CHECK_NAME)] | None = None
    #: a failing non-critical check is reported but does not fail the restore test
    critical: bool = True
    sql: Annotated[str, Field(min_length=1)] | None = None
    expect: Expectation | None = None
    freshness: FreshnessSpec | None = None
    file: FileSpec | None = None
    #: run against the restored copy: argv (a list) or a shell command line (a string); its
    #: exit code decides. PG* variables (postgres) or DRD_RESTORED_PATH (files, sqlite) say
    #: where the copy is; the working directory is drd.yaml's.
    command: Argv | str | None = None
    #: how long the check may take
    timeout: PositiveDuration = timedelta(minutes=5)

    @field_validator("command", mode="before")
    @classmethod
    def _check_command(cls, value: Any) -> Any:
        # One clear message instead of one per member of the list | str union.
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("expected a command line, or a non-empty list of arguments")
        if not all(isinstance(arg, str) and arg for arg in value):
            raise ValueError("every argument must be a non-empty string")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [kind for kind in CHECK_KINDS if getattr(self, kind) is not None]
        if not given:
            raise _rule("", "give one of sql, freshness, file or command")
        if len(given) > 1:
            raise _rule(given[1], f"cannot be combined with {given[0]} in one check")
        if self.sql is not None and self.expect is None:
            raise _rule("expect", "field required with sql")
        if self.sql is None and self.expect is not None:
            raise _rule("expect", "only applies to sql checks")
        if isinstance(self.command, str) and not self.command.strip():
            raise _rule("command", "must not be empty")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in CHECK_KINDS if getattr(self, kind) is not None)

    def display_name(self, number: int) -> str:
        return self.name or f"{self.kind}-{number}"


def capture_key(query: str) -> str:
    """The id a "matches the source" query's result is stored under in the manifest: derived
    from the query text, so renaming a check keeps its captured values and changing the query
    does not compare against a result of the old one."""
    return "q-" + hashlib.sha256(query.strip().encode()).hexdigest()[:24]


def capture_queries(checks: list[CheckSpec]) -> dict[str, str]:
    """The queries whose source results a backup must capture: those of matches_source checks."""
    return {
        capture_key(check.sql): check.sql
        for check in checks
        if check.sql is not None and check.expect is not None and check.expect.matches_source
    }
