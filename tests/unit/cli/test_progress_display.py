"""drd.cli.progress_display: the live line (throttled, redrawn in place, erased), the periodic
log line without a terminal, and the JSON events, all on an injected timer."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drd.cli.main import main
from drd.cli.progress_display import (
    REDRAWS_PER_SECOND,
    ProgressDisplay,
    choose_mode,
    describe,
)
from drd.durations import format_elapsed
from drd.progress import ProgressBoard
from tests.support.drdenv import DrdEnv

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MiB = 1 << 20


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def board_and_display(
    mode: str, stream: io.StringIO, **kwargs: float
) -> tuple[ProgressBoard, ProgressDisplay, Timer]:
    timer = Timer()
    board = ProgressBoard(clock=lambda: START, timer=timer)
    display = ProgressDisplay(board, mode, stream, timer=timer, width=lambda: 200, **kwargs)  # type: ignore[arg-type]
    return board, display, timer


def test_the_mode_follows_the_stream() -> None:
    assert choose_mode(Tty(), as_json=False) == "live"
    assert choose_mode(io.StringIO(), as_json=False) == "log"
    assert choose_mode(Tty(), as_json=True) == "json"


def test_durations_in_the_config_syntax() -> None:
    assert format_elapsed(0.42) == "0.4s"
    assert format_elapsed(4.25) == "4s"
    assert format_elapsed(78) == "1m18s"
    assert format_elapsed(3725.4) == "1h2m"


def test_the_line_says_phase_bytes_estimate_rate_eta_and_elapsed() -> None:
    stream = Tty()
    board, _, timer = board_and_display("live", stream)
    with board.track("backup", "billing", "db", total=1900 * MiB) as p:
        p.phase("dumping")
        for _ in range(10):
            timer.now += 1
            p.advance(40 * MiB)
        line = describe(p.snapshot())
    assert line == "backup billing/db: dumping 400.0MiB of ~1.9GiB, 40.0MiB/s, ETA 37s [10s]"


def test_a_restore_total_is_exact_and_an_unknown_total_is_left_out() -> None:
    board, _, timer = board_and_display("live", Tty())
    with board.track("restore", "p", "db", total=2 * MiB) as p:
        timer.now += 1
        p.advance(MiB)
        assert " of 2.0MiB," in describe(p.snapshot())
    with board.track("backup", "p", "db") as p:
        timer.now += 1
        p.advance(MiB)
        text = describe(p.snapshot())
        assert " of " not in text and "ETA" not in text and "1.0MiB" in text


def test_the_live_line_is_redrawn_in_place_a_few_times_a_second_and_erased() -> None:
    stream = Tty()
    board, display, timer = board_and_display("live", stream)
    with board.track("backup", "p", "db") as p:
        p.phase("dumping")
        for _ in range(40):  # ticks every 50 ms for 2 s
            p.advance(1000)
            display.tick()
            timer.now += 0.05
    drawn = stream.getvalue()
    lines = [part for part in drawn.split("\r") if part and part != "\x1b[K"]
    assert 2 <= len(lines) <= 2 * REDRAWS_PER_SECOND + 1  # not once per tick (40)
    assert "\n" not in drawn  # in place: never a new line
    assert all(part.endswith("\x1b[K") for part in drawn.split("\r")[1:])
    assert drawn.endswith("\r\x1b[K")  # the job ended: the line is gone


def test_the_live_line_is_cut_to_the_terminal_width() -> None:
    stream = Tty()
    timer = Timer()
    board = ProgressBoard(clock=lambda: START, timer=timer)
    display = ProgressDisplay(board, "live", stream, timer=timer, width=lambda: 30)
    with board.track("backup", "a-very-long-plan-name", "a-very-long-source-name"):
        display.tick()
        line = stream.getvalue().split("\r")[1].removesuffix("\x1b[K")
    assert len(line) == 29 and line.endswith("...")


def test_without_a_terminal_a_log_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    board, display, timer = board_and_display("log", stream, every=10.0)
    caplog.set_level(logging.INFO, logger="drd.progress")
    with board.track("restore-test", "p", "db", total=100) as p:
        p.phase("restore")
        for _ in range(250):  # 25 s of ticks, 100 ms apart
            p.advance(0)
            display.tick()
            timer.now += 0.1
    lines = [r.getMessage() for r in caplog.records if r.name == "drd.progress"]
    assert len(lines) == 2, lines  # at 10 s and 20 s, not before and not every tick
    assert lines[0].startswith("progress: restore-test p/db: restore")
    assert stream.getvalue() == ""  # no terminal escapes where no terminal is


def test_json_events_start_progress_end(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    board, display, timer = board_and_display("json", stream)
    with board.track("backup", "p", "db", total=300) as p:
        display.tick()
        p.phase("dumping")
        display.tick()  # a new phase: sent at once
        for _ in range(30):  # bytes moving for 3 s, ticks 100 ms apart
            timer.now += 0.1
            p.advance(10)
            display.tick()
    display.close()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert 3 <= kinds.count("progress") <= 5  # the phase change, then about once a second
    assert events[1]["phase"] == "dumping"
    last = events[-1]
    assert last["result"] == "ok" and last["phase"] == "done"
    assert last["bytes"] == 300 and last["total"] == 300
    assert {"kind", "plan", "source", "rate_bytes_per_second", "eta_seconds"} <= set(last)
    assert capsys.readouterr().out == ""  # stdout stays the result's


@pytest.mark.parametrize(
    ("every", "why"), [("soon", "invalid duration 'soon'"), ("0s", "at least 1s")]
)
def test_a_bad_progress_interval_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], every: str, why: str
) -> None:
    env = DrdEnv.files_plan(tmp_path)
    env.write()
    code = main(["--config", str(env.config_path), "backup", "p", "--progress-every", every])
    assert code == 2
    assert f"--progress-every: {why}" in capsys.readouterr().err


def test_a_job_the_caller_marks_failed_ends_failed_with_its_reason() -> None:
    stream = io.StringIO()
    board, display, _ = board_and_display("json", stream)
    with board.track("restore-test", "p", "db") as p:
        display.tick()
        p.fail("check row_count: expected >= 1, got 0")
    display.close()
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert last["event"] == "end" and last["result"] == "failed" and last["phase"] == "failed"
    assert last["reason"] == "check row_count: expected >= 1, got 0"


def end_events(err: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "end"]


def test_a_failed_restore_test_and_drill_end_failed_in_the_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither raises: a failed restore test is a report, a failed drill source a result."""
    env = DrdEnv.files_plan(tmp_path)
    env.plans["p"]["restore_test"] = {"checks": {"tree": [{"file": {"path": "missing.txt"}}]}}
    env.write()
    monkeypatch.setenv("DRD_KEYS", env.key)
    config = ["--config", str(env.config_path)]
    assert main([*config, "backup", "p"]) == 0
    capsys.readouterr()

    monkeypatch.setenv("DRD_KEYS", env.key)  # each main() is a new process: keys read once
    assert main([*config, "restore-test", "p", "--json"]) == 11
    (end,) = end_events(capsys.readouterr().err)
    assert end["kind"] == "restore-test" and end["result"] == "failed"
    assert "check_failed" in str(end["reason"])

    monkeypatch.setenv("DRD_KEYS", env.key)
    assert main([*config, "drill", "p", "--json"]) == 12
    (end,) = end_events(capsys.readouterr().err)
    assert end["kind"] == "drill" and end["result"] == "failed"
    assert end["reason"]


def test_every_event_line_starts_with_its_event_so_grep_finds_it() -> None:
    """README: select the events with `grep '^{"event"'` (log lines share stderr)."""
    stream = io.StringIO()
    board, display, _ = board_and_display("json", stream)
    with board.track("backup", "p", "db") as p:
        display.tick()
        p.phase("dumping")
        display.tick()
    display.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith('{"event": ') for line in lines)
