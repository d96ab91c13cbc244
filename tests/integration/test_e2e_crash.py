"""Issue 2, must-hold 5: `kill -9` of a running backup never leaves a listed backup behind, and
the next run removes what the killed one left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.drdenv import DrdEnv

pytestmark = pytest.mark.integration


def _partials(root: Path) -> list[Path]:
    return [p for p in (root / "regions").rglob("*") if ".drd-partial" in p.name]


def test_kill_9_mid_backup_leaves_nothing_listed_and_next_run_cleans_up(tmp_path: Path) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as fh:
        for _ in range(160):
            fh.write(os.urandom(1 << 20))  # incompressible: the upload takes a while
    env.add_plan("app", [{"name": "files", "kind": "files", "path": str(src)}])
    env.write()

    proc = subprocess.Popen(
        env.command("backup", "app/files"),
        env=env.env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        sizes = [p.stat().st_size for p in _partials(tmp_path) if p.is_file()]
        if sizes and max(sizes) > 8 << 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "backup finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert _partials(tmp_path), "expected leftovers of the killed upload"

    listing = json.loads(env.ok("list", "--json").stdout)
    assert listing["backups"] == []

    done = env.ok("backup", "app/files")
    backup_id = env.backup_id_of(done, "app/files")
    assert _partials(tmp_path) == []
    listing = json.loads(env.ok("list", "--json").stdout)
    assert [b["backup_id"] for b in listing["backups"]] == [backup_id]
    # Only the one complete backup's objects remain in each region.
    for region in ("a", "b"):
        ids = {p.name for p in (tmp_path / "regions" / region / "app" / "files").iterdir()}
        assert ids == {backup_id}
