"""The report of one restore test, and where it is kept: next to the backup, in every region.

    <plan>/<source>/<backup_id>/restore-tests/<tested_at>-<random4>.json

A report is sealed like a manifest (drd.crypto.seal_manifest): its public half (what was
tested, when, the result, its category, the region read, the RTO) is readable without the key,
so `drd list` shows results on a key-less host, and is authenticated; the body (phases, every
check with what it expected and found) is encrypted, because a check's actual values are the
source's data. Its public fields say `document: restore-test-report` and name the backup, so a
report can never pass for a manifest or for another backup's report.

Kept under the backup's prefix, a report lives exactly as long as the backup: retention deletes
the whole prefix. The catalog ignores names other than data.drd and manifest.json.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from drd import __version__, crypto
from drd.durations import format_elapsed as fe
from drd.errors import DrdError, IntegrityError, UnknownKey
from drd.layout import SourceRef
from drd.repository.catalog import Catalog, CatalogEntry
from drd.restore_tests.results import CheckResult
from drd.storage.base import Storage

log = logging.getLogger(__name__)

REPORT_FORMAT = "drd-restore-test-1"
DOCUMENT = "restore-test-report"
REPORTS_DIR = "restore-tests"

Category = Literal["fetch_failed", "integrity_failed", "restore_failed", "check_failed", "timeout"]
CATEGORIES: tuple[Category, ...] = (
    "fetch_failed",
    "integrity_failed",
    "restore_failed",
    "check_failed",
    "timeout",
)


@dataclass
class Phases:
    """Seconds per phase. fetch + decrypt_decompress + restore + checks is the RTO; setting
    up and tearing down the scratch environment is test overhead, reported but not counted
    (in a real disaster the target exists already)."""

    #: reading the manifest and the data object from the region (first byte and every read)
    fetch: float = 0.0
    #: authenticating, decrypting and decompressing the stream
    decrypt_decompress: float = 0.0
    #: the rest of the restore's wall time: the restore tool writing the copy
    restore: float = 0.0
    #: every check, built-in and declarative
    checks: float = 0.0
    scratch_setup: float = 0.0
    teardown: float = 0.0

    @property
    def rto(self) -> float:
        return self.fetch + self.decrypt_decompress + self.restore + self.checks

    def as_json(self) -> dict[str, float]:
        return {
            "fetch": round(self.fetch, 3),
            "decrypt_decompress": round(self.decrypt_decompress, 3),
            "restore": round(self.restore, 3),
            "checks": round(self.checks, 3),
            "scratch_setup": round(self.scratch_setup, 3),
            "teardown": round(self.teardown, 3),
        }


@dataclass
class RestoreTestReport:
    plan: str
    source: str
    backup_id: str
    kind: str
    #: the backup's capture time (ISO 8601 UTC)
    backup_captured_at: str
    #: newest | newest-usable | random-older | requested | drill
    selection: str
    started_at: datetime
    rto_target_seconds: float
    #: why that backup, in a sentence (drd.verify.restore_run.choose_backups)
    selection_reason: str = ""
    region: str | None = None
    finished_at: datetime | None = None
    failure_category: Category | None = None
    failure_message: str | None = None
    phases: Phases = field(default_factory=Phases)
    #: True once the whole path ran (restore done, checks run): only then is the RTO measured
    measured: bool = False
    checks: list[CheckResult] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)
    restore: dict[str, Any] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    #: regions without an intact copy of this backup (not tested, for the record)
    copy_problems: dict[str, str] = field(default_factory=dict)
    #: newer backups passed over (`--allow-older`), with why none of their copies was usable
    skipped_newer: dict[str, str] = field(default_factory=dict)
    #: the regions the report was written to
    stored_in: list[str] = field(default_factory=list)

    @property
    def ref(self) -> SourceRef:
        return SourceRef(self.plan, self.source)

    @property
    def passed(self) -> bool:
        return self.failure_category is None

    @property
    def result(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def rto_seconds(self) -> float | None:
        return self.phases.rto if self.measured else None

    def fail(self, category: Category, message: str) -> None:
        """Record the first failure; later ones (during clean-up) do not replace it."""
        if self.failure_category is None:
            self.failure_category = category
            self.failure_message = message

    def public(self) -> dict[str, Any]:
        """The unencrypted, authenticated half: no data values, no floats (JCS-safe)."""
        rto = self.rto_seconds
        return {
            "document": DOCUMENT,
            "format": REPORT_FORMAT,
            "plan": self.plan,
            "source": self.source,
            "backup_id": self.backup_id,
            "tested_at": self.started_at.isoformat(),
            "result": self.result,
            "failure_category": self.failure_category,
            "region": self.region,
            "rto_ms": round(rto * 1000) if rto is not None else None,
        }

    def as_json(self) -> dict[str, Any]:
        rto = self.rto_seconds
        return {
            **self.public(),
            "kind": self.kind,
            "selection": self.selection,
            "selection_reason": self.selection_reason,
            "backup_captured_at": self.backup_captured_at,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "failure_message": self.failure_message,
            "phases": self.phases.as_json(),
            "rto_seconds": round(rto, 3) if rto is not None else None,
            "rto_target_seconds": self.rto_target_seconds,
            "rto_ok": rto is not None and rto <= self.rto_target_seconds,
            "checks": [c.as_json() for c in self.checks],
            "scratch": self.scratch,
            "restore": self.restore,
            "bytes": self.bytes,
            "copy_problems": self.copy_problems,
            "skipped_newer": self.skipped_newer,
            "stored_in": self.stored_in,
            "drd_version": __version__,
        }

    def summary_lines(self) -> list[str]:
        """What `drd restore-test` prints."""
        head = f"{self.result.upper()} {self.ref}@{self.backup_id} ({self.selection})"
        head += f" from region {self.region or '-'}"
        if self.failure_category:
            head += f": {self.failure_category}: {self.failure_message}"
        lines = [head]
        if self.selection_reason:
            lines.append(f"  chosen: {self.selection_reason}")
        lines.extend(
            f"  NOT TESTED: newer backup {self.ref}@{newer}: {why}"
            for newer, why in self.skipped_newer.items()
        )
        p = self.phases
        if self.measured:
            target = self.rto_target_seconds
            verdict = "within" if p.rto <= target else "ABOVE"
            lines.append(
                f"  RTO {fe(p.rto)} ({verdict} the target {fe(target)}): fetch {fe(p.fetch)}, "
                f"decrypt+decompress {fe(p.decrypt_decompress)}, restore {fe(p.restore)}, "
                f"checks {fe(p.checks)}"
            )
        lines.append(
            f"  scratch: {self.scratch.get('description', '-')} (set-up {fe(p.scratch_setup)}, "
            f"teardown {fe(p.teardown)})"
        )
        if self.scratch.get("note"):
            lines.append(f"  note: {self.scratch['note']}")
        point = self.restore.get("pitr")
        if isinstance(point, dict):
            lines.append(f"  {_point_line(point)}")
        lines.extend(f"  {check.summary()}" for check in self.checks)
        return lines


def _point_line(point: Mapping[str, Any]) -> str:
    """A point-in-time test's target and what recovery reached (drd.verify.pitr_restore_test)."""
    probe = point.get("probe") or {}
    reached = point.get("achieved") or {}
    text = f"point: probe at {probe.get('time')} (LSN {probe.get('lsn')})"
    if reached:
        rpo = reached.get("rpo_seconds")
        text += (
            f"; reached LSN {reached.get('replay_lsn') or '-'}, last transaction at "
            f"{reached.get('last_transaction_at') or '-'}, RPO "
            f"{fe(float(rpo)) if isinstance(rpo, int | float) else '-'}"
        )
    return text


def report_key(ref: SourceRef, backup_id: str, tested_at: datetime) -> str:
    stamp = f"{tested_at:%Y%m%dT%H%M%S}{tested_at.microsecond // 1000:03d}Z"
    return f"{ref.backup_prefix(backup_id)}{REPORTS_DIR}/{stamp}-{secrets.token_hex(2)}.json"


async def store_report(
    report: RestoreTestReport, regions: Sequence[Storage], keyring: crypto.Keyring
) -> list[str]:
    """Write the sealed report to each region (a failure in one is logged); where it landed."""
    key = report_key(report.ref, report.backup_id, report.started_at)
    # The stored copies say where the report was sent; the object returned says where it landed.
    report.stored_in = [storage.name for storage in regions]
    sealed = crypto.seal_manifest(keyring, report.public(), report.as_json())
    stored: list[str] = []
    for storage in regions:
        try:
            await storage.put(key, sealed, metadata={"drd-backup-id": report.backup_id})
        except DrdError as exc:
            log.warning("region %s: could not store the restore test report: %s", storage.name, exc)
            continue
        stored.append(storage.name)
    report.stored_in = stored
    return stored


def report_keys(entry: CatalogEntry) -> dict[str, list[str]]:
    """Region -> the report keys of a catalog entry, oldest first."""
    marker = f"/{REPORTS_DIR}/"
    out: dict[str, list[str]] = {}
    for region, copy in entry.copies.items():
        keys = sorted(k for k in copy.keys if marker in k and k.endswith(".json"))
        if keys:
            out[region] = keys
    return out


def read_report(
    raw: bytes, keyring: crypto.Keyring | None, backup_id: str, where: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(public, body) of a stored report; body is None without a keyring (public unverified).
    IntegrityError if it is forged or belongs to another backup."""
    if keyring is None:
        public = crypto.read_manifest_public(raw)
        body = None
    else:
        try:
            public, body = crypto.open_manifest(keyring, raw)
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: {exc}") from None
    if public.get("document") != DOCUMENT or public.get("backup_id") != backup_id:
        raise IntegrityError(f"{where}: not a restore test report of backup {backup_id}")
    return public, body


async def latest_summaries(
    catalog: Catalog, regions: Sequence[Storage], keyring: crypto.Keyring | None
) -> dict[tuple[SourceRef, str], dict[str, Any]]:
    """The newest restore test report of each backup in the catalog, summarised from its
    public half: {result, failure_category, tested_at, rto_seconds, region, verified}."""
    by_name = {r.name: r for r in regions}
    out: dict[tuple[SourceRef, str], dict[str, Any]] = {}
    unknown: dict[str, set[str]] = {}  # backup -> the keys its reports are sealed with
    for entry in catalog.entries:
        keys = report_keys(entry)
        if not keys:
            continue
        newest = max(k[-1].rsplit("/", 1)[-1] for k in keys.values())
        for region, region_keys in keys.items():
            key = next((k for k in region_keys if k.endswith("/" + newest)), None)
            if key is None or region not in by_name:
                continue
            try:
                raw = await by_name[region].get(key)
                public, _ = read_report(raw, keyring, entry.backup_id, f"{region}:{key}")
            except UnknownKey as exc:
                unknown.setdefault(f"{entry.ref}@{entry.backup_id}", set()).add(exc.key_id)
                continue
            except DrdError as exc:
                log.warning("restore test report %s:%s unreadable: %s", region, key, exc)
                continue
            rto_ms = public.get("rto_ms")
            out[(entry.ref, entry.backup_id)] = {
                "result": public.get("result"),
                "failure_category": public.get("failure_category"),
                "tested_at": public.get("tested_at"),
                "rto_seconds": rto_ms / 1000 if isinstance(rto_ms, int) else None,
                "region": public.get("region"),
                "verified": keyring is not None,
            }
            break
    if unknown:
        # One line, like the catalog's, rather than one per report after a key rotation.
        ids = sorted(set().union(*unknown.values()))
        log.warning(
            "restore test reports of %d backup(s) are sealed with key(s) not in the keyring "
            "(%s): not shown (%s ... %s)",
            len(unknown),
            ", ".join(ids),
            min(unknown),
            max(unknown),
        )
    return out


def summary_of(report: RestoreTestReport) -> Mapping[str, Any]:
    """The status API's view of a report."""
    return {
        "backup_id": report.backup_id,
        "selection": report.selection,
        "selection_reason": report.selection_reason,
        "result": report.result,
        "failure_category": report.failure_category,
        "failure_message": report.failure_message,
        "tested_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "region": report.region,
        "rto_seconds": round(report.phases.rto, 3) if report.measured else None,
        "phases": report.phases.as_json(),
        "failed_checks": [c.name for c in report.checks if c.failed],
    }
