"""`drd status` and `drd drills` against a real `drd run` that requires a token, and after it
stopped: from the API with the token, from the state directory and the regions without it,
and saying which."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drd.server.auth import generate_token, token_hash
from tests.support.drdenv import DrdEnv

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[tuple[DrdEnv, str, subprocess.Popen[bytes]]]:
    env = DrdEnv.files_plan(tmp_path)
    token = generate_token()
    env.api = {
        "public_read": False,
        "tokens": [{"name": "ci", "role": "viewer", "sha256": token_hash(token)}],
    }
    env.write()
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(env.command("run"), env=env.env(), cwd=tmp_path, stdout=log, stderr=log)
    try:
        yield env, token, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def status(env: DrdEnv, *args: str, token: str | None = None) -> dict[str, Any]:
    proc = env.ok("status", "--json", *args, env=env.env(DRD_TOKEN=token))
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_status_and_drills_from_the_daemon_then_from_the_state_directory(
    estate: tuple[DrdEnv, str, subprocess.Popen[bytes]],
) -> None:
    env, token, daemon = estate

    def backed_up() -> dict[str, Any] | None:
        assert daemon.poll() is None, (env.root / "daemon.log").read_text()
        try:
            data = status(env, token=token)
        except AssertionError:
            return None
        tree = data["plans"]["p"]["sources"]["tree"]["backup"]
        return data if data["from"] == "api" and tree["last_result"] == "success" else None

    online = wait_for(backed_up, 90, "the daemon's first backup, seen through its API")
    tree = online["plans"]["p"]["sources"]["tree"]
    assert tree["backup"]["backup_id"] and tree["backup"]["stored_bytes"] > 0
    assert tree["backup"]["next_due"] and tree["restore_test"]["next_due"]
    assert online["regions"] == {"a": "ok", "b": "ok"}
    assert online["api_url"] == f"http://127.0.0.1:{env.api_port}"
    assert "api_error" in online and online["api_error"] is None  # always there (docs/cli.md)
    text = env.ok("status", env=env.env(DRD_TOKEN=token)).stdout
    assert text.startswith(f"from the daemon's API at http://127.0.0.1:{env.api_port}\n")
    assert "regions: a ok; b ok" in text

    # Without the token the daemon refuses (401): drd says so and reads what it can itself.
    offline = status(env)
    assert offline["from"] == "state" and "answered 401" in offline["api_error"]
    assert token not in json.dumps(offline)
    backup = offline["plans"]["p"]["sources"]["tree"]["backup"]
    assert backup["backup_id"] == tree["backup"]["backup_id"]
    assert offline["regions"] == {"a": "ok", "b": "ok"}

    drill = env.ok("drill", "p", "--json")
    drill_id = json.loads(drill.stdout)["id"]
    listed = env.ok("drills", "list", "--json", env=env.env(DRD_TOKEN=token))
    data = json.loads(listed.stdout)
    assert data["from"] == "api" and [d["id"] for d in data["drills"]] == [drill_id]
    shown = env.ok("drills", "show", drill_id, env=env.env(DRD_TOKEN=token))
    assert shown.stdout.startswith(f"{drill_id} p PASSED")
    assert "from the daemon's API" in shown.stderr

    daemon.kill()
    daemon.wait(10)
    stopped = status(env, token=token)
    assert stopped["from"] == "state" and "no answer from" in stopped["api_error"]
    tree_now = stopped["plans"]["p"]["sources"]["tree"]
    assert tree_now["backup"]["last_result"] == "success"  # from the job history
    assert tree_now["backup"]["backup_id"] == tree["backup"]["backup_id"]
    assert stopped["plans"]["p"]["last_drill"]["id"] == drill_id  # from the regions
    text = env.ok("status", env=env.env(DRD_TOKEN=token)).stdout
    assert text.startswith("from the state directory and the regions")
    assert f"last drill: {drill_id} p PASSED" in text

    listed = json.loads(env.ok("drills", "list", "--json").stdout)
    assert listed["from"] == "stored" and [d["id"] for d in listed["drills"]] == [drill_id]
    missing = env.run("drills", "show", "20200101T000000Z-00000000", "--offline")
    assert missing.returncode == 2 and "no drill 20200101T000000Z-00000000" in missing.stderr
    bad = env.run("drills", "show", "nope")
    assert bad.returncode == 2 and "'nope' is not a drill id" in bad.stderr
