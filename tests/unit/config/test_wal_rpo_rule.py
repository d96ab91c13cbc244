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
