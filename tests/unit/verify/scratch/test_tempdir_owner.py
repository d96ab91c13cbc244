"""A scratch directory is handed to the OS user a restore writes it as: a physical PostgreSQL
base backup is extracted by tar running as the cluster's user when drd is root, which must be
able to enter the directory; other kinds keep it drd's."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchRequest
from drd.verify.scratch.tempdir import open_env


def owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


@pytest.mark.parametrize(
    ("kind", "as_root"),
    [("postgres-physical", "postgres"), ("files", "root"), ("sqlite", "root")],
)
async def test_the_scratch_directory_belongs_to_who_restores_into_it(
    tmp_path: Path, kind: str, as_root: str
) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    expected = as_root if os.geteuid() == 0 else me
    spec = ScratchSpec(kind="tempdir", dir=tmp_path)
    async with open_env(spec, ScratchRequest(kind, {}, tmp_path / "state", "p/s")) as env:
        directory = Path(env.resource)
        assert owner(directory) == expected
        assert (directory.stat().st_mode & 0o777) == 0o700
    assert not directory.exists()
