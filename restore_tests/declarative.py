"""The plan's declarative checks against a restored copy: SQL queries with an expectation,
freshness of a timestamp column, and files of a restored tree."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from drd.restore_tests import databases
from drd.restore_tests.expectations import QueryOutcome, Verdict, evaluate, evaluate_freshness
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import CheckSpec, FileSpec, FreshnessSpec, capture_key
from drd.strategies import get_strategy
from drd.strategies.statistics import CAPTURE_ROW_LIMIT, json_value, result_value


@dataclass(frozen=True)
class Restored:
    """Where the restored copy is, for the checks."""

    #: the source kind
    kind: str
    #: a DSN (postgres) or a path (sqlite file, files tree)
    target: str | Path
    #: when the backup was taken (freshness is judged against it)
    captured_at: datetime
    #: the source's results of "matches_source" queries, by capture key
    captured: Mapping[str, Any]

    @property
    def restored_as(self) -> str | None:
        """What the copy is (postgres, sqlite, tree): its kind's strategy says."""
        return get_strategy(self.kind).restored_as


def _result(check: CheckSpec, name: str, verdict: Verdict, query: str | None) -> CheckResult:
    return CheckResult(
        name=name,
        kind=check.kind,
        status=verdict.status,
        critical=check.critical,
        expected=verdict.expected,
        actual=verdict.actual,
        detail=verdict.detail,
        query=query,
    )


async def sql_check(check: CheckSpec, name: str, restored: Restored) -> CheckResult:
    assert check.sql is not None and check.expect is not None
    fetched = await databases.rows(restored.restored_as, restored.target, check.sql)
    if len(fetched) > CAPTURE_ROW_LIMIT and check.expect.kind in ("equals", "matches_source"):
        verdict = Verdict(
            "failed",
            None,
            f"more than {CAPTURE_ROW_LIMIT} rows",
            "the query returns too many rows to compare; aggregate it",
        )
        return _result(check, name, verdict, check.sql)
    value = result_value(fetched[:CAPTURE_ROW_LIMIT]) if fetched else None
    captured = None
    if check.expect.kind == "matches_source":
        captured = restored.captured.get(capture_key(check.sql))
    verdict = evaluate(check.expect, QueryOutcome(value, len(fetched)), captured)
    return _result(check, name, verdict, check.sql)


def _identifier(name: str) -> str:
    """`schema.table` or `"Mixed Case".t` as a safely quoted SQL name (both databases)."""
    parts = [p.strip().strip('"') for p in _split_dotted(name)]
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _split_dotted(name: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in name:
        if char == '"':
            quoted = not quoted
        if char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def freshness_query(spec: FreshnessSpec) -> str:
    if spec.sql is not None:
        return spec.sql
    assert spec.table is not None and spec.column is not None
    return f"SELECT max({_identifier(spec.column)}) FROM {_identifier(spec.table)}"


async def freshness_check(check: CheckSpec, name: str, restored: Restored) -> CheckResult:
    assert check.freshness is not None
    query = freshness_query(check.freshness)
    fetched = await databases.rows(restored.restored_as, restored.target, query)
    newest = fetched[0][0] if fetched and fetched[0] else None
    verdict = evaluate_freshness(newest, restored.captured_at, check.freshness.within)
    return _result(check, name, verdict, query)


def _file_facts(root: Path, spec: FileSpec) -> tuple[str | None, dict[str, Any]]:
    """(problem, facts) of a file in the restored tree, without following it out of the tree."""
    path = root / spec.path
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        return "the path leads out of the restored tree (through a symlink)", {}
    if not os.path.lexists(path):
        return None, {"exists": False}
    if not os.path.isfile(path):
        return None, {"exists": True, "type": "not a regular file"}
    facts: dict[str, Any] = {"exists": True, "size": os.path.getsize(path)}
    if spec.sha256 is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        facts["sha256"] = h.hexdigest()
    return None, facts


async def file_check(check: CheckSpec, name: str, restored: Restored) -> CheckResult:
    spec = check.file
    assert spec is not None
    problem, facts = await asyncio.to_thread(_file_facts, Path(restored.target), spec)
    expected: dict[str, Any] = {"exists": spec.exists}
    for key in ("size", "min_size", "max_size", "sha256"):
        if getattr(spec, key) is not None:
            expected[key] = getattr(spec, key)
    failures = [problem] if problem else []
    if not problem:
        if facts.get("exists") != spec.exists:
            failures.append("missing" if spec.exists else "exists but must not")
        elif spec.exists:
            size = facts.get("size")
            if "type" in facts:
                failures.append(facts["type"])
            if spec.size is not None and size != spec.size:
                failures.append(f"size {size}, not {spec.size}")
            if spec.min_size is not None and (size is None or size < spec.min_size):
                failures.append(f"size {size} below {spec.min_size}")
            if spec.max_size is not None and (size is None or size > spec.max_size):
                failures.append(f"size {size} above {spec.max_size}")
            if spec.sha256 is not None and facts.get("sha256") != spec.sha256:
                failures.append("content digest differs")
    verdict = Verdict(
        "failed" if failures else "passed", expected, json_value(facts), "; ".join(failures)
    )
    return _result(check, name, verdict, None)
