"""The local spool of one physical source's WAL, and shipping it to the plan's regions.

pg_receivewal writes into `state_dir/wal-spool/<plan>/<source>/` (mode 0700): completed
segments under their names, the segment it is receiving as `<name>.partial`, and timeline
history files. Each round of `Shipper.ship()`:

- stores every completed segment and history file, oldest first, through
  drd.pipeline.pitr.push_wal (sealed, bound to its key, written to the regions that do not hold
  it yet). One that fewer than `min_copies` regions took stops the round: later WAL is never
  counted before earlier WAL, and the file stays in the spool for the next round. Once
  `min_copies` regions hold a file it leaves the spool (regions that missed it get it from the
  others: drd.daemon.wal_catchup), except the newest completed segment, which stays as the
  marker pg_receivewal resumes after when it is restarted.
- stores the `.partial` segment, as a new object each time, when it changed and `partial_every`
  passed since it was last stored: that bounds what a disaster loses under steady writes to
  about `partial_every` plus one round (the RPO bound the README states).

Shipping twice is harmless: a segment a region holds is not written again (after a kill
between storing and removing it from the spool, the next round finds it held), and a partial
is superseded by the next one or by its completed segment.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drd import crypto
from drd.errors import NotEnoughCopies
from drd.layout import SourceRef
from drd.pipeline.pitr import PushResult, push_wal
from drd.repository.wal import kind_of
from drd.storage.base import Storage
from drd.strategies.postgres_wal import (
    PARTIAL_SUFFIX,
    SegmentHeader,
    check_segment,
    history_timeline,
    parse_segment_name,
    read_segment_header,
)

log = logging.getLogger(__name__)

#: the spool's memory of the resume marker it already shipped
MARKER_FILE = ".drd-shipped"


def spool_dir(state_dir: Path, ref: SourceRef) -> Path:
    """The source's spool, created 0700 (with its parents) if missing."""
    path = state_dir / "wal-spool" / ref.plan / ref.source
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for part in (state_dir / "wal-spool", path.parent, path):
        part.mkdir(mode=0o700, exist_ok=True)
        part.chmod(0o700)
    return path


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    name: str
    kind: str  # "segment" | "partial" | "history"
    mtime_ns: int
    size: int

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)


def scan(spool: Path) -> list[SpoolFile]:
    """The WAL files in the spool: histories first, then segments in WAL order, the partial
    last; anything else (pg_receivewal's temporary files) is left alone."""
    found = []
    with os.scandir(spool) as entries:
        for entry in entries:
            kind = kind_of(entry.name)
            if kind is None or not entry.is_file(follow_symlinks=False):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed by pg_receivewal meanwhile
                continue
            found.append(SpoolFile(Path(entry.path), entry.name, kind, st.st_mtime_ns, st.st_size))
    order = {"history": 0, "segment": 1, "partial": 2}
    return sorted(found, key=lambda f: (order[f.kind], f.name[8:24], f.name[:8]))


@dataclass
class Archived:
    """The newest WAL stored in min_copies regions."""

    name: str
    through: datetime
    #: all WAL up to this position is stored
    lsn: int


@dataclass
class Shipper:
    """Ships one source's spool (module docstring)."""

    ref: SourceRef
    spool: Path
    regions: list[Storage]
    keyring: crypto.Keyring
    min_copies: int
    partial_every: timedelta
    #: the cluster's, from the newest segment header seen
    system_id: str | None = None
    segment_size: int | None = None
    archived: Archived | None = None
    #: a region that failed a write since the last catch-up (it has WAL to get)
    regions_behind: set[str] = field(default_factory=set)
    #: regions whose last write failed (their failure was logged)
    regions_down: set[str] = field(default_factory=set)
    #: when the partial was last stored, and the version (mtime) stored
    partial_shipped_at: datetime | None = None
    partial_version: tuple[str, int] | None = None
    #: why the last round stopped (logged once per new reason); None: it did not
    problem: str | None = None
    shipped: int = 0

    def _remember_header(self, header: SegmentHeader) -> None:
        self.system_id = str(header.system_identifier)
        self.segment_size = header.segment_size

    def _marker(self) -> str | None:
        try:
            name = (self.spool / MARKER_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return name if kind_of(name) == "segment" else None

    def _set_marker(self, name: str) -> None:
        temp = self.spool / f"{MARKER_FILE}.tmp"
        temp.write_text(name + "\n")
        os.replace(temp, self.spool / MARKER_FILE)

    async def ship(
        self, now: datetime, *, covered_lsn: int | None = None, covered_at: datetime | None = None
    ) -> int:
        """One round; returns how many files reached min_copies. `covered_lsn`: a position the
        receiver had flushed (the server's slot), seen at `covered_at` (this host's clock)
        before this round: the partial holds at least that much."""
        files = scan(self.spool)
        segments = [f for f in files if f.kind == "segment"]
        newest_segment = segments[-1].name if segments else None
        marker = self._marker()
        stored = 0
        for f in files:
            if f.kind == "partial":
                continue
            if f.name == marker:
                continue
            try:
                result = await self._push(f)
            except NotEnoughCopies as exc:
                self._trouble(str(exc))
                return stored
            except FileNotFoundError:
                continue
            except ValueError as exc:
                # Not WAL drd can ship (a foreign file, a damaged header): it stays, and says so.
                self._trouble(f"{f.name} in {self.spool}: {exc}")
                return stored
            if result is None:  # a history before any segment told the system id
                continue
            stored += 1
            if f.kind == "segment" and f.name == newest_segment:
                self._set_marker(f.name)
                if marker is not None:
                    (self.spool / marker).unlink(missing_ok=True)
                marker = f.name
            else:
                f.path.unlink(missing_ok=True)
        partials = [f for f in files if f.kind == "partial"]
        for old in partials[:-1]:
            # A timeline's last segment stays `.partial` when the server switched timelines:
            # it is stored once, then leaves the spool.
            try:
                if await self._push(old) is not None:
                    stored += 1
                    old.path.unlink(missing_ok=True)
            except NotEnoughCopies as exc:
                self._trouble(str(exc))
                return stored
            except (FileNotFoundError, ValueError):
                continue
        partial = partials[-1] if partials else None
        if partial is not None and self.partial_version == (partial.name, partial.mtime_ns):
            self._note_covered(partial, covered_lsn, covered_at)
        elif partial is not None and self._partial_due(partial, now):
            try:
                if await self._push(partial, covered_lsn=covered_lsn) is not None:
                    stored += 1
                    self.partial_shipped_at = now
                    self.partial_version = (partial.name, partial.mtime_ns)
            except NotEnoughCopies as exc:
                self._trouble(str(exc))
                return stored
            except FileNotFoundError:
                pass  # completed meanwhile: the next round ships the segment
            except ValueError as exc:
                self._trouble(f"{partial.name} in {self.spool}: {exc}")
                return stored
        if self.problem is not None:
            log.info("%s: WAL shipping works again", self.ref)
            self.problem = None
        return stored

    def _note_covered(self, partial: SpoolFile, lsn: int | None, seen_at: datetime | None) -> None:
        """The stored partial is the file as it is now: a flush position seen after its last
        write is in it too (an idle server's archive is then complete, lag 0)."""
        archived, size = self.archived, self.segment_size
        if lsn is None or seen_at is None or archived is None or size is None:
            return
        if seen_at <= partial.mtime or archived.name != partial.name:
            return
        segment = parse_segment_name(partial.name[: -len(PARTIAL_SUFFIX)], size)
        if segment.start_lsn(size) <= lsn <= segment.end_lsn(size) and lsn > archived.lsn:
            self.archived = Archived(archived.name, archived.through, lsn)

    def _partial_due(self, partial: SpoolFile, now: datetime) -> bool:
        if self.partial_version == (partial.name, partial.mtime_ns):
            return False  # unchanged since it was stored
        if self.partial_version is not None and self.partial_version[0] != partial.name:
            return True  # a new segment began: its first WAL is not stored anywhere yet
        last = self.partial_shipped_at
        return last is None or now - last >= self.partial_every

    def _trouble(self, why: str) -> None:
        if why != self.problem:
            log.error("%s: WAL not archived: %s", self.ref, why)
        self.problem = why

    async def _push(self, f: SpoolFile, *, covered_lsn: int | None = None) -> PushResult | None:
        data = f.path.read_bytes()
        if f.kind == "history":
            if self.system_id is None:
                self._learn_system()
            if self.system_id is None:
                return None
            system_id: str = self.system_id
            timeline, size = history_timeline(f.name), 0
        else:
            header = (
                check_segment(data, f.name) if f.kind == "segment" else read_segment_header(data)
            )
            self._remember_header(header)
            timeline, size = header.timeline, header.segment_size
            system_id = str(header.system_identifier)
        covered = None
        if f.kind == "partial" and covered_lsn is not None:
            segment = parse_segment_name(f.name[: -len(PARTIAL_SUFFIX)], size)
            if segment.start_lsn(size) <= covered_lsn <= segment.end_lsn(size):
                covered = covered_lsn
        result = await push_wal(
            self.ref,
            self.regions,
            self.keyring,
            system_id=system_id,
            name=f.name,
            data=data,
            through=f.mtime,
            timeline=timeline,
            segment_size=size,
            min_copies=self.min_copies,
            covered_lsn=covered,
            archived_by="pg_receivewal",
        )
        self.regions_behind.update(result.failed)
        for region, why in result.failed.items():
            if region not in self.regions_down:  # once per outage, not once per file
                log.warning("%s: WAL %s not stored in region %s: %s", self.ref, f.name, region, why)
                self.regions_down.add(region)
        for region in set(result.holding) & self.regions_down:
            log.info("%s: region %s stores WAL again", self.ref, region)
            self.regions_down.discard(region)
        self.shipped += 1
        if f.kind != "history":
            segment = parse_segment_name(f.name[:24], size)
            lsn = segment.end_lsn(size) if f.kind == "segment" else covered
            if lsn is None:
                lsn = segment.start_lsn(size)
            if self.archived is None or lsn >= self.archived.lsn:
                self.archived = Archived(f.name, f.mtime, lsn)
        return result

    def _learn_system(self) -> None:
        """The system id from a segment in the spool (a history file does not carry it)."""
        for f in scan(self.spool):
            if f.kind == "history":
                continue
            try:
                with open(f.path, "rb") as handle:
                    self._remember_header(read_segment_header(handle.read(64)))
                return
            except (OSError, ValueError):
                continue
