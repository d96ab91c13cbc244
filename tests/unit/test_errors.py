"""The error hierarchy's contract: every error drd raises on purpose is declared in drd.errors
with its exit code (the CLI maps them in one place, the README's table lists them)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import drd
from drd import errors


def every_drd_error() -> list[type[errors.DrdError]]:
    """DrdError and its subclasses in every module of the package (all imported first)."""
    for info in pkgutil.walk_packages(drd.__path__, "drd."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: list[type[errors.DrdError]] = []
    todo: list[type[errors.DrdError]] = [errors.DrdError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("drd.") and cls not in found:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_with_an_exit_code_is_declared_in_drd_errors() -> None:
    elsewhere = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in every_drd_error()
        if cls.__module__ != "drd.errors"
        # A module may keep a private subclass for its own control flow, but never give it an
        # exit code of its own: the CLI would exit with a code drd.errors does not list.
        and (not cls.__name__.startswith("_") or "exit_code" in vars(cls))
    ]
    assert elsewhere == []


def test_moved_errors_are_still_importable_where_they_were() -> None:
    from drd.locks import LockBusy
    from drd.strategies.cloudsql import CloudSqlError, OperationFailed

    assert LockBusy is errors.LockBusy and LockBusy.exit_code == 10
    assert errors.DrillBusy.exit_code == 10
    assert CloudSqlError is errors.CloudSqlError and OperationFailed is errors.OperationFailed


def test_the_readme_lists_every_exit_code() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    codes = {cls.exit_code for cls in every_drd_error()}
    assert listed == codes | {errors.EXIT_OK, errors.EXIT_INTERRUPTED}


def test_the_cli_exits_with_the_code_of_what_a_command_returned_or_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from drd.cli import commands
    from drd.cli.main import main

    outcomes: list[commands.Outcome] = [None, errors.PartialFailure, errors.RestoreTestFailed]
    for outcome in outcomes:
        monkeypatch.setattr(commands, "keygen", lambda *, quiet, as_json, o=outcome: o)
        assert main(["keygen"]) == (0 if outcome is None else outcome.exit_code)
    assert capsys.readouterr().err == ""  # a returned failure was reported by the command

    def refuse(*, quiet: bool, as_json: bool) -> commands.Outcome:
        raise errors.LockBusy("p/s: a backup is already running")

    monkeypatch.setattr(commands, "keygen", refuse)
    assert main(["keygen"]) == 10
    assert capsys.readouterr().err == "drd: error: p/s: a backup is already running\n"
