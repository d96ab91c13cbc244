"""Issue 17, must-hold 5: every line a job of the daemon logs carries the job's context, for
backups, restore tests, retention and drills alike, down to the modules the job calls
(drd.pipeline.backup, drd.verify.restore_run, drd.retention.sweep, drd.verify.drill)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.daemon.service import Daemon
from drd.layout import SourceRef
from drd.logs import make_handler
from drd.metrics import Metrics
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv


class Lines(logging.Handler):
    """Every record, as the json format writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.inner = make_handler("json", environ={})
        self.docs: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        for f in self.inner.filters:
            if not (f.filter(record) if isinstance(f, logging.Filter) else f(record)):
                return
        assert self.inner.formatter is not None
        self.docs.append(json.loads(self.inner.formatter.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


async def test_every_job_kind_logs_its_context(
    blob_strategy: Any, tmp_path: Path, lines: Lines
) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 20_000}])
    cfg = load_config(env.write())
    regions = {"a": MemoryStorage("a"), "b": MemoryStorage("b")}
    keyring = crypto.Keyring.parse(crypto.generate_key(), "test")
    d = Daemon(cfg, keyring, regions, metrics=Metrics())
    await d.load_state()
    ref = SourceRef("p", "s0")

    def of(job: str) -> list[dict[str, Any]]:
        return [doc for doc in lines.docs if doc.get("job") == job]

    # A backup: the daemon's own lines and drd.pipeline.backup's carry plan, source and the
    # backup id.
    assert d.run_once() == [ref]
    task = d.sources[ref].task
    assert task is not None
    await task
    backup_id = d.sources[ref].last_backup_id
    backup = of("backup")
    assert {doc["logger"] for doc in backup} >= {"drd.pipeline.backup"}
    assert all((doc["plan"], doc["source"]) == ("p", "s0") for doc in backup)
    assert [doc["backup_id"] for doc in backup if doc["logger"] == "drd.pipeline.backup"]
    assert all(
        doc["backup_id"] == backup_id for doc in backup if doc["logger"] == "drd.pipeline.backup"
    )

    # A restore test, through the scheduler.
    assert await d.restore_tests.run_once() == [ref]
    tests = d.restore_tests.tasks()
    await asyncio.gather(*tests)
    tested = of("restore-test")
    assert any(doc["logger"] == "drd.verify.restore_run" for doc in tested), tested
    assert all((doc["plan"], doc["source"]) == ("p", "s0") for doc in tested)
    assert any(doc.get("backup_id") == backup_id for doc in tested)

    # A retention sweep: the plan, no source.
    await d.retention.run_once(force=True)
    swept = of("retention")
    assert swept and all(doc["plan"] == "p" for doc in swept)

    # A drill: the plan, its id, and the source of each source's part.
    run = await d.drills.start_drill("p", None, {"token": "test"})
    assert run.task is not None
    await run.task
    drilled = of("drill")
    assert drilled and all(doc["drill_id"] == run.report.drill_id for doc in drilled)
    assert any(doc.get("source") == "s0" for doc in drilled)
    assert any(doc["logger"] == "drd.verify.drill" for doc in drilled)

    # Lines logged outside every job carry no job context.
    outside = [doc for doc in lines.docs if "job" not in doc]
    assert outside and not any(
        {"plan", "source", "backup_id", "drill_id"} & set(doc) for doc in outside
    )
    await d.shutdown(1)
