"""`drd status` through a daemon's API (the real app on a loopback test server, its regions in
memory): the jobs running come with what the daemon says of them, and the JSON has the same
keys whichever way it was read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from drd.cli.main import main
from drd.storage.faults import FaultyStorage
from tests.support.drdenv import DrdEnv
from tests.unit.server.test_api import TOKENS, client  # noqa: F401 - the fixture
from tests.unit.server.test_drill_api import daemon_of

Client = TestClient[Any, Any]


async def drd_status(
    c: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str], env_vars: pytest.MonkeyPatch
) -> dict[str, Any]:
    """`drd status --json` run as a user would, against the test server's address."""
    env = DrdEnv(tmp_path / "cli")
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "s0", "kind": "blob", "size": 1000}])
    env.api_listen = f"127.0.0.1:{c.port}"
    env.write()
    env_vars.setenv("DRD_KEYS", env.key)
    env_vars.setenv("DRD_TOKEN", TOKENS["viewer"])
    # main() runs its own event loop: in a thread, while this loop serves the API.
    code = await asyncio.to_thread(main, ["--config", str(env.config_path), "status", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


async def test_running_jobs_come_from_the_daemons_job_list(
    client: Client,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = daemon_of(client)
    slow = FaultyStorage(d.regions["a"])
    slow.add_latency(30, op="write")
    d.regions["a"] = slow
    d.run_once()
    for _ in range(200):
        if d.running_jobs():
            break
        await asyncio.sleep(0.01)
    (snap,) = d.running_jobs()

    data = await drd_status(client, tmp_path, capsys, monkeypatch)
    assert data["from"] == "api"
    (running,) = data["running"]
    assert running["kind"] == "backup" and running["what"] == "p/s0"
    assert running["started_at"] == snap.started_at.isoformat()
    # The job moves on meanwhile: its phase is one of a backup's, whichever it is now.
    assert running["phase"] in {"preparing", "dumping", "verifying", "committing"}
    assert isinstance(running["bytes"], int) and "total" in running


async def test_api_error_is_there_and_null_when_the_api_answered(
    client: Client,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = await drd_status(client, tmp_path, capsys, monkeypatch)
    assert data["from"] == "api"
    assert "api_error" in data and data["api_error"] is None
    assert data["running"] == []
