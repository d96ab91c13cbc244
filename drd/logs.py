"""Logging setup: human text for terminals, JSON lines for log shippers.

Context (plan, source, backup id) travels in the message and, for JSON, in `extra` fields.
Nothing secret is ever passed to a logger in the first place; this module does not try to
scrub after the fact.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

_CONTEXT_FIELDS = ("plan", "source", "backup_id", "region", "job")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Google and HTTP client libraries are chatty at INFO and may log request URLs.
    for noisy in ("google", "urllib3", "googleapiclient", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
