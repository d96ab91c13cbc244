"""`python -m bench.daemon_scale`: one `drd run` daemon with many sources (issue 19, point 4).

The estate: `--sources` tiny sources (alternately a small files tree and a small SQLite file,
generated in a temp dir) spread over `--plans` plans, all backed up every `--every` (jitter
`--jitter`) to two local-directory regions, at the daemon's configured concurrency
(`daemon.max_concurrent_jobs`: drd's default unless `--concurrency`). Restore tests, retention,
scrubbing and the region probe keep their defaults: what an operator would run.

One real `drd run` process is started and watched from outside:

- start: exec -> `/readyz` answers 200 (polled every 20 ms), and exec -> the first backup
  started (the daemon's `starting` log line). A second start, after the run, measures the
  same with every backup of the run in the regions.
- memory: VmRSS and VmHWM from /proc/PID/status every `--sample` seconds; peak is the largest
  VmHWM, steady the median VmRSS over the idle window.
- CPU when idle: utime+stime from /proc/PID/stat (its threads included) at the two ends of an
  `--idle` second window that starts once every job of the start burst has ended (and
  `--settle` seconds more), and that ends before any backup or restore test is due (from
  `/api/v1/status`, asked before the window only); the window is discarded if the job history
  shows any job in it.
- lateness: every backup's start (its `starting` log line, JSON logs) against its slot: the
  first backup's slot is the due time the daemon logged at start (all due at once), a later
  one's is `drd.daemon.schedule.slot_after` of the previous capture, the slot the daemon
  itself computes. Then the waits are checked against the concurrency: a backup may start
  late only while every job slot is busy (busy: a backup or restore test from its `starting`
  line to the end the job history records). A backup that waited while a slot stayed free
  for more than `--tolerance` seconds at a stretch started later than its slot allows. A
  scheduled backup that started after its next slot is counted apart: the round did not fit
  in the interval at that concurrency.

After `--rounds` scheduled rounds past the first backup of every source, the daemon gets
SIGTERM. Results go to bench/DAEMON_SCALE.md (and --json to stdout).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
MB = 1_000_000
MIB = 1 << 20
TARGET_IDLE_CPU_PERCENT = 2.0
TARGET_MEMORY_BYTES = 250 * MB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# urllib honours *_proxy variables; loopback traffic must never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------
# The estate


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _make_source(root: Path, index: int) -> dict[str, str]:
    """Source `index`: a tree of three small files (even) or a SQLite file of 50 rows (odd)."""
    name = f"s{index:03d}"
    if index % 2 == 0:
        tree = root / "sources" / name
        (tree / "sub").mkdir(parents=True)
        (tree / "a.txt").write_text(f"source {index}\n" * 20)
        (tree / "b.json").write_text(json.dumps({"source": index, "items": list(range(50))}))
        (tree / "sub" / "c.bin").write_bytes(os.urandom(2048))
        return {"name": name, "kind": "files", "path": str(tree)}
    path = root / "sources" / f"{name}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        db.executemany(
            "INSERT INTO items (body) VALUES (?)", [(f"row {i} of {name}",) for i in range(50)]
        )
        db.commit()
    finally:
        db.close()
    return {"name": name, "kind": "sqlite", "path": str(path)}


@dataclass(frozen=True)
class Estate:
    config: Path
    state_dir: Path
    port: int
    every: timedelta
    jitter: timedelta
    concurrency: int
    #: plan -> its source names
    plans: dict[str, list[str]]

    @property
    def sources(self) -> int:
        return sum(len(names) for names in self.plans.values())


def build_estate(
    root: Path,
    *,
    sources: int,
    plans: int,
    every: str,
    jitter: str,
    concurrency: int | None,
) -> Estate:
    from drd.config.models import DaemonConfig
    from drd.durations import parse_duration

    interval, spread = parse_duration(every), parse_duration(jitter)
    for name in ("plans", "regions/a", "regions/b"):
        (root / name).mkdir(parents=True)
    made = [_make_source(root, i) for i in range(sources)]
    by_plan: dict[str, list[dict[str, str]]] = {}
    for i, source in enumerate(made):
        by_plan.setdefault(f"plan{i % plans:02d}", []).append(source)
    for name, plan_sources in by_plan.items():
        plan = {
            "name": name,
            "owner": "sre@example.com",
            "reviewed_on": datetime.now(UTC).date().isoformat(),
            # Well above the interval: an RPO breach would make a backup due before its slot.
            "targets": {"rpo": f"{int(interval.total_seconds() * 3)}s", "rto": "1h"},
            "schedule": {"every": every, "jitter": jitter},
            "storage": {"regions": ["a", "b"], "min_copies": 2},
            "sources": plan_sources,
        }
        (root / "plans" / f"{name}.yaml").write_text(yaml.safe_dump(plan))
    port = _free_port()
    config: dict[str, Any] = {
        "state_dir": str(root / "state"),
        "plans": ["plans/*.yaml"],
        "keys": {"source": "env", "name": "DRD_KEYS"},
        "api": {"listen": f"{HOST}:{port}", "public_read": True},
        "regions": [{"name": r, "url": f"file:{root / 'regions' / r}"} for r in ("a", "b")],
        # JSON lines: every record's time to the millisecond, and its job's plan and source.
        "log": {"format": "json", "level": "info"},
    }
    if concurrency is not None:
        config["daemon"] = {"max_concurrent_jobs": concurrency}
    path = root / "drd.yaml"
    path.write_text(yaml.safe_dump(config))
    return Estate(
        config=path,
        state_dir=root / "state",
        port=port,
        every=interval,
        jitter=spread,
        concurrency=concurrency or DaemonConfig().max_concurrent_jobs,
        plans={name: [s["name"] for s in ss] for name, ss in by_plan.items()},
    )


# --------------------------------------------------------------------------------------------
# Watching the process


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    rss: int  # bytes
    hwm: int  # bytes
    cpu: float  # utime+stime, seconds


def read_sample(pid: int) -> Sample | None:
    """The process's memory and CPU now (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    memory = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(rest.split()[0]) * 1024
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat.rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return Sample(time.time(), memory.get("VmRSS", 0), memory.get("VmHWM", 0), cpu)


class Sampler:
    """/proc samples of one process every `every` seconds, on a thread of this process."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid, self.every = pid, every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = read_sample(self.pid)
            if sample is None:
                return
            self.samples.append(sample)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=10) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


@dataclass
class DaemonProcess:
    """One `drd run` of the estate, its JSON log in `log_path`."""

    estate: Estate
    key: str
    log_path: Path
    sample_every: float
    exec_at: float = 0.0
    ready_at: float | None = None
    proc: subprocess.Popen[bytes] | None = None
    sampler: Sampler | None = None
    exit_code: int | None = None

    def start(self, timeout: float) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRD_")}
        env.update(DRD_KEYS=self.key, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1")
        command = [sys.executable, "-m", "drd.cli.main", "--config", str(self.estate.config)]
        with self.log_path.open("ab") as log:
            self.exec_at = time.time()
            self.proc = subprocess.Popen(
                [*command, "run"], env=env, cwd=self.estate.config.parent, stdout=log, stderr=log
            )
        self.sampler = Sampler(self.proc.pid, self.sample_every)
        base = f"http://{HOST}:{self.estate.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                if _get(base + "/readyz")[0] == 200:
                    self.ready_at = time.time()
                    return self
            except OSError:
                pass  # not listening yet
            time.sleep(0.02)
        raise RuntimeError(f"drd run: /readyz not 200 within {timeout:.0f} s; see {self.log_path}")

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"drd run exited {self.proc.returncode}: {tail}")

    def status(self) -> dict[str, Any]:
        code, body = _get(f"http://{HOST}:{self.estate.port}/api/v1/status")
        if code != 200:
            raise RuntimeError(f"/api/v1/status answered {code}: {body[:500]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code (the daemon shuts down within its grace)."""
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sampler is not None:
            self.sampler.stop()
        self.exit_code = self.proc.returncode
        return self.exit_code


# --------------------------------------------------------------------------------------------
# What the daemon recorded


@dataclass(frozen=True)
class Job:
    kind: str
    plan: str
    source: str
    started_at: float  # when the scheduler started its task (history)
    finished_at: float | None
    result: str | None
    backup_id: str | None


def read_jobs(state_dir: Path) -> list[Job]:
    """The job history, opened read-only: the daemon owns the file."""
    path = state_dir / "history.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT kind, plan, source, started_at, finished_at, result, backup_id FROM jobs "
            "ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [Job(*row) for row in rows]


@dataclass(frozen=True)
class LogEvents:
    #: (plan, source) -> when its first backup was due, as the daemon logged it at start
    first_due: dict[tuple[str, str], float] = field(default_factory=dict)
    #: backup id -> (plan, source, when it started)
    backup_starts: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    #: (plan, source, tested backup id) -> when each of its restore tests started
    test_starts: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def read_log(path: Path) -> LogEvents:
    events = LogEvents()
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        message, at = str(record.get("message", "")), _epoch(record["time"])
        plan, source, backup_id = record.get("plan"), record.get("source"), record.get("backup_id")
        if ": next backup due " in message and record.get("logger") == "drd.daemon.service":
            ref, _, due = message.partition(": next backup due ")
            ref_plan, _, ref_source = ref.partition("/")
            events.first_due.setdefault((ref_plan, ref_source), _epoch(due))
        elif record.get("logger") == "drd.pipeline.backup" and ": starting (" in message:
            events.backup_starts[str(backup_id)] = (str(plan), str(source), at)
        elif message.startswith("restore test ") and "): starting" in message:
            key = (str(plan), str(source), str(backup_id))
            events.test_starts.setdefault(key, []).append(at)
    return events


# --------------------------------------------------------------------------------------------
# Analysis


@dataclass(frozen=True)
class Interval:
    start: float
    end: float


def busy_intervals(jobs: Iterable[Job], events: LogEvents) -> list[Interval]:
    """When each backup and restore test held a job slot: from its `starting` line to the end
    the history records (jobs without both are left out: they never got a slot)."""
    out = []
    for job in jobs:
        if job.finished_at is None or job.backup_id is None:
            continue
        if job.kind == "backup":
            started = events.backup_starts.get(job.backup_id)
            if started is not None:
                out.append(Interval(started[2], job.finished_at))
        elif job.kind == "restore-test":
            starts = events.test_starts.get((job.plan, job.source, job.backup_id), [])
            inside = [s for s in starts if job.started_at <= s <= job.finished_at]
            if inside:
                out.append(Interval(inside[0], job.finished_at))
    return out


@dataclass(frozen=True)
class FreeTime:
    total: float
    longest: float  # the longest stretch without a break


def free_slot_time(busy: Sequence[Interval], start: float, end: float, slots: int) -> FreeTime:
    """How long within [start, end] fewer than `slots` jobs held a slot: in all, and the
    longest stretch. Every hand-over of a slot leaves a gap of a few milliseconds (the next
    job takes its source lock before its `starting` line), so a backup behind a long queue
    adds up many of them; a scheduler that leaves a slot unused shows as one long stretch."""
    if end <= start:
        return FreeTime(0.0, 0.0)
    edges: list[tuple[float, int]] = []
    for iv in busy:
        lo, hi = max(iv.start, start), min(iv.end, end)
        if lo < hi:
            edges += [(lo, 1), (hi, -1)]
    edges.sort()
    total = longest = stretch = 0.0
    running, cursor = 0, start
    for at, delta in [*edges, (end, 0)]:
        if running < slots:
            total += at - cursor
            stretch += at - cursor
        running += delta
        cursor = at
        if running >= slots:
            longest, stretch = max(longest, stretch), 0.0
    return FreeTime(total, max(longest, stretch))


def most_at_once(busy: Sequence[Interval]) -> int:
    edges = sorted([(iv.start, 1) for iv in busy] + [(iv.end, -1) for iv in busy])
    running = peak = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


@dataclass(frozen=True)
class Backup:
    plan: str
    source: str
    slot: float
    scheduled: float  # the scheduler started its task
    started: float  # it started: a job slot was its
    next_slot: float
    free: FreeTime  # while it waited, a job slot was free this long
    first: bool

    @property
    def lateness(self) -> float:
        return self.started - self.slot


def backups_against_slots(
    jobs: Sequence[Job], events: LogEvents, estate: Estate, busy: Sequence[Interval]
) -> list[Backup]:
    from drd.daemon.schedule import Schedule, slot_after

    schedule = Schedule(every=estate.every, jitter=estate.jitter)

    def after(at: float, seed: str) -> float:
        return slot_after(schedule, datetime.fromtimestamp(at, UTC), seed).timestamp()

    out: list[Backup] = []
    previous: dict[tuple[str, str], float] = {}
    done = [j for j in jobs if j.kind == "backup" and j.result == "success" and j.backup_id]
    for job in sorted(done, key=lambda j: j.started_at):
        assert job.backup_id is not None
        start = events.backup_starts.get(job.backup_id)
        ref = (job.plan, job.source)
        if start is None:
            raise RuntimeError(f"backup {job.backup_id} of {ref} has no 'starting' log line")
        seed = f"{job.plan}/{job.source}"
        first = ref not in previous
        slot = events.first_due[ref] if first else after(previous[ref], seed)
        started = start[2]
        out.append(
            Backup(
                plan=job.plan,
                source=job.source,
                slot=slot,
                scheduled=job.started_at,
                started=started,
                next_slot=after(slot, seed),
                free=free_slot_time(busy, slot, started, estate.concurrency),
                first=first,
            )
        )
        previous[ref] = started
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: a value that was measured."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


# --------------------------------------------------------------------------------------------
# The run


def _wait(predicate: Callable[[], bool], timeout: float, what: str, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.alive()
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _settled(state_dir: Path, sources: int, backups_each: int, quiet: float) -> bool:
    """Every source has `backups_each` successful backups and a restore test, nothing runs,
    and the last job ended `quiet` seconds ago."""
    jobs = read_jobs(state_dir)
    if any(j.finished_at is None for j in jobs):
        return False
    backups: dict[tuple[str, str], int] = {}
    tested = set()
    for job in jobs:
        if job.kind == "backup" and job.result == "success":
            backups[(job.plan, job.source)] = backups.get((job.plan, job.source), 0) + 1
        elif job.kind == "restore-test":
            tested.add((job.plan, job.source))
    if len(tested) < sources or sum(1 for n in backups.values() if n >= backups_each) < sources:
        return False
    last = max((j.finished_at or 0.0) for j in jobs)
    return time.time() - last >= quiet


def _next_due(status: dict[str, Any]) -> float:
    """The earliest time any backup or restore test is due, from /api/v1/status."""
    dues = []
    for plan in status["plans"].values():
        for source in plan["sources"].values():
            for due in (source.get("next_due"), source["restore_test"].get("next_due")):
                if due:
                    dues.append(_epoch(due))
    return min(dues) if dues else float("inf")


@dataclass
class IdleWindow:
    start: float
    end: float
    cpu_seconds: float
    rss: list[int]
    jobs_inside: int

    @property
    def percent(self) -> float:
        return 100 * self.cpu_seconds / (self.end - self.start)


def measure_idle(daemon: DaemonProcess, seconds: float) -> IdleWindow:
    assert daemon.proc is not None and daemon.sampler is not None
    first = read_sample(daemon.proc.pid)
    time.sleep(seconds)
    last = read_sample(daemon.proc.pid)
    if first is None or last is None:
        daemon.alive()
        raise RuntimeError("drd run vanished during the idle window")
    jobs = read_jobs(daemon.estate.state_dir)
    inside = [j for j in jobs if j.started_at <= last.at and (j.finished_at or last.at) >= first.at]
    rss = [s.rss for s in daemon.sampler.samples if first.at <= s.at <= last.at]
    return IdleWindow(first.at, last.at, last.cpu - first.cpu, rss, len(inside))


@dataclass(frozen=True)
class Options:
    sources: int
    plans: int
    every: str
    jitter: str
    concurrency: int | None
    rounds: int
    idle: float
    settle: float
    sample: float
    tolerance: float
    timeout: float


def run(opts: Options, work: Path) -> dict[str, Any]:
    from drd import crypto

    key = crypto.generate_key()
    estate = build_estate(
        work,
        sources=opts.sources,
        plans=opts.plans,
        every=opts.every,
        jitter=opts.jitter,
        concurrency=opts.concurrency,
    )
    log_path = work / "daemon.log"
    daemon = DaemonProcess(estate, key, log_path, opts.sample)
    idle: IdleWindow | None = None
    settled_at: float | None = None  # the start burst is over
    try:
        daemon.start(opts.timeout)
        for backups_each in range(1, opts.rounds + 2):
            _wait(
                functools.partial(
                    _settled, estate.state_dir, estate.sources, backups_each, opts.settle
                ),
                opts.timeout,
                f"{backups_each} backup(s) of every source and no job running",
                daemon,
            )
            settled_at = settled_at or time.time()
            if idle is None and _next_due(daemon.status()) - time.time() > opts.idle + 2:
                idle = measure_idle(daemon, opts.idle)
                if idle.jobs_inside:
                    idle = None  # a job ran after all: not an idle window
    finally:
        exit_code = daemon.stop()
    samples = daemon.sampler.samples if daemon.sampler else []
    jobs = read_jobs(estate.state_dir)
    events = read_log(log_path)

    restart = DaemonProcess(estate, key, work / "daemon-restart.log", opts.sample)
    try:
        restart.start(opts.timeout)
    finally:
        restart.stop()
    assert restart.ready_at is not None and daemon.ready_at is not None

    busy = busy_intervals(jobs, events)
    backups = backups_against_slots(jobs, events, estate, busy)
    first_starts = [b.started for b in backups if b.first]
    late = [b for b in backups if b.free.longest > opts.tolerance]
    # A round that does not fit in the interval at this concurrency: capacity, not lateness.
    overran = [b for b in backups if not b.first and b.started >= b.next_slot]
    failed = [j for j in jobs if j.result not in ("success", None)]
    restore_tests = [j for j in jobs if j.kind == "restore-test"]
    steady = statistics.median(idle.rss) if idle and idle.rss else None
    peak = max((s.hwm for s in samples), default=0)
    after_burst = [s for s in samples if settled_at is not None and s.at >= settled_at]
    steady_cpu = None
    if len(after_burst) >= 2 and after_burst[-1].at > after_burst[0].at:
        first_s, last_s = after_burst[0], after_burst[-1]
        steady_cpu = 100 * (last_s.cpu - first_s.cpu) / (last_s.at - first_s.at)
    return {
        "sources": estate.sources,
        "plans": len(estate.plans),
        "every_seconds": estate.every.total_seconds(),
        "jitter_seconds": estate.jitter.total_seconds(),
        "concurrency": estate.concurrency,
        "rounds": opts.rounds,
        "tolerance_seconds": opts.tolerance,
        "exit_code": exit_code,
        "backups": len(backups),
        "restore_tests": len(restore_tests),
        "failed_jobs": [f"{j.kind} {j.plan}/{j.source}: {j.result}" for j in failed],
        "start": {
            "ready_seconds": round(daemon.ready_at - daemon.exec_at, 3),
            "first_backup_seconds": round(min(first_starts) - daemon.exec_at, 3),
            "all_first_backups_seconds": round(max(first_starts) - daemon.exec_at, 3),
            "restart_ready_seconds": round(restart.ready_at - restart.exec_at, 3),
            "restart_backups_in_regions": len(backups),
        },
        "memory": {
            "peak_bytes": peak,
            "steady_bytes": steady,
            "restart_peak_bytes": max((s.hwm for s in restart.sampler.samples), default=0)
            if restart.sampler
            else 0,
        },
        "idle": None
        if idle is None
        else {
            "seconds": round(idle.end - idle.start, 2),
            "cpu_seconds": round(idle.cpu_seconds, 3),
            "percent_of_one_core": round(idle.percent, 3),
            # /proc counts CPU time in clock ticks: less than one is 0 here.
            "tick_seconds": 1 / CLOCK_TICKS,
        },
        "cpu_after_start_percent": None if steady_cpu is None else round(steady_cpu, 3),
        "lateness": {
            "first": spread([b.lateness for b in backups if b.first]),
            "scheduled": spread([b.lateness for b in backups if not b.first]),
            "scheduler_delay": spread([b.scheduled - b.slot for b in backups]),
            "free_slot_total": spread([b.free.total for b in backups]),
            "free_slot_longest_first": spread([b.free.longest for b in backups if b.first]),
            "free_slot_longest_scheduled": spread([b.free.longest for b in backups if not b.first]),
            "late": [f"{b.plan}/{b.source}" for b in late],
            "after_next_slot": [f"{b.plan}/{b.source}" for b in overran],
            "most_jobs_at_once": most_at_once(busy),
        },
        "targets": targets(idle, peak, late, len(backups), estate.concurrency),
    }


def targets(
    idle: IdleWindow | None, peak: int, late: Sequence[Backup], backups: int, concurrency: int
) -> list[dict[str, Any]]:
    cpu: dict[str, Any] = {
        "target": f"idle daemon < {TARGET_IDLE_CPU_PERCENT:g} % of one core",
        "measured": "no idle window between rounds" if idle is None else f"{idle.percent:.2f} %",
        "met": None if idle is None else idle.percent < TARGET_IDLE_CPU_PERCENT,
    }
    memory = {
        "target": f"memory < {TARGET_MEMORY_BYTES // MB} MB",
        "measured": f"peak {peak / MB:.0f} MB ({peak / MIB:.0f} MiB)",
        "met": 0 < peak < TARGET_MEMORY_BYTES,
    }
    lateness = {
        "target": f"no due backup starting later than its slot allows at concurrency {concurrency}",
        "measured": f"{len(late)} of {backups} backups late",
        "met": backups > 0 and not late,
    }
    return [cpu, memory, lateness]


# --------------------------------------------------------------------------------------------
# Output


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f} MiB"


def _spread(values: dict[str, float]) -> str:
    if not values:
        return "-"
    return f"{values['p50']:.2f} / {values['p95']:.2f} / {values['max']:.2f} s"


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The table, measure by measure (the smoke test checks every name is there)."""
    start, memory, idle, late = (
        result["start"],
        result["memory"],
        result["idle"],
        result["lateness"],
    )
    return [
        ("start: exec -> /readyz 200", _s(start["ready_seconds"])),
        ("start: exec -> first backup started", _s(start["first_backup_seconds"])),
        (
            "start: exec -> every source's first backup started",
            _s(start["all_first_backups_seconds"]),
        ),
        (
            f"restart ({start['restart_backups_in_regions']} backups in the regions): "
            "exec -> /readyz 200",
            _s(start["restart_ready_seconds"]),
        ),
        ("memory: peak RSS (VmHWM)", _mib(memory["peak_bytes"])),
        ("memory: steady RSS (median over the idle window)", _mib(memory["steady_bytes"])),
        ("memory: peak RSS of the restart", _mib(memory["restart_peak_bytes"])),
        (
            "CPU when idle (utime+stime over the window, % of one core)",
            "-"
            if idle is None
            else f"{idle['percent_of_one_core']:.2f} % ({idle['cpu_seconds']:.2f} s in "
            f"{idle['seconds']:.0f} s, counted in {idle['tick_seconds']:g} s ticks)",
        ),
        (
            "CPU from the end of the start burst to SIGTERM (scheduled rounds included)",
            "-"
            if result["cpu_after_start_percent"] is None
            else f"{result['cpu_after_start_percent']:.2f} % of one core",
        ),
        ("lateness, first backups (all due at start): p50 / p95 / max", _spread(late["first"])),
        ("lateness, scheduled slots: p50 / p95 / max", _spread(late["scheduled"])),
        (
            "scheduler delay (slot -> task started): p50 / p95 / max",
            _spread(late["scheduler_delay"]),
        ),
        ("waited with a job slot free, in all: p50 / p95 / max", _spread(late["free_slot_total"])),
        (
            "waited with a job slot free, longest stretch, first backups: p50 / p95 / max",
            _spread(late["free_slot_longest_first"]),
        ),
        (
            "waited with a job slot free, longest stretch, scheduled slots: p50 / p95 / max",
            _spread(late["free_slot_longest_scheduled"]),
        ),
        (
            "jobs holding a slot at once, at most",
            f"{late['most_jobs_at_once']} (concurrency {result['concurrency']})",
        ),
        ("backups later than their slot allows", f"{len(late['late'])} of {result['backups']}"),
        (
            "scheduled backups started after their next slot",
            f"{len(late['after_next_slot'])} of {result['backups'] - result['sources']}",
        ),
    ]


def _met(value: bool | None) -> str:
    return "not measured" if value is None else "met" if value else "**missed**"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# drd daemon at scale",
        "",
        "The tables are generated by `python -m bench.daemon_scale` (its docstring says the "
        "method); what follows them, if anything, was written after the run.",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores",
        f"- one `drd run`: {result['sources']} sources (files trees and SQLite files, alternately) "
        f"in {result['plans']} plans, two local-directory regions, every "
        f"{result['every_seconds']:g} s with {result['jitter_seconds']:g} s jitter, "
        f"concurrency {result['concurrency']} (`daemon.max_concurrent_jobs`)",
        f"- {result['backups']} backups and {result['restore_tests']} restore tests "
        f"({result['rounds']} scheduled rounds after the first backups); failed jobs: "
        f"{len(result['failed_jobs'])}; exit code after SIGTERM: {result['exit_code']}",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows(result)),
        "",
        "## Targets (issue 19)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['measured']} | {_met(t['met'])} |" for t in result["targets"]),
        "",
        "A backup is later than its slot allows when, while it waited, a job slot stayed free "
        f"for more than {result['tolerance_seconds']:g} s at a stretch (each hand-over of a "
        "slot leaves a gap of milliseconds: the next job takes its source lock first).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.daemon_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--every", default="3m", help="the plans' schedule interval (drd syntax)")
    parser.add_argument("--jitter", default="15s", help="the plans' schedule jitter")
    parser.add_argument("--concurrency", type=int, default=None, help="default: drd's own")
    parser.add_argument("--rounds", type=int, default=2, help="scheduled rounds to watch")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="quiet before it, seconds")
    parser.add_argument("--sample", type=float, default=0.5, help="/proc sampling, seconds")
    parser.add_argument("--tolerance", type=float, default=1.0, help="free-slot wait allowed")
    parser.add_argument("--timeout", type=float, default=1200.0, help="for each phase, seconds")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "DAEMON_SCALE.md")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this new directory and keep it (logs)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for name in ("sources", "plans", "rounds"):
        if getattr(args, name) < (0 if name == "rounds" else 1):
            parser.error(f"--{name} must be at least {0 if name == 'rounds' else 1}")
    if args.plans > args.sources:
        parser.error("--plans must not exceed --sources (every plan needs a source)")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    for name in ("idle", "settle", "sample", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be more than 0 seconds")
    if args.tolerance < 0:
        parser.error("--tolerance must not be negative")
    from drd.durations import parse_duration

    durations = {}
    for name in ("every", "jitter"):
        try:
            durations[name] = parse_duration(getattr(args, name))
        except ValueError as exc:
            parser.error(f"--{name}: {exc}")
    if durations["every"] <= timedelta(0):
        parser.error("--every must be more than 0")
    if not timedelta(0) <= durations["jitter"] < durations["every"]:
        parser.error("--jitter must be at least 0 and shorter than --every")
    opts = Options(
        sources=args.sources,
        plans=args.plans,
        every=args.every,
        jitter=args.jitter,
        concurrency=args.concurrency,
        rounds=args.rounds,
        idle=args.idle,
        settle=args.settle,
        sample=args.sample,
        tolerance=args.tolerance,
        timeout=args.timeout,
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a new one: an old estate would change what is measured
        result = run(opts, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="drd-bench-daemon-") as tmp:
            result = run(opts, Path(tmp))
    args.out.write_text(markdown(result))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
