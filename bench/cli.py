"""`python -m bench`: the whole benchmark in one run.

1. Make sure the peers are installed (Debian packages) and the database exists (generated once).
2. Repetitions: every tool's backup, then every tool's restore, interleaved; the order is
   rotated each repetition. Before each measured run: CHECKPOINT, sync, and a short wait for
   the machine to be idle (other people's test runs share these 2 cores).
3. Peak RSS of drd at other database sizes; throughput of drd's byte transforms alone.
4. bench/RESULTS.md and bench/results.json.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.dataset import PG_BIN, Dataset, admin_dsn, ensure_dataset
from bench.measure import (
    GNU_TIME,
    ForeignCpu,
    Measurement,
    Stage,
    run_pipeline,
)
from bench.stages import measure_stages
from bench.tools import (
    ALL_TOOLS,
    DrdGcs,
    DrdLocal,
    DrdPhysical,
    Floor,
    PhysicalCluster,
    RunContext,
    Tool,
    restore_toast_compression,
)

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_TOOLS = ",".join(ALL_TOOLS)
PEER_PACKAGES = {"gpg": ("gpg", "gnupg"), "restic": ("restic", "restic")}
PEER_PACKAGES["pgbackrest"] = ("pgbackrest", "pgbackrest")
PEER_PACKAGES["floor-zstd"] = ("zstd", "zstd")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size",
        type=int,
        default=_env_int("BENCH_SIZE", 1024),
        help="database size in MB on disk (env BENCH_SIZE; default 1024)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=_env_int("BENCH_REPS", 3),
        help="repetitions (env BENCH_REPS; default 3)",
    )
    p.add_argument(
        "--tools",
        default=os.environ.get("BENCH_TOOLS", DEFAULT_TOOLS),
        help=f"comma-separated subset of {DEFAULT_TOOLS} (env BENCH_TOOLS)",
    )
    p.add_argument(
        "--rss-sizes",
        default=os.environ.get("BENCH_RSS_SIZES", "256,2048"),
        help="other database sizes (MB) at which drd's peak RSS is measured; '' for none",
    )
    p.add_argument("--no-stages", action="store_true", help="skip the transform throughput")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install peers")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="max seconds to wait for idle")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeat a run disturbed by other processes' CPU use up to this many times",
    )
    p.add_argument("--work", type=Path, default=BENCH_DIR / "out", help="scratch directory")
    p.add_argument("--data", type=Path, default=BENCH_DIR / "data", help="kept across runs")
    p.add_argument("--results-md", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--results-json", type=Path, default=BENCH_DIR / "results.json")
    args = p.parse_args(argv)
    args.tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tool_names) - set(ALL_TOOLS)
    if unknown:
        p.error(f"unknown tools: {', '.join(sorted(unknown))}")
    args.rss_size_list = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    args.work, args.data = args.work.resolve(), args.data.resolve()
    if args.reps < 1 or args.size < 1:
        p.error("--reps and --size must be positive")
    return args


# ------------------------------------------------------------------------------ machine


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    busy = sum(fields[:8]) - idle
    return busy / tick, idle / tick


def wait_until_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most `max_wait` s) until the machine's cores were busy less than `threshold`
    of the time for a whole second; returns the last busy fraction seen."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    while True:
        b0, i0 = cpu_busy_seconds()
        time.sleep(0.5)
        b1, i1 = cpu_busy_seconds()
        total = (b1 - b0) + (i1 - i0)
        fraction = (b1 - b0) / total if total > 0 else 0.0
        quiet = quiet + 1 if fraction < threshold else 0
        if quiet >= 2 or time.monotonic() >= deadline:
            return fraction


def machine_info() -> dict[str, Any]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cores": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": pages / 1024**3,
        "kernel": f"Linux {platform.release()}",
    }


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "not installed"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def versions() -> dict[str, str]:
    import cryptography
    import zstandard

    found = {
        "python": platform.python_version(),
        "PostgreSQL": _first_line([f"{PG_BIN}/pg_dump", "--version"])
        .partition("(PostgreSQL) ")[2]
        .split(" ")[0],
        "zstandard": zstandard.__version__,
        "cryptography": cryptography.__version__,
    }
    if shutil.which("gpg"):
        found["gpg"] = _first_line(["gpg", "--version"]).rsplit(" ", 1)[-1]
    if shutil.which("restic"):
        found["restic"] = _first_line(["restic", "version"]).split()[1]
    if shutil.which("pgbackrest"):
        found["pgBackRest"] = _first_line(["pgbackrest", "version"]).rsplit(" ", 1)[-1]
    commit = _first_line(["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", "drd", "strategies"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    found["drd"] = commit + (" + uncommitted changes" if dirty else "")
    return found


def install_peers(names: Sequence[str]) -> None:
    """apt-get install the peers that are missing (root only); quietly skip otherwise."""
    missing = [] if os.path.exists(GNU_TIME) else ["time"]  # measures peak RSS
    missing += [
        PEER_PACKAGES[n][1]
        for n in names
        if n in PEER_PACKAGES and not shutil.which(PEER_PACKAGES[n][0])
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log.warning("not installing %s: needs root and apt-get", ", ".join(missing))
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    log.info("installing %s from Debian's packages", ", ".join(missing))
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log.warning("apt-get install %s failed: %s", missing, result.stderr[-500:])


# ------------------------------------------------------------------------------ running


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}
        self.extra_checkpoint: list[str] = []

    def settle(self) -> float:
        """Untimed, before every measured run: flush dirty buffers, wait for an idle machine."""
        for dsn in (admin_dsn(), *self.extra_checkpoint):
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(dsn, autocommit=True) as conn,
            ):
                conn.execute("CHECKPOINT")
        os.sync()
        return wait_until_idle(self.args.quiet_wait)

    def measure(
        self, tool: Tool, op: str, rep: int, fn: Callable[[int], Measurement]
    ) -> dict[str, Any]:
        """One measured run; repeated (up to --retries times) when processes outside the
        benchmark used a noticeable amount of CPU meanwhile (this machine is shared)."""
        record: dict[str, Any] = {"tool": tool.name, "op": op, "rep": rep, "error": None}
        for attempt in range(1 + self.args.retries):
            if attempt:
                # Back to where the first attempt started: no restored target, a fresh repo.
                if op == "restore":
                    tool.drop_target(rep)
                else:
                    tool.before_rep(rep)
            background = self.settle()
            meter = ForeignCpu(markers=(str(self.args.work), str(self.args.data)))
            meter.start()
            busy0, _ = cpu_busy_seconds()
            try:
                m = fn(rep)
            except Exception as exc:
                meter.stop()
                record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                log.error("%s %s rep %d failed: %s", tool.name, op, rep + 1, record["error"])
                self.runs.append(record)
                return record
            busy1, _ = cpu_busy_seconds()
            foreign = meter.stop()
            disturbed = foreign > max(0.5, 0.1 * m.wall_s)
            if disturbed and attempt < self.args.retries:
                log.info(
                    "rep %d  %-10s %-7s %7.2f s wall: disturbed (other processes used %.1f s "
                    "of CPU meanwhile), again",
                    rep + 1,
                    tool.name,
                    op,
                    m.wall_s,
                    foreign,
                )
                continue
            break
        record.update(
            wall_s=m.wall_s,
            cpu_s=m.cpu_s,
            machine_cpu_s=busy1 - busy0,
            foreign_cpu_s=foreign,
            disturbed=disturbed,
            attempts=attempt + 1,
            background_busy_before=background,
            peak_rss_tool_bytes=m.peak_rss("tool"),
            peak_rss_pg_bytes=m.peak_rss("pg"),
            stored_bytes=m.stored_bytes,
            procs=[
                {
                    "name": p.name,
                    "role": p.role,
                    "user_s": p.user_s,
                    "sys_s": p.sys_s,
                    "maxrss_bytes": p.maxrss_bytes,
                }
                for p in m.procs
            ],
            notes=m.notes,
        )
        rss = m.peak_rss("tool")
        log.info(
            "rep %d  %-10s %-7s %7.2f s wall  %6.2f s CPU  %5s MiB peak%s%s",
            rep + 1,
            tool.name,
            op,
            m.wall_s,
            m.cpu_s,
            "-" if rss is None else f"{rss / 2**20:.0f}",
            "" if m.stored_bytes is None else f"  {m.stored_bytes / 1e6:,.0f} MB stored",
            f"  (disturbed: {foreign:.1f} s foreign CPU)" if disturbed else "",
        )
        self.runs.append(record)
        return record

    def setup_tools(self, ctx: RunContext, names: Sequence[str]) -> list[Tool]:
        ready: list[Tool] = []
        for name in names:
            tool = ALL_TOOLS[name](ctx)
            reason = tool.unavailable()
            if reason is None:
                try:
                    log.info("setting up %s", name)
                    tool.setup()
                except Exception as exc:
                    reason = f"setup failed: {type(exc).__name__}: {exc}"[:1000]
                    with contextlib.suppress(Exception):
                        tool.teardown()
            if reason is not None:
                log.warning("%s not measured: %s", name, reason)
                self.unavailable[name] = reason
                continue
            physical = ctx.shared.get("physical-cluster")
            if isinstance(physical, PhysicalCluster):
                dsn = physical.cluster.dsn()
                if dsn not in self.extra_checkpoint:
                    self.extra_checkpoint.append(dsn)
            ready.append(tool)
        return ready

    def repetitions(self, tools: Sequence[Tool]) -> None:
        for rep in range(self.args.reps):
            shift = rep % len(tools)
            order = [*tools[shift:], *tools[:shift]]
            backed_up: list[Tool] = []
            for tool in order:
                try:
                    tool.before_rep(rep)
                except Exception as exc:
                    error = f"preparing the repetition failed: {type(exc).__name__}: {exc}"
                    log.error("%s rep %d: %s", tool.name, rep, error)
                    self.runs.append(
                        {"tool": tool.name, "op": "backup", "rep": rep, "error": error}
                    )
                    continue
                if self.measure(tool, "backup", rep, tool.backup)["error"] is None:
                    backed_up.append(tool)
            self.warm_up_restore(tools, rep)
            for tool in backed_up:
                record = self.measure(tool, "restore", rep, tool.restore)
                try:
                    if record["error"] is None:
                        tool.verify(rep)
                except Exception as exc:
                    record["error"] = f"restored data wrong: {exc}"
                    log.error("%s restore rep %d: %s", tool.name, rep, record["error"])
                finally:
                    with contextlib.suppress(Exception):
                        tool.drop_target(rep)
            for tool in order:
                tool.after_rep(rep)

    def warm_up_restore(self, tools: Sequence[Tool], rep: int) -> None:
        """One untimed restore before each repetition's timed ones. After the backups the
        server has few WAL segments left to recycle, so the first 1+ GB restore also creates
        and zero-fills new ones; without this, whichever tool restores first pays for it."""
        floor = next((t for t in tools if isinstance(t, Floor)), None)
        if floor is None:
            return
        log.info("rep %d  warm-up restore (untimed)", rep + 1)
        try:
            self.settle()
            floor.restore(rep)
        except Exception as exc:
            log.warning("warm-up restore failed: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                floor.drop_target(rep)

    def memory_at(self, dataset: Dataset, work: Path, names: Sequence[str]) -> list[dict[str, Any]]:
        """drd's peak RSS for one backup and one restore of another database size."""
        ctx = RunContext(dataset, work, self.args.data, secrets.token_hex(4))
        found = []
        for cls in (DrdLocal, DrdGcs, DrdPhysical):
            if cls.name not in names:
                continue
            tool = cls(ctx)
            try:
                tool.setup()
                tool.before_rep(0)
                for op, fn in (("backup", tool.backup), ("restore", tool.restore)):
                    self.settle()
                    m = fn(0)
                    found.append(
                        {
                            "size_mb": dataset.size_mb,
                            "tool": tool.name,
                            "op": op,
                            "peak_rss_bytes": m.peak_rss("tool"),
                            "peak_rss_pg_bytes": m.peak_rss("pg"),
                            "wall_s": m.wall_s,
                        }
                    )
                    log.info(
                        "memory @ %d MB: %s %s peak %.0f MiB",
                        dataset.size_mb,
                        tool.name,
                        op,
                        (m.peak_rss("tool") or 0) / 2**20,
                    )
                tool.verify(0)
            finally:
                with contextlib.suppress(Exception):
                    tool.drop_target(0)
                tool.teardown()
        return found


def _dump_file(dataset: Dataset, work: Path) -> Path:
    path = work / "floor.dump"
    if not path.exists():
        run_pipeline(
            [Stage([f"{PG_BIN}/pg_dump", "-Fc", "-Z0", f"--dbname={dataset.dsn}"], "pg_dump")],
            stdout_path=path,
        )
    return path


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every teardown


def _compile_drd() -> None:
    """Measure drd as installed: a pip install compiles its bytecode, a source checkout under
    PYTHONDONTWRITEBYTECODE (as on CI machines) never does, and every drd command would pay
    for compiling the package again at start."""
    for package in ("drd", "strategies", "restore_tests"):
        compileall.compile_dir(BENCH_DIR.parent / package, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    started = time.monotonic()
    _compile_drd()
    if not args.no_install:
        install_peers(args.tool_names)
    dataset = ensure_dataset(args.size)
    token = secrets.token_hex(4)
    work = args.work / f"run-{token}"
    work.mkdir(parents=True)
    args.data.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    ctx = RunContext(dataset, work, args.data, token)
    tools: list[Tool] = []
    memory: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    try:
        tools = bench.setup_tools(ctx, args.tool_names)
        if tools:
            bench.repetitions(tools)
        dump = _dump_file(dataset, work)
        dump_bytes = dump.stat().st_size
        if not args.no_stages:
            log.info("measuring drd's byte transforms alone")
            stages = [s.as_dict() for s in measure_stages(dump)]
        dump.unlink()
        for tool in tools:
            tool.teardown()
        tools = []
        for size in args.rss_size_list:
            if size == args.size:
                continue
            other = ensure_dataset(size)
            other_work = work / f"size-{size}"
            other_work.mkdir()
            memory += bench.memory_at(other, other_work, args.tool_names)
            shutil.rmtree(other_work, ignore_errors=True)
    finally:
        for tool in tools:
            with contextlib.suppress(Exception):
                tool.teardown()
        shutil.rmtree(work, ignore_errors=True)

    # This size's own numbers join the other sizes' (the largest peak over the repetitions).
    for run in bench.runs:
        if run["error"] is None and run["tool"] in report.DRD_TOOLS:
            mine = [m for m in memory if m["size_mb"] == args.size and m["tool"] == run["tool"]]
            entry = next((m for m in mine if m["op"] == run["op"]), None)
            if entry is None:
                entry = {
                    "size_mb": args.size,
                    "tool": run["tool"],
                    "op": run["op"],
                    "peak_rss_bytes": 0,
                    "peak_rss_pg_bytes": 0,
                    "wall_s": run["wall_s"],
                }
                memory.append(entry)
            entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], run["peak_rss_tool_bytes"])
            entry["peak_rss_pg_bytes"] = max(
                entry["peak_rss_pg_bytes"] or 0, run["peak_rss_pg_bytes"] or 0
            )
    memory.sort(key=lambda m: (m["tool"], m["op"], m["size_mb"]))

    from drd.pipeline.backup import ZSTD_LEVEL

    summaries = report.summarize(bench.runs)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            **machine_info(),
            "versions": versions(),
            "reps": args.reps,
            "tools": args.tool_names,
            "drd_zstd_level": ZSTD_LEVEL,
            # Every logical restore's session, drd's and the others' (bench.tools.restore_env).
            "restore_toast_compression": restore_toast_compression() or "server default",
            "duration_s": round(time.monotonic() - started),
        },
        "dataset": {
            "name": dataset.name,
            "size_mb": dataset.size_mb,
            "on_disk_bytes": dataset.on_disk_bytes,
            "dump_bytes": dump_bytes,
        },
        "unavailable": bench.unavailable,
        "failures": [
            {k: r[k] for k in ("tool", "op", "rep", "error")} for r in bench.runs if r["error"]
        ],
        "summary": [s.as_dict() for s in summaries.values()],
        "targets": report.targets(summaries, memory),
        "memory": memory,
        "stages": stages,
        "runs": bench.runs,
    }
    args.results_json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    args.results_md.write_text(report.render_markdown(results))
    log.info(
        "wrote %s and %s in %.0f s",
        args.results_md,
        args.results_json,
        results["meta"]["duration_s"],
    )
    return 1 if results["failures"] else 0
