"""`--json` on every command that prints a result (same exit codes as without it), sizes and
durations in one format, and one line for backups sealed with a key the keyring lacks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.cli.main import main
from tests.support.drdenv import DrdEnv

SIZE = r"\d+(B|\.\dKiB|\.\dMiB)"


@pytest.fixture
def env(tmp_path: Path) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello " * 500)
    env.add_plan("app", [{"name": "files", "kind": "files", "path": str(src)}])
    env.write()
    return env


def run(env: DrdEnv, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # A drd process reads its keys once and removes them from its environment: each call
    # here is a new "process".
    os.environ["DRD_KEYS"] = env.key
    code = main(["--config", str(env.config_path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(env: DrdEnv, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code, out, _ = run(env, capsys, *args, "--json")
    return code, json.loads(out)


def test_backup_human_output_is_in_iec_units_and_json_has_the_numbers(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(env, capsys, "backup", "app")
    assert code == 0
    assert re.search(
        rf"^ok app/files@\S+: {SIZE} -> {SIZE} stored in a,b in \S+( \(\S+/s\))?$", out, re.M
    ), out
    assert " bytes" not in out
    code, data = run_json(env, capsys, "backup", "app/files")
    assert code == 0
    (backup,) = data["backups"]
    assert backup["status"] == "ok" and backup["regions"] == ["a", "b"]
    assert backup["source_bytes"] > 3000 and backup["stored_bytes"] > 0
    assert backup["missing_copies"] == {} and backup["error"] is None


def test_backup_json_keeps_the_exit_code_of_a_failure(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    (env.root / "regions" / "a").rename(env.root / "regions" / "gone")
    code, data = run_json(env, capsys, "backup", "app")
    assert code == 6  # as without --json: not enough copies
    (failed,) = data["backups"]
    assert failed["status"] == "failed" and failed["exit_code"] == 6 and failed["error"]


def test_validate_json_ok_and_invalid(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(env, capsys, "validate")
    assert code == 0
    assert data["ok"] is True and (data["plans"], data["sources"], data["regions"]) == (1, 1, 2)
    plan = env.root / "plans" / "app.yaml"
    plan.write_text(plan.read_text().replace("max_age", "max_agee") + "retention: {max_age: 30d}\n")
    code, data = run_json(env, capsys, "validate")
    assert code == 3
    assert data["ok"] is False and data["plans"] is None
    errors = [f for f in data["findings"] if f["severity"] == "error"]
    assert errors and all(f["file"].endswith("app.yaml") and f["line"] for f in errors)
    assert any(f["field"] == "retention.max_age" for f in errors), errors


def test_prune_json_and_exit_code(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(env, capsys, "backup", "app")[0] == 0
    code, data = run_json(env, capsys, "prune", "--dry-run")
    assert code == 0
    (plan,) = data["plans"]
    assert plan["plan"] == "app" and plan["dry_run"] is True and data["ok"] is True
    assert plan["regions"]["a"]["kept"] == 1 and plan["regions"]["a"]["to_destroy"] == []
    assert plan["max_age_seconds"] == 14 * 86400


def test_doctor_json_names_an_unusable_region_and_exits_1(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(env, capsys, "doctor")
    assert code == 0 and data["ok"] is True
    (env.root / "regions" / "b").rmdir()
    code, data = run_json(env, capsys, "doctor")
    assert code == 1 and data["ok"] is False and data["retention_ok"] is True
    usable = {r["region"]: r["usable"] for r in data["regions"]}
    assert usable == {"a": True, "b": False}
    code, out, _ = run(env, capsys, "doctor")
    assert code == 1
    assert re.search(r"^region b: NOT USABLE: cannot write the probe object", out, re.M), out
    assert out.rstrip().endswith("regions: FAILED: not usable: b\ndoctor: FAILED")


def test_check_json(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(env, capsys, "backup", "app")[0] == 0
    code, data = run_json(env, capsys, "check", "--read-data", "--no-repair")
    assert code == 0 and data["result"] == "ok" and data["problems"] == 0
    (plan,) = data["plans"]
    assert plan["backups"] == 1 and plan["copies"] == 2
    assert plan["data_read"]["copies"] == 2 and plan["data_read"]["damaged"] == []


def test_restore_json(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(env, capsys, "backup", "app")[0] == 0
    target = env.root / "restored"
    code, data = run_json(env, capsys, "restore", "app/files", "--to", str(target))
    assert code == 0
    assert data["plan"] == "app" and data["source"] == "files" and data["region"] in ("a", "b")
    assert data["target"] == str(target) and (target / "f.txt").exists()
    code, out, _ = run(env, capsys, "restore", "app/files", "--to", str(env.root / "again"))
    assert code == 0 and re.search(
        r" in (\d\.\ds|\d+s|\d+m\d*s?)( \(\S+(, \S+/s)?\))?$", out.strip()
    ), out


def test_keygen_and_token_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert crypto.Keyring.parse(data["key"], "t").primary.key_id == data["key_id"]
    assert main(["token", "--name", "ci", "--role", "viewer", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config_entry"]["name"] == "ci" and len(data["config_entry"]["sha256"]) == 64
    assert data["token"] and data["token"] not in json.dumps(data["config_entry"])


def test_list_after_a_key_switch_warns_once(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        code, _, err = run(env, capsys, "backup", "app")
        assert code == 0, err
    old_id = crypto.Keyring.parse(env.key, "t").primary.key_id
    env.key = crypto.generate_key()
    code, out, err = run(env, capsys, "list")
    assert code == 0
    assert err.count(old_id) == 1, err  # one summary line, not one per backup
    assert "3 backup(s) sealed with key(s) not in the keyring" in err
    rows = [line for line in out.splitlines() if line.startswith("app/files")]
    assert len(rows) == 3
    assert all(f"UNVERIFIED: sealed with key {old_id} (not in the keyring)" in r for r in rows)
    assert not any("DAMAGED" in r for r in rows)
    code, out, _ = run(env, capsys, "check", "--no-repair")
    assert code == 5  # unusable copies are still problems, as before
    assert [line for line in out.splitlines() if line.startswith("  UNUSABLE")] == [
        line for line in out.splitlines() if "sealed with key(s) not in the keyring" in line
    ]
    assert "UNUSABLE 6 copies of 3 backup(s) sealed with key(s) not in the keyring" in out
    code, out, err = run(env, capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0 and data["unknown_key_backups"] == 3 and err.count(old_id) == 1
    assert all(b["unknown_keys"] == [old_id] for b in data["backups"])
