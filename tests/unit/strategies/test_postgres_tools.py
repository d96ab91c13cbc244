"""Finding pg_dump / pg_restore: Debian's pg_wrapper is skipped when real binaries exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drd.strategies import postgres_tools as postgres


def _wrapper_on_path(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    share = tmp_path / "share"
    share.mkdir()
    wrapper = share / "pg_wrapper"
    wrapper.write_text("#!/bin/sh\necho 'pg_restore (PostgreSQL) 15.0'\n")
    wrapper.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / name).symlink_to(wrapper)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir / name


def test_pg_wrapper_is_not_probed_beside_versioned_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versioned = Path("/usr/lib/postgresql/99/bin/pg_restore")
    real_glob = postgres.glob.glob

    def fake_glob(pattern: str) -> list[str]:
        if pattern == "/usr/lib/postgresql/*/bin/pg_restore":
            return [str(versioned)]
        return real_glob(pattern)

    wrapper = _wrapper_on_path(tmp_path, "pg_restore", monkeypatch)
    monkeypatch.setattr(postgres.glob, "glob", fake_glob)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    candidates = postgres._candidates("pg_restore", None)
    assert str(versioned) in candidates
    assert str(wrapper) not in candidates


def test_pg_wrapper_alone_is_still_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper = _wrapper_on_path(tmp_path, "drd_test_tool", monkeypatch)
    assert postgres._candidates("drd_test_tool", None) == [str(wrapper)]
