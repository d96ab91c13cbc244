"""Test hygiene shared by every test: no DRD_* variable leaks in from the caller's shell, and no
Google library ever falls back to ambient credentials (which would probe the metadata server)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Shared fixtures live in tests/support; registered here so every test module can use them.
pytest_plugins = [
    "tests.support.blob_strategy",
    "tests.support.fakegcs",
    "tests.support.gcs_emulator",
    "tests.support.pg",
    "tests.support.pg_estate",
    "tests.support.pgcluster",
    "tests.support.mariadb",
    "tests.cloudsql_fake",
]


@pytest.fixture(autouse=True)
def _scrub_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("DRD_") or name in {
            "CREDENTIALS_DIRECTORY",
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
            "WATCHDOG_USEC",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "STORAGE_EMULATOR_HOST",
        }:
            monkeypatch.delenv(name, raising=False)
    # If anything ever tried ambient discovery, make it fail fast instead of calling out.
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    # Secrets a test read from the environment are not kept for the next test.
    from drd import secret_source

    secret_source._taken.clear()
    # Each test starts with a cold manifest cache kept nowhere (a CLI command called in-process
    # would otherwise point the process's cache at that test's state directory).
    from drd.repository import manifest_cache

    manifest_cache.PROCESS_CACHE.clear()
    manifest_cache.PROCESS_CACHE.path = None
    manifest_cache.PROCESS_CACHE._unread = False
    # drd's CLI makes its process non-dumpable with a core limit of 0 at start: called in-process,
    # that would harden the test runner itself for every later test (and their children). The
    # hardening is tested on real drd processes (test_secret_source, test_daemon_key_material).
    monkeypatch.setattr("drd.cli.main.protect_process", lambda: [])
    yield
