"""`drd status` without a daemon: where the API is looked for, how the token is taken, and what
is read from the job history (read-only) and the regions. The path through a real daemon is in
tests/integration/test_cli_status.py."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from drd.cli.daemon_api import api_url, read_token
from drd.cli.main import main
from drd.config.loader import load_config
from drd.daemon.history import History
from drd.errors import UsageError
from tests.support.drdenv import DrdEnv


@pytest.fixture
def env(tmp_path: Path) -> DrdEnv:
    env = DrdEnv.files_plan(tmp_path, port=9)  # nothing listens on the discard port
    env.write()
    return env


def run(env: DrdEnv, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    os.environ["DRD_KEYS"] = env.key  # each call is a new drd process: keys are read once
    code = main(["--config", str(env.config_path), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("listen", "tls", "url"),
    [
        ("127.0.0.1:9187", False, "http://127.0.0.1:9187"),
        ("0.0.0.0:9187", False, "http://127.0.0.1:9187"),
        ("[::]:9187", False, "http://[::1]:9187"),
        ("[::1]:9187", True, "https://[::1]:9187"),
        ("127.0.0.1:0", False, None),
    ],
)
def test_where_the_daemon_is_asked(env: DrdEnv, listen: str, tls: bool, url: str | None) -> None:
    env.api_listen = listen
    env.api = {"exposed": True}  # a wildcard address is off loopback
    if tls:
        env.api["tls"] = {"certificate": "drd-cert", "key": "drd-key"}
    env.write()
    assert api_url(load_config(env.config_path)) == url


def test_the_token_leaves_the_environment_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRD_TOKEN", "  s3cret-token\n")
    assert read_token(None) == "s3cret-token"
    assert "DRD_TOKEN" not in os.environ  # no child inherits it
    monkeypatch.setenv("MY_TOKEN", "two words")
    with pytest.raises(UsageError) as info:
        read_token("env:MY_TOKEN")
    assert "two words" not in str(info.value)


def test_keys_and_token_cannot_both_come_from_stdin(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(env, capsys, "status", "--keys", "stdin", "--token", "stdin")
    assert code == 2 and "standard input delivers only one" in err


def test_without_a_daemon_status_reads_the_history_and_the_regions(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(env, capsys, "backup", "p")[0] == 0
    history = History(env.root / "state" / "history.sqlite3")
    job = history.start("backup", "p", "tree", now=time.time() - 120)
    history.finish(job, "failure", detail="pg_dump: connection refused", now=time.time() - 60)
    test = history.start("restore-test", "p", "tree", now=time.time() - 50)
    history.finish(test, "success", detail=json.dumps({"reports": [{"rto_seconds": 78.57}]}))
    history.start("backup", "p", "tree")  # running (or its daemon died)
    history.close()

    code, out, err = run(env, capsys, "status", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["from"] == "state" and "no answer from http://127.0.0.1:9" in data["api_error"]
    tree = data["plans"]["p"]["sources"]["tree"]
    assert tree["backup"]["last_result"] == "failure"
    assert tree["backup"]["last_error"] == "pg_dump: connection refused"
    assert tree["backup"]["running"] is True
    assert tree["backup"]["backup_id"]  # the newest backup, from the regions
    assert tree["backup"]["stored_bytes"] > 0
    assert tree["restore_test"]["last_result"] == "passed"
    assert tree["restore_test"]["rto_seconds"] == 78.57
    assert data["running"][0]["kind"] == "backup" and data["running"][0]["what"] == "p/tree"
    assert data["regions"] == {"a": "ok", "b": "ok"}

    code, out, _ = run(env, capsys, "status")
    assert out.startswith("from the state directory and the regions")
    assert "running: backup p/tree (for " in out
    assert "restore test passed" in out and "(RTO 1m18s)" in out
    assert "backup RUNNING; failure" in out and "(pg_dump: connection refused)" in out, out

    # Read-only: the unfinished job is still unfinished (History would have ended it).
    with sqlite3.connect(env.root / "state" / "history.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE finished_at IS NULL").fetchone() == (1,)


def test_an_unreachable_region_is_named(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    (env.root / "regions" / "b").rmdir()
    code, out, _ = run(env, capsys, "status", "--offline")
    assert code == 0
    assert "regions: a ok; b UNHEALTHY: region b: root" in out
    # No job history yet: nothing is claimed about jobs, and the note says why.
    assert "p/tree (files): backup no job recorded; next backup now" in out
    assert "restore test no test recorded" in out and "note: job history: " in out
    assert "(the daemon's API was not asked or did not answer: --offline)" in out


def test_a_drd_token_with_whitespace_is_refused_like_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRD_TOKEN", "drdt1_abc def")
    with pytest.raises(UsageError) as info:
        read_token(None)
    assert "DRD_TOKEN" in str(info.value) and "whitespace" in str(info.value)
    assert "abc" not in str(info.value)
    monkeypatch.setenv("DRD_TOKEN", "   ")
    with pytest.raises(UsageError, match="DRD_TOKEN"):
        read_token(None)


def test_status_reads_a_history_whose_path_has_uri_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = DrdEnv.files_plan(tmp_path, port=9)
    env.write()
    # Region URLs cannot hold these characters, a state directory can.
    state = tmp_path / "state #2 ?at 100%"
    config = yaml.safe_load(env.config_path.read_text())
    config["state_dir"] = str(state)
    env.config_path.write_text(yaml.safe_dump(config))
    history = History(state / "history.sqlite3")
    job = history.start("backup", "p", "tree", now=time.time() - 60)
    history.finish(job, "failure", detail="disk full", now=time.time() - 30)
    history.close()
    code, out, err = run(env, capsys, "status", "--offline", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert not [n for n in data["notes"] if n.startswith("job history")], data["notes"]
    assert data["plans"]["p"]["sources"]["tree"]["backup"]["last_error"] == "disk full"
