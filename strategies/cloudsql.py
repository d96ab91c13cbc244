"""Cloud SQL (PostgreSQL) through the Cloud SQL Admin API v1 (`sqladmin`): kind `cloudsql`.

Two backup modes; a plan chooses one or both (`modes: [export, managed]`):

- `export`: `instances.export` of the database (SQL) to a short-lived object in a staging bucket
  (`staging:`), polled to DONE, then streamed from GCS as this backup's plaintext (drd compresses,
  encrypts and writes it to every region like any dump), and deleted in `finally`, on failure and
  timeout too. The portable, drd-encrypted copy.
- `managed`: `backupRuns.insert`: an on-demand Cloud SQL backup. Its id, time, instance and
  project go into restore_metadata()["managed"], so that the backup appears in drd's catalog
  like any other and restore tests and retention see it. With `managed` alone the drd backup's
  data is a small JSON document naming the backup run (the same facts; the bytes live in Cloud
  SQL, not in drd's regions); with both modes the data is the export and the metadata names the
  backup run as well. The managed backup is taken first (the instance runs one operation at a
  time).

Calls are blocking (google-api-python-client on httplib2) and run in threads. Every request is
retried with backoff (tenacity) on 429, 5xx, 409 "operation in progress" and network errors,
within `request_deadline`; any other 4xx fails at once with the API's own message. Operations
are polled (operations.get) with backoff from `poll_initial` to `poll_max` until DONE, under
`operation_timeout`; one that ends with `error` fails with its messages; one that does not
finish in time is cancelled (operations.cancel, best effort) and fails.

Credentials are explicit (drd.storage.google_auth): a service-account JSON from an
environment variable or a systemd credential, or anonymous for a loopback endpoint (the local
fake API in tests). Never ambient discovery.

Restore target: `cloudsql://PROJECT/INSTANCE/DATABASE?endpoint=URL&credentials=SRC&staging=
gs://BUCKET/PREFIX&staging_endpoint=URL&staging_credentials=SRC` (SRC: env:VAR,
credential:NAME or anonymous; staging credentials default to the API's).
- an export backup: the database must not exist in the instance (TargetExists); the stream is
  uploaded to a staging object, the database created (databases.insert) and the SQL imported
  (instances.import); the staging object is deleted in `finally`, and on failure the database is
  deleted again. Cloud SQL has no rename, so the database exists (partially) while the import
  runs: restore into a new name, never one that applications use.
- a managed-only backup: `instances.restoreBackup` with `restoreBackupContext` naming the source
  project, instance and backup run. It replaces every database of the target instance, so the
  target must be an instance with no database besides `postgres` (a fresh scratch instance).

Scratch instances for restore tests (create, restore, check, delete, sweep) are in
drd.verify.scratch.cloudsql.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drd.errors import CloudSqlError as CloudSqlError  # defined with every error; named here too
from drd.errors import ConfigError, RestoreError, SourceError, TargetExists
from drd.errors import OperationFailed as OperationFailed
from drd.storage.google_auth import (
    CLOUD_PLATFORM_SCOPES,
    STORAGE_SCOPES,
    GoogleCredentials,
    build_credentials,
    check_endpoint,
    is_loopback_url,
)
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy

log = logging.getLogger(__name__)

FORMAT_EXPORT = "cloudsql-export-sql"
FORMAT_MANAGED = "cloudsql-managed-backup"
_BUCKET = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
Mode = Literal["export", "managed"]


class StagingOptions(BaseModel):
    """Where exports and imports pass through GCS (a bucket the instance's service account
    can write and read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(pattern=_BUCKET)
    prefix: str = "drd-staging"
    project: str | None = None
    endpoint: str | None = None
    #: default: the Cloud SQL credentials
    credentials: GoogleCredentials | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)


class CloudSqlOptions(SourceOptions):
    kind: Literal["cloudsql"] = "cloudsql"
    project: str = Field(min_length=1)
    instance: str = Field(pattern=r"^[a-z][a-z0-9-]{0,96}$")
    #: the database to export (mode export)
    database: str | None = None
    modes: list[Mode] = Field(default_factory=lambda: list[Mode](["export"]))
    #: Cloud SQL Admin API endpoint; default Google's. A loopback URL for the local fake.
    endpoint: str | None = None
    credentials: GoogleCredentials
    staging: StagingOptions | None = None
    #: how long one operation (export, backup, import, ...) may take, seconds
    operation_timeout: float = Field(default=3600.0, gt=0)
    poll_initial: float = Field(default=2.0, gt=0)
    poll_max: float = Field(default=30.0, gt=0)
    #: how long one request is retried on 429/5xx, seconds
    request_deadline: float = Field(default=60.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    @model_validator(mode="after")
    def _modes(self) -> CloudSqlOptions:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError("modes: one or both of export, managed (each once)")
        if "export" in self.modes and (self.database is None or self.staging is None):
            raise ValueError("mode export needs `database` and `staging`")
        return self


# ---------------------------------------------------------------------------------------------
# The API client


def _api_error(exc: Any) -> tuple[int, str]:
    """(status, the API's own message) of a googleapiclient HttpError."""
    status = int(getattr(getattr(exc, "resp", None), "status", 0) or 0)
    message = ""
    try:
        body = json.loads(exc.content.decode("utf-8"))
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        message = str(getattr(exc, "reason", "") or exc)
    return status, message


def _retryable(exc: BaseException) -> bool:
    from googleapiclient.errors import HttpError

    if isinstance(exc, HttpError):
        status, message = _api_error(exc)
        if status in _RETRY_STATUS or status >= 500:
            return True
        return status == 409 and "in progress" in message.lower()
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


@dataclass
class PollPolicy:
    timeout: float = 3600.0
    initial: float = 2.0
    maximum: float = 30.0


class SqlAdmin:
    """The sqladmin v1 client with explicit credentials, retries and operation polling."""

    def __init__(
        self,
        credentials: Any,
        endpoint: str | None = None,
        *,
        request_timeout: float = 60.0,
        request_deadline: float = 60.0,
    ) -> None:
        import google_auth_httplib2  # type: ignore[import-untyped]
        import httplib2  # type: ignore[import-untyped]
        from googleapiclient import discovery

        local = endpoint is not None and is_loopback_url(endpoint)
        http = httplib2.Http(
            timeout=request_timeout,
            # A loopback endpoint never goes through a proxy (it would leave the machine).
            proxy_info=None if local else httplib2.proxy_info_from_environment,
        )
        authed = google_auth_httplib2.AuthorizedHttp(credentials, http=http)
        self.service: Any = discovery.build(
            "sqladmin",
            "v1",
            http=authed,
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )
        self._http = http
        self.request_deadline = request_deadline

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.service.close()

    async def call(self, what: str, build: Callable[[Any], Any]) -> Any:
        """Execute `build(service)` (a request) in a thread, retrying what can heal."""
        from googleapiclient.errors import HttpError
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_delay,
            wait_exponential,
        )

        def execute() -> Any:
            return build(self.service).execute(num_retries=0)

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_delay(self.request_deadline),
                wait=wait_exponential(multiplier=0.2, max=5.0),
                reraise=True,
            ):
                with attempt:
                    return await asyncio.to_thread(execute)
        except HttpError as exc:
            status, message = _api_error(exc)
            raise CloudSqlError(f"{what}: HTTP {status}: {message}", status) from None
        except OSError as exc:
            raise CloudSqlError(f"{what}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    async def wait(
        self, project: str, operation: Mapping[str, Any], what: str, poll: PollPolicy
    ) -> dict[str, Any]:
        """Poll the operation to DONE; its final resource. OperationFailed on error/timeout."""
        name = str(operation["name"])
        give_up = time.monotonic() + poll.timeout
        delay = poll.initial
        op = dict(operation)
        while op.get("status") != "DONE":
            if time.monotonic() + delay > give_up:
                with contextlib.suppress(CloudSqlError):
                    await self.call(
                        f"{what}: cancel",
                        lambda s: s.operations().cancel(project=project, operation=name),
                    )
                raise OperationFailed(
                    f"{what}: operation {name} did not finish within {poll.timeout:g}s "
                    f"(last status {op.get('status')}); cancelled"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, poll.maximum)
            op = await self.call(
                f"{what}: poll", lambda s: s.operations().get(project=project, operation=name)
            )
        errors = (op.get("error") or {}).get("errors") or []
        if errors:
            text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
            raise OperationFailed(f"{what}: operation {name} failed: {text}")
        return op

    async def run(
        self, project: str, what: str, build: Callable[[Any], Any], poll: PollPolicy
    ) -> dict[str, Any]:
        """Start an operation and wait for it."""
        return await self.wait(project, await self.call(what, build), what, poll)


def open_api(
    credentials: GoogleCredentials | dict[str, str],
    endpoint: str | None,
    *,
    what: str,
    request_deadline: float = 60.0,
) -> SqlAdmin:
    creds = build_credentials(credentials, endpoint, scopes=CLOUD_PLATFORM_SCOPES, what=what)
    return SqlAdmin(creds, endpoint, request_deadline=request_deadline)


def open_staging(
    staging: StagingOptions, default_credentials: GoogleCredentials | dict[str, str], what: str
) -> Any:
    """The staging bucket as a drd GCSStorage (streamed, verified reads and uploads)."""
    from drd.storage.gcs import GCSStorage

    creds_spec = staging.credentials or default_credentials
    creds = build_credentials(creds_spec, staging.endpoint, scopes=STORAGE_SCOPES, what=what)
    return GCSStorage(
        "cloudsql-staging",
        staging.bucket,
        staging.prefix,
        project=staging.project,
        endpoint=staging.endpoint,
        credentials=creds,
        chunk_size=8 << 20,
        timeout=60.0,
        retry_deadline=60.0,
    )


# ---------------------------------------------------------------------------------------------
# Rows per table in a plain pg_dump (the export's own snapshot)

_COPY_RE = re.compile(rb"^COPY (.+?)(?: \(.*\))? FROM stdin;$")


class CopyRowCounter:
    """Counts the rows of every `COPY t (...) FROM stdin;` block of a plain pg_dump stream
    (one row per line; the block ends with a line `\\.`). Keys are the names as pg_dump writes
    them (quote_ident'ed, schema-qualified: drd.strategies.postgres_stats uses the same)."""

    _SQL_LINE_LIMIT = 64 << 10

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._table: str | None = None
        self._line = bytearray()  # the current line (SQL: up to the limit; COPY: 3 bytes)
        self._line_len = 0

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl
            keep = 3 if self._table is not None else self._SQL_LINE_LIMIT
            if len(self._line) < keep:
                self._line += data[pos : min(end, pos + keep - len(self._line))]
            self._line_len += end - pos
            if nl < 0:
                return
            self._end_line()
            pos = nl + 1

    def _end_line(self) -> None:
        line, length = bytes(self._line), self._line_len
        self._line.clear()
        self._line_len = 0
        if self._table is not None:
            if length == 2 and line == b"\\.":
                self._table = None
            else:
                self.counts[self._table] += 1
            return
        if length <= self._SQL_LINE_LIMIT:
            m = _COPY_RE.match(line)
            if m:
                self._table = m.group(1).decode("utf-8", "replace")
                self.counts.setdefault(self._table, 0)


# ---------------------------------------------------------------------------------------------


class CloudSqlStrategy(Strategy[CloudSqlOptions]):
    kind: ClassVar[str] = "cloudsql"
    Options: ClassVar[type[SourceOptions]] = CloudSqlOptions
    # Restore tests: only into a new instance in a scratch project the plan names (there is no
    # default); the scratch environment checks the copy itself (drd.verify.scratch.cloudsql_env).
    scratch_kinds: ClassVar[tuple[str, ...]] = ("cloudsql-scratch-project",)
    default_scratch: ClassVar[str | None] = None
    scratch_example: ClassVar[str] = "{kind: cloudsql-scratch-project, project: ...}"

    def _poll(self) -> PollPolicy:
        o = self.opts
        return PollPolicy(o.operation_timeout, o.poll_initial, o.poll_max)

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        o = self.opts
        where = f"source {o.name!r} (Cloud SQL {o.project}/{o.instance})"
        try:
            api = open_api(
                o.credentials,
                o.endpoint,
                what=f"{where}: credentials",
                request_deadline=o.request_deadline,
            )
        except ConfigError as exc:
            raise SourceError(str(exc)) from None
        try:
            try:
                instance = await api.call(
                    f"{where}: instances.get",
                    lambda s: s.instances().get(project=o.project, instance=o.instance),
                )
                managed = await self._managed_backup(api, where) if "managed" in o.modes else None
            except CloudSqlError as exc:
                raise SourceError(str(exc)) from None
            meta: dict[str, Any] = {
                "project": o.project,
                "instance": o.instance,
                "database_version": instance.get("databaseVersion"),
                "region": instance.get("region"),
                "modes": list(o.modes),
            }
            if managed is not None:
                meta["managed"] = managed
            if "export" in o.modes:
                counter = CopyRowCounter()
                size = 0
                async for chunk in self._export(api, where, meta):
                    counter.feed(chunk)
                    size += len(chunk)
                    yield chunk
                meta.update(
                    {
                        "format": FORMAT_EXPORT,
                        "database": o.database,
                        "dump_bytes": size,
                        "statistics": {
                            "snapshot": "the export's own (rows counted in the exported SQL)",
                            "row_counts": counter.counts,
                            "captured": {
                                key: {"error": "not supported for cloudsql sources"}
                                for key in self.capture_queries
                            },
                        },
                    }
                )
            else:
                assert managed is not None
                pointer = json.dumps({"cloudsql_managed_backup": managed}, sort_keys=True)
                yield pointer.encode()
                meta["format"] = FORMAT_MANAGED
            self._metadata = meta
        finally:
            await asyncio.to_thread(api.close)

    async def _managed_backup(self, api: SqlAdmin, where: str) -> dict[str, Any]:
        o = self.opts
        description = f"drd {o.name} {secrets.token_hex(4)}"
        op = await api.run(
            o.project,
            f"{where}: backupRuns.insert",
            lambda s: s.backupRuns().insert(
                project=o.project, instance=o.instance, body={"description": description}
            ),
            self._poll(),
        )
        run_id = str((op.get("backupContext") or {}).get("backupId") or "")
        if not run_id:
            raise CloudSqlError(f"{where}: the backup operation named no backup run")
        run = await api.call(
            f"{where}: backupRuns.get",
            lambda s: s.backupRuns().get(project=o.project, instance=o.instance, id=run_id),
        )
        if run.get("status") != "SUCCESSFUL":
            raise CloudSqlError(f"{where}: backup run {run_id} is {run.get('status')}")
        return {
            "backup_run_id": run_id,
            "project": o.project,
            "instance": o.instance,
            "status": run.get("status"),
            "enqueued_time": run.get("enqueuedTime"),
            "start_time": run.get("startTime"),
            "end_time": run.get("endTime"),
            "location": run.get("location"),
            "description": description,
            "operation": op.get("name"),
        }

    async def _export(
        self, api: SqlAdmin, where: str, meta: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        from drd.errors import StorageError

        o = self.opts
        assert o.staging is not None and o.database is not None
        try:
            staging = open_staging(o.staging, o.credentials, f"{where}: staging credentials")
        except ConfigError as exc:
            raise SourceError(str(exc)) from None
        key = f"drd-export-{o.name}-{secrets.token_hex(8)}.sql"
        uri = f"gs://{o.staging.bucket}/{staging._object_name(key)}"
        database = o.database
        try:
            try:
                op = await api.run(
                    o.project,
                    f"{where}: instances.export",
                    lambda s: s.instances().export(
                        project=o.project,
                        instance=o.instance,
                        body={
                            "exportContext": {
                                "kind": "sql#exportContext",
                                "fileType": "SQL",
                                "uri": uri,
                                "databases": [database],
                                "offload": False,
                            }
                        },
                    ),
                    self._poll(),
                )
            except CloudSqlError as exc:
                raise SourceError(str(exc)) from None
            meta["export"] = {"operation": op.get("name"), "uri": uri}
            try:
                reader = staging.open_reader(key)
                try:
                    async for chunk in reader:
                        yield chunk
                finally:
                    await reader.aclose()
            except StorageError as exc:
                raise SourceError(f"{where}: reading the export {uri}: {exc}") from None
        finally:
            # Never outlives the job: deleted after success, failure, timeout and cancellation.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.ensure_future(staging.delete(key)))
            await staging.close()

    # -- restore --------------------------------------------------------------------------

    @classmethod
    async def restore(
        cls,
        chunks: AsyncIterator[bytes],
        target: str,
        metadata: Mapping[str, Any],
        *,
        poll: PollPolicy | None = None,
        clone: Mapping[str, Any] | None = None,
    ) -> RestoreOutcome:
        """`clone` (a restore test with `pitr:`): instead of restoring the backup, clone the
        source named there at its `point` into the target instance (drd.strategies.
        cloudsql_pitr); the backup is still read to its end, so its integrity is proven."""
        try:
            t = CloudSqlTarget.parse(target)
        except ValueError as exc:
            raise RestoreError(f"restore target: {exc}") from None
        try:
            api = open_api(t.credentials, t.endpoint, what="restore target credentials")
        except ConfigError as exc:
            raise RestoreError(str(exc)) from None
        try:
            if clone is not None:
                return await _clone_instead(api, t, chunks, clone, poll or PollPolicy())
            return await restore_into(api, t, chunks, metadata, poll or PollPolicy())
        finally:
            await asyncio.to_thread(api.close)


async def _clone_instead(
    api: SqlAdmin,
    target: CloudSqlTarget,
    chunks: AsyncIterator[bytes],
    clone: Mapping[str, Any],
    poll: PollPolicy,
) -> RestoreOutcome:
    from drd.strategies.cloudsql_pitr import clone_at, rfc3339

    async for _ in chunks:  # every byte authenticated: the drd copy is proven as well
        pass
    point = clone["point"]
    made = await clone_at(
        api,
        source_project=str(clone["source_project"]),
        source_instance=str(clone["source_instance"]),
        destination_project=target.project,
        name=target.instance,
        point=point,
        labels=dict(clone.get("labels") or {}),
        poll=poll,
    )
    return RestoreOutcome(
        target=target.shown,
        details={
            "method": "clone",
            "point_in_time": rfc3339(point),
            "source": f"{clone['source_project']}/{clone['source_instance']}",
            "instance": target.instance,
            "recovery_window": {
                "earliest": rfc3339(made.window.earliest),
                "latest": rfc3339(made.window.latest),
            },
            "rpo_seconds": round(made.log_lag_seconds, 3),
        },
    )


@dataclass(frozen=True)
class CloudSqlTarget:
    project: str
    instance: str
    database: str | None
    endpoint: str | None
    credentials: dict[str, str]
    staging: StagingOptions | None

    @property
    def shown(self) -> str:
        return f"cloudsql://{self.project}/{self.instance}/{self.database or ''}"

    @classmethod
    def parse(cls, text: str) -> CloudSqlTarget:
        parts = urlsplit(text)
        if parts.scheme != "cloudsql" or not parts.netloc:
            raise ValueError("expected cloudsql://PROJECT/INSTANCE/DATABASE?endpoint=...")
        path = [unquote(p) for p in parts.path.strip("/").split("/") if p]
        if not 1 <= len(path) <= 2:
            raise ValueError("expected cloudsql://PROJECT/INSTANCE[/DATABASE]")
        params = dict(parse_qsl(parts.query))
        unknown = set(params) - {
            "endpoint",
            "credentials",
            "staging",
            "staging_endpoint",
            "staging_credentials",
            "staging_project",
        }
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        endpoint = check_endpoint(params.get("endpoint"))
        staging = None
        if "staging" in params:
            st = urlsplit(params["staging"])
            if st.scheme != "gs":
                raise ValueError("staging: expected gs://BUCKET/PREFIX")
            staging = StagingOptions(
                bucket=st.netloc,
                prefix=st.path.strip("/") or "drd-staging",
                project=params.get("staging_project"),
                endpoint=params.get("staging_endpoint"),
                credentials=_credentials_param(params.get("staging_credentials"))
                if "staging_credentials" in params
                else None,
            )
        creds = _credentials_param(params.get("credentials"))
        return cls(
            project=unquote(parts.netloc),
            instance=path[0],
            database=path[1] if len(path) > 1 else None,
            endpoint=endpoint,
            credentials={"source": creds.source, **({"name": creds.name} if creds.name else {})},
            staging=staging,
        )


def _credentials_param(text: str | None) -> GoogleCredentials:
    if text is None or text == "anonymous":
        return GoogleCredentials(source="anonymous")
    source, _, name = text.partition(":")
    return GoogleCredentials(source=source, name=name)  # type: ignore[arg-type]


async def restore_into(
    api: SqlAdmin,
    target: CloudSqlTarget,
    chunks: AsyncIterator[bytes],
    metadata: Mapping[str, Any],
    poll: PollPolicy,
) -> RestoreOutcome:
    """Restore a cloudsql backup into `target` (see the module docstring)."""
    fmt = metadata.get("format")
    where = f"restore into {target.shown}"
    if fmt == FORMAT_MANAGED:
        return await _restore_managed(api, target, chunks, metadata, poll, where)
    if fmt != FORMAT_EXPORT:
        raise RestoreError(f"{where}: unsupported dump format {fmt!r}")
    if target.database is None or target.staging is None:
        raise RestoreError(f"{where}: an export restores into a DATABASE, with ?staging=gs://...")
    from drd.errors import StorageError

    p, i, db = target.project, target.instance, target.database
    try:
        await api.call(
            f"{where}: databases.get",
            lambda s: s.databases().get(project=p, instance=i, database=db),
        )
        raise TargetExists(f"{where}: the database already exists")
    except CloudSqlError as exc:
        if exc.code != 404:
            raise RestoreError(str(exc)) from None
    staging = open_staging(target.staging, target.credentials, f"{where}: staging credentials")
    key = f"drd-import-{secrets.token_hex(8)}.sql"
    uri = f"gs://{target.staging.bucket}/{staging._object_name(key)}"
    created = False
    size = 0
    try:
        writer = await staging.open_writer(key)
        try:
            async for chunk in chunks:
                size += len(chunk)
                await writer.write(chunk)
            await writer.commit()
        finally:
            await writer.abort()  # no-op once committed
        await api.run(
            p,
            f"{where}: databases.insert",
            lambda s: s.databases().insert(
                project=p, instance=i, body={"name": db, "project": p, "instance": i}
            ),
            poll,
        )
        created = True
        await api.run(
            p,
            f"{where}: instances.import",
            lambda s: s.instances().import_(
                project=p,
                instance=i,
                body={
                    "importContext": {
                        "kind": "sql#importContext",
                        "fileType": "SQL",
                        "uri": uri,
                        "database": db,
                    }
                },
            ),
            poll,
        )
    except BaseException as exc:
        if created:
            cleanup = asyncio.ensure_future(
                api.run(
                    p,
                    f"{where}: databases.delete",
                    lambda s: s.databases().delete(project=p, instance=i, database=db),
                    poll,
                )
            )
            try:
                await asyncio.shield(cleanup)
            except Exception as drop_exc:
                log.error("%s: could not delete the database again: %s", where, drop_exc)
        if isinstance(exc, CloudSqlError | StorageError):
            raise RestoreError(str(exc)) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.ensure_future(staging.delete(key)))
        await staging.close()
    return RestoreOutcome(
        target=target.shown,
        details={"method": "import", "database": db, "bytes": size, "instance": i},
    )


async def _restore_managed(
    api: SqlAdmin,
    target: CloudSqlTarget,
    chunks: AsyncIterator[bytes],
    metadata: Mapping[str, Any],
    poll: PollPolicy,
    where: str,
) -> RestoreOutcome:
    data = bytearray()
    async for chunk in chunks:  # read to the end: the stream's own checks must run
        if len(data) < 1 << 20:
            data += chunk
    managed = metadata.get("managed") or {}
    try:
        pointer = json.loads(bytes(data))["cloudsql_managed_backup"]
    except (ValueError, KeyError, TypeError):
        raise RestoreError(f"{where}: the backup's data is not a managed-backup record") from None
    if pointer != managed:
        raise RestoreError(f"{where}: the managed-backup record does not match the manifest")
    return await restore_backup_run(api, target, managed, poll, where)


async def restore_backup_run(
    api: SqlAdmin,
    target: CloudSqlTarget,
    managed: Mapping[str, Any],
    poll: PollPolicy,
    where: str,
) -> RestoreOutcome:
    """instances.restoreBackup of a managed backup run into an instance with no user database."""
    p, i = target.project, target.instance
    try:
        listed = await api.call(
            f"{where}: databases.list", lambda s: s.databases().list(project=p, instance=i)
        )
        user_dbs = [d["name"] for d in listed.get("items") or [] if d.get("name") != "postgres"]
        if user_dbs:
            raise TargetExists(
                f"{where}: restoreBackup replaces every database, and the instance has "
                f"{', '.join(user_dbs)}: restore into a fresh (scratch) instance"
            )
        body = {
            "restoreBackupContext": {
                "kind": "sql#restoreBackupContext",
                "backupRunId": str(managed["backup_run_id"]),
                "instanceId": str(managed["instance"]),
                "project": str(managed["project"]),
            }
        }
        await api.run(
            p,
            f"{where}: instances.restoreBackup",
            lambda s: s.instances().restoreBackup(project=p, instance=i, body=body),
            poll,
        )
    except CloudSqlError as exc:
        raise RestoreError(str(exc)) from None
    return RestoreOutcome(
        target=target.shown,
        details={"method": "restoreBackup", "backup_run_id": managed["backup_run_id"]},
    )
