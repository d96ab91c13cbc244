"""The checks of a point-in-time restore test that need no server: whether recovery reached
the probe, and the RPO of the point reached."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drd.pipeline.pitr_probes import Probe
from drd.verify.pitr_restore_test import achieved, reached

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PROBE = Probe(time=AT, lsn=0x8002C8, timeline=1, system_identifier="1")


def test_recovery_past_the_probe_and_promoted_passes() -> None:
    check = reached(PROBE, 0x8002F0, in_recovery=False)
    assert check.status == "passed", check
    assert check.actual == "replayed to 0/8002F0, promoted"


def test_recovery_that_stopped_before_the_probe_fails_saying_where() -> None:
    check = reached(PROBE, 0x800100, in_recovery=False)
    assert check.fails_test
    assert "recovery stopped before the probe: replayed to 0/800100" in check.detail


def test_a_server_still_in_recovery_fails() -> None:
    assert reached(PROBE, 0x900000, in_recovery=True).fails_test
    assert reached(PROBE, None, in_recovery=False).fails_test


def test_the_rpo_is_the_probe_time_minus_the_last_transaction_replayed() -> None:
    point = achieved(PROBE, 0x8002F0, AT - timedelta(seconds=2.5))
    assert point == {
        "replay_lsn": "0/8002F0",
        "last_transaction_at": (AT - timedelta(seconds=2.5)).isoformat(),
        "rpo_seconds": 2.5,
    }
    assert achieved(PROBE, 0x8002F0, None)["rpo_seconds"] is None


def test_the_summary_names_the_probe_and_the_point_reached() -> None:
    from drd.verify.restore_report import RestoreTestReport

    report = RestoreTestReport(
        plan="billing",
        source="db",
        backup_id="20261201T115000Z-0000abcd",
        kind="postgres-physical",
        backup_captured_at=AT.isoformat(),
        selection="newest",
        started_at=AT,
        rto_target_seconds=600,
    )
    report.restore = {
        "pitr": {
            "probe": {"time": AT.isoformat(), "lsn": "0/8002C8"},
            "achieved": achieved(PROBE, 0x8002F0, AT - timedelta(seconds=2)),
        }
    }
    assert (
        f"  point: probe at {AT.isoformat()} (LSN 0/8002C8); reached LSN 0/8002F0, last "
        f"transaction at {(AT - timedelta(seconds=2)).isoformat()}, RPO 2s"
    ) in report.summary_lines()
