"""The command line's contract: exit codes, messages naming file/line/field, keygen output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drd import crypto
from drd.cli.main import main
from tests.support.drdenv import DrdEnv


@pytest.fixture
def env(tmp_path: Path) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    (tmp_path / "src").mkdir()
    env.add_plan("app", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
    env.write()
    return env


def test_keygen_prints_a_parseable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"drdk1:[0-9a-f]{16}:[A-Za-z0-9_-]{43}", out)
    assert len(crypto.Keyring.parse(out, "keygen")) == 1


def test_validate_ok(env: DrdEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(env.config_path), "validate"]) == 0
    assert "1 plan(s), 1 source(s), 2 region(s)" in capsys.readouterr().out


def test_validate_reports_every_error_with_file_line_and_field(
    env: DrdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = env.root / "plans" / "app.yaml"
    plan.write_text(
        "name: app\n"
        "owner: sre@example.com\n"
        "reviewed_on: 2026-06-01\n"
        "targets: {rpo: 6h, rto: 1h}\n"
        "schedule: {every: 4h}\n"
        "storage: {regions: [a, nowhere], min_copies: 3}\n"
        "retention: {max_age: 30d}\n"
        "sources:\n"
        "  - name: db\n"
        "    kind: postgres\n"
    )
    assert main(["--config", str(env.config_path), "validate"]) == 3
    err = capsys.readouterr().err
    assert re.search(r"plans/app\.yaml:7: retention\.max_age: .*14", err), err
    assert re.search(r"plans/app\.yaml:9: sources\[0\]\.dsn: field required", err), err
    assert re.search(r"plans/app\.yaml:6: storage\.", err), err


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["backup", "nope"], 2, "unknown plan 'nope'"),
        (["backup", "app/nope"], 2, "no source 'nope'"),
        (["restore", "app", "--to", "/tmp/x"], 2, "PLAN/SOURCE"),
        (["restore", "app/files", "--to", "/tmp/x"], 8, "no backup of app/files"),
        (["restore", "app/nope", "--to", "/tmp/x"], 2, "plan app has no source 'nope'"),
        (
            ["restore", "app/files", "--to", "/tmp/x", "--region", "nosuch"],
            2,
            "--region: there is no region 'nosuch' (regions: a, b)",
        ),
        (
            ["restore-test", "app", "--region", "zz"],
            2,
            "plan app has no region 'zz' (regions: a, b)",
        ),
        (
            ["drill", "app", "--lose-region", "zz"],
            2,
            "--lose-region: plan app has no region 'zz' (regions: a, b)",
        ),
        (["list", "../"], 2, "unknown plan '..'"),
        (["list", "app/nope"], 2, "plan app has no source 'nope'"),
    ],
)
def test_usage_errors_have_clear_messages_and_exit_codes(
    env: DrdEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    code: int,
    needle: str,
) -> None:
    monkeypatch.setenv("DRD_KEYS", env.key)
    assert main(["--config", str(env.config_path), *args]) == code
    assert needle in capsys.readouterr().err


def test_missing_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["--config", str(tmp_path / "nope.yaml"), "validate"]) == 2
    assert "nope.yaml not found" in capsys.readouterr().err


def test_bad_names_without_a_config_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    region = tmp_path / "region"
    region.mkdir()
    assert main(["list", "../", "--storage", f"file:{region}"]) == 2
    assert "expected PLAN or PLAN/SOURCE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plan_path", "needle"),
    [("/dev/zero", "is not a regular file"), ("big.yaml", "is larger than 1024 KiB")],
)
def test_config_and_plan_files_are_bounded(
    env: DrdEnv, capsys: pytest.CaptureFixture[str], plan_path: str, needle: str
) -> None:
    (env.root / "big.yaml").write_text("# padding\n" * 200_000)
    config = env.config_path.read_text().replace("plans/*.yaml", plan_path)
    env.config_path.write_text(config)
    assert main(["--config", str(env.config_path), "validate"]) == 3
    err = capsys.readouterr().err
    assert needle in err and plan_path in err, err
    env.config_path.write_text("# padding\n" * 200_000)
    assert main(["--config", str(env.config_path), "validate"]) != 0
    assert "is larger than 1024 KiB" in capsys.readouterr().err
