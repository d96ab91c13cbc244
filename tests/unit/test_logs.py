"""Log lines carry their job's context (contextvars), in text and JSON; JSON has the keys Cloud
Logging and Loki read; under journald every line starts with its syslog priority and the text
has no timestamp; the rate limit still holds."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drd.logs import (
    JsonFormatter,
    add_log_context,
    current_log_context,
    log_context,
    make_handler,
    setup_logging,
    stream_is_journal,
)

Capture = Callable[[str], tuple[logging.Logger, io.StringIO]]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """`capture(fmt)`: a logger whose records go through make_handler(fmt) into a StringIO."""
    log = logging.getLogger("drd.test.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)

    def attach(fmt: str) -> tuple[logging.Logger, io.StringIO]:
        stream = io.StringIO()
        log.addHandler(make_handler(fmt, stream, environ={}))
        return log, stream

    try:
        yield attach
    finally:
        log.handlers.clear()
        log.propagate = True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_have_cloud_logging_and_loki_keys_and_context(capture: Capture) -> None:
    log, stream = capture("json")
    with log_context(job="backup", plan="p", source="s"):
        add_log_context(backup_id="20261128T130000Z-ab12")
        log.warning("backup %s done", "x")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["message"] == "backup x done"
    assert first["severity"] == "WARNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first["time"]
    assert first["logger"] == "drd.test.logs"
    assert (first["job"], first["plan"], first["source"], first["backup_id"]) == (
        "backup",
        "p",
        "s",
        "20261128T130000Z-ab12",
    )
    # Outside the block nothing is left of the context; the traceback is one field.
    assert second["severity"] == "ERROR"
    assert not {"job", "plan", "source", "backup_id"} & set(second)
    assert "RuntimeError: boom" in second["exception"]


def test_explicit_extra_wins_over_the_context(capture: Capture) -> None:
    log, stream = capture("json")
    with log_context(plan="p", source="s"):
        log.info("x", extra={"source": "other"})
    doc = json.loads(stream.getvalue())
    assert (doc["plan"], doc["source"]) == ("p", "other")


def test_text_lines_end_with_a_compact_context_suffix(capture: Capture) -> None:
    log, stream = capture("text")
    with log_context(job="restore-test", plan="billing", source="db"):
        log.info("restore test starting")
        with log_context(backup_id="b 1"):  # a value with a space is quoted
            log.error("restore test failed")
    log.info("no context")
    one, two, three = lines(stream)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    drd\.test\.logs: ", one)
    assert one.endswith("restore test starting job=restore-test plan=billing source=db")
    assert two.endswith(
        'restore test failed job=restore-test plan=billing source=db backup_id="b 1"'
    )
    assert three.endswith("drd.test.logs: no context")


def test_unknown_context_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context"), log_context(plann="p"):
        pass


async def test_concurrent_jobs_keep_their_own_context(capture: Capture) -> None:
    """Two jobs interleaved on one loop, each with tasks and threads of its own: every line
    names the job it came from, and none leaks into the caller."""
    log, stream = capture("json")
    both = asyncio.Barrier(2)

    async def job(plan: str, source: str) -> None:
        with log_context(job="backup", plan=plan, source=source):
            log.info("started %s/%s", plan, source)
            await both.wait()  # the other job has started too: its context is set
            add_log_context(backup_id=f"id-{source}")

            async def upload() -> None:
                log.info("upload of %s/%s", plan, source)

            await asyncio.create_task(upload())
            await asyncio.to_thread(log.info, "thread of %s/%s", plan, source)
            await both.wait()
            log.info("finished %s/%s", plan, source)

    await asyncio.gather(job("p1", "a"), job("p2", "b"))
    assert current_log_context() == {}
    docs = [json.loads(line) for line in lines(stream)]
    assert len(docs) == 8
    for doc in docs:
        plan, source = doc["message"].split()[-1].split("/")
        assert (doc["plan"], doc["source"], doc["job"]) == (plan, source, "backup"), doc
        if not doc["message"].startswith("started"):
            assert doc["backup_id"] == f"id-{source}"


def test_journald_lines_carry_their_priority_and_no_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w+", encoding="utf-8") as out:
        st = os.fstat(out.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(out, environ)
        log = logging.getLogger("drd.test.journal")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        handler = make_handler("text", out, environ)
        log.addHandler(handler)
        try:
            with log_context(plan="p"):
                log.debug("d")
                log.info("i")
                log.warning("w")
                log.error("e")
                log.critical("c")
                try:
                    raise ValueError("bad")
                except ValueError:
                    log.exception("with a traceback")
        finally:
            log.removeHandler(handler)
        out.flush()
    got = path.read_text().splitlines()
    assert got[:5] == [
        "<7>DEBUG   drd.test.journal: d plan=p",
        "<6>INFO    drd.test.journal: i plan=p",
        "<4>WARNING drd.test.journal: w plan=p",
        "<3>ERROR   drd.test.journal: e plan=p",
        "<2>CRITICAL drd.test.journal: c plan=p",
    ]
    # Every line of the traceback stays at err: journald reads the prefix line by line.
    rest = got[5:]
    assert rest[0] == "<3>ERROR   drd.test.journal: with a traceback plan=p"
    assert len(rest) > 3 and all(line.startswith("<3>") for line in rest), rest
    assert rest[-1] == "<3>ValueError: bad"


def test_journald_json_keeps_its_keys_behind_the_prefix(tmp_path: Path) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w+", encoding="utf-8") as out:
        st = os.fstat(out.fileno())
        handler = make_handler("json", out, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        record = logging.LogRecord("drd.x", logging.ERROR, __file__, 1, "m", None, None)
        handler.handle(record)
        out.flush()
    line = path.read_text().strip()
    assert line.startswith("<3>{")
    doc = json.loads(line[3:])
    assert (doc["severity"], doc["message"]) == ("ERROR", "m")


def test_journal_stream_must_name_the_very_stream(tmp_path: Path) -> None:
    """A child that inherited JOURNAL_STREAM but writes to a pipe or a file logs normally."""
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(a, environ)
        assert not stream_is_journal(b, environ)
        assert not stream_is_journal(a, {})
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    handler = make_handler("text", io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    assert handler.formatter is not None
    record = logging.LogRecord("drd.x", logging.ERROR, __file__, 1, "m", None, None)
    assert re.match(r"\d{4}-\d\d-\d\d ", handler.formatter.format(record))


def test_the_rate_limit_still_holds(capture: Capture) -> None:
    log, stream = capture("text")
    for _ in range(8):
        log.error("accept failed: EMFILE")
    assert len(lines(stream)) == 5


def test_setup_logging_replaces_its_handler() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        setup_logging("info", "text", stream=first, environ={})
        setup_logging("warning", "json", stream=second, environ={})
        assert len(root.handlers) == 1
        logging.getLogger("drd.test.setup").info("hidden")
        logging.getLogger("drd.test.setup").warning("shown")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "shown"


def test_json_formatter_alone_needs_no_handler_setup() -> None:
    record = logging.LogRecord("drd.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.plan = "p"
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["message"], doc["severity"], doc["plan"]) == ("hello you", "INFO", "p")
