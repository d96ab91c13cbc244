"""The `cloudsql-scratch-project` scratch kind: a restore test of a cloudsql source restores into
a new Cloud SQL instance in the plan's scratch project (drd.verify.scratch.cloudsql), never the
source's.

    restore_test:
      scratch:
        ledger:
          kind: cloudsql-scratch-project
          project: acme-dr-scratch           # never the source's project (drd.config.guard)
          tier: db-custom-1-3840             # default db-f1-micro
          region: europe-west1               # default the source instance's region
          staging: {bucket: acme-drd-scratch-staging}   # default the source's staging
          connect: "host={ip} dbname={database} user=drd sslmode=require"   # optional

The instance (`drd-scratch-<id>`, labelled `drd-scratch`) is created with the source's
credentials and endpoint (the service account needs the Cloud SQL Admin role on the scratch
project too), registered in drd.verify.scratch.registry before it is created (kind
`cloudsql-instance`,
so a crash leaves a record the next start deletes it by), and deleted when the test ends
however it ends (drd.verify.scratch.cloudsql.scratch_instance).

The restore is the strategy's own (`CloudSqlStrategy.restore`: import of an export through the
staging bucket, or restoreBackup of a managed backup run), so the report's phases are those of
every kind: fetch, decrypt_decompress, restore (upload to staging and the import/restoreBackup
operation), checks; creating and deleting the instance are scratch_setup and teardown.

Checks (`after_restore`): the restore operation ended DONE without error; the restored instance
holds the database (databases.list); the row counts recorded from the export match the restored
tables when drd can reach the instance's PostgreSQL:
- `connect` (a DSN template) in production: the instance's private IP from a host in its VPC
  (`{ip}` is the PRIVATE address, else the PRIMARY one), or a Cloud SQL Auth Proxy listening
  locally for `{connection_name}`; the scratch instance's user and password must exist (set
  them with a `command` check or an org policy; drd creates none);
- from a loopback endpoint (the local fake API in tests), the non-standard `drdLocalDsn` of the
  database resource, which names the local database behind it;
- otherwise the row counts are skipped (reported as such).

With `pitr:` the test is of Cloud SQL's own point-in-time recovery instead: a clone of the
source at a random point of its recovery window (drd.verify.scratch.cloudsql_pitr).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from drd.errors import RestoreError
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.cloudsql import resolve_dsn, target_url

if TYPE_CHECKING:
    from drd.config.models import Config

log = logging.getLogger(__name__)

FORMAT_EXPORT = "cloudsql-export-sql"


#: what each of the API's checks compares
_COMPARED = {
    "restore_operation": "the final state of the Cloud SQL import or restore operation",
    "databases": "the databases the scratch instance holds, against the backed-up database",
    "row_counts": "count(*) of every table of the scratch copy, against the export's counts",
}


def _result(name: str, status: str, detail: str, coverage: str) -> CheckResult:
    mapped = {"ok": "passed", "failed": "failed", "skipped": "skipped"}[status]
    return CheckResult(
        name,
        "cloudsql",
        mapped,  # type: ignore[arg-type]
        detail=detail,
        compared=_COMPARED[name],
        coverage=coverage if mapped != "skipped" else "",
    )


def _tables(metadata: Mapping[str, Any]) -> str:
    stats = metadata.get("statistics")
    counts = stats.get("row_counts") if isinstance(stats, Mapping) else None
    if not isinstance(counts, Mapping):
        return "every table"
    return f"{len(counts)} tables, {sum(int(n) for n in counts.values())} rows"


async def _checks(
    api: Any,
    scratch: Any,
    metadata: Mapping[str, Any],
    database: str,
    spec: ScratchSpec,
    loopback: bool,
    env: ScratchEnv,
) -> list[CheckResult]:
    from drd.verify.scratch.cloudsql import CloudSqlRestoreTest, _check

    results = [
        _result(
            "restore_operation",
            "ok",
            "the restore operation ended DONE without error",
            f"the operation on {scratch.project}/{scratch.name}",
        )
    ]
    export = metadata.get("format") == FORMAT_EXPORT
    dsn: str | None = None
    why_skipped = "a managed backup records no row counts"
    if export:
        try:
            dsn = await resolve_dsn(
                api, scratch.project, scratch.name, database, spec.connect, loopback
            )
        except Exception as exc:
            results.append(
                _result(
                    "row_counts",
                    "failed",
                    f"cannot reach the scratch instance's PostgreSQL: {exc}",
                    _tables(metadata),
                )
            )
            dsn = None
            export = False
            why_skipped = ""
        else:
            why_skipped = "no connection to the scratch instance (restore_test.scratch connect)"
    env.dsn = dsn
    found = CloudSqlRestoreTest(scratch.project, instance=scratch.name)
    try:
        await _check(
            api, scratch, metadata, database, (lambda p, i, d: dsn) if dsn else None, found
        )
    except Exception as exc:
        failed = "databases" if "databases" not in found.checks else "row_counts"
        found.checks[failed] = "failed"
        found.problems.append(f"cannot read the restored copy: {exc}")
    problems = list(found.problems)
    db_problems = [p for p in problems if p.startswith("databases ")]
    row_problems = [p for p in problems if p not in db_problems]
    if "databases" in found.checks:
        results.append(
            _result(
                "databases",
                found.checks["databases"],
                "; ".join(db_problems) or f"the instance holds {database}" if export else "",
                f"database {database}",
            )
        )
    status = found.checks.get("row_counts")
    if status is not None and not any(r.name == "row_counts" for r in results):
        detail = "; ".join(row_problems)
        if status == "skipped":
            detail = why_skipped
        elif status == "ok":
            detail = "every table holds the rows counted in the export"
        results.append(_result("row_counts", status, detail, _tables(metadata)))
    return results


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The cloudsql-scratch-project scratch kind: a scratch instance in `spec.project` for a
    backup of the cloudsql source `request.source`."""
    import asyncio

    from drd.storage.google_auth import is_loopback_url
    from drd.strategies.cloudsql import (
        CloudSqlError,
        CloudSqlOptions,
        PollPolicy,
        StagingOptions,
    )
    from drd.verify.scratch.cloudsql import SMALLEST_TIER, scratch_instance, source_api

    if spec.pitr is not None:
        from drd.verify.scratch.cloudsql_pitr import open_pitr_env

        async with open_pitr_env(spec, request) as pitr_env:
            yield pitr_env
        return
    source, metadata, state_dir = request.source, request.metadata, request.state_dir
    if not isinstance(source, CloudSqlOptions) or spec.project is None:
        raise RestoreError("a cloudsql-scratch-project holds only cloudsql sources")
    poll = PollPolicy(source.operation_timeout, source.poll_initial, source.poll_max)
    staging = (
        StagingOptions.model_validate(spec.staging) if spec.staging is not None else source.staging
    )
    export = metadata.get("format") == FORMAT_EXPORT
    if export and staging is None:
        raise RestoreError("restoring a cloudsql export needs a staging bucket (scratch staging)")
    api, api_spec = source_api(source)
    version = str(metadata.get("database_version") or "POSTGRES_15")
    tier = spec.tier or SMALLEST_TIER
    database = str(metadata.get("database") or "restored")
    loopback = source.endpoint is not None and is_loopback_url(source.endpoint)
    try:
        async with scratch_instance(
            api,
            spec.project,
            database_version=version,
            region=spec.region or (str(metadata["region"]) if metadata.get("region") else None),
            tier=tier,
            poll=poll,
            state_dir=state_dir,
            api_spec=api_spec,
        ) as scratch:
            env = ScratchEnv(
                kind=spec.kind,
                target=target_url(
                    spec.project,
                    scratch.name,
                    database if export else None,
                    endpoint=source.endpoint,
                    credentials=source.credentials,
                    staging=staging,
                ),
                restore_options={"poll": poll},
                description=(
                    f"Cloud SQL scratch instance {spec.project}/{scratch.name} ({version}, {tier})"
                ),
                resource=f"{spec.project}/{scratch.name}",
            )

            async def after_restore() -> list[CheckResult]:
                return await _checks(api, scratch, metadata, database, spec, loopback, env)

            env.after_restore = after_restore
            yield env
    except CloudSqlError as exc:
        raise RestoreError(f"scratch instance in {spec.project}: {exc}") from None
    finally:
        await asyncio.to_thread(api.close)


async def sweep_labelled_instances(cfg: Config) -> list[str]:
    """Delete labelled drd-scratch instances left in every configured scratch project.

    The leftover registry covers a crash after an instance was recorded; this covers the rest:
    an instance whose create request was still in flight when its test was cancelled or the
    process died. Only instances older than twice the plan's restore-test timeout are taken, so
    a test running elsewhere (the CLI, another host) is never touched. Failures are logged: a
    scratch project that cannot be listed must not keep the daemon from starting.
    """
    from drd.strategies.cloudsql import CloudSqlOptions, PollPolicy, open_api
    from drd.verify.scratch.cloudsql import sweep_scratch_instances
    from drd.verify.scratch.cloudsql_pitr import destination_project

    gone: list[str] = []
    for plan in cfg.plans:
        for source in plan.sources:
            if not isinstance(source, CloudSqlOptions):
                continue
            spec = plan.restore_test.scratch_for(source)
            if spec is None or spec.kind != "cloudsql-scratch-project":
                continue
            project = destination_project(spec, source)
            try:
                api = open_api(
                    source.credentials,
                    source.endpoint,
                    what=f"source {source.name!r}: credentials",
                    request_deadline=source.request_deadline,
                )
                poll = PollPolicy(source.operation_timeout, source.poll_initial, source.poll_max)
                older_than = 2 * plan.restore_test.timeout.total_seconds()
                try:
                    gone += await sweep_scratch_instances(
                        api, project, poll=poll, older_than=older_than
                    )
                finally:
                    api.close()
            except Exception as exc:  # reported, retried at the next start
                log.warning(
                    "plan %s: cannot sweep scratch instances in %s: %s",
                    plan.name,
                    project,
                    exc,
                )
    return gone
