"""JSON log lines carry plan/source/backup id as fields."""

from __future__ import annotations

import io
import json
import logging

from drd.logs import JsonFormatter


def test_json_lines_carry_context_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("drd.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("backup %s done", "x", extra={"plan": "p", "source": "s", "backup_id": "b"})
    finally:
        log.removeHandler(handler)
    doc = json.loads(stream.getvalue())
    assert doc["msg"] == "backup x done"
    assert (doc["plan"], doc["source"], doc["backup_id"], doc["level"]) == (
        "p",
        "s",
        "b",
        "warning",
    )
