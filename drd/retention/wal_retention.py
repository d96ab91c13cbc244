"""Which archived WAL of a physical PostgreSQL source retention destroys, as a pure function.

WAL exists to carry a base backup forward in time; once no kept base backup can use it, it is
only data waiting to outlive the 14-day promise. In every region, a WAL object (segment,
partial segment or timeline history) is destroyed when

- it reached that region's destroy age (its age is that of its `through` stamp: the newest
  WAL it holds was written by then), whatever it is for: nothing outlives max_age; or
- it lies before the start segment of every base backup that region keeps (by segment number,
  on any timeline; a timeline history file before the oldest kept start's timeline); or
- it belongs to an earlier cluster of the source (another system id) that no kept base backup
  is of, and is older than the oldest kept base backup.

The cut is taken from a base backup's *start* (the redo point of its checkpoint), not its end:
the tar holds that WAL too, but a restore may ask the archive for it first, and a few segments
are cheap next to a backup that cannot become consistent. What a base backup is kept for is
judged with the region's own policy (its deletion lead), over every committed base backup any
region holds (repair copies them to the others). The cut is only made when every kept base
backup's start is known: one whose manifest cannot be read (no key, unverifiable) might be the
oldest, so its source's WAL is then kept until max_age.

Nothing here does I/O; drd.retention.sweep lists, reads the base backups and deletes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drd.repository.wal import WalKey
from drd.retention.policy import RetentionPolicy, human_age
from drd.strategies.postgres_wal import Segment, history_timeline, parse_segment_name


@dataclass(frozen=True)
class BaseStart:
    """A committed base backup of a physical source, as retention needs to know it."""

    backup_id: str
    captured: datetime
    #: None when its manifest could not be read (then neither can the rest)
    system_id: str | None = None
    segment_size: int | None = None
    start: Segment | None = None
    end: Segment | None = None
    #: the server's clock at the end of the backup: the earliest point it restores to
    end_time: datetime | None = None
    #: why its start is unknown
    unknown: str | None = None

    @property
    def known(self) -> bool:
        return self.start is not None and self.system_id is not None


@dataclass
class WalDecision:
    """One region's WAL of one source: key -> why it is destroyed; what is kept."""

    destroy: dict[str, str] = field(default_factory=dict)
    keep: list[WalKey] = field(default_factory=list)
    #: why WAL before the oldest kept base backup is not cut (None: it is)
    not_cut: str | None = None

    def next_expiry(self, policy: RetentionPolicy) -> datetime | None:
        return min((k.through + policy.destroy_age for k in self.keep), default=None)


def kept_bases(
    bases: Iterable[BaseStart], policy: RetentionPolicy, now: datetime
) -> list[BaseStart]:
    return [b for b in bases if now - b.captured < policy.destroy_age]


def _segment(key: WalKey, segment_size: int) -> Segment | None:
    try:
        return parse_segment_name(key.segment_name, segment_size)
    except ValueError:
        return None


def decide_wal(
    keys: Sequence[WalKey], bases: Sequence[BaseStart], policy: RetentionPolicy, now: datetime
) -> WalDecision:
    """Decide, for every WAL object one region holds of one source (module docstring)."""
    out = WalDecision()
    limit = policy.destroy_age
    kept = kept_bases(bases, policy, now)
    unknown = [b for b in kept if not b.known]
    if not kept:
        out.not_cut = "no base backup is kept: WAL stays until max_age"
    elif unknown:
        b = unknown[0]
        out.not_cut = (
            f"the start of base backup {b.backup_id} is unknown ({b.unknown or 'not read'}): "
            "WAL stays until max_age"
        )
    known = [] if out.not_cut else kept
    by_system: dict[str, list[BaseStart]] = {}
    for b in known:
        assert b.system_id is not None
        by_system.setdefault(b.system_id, []).append(b)
    oldest = min(known, key=lambda b: b.captured, default=None)
    for key in sorted(keys, key=lambda k: (k.system_id, k.name, k.through)):
        reason = None
        age = now - key.through
        if age >= limit:
            reason = f"WAL of age {human_age(age)}: reached the destroy age {human_age(limit)}"
        elif oldest is not None:
            reason = _before_bases(key, by_system.get(key.system_id, []), oldest)
        if reason is None:
            out.keep.append(key)
        else:
            out.destroy[key.key] = reason
    return out


def _before_bases(key: WalKey, system: list[BaseStart], oldest: BaseStart) -> str | None:
    if not system:
        if key.through < oldest.captured:
            return (
                f"WAL of an earlier cluster (system {key.system_id}), older than base backup "
                f"{oldest.backup_id}, the oldest kept"
            )
        return None
    first = min(system, key=lambda b: (b.start.segno if b.start else 0, b.captured))
    assert first.start is not None and first.segment_size is not None
    size = first.segment_size
    where = f"base backup {first.backup_id}'s start segment {first.start.name(size)}"
    if key.kind == "history":
        if history_timeline(key.name) < min(b.start.timeline for b in system if b.start):
            return f"timeline history before {where} (the oldest kept base backup's)"
        return None
    seg = _segment(key, size)
    if seg is not None and seg.segno < first.start.segno:
        return f"WAL before {where} (the oldest kept base backup's)"
    return None


def group_reasons(destroy: dict[str, str]) -> list[tuple[str, list[str]]]:
    """Reasons with the keys they apply to, for a report: WAL comes in thousands of files."""
    grouped: dict[str, list[str]] = {}
    for key, reason in sorted(destroy.items()):
        general = reason.split(": reached")[0] if reason.startswith("WAL of age") else reason
        label = "WAL that reached its destroy age" if general != reason else reason
        grouped.setdefault(label, []).append(key)
    return sorted(grouped.items())
