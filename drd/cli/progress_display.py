"""What `drd backup`, `restore`, `restore-test` and `drill` show while they run (drd.progress).

Three ways, chosen by where the output goes (`choose_mode`):

- `live`, stderr is a terminal: one line, redrawn in place at most REDRAWS_PER_SECOND times
  a second and erased at the end (log lines erase it first, and it is redrawn after them):
      backup billing/db: dumping 1.2GiB of ~1.9GiB, 38.5MiB/s, ETA 18s [32s]
- `log`, no terminal (a cron job, a CI log, systemd): the same words as an INFO log line every
  `every` seconds (`--progress-every`, default 10s), so a long job is never silent.
- `json` (`--json`): events as JSON lines on stderr, one object per line, so that stdout keeps
  only the command's result, one JSON document as before:
      {"event": "start" | "progress" | "end", "kind", "plan", "source", "phase", "bytes",
       "total", "rate_bytes_per_second", "eta_seconds", "elapsed_seconds", "started_at",
       "phases"}  (+ "result": "ok" | "failed" on "end", and with "failed" the "reason")
  `start` when a job begins, `progress` when its phase changes and at most once a second
  while its bytes move, `end` when it is over. `total` is null when unknown. `failed`: the job
  raised, or returned a failure it marked with Progress.fail (a restore test that failed).

The display polls the board (`tick`); nothing in the data path waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Literal, TextIO

from drd.durations import format_elapsed, format_size
from drd.progress import ProgressBoard, Snapshot, Timer

log = logging.getLogger("drd.progress")

Mode = Literal["live", "log", "json"]
#: the live line is redrawn at most this often
REDRAWS_PER_SECOND = 4
#: a JSON progress event at most this often per job (phase changes are sent at once)
JSON_EVERY = 1.0
#: how often the display looks at the board
TICK_SECONDS = 0.1
DEFAULT_LOG_EVERY = 10.0


def choose_mode(stream: TextIO, *, as_json: bool) -> Mode:
    if as_json:
        return "json"
    isatty = getattr(stream, "isatty", None)
    return "live" if isatty is not None and isatty() else "log"


def describe(snap: Snapshot) -> str:
    """`backup billing/db: dumping 1.2GiB of ~1.9GiB, 38.5MiB/s, ETA 18s [32s]`."""
    text = f"{snap.kind} {snap.what}: {snap.phase}"
    if snap.bytes_done or snap.bytes_total:
        text += f" {format_size(snap.bytes_done)}"
        if snap.bytes_total is not None:
            # A backup's total is the previous backup's size: an estimate.
            about = "~" if snap.kind == "backup" else ""
            text += f" of {about}{format_size(snap.bytes_total)}"
        if snap.rate is not None:
            text += f", {format_size(snap.rate)}/s"
        if snap.eta_seconds is not None:
            text += f", ETA {format_elapsed(snap.eta_seconds)}"
    return text + f" [{format_elapsed(snap.elapsed_seconds)}]"


class ProgressDisplay:
    """Shows a board's jobs on `stream` in one of the modes (see the module docstring)."""

    def __init__(
        self,
        board: ProgressBoard,
        mode: Mode,
        stream: TextIO,
        *,
        every: float = DEFAULT_LOG_EVERY,
        timer: Timer = time.monotonic,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.board, self.mode, self.stream = board, mode, stream
        self.every = every
        self._timer = timer
        self._width = width or (lambda: shutil.get_terminal_size().columns)
        self._drawn = False
        self._last_draw: float | None = None
        self._last_log: float | None = None
        #: per job: (its last event's time, its phase then)
        self._sent: dict[int, tuple[float, str]] = {}
        board.ended.append(self._ended)

    def tick(self) -> None:
        """Look at the board and show what is due."""
        now = self._timer()
        running = self.board.running()
        if self.mode == "live":
            if self._last_draw is None or now - self._last_draw >= 1 / REDRAWS_PER_SECOND:
                self._last_draw = now
                self._draw(" | ".join(describe(p.snapshot()) for p in running))
        elif self.mode == "log":
            if self._last_log is None:
                self._last_log = now  # the first line after `every`, not at once
            elif now - self._last_log >= self.every:
                self._last_log = now
                for progress in running:
                    log.info("progress: %s", describe(progress.snapshot()))
        else:
            for progress in running:
                snap = progress.snapshot()
                sent = self._sent.get(id(progress))
                if sent is None:
                    self._event("start", snap)
                elif sent[1] != snap.phase or now - sent[0] >= JSON_EVERY:
                    self._event("progress", snap)
                else:
                    continue
                self._sent[id(progress)] = (now, snap.phase)

    def clear(self) -> None:
        """Erase the live line (before a log line, and at the end)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
            self._last_draw = None

    def close(self) -> None:
        self.clear()
        with contextlib.suppress(ValueError):
            self.board.ended.remove(self._ended)

    def _draw(self, line: str) -> None:
        if not line:
            self.clear()
            return
        width = max(self._width() - 1, 10)
        if len(line) > width:
            line = line[: width - 3] + "..."
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _event(self, event: str, snap: Snapshot, **extra: str) -> None:
        # "event" first (the rest sorted): a line is selected with grep '^{"event"'.
        fields = dict(sorted({**snap.as_json(), **extra}.items()))
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def _ended(self, snap: Snapshot, failure: str | None) -> None:
        if self.mode == "json":
            if failure is None:
                self._event("end", snap, result="ok")
            else:
                self._event("end", snap, result="failed", reason=failure)
        elif self.mode == "live":
            self.clear()


class _ClearBeforeRecord(logging.Filter):
    """Log lines share stderr with the live line: erase it before each (it is redrawn)."""

    def __init__(self, display: ProgressDisplay) -> None:
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        self.display.clear()
        return True


@contextlib.asynccontextmanager
async def showing(
    board: ProgressBoard,
    stream: TextIO,
    *,
    as_json: bool,
    every: float = DEFAULT_LOG_EVERY,
) -> AsyncIterator[ProgressDisplay]:
    """Show `board` on `stream` while the block runs; the live line is gone when it ends."""
    display = ProgressDisplay(board, choose_mode(stream, as_json=as_json), stream, every=every)
    handlers = logging.getLogger().handlers
    guard = _ClearBeforeRecord(display)
    if display.mode == "live":
        for handler in handlers:
            handler.addFilter(guard)

    async def ticking() -> None:
        while True:
            display.tick()
            await asyncio.sleep(TICK_SECONDS)

    task = asyncio.create_task(ticking(), name="progress-display")
    try:
        yield display
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for handler in handlers:
            handler.removeFilter(guard)
        display.close()
