"""drd.strategies' registry: built-in kinds imported only when asked for, register() for a new
kind, registered() for a test's block."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import pytest

from drd import strategies
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy


class _Options(SourceOptions):
    pass


def _strategy(kind_name: str) -> type[Strategy[Any]]:
    class Example(Strategy[Any]):
        kind: ClassVar[str] = kind_name
        Options: ClassVar[type[SourceOptions]] = _Options

        async def dump(self) -> AsyncIterator[bytes]:
            yield b""

        @classmethod
        async def restore(
            cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
        ) -> RestoreOutcome:
            return RestoreOutcome(target)

    return Example


def test_a_kind_is_imported_only_when_asked_for() -> None:
    code = (
        "import sys; from drd import strategies; strategies.get_strategy('sqlite'); "
        "print(sorted(m for m in sys.modules if m.startswith('drd.strategies.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "'drd.strategies.sqlite'" in out
    for other in ("mysql", "postgres", "cloudsql", "gcs_bucket", "files"):
        assert f"'drd.strategies.{other}'" not in out


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown source kind 'ftp' \(known: cloudsql, files"):
        strategies.get_strategy("ftp")


def test_registered_adds_replaces_and_restores() -> None:
    before = strategies.kinds()
    extra, fake_files = _strategy("extra"), _strategy("files")
    with strategies.registered(extra, fake_files):
        assert strategies.get_strategy("extra") is extra
        assert strategies.get_strategy("files") is fake_files
        assert strategies.kinds() == sorted([*before, "extra"])
    assert strategies.kinds() == before
    assert strategies.get_strategy("files") is not fake_files
    with strategies.registered(extra, only=True):
        assert strategies.kinds() == ["extra"]
        assert strategies.registry() == {"extra": extra}
    assert strategies.kinds() == before


def test_register_refuses_a_second_class_for_a_kind() -> None:
    with strategies.registered():  # whatever is registered here is gone afterwards
        new = strategies.register(_strategy("new-kind"))
        assert strategies.register(new) is new  # the same class again is fine
        assert strategies.get_strategy("new-kind") is new
        with pytest.raises(ValueError, match="'new-kind' is already registered"):
            strategies.register(_strategy("new-kind"))
        with pytest.raises(ValueError, match="'postgres' is already registered"):
            strategies.register(_strategy("postgres"))
        with pytest.raises(TypeError, match="not a Strategy"):
            strategies.register(object)  # type: ignore[arg-type]
    assert "new-kind" not in strategies.kinds()


def test_what_each_kind_declares_exists_where_it_is_used() -> None:
    from drd.restore_tests import runner
    from drd.restore_tests.spec import CHECK_KINDS, SCRATCH_KINDS
    from drd.verify.scratch.base import OPENERS

    assert sorted(OPENERS) == sorted(SCRATCH_KINDS)  # every scratch kind can be opened
    for kind, strategy in strategies.registry().items():
        assert set(strategy.scratch_kinds) <= set(SCRATCH_KINDS), kind
        if strategy.scratch_kinds and strategy.default_scratch is not None:
            assert strategy.default_scratch in strategy.scratch_kinds, kind
        if strategy.default_scratch is None:
            assert strategy.scratch_kinds and strategy.scratch_example, kind
        assert "command" in strategy.check_kinds and set(strategy.check_kinds) <= set(CHECK_KINDS)
        assert strategy.restored_as is None or strategy.restored_as in runner._BUILTINS, kind
