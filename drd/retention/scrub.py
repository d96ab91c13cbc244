"""Scrubbing: re-reading stored copies on a schedule, so that silent damage (a bit flipped in
one region's data object, same size) is found before a restore needs that copy.

Each copy's data object is read and checked against its verified manifest (size and
ciphertext digest, drd.repository.copies), without decrypting: a scrub needs no more than
repair does. Every copy is checked at least once per `period` (default 7 days): a copy is due
once half the period has passed since it was last verified (or written), the least recently
verified first. Reading costs money and time, so each run spends at most a budget of bytes
(`bytes_per_hour`, accrued between runs, at most one hour's worth: a copy larger than that
is still read, once the budget is full, and the budget goes into debt). A copy found damaged
is counted (drd_copies_damaged_total) and replaced from a region whose copy verifies
(drd.retention.repair, which never overwrites).

State (`state_dir/scrub.json`, shared by the daemon and `drd check` under a file lock): when
each copy was last verified. Metrics: drd_scrub_oldest_verified_timestamp_seconds per (plan,
source, region), the last verification of the least recently verified copy there, which the
DrdCopyNotVerified alert compares with drd_scrub_period_seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from drd import crypto
from drd.config.models import Plan
from drd.errors import DamagedCopy, DrdError, IntegrityError
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.repository.catalog import Catalog, CatalogEntry, build_catalog
from drd.repository.copies import check_data
from drd.repository.heads import HeadMemory
from drd.repository.manifest import Manifest
from drd.retention.integrity import is_future_dated
from drd.retention.repair import CopyKey, RepairReport, repair
from drd.storage.base import Storage

log = logging.getLogger(__name__)


def _copy_name(ref: SourceRef, backup_id: str) -> str:
    return f"{ref}@{backup_id}"


class ScrubMemory:
    """When each copy was last verified: {region: {"plan/source@id": time}}, in a JSON file
    read and merged under a file lock (the daemon and `drd check` may both scrub)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.verified: dict[str, dict[str, datetime]] = {}
        self.reload()

    def reload(self) -> None:
        if self.path is None:
            return
        with self._locked():
            self.verified = self._read()

    def last_verified(self, region: str, ref: SourceRef, backup_id: str) -> datetime | None:
        return self.verified.get(region, {}).get(_copy_name(ref, backup_id))

    def record(self, region: str, ref: SourceRef, backup_id: str, when: datetime) -> None:
        self.verified.setdefault(region, {})[_copy_name(ref, backup_id)] = when

    def forget_except(self, plan: str, present: Collection[tuple[str, str]]) -> None:
        """Drop the plan's copies that no region holds any more ((region, name) pairs)."""
        keep = set(present)
        for region, copies in self.verified.items():
            for name in list(copies):
                if name.startswith(f"{plan}/") and (region, name) not in keep:
                    del copies[name]

    def save(self) -> None:
        """Merge with what another process recorded meanwhile (the later time wins)."""
        if self.path is None:
            return
        with self._locked():
            stored = self._read()
            for region, copies in self.verified.items():
                for name, when in copies.items():
                    old = stored.get(region, {}).get(name)
                    if old is None or when > old:
                        stored.setdefault(region, {})[name] = when
            self.verified = stored
            data = {
                region: {name: when.isoformat() for name, when in sorted(copies.items())}
                for region, copies in sorted(stored.items())
            }
            temp = self.path.with_name(self.path.name + ".tmp")
            temp.write_text(json.dumps({"verified": data}, indent=1, sort_keys=True))
            os.replace(temp, self.path)

    def _read(self) -> dict[str, dict[str, datetime]]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text())
            return {
                str(region): {str(k): datetime.fromisoformat(v) for k, v in copies.items()}
                for region, copies in raw["verified"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only costs re-reading copies sooner than needed.
            log.warning("scrub state %s unreadable, starting afresh: %s", self.path, exc)
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass
class Budget:
    """Bytes a scrub may read: accrues at `per_hour`, holds at most one hour's worth."""

    per_hour: int
    tokens: float = 0.0
    at: datetime | None = None

    def refill(self, now: datetime) -> None:
        if self.at is None:
            self.tokens = float(self.per_hour)
        else:
            hours = max((now - self.at).total_seconds(), 0.0) / 3600
            self.tokens = min(self.tokens + hours * self.per_hour, float(self.per_hour))
        self.at = now

    @property
    def available(self) -> bool:
        return self.tokens > 0

    def spend(self, nbytes: int) -> None:
        self.tokens -= nbytes


@dataclass(frozen=True)
class ScrubbedCopy:
    ref: SourceRef
    backup_id: str
    region: str
    bytes: int
    #: why the copy is damaged, or could not be read now; None: it verified
    problem: str | None = None
    damaged: bool = False


@dataclass
class ScrubReport:
    plan: str
    checked: list[ScrubbedCopy] = field(default_factory=list)
    #: copies due but left for a later run (the budget was spent)
    deferred: int = 0
    repair: RepairReport | None = None
    #: plan regions that could not be listed
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def damaged(self) -> list[ScrubbedCopy]:
        return [c for c in self.checked if c.damaged]

    @property
    def bytes_read(self) -> int:
        return sum(c.bytes for c in self.checked)


def _due(
    catalog: Catalog,
    memory: ScrubMemory,
    now: datetime,
    period: timedelta | None,
    skip_sources: Collection[str],
) -> list[tuple[datetime, CatalogEntry, str]]:
    """(last verified, entry, region) of every copy due, least recently verified first. With
    `period` None, every intact copy."""
    out = []
    for entry in catalog.entries:
        if entry.ref.source in skip_sources or not entry.verified:
            continue
        if is_future_dated(entry.captured, now):
            continue  # an integrity finding already; never a reason to read it over and over
        for region in entry.complete_regions:
            last = memory.last_verified(region, entry.ref, entry.backup_id) or entry.captured
            if period is None or now - last >= period / 2:
                out.append((last, entry, region))
    out.sort(key=lambda item: (item[0], item[1].ref.plan, item[1].ref.source, item[1].backup_id))
    return out


async def scrub_plan(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    memory: ScrubMemory,
    *,
    now: datetime,
    period: timedelta | None,
    budget: Budget | None = None,
    metrics: Metrics | None = None,
    heads: HeadMemory | None = None,
    skip_sources: Collection[str] = (),
    replace: bool = True,
    destroy_age: timedelta | Mapping[str, timedelta] | None = None,
) -> ScrubReport:
    """Check the copies of `plan` that are due (with `period` None: every copy), within
    `budget` (None: no cap), and replace the damaged ones (unless not `replace`)."""
    storages = [regions[name] for name in plan.storage.regions]
    by_name = {s.name: s for s in storages}
    catalog = await build_catalog(storages, keyring, f"{plan.name}/")
    report = ScrubReport(plan.name, unreachable=dict(catalog.region_errors))
    due = _due(catalog, memory, now, period, skip_sources)
    for index, (_, entry, region) in enumerate(due):
        if budget is not None and not budget.available:
            report.deferred = len(due) - index
            break
        assert entry.manifest is not None
        try:
            await _check_manifest(by_name[region], entry, keyring)
            nbytes = await check_data(by_name[region], entry.ref, entry.manifest)
        except DamagedCopy as exc:
            log.error("scrub %s@%s: %s", entry.ref, entry.backup_id, exc)
            size = entry.manifest.body.ciphertext_size
            report.checked.append(
                ScrubbedCopy(entry.ref, entry.backup_id, region, size, str(exc), damaged=True)
            )
            if budget is not None:
                budget.spend(size)
            if metrics is not None:
                metrics.copies_damaged.labels(plan.name, region).inc()
            continue
        except DrdError as exc:
            # Unreadable now (an outage, a timeout): tried again on the next run.
            log.warning("scrub %s@%s: region %s: %s", entry.ref, entry.backup_id, region, exc)
            report.checked.append(ScrubbedCopy(entry.ref, entry.backup_id, region, 0, str(exc)))
            continue
        if budget is not None:
            budget.spend(nbytes)
        memory.record(region, entry.ref, entry.backup_id, now)
        report.checked.append(ScrubbedCopy(entry.ref, entry.backup_id, region, nbytes))
        if metrics is not None:
            metrics.scrub_bytes.labels(region).inc(nbytes)
    damaged: set[CopyKey] = {(c.ref, c.backup_id, c.region) for c in report.damaged}
    if damaged and replace:
        report.repair = await repair(
            plan,
            regions,
            keyring,
            metrics=metrics,
            now=now,
            destroy_age=destroy_age,
            skip_sources=skip_sources,
            damaged=damaged,
            memory=heads,
        )
        for outcome in report.repair.repaired + report.repair.replaced:
            if not outcome.error and outcome.action == "replaced":
                memory.record(outcome.region, SourceRef.parse(outcome.ref), outcome.backup_id, now)
    if not catalog.region_errors:
        memory.forget_except(
            plan.name,
            [
                (region, _copy_name(e.ref, e.backup_id))
                for e in catalog.entries
                for region, copy in e.copies.items()
                if copy.has_manifest
            ],
        )
    memory.save()
    if metrics is not None:
        publish(metrics, plan, catalog, memory, now, period)
    return report


async def _check_manifest(storage: Storage, entry: CatalogEntry, keyring: crypto.Keyring) -> None:
    """The region's manifest, read now, is the verified one: the catalog may have taken it
    from the manifest cache, which trusts a listing's size and CRC32C
    (drd.repository.manifest_cache); a scrub must see the bytes themselves."""
    key = entry.ref.manifest_key(entry.backup_id)
    where = f"{storage.name}:{key}"
    raw = await storage.get(key)
    try:
        found = Manifest.open(keyring, raw, where, entry.ref, entry.backup_id)
    except IntegrityError as exc:
        raise DamagedCopy(
            f"{where}: the manifest does not verify: {exc}", region=storage.name
        ) from None
    if found != entry.manifest:
        raise DamagedCopy(f"{where}: the manifest is not the verified one", region=storage.name)


def publish(
    metrics: Metrics,
    plan: Plan,
    catalog: Catalog,
    memory: ScrubMemory,
    now: datetime,
    period: timedelta | None,
) -> None:
    """drd_scrub_oldest_verified_timestamp_seconds for every (source, region) of the plan: the
    least recent verification (or writing) of a copy held there; now when it holds none."""
    if period is not None:
        metrics.scrub_period.set(period.total_seconds())
    unreachable = set(catalog.region_errors)
    for source in plan.sources:
        ref = SourceRef(plan.name, source.name)
        for region in plan.storage.regions:
            if region in unreachable:
                continue  # what it holds is unknown: its last value stands (DrdRegionDown)
            times = [
                memory.last_verified(region, e.ref, e.backup_id) or e.captured
                for e in catalog.for_source(ref)
                if region in e.complete_regions and not is_future_dated(e.captured, now)
            ]
            oldest = min(times, default=now)
            metrics.scrub_oldest_verified.labels(plan.name, source.name, region).set(
                oldest.timestamp()
            )
