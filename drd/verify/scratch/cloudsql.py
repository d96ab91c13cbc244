"""Cloud SQL scratch instances for restore tests (`cloudsql-scratch-project`).

A restore test of a cloudsql backup never touches the source project: it creates an instance in
the plan's *scratch project* (`drd-scratch-<id>`, the source's database version, the smallest
tier, labelled `drd-scratch: "true"` and `drd-scratch-id: <id>`), restores into it (an import of
the export, or restoreBackup of the managed backup run, naming the source project and
instance), runs the checks, and deletes the instance in `finally`, however the test ended.

Leftovers (a crashed drd, a delete that failed) are found two ways: a registry record
(drd.verify.scratch.registry, kind `cloudsql-instance`, written before the instance is created)
whose
`destroy` deletes the instance, and `sweep_scratch_instances`, which lists the scratch project's
instances and deletes every one labelled `drd-scratch` older than a grace period.

The restored copy is checked with what the API offers without connecting: the operation ended
DONE without error, and the restored instance holds the expected databases. When the caller can
reach the instance's PostgreSQL (`connect` gives a DSN for a database: Cloud SQL Auth Proxy,
private IP, or the local fake in tests), the row counts recorded from the export are compared
with the restored tables as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from drd.errors import RestoreError
from drd.strategies.cloudsql import (
    CloudSqlError,
    CloudSqlTarget,
    PollPolicy,
    SqlAdmin,
    StagingOptions,
    open_api,
    restore_into,
)

log = logging.getLogger(__name__)

KIND = "cloudsql-instance"
LABEL = "drd-scratch"
NAME_PREFIX = "drd-scratch-"
SMALLEST_TIER = "db-f1-micro"


@dataclass
class ScratchInstance:
    project: str
    name: str
    id: str


@contextlib.asynccontextmanager
async def reserved_instance(
    api: SqlAdmin,
    project: str,
    *,
    poll: PollPolicy,
    state_dir: Path | None = None,
    api_spec: Mapping[str, Any] | None = None,
) -> AsyncIterator[ScratchInstance]:
    """A scratch instance's name in `project`, recorded before anything creates it (with
    `state_dir`: a registry record naming the endpoint and the credential *source*, never a
    secret, lets a later sweep delete it should this process die), and the instance of that
    name deleted on exit, if it came to exist, however the block ends."""
    scratch_id = secrets.token_hex(6)
    name = NAME_PREFIX + scratch_id
    registration = None
    if state_dir is not None:
        from drd.verify.scratch.registry import register

        registration = register(
            state_dir, scratch_id, KIND, project=project, instance=name, api=dict(api_spec or {})
        )
    try:
        yield ScratchInstance(project, name, scratch_id)
    finally:
        from drd.verify.scratch.teardown import run_to_completion

        async def teardown() -> None:
            try:
                await delete_instance(api, project, name, poll)
            except Exception as exc:
                log.error("scratch instance %s/%s was not deleted: %s", project, name, exc)
                if registration is not None:
                    registration.abandon()  # the next sweep retries
            else:
                if registration is not None:
                    registration.release()

        # Runs to its end even when the test is cancelled (timeout, shutdown) meanwhile.
        await run_to_completion(teardown())


def scratch_labels(scratch: ScratchInstance) -> dict[str, str]:
    """The labels that mark an instance as drd's, for the label sweep."""
    return {LABEL: "true", f"{LABEL}-id": scratch.id}


@contextlib.asynccontextmanager
async def scratch_instance(
    api: SqlAdmin,
    project: str,
    *,
    database_version: str,
    region: str | None = None,
    tier: str = SMALLEST_TIER,
    poll: PollPolicy,
    state_dir: Path | None = None,
    api_spec: Mapping[str, Any] | None = None,
) -> AsyncIterator[ScratchInstance]:
    """A new labelled instance in `project`, deleted on exit (see the module docstring and
    reserved_instance)."""
    async with reserved_instance(
        api, project, poll=poll, state_dir=state_dir, api_spec=api_spec
    ) as scratch:
        body: dict[str, Any] = {
            "name": scratch.name,
            "databaseVersion": database_version,
            "settings": {
                "tier": tier,
                "userLabels": scratch_labels(scratch),
                "backupConfiguration": {"enabled": False},
            },
        }
        if region:
            body["region"] = region
        await api.run(
            project,
            f"create scratch instance {project}/{scratch.name}",
            lambda s: s.instances().insert(project=project, body=body),
            poll,
        )
        yield scratch


async def delete_instance(api: SqlAdmin, project: str, name: str, poll: PollPolicy) -> None:
    """Delete a scratch instance (only ever one named drd-scratch-*); gone already is fine."""
    if not name.startswith(NAME_PREFIX):
        raise ValueError(f"refusing to delete {name!r}: not a drd scratch instance")
    try:
        await api.run(
            project,
            f"delete scratch instance {project}/{name}",
            lambda s: s.instances().delete(project=project, instance=name),
            poll,
        )
    except CloudSqlError as exc:
        if exc.code != 404:
            raise


async def sweep_scratch_instances(
    api: SqlAdmin, project: str, *, poll: PollPolicy, older_than: float = 0.0
) -> list[str]:
    """Delete every instance in `project` labelled drd-scratch and named drd-scratch-*, created
    more than `older_than` seconds ago; the names deleted."""
    listed = await api.call(
        f"list instances of {project}",
        lambda s: s.instances().list(project=project, filter=f"settings.userLabels.{LABEL}:true"),
    )
    now = datetime.now(UTC)
    gone = []
    for inst in listed.get("items") or []:
        labels = (inst.get("settings") or {}).get("userLabels") or {}
        name = str(inst.get("name", ""))
        if labels.get(LABEL) != "true" or not name.startswith(NAME_PREFIX):
            continue
        created = inst.get("createTime")
        if older_than and created:
            age = (
                now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))
            ).total_seconds()
            if age < older_than:
                continue
        await delete_instance(api, project, name, poll)
        gone.append(name)
    return gone


def source_api(source: Any) -> tuple[Any, dict[str, Any]]:
    """The Admin API client a cloudsql source's scratch instances are made with (its own
    credentials and endpoint), and what a registry record keeps to delete them after a crash
    (the endpoint and where the credentials come from, never the credentials). RestoreError
    when the client cannot be built."""
    from drd.errors import ConfigError, RestoreError

    try:
        api = open_api(
            source.credentials,
            source.endpoint,
            what=f"source {source.name!r}: credentials",
            request_deadline=source.request_deadline,
        )
    except ConfigError as exc:
        raise RestoreError(str(exc)) from None
    spec = {
        "endpoint": source.endpoint,
        "credentials": source.credentials.model_dump(exclude_none=True),
    }
    return api, spec


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    """drd.verify.scratch.registry Destroyer for kind `cloudsql-instance`."""
    spec = dict(record.get("api") or {})
    api = open_api(
        spec.get("credentials") or {"source": "anonymous"},
        spec.get("endpoint"),
        what="scratch sweep credentials",
    )
    try:
        await delete_instance(api, str(record["project"]), str(record["instance"]), PollPolicy(600))
    finally:
        await asyncio.to_thread(api.close)


def _credentials_param(creds: Any) -> str | None:
    if creds is None:
        return None
    source = getattr(creds, "source", None) or dict(creds).get("source")
    name = getattr(creds, "name", None) if not isinstance(creds, Mapping) else creds.get("name")
    return "anonymous" if source == "anonymous" else f"{source}:{name}"


def target_url(
    project: str,
    instance: str,
    database: str | None,
    *,
    endpoint: str | None,
    credentials: Any,
    staging: Any,
) -> str:
    """The `cloudsql://` restore target (drd.strategies.cloudsql.CloudSqlTarget) of a scratch
    instance: no secret, only where the credentials come from."""
    path = f"cloudsql://{quote(project, safe='')}/{quote(instance, safe='')}"
    if database:
        path += f"/{quote(database, safe='')}"
    params: dict[str, str] = {}
    if endpoint:
        params["endpoint"] = endpoint
    creds = _credentials_param(credentials)
    if creds:
        params["credentials"] = creds
    if staging is not None:
        params["staging"] = f"gs://{staging.bucket}/{staging.prefix}"
        if staging.endpoint:
            params["staging_endpoint"] = staging.endpoint
        if staging.project:
            params["staging_project"] = staging.project
        staging_creds = _credentials_param(staging.credentials)
        if staging_creds:
            params["staging_credentials"] = staging_creds
    return path + ("?" + urlencode(params) if params else "")


async def resolve_dsn(
    api: Any, project: str, instance: str, database: str, template: str | None, loopback: bool
) -> str | None:
    """A libpq DSN of `database` in the scratch instance (module docstring), or None."""
    if template is not None:
        body = await api.call(
            f"instances.get {project}/{instance}",
            lambda s: s.instances().get(project=project, instance=instance),
        )
        addresses = {
            str(a.get("type")): str(a.get("ipAddress"))
            for a in body.get("ipAddresses") or []
            if a.get("ipAddress")
        }
        ip = addresses.get("PRIVATE") or addresses.get("PRIMARY") or ""
        if "{ip}" in template and not ip:
            raise RestoreError(f"scratch instance {project}/{instance} has no IP address")
        return template.format(
            ip=ip,
            database=database,
            instance=instance,
            project=project,
            connection_name=str(body.get("connectionName") or ""),
        )
    if loopback:
        found = await api.call(
            f"databases.get {project}/{instance}/{database}",
            lambda s: s.databases().get(project=project, instance=instance, database=database),
        )
        dsn = found.get("drdLocalDsn")
        return str(dsn) if dsn else None
    return None


# ---------------------------------------------------------------------------------------------


@dataclass
class CloudSqlRestoreTest:
    """What one restore test did and found."""

    scratch_project: str
    instance: str = ""
    method: str = ""
    checks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


Connect = Callable[[str, str, str], str]  # (project, instance, database) -> DSN


async def restore_test(
    api: SqlAdmin,
    chunks: AsyncIterator[bytes],
    metadata: Mapping[str, Any],
    *,
    scratch_project: str,
    staging: StagingOptions | None,
    api_spec: Mapping[str, Any],
    poll: PollPolicy,
    database: str | None = None,
    connect: Connect | None = None,
    state_dir: Path | None = None,
    extra_checks: Callable[[str], Awaitable[list[str]]] | None = None,
) -> CloudSqlRestoreTest:
    """Create a scratch instance in `scratch_project`, restore the backup into it, check it,
    delete it. Raises only on failures of the environment (the instance could not be created);
    a restore or a check that fails is reported in `problems`."""
    started = time.monotonic()
    report = CloudSqlRestoreTest(scratch_project)
    version = str(metadata.get("database_version") or "POSTGRES_15")
    db = database or str(metadata.get("database") or "restored")
    async with scratch_instance(
        api,
        scratch_project,
        database_version=version,
        poll=poll,
        state_dir=state_dir,
        api_spec=api_spec,
    ) as scratch:
        report.instance = scratch.name
        target = CloudSqlTarget(
            project=scratch_project,
            instance=scratch.name,
            database=db,
            endpoint=None,
            credentials=dict(api_spec.get("credentials") or {}),
            staging=staging,
        )
        try:
            outcome = await restore_into(api, target, chunks, metadata, poll)
        except Exception as exc:
            report.problems.append(f"restore failed: {exc}")
            report.checks["restore"] = "failed"
        else:
            report.method = str(outcome.details.get("method"))
            report.checks["restore"] = "ok"
            await _check(api, scratch, metadata, db, connect, report)
            if extra_checks is not None and connect is not None:
                report.problems.extend(
                    await extra_checks(connect(scratch_project, scratch.name, db))
                )
    report.seconds = time.monotonic() - started
    return report


async def _check(
    api: SqlAdmin,
    scratch: ScratchInstance,
    metadata: Mapping[str, Any],
    database: str,
    connect: Connect | None,
    report: CloudSqlRestoreTest,
) -> None:
    listed = await api.call(
        "databases.list",
        lambda s: s.databases().list(project=scratch.project, instance=scratch.name),
    )
    names = {d.get("name") for d in listed.get("items") or []}
    managed_only = metadata.get("format") == "cloudsql-managed-backup"
    want = {database} if not managed_only else set()
    missing = sorted(str(n) for n in want - names)
    if missing:
        report.problems.append(f"databases missing after the restore: {', '.join(missing)}")
        report.checks["databases"] = "failed"
    else:
        report.checks["databases"] = "ok"
    expected = (metadata.get("statistics") or {}).get("row_counts")
    if connect is None or not isinstance(expected, dict) or managed_only:
        report.checks["row_counts"] = "skipped"
        return
    import psycopg

    from drd.strategies import postgres_stats

    dsn = connect(scratch.project, scratch.name, database)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        counts = await postgres_stats.row_counts(conn)
    differ = sorted(t for t in set(expected) | set(counts) if expected.get(t) != counts.get(t))
    if differ:
        report.problems.extend(
            f"table {t}: {counts.get(t)} rows restored, {expected.get(t)} exported" for t in differ
        )
        report.checks["row_counts"] = "failed"
    else:
        report.checks["row_counts"] = "ok"
