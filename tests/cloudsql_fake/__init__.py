"""A local Cloud SQL Admin API (v1) for tests: see app.py for what it implements.

Fixture (import it into a test module, or load this package as a pytest plugin):

    cloudsql_api(gcs_endpoint=None) -> FakeCloudSql   a started fake on a free loopback port
                                                      (`.base_url`); stopped and its local
                                                      databases dropped at teardown
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.cloudsql_fake.app import FakeCloudSql, pg_database_name, pg_dsn, running_in_thread

StartCloudSql = Callable[..., FakeCloudSql]


@pytest.fixture(name="cloudsql_api")
def cloudsql_api_fixture(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartCloudSql]:
    """`cloudsql_api(gcs_endpoint=None)` -> a started FakeCloudSql (several may be started)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    started: list[tuple[FakeCloudSql, object]] = []

    def start(gcs_endpoint: str | None = None) -> FakeCloudSql:
        fake = FakeCloudSql(gcs_endpoint, tmp_path_factory.mktemp("fake-cloudsql"))
        stopper = running_in_thread(fake)
        started.append((fake, stopper))
        return fake

    try:
        yield start
    finally:
        for fake, stopper in started:
            stopper.stop()  # type: ignore[attr-defined]
            fake.cleanup()


__all__ = [
    "FakeCloudSql",
    "StartCloudSql",
    "cloudsql_api_fixture",
    "pg_database_name",
    "pg_dsn",
]
