"""What a check returns: a named result, critical or not, with what was expected and found.

The same shape for every check, built-in or declarative, so that reports, the CLI, the status
API and the exit code are all driven by one list of results (after barman's CheckStrategy).
A check that fails says what it ran (`query`), what it expected and what it found; `detail` is
the one-line explanation an operator reads first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped"]
#: longest rendering of an expected/actual value kept in a report
_MAX_SHOWN = 4000


@dataclass
class CheckResult:
    name: str
    #: integrity, the built-ins (row_counts, schema, file_digests, sequences, ...), or the
    #: plan's sql, freshness, file, command
    kind: str
    status: Status
    #: a failed critical check fails the restore test; a non-critical one is a warning
    critical: bool = True
    expected: Any = None
    actual: Any = None
    detail: str = ""
    query: str | None = None
    seconds: float = 0.0
    #: what the check compared (or checked), in words: "count(*) of every table (partitions
    #: included), in the dump's snapshot and in the copy"
    compared: str = ""
    #: how much of the data that covered: "12 tables, 48,210 rows" or "8 of 1,000,000 rows"
    coverage: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def fails_test(self) -> bool:
        return self.failed and self.critical

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "critical": self.critical,
            "expected": _shown(self.expected),
            "actual": _shown(self.actual),
            "detail": self.detail,
            "compared": self.compared,
            "coverage": self.coverage,
            "seconds": round(self.seconds, 3),
        }
        if self.query is not None:
            out["query"] = self.query
        return out

    def summary(self) -> str:
        """One line for the CLI: `FAILED sql-1: ... (expected X, got Y)`."""
        mark = {"passed": "ok", "failed": "FAILED", "skipped": "skipped"}[self.status]
        if self.failed and not self.critical:
            mark = "WARNING"
        text = f"{mark} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        elif self.coverage and not self.failed:
            text += f": {self.coverage}"
        if self.failed:
            compared = self.comparison(_short)
            if compared:
                text += f" ({compared})"
            if self.query:
                text += f" [query: {self.query}]"
        return text

    def comparison(self, show: Callable[[Any], str]) -> str:
        """`expected X, got Y`, each side shown by `show`; "" when the check has neither (it
        failed before it had anything to compare: the copy could not be read, the query broke),
        whose detail says why, never "expected null, got null"."""
        if self.expected is None and self.actual is None:
            return ""
        return f"expected {show(self.expected)}, got {show(self.actual)}"


def passed(name: str, kind: str, **fields: Any) -> CheckResult:
    return CheckResult(name, kind, "passed", **fields)


def failed(name: str, kind: str, **fields: Any) -> CheckResult:
    return CheckResult(name, kind, "failed", **fields)


def skipped(name: str, kind: str, detail: str, **fields: Any) -> CheckResult:
    return CheckResult(name, kind, "skipped", detail=detail, **fields)


def _shown(value: Any) -> Any:
    """JSON-safe, and cut short when huge (a whole table's rows would swamp the report)."""
    import json

    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)[:_MAX_SHOWN]
    if len(text) <= _MAX_SHOWN:
        return json.loads(text)
    return text[:_MAX_SHOWN] + "...(cut)"


def _short(value: Any, limit: int = 200) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
