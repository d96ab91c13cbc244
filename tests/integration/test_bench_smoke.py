"""The benchmark harness (bench/, `make bench`) runs end to end: a tiny database, one
repetition, a subset of the tools. The benchmark itself never runs in `make test`; this only
proves that the harness works and writes its table and JSON with the expected rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _run_bench(
    tools: list[str], work: Path, data: Path, md: Path, js: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "bench"),
            # pgbench scale 1 plus a few MB of wide rows, generated once and kept
            *("--size", "24", "--reps", "1", "--tools", ",".join(tools)),
            *("--rss-sizes", "", "--no-install", "--quiet-wait", "0", "--retries", "0"),
            *("--work", str(work), "--data", str(data)),
            *("--results-md", str(md), "--results-json", str(js)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )


# ~10 s on a healthy machine; CI has run on hosts 15x slower than that, so the bound only
# guards against a hang.
@pytest.mark.timeout(900)
def test_bench_harness_runs_on_a_tiny_database(tmp_path: Path) -> None:
    optional = {"gpg": "gpg", "floor-zstd": "zstd"}  # tool -> the program it needs
    tools = ["floor", "floor-parallel", "drd-local"]
    tools += [t for t, prog in optional.items() if shutil.which(prog)]
    # The physical rows need a throwaway cluster run as postgres (~5 s on the tiny database).
    physical = os.geteuid() == 0 and shutil.which("runuser") is not None
    if physical:
        tools.append("drd-physical")
        if shutil.which("pgbackrest"):
            tools.append("pgbackrest")
    md, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    # The throwaway cluster lives under --data and runs as postgres, which cannot enter
    # pytest's private tmp_path.
    data = Path(tempfile.mkdtemp(prefix="drd-bench-smoke-"))
    data.chmod(0o711)
    try:
        proc = _run_bench(tools, tmp_path / "work", data, md, js)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(js.read_text())
    assert results["dataset"]["name"] == "drd_bench_24mb"
    assert results["dataset"]["dump_bytes"] > 1_000_000
    assert results["failures"] == []
    summary = {(s["tool"], s["op"]): s for s in results["summary"]}
    assert results["unavailable"] == {}
    assert set(summary) == {(t, op) for t in tools for op in ("backup", "restore")}
    for (tool, op), s in summary.items():
        assert s["wall_s"]["median"] > 0, (tool, op)
        assert s["cpu_s"]["median"] > 0, (tool, op)
        assert s["peak_rss_tool_bytes"] > 1_000_000, (tool, op)
        if op == "backup":
            assert s["stored_bytes_per_copy"] > 0, tool
    drd = summary[("drd-local", "backup")]
    assert drd["copies"] == 2
    # Compressed: drd stores far less than the uncompressed dump the floor writes.
    assert drd["stored_bytes_per_copy"] < summary[("floor", "backup")]["stored_bytes_per_copy"]
    # The parallel floor is a directory of one file per table, restored by N workers.
    parallel = summary[("floor-parallel", "backup")]
    assert parallel["stored_bytes_per_copy"] > 1_000_000
    cores = results["meta"]["cores"]
    jobs = {r["notes"]["jobs"] for r in results["runs"] if r["tool"] == "floor-parallel"}
    assert jobs == {cores}
    # Every logical restore ran with drd's TOAST setting (lz4: the local server offers it).
    assert results["meta"]["restore_toast_compression"] == "lz4"
    assert "TOAST compression lz4" in md.read_text()
    targets = {t["target"]: t for t in results["targets"]}
    expected = {
        "drd-local restore <= 0.60x the floor (same TOAST setting)",
        "drd-local restore no slower than floor-parallel",
        "drd peak RSS < 200 MB at every size",
    }
    if "floor-zstd" in tools:
        expected.add("drd-local backup <= 1.05x floor-zstd")
    assert set(targets) >= expected
    assert all(isinstance(t["met"], bool) for t in results["targets"])
    # A missed ratio target says why (what bounds it, whether the run can tell the rows apart).
    ratios = [t for t in results["targets"] if t["value"].endswith("'s time")]
    assert ratios and all(t["why"] for t in ratios if t["met"] is False)
    assert "| why not (when missed) |" in md.read_text()
    if physical:
        phys = summary[("drd-physical", "backup")]
        assert phys["copies"] == 2
        # A base backup holds the whole cluster, compressed: more than nothing, less than
        # the cluster's files.
        assert 0 < phys["stored_bytes_per_copy"] < results["dataset"]["on_disk_bytes"] + 64e6
        assert summary[("drd-physical", "restore")]["peak_rss_tool_bytes"] > 1_000_000
        if "pgbackrest" in tools:
            assert "drd-physical restore faster than pgbackrest's" in targets
            assert "drd-physical backup faster than pgbackrest's" in targets
    assert any(s["stage"].startswith("Sealer") for s in results["stages"])

    text = md.read_text()
    assert f"{results['meta']['cores']} cores" in text
    assert results["meta"]["date"] in text
    for heading in ("## Backup", "## Restore", "## Ratios", "## Targets"):
        assert heading in text
    for tool in tools:
        assert f"| {tool} |" in text
    assert "| drd-local | backup |" in text and "| drd-local | restore |" in text
    assert "floor-parallel |" in text.split("## Ratios")[1].splitlines()[2]  # a ratio column
    if physical:
        assert "| drd-physical | restore |" in text


@pytest.mark.timeout(600)
def test_catalog_bench_runs_on_a_few_backups(tmp_path: Path) -> None:
    """bench/catalog.py end to end on 30 backups: every row measured, the prune destroyed
    exactly the expired ones in the region it counts."""
    out = tmp_path / "CATALOG.md"
    args = ["--backups", "30", "--prune", "8", "--out", str(out), "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.catalog", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=570,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result["seconds"]) == {
        "listing only",
        "list cold",
        "list warm",
        "list +10",
        "deletes only (32 objects)",
        "prune 8",
    }
    assert all(v > 0 for v in result["seconds"].values())
    assert result["objects_per_region"] == 2 * 40 and result["objects_left_per_region"] == 2 * 32
    assert "| list warm |" in out.read_text()


@pytest.mark.timeout(600)
def test_daemon_scale_bench_runs_on_a_few_sources(tmp_path: Path) -> None:
    """bench/daemon_scale.py end to end on 6 sources in 2 plans, one scheduled round: every
    measure of the table and every target of issue 19 is there, from a daemon that ran every
    job it was given and stopped cleanly on SIGTERM."""
    out = tmp_path / "DAEMON_SCALE.md"
    args = ["--sources", "6", "--plans", "2", "--every", "30s", "--jitter", "3s"]
    args += ["--rounds", "1", "--idle", "5", "--settle", "1", "--out", str(out), "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.daemon_scale", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=570,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["sources"], result["plans"], result["concurrency"]) == (6, 2, 2)
    assert result["exit_code"] == 0 and result["failed_jobs"] == []
    # The first backup of every source and at least one scheduled one each.
    assert result["backups"] >= 12 and result["restore_tests"] >= 6
    assert result["idle"] is not None, "no idle window was found between the rounds"
    assert result["memory"]["peak_bytes"] >= result["memory"]["steady_bytes"] > 1_000_000
    late = result["lateness"]
    for name in ("first", "scheduled", "scheduler_delay", "free_slot_longest_scheduled"):
        assert set(late[name]) == {"p50", "p95", "max"}, name
    # The daemon's semaphore as seen from outside: never more jobs at once than allowed.
    assert 1 <= late["most_jobs_at_once"] <= 2
    assert [t["target"] for t in result["targets"]] == [
        "idle daemon < 2 % of one core",
        "memory < 250 MB",
        "no due backup starting later than its slot allows at concurrency 2",
    ]
    assert all(isinstance(t["met"], bool) for t in result["targets"])

    text = out.read_text()
    for row in (
        "| start: exec -> /readyz 200 |",
        "| start: exec -> first backup started |",
        "| memory: peak RSS (VmHWM) |",
        "| memory: steady RSS (median over the idle window) |",
        "| CPU when idle (utime+stime over the window, % of one core) |",
        "| lateness, first backups (all due at start): p50 / p95 / max |",
        "| lateness, scheduled slots: p50 / p95 / max |",
        "| backups later than their slot allows |",
    ):
        assert row in text, row
    for target in result["targets"]:
        assert f"| {target['target']} |" in text


def test_daemon_scale_counts_only_a_slot_left_free_as_lateness() -> None:
    """The lateness verdict's arithmetic: time with fewer busy slots than the concurrency, in
    all and in the longest stretch; a queue of back-to-back jobs leaves no stretch."""
    from bench.daemon_scale import Interval, free_slot_time, most_at_once

    # Two slots; a job waits from 0 to 10. Slot 1 busy 0-10; slot 2 busy 0-4, free 4-7,
    # then busy 7-10: one stretch of 3 s.
    busy = [Interval(0, 10), Interval(0, 4), Interval(7, 10)]
    free = free_slot_time(busy, 0, 10, 2)
    assert (free.total, free.longest) == (3, 3)
    # Back to back with 0.01 s hand-overs: 0.05 s free in all, never more than 0.01 at once.
    queue = [Interval(0, 10)] + [Interval(i * 2 + 0.01, i * 2 + 2) for i in range(5)]
    free = free_slot_time(queue, 0, 10, 2)
    assert round(free.total, 6) == 0.05 and round(free.longest, 6) == 0.01
    # Nothing running at all: the whole wait is free; a wait of no time frees nothing.
    assert free_slot_time([], 5, 8, 2).longest == 3
    assert free_slot_time(busy, 4, 4, 2).total == 0
    assert most_at_once(queue) == 2 and most_at_once(busy) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "soon"], "--every: invalid duration 'soon'"),
        (["--every", "1m", "--jitter", "2m"], "--jitter must be at least 0 and shorter than"),
        (["--sources", "2", "--plans", "3"], "--plans must not exceed --sources"),
        (["--idle", "0"], "--idle must be more than 0 seconds"),
    ],
)
def test_daemon_scale_refuses_bad_options_naming_them(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.daemon_scale", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
