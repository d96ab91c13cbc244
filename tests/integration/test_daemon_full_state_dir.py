"""Issue 14, point 3, against the real `drd run` with its state directory on a real, tiny
filesystem (a tmpfs this test mounts): a full state directory at start is a clear error with the
exit code table's code; filling up while running fails the job once, counts it, backs off,
shows in /readyz and a metric, never spins, and heals when there is room again."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from drd.server.auth import generate_token, token_hash
from tests.support.drdenv import DrdEnv, free_port
from tests.support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "state", "size=1m,mode=0700") as mount:
        yield mount


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; the file that fills it."""
    ballast = directory / "ballast"
    with open(ballast, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), open(ballast, "ab") as f:  # the last partial block
        while True:
            f.write(b"\0" * 512)
            f.flush()
    return ballast


def make_env(tmp_path: Path, state: Path, port: int, token: str) -> DrdEnv:
    env = DrdEnv.files_plan(tmp_path, port=port)
    env.api = {
        "public_read": True,
        "tokens": [{"name": "op", "role": "operator", "sha256": token_hash(token)}],
    }
    env.write()
    config = env.config_path.read_text().replace(str(tmp_path / "state"), str(state))
    env.config_path.write_text(config)
    return env


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:  # not listening yet
        return 0, ""


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_starting_with_a_full_state_dir_exits_with_a_clear_message(
    tmp_path: Path, small_fs: Path
) -> None:
    env = make_env(tmp_path, small_fs, free_port(), generate_token())
    fill(small_fs)
    run = env.run("run", timeout=60)
    assert run.returncode == 14, run.stderr
    assert "drd: error: state directory: cannot" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) <= 3, run.stderr


def test_a_state_dir_filling_up_fails_jobs_visibly_and_never_spins(
    tmp_path: Path, small_fs: Path
) -> None:
    port, token = free_port(), generate_token()
    env = make_env(tmp_path, small_fs, port, token)
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "daemon.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(env.command("run"), env=env.env(), cwd=tmp_path, stdout=log, stderr=log)
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, 60, "the daemon ready")
        wait_for(
            lambda: (
                'result="success"' in get(base + "/metrics")[1]
                and 'drd_backups_total{plan="p",result="success",source="tree"} 1.0'
                in get(base + "/metrics")[1]
            ),
            60,
            "the first backup",
        )
        ballast = fill(small_fs)
        status, body = get(base + "/api/v1/plans/p/backups", token, method="POST")
        assert status == 202, body
        wait_for(
            lambda: (
                'drd_backups_total{plan="p",result="failure",source="tree"} 1.0'
                in get(base + "/metrics")[1]
            ),
            30,
            "the failed backup counted",
        )
        metrics = get(base + "/metrics")[1]
        assert "drd_state_writable 0.0" in metrics
        status, body = get(base + "/readyz")
        assert status == 503 and "state directory not writable" in json.loads(body)["reason"]
        # No spin: over the next seconds the daemon neither logs a storm nor burns CPU.
        lines_before = (tmp_path / "daemon.log").read_bytes().count(b"\n")
        cpu_before = _cpu_seconds(proc.pid)
        time.sleep(3)
        assert (tmp_path / "daemon.log").read_bytes().count(b"\n") - lines_before <= 3
        assert _cpu_seconds(proc.pid) - cpu_before < 1.0
        assert proc.poll() is None
        # Room again: the next backup succeeds and the daemon is ready.
        ballast.unlink()
        status, _ = get(base + "/api/v1/plans/p/backups", token, method="POST")
        assert status == 202
        wait_for(
            lambda: (
                'drd_backups_total{plan="p",result="success",source="tree"} 2.0'
                in get(base + "/metrics")[1]
            ),
            30,
            "a backup after the disk healed",
        )
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "ready again")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
