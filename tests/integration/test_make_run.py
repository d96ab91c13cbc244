"""Issue 3, must-hold 4: `make run` in a fresh checkout starts the daemon on the embedded
default and backups and metrics show up within a minute, as the README promises."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    # A tracked symlink (drd/strategies -> ../strategies) is a file to git, kept as a link.
    return [
        line
        for line in out.stdout.splitlines()
        if (REPO / line).is_file() or (REPO / line).is_symlink()
    ]


def test_make_run_shows_backups_and_metrics_within_a_minute(tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 9187)) == 0:
            pytest.fail("port 9187 (drd.yaml's api.listen) is taken: stop the other drd first")
    checkout = tmp_path / "checkout"
    for rel in _tracked_files():
        dest = checkout / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_symlink():
            dest.symlink_to(os.readlink(REPO / rel))
        else:
            shutil.copy2(REPO / rel, dest)
    # Reuse this test run's virtual environment instead of installing a second one.
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRD_")}
    (tmp_path / "stamp").touch()  # newer than the copied pyproject.toml: make installs nothing
    proc = subprocess.Popen(
        ["make", "run", f"VENV={venv}", f"STAMP={tmp_path / 'stamp'}"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        metrics = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with urllib.request.urlopen("http://127.0.0.1:9187/metrics", timeout=2) as r:
                    metrics = r.read().decode()
            except OSError:
                metrics = ""
            ok = [
                line
                for line in metrics.splitlines()
                if line.startswith("drd_backups_total")
                and 'result="success"' in line
                and not line.endswith(" 0.0")
            ]
            if len(ok) == 2:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no backups of both demo sources within a minute:\n{metrics}")
        assert 'drd_backup_copies{plan="demo",region="local-a",source="app-db"} 1.0' in metrics
        assert (checkout / ".drd" / "regions" / "a" / "demo" / "app-db").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    text = out.decode()
    assert "ephemeral key" in text
    assert "drd stopped" in text
