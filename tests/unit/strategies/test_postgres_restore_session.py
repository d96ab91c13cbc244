"""pg_restore's session settings: lz4 TOAST compression only where the server offers it, and
never over what the connection's own options already set."""

from __future__ import annotations

from typing import Any

import pytest

from drd.strategies.postgres import _Conn, _restore_session


class _Server:
    """The one catalog query _restore_session makes, answered as a given server would."""

    def __init__(self, enumvals: list[str] | None) -> None:
        self.row = None if enumvals is None else (enumvals,)
        self.queries = 0

    async def execute(self, query: str, params: Any = None) -> _Server:
        assert "pg_settings" in query
        self.queries += 1
        return self

    async def fetchone(self) -> Any:
        return self.row


@pytest.fixture(autouse=True)
def _no_inherited_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)


@pytest.mark.parametrize(
    ("enumvals", "pgoptions", "reported"),
    [
        (["pglz", "lz4"], "-c default_toast_compression=lz4", "lz4"),
        (["pglz"], None, "server default (lz4 not available)"),  # built without lz4
        (None, None, "server default (lz4 not available)"),  # PostgreSQL 13 and older
    ],
)
async def test_lz4_only_where_the_server_offers_it(
    enumvals: list[str] | None, pgoptions: str | None, reported: str
) -> None:
    env, toast = await _restore_session(_Server(enumvals), _Conn.parse("dbname=x"), "lz4")
    assert toast == reported
    assert env.get("PGOPTIONS") == pgoptions


async def test_the_connections_own_options_are_kept_and_extended() -> None:
    conn = _Conn.parse("dbname=x options='-c search_path=app'")
    env, toast = await _restore_session(_Server(["pglz", "lz4"]), conn, "lz4")
    assert toast == "lz4"
    assert env["PGOPTIONS"] == "-c search_path=app -c default_toast_compression=lz4"


async def test_server_choice_and_an_explicit_setting_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _Server(["pglz", "lz4"])
    env, toast = await _restore_session(server, _Conn.parse("dbname=x"), "server")
    assert (toast, env.get("PGOPTIONS")) == ("server default", None)
    # Inherited from drd's own environment, as libpq would use it.
    monkeypatch.setenv("PGOPTIONS", "-c default_toast_compression=pglz")
    env, toast = await _restore_session(server, _Conn.parse("dbname=x"), "lz4")
    assert (toast, env["PGOPTIONS"]) == (
        "as the connection options set",
        "-c default_toast_compression=pglz",
    )
    assert server.queries == 0
