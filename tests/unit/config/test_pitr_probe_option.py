"""restore_test.pitr_probe: validated like the rest of the plan, each mistake named by its
field; a plan without it records no probes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from drd.config.loader import load_config
from drd.errors import ConfigError
from tests.support.drdenv import DrdEnv

PHYSICAL = {"name": "db", "kind": "postgres-physical", "dsn": "host=127.0.0.1 port=1"}


def config(tmp_path: Path, probe: Any) -> Any:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    restore_test = {} if probe is None else {"pitr_probe": probe}
    env.add_plan(
        "billing",
        [PHYSICAL],
        targets={"rpo": "1m", "rto": "1h"},
        restore_test=restore_test,
    )
    return load_config(env.write())


def test_a_probe_section_loads_with_its_defaults(tmp_path: Path) -> None:
    spec = config(tmp_path, {"tables": ["t", "app.orders"], "queries": ["SELECT 1"]})
    probe = spec.plan("billing").restore_test.pitr_probe
    assert probe.tables == ["t", "app.orders"]
    assert probe.every == timedelta(minutes=10)
    assert probe.keep == 1000
    assert probe.drd_argv is None


def test_without_it_there_is_none(tmp_path: Path) -> None:
    assert config(tmp_path, None).plan("billing").restore_test.pitr_probe is None


def test_drd_command_is_split_like_a_shell_would(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"drd_command": "env PYTHONPATH='/a b' /usr/bin/drd"})
    probe = cfg.plan("billing").restore_test.pitr_probe
    assert probe.drd_argv == ["env", "PYTHONPATH=/a b", "/usr/bin/drd"]


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ({"tables": ["a.b.c"]}, r"pitr_probe\.tables: .*'a\.b\.c' is not a table name"),
        ({"tables": ["t", "t; DROP TABLE t"]}, r"pitr_probe\.tables: tables\[1\]: 't; DROP"),
        ({"tables": ["t", "t"]}, r"pitr_probe\.tables: .*table t is listed twice"),
        ({"queries": ["SELECT 1", "  "]}, r"pitr_probe\.queries: .*queries\[1\] is blank"),
        ({"every": "0s"}, r"pitr_probe\.every"),
        ({"every": "often"}, r"pitr_probe\.every"),
        ({"keep": 0}, r"pitr_probe\.keep"),
        ({"keep": 10_001}, r"pitr_probe\.keep"),
        ({"drd_command": "'unclosed"}, r"pitr_probe\.drd_command: .*not a command line"),
        ({"drd_command": "  "}, r"pitr_probe\.drd_command: .*must not be empty"),
        ({"tabels": ["t"]}, r"pitr_probe\.tabels"),
    ],
)
def test_mistakes_are_named_by_their_field(tmp_path: Path, probe: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config(tmp_path, probe)


def test_a_plan_whose_physical_sources_are_not_streamed_is_warned(tmp_path: Path) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "billing",
        [{**PHYSICAL, "archive": "command"}],
        restore_test={"pitr_probe": {"tables": ["t"]}},
    )
    cfg = load_config(env.write())
    assert [w.field for w in cfg.warnings] == ["restore_test.pitr_probe"]
    assert "no probe will be recorded" in str(cfg.warnings[0])


def test_a_streamed_source_is_not_warned(tmp_path: Path) -> None:
    assert config(tmp_path, {"tables": ["t"]}).warnings == []
