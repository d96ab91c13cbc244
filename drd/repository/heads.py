"""What drd remembers of each source's newest backup, so that a region that goes back in time
is noticed (drd.retention.integrity).

Two records, kept for the same facts:
- in every region, a sealed per-source record, `_heads/<plan>/<source>.json` (a version 2
  sealed document, bound to that key): the newest backup committed, when, and in which
  regions. It is written after every backup. Another region's record survives the loss of
  this host's state, and a region cannot forge one (it has no key); it can only replay an old
  one of its own, which another region's newer record then contradicts.
- in the state directory, `integrity/<plan>.<source>.json`: the newest backup drd committed,
  and, per region, the newest backup it has seen verified there (its high-water mark).

Neither is ever a reason to delete anything; both only raise findings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drd import crypto
from drd.errors import DrdError, IntegrityError, ObjectNotFound
from drd.layout import SourceRef, backup_id_time, is_backup_id
from drd.storage.base import Storage

log = logging.getLogger(__name__)

HEADS_PREFIX = "_heads"
DOCUMENT = "drd-source-head"
HEAD_FORMAT = "drd-head-1"


def head_key(ref: SourceRef) -> str:
    return f"{HEADS_PREFIX}/{ref.plan}/{ref.source}.json"


@dataclass(frozen=True, order=True)
class Mark:
    """A backup as a point in time: ordered by capture time, then id."""

    captured: datetime
    backup_id: str

    @classmethod
    def of(cls, backup_id: str, captured: datetime | None = None) -> Mark:
        return cls(captured or backup_id_time(backup_id), backup_id)

    def as_json(self) -> dict[str, str]:
        return {"backup_id": self.backup_id, "captured_at": self.captured.isoformat()}

    @classmethod
    def from_json(cls, raw: Any) -> Mark:
        if not isinstance(raw, dict) or not is_backup_id(str(raw.get("backup_id"))):
            raise ValueError("not a backup mark")
        return cls(datetime.fromisoformat(str(raw["captured_at"])), str(raw["backup_id"]))


@dataclass(frozen=True)
class Head:
    """A verified per-source record read from a region."""

    region: str
    newest: Mark
    #: the regions the newest backup was committed in
    regions: tuple[str, ...]
    committed_at: datetime


async def write_head(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: crypto.Keyring,
    newest: Mark,
    committed_in: Sequence[str],
    committed_at: datetime,
) -> list[str]:
    """Write the record to every region in `regions` (best effort: logged); where it landed.
    Called after a backup, holding its source's lock. One write per backup: far below the one
    write per second GCS allows per object name."""
    key = head_key(ref)
    public = {
        "document": DOCUMENT,
        "format": HEAD_FORMAT,
        "plan": ref.plan,
        "source": ref.source,
        **newest.as_json(),
        "regions": sorted(committed_in),
        "committed_at": committed_at.isoformat(),
    }
    sealed = crypto.seal_manifest(keyring, public, {}, location=key)
    written = []
    for storage in regions:
        try:
            await storage.put(key, sealed)
        except DrdError as exc:
            log.warning(
                "region %s: the record of %s's newest backup not written: %s",
                storage.name,
                ref,
                exc,
            )
            continue
        written.append(storage.name)
    return written


async def read_heads(
    ref: SourceRef, regions: Sequence[Storage], keyring: crypto.Keyring
) -> tuple[list[Head], dict[str, str]]:
    """The verified records of `ref` in `regions`, and region -> why its record is unusable
    (missing records are neither: a source without a backup yet, or drd before records)."""
    key = head_key(ref)
    heads: list[Head] = []
    problems: dict[str, str] = {}
    for storage in regions:
        try:
            raw = await storage.get(key)
        except ObjectNotFound:
            continue
        except DrdError as exc:
            problems[storage.name] = f"unreadable: {exc}"
            continue
        try:
            public, _ = crypto.open_manifest(keyring, raw, location=key)
            if (public.get("document"), public.get("plan"), public.get("source")) != (
                DOCUMENT,
                ref.plan,
                ref.source,
            ):
                raise IntegrityError("not this source's record")
            heads.append(
                Head(
                    storage.name,
                    Mark.from_json(public),
                    tuple(str(r) for r in public.get("regions") or ()),
                    datetime.fromisoformat(str(public["committed_at"])),
                )
            )
        except (DrdError, ValueError, KeyError, TypeError) as exc:
            problems[storage.name] = f"{storage.name}:{key}: {exc}"
    return heads, problems


@dataclass
class SourceMemory:
    """This host's record of one source (see the module docstring)."""

    #: the newest backup drd committed
    committed: Mark | None = None
    #: region -> the newest backup drd saw verified (or committed) there
    seen: dict[str, Mark] = field(default_factory=dict)


class HeadMemory:
    """`state_dir/integrity/<plan>.<source>.json`, read and written under a file lock (the
    daemon's loops and a `drd backup` may update one source at the same time)."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "integrity"

    def _path(self, ref: SourceRef) -> Path:
        return self.directory / f"{ref.plan}.{ref.source}.json"

    def read(self, ref: SourceRef) -> SourceMemory:
        with self._locked(ref) as path:
            return _load(path)

    def update(self, ref: SourceRef, change: Callable[[SourceMemory], None]) -> SourceMemory:
        with self._locked(ref) as path:
            memory = _load(path)
            change(memory)
            _save(path, memory)
            return memory

    def record_commit(self, ref: SourceRef, newest: Mark, regions: Sequence[str]) -> None:
        def change(memory: SourceMemory) -> None:
            if memory.committed is None or newest > memory.committed:
                memory.committed = newest
            for region in regions:
                if region not in memory.seen or newest > memory.seen[region]:
                    memory.seen[region] = newest

        self.update(ref, change)

    @contextlib.contextmanager
    def _locked(self, ref: SourceRef) -> Iterator[Path]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(ref)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)


def _load(path: Path) -> SourceMemory:
    try:
        raw = json.loads(path.read_text())
        committed = raw.get("committed")
        return SourceMemory(
            Mark.from_json(committed) if committed else None,
            {str(k): Mark.from_json(v) for k, v in (raw.get("seen") or {}).items()},
        )
    except FileNotFoundError:
        return SourceMemory()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # Losing it costs detection of a rollback only until the regions' records are read.
        log.warning("integrity state %s unreadable, starting afresh: %s", path, exc)
        return SourceMemory()


def _save(path: Path, memory: SourceMemory) -> None:
    data: Mapping[str, Any] = {
        "committed": memory.committed.as_json() if memory.committed else None,
        "seen": {region: mark.as_json() for region, mark in sorted(memory.seen.items())},
    }
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temp, path)
