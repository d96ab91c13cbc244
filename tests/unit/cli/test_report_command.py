"""`drd drill --html FILE` and `drd report PLAN`: bad arguments are refused before any work,
naming the option; a drill of a small files plan writes its page, and `drd report` finds it
(and its restore test) in the regions, as a page or as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drd.cli.main import main
from tests.support.drdenv import DrdEnv


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DrdEnv:
    env = DrdEnv.files_plan(tmp_path)
    env.write()
    monkeypatch.chdir(tmp_path)
    return env


def drd(env: DrdEnv, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    # drd takes the key out of the environment once read: deliver it for every command.
    monkeypatch.setenv("DRD_KEYS", env.key)
    return main(["--config", str(env.config_path), *args])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["report", "p", "--since", "90x"], "--since: "),
        (["report", "p", "--since", "0s"], "--since: the window must be longer than 0s"),
        (["report", "p", "--out", "no/such/dir/r.html"], "--out no/such/dir/r.html: directory"),
        (["report", "p", "--out", "."], "--out .: is a directory"),
        (["report", "nope"], "unknown plan 'nope'"),
        (["drill", "p", "--html", "no/such/dir/d.html"], "--html no/such/dir/d.html: directory"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option(
    env: DrdEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    assert drd(env, monkeypatch, *args) == 2
    assert needle in capsys.readouterr().err
    # Refused before anything ran: no drill report in any region.
    assert not [p for p in env.stored_files() if "_drills" in p.parts]


def test_a_drill_writes_its_page_and_the_report_finds_it(
    env: DrdEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert drd(env, monkeypatch, "backup", "p") == 0
    page_path = env.root / "drill.html"
    assert drd(env, monkeypatch, "drill", "p", "--lose-region", "b", "--html", str(page_path)) == 0
    capsys.readouterr()
    page = page_path.read_text()
    assert "Failover drill of plan p" in page and "file_digests" in page
    assert "LOST (simulated)" in page and "(this one)" in page

    assert drd(env, monkeypatch, "report", "p", "--since", "1d", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"] == "p" and data["runs_total"] == 2
    assert data["drills"]["runs"] == 1 and data["drills"]["passed"] == 1
    assert data["restore_tests"]["runs"] == 1  # the drill's restore test, next to the backup
    assert data["drills"]["rto_p95_seconds"] is not None and data["pass_rate"] == 1.0
    assert data["from"] == {"regions": 2} and data["not_counted"] == []

    out = env.root / "audit.html"
    assert drd(env, monkeypatch, "report", "p", "--out", str(out)) == 0
    audit = out.read_text()
    drill_id = (
        data["runs"][0]["id"] if data["runs"][0]["kind"] == "drill" else data["runs"][1]["id"]
    )
    assert drill_id in audit and "Restore tests and drills of plan p" in audit
    assert "history.sqlite3" in audit  # it says where the figures come from
    assert f"wrote {out}" in capsys.readouterr().err


def test_a_region_not_read_makes_the_report_incomplete_and_the_exit_code_say_so(
    env: DrdEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert drd(env, monkeypatch, "backup", "p") == 0
    assert drd(env, monkeypatch, "drill", "p") == 0
    capsys.readouterr()
    region_b = env.root / "regions" / "b"
    region_b.rename(env.root / "b-unmounted")
    region_b.write_text("not a directory: the region cannot be listed")

    assert drd(env, monkeypatch, "report", "p", "--json") == 6  # StorageError's exit code
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] is False and list(data["regions_not_read"]) == ["b"]
    assert any(p.startswith("region b not read") for p in data["not_counted"])
    assert data["runs_total"] == 2  # region a's runs are still there

    out = env.root / "audit.html"
    assert drd(env, monkeypatch, "report", "p", "--out", str(out)) == 6
    page = out.read_text()  # written all the same
    assert "INCOMPLETE" in page and "region b" in page
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "incomplete" in err and "b" in err
