"""`cloudsql-scratch-project` with `pitr:`: a restore test (or a drill) of Cloud SQL's own
point-in-time recovery.

    restore_test:
      scratch:
        ledger:
          kind: cloudsql-scratch-project
          pitr: clone-in-source-project     # or `pitr: clone` with `project:` (allowlisted)
          connect: "host={ip} dbname={database} user=drd sslmode=require"   # optional

Setup (scratch_setup): the source's recovery window is read from the API
(drd.strategies.cloudsql_pitr.recovery_window), a point is chosen at random inside it, and the
clone's name `drd-scratch-<id>` is recorded in the scratch registry before anything creates it.
Restore: the drd backup under test is read to its end (its integrity is still proven) and the
source is cloned at the point (instances.clone with pointInTime), then labelled drd-scratch.
Teardown deletes the clone however the test ended; a crash leaves a registry record, and the
daemon's start-up sweep also finds old labelled drd-scratch-* instances in the project the
clones are made in.

Checks: the clone operation ended DONE without error; the clone is RUNNABLE, of the backed-up
database version and labelled; it holds the source's database; and, when drd can reach its
PostgreSQL (`connect`, or the local fake's DSN from a loopback endpoint), every table the backup
recorded is there and readable (count(*) of each, reported). The counts are not compared with
the export's: the clone is of another moment than the export, so only a table missing or
unreadable fails.

The restore's details carry the window as the clone saw it and `rpo_seconds`, how far its latest
recoverable time trailed the clock: a drill reports that as the source's RPO (what a recovery
then would have lost), instead of the age of the drd backup it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

from drd.errors import RestoreError
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest

_COMPARED = {
    "restore_operation": "the final state of the Cloud SQL clone operation",
    "clone_instance": "the clone's state, database version and labels, from instances.get",
    "databases": "the databases the clone holds, against the source's backed-up database",
    "tables": "every table the backup recorded, present in the clone and counted (count(*))",
}


def _result(name: str, status: str, detail: str, coverage: str = "", **extra: Any) -> CheckResult:
    return CheckResult(
        name,
        "cloudsql",
        status,  # type: ignore[arg-type]
        detail=detail,
        compared=_COMPARED[name],
        coverage=coverage if status != "skipped" else "",
        **extra,
    )


def destination_project(spec: ScratchSpec, source: Any) -> str:
    """Where the clones of `source` are made under `spec`."""
    if spec.pitr == "clone-in-source-project" or spec.project is None:
        return str(source.project)
    return spec.project


@contextlib.asynccontextmanager
async def open_pitr_env(
    spec: ScratchSpec, request: ScratchRequest, *, rng: random.Random | None = None
) -> AsyncIterator[ScratchEnv]:
    """The PITR clone environment of the cloudsql source `request.source` (module docstring)."""
    from drd.storage.google_auth import is_loopback_url
    from drd.strategies.cloudsql import CloudSqlError, CloudSqlOptions, PollPolicy
    from drd.strategies.cloudsql_pitr import random_point, recovery_window, rfc3339
    from drd.verify.scratch.cloudsql import (
        reserved_instance,
        scratch_labels,
        source_api,
        target_url,
    )

    source, metadata = request.source, request.metadata
    if not isinstance(source, CloudSqlOptions):
        raise RestoreError("a cloudsql-scratch-project holds only cloudsql sources")
    poll = PollPolicy(source.operation_timeout, source.poll_initial, source.poll_max)
    project = destination_project(spec, source)
    api, api_spec = source_api(source)
    loopback = source.endpoint is not None and is_loopback_url(source.endpoint)
    database = source.database or str(metadata.get("database") or "postgres")
    try:
        window = await recovery_window(api, source.project, source.instance)
        point = random_point(window, rng)
        async with reserved_instance(
            api, project, poll=poll, state_dir=request.state_dir, api_spec=api_spec
        ) as scratch:
            env = ScratchEnv(
                kind=spec.kind,
                target=target_url(
                    project,
                    scratch.name,
                    None,
                    endpoint=source.endpoint,
                    credentials=source.credentials,
                    staging=None,
                ),
                restore_options={
                    "poll": poll,
                    "clone": {
                        "source_project": source.project,
                        "source_instance": source.instance,
                        "point": point,
                        "labels": scratch_labels(scratch),
                    },
                },
                description=(
                    f"Cloud SQL point-in-time clone {project}/{scratch.name} of "
                    f"{source.project}/{source.instance} at {rfc3339(point)}"
                ),
                resource=f"{project}/{scratch.name}",
                note=(
                    f"point-in-time recovery: cloned at {rfc3339(point)}, chosen at random in "
                    f"the recovery window {window.shown}"
                ),
            )

            async def after_restore() -> list[CheckResult]:
                return await _checks(
                    api, project, scratch.name, metadata, database, spec, loopback, env
                )

            env.after_restore = after_restore
            yield env
    except CloudSqlError as exc:
        raise RestoreError(f"point-in-time clone in {project}: {exc}") from None
    finally:
        await asyncio.to_thread(api.close)


async def _checks(
    api: Any,
    project: str,
    name: str,
    metadata: Mapping[str, Any],
    database: str,
    spec: ScratchSpec,
    loopback: bool,
    env: ScratchEnv,
) -> list[CheckResult]:
    from drd.verify.scratch.cloudsql import LABEL, resolve_dsn

    results = [
        _result(
            "restore_operation",
            "passed",
            "the clone operation ended DONE without error",
            f"the clone {project}/{name}",
        )
    ]
    body = await api.call(
        f"instances.get {project}/{name}",
        lambda s: s.instances().get(project=project, instance=name),
    )
    problems = []
    if body.get("state") != "RUNNABLE":
        problems.append(f"the clone is {body.get('state')}, not RUNNABLE")
    version = metadata.get("database_version")
    if version and body.get("databaseVersion") != version:
        problems.append(f"the clone runs {body.get('databaseVersion')}, the backup {version}")
    if ((body.get("settings") or {}).get("userLabels") or {}).get(LABEL) != "true":
        problems.append(f"the clone is not labelled {LABEL}")
    results.append(
        _result(
            "clone_instance",
            "failed" if problems else "passed",
            "; ".join(problems) or f"RUNNABLE, {body.get('databaseVersion')}, labelled",
            f"instance {project}/{name}",
        )
    )
    listed = await api.call(
        f"databases.list {project}/{name}",
        lambda s: s.databases().list(project=project, instance=name),
    )
    names = sorted(str(d.get("name")) for d in listed.get("items") or [])
    held = database in names
    results.append(
        _result(
            "databases",
            "passed" if held else "failed",
            f"the clone holds {database}" if held else f"{database} is missing: {names}",
            f"database {database}",
        )
    )
    if not held:
        return results
    try:
        dsn = await resolve_dsn(api, project, name, database, spec.connect, loopback)
    except Exception as exc:
        results.append(_result("tables", "failed", f"cannot reach the clone's PostgreSQL: {exc}"))
        return results
    env.dsn = dsn
    if dsn is None:
        results.append(
            _result(
                "tables", "skipped", "no connection to the clone (restore_test.scratch connect)"
            )
        )
        return results
    results.append(await _tables(dsn, metadata))
    return results


async def _tables(dsn: str, metadata: Mapping[str, Any]) -> CheckResult:
    import psycopg

    from drd.strategies import postgres_stats

    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            counts = await postgres_stats.row_counts(conn)
    except psycopg.Error as exc:
        return _result("tables", "failed", f"cannot count the clone's tables: {exc}")
    stats = metadata.get("statistics")
    recorded = stats.get("row_counts") if isinstance(stats, Mapping) else None
    expected = sorted(recorded) if isinstance(recorded, Mapping) else []
    missing = [t for t in expected if t not in counts]
    coverage = f"{len(counts)} tables, {sum(counts.values())} rows"
    if missing:
        detail = f"tables of the backup missing in the clone: {', '.join(missing)}"
    elif expected:
        detail = f"every table of the backup is in the clone ({coverage})"
    else:
        detail = f"every table of the clone is readable ({coverage})"
    return _result(
        "tables",
        "failed" if missing else "passed",
        detail,
        coverage,
        expected=expected or None,
        actual=counts,
    )
