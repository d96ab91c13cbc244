"""Logging setup: human text for terminals, JSON lines for log shippers, and the job context
every line of a job carries.

Context. Where a job starts (a backup, a restore test, a retention sweep, a drill) it opens
`log_context(job=..., plan=..., source=...)`; deeper code adds what it learns (`backup_id`,
`drill_id`) with `add_log_context`. The fields live in a context variable, so they follow the
job into everything it awaits, into the tasks it creates and into `asyncio.to_thread`, and
never leak into another job: asyncio gives every task its own copy. `ContextFilter` copies them
onto each record (a field passed explicitly with `extra=` wins).

Formats:
- `text`: `TIME LEVEL logger: message job=backup plan=p source=s backup_id=...`;
- `json`: one object per line with the keys Google Cloud Logging and Loki read: `time`
  (RFC 3339, UTC), `severity` (DEBUG, INFO, WARNING, ERROR, CRITICAL), `message`, plus
  `logger`, the context fields and `exception` (a traceback) when there is one.

Under systemd-journald (stderr is the stream $JOURNAL_STREAM names) every line starts with its
syslog priority, `<3>` for an error and so on (sd-daemon(3)), so that `journalctl -p err`
finds errors, and the text format leaves the timestamp to the journal. Each line of a
multi-line record (a traceback) carries the prefix, so none of it drops to the default level.

Nothing secret is ever passed to a logger in the first place; this module does not try to
scrub after the fact.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import IO

#: the context fields, in the order the text format shows them
CONTEXT_FIELDS = ("job", "plan", "source", "backup_id", "drill_id", "region")

#: the current fields as (name, value) pairs: immutable, so a task's copy is never shared
_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "drd_log_context", default=()
)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Every record logged inside the block (in this task and the tasks it starts) carries
    `fields` (None values are left out); the outer context's other fields stay."""
    token = _context.set(_merged(fields))
    try:
        yield
    finally:
        _context.reset(token)


def add_log_context(**fields: str | None) -> None:
    """Add fields to the current context, for the rest of the enclosing `log_context` block
    (or of the current task, when there is none)."""
    _context.set(_merged(fields))


def current_log_context() -> dict[str, str]:
    return dict(_context.get())


def _merged(fields: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {sorted(unknown)}")
    out = dict(_context.get())
    out.update({k: str(v) for k, v in fields.items() if v is not None})
    return tuple(out.items())


class ContextFilter(logging.Filter):
    """Puts the current log context on each record (as attributes, like `extra=`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The record's context fields that are set, in CONTEXT_FIELDS order."""
    out = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = str(value)
    return out


def _logfmt(value: str) -> str:
    if value and not any(c in value for c in ' ="\\') and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`; without the time under journald."""

    def __init__(self, *, timestamps: bool = True) -> None:
        fmt = "%(levelname)-7s %(name)s: %(message)s"
        super().__init__(("%(asctime)s " if timestamps else "") + fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = context_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        return line


#: Python level -> Cloud Logging's LogSeverity names
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def severity(levelno: int) -> str:
    for level in sorted(_SEVERITY, reverse=True):
        if levelno >= level:
            return _SEVERITY[level]
    return "DEFAULT"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, severity, message, logger, the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "severity": severity(record.levelno),
            "message": record.getMessage(),
            "logger": record.name,
            **context_of(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["exception"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: every line of its output starts with `<priority>` (sd-daemon(3))."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def stream_is_journal(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is connected to journald: $JOURNAL_STREAM ("DEVICE:INODE", set by
    systemd for a service whose output goes to the journal) names this very file. A child
    that inherited the variable but writes elsewhere (a pipe, a terminal) gets False."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (StringIO), closed
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class RateLimit(logging.Filter):
    """At most `burst` identical records (logger, level, message) per `window` seconds; the
    next one after a quiet spell says how many were suppressed. An error storm (EMFILE on every
    accept, a peer resetting thousands of connections) must not fill the disk or the journal."""

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage()[:200])
        now = time.monotonic()
        start, count, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window:
            if dropped:
                record.msg = (
                    f"{record.msg} (and {dropped} more like it in the last {self.window:.0f}s)"
                )
            start, count, dropped = now, 0, 0
        if count >= self.burst:
            self._seen[key] = (start, count, dropped + 1)
            return False
        self._seen[key] = (start, count + 1, dropped)
        if len(self._seen) > 10_000:  # bounded, whatever varies in the messages
            self._seen.clear()
        return True


def make_handler(
    fmt: str = "text", stream: IO[str] | None = None, environ: Mapping[str, str] | None = None
) -> logging.Handler:
    """A handler writing `fmt` ("text" or "json") to `stream` (default stderr), with the job
    context, the journald prefix when `stream` is the journal, and the rate limit."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    out = sys.stderr if stream is None else stream
    journal = stream_is_journal(out, environ)
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else TextFormatter(timestamps=not journal)
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
    handler.addFilter(ContextFilter())
    handler.addFilter(RateLimit())
    return handler


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    *,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Route every logger to one handler on stderr (or `stream`). Called again (a config
    reload), it replaces the handler."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, stream, environ)]
    root.setLevel(level.upper())
    # The Google and HTTP client libraries are chatty at INFO and may log request URLs.
    for noisy in ("google", "urllib3", "googleapiclient", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
