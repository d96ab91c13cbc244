"""Running every check of one restore test against its restored copy.

Built-in checks first (row counts and schema for databases, file digests for trees), then the
plan's checks in order. Each check is bounded by its own timeout and a check that breaks (an
SQL error, a lost connection, a command that cannot start) fails as that check, never the
whole run: the report lists every result.
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

from drd.restore_tests import builtin
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


def _statistics(metadata: Mapping[str, Any], part: str) -> Any:
    stats = metadata.get("statistics")
    if not isinstance(stats, Mapping):
        return None
    if isinstance(stats.get("error"), str):
        return stats  # the whole session failed: every part says why
    return stats.get(part)


async def _postgres_builtins(t: CheckTarget) -> list[CheckResult]:
    import psycopg

    try:
        async with await psycopg.AsyncConnection.connect(
            check_dsn(str(t.target)), autocommit=True
        ) as db:
            counts = await postgres_stats.row_counts(db)
            fingerprint = await postgres_stats.schema_fingerprint(db)
    except psycopg.Error as exc:
        why = f"cannot read the restored database: {error_text(exc)}"
        return [
            CheckResult("row_counts", "row_counts", "failed", detail=why),
            CheckResult("schema", "schema", "failed", detail=why),
        ]
    num = t.metadata.get("server_version_num")
    source_major = num // 10000 if isinstance(num, int) else None
    comparable = source_major is None or t.server_major is None or source_major == t.server_major
    return [
        builtin.row_counts(
            _statistics(t.metadata, "row_counts"),
            counts,
            list(t.metadata.get("exclude_tables") or []),
        ),
        builtin.schema(_statistics(t.metadata, "schema"), fingerprint, comparable=comparable),
    ]


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


#: the built-in checks by what the restored copy is (Strategy.restored_as)
_BUILTINS: dict[str, Callable[[CheckTarget], Awaitable[list[CheckResult]]]] = {
    "postgres": _postgres_builtins,
    "sqlite": _sqlite_builtins,
    "tree": _tree_builtins,
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
    restored = Restored(
        target.kind,
        target.target,
        target.captured_at,
        captured if isinstance(captured, Mapping) else {},
    )
    for number, check in enumerate(checks, start=1):
        name = check.display_name(number)
        query = check.sql or (freshness_query(check.freshness) if check.freshness else None)
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
