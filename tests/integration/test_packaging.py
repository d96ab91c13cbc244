"""The installed wheel is drd's alone: `strategies/` and `restore_tests/` are installed as
drd.strategies and drd.restore_tests, nothing generic lands at the top of site-packages, and the
installed package imports and runs from outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("drd-*.whl")
    return built


def test_wheel_installs_only_the_drd_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"drd"}
    for module in (
        "drd/strategies/postgres.py",
        "drd/strategies/mysql.py",
        "drd/restore_tests/runner.py",
        "drd/cli/main.py",
    ):
        assert module in names


def test_wheel_carries_the_man_page_generated_from_the_parser(wheel: Path) -> None:
    from drd.cli.generated import manpage
    from drd.cli.main import build_parser

    with zipfile.ZipFile(wheel) as z:
        (page,) = [n for n in z.namelist() if n.endswith("/data/share/man/man1/drd.1")]
        text = z.read(page).decode()
    # All but the header, which carries the build's date.
    assert text.splitlines()[1:] == manpage(build_parser()).splitlines()[1:]
    assert ".SH COMMAND \\fI\\,'drd doctor'" in text and ".SH EXIT STATUS" in text


def test_installed_wheel_imports_and_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Only the wheel's copy of drd is importable: the checkout is not on the path (-I, and a
    # cwd outside it), the dependencies come from this test run's environment.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(target), *deps])}
    code = (
        "import drd, drd.strategies, drd.restore_tests.runner, drd.cli.main;"
        f"assert drd.__file__.startswith({str(target)!r}), drd.__file__;"
        "print(sorted(drd.strategies.registry()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "postgres" in run.stdout and "mysql" in run.stdout
    assert not (target / "strategies").exists()
    assert not (target / "restore_tests").exists()
