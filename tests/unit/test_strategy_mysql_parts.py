"""The parts of the mysql strategy that need no server: counting rows in a dump stream, the
client's batch-output decoding, target URLs, option files and options."""

from __future__ import annotations

import os
import stat

import pytest

from drd.errors import ConfigError
from drd.strategies import get_strategy
from drd.strategies.mysql import (
    MysqlOptions,
    MysqlStrategy,
    _Definition,
    _views_in_dependency_order,
    staging_name,
)
from drd.strategies.mysql_client import Server, _decode_batch, options_file, parse_target
from drd.strategies.mysql_dump import RowCounter

DUMP = rb"""/*M!999999\- enable the sandbox mode */
-- MariaDB dump
/*!40101 SET NAMES utf8mb4 */;
DROP TABLE IF EXISTS `t`;
CREATE TABLE `t` (
  `id` int(11) NOT NULL,
  `s` text DEFAULT NULL COMMENT 'INSERT INTO `x` VALUES (1);',
  PRIMARY KEY (`id`)
);
LOCK TABLES `t` WRITE;
INSERT INTO `t` VALUES
(1,'a	b\nc\\d\'e'),
(2,NULL),
(3,'it''s (not) a row; really'),
(4,'\\'),
(5,'INSERT INTO `t` VALUES (9,''x'');'),
(6,0x00FF27);
INSERT INTO `t` VALUES (7,'x'),(8,'(('),(9,'))');
UNLOCK TABLES;
INSERT INTO `odd ``name`` t` VALUES (1,'x'),(2,'y');
INSERT INTO `empty` VALUES ();
DELIMITER ;;
CREATE PROCEDURE p()
BEGIN
INSERT INTO `t` VALUES (100,'not data');
INSERT INTO `t` VALUES (101,'not data');
END ;;
DELIMITER ;
INSERT INTO `t` VALUES (10,'after the procedure');
/*!50001 VIEW `v` AS select 1 */;
"""
EXPECTED = {"t": 10, "odd `name` t": 2, "empty": 1}


def count(chunks: list[bytes]) -> dict[str, int]:
    counter = RowCounter()
    for chunk in chunks:
        counter.feed(chunk)
    return counter.counts


def test_row_counter_whole() -> None:
    assert count([DUMP]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64])
def test_row_counter_any_chunking(size: int) -> None:
    chunks = [DUMP[i : i + size] for i in range(0, len(DUMP), size)]
    assert count(chunks) == EXPECTED


def test_row_counter_every_split_point() -> None:
    for cut in range(1, len(DUMP)):
        assert count([DUMP[:cut], DUMP[cut:]]) == EXPECTED, cut


def test_row_counter_mysql_single_line_format() -> None:
    # MySQL's mysqldump writes all rows of a statement on one line.
    line = b"INSERT INTO `a` VALUES (1,'x'),(2,'y;z'),(3,'\\')'),(4,'''');\n"
    assert count([line * 3]) == {"a": 12}


def test_row_counter_no_backslash_escapes() -> None:
    assert count([b"INSERT INTO `a` VALUES ('a''(b'),('c''''');\n"]) == {"a": 2}


def test_decode_batch() -> None:
    assert _decode_batch("NULL") is None
    assert _decode_batch("a\\tb\\nc\\\\d\\0") == "a\tb\nc\\d\0"
    assert _decode_batch("plain") == "plain"


def test_parse_target(monkeypatch: pytest.MonkeyPatch) -> None:
    server, db = parse_target("mysql://app@db.example:3307/billing_restored")
    assert (server.host, server.port, server.user, server.password, db) == (
        "db.example",
        3307,
        "app",
        None,
        "billing_restored",
    )
    monkeypatch.setenv("RESTORE_PW", "s3cret\n")
    server, _ = parse_target("mysql://app@h/db?password=env:RESTORE_PW")
    assert server.password == "s3cret"
    assert "s3cret" not in repr(server)
    with pytest.raises(ValueError, match="never put a password"):
        parse_target("mysql://app:pw@h/db")
    with pytest.raises(ValueError, match="name the database"):
        parse_target("mysql://app@h/")
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_target("mysql://app@h/db?ssl=1")
    with pytest.raises(ValueError):
        parse_target("postgresql://h/db")
    with pytest.raises(ConfigError):
        parse_target("mysql://app@h/db?password=env:NOT_SET_ANYWHERE")


def test_options_file_is_private_and_escaped() -> None:
    server = Server("h", 3306, "u", None, 'pa"ss\\word')
    with options_file(server) as path:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with open(path) as f:
            text = f.read()
        assert 'password="pa\\"ss\\\\word"' in text
    assert not os.path.exists(path)
    with pytest.raises(ValueError), options_file(Server(password="a\nb")):
        pass


def test_options_and_registry() -> None:
    assert get_strategy("mysql") is MysqlStrategy
    opts = MysqlOptions(
        name="db", user="app", database="shop", password_from={"source": "env", "name": "PW"}
    )
    assert opts.password_from is not None and opts.password_from.name == "PW"
    with pytest.raises(ValueError):
        MysqlOptions(name="db", user="app", database="shop", password="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        MysqlOptions(
            name="db", user="u", database="d", password_from={"source": "env", "name": "A B"}
        )
    assert len(staging_name("x" * 64)) <= 64


def test_views_dependency_order() -> None:
    def view(name: str, text: str) -> _Definition:
        return _Definition("VIEW", name, text, None, "utf8mb4", "utf8mb4_general_ci")

    ordered = _views_in_dependency_order(
        [view("a", "select * from `c`"), view("b", "select 1"), view("c", "select * from `b`")]
    )
    assert [v.name for v in ordered] == ["b", "c", "a"]
    cyclic = _views_in_dependency_order([view("x", "`y`"), view("y", "`x`")])
    assert sorted(v.name for v in cyclic) == ["x", "y"]
