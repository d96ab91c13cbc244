"""The MySQL/MariaDB scratch kinds without a server: the plan's entries, the guard, what the
ephemeral server is told at start, and the registry's records."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from drd.config.guard import refusal, same_mysql_database
from drd.restore_tests.spec import ScratchSpec, default_scratch
from drd.strategies.mysql import MysqlOptions
from drd.verify.scratch import ephemeral_mariadb
from drd.verify.scratch.registry import describe


def source(**fields: Any) -> MysqlOptions:
    return MysqlOptions(name="orders-db", user="drd", database="shop", **fields)


def test_default_scratch_of_a_mysql_source() -> None:
    spec = default_scratch("mysql")
    assert spec is not None and spec.kind == "ephemeral-mariadb"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "mysql-server"}, "field required for kind: mysql-server"),
        ({"kind": "mysql-server", "url": "mysql://drd:pw@h"}, "never put a password in the URL"),
        ({"kind": "mysql-server", "url": "postgresql://h/db"}, "expected mysql://"),
        ({"kind": "mysql-server", "url": "mysql://drd@h?ssl=1"}, "unknown parameter"),
        (
            {"kind": "mysql-server", "url": "mysql://h", "dir": "/x"},
            "only applies to kind: ephemeral-postgres or tempdir or ephemeral-mariadb",
        ),
        ({"kind": "ephemeral-mariadb", "url": "mysql://h"}, "only applies to kind: mysql-server"),
    ],
)
def test_scratch_entries_that_are_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScratchSpec.model_validate(entry)


def test_a_password_reference_is_not_read_when_validating() -> None:
    spec = ScratchSpec.model_validate(
        {"kind": "mysql-server", "url": "mysql://drd@h?password=env:NOT_SET_ANYWHERE"}
    )
    assert spec.url is not None and "NOT_SET_ANYWHERE" not in repr(spec)
    spec = ScratchSpec.model_validate(
        {"kind": "ephemeral-mariadb", "dir": "/var/tmp", "bin_dir": "/opt/mariadb/bin"}
    )
    assert spec.user is None


@pytest.mark.parametrize(
    ("url", "fields", "same"),
    [
        ("mysql://drd@localhost/shop", {}, True),
        ("mysql://drd@127.0.0.1:3306/shop", {"host": "localhost"}, True),
        ("mysql://drd@localhost/shop?socket=/run/mysqld/mysqld.sock", {}, True),
        ("mysql://drd@DB1/shop", {"host": "db1"}, True),
        ("mysql://drd@localhost:3307/shop", {}, False),  # another local server
        ("mysql://drd@localhost/other", {}, False),
        ("mysql://drd@localhost", {}, False),  # the same server, drd's own database: fine
        ("mysql://drd@db2/shop", {"host": "db1"}, False),
    ],
)
def test_same_mysql_database(url: str, fields: dict[str, Any], same: bool) -> None:
    assert same_mysql_database(url, source(**fields)) is same


def test_the_guard_refuses_the_source_database() -> None:
    spec = ScratchSpec.model_validate({"kind": "mysql-server", "url": "mysql://drd@localhost/shop"})
    refused = refusal(spec, source())
    assert refused is not None and refused[0] == "url"
    assert "names the database of source orders-db itself" in refused[1]
    fine = ScratchSpec.model_validate({"kind": "mysql-server", "url": "mysql://drd@localhost"})
    assert refusal(fine, source()) is None


def test_the_server_takes_no_login_without_the_password() -> None:
    sql = ephemeral_mariadb._init_sql("mariadb", "p'w\\x")
    assert "DELETE FROM mysql.global_priv WHERE User = ''" in sql
    assert "IDENTIFIED BY 'p''w\\\\x'" in sql
    assert sql.count("ALTER USER") == 2
    assert "global_priv" not in ephemeral_mariadb._init_sql("mysql", "pw")
    argv = ephemeral_mariadb._server_argv(
        ephemeral_mariadb.Path("/tmp/drd-scratch-x"),
        ephemeral_mariadb.ServerBinaries("mariadb", ephemeral_mariadb.Path("/d"), None, "10"),
        "mysql",
        5555,
    )
    assert "--bind-address=127.0.0.1" in argv and "--event-scheduler=OFF" in argv
    assert "--skip-name-resolve" in argv and "--user=mysql" in argv
    assert not any(a.startswith("--max-allowed-packet") for a in argv)  # the server's default


def test_definers_and_database_names() -> None:
    metadata = {
        "database": "shop",
        "statistics": {
            "inventory": {
                "view `v`": {"definer": "app@%"},
                "function `f`": {"definer": "app@%"},
                "trigger `t`": {"definer": "odd@user@10.0.0.%"},
                "event `e`": {"definer": None},
            }
        },
    }
    assert ephemeral_mariadb.definers(metadata) == [("app", "%"), ("odd@user", "10.0.0.%")]
    assert ephemeral_mariadb.definers({}) == []
    assert ephemeral_mariadb._database_name(metadata) == "shop"
    assert ephemeral_mariadb._database_name({"database": "mysql"}) == "restored"
    assert ephemeral_mariadb._source_flavour({"server_version": "8.0.36"}) == "mysql"
    assert ephemeral_mariadb._source_flavour({"server_version": "10.11.6-MariaDB"}) == "mariadb"


def test_registry_descriptions() -> None:
    assert describe({"kind": "ephemeral-mariadb", "root": "/tmp/drd-scratch-1"}) == (
        "ephemeral MariaDB/MySQL server in /tmp/drd-scratch-1"
    )
    assert (
        describe({"kind": "mysql-server", "database": "drd_scratch_1", "url": "mysql://drd@h"})
        == "scratch database drd_scratch_1 (mysql://drd@h)"
    )
