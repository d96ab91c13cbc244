"""Running measured commands: wall time, CPU time and peak RSS of every process.

How each number is taken, and why:

- CPU time: every stage of a pipeline is a direct child of the harness, reaped with wait4(),
  whose rusage covers that stage and every descendant it waited for. The harness's own
  RUSAGE_CHILDREN is never used: it would mix every run together.
- Peak RSS: ru_maxrss is NOT the process's own peak when a large process started it: Linux
  carries the parent's high-water mark over the exec (signal->maxrss), so every child of this
  Python harness would report at least the harness's RSS. Each stage therefore runs under GNU
  time (`/usr/bin/time -f %M`), a small C program that forks the real command: its %M is the
  command's own peak (and that of the descendants the command waited for).
- drd runs through bench.drd_probe, which reports the drd process's own RUSAGE_SELF (exact:
  it was exec'd by time's small child) and its children's CPU. The peak RSS of drd's own
  children (pg_dump, pg_restore) cannot come from ru_maxrss for the same inheritance reason:
  it is read from their /proc/PID/status VmHWM, the high-water mark of the program's own
  address space, sampled every 100 ms while they run (their memory is flat, so the last
  sample is their peak).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

GNU_TIME = "/usr/bin/time"


class CommandFailed(RuntimeError):
    pass


@dataclass
class ProcUsage:
    """One measured process (with the descendants it waited for)."""

    name: str
    user_s: float
    sys_s: float
    maxrss_bytes: int | None
    role: str = "tool"  # "tool": the tool measured; "pg": pg_dump / pg_restore / psql

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


@dataclass
class Measurement:
    wall_s: float = 0.0
    procs: list[ProcUsage] = field(default_factory=list)
    stored_bytes: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.procs)

    def peak_rss(self, role: str) -> int | None:
        values = [p.maxrss_bytes for p in self.procs if p.role == role and p.maxrss_bytes]
        return max(values) if values else None

    def add(self, other: Measurement) -> None:
        self.wall_s += other.wall_s
        self.procs.extend(other.procs)


@dataclass
class Stage:
    """One process of a pipeline: argv, a display name and a role (see ProcUsage)."""

    argv: Sequence[str]
    name: str
    role: str = "tool"
    env: Mapping[str, str] | None = None


class _DescendantPeaks(threading.Thread):
    """Samples VmHWM of the descendants of `root` whose command name is in `names`."""

    def __init__(self, root: int, names: Sequence[str], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.names = set(names)
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        known: dict[int, str] = {}
        last_scan = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            # Discovering processes is a /proc scan (~2 ms): often until the first one shows
            # up, then once a second.
            if now - last_scan >= (1.0 if self.peaks else 0.05):
                known.update(self._scan())
                last_scan = now
            for pid, name in list(known.items()):
                hwm = _vm_hwm(pid)
                if hwm is None:
                    del known[pid]
                elif hwm > self.peaks.get(pid, (name, 0))[1]:
                    self.peaks[pid] = (name, hwm)
            self._stop_event.wait(self.interval if self.peaks else 0.05)

    def _scan(self) -> dict[int, str]:
        parents: dict[int, tuple[int, str]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents[int(entry.name)] = (ppid, comm)
        found: dict[int, str] = {}
        for pid, (_, comm) in parents.items():
            if comm not in self.names:
                continue
            ancestor, hops = pid, 0
            while ancestor in parents and ancestor != self.root and hops < 20:
                ancestor, hops = parents[ancestor][0], hops + 1
            if ancestor == self.root:
                found[pid] = comm
        return found

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self) -> int | None:
        return max((kb for _, kb in self.peaks.values()), default=None)


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def run_pipeline(
    stages: Sequence[Stage],
    *,
    stdin_path: Path | None = None,
    stdout_path: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    watch: Sequence[str] = (),
) -> Measurement:
    """Run `a | b | c`, each stage a direct child (under GNU time, see the module docstring);
    the last stage's stdout goes to `stdout_path` or /dev/null. `watch`: command names of
    descendants whose peak RSS is sampled (notes["descendant_peak_rss"]).

    Raises CommandFailed (with the stderr tails) if any stage exits non-zero.
    """
    use_time = os.path.exists(GNU_TIME)
    logs: list[IO[bytes]] = []
    rss_files: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    first_in: IO[bytes] | None = open(stdin_path, "rb") if stdin_path else None  # noqa: SIM115
    last_out: IO[bytes] | None = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115
    sampler: _DescendantPeaks | None = None
    started = time.perf_counter()
    try:
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            stderr_log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
            logs.append(stderr_log)
            rss_file = tmp / f"rss-{i}"
            rss_files.append(rss_file)
            argv = list(stage.argv)
            if use_time:
                argv = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv]
            upstream = procs[-1].stdout if procs else None
            proc = subprocess.Popen(
                argv,
                stdin=upstream or first_in or subprocess.DEVNULL,
                stdout=(last_out or subprocess.DEVNULL) if last else subprocess.PIPE,
                stderr=stderr_log,
                env=dict(stage.env) if stage.env is not None else None,
                cwd=cwd,
                start_new_session=True,  # its own process group: a kill reaches the whole tree
            )
            if upstream is not None:
                upstream.close()  # the next stage holds the pipe now
            procs.append(proc)
        if watch:
            sampler = _DescendantPeaks(procs[0].pid, watch)
            sampler.start()
        usages, codes = _reap(procs, timeout)
        wall = time.perf_counter() - started
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in procs:
            if proc.returncode is None:
                _kill_group(proc)
                proc.wait()
        for handle in (first_in, last_out):
            if handle is not None:
                handle.close()
    try:
        failed = [
            f"{stage.name} exited {code}: {_tail(log)}"
            for stage, code, log in zip(stages, codes, logs, strict=True)
            if code != 0
        ]
        peaks = [_read_rss(path) if use_time else None for path in rss_files]
    finally:
        for log in logs:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise CommandFailed("; ".join(failed))
    m = Measurement(
        wall_s=wall,
        procs=[
            ProcUsage(stage.name, ru.ru_utime, ru.ru_stime, peak, stage.role)
            for stage, ru, peak in zip(stages, usages, peaks, strict=True)
        ],
    )
    if sampler is not None:
        m.notes["descendant_peak_rss"] = sampler.peak()
    return m


def _read_rss(path: Path) -> int | None:
    """GNU time's %M (KiB); a killed command's file starts with a 'Command ...' line."""
    try:
        lines = path.read_text().split()
        return int(lines[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _reap(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> tuple[list[Any], list[int]]:
    """wait4() every process (a watchdog kills them all after `timeout`)."""
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout):
            for proc in procs:
                if proc.returncode is None:
                    _kill_group(proc)

    threading.Thread(target=watchdog, daemon=True).start()
    usages: list[Any] = []
    codes: list[int] = []
    try:
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            usages.append(usage)
            codes.append(proc.returncode)
    finally:
        done.set()
    return usages, codes


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.seek(0)
    return log.read()[-limit:].decode(errors="replace").strip()


def run_drd(
    python: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    child_name: str,
    timeout: float = 3600.0,
) -> tuple[Measurement, str]:
    """Run the drd CLI through bench.drd_probe; returns the measurement and drd's stdout.

    procs: "drd" (the drd process itself: CPU and exact peak RSS) and `child_name` (the
    processes drd started: their CPU from drd's RUSAGE_CHILDREN, their peak RSS sampled).
    """
    with tempfile.TemporaryDirectory(prefix="drd-probe-") as tmp:
        report = Path(tmp) / "rusage.json"
        out = Path(tmp) / "stdout"
        stage = Stage([python, "-m", "bench.drd_probe", str(report), *args], "drd", env=env)
        measured = run_pipeline(
            [stage], stdout_path=out, cwd=cwd, timeout=timeout, watch=[child_name]
        )
        data = json.loads(report.read_text())
        stdout = out.read_text()
    me, children = data["self"], data["children"]
    measured.procs = [
        ProcUsage("drd", me["user_s"], me["sys_s"], me["maxrss_bytes"], "tool"),
        ProcUsage(
            child_name,
            children["user_s"],
            children["sys_s"],
            measured.notes.get("descendant_peak_rss"),
            "pg",
        ),
    ]
    return measured, stdout


def timed(fn: Callable[[], None]) -> Measurement:
    """A step done in the harness itself (a SQL statement, a readiness poll): wall time only."""
    started = time.perf_counter()
    fn()
    return Measurement(wall_s=time.perf_counter() - started)


def tree_size(path: Path) -> int:
    """Bytes in the regular files under `path` (what a tool stored there)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.stat(full).st_size
    return total


# ------------------------------------------------------------------------------ interference

# This machine is shared (other people's test runs): the CPU time that processes outside the
# benchmark use during a run is measured, so that a disturbed run can be repeated.


def _proc_cpu(pid: int, tick: float) -> tuple[float, int, str] | None:
    """(utime+stime seconds, ppid, comm) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[1]), comm


def _is_ours(pid: int, comm: str, parents: dict[int, int], me: int, markers: Sequence[str]) -> bool:
    ancestor, hops = pid, 0
    while ancestor > 1 and hops < 30:
        if ancestor == me:
            return True
        ancestor, hops = parents.get(ancestor, 0), hops + 1
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().decode(errors="replace")
    except OSError:
        return False
    # Daemons our runs start (gpg-agent, pgBackRest's archive-push under our cluster) name
    # our directories.
    if any(marker in title for marker in markers):
        return True
    if comm == "postgres":
        client = "127.0.0.1(" in title or "[local]" in title
        # Server processes (checkpointer, ...) and backends for our databases and clusters.
        return not client or "drd_bench" in title
    return False


class ForeignCpu(threading.Thread):
    """Samples every process's own CPU time (utime+stime) every `interval` seconds while a run
    goes on; foreign() is what processes outside the benchmark used meanwhile.

    Children's times (cutime) are not used: a process reaping a long-lived child would add all
    of that child's CPU at once. A foreign process that lives shorter than one interval is
    missed; processes seen for the first time count from zero (they started meanwhile).
    """

    def __init__(self, markers: Sequence[str] = (), interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self._markers = markers
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        self._me = os.getpid()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._ours: dict[int, bool] = {}
        self._stop_event = threading.Event()
        self._sample(initial=True)

    def _sample(self, initial: bool = False) -> None:
        raw: dict[int, tuple[float, int, str]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                found = _proc_cpu(int(entry.name), self._tick)
                if found is not None:
                    raw[int(entry.name)] = found
        parents = {pid: ppid for pid, (_, ppid, _) in raw.items()}
        for pid, (cpu, _, comm) in raw.items():
            if pid not in self._ours:
                self._ours[pid] = _is_ours(pid, comm, parents, self._me, self._markers)
                self._first[pid] = cpu if initial else 0.0
            self._last[pid] = cpu

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the foreign CPU seconds used since construction."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        self._sample()
        return sum(
            self._last[pid] - self._first[pid] for pid, ours in self._ours.items() if not ours
        )
