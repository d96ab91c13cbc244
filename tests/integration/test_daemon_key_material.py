"""Issue 14, point 1, against the real `drd run`: after start the key string is in no readable
place of the daemon (not in /proc/<pid>/environ), its core limit is 0 even when started with an
unlimited one, and the SIGABRT a systemd watchdog sends writes no core file."""

from __future__ import annotations

import resource
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.drdenv import DrdEnv

pytestmark = pytest.mark.integration


def _popen_or_close(log: Any, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(*args, **kwargs)
    except BaseException:
        log.close()
        raise


def _unlimited_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_daemon_holds_the_key_in_no_readable_place(tmp_path: Path) -> None:
    env = DrdEnv.files_plan(tmp_path)
    port = env.api_port
    env.write()
    log = open(tmp_path / "daemon.log", "w+b")  # noqa: SIM115
    proc = _popen_or_close(
        log,
        env.command("run"),
        env=env.env(),
        cwd=tmp_path,
        stdout=log,
        stderr=log,
        preexec_fn=_unlimited_core,  # the attacker's starting point
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the daemon never answered /healthz"
                time.sleep(0.2)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert env.key.encode() not in environ
        assert b"drdk1:" not in environ
        # The rest of the environment is untouched (the scrub is not a blanket wipe).
        assert b"PATH=" in environ
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (core_line,) = [line for line in limits.splitlines() if line.startswith("Max core")]
        assert core_line.split()[4:6] == ["0", "0"], core_line
        proc.send_signal(signal.SIGABRT)
        assert proc.wait(30) == -signal.SIGABRT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert not list(tmp_path.glob("core*")), "a core file was written"
