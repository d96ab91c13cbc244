"""`drd check [PLAN] [--read-data]`: everything the daemon's scrub and repair do, now, for one
plan, with what was found and done in words.

- every region's copy of every manifest: verified, bound to its place, equal to the others'
  (the catalog); data object sizes;
- with `read_data`, every data object read and its ciphertext digest checked (a scrub without
  a budget, drd.retention.scrub);
- the integrity findings (drd.retention.integrity): rollbacks, disagreements, future ids,
  invalid records;
- unless told not to, repair (drd.retention.repair): damaged copies replaced, missing copies
  and manifests given back, from copies that verify, never overwriting anything.

A problem is anything damaged, forged or suspicious, even when it was repaired: someone or
something wrote what drd did not, and a person should know.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from drd import crypto
from drd.config.models import Plan
from drd.durations import format_size
from drd.repository.catalog import build_catalog
from drd.repository.heads import HeadMemory
from drd.retention.integrity import IntegrityFinding, assess
from drd.retention.repair import CopyKey, RepairReport, repair
from drd.retention.scrub import ScrubMemory, ScrubReport, scrub_plan
from drd.storage.base import Storage


@dataclass
class CheckReport:
    plan: str
    backups: int = 0
    copies: int = 0
    scrub: ScrubReport | None = None
    repair: RepairReport | None = None
    findings: list[IntegrityFinding] = field(default_factory=list)
    #: region -> (backup, why its manifest there is not this backup's)
    unusable: list[tuple[str, str, str]] = field(default_factory=list)
    #: (region, backup, key id) of copies sealed with a key the keyring lacks (a rotation that
    #: left the old key out): unusable too, but reported in one line
    unknown_key_copies: list[tuple[str, str, str]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    skipped_sources: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        count = len(self.findings) + len(self.unusable) + len(self.unknown_key_copies)
        if self.scrub is not None:
            count += len(self.scrub.damaged)
        if self.repair is not None:
            scrubbed = self._scrub_damaged()
            count += sum(1 for c in self.repair.damaged if c.key not in scrubbed)
            count += len(self.repair.failed)
            count += sum(1 for c in self.repair.replaced if c.error)
            count += len(self.repair.untrusted)
        return count

    def _scrub_damaged(self) -> set[CopyKey]:
        if self.scrub is None:
            return set()
        return {(c.ref, c.backup_id, c.region) for c in self.scrub.damaged}

    def format(self) -> list[str]:
        head = f"plan {self.plan}: {self.backups} backup(s), {self.copies} copies"
        if self.scrub is not None:
            read = format_size(self.scrub.bytes_read)
            head += f"; read {len(self.scrub.checked)} data objects ({read})"
        out = [head]
        if self.skipped_sources:
            out.append(f"  skipped (a backup is running): {', '.join(self.skipped_sources)}")
        if self.scrub is not None:
            for copy in self.scrub.checked:
                if copy.problem:
                    what = "DAMAGED" if copy.damaged else "UNREADABLE"
                    out.append(
                        f"  {what} region {copy.region}: {copy.ref}@{copy.backup_id}: "
                        f"{copy.problem}"
                    )
        for region, backup, why in self.unusable:
            out.append(f"  UNUSABLE region {region}: {backup}: {why}")
        if self.unknown_key_copies:
            # Backup ids sort by capture time.
            backups = sorted(
                {b for _, b, _ in self.unknown_key_copies}, key=lambda b: b.split("@")[-1]
            )
            keys = sorted({k for _, _, k in self.unknown_key_copies})
            span = backups[0] if len(backups) == 1 else f"oldest {backups[0]}, newest {backups[-1]}"
            out.append(
                f"  UNUSABLE {len(self.unknown_key_copies)} copies of {len(backups)} backup(s) "
                f"sealed with key(s) not in the keyring ({', '.join(keys)}): {span}"
            )
        if self.repair is not None:
            scrubbed = self._scrub_damaged()
            for c in self.repair.damaged:
                if c.key not in scrubbed:
                    out.append(f"  DAMAGED region {c.region}: {c.ref}@{c.backup_id}: {c.error}")
            for c in self.repair.repaired + self.repair.replaced:
                if c.error:
                    out.append(
                        f"  NOT REPAIRED region {c.region}: {c.ref}@{c.backup_id}: {c.error}"
                    )
                else:
                    verb = "REPLACED" if c.action == "replaced" else "REPAIRED"
                    out.append(
                        f"  {verb} region {c.region}: {c.ref}@{c.backup_id} ({c.action} from "
                        f"region {c.source_region})"
                    )
            for c in self.repair.failed:
                out.append(f"  NOT REPAIRED region {c.region}: {c.ref}@{c.backup_id}: {c.error}")
            for name, why in self.repair.untrusted.items():
                out.append(f"  UNTRUSTED {name}: {why}")
        out.extend(f"  FINDING {f}" for f in self.findings)
        out.extend(f"  UNREACHABLE region {r}: {e}" for r, e in self.unreachable.items())
        return out


async def check_plan(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    *,
    memory: ScrubMemory,
    heads: HeadMemory,
    now: datetime,
    read_data: bool,
    repair_copies: bool = True,
    skip_sources: Collection[str] = (),
) -> CheckReport:
    """Check (and repair) `plan` now; the caller holds the locks of every source not in
    `skip_sources`."""
    storages = [regions[name] for name in plan.storage.regions]
    # Asked for by a person, now: every copy as the regions hold it, not as the cache has it.
    catalog = await build_catalog(storages, keyring, f"{plan.name}/", cache=None)
    report = CheckReport(
        plan.name,
        backups=len(catalog.entries),
        copies=sum(len(e.copies) for e in catalog.entries),
        unreachable=dict(catalog.region_errors),
        skipped_sources=sorted(skip_sources),
    )
    for entry in catalog.entries:
        if entry.ref.source in skip_sources:
            continue
        for region, copy in entry.copies.items():
            if copy.manifest_invalid and entry.unknown_keys:
                key = getattr(copy.manifest_error, "key_id", "") or "?"
                report.unknown_key_copies.append((region, f"{entry.ref}@{entry.backup_id}", key))
            elif copy.manifest_invalid:
                report.unusable.append(
                    (region, f"{entry.ref}@{entry.backup_id}", str(copy.manifest_error))
                )
    damaged: set[CopyKey] = set()
    if read_data:
        report.scrub = await scrub_plan(
            plan,
            regions,
            keyring,
            memory,
            now=now,
            period=None,
            skip_sources=skip_sources,
            replace=False,
        )
        damaged = report._scrub_damaged()
    if repair_copies:
        report.repair = await repair(
            plan,
            regions,
            keyring,
            now=now,
            destroy_age=plan.retention.max_age,
            skip_sources=skip_sources,
            damaged=damaged,
            memory=heads,
        )
        report.findings = report.repair.findings
    else:
        assessment = await assess(
            plan, catalog, storages, keyring, heads, now, skip_sources=skip_sources
        )
        report.findings = assessment.findings
    return report
