"""The retention sweep: list every region, decide with drd.retention.policy, destroy, prove it.

For each backup past its destroy age (and each leftover of interrupted work past its grace):

1. its manifest is deleted in every reachable region first. The manifest holds the wrapped
   data key, so from then on every copy of the data, anywhere, is unreadable (crypto-shredding);
2. then every other object under the backup's prefix;
3. then, once every doomed backup was deleted, each region's plan prefix is listed once and
   none of them may be in it: the proof (one listing per region, not one per backup).

The archived WAL of physical PostgreSQL sources goes in the same sweep
(drd.retention.wal_retention decides): what reached the region's destroy age, and what lies
before the oldest base backup the region keeps, deleted after the backups and proved by the same
listing. Reading where a base backup starts takes the key (the sweep's `keyring`); without it
only max_age applies to WAL.

Each region's outcome is reported and counted (drd_retention_deleted_total,
drd_retention_wal_deleted_total, drd_retention_delete_failures_total). Nothing is
remembered between sweeps except the oldest copy age per region (below): the work left to do
is whatever storage still holds, so a sweep interrupted anywhere (between manifest and data
included) is finished by the next one, which finds the data as a leftover past max_age.

A region that cannot be listed cannot be swept, but its copies still age. The sweep remembers,
per (plan, region), the capture time of the oldest copy the region held after its last
successful sweep (RetentionMemory, saved in the state directory so a restart keeps it). For a
region never listed, the oldest copy any reachable region held before this sweep's deletions
is assumed (every plan region is meant to hold every backup). drd_retention_oldest_copy_age
is now minus that time, so the overdue-copy alerts fire while the region is down, and each
sweep that finds overdue copies in an unreachable region counts a failed deletion there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from drd import crypto
from drd.config.models import Plan
from drd.errors import DrdError, StorageError
from drd.layout import MANIFEST_OBJECT, SourceRef, backup_id_time, is_backup_id
from drd.metrics import Metrics
from drd.repository.catalog import CatalogEntry, build_catalog
from drd.repository.wal import WalArchive, WalKey, follow, parse_wal_key
from drd.retention.policy import (
    DEFAULT_ORPHAN_GRACE,
    Backup,
    BackupKey,
    RetentionDecision,
    RetentionPolicy,
    SettingsFinding,
    apply_policy,
    region_leads,
)
from drd.retention.wal_retention import BaseStart, WalDecision, decide_wal, kept_bases
from drd.storage.base import DeletionSettings, Storage
from drd.strategies.postgres_physical import KIND as PHYSICAL
from drd.strategies.postgres_wal import parse_lsn, segment_of

log = logging.getLogger(__name__)

#: backups destroyed at the same time (each one in all its regions at once): enough to keep a
#: GCS region's request threads busy (8 by default), where each delete is a round trip
_CONCURRENT_BACKUPS = 16
#: a region that does not say what its deletion settings are within this is treated as down
_SETTINGS_TIMEOUT = 30.0


#: where the daemon and `drd prune` keep RetentionMemory, in the state directory
RETENTION_STATE = "retention.json"


class RetentionMemory:
    """What a sweep knows about regions it cannot reach: the capture time of the oldest copy
    each (plan, region) held when it was last listed, and each region's deletion settings.

    The oldest times are saved to `path` (JSON) after every change, so that a restart during
    a regional outage does not forget copies only that region still holds. Settings are kept
    in memory only: they are read again whenever the region answers."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.oldest: dict[tuple[str, str], datetime | None] = {}
        self.settings: dict[str, DeletionSettings] = {}
        #: plan -> "source/backup_id" -> when a sweep first saw it (ages never start later)
        self.first_seen: dict[str, dict[str, datetime]] = {}
        #: each plan's own regions (set by every sweep, and by the daemon for every plan it
        #: has); `publish` exports a plan's ages for these, and for other regions only while
        #: they still hold a copy of the plan
        self.plan_regions: dict[str, tuple[str, ...]] = {}
        #: "plan/source/system" -> region -> the newest WAL segment retention destroyed there:
        #: catch-up (drd.daemon.wal_catchup) never copies what it cut back into that region
        self.wal_cuts: dict[str, dict[str, str]] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
            for plan, regions in raw["oldest"].items():
                for region, when in regions.items():
                    self.oldest[(plan, region)] = datetime.fromisoformat(when) if when else None
            for plan, seen in (raw.get("first_seen") or {}).items():
                self.first_seen[plan] = {k: datetime.fromisoformat(v) for k, v in seen.items()}
            for cluster, cuts in (raw.get("wal_cuts") or {}).items():
                self.wal_cuts[str(cluster)] = {str(r): str(n) for r, n in cuts.items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only a cache of what the regions held: losing it costs accuracy while a region
            # is down, never data.
            log.warning("retention state %s unreadable, starting afresh: %s", path, exc)
            self.oldest.clear()
            self.first_seen.clear()
            self.wal_cuts.clear()

    def remember(self, plan: str, region: str, oldest: datetime | None) -> None:
        if self.oldest.get((plan, region), "unset") == oldest:
            return
        self.oldest[(plan, region)] = oldest
        self._persist()

    def seen(self, plan: str, keys: Collection[BackupKey], now: datetime, *, prune: bool) -> None:
        """Record when each backup was first seen; with `prune` (every region was listed),
        forget those no region holds any more."""
        seen = self.first_seen.setdefault(plan, {})
        names = {f"{ref.source}/{backup_id}" for ref, backup_id in keys}
        changed = False
        for name in names - set(seen):
            seen[name] = now
            changed = True
        if prune:
            for name in set(seen) - names:
                del seen[name]
                changed = True
        if changed:
            self._persist()

    def cut_wal(self, region: str, keys: Collection[str]) -> None:
        """Record the WAL segments retention destroyed in `region` (keys of WAL objects)."""
        changed = False
        for key in keys:
            wal = parse_wal_key(key)
            if wal is None or wal.kind == "history":
                continue
            cluster = f"{wal.ref}/{wal.system_id}"
            cuts = self.wal_cuts.setdefault(cluster, {})
            if wal.segment_name > cuts.get(region, ""):
                cuts[region] = wal.segment_name
                changed = True
        if changed:
            self._persist()

    def first_seen_at(self, plan: str, key: BackupKey) -> datetime | None:
        return self.first_seen.get(plan, {}).get(f"{key[0].source}/{key[1]}")

    def _persist(self) -> None:
        if self.path is not None:
            try:
                self._save(self.path)
            except OSError as exc:  # a cache: not worth failing a sweep over
                log.warning("retention state %s not saved: %s", self.path, exc)

    def _save(self, path: Path) -> None:
        data: dict[str, dict[str, str | None]] = {}
        for (plan, region), when in sorted(self.oldest.items()):
            data.setdefault(plan, {})[region] = when.isoformat() if when else None
        first_seen = {
            plan: {k: when.isoformat() for k, when in sorted(seen.items())}
            for plan, seen in sorted(self.first_seen.items())
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        document = {"oldest": data, "first_seen": first_seen, "wal_cuts": self.wal_cuts}
        temp.write_text(json.dumps(document, indent=1, sort_keys=True))
        os.replace(temp, path)

    def publish(self, metrics: Metrics, now: datetime) -> None:
        """drd_retention_oldest_copy_age_seconds for each plan's own regions (0 for a region
        holding no copy), and for a region the plan no longer uses while it still holds one of
        its copies (they must still be destroyed in time). Plans the daemon no longer has are
        left out."""
        for (plan, region), oldest in self.oldest.items():
            own = self.plan_regions.get(plan)
            if own is not None and region not in own and oldest is None:
                with contextlib.suppress(KeyError):  # emptied: the series goes
                    metrics.retention_oldest_age.remove(plan, region)
                continue
            age = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
            metrics.retention_oldest_age.labels(plan, region).set(age)

    def keep_plans(self, plans: Mapping[str, Sequence[str]]) -> None:
        """The plans (name -> own regions) the daemon has now: forget the others' ages."""
        self.plan_regions = {name: tuple(regions) for name, regions in plans.items()}
        for key in [k for k in self.oldest if k[0] not in plans]:
            del self.oldest[key]


@dataclass
class RegionSweep:
    region: str
    #: why the region could not be listed; None: it was
    error: str | None = None
    destroyed: list[Backup] = field(default_factory=list)
    #: backups whose destruction failed here, with why
    failed: dict[BackupKey, str] = field(default_factory=dict)
    #: backups this region holds (before the sweep), with their objects
    holds: dict[BackupKey, list[str]] = field(default_factory=dict)
    partials_removed: int = 0
    #: capture time of the oldest copy left after the sweep (None: no copy left)
    oldest: datetime | None = None
    #: "listed", "remembered" (from an earlier sweep), "assumed" (from other regions)
    oldest_from: str = "listed"
    #: unreachable while holding copies past their destroy age: counted as a failed deletion
    overdue_unreachable: bool = False
    settings: DeletionSettings | None = None
    #: why the settings could not be read this time
    settings_error: str | None = None
    #: the WAL objects of physical sources this region holds (before the sweep)
    wal: dict[SourceRef, list[WalKey]] = field(default_factory=dict)
    #: what retention decided about them here
    wal_decisions: dict[SourceRef, WalDecision] = field(default_factory=dict)
    wal_destroyed: list[str] = field(default_factory=list)
    #: WAL object key -> why destroying it failed
    wal_failed: dict[str, str] = field(default_factory=dict)

    @property
    def wal_doomed(self) -> dict[str, str]:
        return {k: r for d in self.wal_decisions.values() for k, r in d.destroy.items()}


@dataclass
class SweepReport:
    plan: str
    now: datetime
    dry_run: bool
    #: the plan's: max_age, no deletion lead (each region has its own, in `policies`)
    policy: RetentionPolicy
    #: every region's decisions merged: destroyed where any region destroys it, with that
    #: region's reason
    decision: RetentionDecision
    regions: dict[str, RegionSweep]
    findings: list[SettingsFinding]
    #: sources left out of this sweep because a backup of theirs was running
    skipped_sources: list[str] = field(default_factory=list)
    #: region -> its own policy (its deletion lead) and decision
    policies: dict[str, RetentionPolicy] = field(default_factory=dict)
    decisions: dict[str, RetentionDecision] = field(default_factory=dict)

    @property
    def destroy_ages(self) -> dict[str, timedelta]:
        """Region -> the age at which its copies are deleted."""
        return {name: p.destroy_age for name, p in self.policies.items()}

    @property
    def min_destroy_age(self) -> timedelta:
        return min(self.destroy_ages.values(), default=self.policy.destroy_age)

    def policy_for(self, region: str) -> RetentionPolicy:
        return self.policies.get(region, self.policy)

    #: physical sources: their committed base backups as retention knows them
    bases: dict[SourceRef, list[BaseStart]] = field(default_factory=dict)
    #: kept base backups that cannot be restored to a point after their end, with why
    wal_findings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(
            len(r.failed) + len(r.wal_failed) + r.overdue_unreachable for r in self.regions.values()
        )

    def window_start(self, ref: SourceRef) -> datetime | None:
        """The earliest point `ref` restores to after this sweep: the end of the oldest base
        backup some region keeps."""
        kept = {b.key for d in self.decisions.values() for b in d.keep}
        ends = [
            b.end_time for b in self.bases.get(ref, []) if b.end_time and (ref, b.backup_id) in kept
        ]
        return min(ends, default=None)

    @property
    def ok(self) -> bool:
        return self.failures == 0 and not any(r.error for r in self.regions.values())

    def next_expiry(self) -> datetime | None:
        dues = [d for d in (x.next_expiry() for x in self.decisions.values()) if d is not None]
        for name, region in self.regions.items():
            for decision in region.wal_decisions.values():
                due = decision.next_expiry(self.policy_for(name))
                if due is not None:
                    dues.append(due)
        return min(dues, default=self.decision.next_expiry())


def _merge(decisions: Mapping[str, RetentionDecision]) -> RetentionDecision:
    """One decision for the plan: a backup is destroyed if some region destroys it (its
    reason is that region's), else kept (with the reason of the region it expires first in)."""
    merged = RetentionDecision()
    by_key: dict[BackupKey, Backup] = {}
    destroyed: dict[BackupKey, str] = {}
    for decision in decisions.values():
        for backup in decision.destroy:
            by_key[backup.key] = backup
            destroyed.setdefault(backup.key, decision.reasons[backup.key])
        for backup in decision.keep:
            by_key.setdefault(backup.key, backup)
            due = decision.expires.get(backup.key)
            if due is not None and (
                backup.key not in merged.expires or due < merged.expires[backup.key]
            ):
                merged.expires[backup.key] = due
                merged.reasons[backup.key] = decision.reasons[backup.key]
            merged.reasons.setdefault(backup.key, decision.reasons[backup.key])
    for key, backup in sorted(
        by_key.items(), key=lambda kv: (str(kv[0][0]), kv[1].captured, kv[0][1])
    ):
        if key in destroyed:
            merged.destroy.append(backup)
            merged.reasons[key] = destroyed[key]
            merged.expires.pop(key, None)
        else:
            merged.keep.append(backup)
    return merged


async def _read_settings(storage: Storage) -> DeletionSettings:
    return await asyncio.wait_for(storage.deletion_settings(), _SETTINGS_TIMEOUT)


def _group(plan: str, keys: list[str]) -> dict[BackupKey, list[str]]:
    """Keys under `plan/` by backup: `plan/source/<id>/...`. Other keys are not drd's."""
    found: dict[BackupKey, list[str]] = {}
    for key in keys:
        parts = key.split("/", 3)
        if len(parts) != 4 or parts[0] != plan or not is_backup_id(parts[2]):
            continue
        try:
            ref = SourceRef.parse(f"{parts[0]}/{parts[1]}")
        except ValueError:
            continue
        found.setdefault((ref, parts[2]), []).append(key)
    return found


async def _list_regions(plan: str, regions: Mapping[str, Storage]) -> dict[str, RegionSweep]:
    names = sorted(regions)

    async def one(name: str) -> RegionSweep:
        out = RegionSweep(name)
        storage = regions[name]
        listing, settings = await asyncio.gather(
            storage.list(f"{plan}/"), _read_settings(storage), return_exceptions=True
        )
        for result in (listing, settings):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        if isinstance(listing, BaseException):
            out.error = str(listing) or type(listing).__name__
        else:
            out.holds = _group(plan, [info.key for info in listing])
            for info in listing:
                wal = parse_wal_key(info.key)
                if wal is not None and wal.ref.plan == plan:
                    out.wal.setdefault(wal.ref, []).append(wal)
        if not isinstance(settings, BaseException):
            out.settings = settings
        else:
            out.settings_error = str(settings) or type(settings).__name__
        return out

    return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))


async def _destroy(
    backup: Backup, holders: Mapping[str, tuple[Storage, list[str]]]
) -> dict[str, str | None]:
    """Delete one backup in every region of `holders`; region -> error (None: deleted; the
    proof that nothing is left is _prove's, one listing per region for the whole sweep)."""
    manifest = backup.ref.manifest_key(backup.backup_id)
    errors: dict[str, str | None] = dict.fromkeys(holders)

    async def drop_manifest(region: str) -> None:
        storage, keys = holders[region]
        if manifest in keys:
            try:
                await storage.delete(manifest)
            except DrdError as exc:
                errors[region] = f"deleting the manifest: {exc}"

    async def drop_rest(region: str) -> None:
        storage, keys = holders[region]
        try:
            for key in keys:
                if key != manifest:
                    await storage.delete(key)
        except DrdError as exc:
            errors[region] = errors[region] or f"deleting: {exc}"

    # Every manifest first, so that no copy anywhere stays readable while data is deleted.
    await asyncio.gather(*(drop_manifest(r) for r in holders))
    # Data even where the manifest could not be deleted: less is kept, and the manifest
    # left behind keeps the backup on the list for the next sweep.
    await asyncio.gather(*(drop_rest(r) for r in holders))
    return errors


async def sweep(
    plan: Plan,
    regions: Mapping[str, Storage],
    *,
    now: datetime,
    metrics: Metrics | None = None,
    dry_run: bool = False,
    orphan_grace: timedelta = DEFAULT_ORPHAN_GRACE,
    memory: RetentionMemory | None = None,
    skip_sources: Collection[str] = (),
    keyring: crypto.Keyring | None = None,
) -> SweepReport:
    """Sweep `plan`'s backups (and archived WAL) out of every region in `regions` (all
    configured regions: a region dropped from the plan may still hold its backups).

    `keyring`: to read where base backups start, which WAL before them is cut at (without it
    WAL goes at max_age only).

    `skip_sources`: sources whose backup is running (their leftovers may be live uploads);
    they are left for the next sweep. A dry run decides and reports but changes nothing, not
    even the metrics or `memory`."""
    memory = memory if memory is not None else RetentionMemory()
    memory.plan_regions[plan.name] = tuple(plan.storage.regions)
    found = await _list_regions(plan.name, regions)

    settings: dict[str, DeletionSettings] = {}
    for name, region in found.items():
        if region.settings is not None:
            settings[name] = memory.settings[name] = region.settings
        elif name in memory.settings:
            settings[name] = region.settings = memory.settings[name]
    # Each region's settings move that region's deletion age only.
    leads, findings = region_leads(plan.retention.max_age, settings)
    for name in sorted(set(found) - set(settings)):
        why = found[name].settings_error or "not read"
        findings.append(SettingsFinding("warning", name, f"deletion settings unknown: {why}"))
    policy = RetentionPolicy(plan.retention.max_age, timedelta(0), orphan_grace)
    policies = {
        name: RetentionPolicy(plan.retention.max_age, leads.get(name, timedelta(0)), orphan_grace)
        for name in found
    }

    reachable = {n: r for n, r in found.items() if r.error is None}
    committed: dict[BackupKey, bool] = {}
    for region in reachable.values():
        for key, keys in region.holds.items():
            has_manifest = any(k.endswith("/" + MANIFEST_OBJECT) for k in keys)
            committed[key] = committed.get(key, False) or has_manifest
    # Data without a manifest in any reachable region is a leftover, unless a region that
    # cannot be listed may hold its manifest: then it is kept like a backup (destroyed at its
    # destroy age, not after the leftover grace), never taken for dead work.
    unknown = len(reachable) < len(found)
    if not dry_run:
        memory.seen(plan.name, committed.keys(), now, prune=not unknown)
    backups = []
    for key, is_committed in committed.items():
        dated = backup_id_time(key[1])
        # The earliest time drd knows: the id's, or when it first saw the backup (an id dated
        # in the future is aged from then, never kept past the ceiling).
        first = memory.first_seen_at(plan.name, key) or now
        backups.append(
            Backup(
                key[0],
                key[1],
                min(dated, first),
                is_committed or unknown,
                dated if first < dated else None,
            )
        )
    held = {b.ref.source for b in backups} | {ref.source for r in found.values() for ref in r.wal}
    skipped = sorted(held & set(skip_sources))
    decisions = {
        name: apply_policy(
            [b for b in backups if b.key in region.holds and b.ref.source not in skip_sources],
            policies[name],
            now,
        )
        for name, region in reachable.items()
    }
    report = SweepReport(
        plan.name,
        now,
        dry_run,
        policy,
        _merge(decisions),
        found,
        findings,
        skipped,
        policies,
        decisions,
    )
    for finding in findings:
        if finding.severity != "info":
            log.warning("plan %s: %s", plan.name, finding)
    physical = {SourceRef(plan.name, s.name) for s in plan.sources if s.kind == PHYSICAL}
    await _decide_wal(report, regions, backups, keyring, skip_sources, physical)

    if not dry_run:
        if metrics is not None:
            # The plan's regions at zero from the start, so that increase() sees the first one.
            for name in plan.storage.regions:
                metrics.retention_deleted.labels(plan.name, name)
                metrics.retention_wal_deleted.labels(plan.name, name)
                metrics.retention_delete_failures.labels(plan.name, name)
        await _destroy_all(report, regions, metrics)
        for name, region in report.regions.items():
            if region.wal_destroyed:
                memory.cut_wal(name, region.wal_destroyed)
        await _remove_partials(plan, reachable, regions, orphan_grace, skip_sources, report)
    _check_windows(report)
    _account_oldest(report, backups, memory, metrics, update=not dry_run)
    if metrics is not None and not dry_run:
        memory.publish(metrics, now)
        metrics.retention_last_sweep.labels(plan.name).set(now.timestamp())
    return report


def _base_start(entry: CatalogEntry) -> BaseStart:
    captured = entry.captured
    if entry.manifest is None:
        why = str(entry.verify_error or "manifest not verified")
        return BaseStart(entry.backup_id, captured, unknown=why)
    meta = entry.manifest.body.strategy_metadata
    try:
        size = int(meta["wal_segment_size"])
        start = segment_of(parse_lsn(str(meta["start_lsn"])), int(meta["timeline"]), size)
        end_tli = int(meta.get("end_timeline") or meta["timeline"])
        end = segment_of(parse_lsn(str(meta["end_lsn"])), end_tli, size)
        end_time = datetime.fromisoformat(str(meta["end_time"]))
        system_id = str(meta["system_identifier"])
    except (KeyError, TypeError, ValueError) as exc:
        return BaseStart(entry.backup_id, captured, unknown=f"no WAL range in its manifest ({exc})")
    return BaseStart(entry.backup_id, captured, system_id, size, start, end, end_time)


async def _read_bases(
    refs: Collection[SourceRef],
    storages: Sequence[Storage],
    keyring: crypto.Keyring | None,
    backups: Sequence[Backup],
) -> dict[SourceRef, list[BaseStart]]:
    """The committed base backups of `refs`; without a key each one's start is unknown."""
    out: dict[SourceRef, list[BaseStart]] = {}
    for ref in sorted(refs, key=str):
        committed = [b for b in backups if b.ref == ref and b.committed]
        if keyring is None:
            out[ref] = [
                BaseStart(b.backup_id, b.captured, unknown="no key to read its manifest")
                for b in committed
            ]
            continue
        catalog = await build_catalog(storages, keyring, ref.prefix)
        entries = {e.backup_id: e for e in catalog.for_source(ref)}
        bases = []
        for b in committed:
            entry = entries.get(b.backup_id)
            if entry is None:
                bases.append(BaseStart(b.backup_id, b.captured, unknown="manifest not listed"))
            elif entry.public is not None and entry.public.kind != PHYSICAL:
                continue  # not a base backup: the source was of another kind once
            else:
                # Aged like the backup itself (the earliest time drd knows for it).
                found = _base_start(entry)
                bases.append(dataclasses.replace(found, captured=min(found.captured, b.captured)))
        out[ref] = bases
    return out


async def _decide_wal(
    report: SweepReport,
    regions: Mapping[str, Storage],
    backups: Sequence[Backup],
    keyring: crypto.Keyring | None,
    skip_sources: Collection[str],
    physical: Collection[SourceRef],
) -> None:
    """Decide each region's WAL; `physical`: the plan's physical sources (their base backups
    are read even before they have WAL: the recovery window starts at the oldest's end)."""
    reachable = {n: r for n, r in report.regions.items() if r.error is None}
    refs = {ref for r in reachable.values() for ref in r.wal} | set(physical)
    refs = {ref for ref in refs if ref.source not in skip_sources}
    if not refs:
        return
    report.bases = await _read_bases(
        refs, [regions[n] for n in sorted(reachable)], keyring, backups
    )
    for name, region in reachable.items():
        for ref, keys in region.wal.items():
            if ref in refs:
                region.wal_decisions[ref] = decide_wal(
                    keys, report.bases[ref], report.policy_for(name), report.now
                )


def _check_windows(report: SweepReport) -> None:
    """Every kept base backup must still find, in some region, the WAL from its end on that a
    restore to a point replays: say so of each that does not."""
    reachable = {n: r for n, r in report.regions.items() if r.error is None}
    for ref, bases in sorted(report.bases.items(), key=lambda kv: str(kv[0])):
        archive = WalArchive(ref, regions=sorted(reachable))
        for name, region in reachable.items():
            gone = set(region.wal_destroyed) | (set(region.wal_doomed) if report.dry_run else set())
            for key in region.wal.get(ref, []):
                if key.key not in gone:
                    archive.add(name, key)
        kept = {b.key for d in report.decisions.values() for b in d.keep}
        for base in kept_bases(bases, report.policy, report.now):
            if (ref, base.backup_id) not in kept or not base.known:
                continue
            assert base.system_id and base.end and base.segment_size
            chain = follow(archive, base.system_id, base.end, base.segment_size)
            if chain.segments or not chain.gap:
                # Its end segment is held, or nothing after it yet (still being archived).
                continue
            missing = base.end.name(base.segment_size)
            finding = (
                f"{ref}@{base.backup_id}: WAL segment {missing} (the base backup's end) is in "
                "no region: it restores to its end only, not to a point after it"
            )
            report.wal_findings.append(finding)
            if not report.dry_run:
                log.warning("retention: %s", finding)


async def _prove(
    plan: str, storage: Storage, deleted: Sequence[Backup], wal: Collection[str] = ()
) -> tuple[dict[BackupKey, str], dict[str, str]]:
    """The proof, after the deletions: the plan's prefix listed once in the region, and every
    deleted backup and WAL object must be absent from it; backup (WAL key) -> why not (what
    is still listed, or why the region could not be listed)."""
    if not deleted and not wal:
        return {}, {}
    try:
        listed = await storage.list(f"{plan}/")
    except DrdError as exc:
        why = f"cannot list to prove the deletion: {exc}"
        return {b.key: why for b in deleted}, dict.fromkeys(wal, why)
    wanted_wal = set(wal)
    left_wal = {i.key: "still listed after deletion" for i in listed if i.key in wanted_wal}
    left: dict[BackupKey, list[str]] = {}
    wanted = {b.ref.backup_prefix(b.backup_id): b.key for b in deleted}
    for info in listed:
        # plan/source/id/ whatever lies below it (restore-tests/<x>.json included)
        parts = info.key.split("/", 3)
        key = wanted.get("/".join(parts[:3]) + "/") if len(parts) == 4 else None
        if key is not None:
            left.setdefault(key, []).append(parts[3])
    still = {key: f"still listed after deletion: {', '.join(names)}" for key, names in left.items()}
    return still, left_wal


async def _destroy_wal(
    storage: Storage, keys: Sequence[str], semaphore: asyncio.Semaphore
) -> dict[str, str | None]:
    errors: dict[str, str | None] = {}

    async def one(key: str) -> None:
        async with semaphore:
            try:
                await storage.delete(key)
                errors[key] = None
            except DrdError as exc:
                errors[key] = f"deleting: {exc}"

    await asyncio.gather(*(one(k) for k in keys))
    return errors


async def _destroy_all(
    report: SweepReport, regions: Mapping[str, Storage], metrics: Metrics | None
) -> None:
    semaphore = asyncio.Semaphore(_CONCURRENT_BACKUPS)
    reachable = {n: r for n, r in report.regions.items() if r.error is None}
    deleted: dict[str, list[Backup]] = {name: [] for name in reachable}
    failed: dict[str, dict[BackupKey, str]] = {name: {} for name in reachable}

    def doomed_in(name: str, backup: Backup) -> bool:
        decision = report.decisions.get(name)
        return decision is not None and any(b.key == backup.key for b in decision.destroy)

    async def one(backup: Backup) -> None:
        # Only the regions whose own deletion age it reached (each region has its own lead).
        holders = {
            name: (regions[name], region.holds[backup.key])
            for name, region in reachable.items()
            if backup.key in region.holds and doomed_in(name, backup)
        }
        async with semaphore:
            errors = await _destroy(backup, holders)
        for name, error in errors.items():
            if error is None:
                deleted[name].append(backup)
            else:
                failed[name][backup.key] = error

    await asyncio.gather(*(one(b) for b in report.decision.destroy))
    # WAL after the backups: a base backup's WAL never goes before the base backup itself.
    wal_errors = await asyncio.gather(
        *(
            _destroy_wal(regions[name], sorted(region.wal_doomed), semaphore)
            for name, region in reachable.items()
        )
    )
    wal_deleted = {
        name: [k for k, e in errors.items() if e is None]
        for name, errors in zip(reachable, wal_errors, strict=True)
    }
    proofs = await asyncio.gather(
        *(
            _prove(report.plan, regions[name], deleted[name], wal_deleted[name])
            for name in reachable
        )
    )
    by_key = {b.key: b for b in report.decision.destroy}
    for (name, (unproven, wal_unproven)), errors in zip(
        zip(reachable, proofs, strict=True), wal_errors, strict=True
    ):
        _account_wal(report, name, errors, wal_unproven, metrics)
        failed[name].update(unproven)
        for backup in deleted[name]:
            if backup.key in unproven:
                continue
            reachable[name].destroyed.append(backup)
            log.info(
                "retention: destroyed %s in region %s (%s)",
                backup,
                name,
                report.decisions[name].reasons[backup.key],
            )
            if metrics is not None:
                metrics.retention_deleted.labels(report.plan, name).inc()
        for key, error in failed[name].items():
            reachable[name].failed[key] = error
            log.error("retention: destroying %s in region %s failed: %s", by_key[key], name, error)
            if metrics is not None:
                metrics.retention_delete_failures.labels(report.plan, name).inc()


def _account_wal(
    report: SweepReport,
    name: str,
    errors: Mapping[str, str | None],
    unproven: Mapping[str, str],
    metrics: Metrics | None,
) -> None:
    region = report.regions[name]
    failed = {k: e for k, e in errors.items() if e is not None} | dict(unproven)
    region.wal_destroyed = sorted(k for k, e in errors.items() if e is None and k not in unproven)
    region.wal_failed = failed
    if region.wal_destroyed:
        log.info(
            "retention: destroyed %d WAL object(s) of plan %s in region %s",
            len(region.wal_destroyed),
            report.plan,
            name,
        )
    for key, error in sorted(failed.items()):
        log.error("retention: destroying WAL %s in region %s failed: %s", key, name, error)
    if metrics is not None:
        metrics.retention_wal_deleted.labels(report.plan, name).inc(len(region.wal_destroyed))
        if failed:
            metrics.retention_delete_failures.labels(report.plan, name).inc(len(failed))


async def _remove_partials(
    plan: Plan,
    reachable: Mapping[str, RegionSweep],
    regions: Mapping[str, Storage],
    grace: timedelta,
    skip_sources: Collection[str],
    report: SweepReport,
) -> None:
    """Unfinished uploads a backend keeps out of listings (LocalStorage's partial files).
    GCS needs nothing here: an unfinished resumable upload never becomes an object, and GCS
    drops the session and its bytes after a week."""
    if skip_sources:
        sources = {s.name for s in plan.sources} | {
            ref.source for ref, _ in report.decision.reasons
        }
        prefixes = [f"{plan.name}/{s}/" for s in sorted(sources - set(skip_sources))]
    else:
        prefixes = [f"{plan.name}/"]
    for name, region in reachable.items():
        remove_partials = getattr(regions[name], "remove_partials", None)
        if remove_partials is None:
            continue
        for prefix in prefixes:
            try:
                region.partials_removed += await remove_partials(
                    prefix, older_than=grace.total_seconds()
                )
            except StorageError as exc:
                log.warning("region %s: removing unfinished uploads failed: %s", name, exc)


def _account_oldest(
    report: SweepReport,
    backups: list[Backup],
    memory: RetentionMemory,
    metrics: Metrics | None,
    *,
    update: bool,
) -> None:
    """Set every region's oldest remaining copy; for unreachable regions from memory, and count
    a failed deletion where that copy is overdue."""
    captured = {b.key: b.captured for b in backups}
    assumed = min(captured.values(), default=None)
    own = memory.plan_regions.get(report.plan)
    destroy_age = report.policy.destroy_age
    for name, region in report.regions.items():
        if region.error is None:
            left = [captured[k] for k in region.holds if k not in {b.key for b in region.destroyed}]
            gone = set(region.wal_destroyed)
            # WAL is a copy too: nothing of it may outlive max_age unseen.
            left += [k.through for keys in region.wal.values() for k in keys if k.key not in gone]
            region.oldest = min(left, default=None)
        elif (report.plan, name) in memory.oldest:
            region.oldest, region.oldest_from = memory.oldest[(report.plan, name)], "remembered"
        elif own is None or name in own:
            region.oldest, region.oldest_from = assumed, "assumed"
        else:  # never listed, and not one of the plan's: it was never meant to hold a copy
            region.oldest, region.oldest_from = None, "assumed"
        if update:
            memory.remember(report.plan, name, region.oldest)
        destroy_age = report.policy_for(name).destroy_age
        overdue = region.oldest is not None and report.now - region.oldest >= destroy_age
        if region.error is not None and overdue:
            region.overdue_unreachable = True
            if metrics is not None and update:
                metrics.retention_delete_failures.labels(report.plan, name).inc()
