"""The schedule-vs-RPO rule for continuously archived physical sources: their RPO is bounded by
partial_every, not by the base backups' schedule (drd.config.rules.check_wal_rpo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drd.config.loader import load_config
from drd.errors import ConfigError
from tests.support.drdenv import DrdEnv

PHYSICAL = {"name": "db", "kind": "postgres-physical", "dsn": "host=127.0.0.1 port=1"}


def config(tmp_path: Path, sources: list[dict[str, Any]]) -> Any:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("billing", sources, targets={"rpo": "1m", "rto": "1h"}, schedule={"every": "24h"})
    return load_config(env.write())


def test_streamed_physical_sources_meet_the_rpo_with_daily_base_backups(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{**PHYSICAL, "partial_every": "15s"}])
    assert cfg.plan("billing").sources[0].name == "db"


def test_partial_every_must_fit_the_rpo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\[0\]\.partial_every: cannot meet the RPO"):
        config(tmp_path, [{**PHYSICAL, "partial_every": "2m"}])


@pytest.mark.parametrize(
    "other",
    [
        {"name": "logical", "kind": "postgres", "dsn": "host=127.0.0.1 port=1"},
        {**PHYSICAL, "name": "pushed", "archive": "command"},
    ],
)
def test_other_sources_still_need_the_schedule(tmp_path: Path, other: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="schedule cannot meet the RPO target"):
        config(tmp_path, [PHYSICAL, other])


def test_two_sources_of_one_server_may_not_share_a_slot(tmp_path: Path) -> None:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    dsn = "host=10.0.0.5 port=5433 dbname=postgres"
    for plan in ("billing", "shop"):
        env.add_plan(
            plan,
            [{**PHYSICAL, "dsn": dsn, "slot": "drd_main"}],
            targets={"rpo": "1m", "rto": "1h"},
        )
    with pytest.raises(ConfigError) as err:
        load_config(env.write())
    assert "replication slot drd_main on 10.0.0.5:5433 is also billing/db's" in str(err.value)
    assert "sources[0].slot" in str(err.value)
    # On another server, or under their default names, they do not collide.
    env.plans["shop"]["sources"][0]["dsn"] = "host=10.0.0.6 port=5433"
    cfg = load_config(env.write())
    assert [p.name for p in cfg.plans] == ["billing", "shop"]
    for plan in env.plans.values():
        plan["sources"][0].pop("slot")
        plan["sources"][0]["dsn"] = dsn
    assert len(load_config(env.write()).plans) == 2
