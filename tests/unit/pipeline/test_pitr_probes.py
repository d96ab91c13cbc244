"""Point-in-time probes (drd.pipeline.pitr_probes): what is kept in the state directory, with an
injected clock, and which probe a restore test chooses inside the recovery window."""

from __future__ import annotations

import random
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drd.layout import SourceRef
from drd.pipeline.pitr_probes import Probe, ProbeStore, Span, choose_probe, probe_queries
from drd.restore_tests.spec import CheckSpec, PitrProbeSpec, capture_key

REF = SourceRef("billing", "db")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SYSID = "7311"


def probe(minutes: int, lsn: int | None = None, sysid: str = SYSID) -> Probe:
    return Probe(
        time=T0 + timedelta(minutes=minutes),
        lsn=lsn if lsn is not None else 0x1000000 + minutes * 0x100,
        timeline=1,
        system_identifier=sysid,
        counts={"t": minutes},
        results={"q-1": {"query": "SELECT 1", "value": minutes}},
    )


def test_probes_round_trip_through_a_private_file(tmp_path: Path) -> None:
    store = ProbeStore(tmp_path, REF)
    first = probe(0)
    store.add(first, keep=10, now=first.time, max_age=timedelta(days=14))
    assert store.load() == [first]
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode == 0o600, oct(mode)  # the results are the source's data


def test_the_oldest_go_beyond_keep_and_past_max_age(tmp_path: Path) -> None:
    store = ProbeStore(tmp_path, REF)
    for minutes in range(5):
        store.add(
            probe(minutes), keep=3, now=T0 + timedelta(minutes=minutes), max_age=timedelta(days=1)
        )
    assert [p.counts["t"] for p in store.load()] == [2, 3, 4]
    # A day and four minutes later: 3 is past max_age, 4 is exactly at it and stays.
    later = probe(60 * 24 + 4)
    store.add(later, keep=3, now=later.time, max_age=timedelta(days=1))
    assert [p.counts["t"] for p in store.load()] == [4, 60 * 24 + 4]


def test_a_damaged_file_or_entry_loses_nothing_else(tmp_path: Path) -> None:
    store = ProbeStore(tmp_path, REF)
    store.add(probe(1), keep=10, now=T0, max_age=timedelta(days=1))
    text = store.path.read_text()
    store.path.write_text(text.replace('"lsn": "0/', '"lsn": "not an lsn', 1))
    assert store.load() == []
    store.add(probe(2), keep=10, now=T0, max_age=timedelta(days=1))
    assert [p.counts["t"] for p in store.load()] == [2]
    store.path.write_text("{")
    assert store.load() == []


def test_only_probes_inside_the_window_are_chosen() -> None:
    probes = [probe(m) for m in range(10)] + [probe(5, sysid="other")]
    window = Span(
        T0 + timedelta(minutes=3),
        T0 + timedelta(minutes=6),
        probes[3].lsn,
        probes[6].lsn,
        SYSID,
    )
    seen = set()
    for seed in range(50):
        chosen, eligible = choose_probe(probes, [window], rng=random.Random(seed))
        assert chosen is not None and eligible == 4
        assert chosen.system_identifier == SYSID
        seen.add(chosen.counts["t"])
    assert seen == {3, 4, 5, 6}  # at random: every eligible one gets its turn


def test_a_probe_past_the_archived_lsn_is_not_chosen() -> None:
    late = probe(5, lsn=0x9000000)
    window = Span(T0, T0 + timedelta(hours=1), 0, 0x2000000, SYSID)
    assert choose_probe([late], [window]) == (None, 0)


def test_the_same_seed_chooses_the_same_probe() -> None:
    probes = [probe(m) for m in range(20)]
    window = Span(T0, T0 + timedelta(hours=1), 0, 1 << 40, SYSID)
    picks = {choose_probe(probes, [window], rng=random.Random(42))[0].lsn for _ in range(5)}  # type: ignore[union-attr]
    assert len(picks) == 1


def test_a_drill_takes_the_newest_probe_in_the_window() -> None:
    probes = [probe(m) for m in range(10)]
    window = Span(T0, T0 + timedelta(minutes=7), 0, 1 << 40, SYSID)
    chosen, eligible = choose_probe(probes, [window], newest=True)
    assert chosen is not None and chosen.counts["t"] == 7 and eligible == 8


def test_probe_queries_add_the_matches_source_checks() -> None:
    spec = PitrProbeSpec(queries=["SELECT count(*) FROM a"])
    checks = [
        CheckSpec(sql="SELECT sum(x) FROM b", expect={"matches_source": True}),
        CheckSpec(sql="SELECT 1", expect={"equals": 1}),
    ]
    assert probe_queries(spec, checks) == {
        capture_key("SELECT count(*) FROM a"): "SELECT count(*) FROM a",
        capture_key("SELECT sum(x) FROM b"): "SELECT sum(x) FROM b",
    }
