"""drd.progress: phases, bytes, rate and ETA of a running job, on an injected timer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drd.progress import RATE_WINDOW, Progress, ProgressBoard, Snapshot

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Timer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(timer: Timer, total: int | None = None) -> Progress:
    return Progress("backup", "p", "db", total=total, clock=lambda: START, timer=timer)


def test_phases_keep_their_time_and_the_running_one_counts_up_to_now() -> None:
    timer = Timer()
    p = progress(timer)
    p.phase("preparing")
    timer.now += 2
    p.phase("dumping")
    timer.now += 5
    p.phase("dumping")  # the same phase again changes nothing
    timer.now += 1
    assert p.current_phase == "dumping"
    assert p.snapshot().phases == {"starting": 0.0, "preparing": 2.0}
    assert p.phase_seconds() == {"starting": 0.0, "preparing": 2.0, "dumping": 6.0}
    assert p.snapshot().elapsed_seconds == 8.0


def test_rate_and_eta_from_the_bytes_that_went_through() -> None:
    timer = Timer()
    p = progress(timer, total=1000)
    assert p.snapshot().rate is None and p.snapshot().eta_seconds is None
    for _ in range(4):
        timer.now += 1
        p.advance(100)
    snap = p.snapshot()
    assert snap.bytes_done == 400 and snap.bytes_total == 1000
    assert snap.rate == pytest.approx(100.0)
    assert snap.eta_seconds == pytest.approx(6.0)


def test_the_rate_follows_the_last_window_not_the_whole_job() -> None:
    timer = Timer()
    p = progress(timer)
    for _ in range(20):  # fast at first: 1000 B/s
        timer.now += 1
        p.advance(1000)
    for _ in range(int(RATE_WINDOW) + 5):  # then slow: 10 B/s
        timer.now += 1
        p.advance(10)
    rate = p.snapshot().rate
    assert rate is not None and rate < 200  # the average since the start would be ~670


def test_no_eta_once_the_job_is_past_its_estimate() -> None:
    timer = Timer()
    p = progress(timer, total=100)
    timer.now += 1
    p.advance(150)
    snap = p.snapshot()
    assert snap.rate is not None and snap.eta_seconds is None


def test_restart_bytes_starts_the_count_and_the_rate_over() -> None:
    timer = Timer()
    p = progress(timer)
    timer.now += 1
    p.advance(500)
    p.restart_bytes(total=2000)
    assert p.bytes_done == 0 and p.total == 2000 and p.snapshot().rate is None
    timer.now += 2
    p.advance(100)
    assert p.snapshot().rate == pytest.approx(50.0)


def test_snapshot_json_shape() -> None:
    timer = Timer()
    p = progress(timer, total=10)
    p.phase("dumping")
    timer.now += 1
    p.advance(5)
    data = p.snapshot().as_json()
    assert data == {
        "kind": "backup",
        "plan": "p",
        "source": "db",
        "phase": "dumping",
        "bytes": 5,
        "total": 10,
        "rate_bytes_per_second": 5.0,
        "eta_seconds": 1.0,
        "elapsed_seconds": 1.0,
        "started_at": START.isoformat(),
        "phases": {"starting": 0.0},
    }


def test_the_board_lists_a_job_while_it_runs_and_says_how_it_ended() -> None:
    timer = Timer()
    board = ProgressBoard(clock=lambda: START, timer=timer)
    ended: list[tuple[Snapshot, str | None]] = []
    board.ended.append(lambda snap, failure: ended.append((snap, failure)))
    with board.track("backup", "p", "db", total=3) as p:
        assert board.running() == [p]
        p.advance(3)
    assert board.running() == []
    ((snap, failure),) = ended
    assert failure is None and snap.phase == "done" and snap.bytes_done == 3
    with pytest.raises(RuntimeError), board.track("restore-test", "p", "db"):
        raise RuntimeError("boom")
    assert board.running() == []
    assert ended[-1][1] == "boom" and ended[-1][0].phase == "failed"
    with board.track("restore-test", "p", "db") as p:
        p.fail("1 check(s) failed: rows")
    assert ended[-1][1] == "1 check(s) failed: rows" and ended[-1][0].phase == "failed"
