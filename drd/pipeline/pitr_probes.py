"""Probes of physical PostgreSQL sources: what a source held at a known point, recorded while
its WAL is archived, so that a restore test can recover to that point and compare.

A probe is one short REPEATABLE READ transaction on the source:

    SELECT pg_current_wal_lsn(), clock_timestamp(), txid_current()   -- the snapshot, the point
    SELECT count(*) FROM <each table of restore_test.pitr_probe>     -- in that snapshot
    <each probe query and matches_source check query>                -- in that snapshot
    COMMIT

The snapshot is taken as the first statement starts and the LSN read within it, so what the
counts see is what a recovery to that LSN replays (a transaction that commits in the
microseconds between the two would be replayed without being counted: a probe of tables that
are written continuously can, rarely, disagree by such a transaction). `txid_current()` gives
the probe transaction an xid, so its commit writes a WAL record after the LSN: recovery to the
LSN always finds a record to stop at, even on a server that writes nothing else.

Probes are kept in the state directory (`pitr-probes/<plan>/<source>.json`, 0600: they hold
the queries' results, which are source data), newest last, at most `keep` of them and none
older than the plan's max_age (nothing can be restored to a point older than that).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drd.layout import SourceRef
from drd.restore_tests.spec import CheckSpec, PitrProbeSpec, capture_key, capture_queries
from drd.strategies.postgres_wal import format_lsn, parse_lsn

PROBES_DIR = "pitr-probes"
FORMAT = 1


@dataclass(frozen=True)
class Probe:
    """The source at one point: its clock and WAL position, and what it held then."""

    #: the source's clock (recovery targets are compared with its commit times)
    time: datetime
    lsn: int
    timeline: int
    system_identifier: str
    #: table -> row count
    counts: dict[str, int] = field(default_factory=dict)
    #: capture_key(query) -> {"query", "value"} or {"query", "error"}
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the cluster's bootstrap superuser (what a restored copy is read as)
    superuser: str = "postgres"
    #: the database the counts and queries were read in
    database: str = "postgres"

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "lsn": format_lsn(self.lsn),
            "timeline": self.timeline,
            "system_identifier": self.system_identifier,
            "counts": dict(self.counts),
            "results": {k: dict(v) for k, v in self.results.items()},
            "superuser": self.superuser,
            "database": self.database,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Probe:
        return cls(
            time=datetime.fromisoformat(str(data["time"])).astimezone(UTC),
            lsn=parse_lsn(str(data["lsn"])),
            timeline=int(data["timeline"]),
            system_identifier=str(data["system_identifier"]),
            counts={str(k): int(v) for k, v in dict(data.get("counts", {})).items()},
            results={str(k): dict(v) for k, v in dict(data.get("results", {})).items()},
            superuser=str(data.get("superuser", "postgres")),
            database=str(data.get("database", "postgres")),
        )

    def describe(self) -> str:
        return f"probe at {self.time.isoformat()} (LSN {format_lsn(self.lsn)})"


def probe_queries(spec: PitrProbeSpec, checks: Sequence[CheckSpec]) -> dict[str, str]:
    """capture key -> query: the probe's own queries and the source's matches_source checks."""
    out = {capture_key(q): q for q in spec.queries}
    out.update(capture_queries(list(checks)))
    return out


def quote_table(name: str) -> str:
    """`schema.name` as an SQL identifier (each part quoted: names are taken as written)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


async def take_probe(db: Any, tables: Sequence[str], queries: Mapping[str, str]) -> Probe:
    """One probe over an open psycopg AsyncConnection (autocommit off or on: the probe is its
    own transaction)."""
    from drd.strategies.postgres_stats import capture

    async with db.transaction():
        await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = await db.execute(
            "SELECT pg_catalog.pg_current_wal_lsn()::text, clock_timestamp(), "
            "pg_catalog.txid_current(), "
            "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()), "
            "(SELECT system_identifier FROM pg_catalog.pg_control_system())::text, "
            "(SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 10), "
            "pg_catalog.current_database()"
        )
        row = await cur.fetchone()
        assert row is not None
        lsn, now, _xid, timeline, sysid, superuser, database = row
        counts: dict[str, int] = {}
        for table in tables:
            cur = await db.execute(f"SELECT count(*) FROM {quote_table(table)}")
            got = await cur.fetchone()
            assert got is not None
            counts[table] = int(got[0])
        captured = await capture(db, queries)
    results = {
        key: {"query": queries[key], **value} for key, value in captured.items() if key in queries
    }
    return Probe(
        time=now.astimezone(UTC),
        lsn=parse_lsn(lsn),
        timeline=int(timeline),
        system_identifier=str(sysid),
        counts=counts,
        results=results,
        superuser=str(superuser),
        database=str(database),
    )


class ProbeStore:
    """The probes of one source in the state directory (module docstring)."""

    def __init__(self, state_dir: Path, ref: SourceRef) -> None:
        self.ref = ref
        self.path = state_dir / PROBES_DIR / ref.plan / f"{ref.source}.json"

    def load(self) -> list[Probe]:
        """The probes, oldest first; none if the file is missing or unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return []
        probes = []
        for item in data.get("probes", []):
            try:
                probes.append(Probe.from_json(item))
            except (KeyError, TypeError, ValueError):
                continue  # one damaged entry does not lose the others
        return sorted(probes, key=lambda p: p.time)

    def add(self, probe: Probe, *, keep: int, now: datetime, max_age: timedelta) -> list[Probe]:
        """Append `probe`; drop those past `max_age` at `now` and all but the newest `keep`."""
        probes = [p for p in self.load() if now - p.time <= max_age]
        probes.append(probe)
        probes.sort(key=lambda p: p.time)
        probes = probes[-keep:]
        self.write(probes)
        return probes

    def write(self, probes: Sequence[Probe]) -> None:
        """Keep exactly `probes` (atomically: a crash leaves the old file or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps({"format": FORMAT, "probes": [p.as_json() for p in probes]}, indent=1)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path)


@dataclass(frozen=True)
class Span:
    """A stretch of time and LSNs a recovery can reach (one base backup's window)."""

    start: datetime
    end: datetime
    start_lsn: int
    end_lsn: int
    system_identifier: str


def inside(probe: Probe, spans: Sequence[Span]) -> bool:
    return any(
        s.system_identifier == probe.system_identifier
        and s.start <= probe.time <= s.end
        and s.start_lsn <= probe.lsn <= s.end_lsn
        for s in spans
    )


def choose_probe(
    probes: Sequence[Probe],
    spans: Sequence[Span],
    *,
    newest: bool = False,
    rng: random.Random | None = None,
) -> tuple[Probe | None, int]:
    """A probe inside the recovery window (any of `spans`), at random (`rng`; seed it to
    repeat a choice), or the newest one; and how many probes were eligible."""
    eligible = [p for p in probes if inside(p, spans)]
    if not eligible:
        return None, 0
    if newest:
        return max(eligible, key=lambda p: p.time), len(eligible)
    return (rng or random.SystemRandom()).choice(eligible), len(eligible)
