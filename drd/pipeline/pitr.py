"""Point-in-time recovery of physical PostgreSQL sources: shipping WAL, fetching it back, the
recovery window, and restoring to a point.

- `push_wal`: one WAL file to every region of the plan, sealed and bound to its key
  (drd.repository.wal). A segment or history file a region already holds is not written again
  (a restarted archiver re-receives the segment it was in: it never becomes a second object);
  it counts as archived once `min_copies` regions hold it.
- `WalFetcher`: a WAL file back from whichever region has an intact copy. An object that fails
  authentication in one region is refused and the next region's copy used.
- `recovery_windows`: for every base backup, the span of time (and of LSNs) it can be restored
  to: from the end of the base backup to the end of the WAL that follows it without a gap.
- `restore_to_point`: the newest base backup before the target, extracted into a new data
  directory with recovery configured (`restore_command` runs `drd wal-fetch`); optionally the
  server is started and drd waits until recovery has reached the target. A target outside every
  window fails before anything is touched, naming the window.

While drd waits for a recovery it started (`start=True`) it serves the WAL itself over a Unix
socket only the restored server's user can use: `restore_command` is then `drd wal-fetch
--socket PATH`, which needs neither the keys nor the regions. Once recovery ended the command is
rewritten to the stand-alone form (`drd --config ... wal-fetch PLAN/SOURCE`), which reads the
regions and the keys the way every drd command does; the keys never reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from drd import crypto
from drd.errors import (
    BackupNotFound,
    DrdError,
    IntegrityError,
    NotEnoughCopies,
    ObjectExists,
    OutsideWindow,
    RestoreError,
    StorageError,
    TargetExists,
    WalFetchFailed,
    WalNotFound,
)
from drd.layout import SourceRef
from drd.pipeline.restore import RestoreResult, restore_backup
from drd.repository.catalog import CatalogEntry, build_catalog
from drd.repository.wal import (
    Chain,
    WalArchive,
    WalFile,
    WalKey,
    follow,
    list_archive,
    open_object,
    seal,
    wal_key,
    wal_prefix,
)
from drd.storage.base import Storage
from drd.strategies.postgres_physical import (
    KIND,
    RecoveryOutcome,
    bin_dir_for,
    run_as_user,
    start_cluster,
)
from drd.strategies.postgres_wal import (
    Segment,
    format_lsn,
    parse_segment_name,
    segment_of,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Shipping


@dataclass
class PushResult:
    key: WalKey
    #: regions that hold the file now (written now, or held already)
    holding: list[str] = field(default_factory=list)
    #: regions that held it already (nothing written there)
    already: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    size: int = 0


async def push_wal(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    *,
    system_id: str,
    name: str,
    data: bytes,
    through: datetime,
    timeline: int,
    segment_size: int,
    min_copies: int,
    covered_lsn: int | None = None,
    held: Mapping[str, bool] | None = None,
    archived_by: str = "",
) -> PushResult:
    """Store WAL file `name` in every region that does not hold it yet. `held`: region ->
    whether it holds this file already (segments and histories; unknown regions are listed).
    NotEnoughCopies if fewer than `min_copies` regions hold it afterwards (what was stored
    stays: a later push completes it)."""
    if not 1 <= min_copies <= len(regions):
        raise ValueError(f"min_copies {min_copies} outside 1..{len(regions)}")
    key = wal_key(ref, system_id, name, through)
    from drd.repository.wal import parse_wal_key

    parsed = parse_wal_key(key)
    assert parsed is not None, key
    result = PushResult(parsed)
    partial = parsed.kind == "partial"
    known = dict(held or {})

    async def holds(storage: Storage) -> bool:
        if partial:
            return False
        if storage.name in known:
            return known[storage.name]
        listing = await storage.list(f"{wal_prefix(ref, system_id)}{name}@")
        return bool(listing)

    sealed = await asyncio.to_thread(
        seal,
        keyring,
        parsed,
        data,
        timeline=timeline,
        segment_size=segment_size,
        covered_lsn=covered_lsn,
        archived_by=archived_by,
    )
    result.size = len(sealed)
    from drd.repository.wal import checksum

    expected_checksum = checksum(sealed)

    async def one(storage: Storage) -> None:
        try:
            if await holds(storage):
                result.already.append(storage.name)
                result.holding.append(storage.name)
                return
            try:
                # Create-only: a copy stored there already (a kill between storing and
                # noting it) is kept as it is, never replaced.
                info = await storage.put(key, sealed, metadata={"drd-wal": name}, if_absent=True)
            except ObjectExists:
                result.already.append(storage.name)
                result.holding.append(storage.name)
                return
            if info.size != len(sealed) or (info.checksum and info.checksum != expected_checksum):
                with contextlib.suppress(Exception):
                    await storage.delete(key)
                raise StorageError(f"stored copy differs from what was written ({info.size} bytes)")
            result.holding.append(storage.name)
        except Exception as exc:
            result.failed[storage.name] = str(exc) or type(exc).__name__

    await asyncio.gather(*(one(s) for s in regions))
    if len(result.holding) < min_copies:
        reasons = "; ".join(f"{r}: {e}" for r, e in result.failed.items())
        raise NotEnoughCopies(
            f"WAL {ref}:{name}: held by {len(result.holding)} of {len(regions)} regions, "
            f"min_copies is {min_copies}; {reasons}"
        )
    return result


# --------------------------------------------------------------------------------------------
# Fetching


@dataclass
class Fetched:
    name: str
    data: bytes
    key: WalKey
    region: str
    #: region -> why its copy was not used
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    """The segments a recovery needs (first..last on their timelines, by number): one of them
    missing everywhere is a gap (fatal); anything after `last` is past the archive's end."""

    first: Segment
    last: Segment

    def text(self, segment_size: int) -> str:
        return f"{self.first.name(segment_size)}:{self.last.name(segment_size)}"

    @classmethod
    def parse(cls, text: str, segment_size: int) -> Expect:
        first, sep, last = text.partition(":")
        if not sep:
            raise ValueError(f"expected FIRST:LAST segment names, got {text!r}")
        return cls(parse_segment_name(first, segment_size), parse_segment_name(last, segment_size))


class WalFetcher:
    """Fetches WAL files of one system of one source from the regions (module docstring)."""

    def __init__(
        self,
        ref: SourceRef,
        regions: Sequence[Storage],
        keyring: crypto.Keyring,
        system_id: str,
        *,
        segment_size: int = 16 << 20,
        expect: Expect | None = None,
        prefer_region: str | None = None,
    ) -> None:
        self.ref = ref
        self.regions = list(regions)
        self.keyring = keyring
        self.system_id = system_id
        self.segment_size = segment_size
        self.expect = expect
        self.prefer_region = prefer_region
        self.fetched = 0
        self.fetched_bytes = 0

    def _segment(self, name: str) -> Segment | None:
        try:
            return parse_segment_name(name, self.segment_size)
        except ValueError:
            return None

    def past_end(self, name: str) -> bool:
        seg = self._segment(name)
        return seg is not None and self.expect is not None and seg.segno > self.expect.last.segno

    def _expected(self, name: str) -> bool:
        seg = self._segment(name)
        if seg is None or self.expect is None:
            return False
        first, last = self.expect.first, self.expect.last
        return first.segno <= seg.segno <= last.segno and first.timeline <= seg.timeline <= (
            last.timeline
        )

    async def fetch(self, name: str) -> Fetched:
        """WalNotFound if no region holds `name`; WalFetchFailed if it should be there (an
        expected segment: a gap) or is held but no copy is intact."""
        if self.past_end(name):
            raise WalNotFound(f"{name}: past the end of the archive this recovery uses")
        prefix = f"{wal_prefix(self.ref, self.system_id)}{name}"
        listings = await asyncio.gather(
            *(r.list(prefix) for r in self.regions), return_exceptions=True
        )
        archive = WalArchive(self.ref, regions=[r.name for r in self.regions])
        from drd.repository.wal import parse_wal_key

        for storage, listing in zip(self.regions, listings, strict=True):
            if isinstance(listing, BaseException):
                if not isinstance(listing, Exception):
                    raise listing
                archive.region_errors[storage.name] = str(listing) or type(listing).__name__
                continue
            for info in listing:
                parsed = parse_wal_key(info.key)
                if parsed is not None and parsed.segment_name == name:
                    archive.add(storage.name, parsed)
        files = archive.files(self.system_id)
        candidates = self._candidates(files.get(name), files.get(name + ".partial"))
        skipped: dict[str, str] = dict(archive.region_errors)
        by_name = {r.name: r for r in self.regions}
        for region, key in candidates:
            where = f"region {region}: {key.key}"
            try:
                raw = await by_name[region].get(key.key)
                opened = await asyncio.to_thread(open_object, self.keyring, raw, key, where)
            except (IntegrityError, StorageError) as exc:
                log.error("WAL %s from %s refused: %s", name, region, exc)
                skipped[region] = str(exc)
                continue
            self.fetched += 1
            self.fetched_bytes += len(opened.data)
            return Fetched(name, opened.data, key, region, skipped)
        detail = "; ".join(f"{r}: {e}" for r, e in skipped.items())
        if candidates:
            raise WalFetchFailed(
                f"WAL {name} of {self.ref}: no intact copy in any region ({detail})"
            )
        if self._expected(name):
            raise WalFetchFailed(
                f"WAL {name} of {self.ref} is missing in every region: a gap in the archive"
                + (f" ({detail})" if detail else "")
            )
        raise WalNotFound(f"WAL {name} of {self.ref} is not in the archive")

    def _candidates(
        self, complete: WalFile | None, partial: WalFile | None
    ) -> list[tuple[str, WalKey]]:
        def ordered(items: list[tuple[str, WalKey]]) -> list[tuple[str, WalKey]]:
            return sorted(items, key=lambda item: item[0] != self.prefer_region)

        if complete is not None:
            return ordered([(r, keys[0]) for r, keys in complete.copies.items()])
        if partial is not None:
            newest = partial.newest
            return ordered([(r, newest) for r, keys in partial.copies.items() if newest in keys])
        return []


async def write_atomically(path: Path, data: bytes) -> None:
    def write() -> None:
        temp = path.with_name(f".{path.name}.drd-{os.getpid()}")
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)

    await asyncio.to_thread(write)


# --------------------------------------------------------------------------------------------
# Recovery windows


@dataclass
class BaseBackup:
    entry: CatalogEntry
    metadata: dict[str, Any]

    @property
    def backup_id(self) -> str:
        return self.entry.backup_id

    @property
    def system_id(self) -> str:
        return str(self.metadata["system_identifier"])

    @property
    def segment_size(self) -> int:
        return int(self.metadata["wal_segment_size"])

    @property
    def timeline(self) -> int:
        return int(self.metadata.get("end_timeline") or self.metadata["timeline"])

    @property
    def start_lsn(self) -> int:
        from drd.strategies.postgres_wal import parse_lsn

        return parse_lsn(str(self.metadata["start_lsn"]))

    @property
    def end_lsn(self) -> int:
        from drd.strategies.postgres_wal import parse_lsn

        return parse_lsn(str(self.metadata["end_lsn"]))

    @property
    def end_time(self) -> datetime:
        return datetime.fromisoformat(str(self.metadata["end_time"]))

    @property
    def start_segment(self) -> Segment:
        return segment_of(self.start_lsn, int(self.metadata["timeline"]), self.segment_size)

    @property
    def end_segment(self) -> Segment:
        return segment_of(self.end_lsn, self.timeline, self.segment_size)


@dataclass
class Window:
    """What one base backup can be restored to."""

    base: BaseBackup
    chain: Chain
    #: the WAL's end LSN when it ends in a partial segment (read from its header), else None
    partial_lsn: int | None = None

    @property
    def start(self) -> datetime:
        return self.base.end_time

    @property
    def end(self) -> datetime:
        through = self.chain.through
        return max(self.start, through) if through is not None else self.start

    @property
    def end_lsn(self) -> int:
        end = self.chain.end
        if end is None:
            return self.base.end_lsn
        if self.chain.ends_partial:
            return max(self.partial_lsn or end.start_lsn(self.base.segment_size), self.base.end_lsn)
        return max(end.end_lsn(self.base.segment_size), self.base.end_lsn)

    def describe(self) -> str:
        text = (
            f"{format_when(self.start)} .. {format_when(self.end)} "
            f"(base backup {self.base.backup_id}, "
            f"LSN {format_lsn(self.base.end_lsn)}..{format_lsn(self.end_lsn)})"
        )
        if self.chain.gap is not None:
            text += f"; WAL segment {self.chain.gap.name(self.base.segment_size)} is missing"
        return text

    def as_json(self) -> dict[str, Any]:
        size = self.base.segment_size
        return {
            "base_backup": self.base.backup_id,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "start_lsn": format_lsn(self.base.end_lsn),
            "end_lsn": format_lsn(self.end_lsn),
            "wal_segments": len(self.chain.segments),
            "gap": self.chain.gap.name(size) if self.chain.gap else None,
        }


def format_when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


@dataclass
class Windows:
    ref: SourceRef
    windows: list[Window]
    archive: WalArchive
    #: base backups that exist but cannot be used (unverified, no intact copy), with why
    unusable: dict[str, str] = field(default_factory=dict)
    region_errors: dict[str, str] = field(default_factory=dict)

    @property
    def start(self) -> datetime | None:
        return min((w.start for w in self.windows), default=None)

    @property
    def end(self) -> datetime | None:
        return max((w.end for w in self.windows), default=None)

    def describe(self) -> str:
        if not self.windows:
            return "no recovery window (no usable base backup)"
        return "; ".join(w.describe() for w in self.windows)

    def gaps(self) -> list[str]:
        seen = []
        for w in self.windows:
            if w.chain.gap is not None:
                name = w.chain.gap.name(w.base.segment_size)
                if name not in seen:
                    seen.append(name)
        return seen


def base_backups(entries: Sequence[CatalogEntry]) -> tuple[list[BaseBackup], dict[str, str]]:
    usable, unusable = [], {}
    for e in entries:
        if e.public is None or e.public.kind != KIND:
            continue
        if e.manifest is None:
            unusable[e.backup_id] = str(e.verify_error or "not verified")
            continue
        if not e.complete_regions:
            unusable[e.backup_id] = "no intact copy in any region"
            continue
        meta = dict(e.manifest.body.strategy_metadata)
        if "end_lsn" not in meta or "system_identifier" not in meta:
            unusable[e.backup_id] = "not a drd physical base backup (no WAL range)"
            continue
        usable.append(BaseBackup(e, meta))
    return usable, unusable


async def recovery_windows(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    *,
    read_partial_lsn: bool = False,
) -> Windows:
    """Every base backup's window (oldest first). `read_partial_lsn`: read the newest partial
    segment's header for the exact end LSN (one object read; restores to an LSN need it)."""
    catalog, archive = await asyncio.gather(
        build_catalog(regions, keyring, ref.prefix), list_archive(regions, ref)
    )
    bases, unusable = base_backups(catalog.for_source(ref))
    windows = []
    partial_lsn: dict[str, int | None] = {}
    for base in bases:
        chain = follow(archive, base.system_id, base.end_segment, base.segment_size)
        window = Window(base, chain)
        if chain.ends_partial and read_partial_lsn:
            newest = chain.segments[-1][1].newest
            if newest.key not in partial_lsn:
                partial_lsn[newest.key] = await _covered_lsn(
                    regions, keyring, chain.segments[-1][1]
                )
            window.partial_lsn = partial_lsn[newest.key]
        windows.append(window)
    errors = {**catalog.region_errors, **archive.region_errors}
    return Windows(ref, windows, archive, unusable, errors)


async def _covered_lsn(
    regions: Sequence[Storage], keyring: crypto.Keyring, entry: WalFile
) -> int | None:
    newest = entry.newest
    by_name = {r.name: r for r in regions}
    for region in entry.regions_with(newest.key):
        try:
            raw = await by_name[region].get(newest.key)
            opened = await asyncio.to_thread(open_object, keyring, raw, newest, region)
        except (IntegrityError, StorageError):
            continue
        lsn = opened.public.get("covered_lsn")
        return int(lsn) if isinstance(lsn, int) else None
    return None


# --------------------------------------------------------------------------------------------
# Choosing what to restore


TargetKind = Literal["time", "lsn", "latest", "base"]


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    time: datetime | None = None
    lsn: int | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time is not None:
            return f"time {format_when(self.time)}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        return "the end of the archive" if self.kind == "latest" else "the end of the base backup"


def choose(windows: Windows, target: Target, backup_id: str | None = None) -> Window:
    """The window to restore from: the newest base backup whose window holds the target."""
    candidates = [w for w in windows.windows if backup_id is None or w.base.backup_id == backup_id]
    if backup_id is not None and not candidates:
        why = windows.unusable.get(backup_id)
        raise BackupNotFound(
            f"no usable base backup {backup_id} of {windows.ref}" + (f": {why}" if why else "")
        )
    if not candidates:
        raise BackupNotFound(
            f"no usable base backup of {windows.ref} in any region"
            + _unusable_note(windows)
            + _errors_note(windows.region_errors)
        )
    fitting: list[Window]
    if target.kind == "time":
        assert target.time is not None
        t = target.time
        fitting = [w for w in candidates if w.start <= t <= w.end]
    elif target.kind == "lsn":
        assert target.lsn is not None
        lsn = target.lsn
        fitting = [w for w in candidates if w.base.end_lsn <= lsn <= w.end_lsn]
    elif target.kind == "latest":
        best = max(candidates, key=lambda w: (w.end, w.base.end_time))
        if best.chain.gap is not None and best.chain.after_gap:
            # Stopping at the gap would look like "everything", and is not.
            raise OutsideWindow(
                f"{windows.ref}: the archive has WAL after a gap: segment "
                f"{best.chain.gap.name(best.base.segment_size)} is missing in every region, so "
                f"the end of the archive cannot be reached; the window before the gap is "
                f"{best.describe()}: restore --at a time inside it"
                f"{_errors_note(windows.region_errors)}"
            )
        fitting = [best]
    else:
        fitting = candidates[-1:]
    if not fitting:
        gaps = windows.gaps()
        gap_note = f"; the archive has a gap at {', '.join(gaps)}" if gaps else ""
        raise OutsideWindow(
            f"{windows.ref}: {target.describe()} is outside the recovery window: "
            f"{windows.describe()}{gap_note}{_errors_note(windows.region_errors)}"
        )
    return max(fitting, key=lambda w: w.base.end_time)


def _unusable_note(windows: Windows) -> str:
    if not windows.unusable:
        return ""
    return " (unusable: " + "; ".join(f"{b}: {why}" for b, why in windows.unusable.items()) + ")"


def _errors_note(errors: Mapping[str, str]) -> str:
    if not errors:
        return ""
    return " (unreachable: " + "; ".join(f"{r}: {e}" for r, e in errors.items()) + ")"


def pg_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def recovery_settings(window: Window, target: Target, restore_command: str) -> dict[str, str]:
    settings = {"restore_command": restore_command}
    if target.kind == "time" and target.time is not None:
        settings["recovery_target_time"] = pg_time(target.time)
    elif target.kind == "lsn" and target.lsn is not None:
        settings["recovery_target_lsn"] = format_lsn(target.lsn)
    settings["recovery_target_action"] = "promote"
    # The copy must never archive into the source's archive (or anywhere) by itself.
    settings["archive_mode"] = "off"
    return settings


def expect_for(window: Window) -> Expect:
    end = window.chain.end or window.base.end_segment
    return Expect(window.base.end_segment, end)


def fetch_command(argv: Sequence[str], window: Window) -> str:
    """restore_command: `argv` (the stand-alone `drd ... wal-fetch PLAN/SOURCE ...`) for this
    window's system and expected segments; PostgreSQL fills in %f and %p."""
    size = window.base.segment_size
    extra = [
        "--system-id",
        window.base.system_id,
        "--segment-size",
        str(size),
        "--expect",
        expect_for(window).text(size),
    ]
    return shlex.join([*argv, *extra]) + " %f %p"


# --------------------------------------------------------------------------------------------
# Restoring to a point


@dataclass
class PitrResult:
    ref: SourceRef
    target: Target
    window: Window
    datadir: Path
    restore: RestoreResult
    recovery: RecoveryOutcome | None = None
    #: recovery ran to the end of the WAL: the archive holds nothing after the target
    ended_at_archive_end: bool = False
    wal_fetched: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        rec = self.recovery
        return {
            "source": str(self.ref),
            "target": self.target.describe(),
            "base_backup": self.window.base.backup_id,
            "window": self.window.as_json(),
            "data_directory": str(self.datadir),
            "region": self.restore.region,
            "started": rec is not None,
            "promoted": rec.promoted if rec else None,
            "stop": rec.stop_message if rec else None,
            "last_transaction": rec.last_transaction.isoformat()
            if rec and rec.last_transaction
            else None,
            "ended_at_archive_end": self.ended_at_archive_end,
            "wal_fetched": self.wal_fetched,
            "seconds": round(self.seconds, 3),
        }


async def restore_to_point(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    datadir: Path,
    target: Target,
    *,
    fetch_argv: Sequence[str],
    backup_id: str | None = None,
    start: bool = False,
    user: str | None = None,
    port: int | None = None,
    server_options: str = "",
    prefer_region: str | None = None,
    limit: float = 3600.0,
    socket_dir: Path | None = None,
    drd_argv: Sequence[str] | None = None,
) -> PitrResult:
    """Restore `ref` to `target` into the new data directory `datadir` (module docstring)."""
    began = time.monotonic()
    datadir = _new_directory(datadir)
    windows = await recovery_windows(ref, regions, keyring, read_partial_lsn=target.kind == "lsn")
    window = choose(windows, target, backup_id)
    run_as = run_as_user(user)
    bin_dir = await bin_dir_for(int(window.base.metadata["server_version_num"]) // 10000)
    standalone = fetch_command(fetch_argv, window)
    recovery: dict[str, str] | None = None
    if target.kind != "base":
        recovery = recovery_settings(window, target, standalone)
    server: WalServer | None = None
    if start and recovery is not None:
        server = WalServer(
            WalFetcher(
                ref,
                regions,
                keyring,
                window.base.system_id,
                segment_size=window.base.segment_size,
                expect=expect_for(window),
                prefer_region=prefer_region,
            ),
            socket_dir or datadir.parent,
            run_as,
            drd_argv,
        )
        await server.start()
        recovery["restore_command"] = server.restore_command()
    try:
        restored = await restore_backup(
            ref,
            regions,
            keyring,
            str(datadir),
            backup_id=window.base.backup_id,
            prefer_region=prefer_region,
            options={"recovery": recovery, "user": user},
        )
        result = PitrResult(ref, target, window, datadir, restored)
        if start:
            options = server_options + (f" -p {port}" if port is not None else "")
            outcome = await start_cluster(
                datadir,
                bin_dir=bin_dir,
                run_as=run_as,
                log_file=datadir / "drd-recovery.log",
                options=options.strip(),
                limit=limit,
            )
            if (
                outcome.target_not_reached
                and target.kind == "time"
                and outcome.stop_message is None
            ):
                # Recovery replayed every transaction in the archive without meeting one after
                # the target: the end of the archive is the state at the target.
                from drd.strategies.postgres_physical import remove_recovery_target

                log.info(
                    "%s: no transaction after %s in the archive: recovering to its end",
                    ref,
                    target.describe(),
                )
                remove_recovery_target(datadir)
                outcome = await start_cluster(
                    datadir,
                    bin_dir=bin_dir,
                    run_as=run_as,
                    log_file=datadir / "drd-recovery.log",
                    options=options.strip(),
                    limit=limit,
                )
                result.ended_at_archive_end = True
            result.recovery = outcome
            if not outcome.promoted:
                raise RestoreError(
                    f"recovery of {datadir} to {target.describe()} failed; the server said:\n"
                    f"{outcome.log_tail}"
                )
    finally:
        if server is not None:
            result_fetched = server.fetcher.fetched
            await server.close()
            if recovery is not None:
                _rewrite_restore_command(datadir, standalone)
        else:
            result_fetched = 0
    result.wal_fetched = result_fetched
    result.seconds = time.monotonic() - began
    return result


def _new_directory(datadir: Path) -> Path:
    datadir = datadir.expanduser().absolute()
    if datadir.exists() or datadir.is_symlink():
        raise TargetExists(f"restore into data directory {datadir}: it already exists")
    return datadir


def _rewrite_restore_command(datadir: Path, command: str) -> None:
    from drd.strategies.postgres_physical import conf_quote

    auto = datadir / "postgresql.auto.conf"
    with contextlib.suppress(OSError):
        stat = auto.stat()
        lines = auto.read_text(encoding="utf-8").splitlines()
        lines = [
            f"restore_command = {conf_quote(command)}"
            if line.startswith("restore_command = ") and "--socket" in line
            else line
            for line in lines
        ]
        auto.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chown(auto, stat.st_uid, stat.st_gid)


# --------------------------------------------------------------------------------------------
# Serving WAL to a recovery drd started


def default_drd_argv() -> list[str]:
    """How the restored server's user runs drd: this very drd (its interpreter must be one that
    user can run; otherwise give `drd_argv`, e.g. ["/usr/bin/drd"])."""
    import sys

    return [sys.executable, "-m", "drd.cli.main"]


class WalServer:
    """A Unix socket the restored server's restore_command (`drd wal-fetch --socket`) asks for
    WAL files. One request per connection: the client sends the file name and a newline; the
    answer is `OK <size>\\n` and the bytes, `MISSING <why>\\n` or `FATAL <why>\\n`."""

    def __init__(
        self,
        fetcher: WalFetcher,
        directory: Path,
        run_as: str | None,
        drd_argv: Sequence[str] | None = None,
    ) -> None:
        import secrets

        self.fetcher = fetcher
        self.drd_argv = list(drd_argv or default_drd_argv())
        self.path = directory / f".drd-wal-{secrets.token_hex(4)}.sock"
        self.run_as = run_as
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)
        if self.run_as is not None:
            import pwd

            account = pwd.getpwnam(self.run_as)
            os.chown(self.path, account.pw_uid, account.pw_gid)

    def restore_command(self) -> str:
        argv = [*self.drd_argv, "wal-fetch", "--socket", str(self.path)]
        return shlex.join(argv) + " %f %p"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
            name = line.decode("ascii", "replace").strip()
            try:
                fetched = await self.fetcher.fetch(name)
            except WalNotFound as exc:
                writer.write(f"MISSING {exc}\n".encode())
            except (WalFetchFailed, DrdError) as exc:
                writer.write(f"FATAL {exc}\n".replace("\n", " ").strip().encode() + b"\n")
            else:
                writer.write(f"OK {len(fetched.data)}\n".encode())
                writer.write(fetched.data)
            await writer.drain()
        except Exception as exc:  # one bad request must not stop the recovery's others
            log.warning("WAL request failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()
