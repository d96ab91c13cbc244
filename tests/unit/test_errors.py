"""The error hierarchy's contract: every error drd raises on purpose is declared in drd.errors
with its exit code (the CLI maps them in one place, the README's table lists them)."""

from __future__ import annotations

import importlib
import pkgutil

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
