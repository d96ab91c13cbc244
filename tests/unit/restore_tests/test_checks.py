"""restore_tests: judging results (expectations, freshness), the built-in comparisons, result
rendering, and the statistics' canonical values; file checks and digests on real trees."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drd.restore_tests import builtin
from drd.restore_tests.declarative import Restored, file_check, freshness_query
from drd.restore_tests.expectations import (
    QueryOutcome,
    as_utc,
    evaluate,
    evaluate_freshness,
    same,
)
from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import CheckSpec, Expectation, FileSpec, FreshnessSpec, capture_key
from drd.strategies.file_digests import DigestList, tree_digests
from drd.strategies.statistics import json_value, result_value

UTC = dt.UTC
PLUS_ONE = dt.timezone(dt.timedelta(hours=1))


def outcome(value: Any, rows: int = 1) -> QueryOutcome:
    return QueryOutcome(value, rows)


@pytest.mark.parametrize(
    ("expect", "result", "status"),
    [
        ({"equals": 12.5}, outcome("12.50"), "passed"),  # numeric column, YAML float
        ({"equals": 7}, outcome(7), "passed"),
        ({"equals": 7}, outcome(8), "failed"),
        ({"equals": "Zürich"}, outcome("Zürich"), "passed"),
        ({"equals": [[1, "a"]]}, outcome([[1, "a"]]), "passed"),
        ({"equals": 7}, outcome(None, rows=0), "failed"),
        ({"equals": None}, outcome(None), "passed"),
        ({"at_least": 100}, outcome(100), "passed"),
        ({"at_least": 100}, outcome("99.99"), "failed"),
        ({"at_most": 5}, outcome(6), "failed"),
        ({"at_least": 1, "at_most": 3}, outcome(2), "passed"),
        ({"at_least": 1, "at_most": 3}, outcome(4), "failed"),
        ({"at_least": 1}, outcome("abc"), "failed"),
        ({"at_least": 1}, outcome(None, rows=0), "failed"),
        ({"non_empty": True}, outcome([[1], [2]], rows=2), "passed"),
        ({"non_empty": True}, outcome([], rows=0), "failed"),
    ],
)
def test_expectations(expect: dict[str, Any], result: QueryOutcome, status: str) -> None:
    verdict = evaluate(Expectation(**expect), result, None)
    assert verdict.status == status, verdict


def test_matches_source() -> None:
    expect = Expectation(matches_source=True)
    assert evaluate(expect, outcome("10.00"), {"value": "10.00"}).status == "passed"
    failed = evaluate(expect, outcome("10.01"), {"value": "10.00"})
    assert (failed.status, failed.expected, failed.actual) == ("failed", "10.00", "10.01")
    assert "differs" in failed.detail
    skipped = evaluate(expect, outcome(1), None)
    assert skipped.status == "skipped" and "before the check was added" in skipped.detail
    error = evaluate(expect, outcome(1), {"error": 'relation "x" does not exist'})
    assert error.status == "failed" and "at backup time" in error.detail
    assert evaluate(expect, outcome(None, rows=0), {"value": []}).status == "passed"


def test_expectation_rules() -> None:
    with pytest.raises(ValueError, match="give one of"):
        Expectation()
    with pytest.raises(ValueError, match="cannot be combined"):
        Expectation(equals=1, at_least=2)
    with pytest.raises(ValueError, match="smaller than at_least"):
        Expectation(at_least=5, at_most=1)
    assert Expectation(at_least=1, at_most=2).kind == "range"


def test_same_compares_numbers_by_value() -> None:
    assert same("1.50", 1.5) and same(3, "3") and same([["2.0"]], [[2]])
    assert not same("a", "b") and not same(True, 1) and not same([1], [1, 2])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2026, 11, 28, 12, tzinfo=UTC), "2026-11-28T12:00:00+00:00"),
        (dt.datetime(2026, 11, 28, 12), "2026-11-28T12:00:00+00:00"),  # naive: UTC
        (
            dt.datetime(2026, 11, 28, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2026-11-28T12:00:00+00:00",
        ),
        (dt.date(2026, 11, 28), "2026-11-28T00:00:00+00:00"),
        ("2026-11-28 12:00:00", "2026-11-28T12:00:00+00:00"),  # SQLite text
        ("2026-11-28T12:00:00Z", "2026-11-28T12:00:00+00:00"),
        (1795867200, "2026-11-28T12:00:00+00:00"),  # Unix epoch
        ("1795867200", "2026-11-28T12:00:00+00:00"),
    ],
)
def test_as_utc(value: Any, expected: str) -> None:
    result = as_utc(value)
    assert result is not None and result.isoformat() == expected


def test_freshness() -> None:
    captured = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    within = dt.timedelta(hours=1)
    ok = evaluate_freshness(dt.datetime(2026, 11, 28, 11, 30, tzinfo=UTC), captured, within)
    assert ok.status == "passed"
    late = evaluate_freshness(dt.datetime(2026, 11, 28, 9, tzinfo=UTC), captured, within)
    assert late.status == "failed" and "3h older than the backup" in late.detail
    assert late.expected.startswith(">= 2026-11-28T11:00:00+00:00")
    assert late.actual == "2026-11-28T09:00:00+00:00"
    assert evaluate_freshness(None, captured, within).status == "failed"
    assert "not a timestamp" in evaluate_freshness("soon", captured, within).detail


def test_freshness_query_quotes_names() -> None:
    spec = FreshnessSpec(table="sales.orders", column="created_at", within=3600)
    assert freshness_query(spec) == 'SELECT max("created_at") FROM "sales"."orders"'
    odd = FreshnessSpec(table='"Mixed Case"."Odd.Table"', column='x"y', within=60)
    assert freshness_query(odd) == 'SELECT max("x""y") FROM "Mixed Case"."Odd.Table"'
    assert freshness_query(FreshnessSpec(sql="SELECT now()", within=60)) == "SELECT now()"
    with pytest.raises(ValueError, match="either sql or table"):
        FreshnessSpec(sql="SELECT 1", table="t", within=60)
    with pytest.raises(ValueError, match="field required with table"):
        FreshnessSpec(table="t", within=60)


def test_check_spec_rules() -> None:
    with pytest.raises(ValueError, match="give one of sql, freshness, file or command"):
        CheckSpec()
    with pytest.raises(ValueError, match="cannot be combined with sql"):
        CheckSpec(sql="SELECT 1", expect=Expectation(non_empty=True), command=["true"])
    with pytest.raises(ValueError, match="field required with sql"):
        CheckSpec(sql="SELECT 1")
    with pytest.raises(ValueError, match="only applies to sql"):
        CheckSpec(command=["true"], expect=Expectation(non_empty=True))
    check = CheckSpec(command="true")
    assert check.kind == "command" and check.display_name(3) == "command-3"
    assert CheckSpec(name="x", command="true").display_name(1) == "x"
    assert capture_key(" SELECT 1 ") == capture_key("SELECT 1") != capture_key("SELECT 2")


# --------------------------------------------------------------------------------------------
# built-in comparisons


def test_row_counts() -> None:
    source = {"sales.orders": 10, '"Mixed Case"."Odd Table"': 3, "audit.log_2024": 5}
    same_counts = builtin.row_counts(source, dict(source))
    assert same_counts.status == "passed" and same_counts.actual == "3 tables, 18 rows"
    lost = builtin.row_counts(source, {"sales.orders": 9, '"Mixed Case"."Odd Table"': 3})
    assert lost.status == "failed" and lost.critical
    assert lost.expected == {"audit.log_2024": 5, "sales.orders": 10}
    assert lost.actual == {"audit.log_2024": None, "sales.orders": 9}
    assert lost.detail == "2 of 3 tables differ (1 missing: audit.log_2024)"
    # A table the plan excluded from the dump is not expected back.
    excluded = builtin.row_counts(
        source, {"sales.orders": 10, '"Mixed Case"."Odd Table"': 3}, ["audit.log_*"]
    )
    assert excluded.status == "passed"
    unqualified = builtin.row_counts(
        source, {"sales.orders": 10, "audit.log_2024": 5}, ["Odd Table"]
    )
    assert unqualified.status == "passed"
    extra = builtin.row_counts({"a.t": 1}, {"a.t": 1, "a.u": 0})
    assert extra.status == "failed" and extra.actual == {"a.u": 0}


def test_statistics_missing_or_broken() -> None:
    missing = builtin.row_counts(None, {})
    assert missing.status == "skipped" and "older drd" in missing.detail
    broken = builtin.schema({"error": "permission denied for table x"}, {"digest": "a"})
    assert broken.status == "failed" and not broken.critical
    assert "permission denied" in broken.detail


def test_schema() -> None:
    want = {"digest": "d1", "parts": {"columns": "c1", "indexes": "i1"}}
    assert builtin.schema(want, dict(want)).status == "passed"
    got = {"digest": "d2", "parts": {"columns": "c1", "indexes": "i2"}}
    result = builtin.schema(want, got)
    assert result.failed and result.critical and result.detail.endswith("differs in: indexes")
    assert result.expected == {"digest": "d1", "indexes": "i1"}
    other_major = builtin.schema(want, got, comparable=False)
    assert other_major.failed and not other_major.critical
    assert "major version" in other_major.detail


def test_integrity() -> None:
    assert builtin.integrity(True, 100, 90).status == "passed"
    assert builtin.integrity(False, 10, 0).failed


# --------------------------------------------------------------------------------------------
# trees: digests and file checks


def build_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a.txt").write_text("top\n")
    (root / "a" / "b" / "deep.bin").write_bytes(os.urandom(3000))
    (root / "empty").write_bytes(b"")
    os.link(root / "a.txt", root / "hard.txt")
    os.symlink("a.txt", root / "link")


def test_tree_digests_and_compare(tmp_path: Path) -> None:
    build_tree(tmp_path / "t")
    digests = tree_digests(tmp_path / "t")
    assert digests.count == 4  # symlinks are not files; hard links are
    recorded = digests.as_json()
    assert recorded["files"]["a.txt"] == hashlib.sha256(b"top\n").hexdigest()
    assert builtin.digests(recorded, tree_digests(tmp_path / "t")).status == "passed"

    (tmp_path / "t" / "empty").write_bytes(b"x")
    (tmp_path / "t" / "a" / "b" / "deep.bin").unlink()
    (tmp_path / "t" / "new").write_text("new")
    result = builtin.digests(recorded, tree_digests(tmp_path / "t"))
    assert result.failed
    assert "missing: a/b/deep.bin" in result.detail
    assert "unexpected: new" in result.detail
    assert "different: empty" in result.detail

    unlisted = DigestList(limit=2)
    for name in ("x", "y", "z"):
        unlisted.add(name, hashlib.sha256(name.encode()).hexdigest())
    assert unlisted.as_json()["files"] is None and unlisted.count == 3
    other = DigestList(limit=2)
    for name in ("z", "y", "x"):  # order does not matter
        other.add(name, hashlib.sha256(name.encode()).hexdigest())
    assert other.tree == unlisted.tree
    other.add("w", "00" * 32)
    problems = builtin.digests(unlisted.as_json(), other)
    assert problems.failed and "4 files restored, 3 archived" in problems.detail


async def test_file_checks(tmp_path: Path) -> None:
    build_tree(tmp_path)
    (tmp_path / "escape").symlink_to("/etc")
    restored = Restored("files", tmp_path, dt.datetime.now(UTC), {})

    async def check(**spec: Any) -> CheckResult:
        return await file_check(CheckSpec(file=FileSpec(**spec)), "f", restored)

    assert (await check(path="a.txt", size=4)).status == "passed"
    digest = hashlib.sha256(b"top\n").hexdigest()
    assert (await check(path="a.txt", sha256=digest)).status == "passed"
    wrong = await check(path="a.txt", sha256="0" * 64, min_size=10)
    assert wrong.failed and wrong.detail == "size 4 below 10; content digest differs"
    assert wrong.actual["sha256"] == digest
    assert (await check(path="nope", exists=False)).status == "passed"
    assert (await check(path="nope")).detail == "missing"
    assert (await check(path="a")).detail == "not a regular file"
    assert "out of the restored tree" in (await check(path="escape/passwd")).detail
    with pytest.raises(ValueError, match=r"without '\.\.'"):
        FileSpec(path="../x")
    with pytest.raises(ValueError, match="must not exist"):
        FileSpec(path="x", exists=False, size=1)


# --------------------------------------------------------------------------------------------
# canonical values and rendering


def test_json_value_and_result_value() -> None:
    assert json_value(Decimal("12.50")) == "12.50"
    assert json_value(2**60) == str(2**60)
    assert json_value(b"\x00\xff") == "\\x00ff"
    assert json_value(dt.date(2026, 1, 2)) == "2026-01-02"
    assert json_value(float("nan")) == "nan"
    assert json_value((1, [Decimal("1.0")])) == [1, ["1.0"]]
    assert result_value([(5,)]) == 5
    assert result_value([(1, "a"), (2, "b")]) == [[1, "a"], [2, "b"]]
    assert result_value([]) == []
    with pytest.raises(ValueError, match="aggregate"):
        result_value([(i,) for i in range(1001)])


def test_result_rendering() -> None:
    result = CheckResult(
        "orders", "sql", "failed", expected=">= 10", actual=3, detail="", query="SELECT 1"
    )
    assert result.summary() == "FAILED orders (expected >= 10, got 3) [query: SELECT 1]"
    assert result.fails_test
    warning = CheckResult("w", "sql", "failed", critical=False, detail="meh")
    assert warning.summary().startswith("WARNING w: meh") and not warning.fails_test
    huge = CheckResult("h", "sql", "failed", actual=[[i] for i in range(5000)])
    shown = huge.as_json()["actual"]
    assert isinstance(shown, str) and shown.endswith("...(cut)")


def test_check_sessions_run_without_jit_and_keep_the_dsns_options() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from drd.restore_tests.databases import check_dsn

    plain = conninfo_to_dict(check_dsn("host=127.0.0.1 dbname=x password=s3"))
    assert plain["options"] == "-c jit=off" and plain["password"] == "s3"
    kept = conninfo_to_dict(check_dsn("dbname=x options='-c search_path=app'"))
    assert kept["options"] == "-c search_path=app -c jit=off"
