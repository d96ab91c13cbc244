"""The benchmark harness (bench/, `make bench`) runs end to end: a tiny database, one
repetition, a subset of the tools. The benchmark itself never runs in `make test`; this only
proves that the harness works and writes its table and JSON with the expected rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ~10 s on a healthy machine; CI has run on hosts 15x slower than that, so the bound only
# guards against a hang.
@pytest.mark.timeout(900)
def test_bench_harness_runs_on_a_tiny_database(tmp_path: Path) -> None:
    optional = {"gpg": "gpg", "floor-zstd": "zstd"}  # tool -> the program it needs
    tools = ["floor", "drd-local"] + [t for t, prog in optional.items() if shutil.which(prog)]
    md, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--size",
            "24",  # pgbench scale 1 plus a few MB of wide rows, generated once and kept
            "--reps",
            "1",
            "--tools",
            ",".join(tools),
            "--rss-sizes",
            "",
            "--no-install",
            "--quiet-wait",
            "0",
            "--retries",
            "0",
            "--work",
            str(tmp_path / "work"),
            "--data",
            str(tmp_path / "data"),
            "--results-md",
            str(md),
            "--results-json",
            str(js),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(js.read_text())
    assert results["dataset"]["name"] == "drd_bench_24mb"
    assert results["dataset"]["dump_bytes"] > 1_000_000
    assert results["failures"] == []
    summary = {(s["tool"], s["op"]): s for s in results["summary"]}
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
    assert {t["target"] for t in results["targets"]} >= {
        "drd-local backup <= 1.15x the floor",
        "drd-local restore <= 1.25x the floor",
        "drd peak RSS < 200 MB at every size",
    }
    assert any(s["stage"].startswith("Sealer") for s in results["stages"])

    text = md.read_text()
    assert f"{results['meta']['cores']} cores" in text
    assert results["meta"]["date"] in text
    for heading in ("## Backup", "## Restore", "## Ratios", "## Targets"):
        assert heading in text
    for tool in tools:
        assert f"| {tool} |" in text
    assert "| drd-local | backup |" in text and "| drd-local | restore |" in text


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
