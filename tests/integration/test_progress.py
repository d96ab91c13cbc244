"""Progress of real jobs (issue 17): `drd backup` on a pseudo-terminal draws a live line and
ends with a one-line summary; `--json` sends JSON-lines events on stderr and keeps stdout one
parseable result; without a terminal a progress log line comes every `--progress-every`; and
the daemon exports the running backup (drd_job_*, /api/v1/status) while a slowed one runs.

The backups are real: a directory tree with 48 MiB of random bytes, written to a local region
and to a fake-gcs-server region (1 MiB upload chunks, so the dump lasts seconds, not
milliseconds, and there is something to watch)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drd import crypto
from drd.cli.progress_display import REDRAWS_PER_SECOND
from drd.config.loader import load_config
from drd.daemon.service import Daemon
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.server.app import start_http
from drd.storage.faults import FaultyStorage
from drd.storage.regions import open_region
from tests.support.drdenv import DrdEnv, free_port
from tests.support.fakegcs import StartRegions

pytestmark = pytest.mark.integration

MIB = 48
SIZE = MIB << 20
LIVE = re.compile(r"\r(backup p/tree: [^\r\n]*?)\x1b\[K")


def estate(root: Path, gcs_regions: StartRegions) -> DrdEnv:
    (server,) = gcs_regions(1)
    env = DrdEnv(root)
    env.add_local_region("a")
    env.add_gcs_region("b", server, "progress-b")
    data = root / "data"
    data.mkdir()
    with open(data / "big.bin", "wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))
    env.add_plan("p", [{"name": "tree", "kind": "files", "path": str(data)}])
    env.write()
    return env


def on_a_terminal(env: DrdEnv, *args: str, timeout: float = 300) -> tuple[str, float]:
    """What `drd ARGS` writes to a pseudo-terminal (stdout and stderr together), and how long
    it ran."""
    began = time.monotonic()
    proc = subprocess.run(
        ["script", "-qfec", shlex.join(env.command(*args)), "/dev/null"],
        env=env.env(),
        cwd=env.root,
        capture_output=True,  # bytes: text mode would turn every \r into a new line
        timeout=timeout,
        check=False,
    )
    screen = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, screen + proc.stderr.decode(errors="replace")
    return screen, time.monotonic() - began


def test_backup_on_a_terminal_draws_a_live_line_then_a_summary(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = estate(tmp_path, gcs_regions)
    env.ok("backup", "p")  # the second backup has the first one's size to go by
    screen, seconds = on_a_terminal(env, "backup", "p")

    lines = LIVE.findall(screen)
    dumping = [line for line in lines if ": dumping " in line]
    assert dumping, screen[:2000]
    # phase, human bytes of the estimate, rate, ETA and the time so far
    assert re.fullmatch(
        rf"backup p/tree: dumping \d+\.\dMiB of ~{MIB}\.\dMiB, \d+\.\d[KMG]iB/s, ETA \S+ \[\S+\]",
        dumping[-1],
    ), dumping[-1]
    # throttled: a few redraws a second, not one per chunk
    assert len(lines) <= REDRAWS_PER_SECOND * (seconds + 1)
    # the line is erased before the summary, and not drawn again after it
    before, summary, after = re.split(r"(ok p/tree@\S+: [^\r\n]*)", screen)
    last_draw = list(LIVE.finditer(before))[-1]
    assert before[last_draw.end() :].startswith("\r\x1b[K")
    assert "\x1b[K" not in after and "backup p/tree:" not in after
    assert re.fullmatch(
        rf"ok p/tree@\S+: {MIB}\.0MiB -> {MIB}\.0MiB stored in a,b in \S+s \(\d+\.\d[KMG]iB/s\)",
        summary,
    ), summary


def events_of(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith('{"')]


def test_json_events_on_stderr_and_one_result_on_stdout(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = estate(tmp_path, gcs_regions)
    proc = env.ok("backup", "p", "--json")
    result = json.loads(proc.stdout)  # stdout is the result alone
    (backup,) = result["backups"]
    assert backup["status"] == "ok" and backup["source_bytes"] > SIZE
    events = events_of(proc.stderr)
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "end" and events[-1]["result"] == "ok"
    assert events[-1]["bytes"] == backup["source_bytes"]
    assert any(e["event"] == "progress" and e["phase"] == "dumping" for e in events)
    assert {e["kind"] for e in events} == {"backup"}

    target = tmp_path / "restored"
    proc = env.ok("restore", "p/tree", "--to", str(target), "--region", "b", "--json")
    restored = json.loads(proc.stdout)
    assert restored["backup_id"] == backup["backup_id"] and restored["region"] == "b"
    events = events_of(proc.stderr)
    end = events[-1]
    assert end["event"] == "end" and end["kind"] == "restore"
    assert end["bytes"] == end["total"] == restored["bytes"] == backup["source_bytes"]
    assert (target / "big.bin").stat().st_size == SIZE


def test_restore_tests_and_drills_show_their_phases(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = estate(tmp_path, gcs_regions)
    env.ok("backup", "p")
    proc = env.ok("restore-test", "p", "--region", "b", "--json")
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed"
    events = events_of(proc.stderr)
    assert {e["kind"] for e in events} == {"restore-test"}
    phases = [e["phase"] for e in events if e["event"] in ("start", "progress")]
    assert phases[0] == "choosing"
    for phase in ("fetch", "scratch_setup", "restore", "checks"):
        assert phase in phases or phase in events[-1]["phases"], (phase, phases)
    end = events[-1]
    assert end["event"] == "end" and end["bytes"] == end["total"] == report["bytes"]["restored"]

    proc = env.run("drill", "p", "--json")
    assert proc.returncode in (0, 12), proc.stderr  # the demo targets may be missed
    drill = json.loads(proc.stdout)
    events = events_of(proc.stderr)
    assert {(e["kind"], e["source"]) for e in events} == {("drill", "tree")}
    end = events[-1]
    assert end["event"] == "end" and end["result"] == "ok" and end["bytes"] > SIZE
    assert drill["sources"][0]["result"] == "passed" and "progress" not in drill["sources"][0]

    screen, _ = on_a_terminal(env, "restore-test", "p/tree")
    drawn = list(re.finditer(r"\r(restore-test p/tree: [^\r\n]*?)\x1b\[K", screen))
    assert drawn, screen[:2000]
    after = screen[drawn[-1].end() :]
    assert after.startswith("\r\x1b[K") and "\x1b[K" not in after[4:]  # erased, for good
    assert re.search(r"^PASSED p/tree@", after.replace("\r\n", "\n"), re.MULTILINE), after


def test_without_a_terminal_progress_is_logged_every_interval(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = estate(tmp_path, gcs_regions)
    began = time.monotonic()
    proc = env.ok("backup", "p", "--progress-every", "1s")
    seconds = time.monotonic() - began
    logged = [line for line in proc.stderr.splitlines() if "progress: backup p/tree:" in line]
    assert logged, proc.stderr
    assert len(logged) <= seconds + 1  # once a second at most
    assert "\x1b[K" not in proc.stderr and "\r" not in proc.stderr
    assert re.match(rf"ok p/tree@\S+: {MIB}\.0MiB -> ", proc.stdout)

    bad = env.run("backup", "p", "--progress-every", "soon")
    assert bad.returncode == 2 and "--progress-every: invalid duration 'soon'" in bad.stderr


async def test_the_daemon_shows_a_slowed_backup_while_it_runs(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = estate(tmp_path, gcs_regions)
    port = free_port()
    env.api_listen = f"127.0.0.1:{port}"
    cfg = load_config(env.write())
    regions: dict[str, FaultyStorage] = {}
    for region in cfg.regions:
        regions[region.name] = FaultyStorage(open_region(region.spec(), cfg.path.parent))
    # Every write to region a waits a little: the backup runs for a while, on any machine.
    regions["a"].add_latency(0.05, op="write")
    daemon = Daemon(cfg, crypto.Keyring.parse(env.key, "test"), regions, metrics=Metrics())
    await daemon.load_state()
    runner = await start_http(daemon, cfg.api.listen)
    base = f"http://127.0.0.1:{port}"
    labels = {"plan": "p", "source": "tree", "kind": "backup"}
    ref = SourceRef("p", "tree")
    try:
        async with aiohttp.ClientSession() as http:

            async def status_jobs() -> list[dict[str, Any]]:
                async with http.get(base + "/api/v1/status") as r:
                    assert r.status == 200
                    jobs: list[dict[str, Any]] = (await r.json())["jobs"]
                    return jobs

            async def metric(name: str) -> float | None:
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        if s.name == name and s.labels == labels:
                            return float(s.value)
                return None

            assert daemon.run_once() == [ref]  # never backed up: due at once
            seen: dict[str, Any] | None = None
            deadline = time.monotonic() + 120
            while seen is None and time.monotonic() < deadline:
                jobs = await status_jobs()
                if jobs and jobs[0]["phase"] == "dumping" and jobs[0]["bytes"] > 0:
                    seen = jobs[0]
                    break
                await asyncio.sleep(0.05)
            assert seen is not None, "the backup was never seen dumping"
            assert (seen["kind"], seen["plan"], seen["source"]) == ("backup", "p", "tree")
            assert await metric("drd_job_running") == 1
            done = await metric("drd_job_bytes_done")
            assert done is not None and done >= seen["bytes"] > 0
            started = await metric("drd_job_started_timestamp_seconds")
            assert started is not None and abs(started - time.time()) < 600

            task = daemon.sources[ref].task
            assert task is not None
            await asyncio.wait_for(task, 300)
            assert daemon.sources[ref].last_status == "success"
            assert await status_jobs() == []
            assert await metric("drd_job_running") == 0
            assert await metric("drd_job_bytes_done") is None
    finally:
        await runner.cleanup()
        await daemon.shutdown(5)


def test_a_failed_restore_test_ends_failed_in_its_events(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    """A failed restore test returns its report, it does not raise: the end event must still
    say failed, and why. Selected as the README says, with grep '^{"event"'."""
    env = estate(tmp_path, gcs_regions)
    env.plans["p"]["restore_test"] = {"checks": {"tree": [{"file": {"path": "missing.bin"}}]}}
    env.write()
    env.ok("backup", "p")
    proc = env.run("restore-test", "p", "--region", "b", "--json")
    assert proc.returncode == 11, proc.stdout + proc.stderr
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "failed"
    lines = [line for line in proc.stderr.splitlines() if line.startswith('{"event"')]
    end = json.loads(lines[-1])
    assert end["event"] == "end" and end["kind"] == "restore-test"
    assert end["result"] == "failed" and end["phase"] == "failed"
    assert report["failure_category"] in end["reason"]
