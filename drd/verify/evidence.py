"""Where the figures of `drd report` come from: the runs of a plan, read back from what drd
stored, never from memory.

- Drills: the sealed reports in every region of the plan (`_drills/<plan>/<id>/report.json`,
  drd.verify.drill), kept for the audit period.
- Restore tests: the sealed reports next to the backups in every region
  (`<plan>/<source>/<backup_id>/restore-tests/*.json`, drd.verify.restore_report). Retention
  destroys them with their backup, so for tests of backups that are gone:
- the daemon's job history (drd.daemon.history, read by the caller), whose restore-test rows
  carry the reports' summaries, and record the tests that could not run at all.

A test found in both is counted once, from the region's sealed copy. A report that does not
authenticate is left out and named in `Evidence.problems`. A region of the plan that could not
be listed (or opened) is named there too, and in `Evidence.regions_not_read`: the figures then
come from the other regions only, and the evidence is not `complete`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from drd import crypto
from drd.config.models import Plan
from drd.errors import DrdError
from drd.repository.catalog import build_catalog
from drd.storage.base import Storage
from drd.verify.drill import list_drill_ids, read_stored_report
from drd.verify.drill_html import seconds
from drd.verify.figures import FROM_HISTORY, FROM_REGIONS, Run
from drd.verify.restore_report import read_report, report_keys

log = logging.getLogger(__name__)


class HistoryRow(Protocol):
    """A restore-test row of the job history (drd.daemon.history.JobRecord)."""

    @property
    def source(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def result(self) -> str | None: ...
    @property
    def backup_id(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...


@dataclass
class Evidence:
    runs: list[Run] = field(default_factory=list)
    #: reports that were found but could not be read or authenticated
    problems: list[str] = field(default_factory=list)
    #: how many runs came from each place
    counts: dict[str, int] = field(default_factory=dict)
    #: region -> why it could not be read: its runs are missing from the figures
    regions_not_read: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every region of the plan was read."""
        return not self.regions_not_read

    def region_not_read(self, region: str, what: str, why: str) -> None:
        self.problems.append(f"region {region} not read ({what}): {why}")
        before = self.regions_not_read.get(region)
        if before is None:
            self.regions_not_read[region] = why
        elif why not in before:
            self.regions_not_read[region] = f"{before}; {why}"


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _id_time(ident: str) -> datetime | None:
    """The start time drill and backup ids begin with (20260601T120000Z-...)."""
    try:
        return datetime.strptime(ident[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _report_time(name: str) -> datetime | None:
    """A restore test report's name: <tested_at, to the millisecond>Z-<random>.json."""
    try:
        return datetime.strptime(name[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def drill_run(data: Mapping[str, Any]) -> Run | None:
    started = _parse_time(data.get("started_at"))
    if started is None:
        return None
    reasons = data.get("reasons")
    codes = [r.get("code", "?") if isinstance(r, dict) else str(r) for r in reasons or []]
    return Run(
        kind="drill",
        started_at=started,
        result=str(data.get("status", "?")),
        ident=str(data.get("id") or data.get("drill_id") or ""),
        rto_seconds=seconds(data, "rto"),
        rpo_seconds=seconds(data, "rpo"),
        region=f"lost {data['lose_region']}" if data.get("lose_region") else None,
        reasons=tuple(sorted(set(codes))),
    )


def restore_test_run(
    source: str, data: Mapping[str, Any], origin: str, when: datetime | None = None
) -> Run | None:
    """A run from a restore test report's body (or its summary in the job history)."""
    started = _parse_time(data.get("tested_at") or data.get("started_at")) or when
    if started is None:
        return None
    captured = _parse_time(data.get("backup_captured_at"))
    rpo = None
    if captured is not None and data.get("selection") == "newest":
        rpo = max(0.0, (started - captured).total_seconds())
    category = data.get("failure_category")
    return Run(
        kind="restore-test",
        started_at=started,
        result=str(data.get("result", "?")),
        source=source,
        ident=str(data.get("backup_id") or ""),
        rto_seconds=seconds(data, "rto"),
        rpo_seconds=rpo,
        region=data.get("region") if isinstance(data.get("region"), str) else None,
        reasons=(str(category),) if category else (),
        origin=origin,
    )


async def drill_runs(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    since: datetime,
    evidence: Evidence,
) -> None:
    ids, errors = await list_drill_ids(plan, regions)
    for region, why in errors.items():
        evidence.region_not_read(region, "drill reports", why)
    for ident in ids:
        started = _id_time(ident)
        if started is not None and started < since:
            continue
        data = await read_stored_report(plan, regions, keyring, ident)
        run = drill_run(data) if data is not None else None
        if run is None:
            evidence.problems.append(f"drill report {plan.name}/{ident}: no readable copy")
            continue
        evidence.runs.append(run)


async def stored_restore_test_runs(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    since: datetime,
    evidence: Evidence,
) -> None:
    ordered = [regions[n] for n in plan.storage.regions if n in regions]
    by_name = {r.name: r for r in ordered}
    catalog = await build_catalog(ordered, keyring, prefix=f"{plan.name}/")
    for region, why in catalog.region_errors.items():
        evidence.region_not_read(region, "backups and their restore test reports", why)
    for entry in catalog.entries:
        # The same report in several regions: read it from the first one that authenticates.
        where: dict[str, list[tuple[str, str]]] = {}
        for region in plan.storage.regions:
            for key in report_keys(entry).get(region, []):
                where.setdefault(key.rsplit("/", 1)[-1], []).append((region, key))
        for name, copies in sorted(where.items()):
            tested = _report_time(name)
            if tested is not None and tested < since:
                continue
            run: Run | None = None
            failures: list[str] = []
            for region, key in copies:
                try:
                    raw = await by_name[region].get(key)
                    _, body = read_report(raw, keyring, entry.backup_id, f"{region}:{key}")
                except DrdError as exc:
                    failures.append(str(exc))
                    continue
                run = restore_test_run(entry.ref.source, body or {}, FROM_REGIONS)
                break
            if run is None:
                evidence.problems.append("; ".join(failures) or f"{name}: unreadable")
            else:
                evidence.runs.append(run)


def history_runs(rows: Iterable[HistoryRow]) -> list[Run]:
    """Restore tests as the daemon's job history recorded them: one run per report summary;
    a test that could not run at all ('failure' without reports) is a failed run."""
    runs: list[Run] = []
    for row in rows:
        when = datetime.fromtimestamp(row.started_at, UTC)
        summaries = _summaries(row.detail)
        for summary in summaries:
            run = restore_test_run(row.source, summary, FROM_HISTORY, when)
            if run is not None:
                runs.append(run)
        if not summaries and row.result == "failure":
            runs.append(
                Run(
                    kind="restore-test",
                    started_at=when,
                    result="failed",
                    source=row.source,
                    ident=row.backup_id or "",
                    reasons=("could_not_run",),
                    origin=FROM_HISTORY,
                )
            )
    return runs


def _summaries(detail: str | None) -> list[dict[str, Any]]:
    try:
        data = json.loads(detail or "")
    except ValueError:
        return []
    reports = data.get("reports") if isinstance(data, dict) else None
    return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []


def merged(stored: Sequence[Run], recorded: Sequence[Run]) -> list[Run]:
    """Every stored run, and the recorded ones storage no longer has (the same test in both
    is the same source, backup and start time)."""

    def key(r: Run) -> tuple[str | None, str, str]:
        return (r.source, r.ident, r.started_at.isoformat())

    seen = {key(r) for r in stored if r.kind == "restore-test"}
    return [*stored, *(r for r in recorded if key(r) not in seen)]


async def gather(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    since: datetime,
    history: Iterable[HistoryRow] = (),
) -> Evidence:
    """Every restore test and drill of `plan` that started at `since` or later."""
    found = Evidence()
    for name in plan.storage.regions:
        if name not in regions:
            found.region_not_read(name, "everything", "the region was not opened")
    await asyncio.gather(
        drill_runs(plan, regions, keyring, since, found),
        stored_restore_test_runs(plan, regions, keyring, since, found),
    )
    recorded = [r for r in history_runs(history) if r.started_at >= since]
    found.runs = merged(found.runs, recorded)
    for run in found.runs:
        found.counts[run.origin] = found.counts.get(run.origin, 0) + 1
    return found
