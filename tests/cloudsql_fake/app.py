"""A local Cloud SQL Admin API (v1) for tests, backed by the real local PostgreSQL.

It serves the v1 REST paths drd uses, with the request and response bodies of Google's API
(the discovery document shipped in google-api-python-client is the reference):

    POST   v1/projects/{project}/instances                          instances.insert
    GET    v1/projects/{project}/instances                          instances.list
    GET    v1/projects/{project}/instances/{instance}               instances.get
    DELETE v1/projects/{project}/instances/{instance}               instances.delete
    POST   v1/projects/{project}/instances/{instance}/export        instances.export
    POST   v1/projects/{project}/instances/{instance}/import        instances.import
    POST   v1/projects/{project}/instances/{instance}/restoreBackup instances.restoreBackup
    PATCH  v1/projects/{project}/instances/{instance}               instances.patch (userLabels)
    POST   v1/projects/{project}/instances/{instance}/clone         instances.clone
    GET    v1/projects/{project}/instances/{instance}/getLatestRecoveryTime
                                                   projects.instances.getLatestRecoveryTime
    POST   v1/projects/{project}/instances/{instance}/backupRuns    backupRuns.insert
    GET    v1/projects/{project}/instances/{instance}/backupRuns    backupRuns.list
    GET    v1/projects/{project}/instances/{instance}/backupRuns/{id}  backupRuns.get
    POST   v1/projects/{project}/instances/{instance}/databases     databases.insert
    GET    v1/projects/{project}/instances/{instance}/databases     databases.list
    GET    v1/projects/{project}/instances/{instance}/databases/{db}   databases.get
    DELETE v1/projects/{project}/instances/{instance}/databases/{db}   databases.delete
    GET    v1/projects/{project}/operations/{operation}             operations.get
    POST   v1/projects/{project}/operations/{operation}/cancel      operations.cancel

Semantics:
- Mutations return an Operation (`kind: sql#operation`) that goes PENDING -> RUNNING -> DONE:
  PENDING until it is first polled, RUNNING while its work runs (and for at least one poll),
  DONE afterwards, with `error: {kind, errors: [{kind, code, message}]}` when it failed.
- HTTP errors use Google's JSON error body: {"error": {"code", "message", "status", "errors":
  [{"message", "domain", "reason"}]}}. A project sees only its own instances and operations
  (404 otherwise); restoreBackup may name a backup of another project (as Google allows).
- PostgreSQL only: an instance's database D is the local database `cs_<hash>` (see
  `pg_database_name`), created with the instance's `postgres` database. An export is a real
  `pg_dump --format=plain` written to fake-gcs-server at the export URI; an import really runs
  that SQL (psql, ON_ERROR_STOP, one transaction) into the instance's database; a backup run is
  a set of pg_dump files kept by the fake; restoreBackup really restores them into the target
  instance (replacing its databases, as Google does).
- Point-in-time recovery: an instance made with `add_instance(..., pitr_since=T)` has
  `backupConfiguration.pointInTimeRecoveryEnabled` and a recovery window from T (or the
  retention days before now, whichever is later) to now, which getLatestRecoveryTime reports.
  `instances.clone` with `pointInTime` refuses a point outside that window (400, as Google does)
  and otherwise creates the destination instance (in `destinationProject` if given, else the
  source's) with a copy of every database of the source: a pg_dump of each database piped into
  a new one. What it does NOT emulate: the copy is of the source AS IT IS when the clone runs,
  not as it was at `pointInTime` (no WAL is replayed), so a test that wants to tell two points
  apart cannot use this fake; Google's rule that only allowlisted projects may clone across
  projects; the clone inheriting the source's settings beyond version, tier and region.
- Fault injection: `fail_next(op_type, message)` (the next operation of that type ends DONE
  with an error), `hang_next(op_type)` (it stays RUNNING until cancelled), `http_errors(n,
  status)` (the next n requests fail with that status before doing anything).
- `requests`: every (method, path) served, for tests that check only v1 paths were used.
- Connection info: instances carry `ipAddresses` (PRIMARY 127.0.0.1); databases carry a
  non-standard `drdLocalDsn` (the local database behind them), which drd.verify.scratch.cloudsql
  reads
  only from a loopback endpoint, to check row counts of a restored scratch instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,96}$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_REASONS = {404: "notFound", 409: "alreadyExists", 400: "invalid", 429: "rateLimitExceeded"}


def _now() -> str:
    return _rfc3339(datetime.now(UTC))


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# The fake runs in the test process; two test runs at once (two checkouts on one machine)
# share the PostgreSQL server, so the names carry this process's id as well.
_RUN = f"{os.getpid()}-{secrets.token_hex(4)}"


def pg_database_name(project: str, instance: str, database: str) -> str:
    """The local PostgreSQL database behind an instance's database (fits 63 bytes)."""
    key = f"{_RUN}/{project}/{instance}/{database}".encode()
    return "cs_" + hashlib.sha256(key).hexdigest()[:24]


def pg_dsn(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname}"


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error_response(code: int, message: str) -> web.Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "errors": [
                {"message": message, "domain": "global", "reason": _REASONS.get(code, "error")}
            ],
            "status": _STATUS_NAMES.get(code, "UNKNOWN"),
        }
    }
    return web.json_response(body, status=code)


@dataclass
class Instance:
    project: str
    name: str
    body: dict[str, Any]
    databases: list[str] = field(default_factory=lambda: ["postgres"])
    backup_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: point-in-time recovery enabled since then (None: not enabled)
    pitr_since: datetime | None = None


@dataclass
class Operation:
    project: str
    name: str
    op_type: str
    target: str
    resource: dict[str, Any]
    polls: int = 0
    work: asyncio.Task[None] | None = None
    hang: bool = False
    fail: str | None = None
    error: str | None = None
    cancelled: bool = False


class FakeCloudSql:
    """The fake's state and handlers; `app()` builds the aiohttp application."""

    def __init__(self, gcs_endpoint: str | None = None, workdir: Path | None = None) -> None:
        self.gcs_endpoint = gcs_endpoint
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fake-cloudsql-"))
        self.instances: dict[tuple[str, str], Instance] = {}
        self.operations: dict[tuple[str, str], Operation] = {}
        self.requests: list[tuple[str, str]] = []
        self._fail: dict[str, list[str]] = {}
        self._hang: dict[str, int] = {}
        self._http_errors: list[int] = []
        self._backup_ids = itertools.count(int(time.time() * 1000))
        self.base_url = ""

    # -- fault injection ----------------------------------------------------------------------

    def fail_next(self, op_type: str, message: str = "injected failure") -> None:
        self._fail.setdefault(op_type, []).append(message)

    def hang_next(self, op_type: str) -> None:
        self._hang[op_type] = self._hang.get(op_type, 0) + 1

    def http_errors(self, count: int, status: int = 503) -> None:
        self._http_errors.extend([status] * count)

    # -- helpers for tests ----------------------------------------------------------------------

    def add_instance(
        self,
        project: str,
        name: str,
        version: str = "POSTGRES_15",
        *,
        pitr_since: datetime | None = None,
        retention_days: int = 7,
    ) -> Instance:
        """An existing instance (as if created long ago), with its `postgres` database; with
        `pitr_since`, point-in-time recovery enabled since then."""
        settings: dict[str, Any] = {}
        if pitr_since is not None:
            settings["backupConfiguration"] = {
                "kind": "sql#backupConfiguration",
                "enabled": True,
                "pointInTimeRecoveryEnabled": True,
                "transactionLogRetentionDays": retention_days,
            }
        inst = Instance(
            project, name, self._instance_body(project, name, version, settings, "RUNNABLE")
        )
        inst.pitr_since = pitr_since
        self.instances[(project, name)] = inst
        self._create_pg(project, name, "postgres")
        return inst

    def add_database(self, project: str, instance: str, database: str) -> str:
        """Create a database in an existing instance; returns its local DSN."""
        inst = self.instances[(project, instance)]
        if database not in inst.databases:
            inst.databases.append(database)
            self._create_pg(project, instance, database)
        return pg_dsn(pg_database_name(project, instance, database))

    def dsn(self, project: str, instance: str, database: str) -> str:
        return pg_dsn(pg_database_name(project, instance, database))

    def cleanup(self) -> None:
        for inst in list(self.instances.values()):
            for db in inst.databases:
                self._drop_pg(inst.project, inst.name, db)
        self.instances.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- PostgreSQL and GCS -------------------------------------------------------------------

    def _psql(self, sql: str, dbname: str = "postgres") -> None:
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_dsn(dbname), "-c", sql],
            check=True,
            capture_output=True,
        )

    def _create_pg(self, project: str, instance: str, database: str) -> None:
        name = pg_database_name(project, instance, database)
        self._drop_pg(project, instance, database)
        self._psql(f'CREATE DATABASE "{name}"')

    def _drop_pg(self, project: str, instance: str, database: str) -> None:
        name = pg_database_name(project, instance, database)
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _gcs_bucket(self, uri: str) -> tuple[Any, str]:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        m = re.match(r"^gs://([^/]+)/(.+)$", uri)
        if not m or not self.gcs_endpoint:
            raise ApiError(400, f"Invalid URI {uri}")
        client = storage.Client(
            project="fake",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.gcs_endpoint},
        )
        return client.bucket(m.group(1)), m.group(2)

    def _pg_dump(self, project: str, instance: str, database: str, path: Path) -> None:
        subprocess.run(
            [
                "pg_dump",
                "--format=plain",
                "--no-owner",
                "--no-privileges",
                "-f",
                str(path),
                "-d",
                pg_dsn(pg_database_name(project, instance, database)),
            ],
            check=True,
            capture_output=True,
        )

    def _psql_file(self, path: Path, project: str, instance: str, database: str) -> None:
        proc = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-f",
                str(path),
                "-d",
                pg_dsn(pg_database_name(project, instance, database)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"import failed: {proc.stderr.strip()[-500:]}")

    # -- the work behind each operation (blocking: runs in a thread) -------------------------

    def _do_export(self, project: str, instance: str, ctx: dict[str, Any]) -> None:
        databases = ctx.get("databases") or []
        if len(databases) != 1:
            raise RuntimeError("PostgreSQL exports need exactly one database")
        local = self.workdir / f"export-{uuid.uuid4().hex}.sql"
        try:
            self._pg_dump(project, instance, databases[0], local)
            bucket, name = self._gcs_bucket(str(ctx["uri"]))
            bucket.blob(name).upload_from_filename(str(local), content_type="application/sql")
        finally:
            local.unlink(missing_ok=True)

    def _do_import(self, project: str, instance: str, ctx: dict[str, Any]) -> None:
        database = str(ctx.get("database") or "")
        if database not in self.instances[(project, instance)].databases:
            raise RuntimeError(f"database {database} does not exist")
        local = self.workdir / f"import-{uuid.uuid4().hex}.sql"
        try:
            bucket, name = self._gcs_bucket(str(ctx["uri"]))
            blob = bucket.blob(name)
            if not blob.exists():
                raise RuntimeError(f"the file {ctx['uri']} does not exist")
            blob.download_to_filename(str(local))
            self._psql_file(local, project, instance, database)
        finally:
            local.unlink(missing_ok=True)

    def _do_backup(self, project: str, instance: str, run_id: str) -> None:
        inst = self.instances[(project, instance)]
        directory = self.workdir / f"backup-{project}-{instance}-{run_id}"
        directory.mkdir()
        for db in inst.databases:
            self._pg_dump(project, instance, db, directory / f"{db}.sql")
        inst.backup_runs[run_id]["_dir"] = str(directory)

    def _do_restore(self, project: str, instance: str, ctx: dict[str, Any]) -> None:
        src_project = str(ctx.get("project") or project)
        source = self.instances.get((src_project, str(ctx.get("instanceId"))))
        run = source.backup_runs.get(str(ctx.get("backupRunId"))) if source else None
        if run is None or "_dir" not in run:
            raise RuntimeError("the backup run does not exist")
        target = self.instances[(project, instance)]
        for db in list(target.databases):
            self._drop_pg(project, instance, db)
        target.databases = []
        for dump in sorted(Path(run["_dir"]).glob("*.sql")):
            db = dump.stem
            self._create_pg(project, instance, db)
            target.databases.append(db)
            self._psql_file(dump, project, instance, db)

    def _recovery_window(self, inst: Instance) -> tuple[datetime, datetime]:
        backup = inst.body["settings"].get("backupConfiguration") or {}
        if inst.pitr_since is None or not backup.get("pointInTimeRecoveryEnabled"):
            raise ApiError(
                400, "Invalid request: point-in-time recovery is not enabled for the instance."
            )
        now = datetime.now(UTC)
        days = int(backup.get("transactionLogRetentionDays") or 7)
        return max(inst.pitr_since, now - timedelta(days=days)), now

    def _do_clone(self, source: Instance, clone: Instance) -> None:
        for db in source.databases:
            self._create_pg(clone.project, clone.name, db)
            if db not in clone.databases:
                clone.databases.append(db)
            local = self.workdir / f"clone-{uuid.uuid4().hex}.sql"
            try:
                self._pg_dump(source.project, source.name, db, local)
                self._psql_file(local, clone.project, clone.name, db)
            finally:
                local.unlink(missing_ok=True)
        clone.body["state"] = "RUNNABLE"

    def _do_delete_instance(self, project: str, instance: str) -> None:
        inst = self.instances.pop((project, instance))
        for db in inst.databases:
            self._drop_pg(project, instance, db)

    # -- operations -------------------------------------------------------------------------

    def _start(
        self,
        project: str,
        op_type: str,
        instance: str,
        work: Any,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        name = str(uuid.uuid4())
        resource = {
            "kind": "sql#operation",
            "name": name,
            "operationType": op_type,
            "status": "PENDING",
            "targetId": instance,
            "targetProject": project,
            "targetLink": f"{self.base_url}/v1/projects/{project}/instances/{instance}",
            "selfLink": f"{self.base_url}/v1/projects/{project}/operations/{name}",
            "insertTime": _now(),
            "user": "drd-test@example.com",
            **(extra or {}),
        }
        op = Operation(project, name, op_type, instance, resource)
        fails = self._fail.get(op_type)
        if fails:
            op.fail = fails.pop(0)
        if self._hang.get(op_type):
            self._hang[op_type] -= 1
            op.hang = True
        self.operations[(project, name)] = op

        async def run() -> None:
            if op.hang:
                await asyncio.Event().wait()  # until cancelled
            if op.fail is not None:
                op.error = op.fail
                return
            try:
                await asyncio.to_thread(work)
            except ApiError as exc:
                op.error = exc.message
            except Exception as exc:
                op.error = str(exc)

        op.work = asyncio.get_running_loop().create_task(run())
        return dict(resource)

    def _view(self, op: Operation) -> dict[str, Any]:
        op.polls += 1
        res = op.resource
        finished = op.work is not None and op.work.done()
        if res["status"] == "PENDING":
            res["status"] = "RUNNING"
            res["startTime"] = _now()
        elif res["status"] == "RUNNING" and finished and op.polls >= 2:
            res["status"] = "DONE"
            res["endTime"] = _now()
            if op.error is not None:
                res["error"] = {
                    "kind": "sql#operationErrors",
                    "errors": [
                        {"kind": "sql#operationError", "code": "ERROR_OTHER", "message": op.error}
                    ],
                }
        return dict(res)

    # -- HTTP --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        p = "/v1/projects/{project}"
        i = p + "/instances/{instance}"
        app.router.add_post(p + "/instances", self.instances_insert)
        app.router.add_get(p + "/instances", self.instances_list)
        app.router.add_get(i, self.instances_get)
        app.router.add_delete(i, self.instances_delete)
        app.router.add_post(i + "/export", self.instances_export)
        app.router.add_post(i + "/import", self.instances_import)
        app.router.add_post(i + "/restoreBackup", self.instances_restore_backup)
        app.router.add_patch(i, self.instances_patch)
        app.router.add_post(i + "/clone", self.instances_clone)
        app.router.add_get(i + "/getLatestRecoveryTime", self.instances_recovery_time)
        app.router.add_post(i + "/backupRuns", self.backup_runs_insert)
        app.router.add_get(i + "/backupRuns", self.backup_runs_list)
        app.router.add_get(i + "/backupRuns/{id}", self.backup_runs_get)
        app.router.add_post(i + "/databases", self.databases_insert)
        app.router.add_get(i + "/databases", self.databases_list)
        app.router.add_get(i + "/databases/{database}", self.databases_get)
        app.router.add_delete(i + "/databases/{database}", self.databases_delete)
        app.router.add_get(p + "/operations/{operation}", self.operations_get)
        app.router.add_post(p + "/operations/{operation}/cancel", self.operations_cancel)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self._http_errors:
            code = self._http_errors.pop(0)
            return _error_response(code, f"injected HTTP {code}")
        try:
            result: web.StreamResponse = await handler(request)
            return result
        except ApiError as exc:
            return _error_response(exc.code, exc.message)
        except web.HTTPNotFound:
            return _error_response(404, f"no such method: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error_response(405, f"method not allowed: {request.method} {request.path}")

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received.")
        return body

    def _instance(self, request: web.Request) -> Instance:
        key = (request.match_info["project"], request.match_info["instance"])
        inst = self.instances.get(key)
        if inst is None:
            raise ApiError(404, "The Cloud SQL instance does not exist.")
        return inst

    def _instance_body(
        self, project: str, name: str, version: str, settings: dict[str, Any], state: str
    ) -> dict[str, Any]:
        return {
            "kind": "sql#instance",
            "name": name,
            "project": project,
            "databaseVersion": version,
            "region": "europe-west1",
            "state": state,
            "backendType": "SECOND_GEN",
            "instanceType": "CLOUD_SQL_INSTANCE",
            "settings": {"kind": "sql#settings", "tier": "db-f1-micro", **settings},
            "selfLink": f"{self.base_url}/v1/projects/{project}/instances/{name}",
            "connectionName": f"{project}:europe-west1:{name}",
            "ipAddresses": [{"type": "PRIMARY", "ipAddress": PG_HOST}],
            "createTime": _now(),
        }

    async def instances_insert(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        body = await self._json(request)
        name = str(body.get("name") or "")
        if not _NAME_RE.match(name):
            raise ApiError(400, "Invalid request: instance name is invalid.")
        version = str(body.get("databaseVersion") or "")
        if not version.startswith("POSTGRES_"):
            raise ApiError(400, f"Invalid request: databaseVersion {version!r} (fake: POSTGRES_*)")
        settings = body.get("settings") or {}
        if not settings.get("tier"):
            raise ApiError(400, "Invalid request: settings.tier is required.")
        if (project, name) in self.instances:
            raise ApiError(409, "The Cloud SQL instance already exists.")
        inst = Instance(
            project, name, self._instance_body(project, name, version, settings, "PENDING_CREATE")
        )
        inst.body["region"] = body.get("region") or inst.body["region"]
        self.instances[(project, name)] = inst

        def work() -> None:
            self._create_pg(project, name, "postgres")
            inst.body["state"] = "RUNNABLE"

        return web.json_response(self._start(project, "CREATE", name, work))

    async def instances_list(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        items = [i.body for (p, _), i in sorted(self.instances.items()) if p == project]
        return web.json_response({"kind": "sql#instancesList", "items": items})

    async def instances_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._instance(request).body)

    async def instances_delete(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        inst.body["state"] = "PENDING_DELETE"
        return web.json_response(
            self._start(
                inst.project,
                "DELETE",
                inst.name,
                lambda: self._do_delete_instance(inst.project, inst.name),
            )
        )

    async def instances_export(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        ctx = (await self._json(request)).get("exportContext") or {}
        if ctx.get("fileType", "SQL") != "SQL" or not ctx.get("uri"):
            raise ApiError(400, "Invalid request: exportContext needs fileType SQL and a uri.")
        for db in ctx.get("databases") or []:
            if db not in inst.databases:
                raise ApiError(400, f"Invalid request: database {db} does not exist.")
        return web.json_response(
            self._start(
                inst.project,
                "EXPORT",
                inst.name,
                lambda: self._do_export(inst.project, inst.name, ctx),
                {"exportContext": {"kind": "sql#exportContext", **ctx}},
            )
        )

    async def instances_import(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        ctx = (await self._json(request)).get("importContext") or {}
        if ctx.get("fileType", "SQL") != "SQL" or not ctx.get("uri"):
            raise ApiError(400, "Invalid request: importContext needs fileType SQL and a uri.")
        return web.json_response(
            self._start(
                inst.project,
                "IMPORT",
                inst.name,
                lambda: self._do_import(inst.project, inst.name, ctx),
                {"importContext": {"kind": "sql#importContext", **ctx}},
            )
        )

    async def instances_restore_backup(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        ctx = (await self._json(request)).get("restoreBackupContext") or {}
        src = self.instances.get(
            (str(ctx.get("project") or inst.project), str(ctx.get("instanceId")))
        )
        if src is None or str(ctx.get("backupRunId")) not in src.backup_runs:
            raise ApiError(404, "The backup run does not exist.")
        return web.json_response(
            self._start(
                inst.project,
                "RESTORE_VOLUME",
                inst.name,
                lambda: self._do_restore(inst.project, inst.name, ctx),
            )
        )

    async def instances_patch(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        settings = (await self._json(request)).get("settings") or {}
        labels = settings.get("userLabels")

        def work() -> None:
            if isinstance(labels, dict):
                inst.body["settings"]["userLabels"] = dict(labels)

        return web.json_response(self._start(inst.project, "UPDATE", inst.name, work))

    async def instances_recovery_time(self, request: web.Request) -> web.Response:
        earliest, latest = self._recovery_window(self._instance(request))
        return web.json_response(
            {
                "kind": "sql#getLatestRecoveryTime",
                "earliestRecoveryTime": _rfc3339(earliest),
                "latestRecoveryTime": _rfc3339(latest),
            }
        )

    async def instances_clone(self, request: web.Request) -> web.Response:
        source = self._instance(request)
        ctx = (await self._json(request)).get("cloneContext") or {}
        name = str(ctx.get("destinationInstanceName") or "")
        if not _NAME_RE.match(name):
            raise ApiError(400, "Invalid request: destinationInstanceName is invalid.")
        project = str(ctx.get("destinationProject") or source.project)
        if (project, name) in self.instances:
            raise ApiError(409, "The Cloud SQL instance already exists.")
        point = ctx.get("pointInTime")
        if point is not None:
            try:
                at = datetime.fromisoformat(str(point).replace("Z", "+00:00"))
            except ValueError:
                raise ApiError(400, f"Invalid value at 'pointInTime' ({point})") from None
            earliest, latest = self._recovery_window(source)
            if not earliest <= at <= latest:
                raise ApiError(
                    400,
                    f"Invalid request: pointInTime {point} is outside the recovery window "
                    f"{_rfc3339(earliest)} .. {_rfc3339(latest)}.",
                )
        settings = {
            "tier": source.body["settings"].get("tier", "db-f1-micro"),
            "userLabels": dict(source.body["settings"].get("userLabels") or {}),
        }
        clone = Instance(
            project,
            name,
            self._instance_body(
                project, name, source.body["databaseVersion"], settings, "PENDING_CREATE"
            ),
        )
        clone.body["region"] = source.body["region"]
        clone.databases = []
        self.instances[(project, name)] = clone
        # The operation lives in the source's project: the request was made there.
        return web.json_response(
            self._start(
                source.project,
                "CLONE",
                source.name,
                lambda: self._do_clone(source, clone),
                {"cloneContext": {"kind": "sql#cloneContext", **ctx}},
            )
        )

    async def backup_runs_insert(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        body = await self._json(request)
        run_id = str(next(self._backup_ids))
        run = {
            "kind": "sql#backupRun",
            "id": run_id,
            "instance": inst.name,
            "status": "RUNNING",
            "type": "ON_DEMAND",
            "backupKind": "SNAPSHOT",
            "location": "eu",
            "description": body.get("description", ""),
            "enqueuedTime": _now(),
            "startTime": _now(),
            "databaseVersion": inst.body["databaseVersion"],
            "selfLink": f"{inst.body['selfLink']}/backupRuns/{run_id}",
        }
        inst.backup_runs[run_id] = run

        def work() -> None:
            try:
                self._do_backup(inst.project, inst.name, run_id)
            except Exception:
                run["status"] = "FAILED"
                raise
            run["status"] = "SUCCESSFUL"
            run["endTime"] = _now()

        return web.json_response(
            self._start(
                inst.project,
                "BACKUP_VOLUME",
                inst.name,
                work,
                {"backupContext": {"kind": "sql#backupContext", "backupId": run_id}},
            )
        )

    @staticmethod
    def _public(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if not k.startswith("_")}

    async def backup_runs_list(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        items = [self._public(r) for r in reversed(inst.backup_runs.values())]
        return web.json_response({"kind": "sql#backupRunsList", "items": items})

    async def backup_runs_get(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        run = inst.backup_runs.get(request.match_info["id"])
        if run is None:
            raise ApiError(404, "The backup run does not exist.")
        return web.json_response(self._public(run))

    async def databases_insert(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        name = str((await self._json(request)).get("name") or "")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$", name):
            raise ApiError(400, "Invalid request: database name is invalid.")
        if name in inst.databases:
            raise ApiError(409, "The database already exists.")

        def work() -> None:
            self._create_pg(inst.project, inst.name, name)
            inst.databases.append(name)

        return web.json_response(self._start(inst.project, "CREATE_DATABASE", inst.name, work))

    def _database_body(self, inst: Instance, name: str) -> dict[str, Any]:
        return {
            "kind": "sql#database",
            "name": name,
            "instance": inst.name,
            "project": inst.project,
            "charset": "UTF8",
            "collation": "en_US.UTF8",
            "selfLink": f"{inst.body['selfLink']}/databases/{name}",
            # Not Google's: where the fake keeps this database (a local PostgreSQL database
            # named cs_<hash>), so that a client on a loopback endpoint can read it.
            "drdLocalDsn": pg_dsn(pg_database_name(inst.project, inst.name, name)),
        }

    async def databases_list(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        items = [self._database_body(inst, d) for d in inst.databases]
        return web.json_response({"kind": "sql#databasesList", "items": items})

    async def databases_get(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        name = request.match_info["database"]
        if name not in inst.databases:
            raise ApiError(404, "The database does not exist.")
        return web.json_response(self._database_body(inst, name))

    async def databases_delete(self, request: web.Request) -> web.Response:
        inst = self._instance(request)
        name = request.match_info["database"]
        if name not in inst.databases:
            raise ApiError(404, "The database does not exist.")

        def work() -> None:
            self._drop_pg(inst.project, inst.name, name)
            with contextlib.suppress(ValueError):
                inst.databases.remove(name)

        return web.json_response(self._start(inst.project, "DELETE_DATABASE", inst.name, work))

    def _operation(self, request: web.Request) -> Operation:
        op = self.operations.get((request.match_info["project"], request.match_info["operation"]))
        if op is None:
            raise ApiError(404, "The operation does not exist.")
        return op

    async def operations_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(self._operation(request)))

    async def operations_cancel(self, request: web.Request) -> web.Response:
        op = self._operation(request)
        if op.work is not None and not op.work.done():
            op.work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await op.work
            op.error = "The operation was cancelled."
            op.polls = max(op.polls, 2)
        return web.json_response({})


def running_in_thread(fake: FakeCloudSql) -> Any:
    """Serve `fake` on a free loopback port from a thread; returns a stopper object."""
    import threading

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.base_url = f"http://127.0.0.1:{port}"
        holder["runner"] = runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-cloudsql", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("fake Cloud SQL API did not start")

    class Stopper:
        def stop(self) -> None:
            async def shutdown() -> None:
                for op in fake.operations.values():
                    if op.work is not None and not op.work.done():
                        op.work.cancel()
                await holder["runner"].cleanup()

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()

    return Stopper()


__all__ = ["ApiError", "FakeCloudSql", "pg_database_name", "pg_dsn", "running_in_thread"]
