"""Integrity findings: what a writer to one region may have done, found by comparing regions
with each other and with what drd remembers (drd.repository.heads).

- rollback: a region's newest verified backup of a source is older than one drd committed or
  saw verified there, which is not due for destruction yet (its newest backups deleted, or an
  old snapshot of the bucket put back). Such a region is never copied from (repair) until it
  holds that backup again.
- disagreement: a region's verified manifest of a backup differs from another region's copy
  of the same id (only someone holding a key can do that). Neither copy is spread.
- future_dated: a backup id dated beyond a small clock skew in the future. It is never
  copied to other regions, and retention ages it from when drd first saw it, never from its
  id, so it cannot outlive the 14-day ceiling.
- invalid_record: a region's sealed per-source record does not verify.

Each finding is logged, counted in drd_integrity_findings{plan,region,finding} (an alert
fires while any is non-zero) and reported by `drd check`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drd import crypto
from drd.config.models import Plan
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.repository.catalog import Catalog
from drd.repository.heads import HeadMemory, Mark, SourceMemory, read_heads
from drd.retention.policy import MAX_CLOCK_SKEW
from drd.storage.base import Storage

log = logging.getLogger(__name__)

FINDINGS = ("rollback", "disagreement", "future_dated", "invalid_record")


@dataclass(frozen=True)
class IntegrityFinding:
    finding: str
    ref: SourceRef
    region: str
    backup_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.finding}: {self.message}"


@dataclass
class Assessment:
    plan: str
    findings: list[IntegrityFinding] = field(default_factory=list)

    def distrusted(self) -> dict[SourceRef, set[str]]:
        """Per source, the regions never to copy from (rolled back)."""
        out: dict[SourceRef, set[str]] = {}
        for f in self.findings:
            if f.finding == "rollback":
                out.setdefault(f.ref, set()).add(f.region)
        return out

    def future_dated(self) -> set[tuple[SourceRef, str]]:
        return {
            (f.ref, f.backup_id)
            for f in self.findings
            if f.finding == "future_dated" and f.backup_id
        }

    def publish(self, metrics: Metrics, regions: Sequence[str]) -> None:
        counts = dict.fromkeys(((r, k) for r in regions for k in FINDINGS), 0)
        for f in self.findings:
            counts[(f.region, f.finding)] = counts.get((f.region, f.finding), 0) + 1
        for (region, finding), n in counts.items():
            metrics.integrity_findings.labels(self.plan, region, finding).set(n)


def is_future_dated(captured: datetime, now: datetime) -> bool:
    return captured > now + MAX_CLOCK_SKEW


def _age_limit(ages: timedelta | Mapping[str, timedelta] | None, region: str) -> timedelta | None:
    if ages is None or isinstance(ages, timedelta):
        return ages
    return ages.get(region)


async def assess(
    plan: Plan,
    catalog: Catalog,
    storages: Sequence[Storage],
    keyring: crypto.Keyring,
    memory: HeadMemory | None,
    now: datetime,
    *,
    destroy_age: timedelta | Mapping[str, timedelta] | None = None,
    skip_sources: Collection[str] = (),
    update: bool = True,
) -> Assessment:
    """Compare every region of `plan` with the others and with drd's records. With `update`,
    what each region verifiably holds becomes its new high-water mark (never lowered while a
    rollback is standing)."""
    out = Assessment(plan.name)
    listed = [r for r in plan.storage.regions if r not in catalog.region_errors]
    for source in plan.sources:
        if source.name in skip_sources:
            continue
        ref = SourceRef(plan.name, source.name)
        entries = catalog.for_source(ref)
        for entry in entries:
            if entry.disagreeing:
                # Either copy may be the odd one: every region holding one is flagged.
                holders = [
                    r for r, c in entry.copies.items() if c.verified or r in entry.disagreeing
                ]
                for region in holders:
                    out.findings.append(
                        IntegrityFinding(
                            "disagreement",
                            ref,
                            region,
                            entry.backup_id,
                            f"regions {', '.join(holders)} hold verified manifests of "
                            f"{ref}@{entry.backup_id} that differ (a key was misused): it is "
                            "not copied anywhere",
                        )
                    )
            if is_future_dated(entry.captured, now):
                for region, copy in entry.copies.items():
                    if copy.has_manifest:
                        out.findings.append(
                            IntegrityFinding(
                                "future_dated",
                                ref,
                                region,
                                entry.backup_id,
                                f"backup {ref}@{entry.backup_id} in region {region} is dated "
                                f"{entry.captured.isoformat()}, in the future: it is not "
                                "copied elsewhere, and retention ages it from when drd first "
                                "saw it",
                            )
                        )
        present: dict[str, Mark] = {}
        unknown: dict[str, set[str]] = {}  # region -> ids whose manifest it could not read now
        for entry in entries:
            if is_future_dated(entry.captured, now):
                continue
            mark = Mark.of(entry.backup_id, entry.captured)
            for region, copy in entry.copies.items():
                holds = copy.verified or region in entry.disagreeing  # a disagreement is its own
                if holds and (region not in present or mark > present[region]):
                    present[region] = mark
                if copy.manifest_unreadable:
                    unknown.setdefault(region, set()).add(entry.backup_id)
        heads, problems = await read_heads(ref, storages, keyring)
        for region, why in problems.items():
            out.findings.append(
                IntegrityFinding(
                    "invalid_record",
                    ref,
                    region,
                    None,
                    f"region {region}: the record of {ref}'s newest backup is unusable: {why}",
                )
            )
        remembered = memory.read(ref) if memory is not None else SourceMemory()
        for region in listed:
            claims: list[tuple[Mark, str]] = []
            if region in remembered.seen:
                claims.append((remembered.seen[region], "this host saw it there"))
            for head in heads:
                if region in head.regions:
                    claims.append(
                        (head.newest, f"region {head.region}'s record says it was committed there")
                    )
            limit = _age_limit(destroy_age, region)
            live = [
                (mark, why)
                for mark, why in claims
                if (limit is None or now - mark.captured < limit)
                and not is_future_dated(mark.captured, now)
            ]
            if not live:
                continue
            high, why = max(live)
            has = present.get(region)
            if has is not None and has >= high:
                continue
            if high.backup_id in unknown.get(region, set()):
                continue  # its manifest cannot be read right now: not known to be gone
            out.findings.append(
                IntegrityFinding(
                    "rollback",
                    ref,
                    region,
                    high.backup_id,
                    f"region {region} went back in time for {ref}: its newest verified backup "
                    f"is {has.backup_id if has else 'none'}, older than {high.backup_id} "
                    f"({why}); it is not copied from until it holds that backup again",
                )
            )
        if update and memory is not None:
            rolled_back = {
                f.region for f in out.findings if f.ref == ref and f.finding == "rollback"
            }
            _remember(memory, ref, present, rolled_back, listed, destroy_age, now)
    for finding in out.findings:
        log.error("integrity finding in plan %s: %s", plan.name, finding)
    return out


def _remember(
    memory: HeadMemory,
    ref: SourceRef,
    present: Mapping[str, Mark],
    rolled_back: Collection[str],
    listed: Collection[str],
    destroy_age: timedelta | Mapping[str, timedelta] | None,
    now: datetime,
) -> None:
    """Raise each region's high-water mark to what it verifiably holds (never while a rollback
    stands); an expired mark (retention destroyed that backup) gives way to what is there."""

    def change(mem: SourceMemory) -> None:
        for region, mark in present.items():
            if region not in rolled_back and (region not in mem.seen or mark > mem.seen[region]):
                mem.seen[region] = mark
        for region in list(mem.seen):
            limit = _age_limit(destroy_age, region)
            if region not in listed or limit is None:
                continue
            if now - mem.seen[region].captured >= limit:
                if region in present:
                    mem.seen[region] = present[region]
                else:
                    del mem.seen[region]

    memory.update(ref, change)
