"""Running every check of one restore test against its restored copy.

Built-in checks first (for databases row counts, schema, sequences, the other objects, owners
and privileges, the database's properties, large objects and the rows' content; file digests
for trees), then the plan's checks in order. Each check is bounded by its own timeout and a
check that breaks (an SQL error, a lost connection, a command that cannot start) fails as that
check, never the whole run: the report lists every result.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from drd.restore_tests import builtin, mysql_checks
from drd.restore_tests.command import command_check
from drd.restore_tests.databases import check_dsn
from drd.restore_tests.declarative import (
    Restored,
    file_check,
    freshness_check,
    freshness_query,
    sql_check,
)
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import CheckSpec
from drd.strategies import file_digests, get_strategy, postgres_stats, sqlite_stats
from drd.strategies.statistics import error_text

#: how long the built-in checks may take together (they scan every table of the copy)
BUILTIN_TIMEOUT = timedelta(hours=1)


@dataclass
class CheckTarget:
    """What the checks run against."""

    #: the source kind (its strategy's restored_as says which built-in checks apply)
    kind: str
    #: the restored database's DSN (postgres) or the restored file or tree (sqlite, files)
    target: str | Path
    #: the backup's strategy metadata (statistics, versions, excluded tables)
    metadata: Mapping[str, Any]
    #: when the backup was taken
    captured_at: datetime
    #: the major version of the server holding the copy (postgres), None if unknown
    server_major: int | None = None
    #: environment for command checks (where the copy is, which backup it is)
    command_env: dict[str, str] = field(default_factory=dict)
    #: the working directory of command checks (drd.yaml's directory)
    cwd: Path = field(default_factory=Path.cwd)
    #: what the scratch environment gave the restore besides the target (a MySQL copy's
    #: password, when its URL has none)
    restore_options: Mapping[str, Any] = field(default_factory=dict)
    #: what the restore said about the copy (RestoreOutcome.details: e.g. whether owners and
    #: privileges were kept, which the built-in checks then compare or skip)
    restore_details: Mapping[str, Any] = field(default_factory=dict)


def _statistics(metadata: Mapping[str, Any], part: str) -> Any:
    stats = metadata.get("statistics")
    if not isinstance(stats, Mapping):
        return None
    if isinstance(stats.get("error"), str):
        return stats  # the whole session failed: every part says why
    return stats.get(part)


async def _postgres_builtins(t: CheckTarget) -> list[CheckResult]:
    """Each figure is read from the copy by the function that took it at backup time
    (drd.strategies.postgres_stats), then compared (drd.restore_tests.builtin)."""
    import psycopg

    from drd.strategies import postgres_content, postgres_inventory

    expected_content = _statistics(t.metadata, "content")
    readers: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "row_counts": postgres_stats.row_counts,
        "schema": postgres_stats.schema_fingerprint,
        "sequences": postgres_stats.sequence_values,
        "inventory": postgres_inventory.inventory,
        "large_objects": postgres_stats.large_objects,
        "grants": postgres_inventory.grants,
        "database": postgres_inventory.database_properties,
        "content": lambda db: postgres_content.verify(db, expected_content),
    }
    found: dict[str, Any] = {}
    broken: dict[str, str] = {}
    try:
        async with await psycopg.AsyncConnection.connect(
            check_dsn(str(t.target)), autocommit=True
        ) as db:
            for name, read in readers.items():
                try:
                    found[name] = await read(db)
                except psycopg.Error as exc:
                    broken[name] = f"cannot read the restored database: {error_text(exc)}"
    except psycopg.Error as exc:
        why = f"cannot read the restored database: {error_text(exc)}"
        broken = dict.fromkeys(readers, why)
    num = t.metadata.get("server_version_num")
    source_major = num // 10000 if isinstance(num, int) else None
    comparable = source_major is None or t.server_major is None or source_major == t.server_major
    owners_kept = t.restore_details.get("owners") != "dropped"
    compare: dict[str, Callable[[Any, Any], CheckResult]] = {
        "row_counts": lambda want, got: builtin.row_counts(
            want, got, list(t.metadata.get("exclude_tables") or [])
        ),
        "schema": lambda want, got: builtin.schema(want, got, comparable=comparable),
        "sequences": builtin.sequences,
        "inventory": lambda want, got: builtin.inventory(want, got, comparable=comparable),
        "large_objects": builtin.large_objects,
        "grants": lambda want, got: builtin.grants(
            want, got, owners_kept=owners_kept, comparable=comparable
        ),
        "database": lambda want, got: builtin.database(
            want, got, owners_kept=owners_kept, comparable=comparable
        ),
        "content": lambda want, got: builtin.content(want, got, comparable=comparable),
    }
    results = []
    for name, check in compare.items():
        if name in broken:
            results.append(CheckResult(name, name, "failed", detail=broken[name]))
        else:
            results.append(check(_statistics(t.metadata, name), found[name]))
    return results


def _sqlite_figures(path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return sqlite_stats.row_counts(db), sqlite_stats.schema_fingerprint(db)
    finally:
        db.close()


async def _sqlite_builtins(t: CheckTarget) -> list[CheckResult]:
    try:
        counts, fingerprint = await asyncio.to_thread(_sqlite_figures, Path(t.target))
    except sqlite3.Error as exc:
        why = f"cannot read the restored database: {error_text(exc)}"
        return [
            CheckResult("row_counts", "row_counts", "failed", detail=why),
            CheckResult("schema", "schema", "failed", detail=why),
        ]
    return [
        builtin.row_counts(_statistics(t.metadata, "row_counts"), counts),
        builtin.schema(_statistics(t.metadata, "schema"), fingerprint),
    ]


async def _tree_builtins(t: CheckTarget) -> list[CheckResult]:
    actual = await asyncio.to_thread(file_digests.tree_digests, Path(t.target))
    return [builtin.digests(_statistics(t.metadata, "file_digests"), actual)]


async def _mysql_builtins(t: CheckTarget) -> list[CheckResult]:
    password = t.restore_options.get("password")
    return await mysql_checks.mysql_builtins(
        str(t.target), t.metadata, password=password if isinstance(password, str) else None
    )


async def _gcs_builtins(t: CheckTarget) -> list[CheckResult]:
    """A gcs-bucket copy read back where it is: the scratch prefix (every object downloaded
    and hashed as GCS serves it) or the local directory (the files and the index)."""
    from drd.strategies import gcs_bucket, gcs_bucket_local

    expected = _statistics(t.metadata, "objects")
    target = str(t.target)
    if target.startswith("gs://"):
        found, total, problems = await asyncio.to_thread(gcs_bucket.read_prefix, target)
        where = target.partition("?")[0]
    else:
        read = await asyncio.to_thread(gcs_bucket_local.read_directory, Path(target))
        found, total, problems = read.digests, read.bytes, read.problems
        where = target
    return [builtin.objects(expected, found, total, problems, where=where)]


#: the built-in checks by what the restored copy is (Strategy.restored_as)
_BUILTINS: dict[str, Callable[[CheckTarget], Awaitable[list[CheckResult]]]] = {
    "postgres": _postgres_builtins,
    "sqlite": _sqlite_builtins,
    "tree": _tree_builtins,
    "mysql": _mysql_builtins,
    "gcs-objects": _gcs_builtins,
}


async def _timed(
    name: str,
    kind: str,
    critical: bool,
    limit: timedelta,
    run: Callable[[], Awaitable[CheckResult]],
    query: str | None = None,
) -> CheckResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit.total_seconds()):
            result = await run()
    except TimeoutError:
        result = CheckResult(
            name,
            kind,
            "failed",
            critical=critical,
            actual="timed out",
            detail=f"did not finish within {limit}",
            query=query,
        )
    except Exception as exc:
        result = CheckResult(
            name, kind, "failed", critical=critical, detail=error_text(exc), query=query
        )
    result.seconds = time.monotonic() - started
    return result


async def run_checks(target: CheckTarget, checks: Sequence[CheckSpec]) -> list[CheckResult]:
    """The built-in checks for the target's kind, then `checks`, in order."""
    results: list[CheckResult] = []
    restored_as = get_strategy(target.kind).restored_as
    builtins = _BUILTINS.get(restored_as) if restored_as is not None else None
    if builtins is not None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(BUILTIN_TIMEOUT.total_seconds()):
                found = await builtins(target)
        except TimeoutError:
            found = [CheckResult("statistics", "statistics", "failed", detail="timed out")]
        elapsed = time.monotonic() - started
        for result in found:
            result.seconds = elapsed / len(found)
        results.extend(found)
    stats = target.metadata.get("statistics")
    captured = stats.get("captured") if isinstance(stats, Mapping) else None
    password = target.restore_options.get("password")
    restored = Restored(
        target.kind,
        target.target,
        target.captured_at,
        captured if isinstance(captured, Mapping) else {},
        password if isinstance(password, str) else None,
    )
    for number, check in enumerate(checks, start=1):
        name = check.display_name(number)
        query = check.sql or (
            freshness_query(check.freshness, restored.restored_as) if check.freshness else None
        )
        run = _declarative(check, name, restored, target)
        results.append(await _timed(name, check.kind, check.critical, check.timeout, run, query))
    return results


def _declarative(
    check: CheckSpec, name: str, restored: Restored, target: CheckTarget
) -> Callable[[], Awaitable[CheckResult]]:
    if check.sql is not None:
        return lambda: sql_check(check, name, restored)
    if check.freshness is not None:
        return lambda: freshness_check(check, name, restored)
    if check.file is not None:
        return lambda: file_check(check, name, restored)
    return lambda: command_check(check, name, target.command_env, target.cwd)
