"""The parts of the mysql strategy that need no server: counting rows in a dump stream, the
client's batch-output decoding, target URLs, option files and options."""

from __future__ import annotations

import os
import stat
from typing import Any

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


# The shapes issue 16 found: a column list (INVISIBLE or generated columns, history columns,
# unquoted and odd names), a sequence's DO SETVAL, rows digested and the largest statement.
FIDELITY_DUMP = rb"""DROP SEQUENCE IF EXISTS `s`;
CREATE SEQUENCE `s` start with 100 minvalue 1 maxvalue 9223372036854775806 increment by 1;
DO SETVAL(`s`, 1100, 0);
DO SETVAL(`odd ``seq`, -5, 1);
INSERT INTO `t` (`id`, `a`, `h`) VALUES (1,1,1),
(2,2,2),
(3,3,3),
(4,4,4);
INSERT INTO `vt` (`id`, `x`, row_start, row_end) VALUES (1,1,'2026-12-03 14:32:18','x'),
(1,2,'a)b','2038-01-19 03:14:07.999999');
INSERT INTO `w` (`we(ird``)`, `b`) VALUES ('(',')'),(NULL,'');
INSERT INTO `g` VALUES (1,1,2),(2,2,4);
"""


def read(
    chunks: list[bytes], digest_rows: int | None = 0, ranges: dict[str, Any] | None = None
) -> RowCounter:
    counter = RowCounter(digest_rows, ranges)
    for chunk in chunks:
        counter.feed(chunk)
    return counter


def test_row_counter_column_lists_and_sequences() -> None:
    whole = read([FIDELITY_DUMP])
    assert whole.counts == {"t": 4, "vt": 2, "w": 2, "g": 2}
    assert whole.sequences == {"s": [1100, 0], "odd `seq": [-5, 1]}
    assert {t: d.rows for t, d in whole.digests.items()} == whole.counts
    assert whole.largest.table == "vt"
    first = FIDELITY_DUMP.index(b"INSERT INTO `vt`")
    assert whole.largest.bytes == FIDELITY_DUMP.index(b";", first) + 1 - first
    for cut in range(1, len(FIDELITY_DUMP)):
        split = read([FIDELITY_DUMP[:cut], FIDELITY_DUMP[cut:]])
        assert split.counts == whole.counts, cut
        assert split.sequences == whole.sequences, cut
        assert {t: d.hexdigest for t, d in split.digests.items()} == {
            t: d.hexdigest for t, d in whole.digests.items()
        }, cut
        assert split.largest == whole.largest, cut


def test_row_digests_sample_order_and_content() -> None:
    rows = [f"({i},'v{i}')".encode() for i in range(10)]
    forward = b"INSERT INTO `t` VALUES " + b",".join(rows) + b";\n"
    backward = b"INSERT INTO `t` VALUES " + b",".join(reversed(rows)) + b";\n"
    assert read([forward]).digests["t"].hexdigest == read([backward]).digests["t"].hexdigest
    changed = forward.replace(b"'v7'", b"'v8'")
    assert read([changed]).digests["t"].hexdigest != read([forward]).digests["t"].hexdigest
    sample = read([forward], 3).digests["t"]
    head = b"INSERT INTO `t` VALUES " + b",".join(rows[:3]) + b";\n"
    assert sample.rows == 3 and sample.hexdigest == read([head]).digests["t"].hexdigest
    assert read([forward], None).digests == {}


def test_client_errors_carry_no_row_data() -> None:
    from drd.strategies.mysql_client import safe_error_text

    said = (
        "--------------\nINSERT INTO `t` VALUES (1,'4111 1111 1111 1111')\n--------------\n\n"
        "ERROR 1062 (23000) at line 3: Duplicate entry '4111 1111 1111 1111' for key 'PRIMARY'\n"
        "ERROR 1064 (42000) at line 9: You have an error in your SQL syntax; check the manual "
        "near 'secret-value' at line 1\n"
        "ERROR 1370 (42000) at line 183: execute command denied to user 'app'@'%' for routine "
        "'shop.f'\n"
        "ERROR 2006 (HY000) at line 42: Server has gone away\n"
    )
    text = safe_error_text(said)
    assert "4111" not in text and "secret-value" not in text
    assert "ERROR 1062 (23000) at line 3: Duplicate entry '...' (quoted values cut)" in text
    obrien = safe_error_text("ERROR 1062 (23000): Duplicate entry 'O'Brien' for key 'PRIMARY'")
    assert "Brien" not in obrien
    assert "for routine 'shop.f'" in text and "ERROR 2006 (HY000) at line 42" in text
    assert safe_error_text("x" * 9000) == "(no error message)"


def test_key_ranges_spread_over_the_table() -> None:
    from drd.strategies.mysql_stats import SAMPLE_RANGES, spread

    assert spread(1, 800, 800, 1000) == [[1, 800]]  # fits the budget: the whole table
    ranges = spread(1, 1_000_000, 1_000_000, 1000)
    assert len(ranges) == SAMPLE_RANGES
    assert ranges[0] == [1, 100] and ranges[-1] == [900_001, 900_100]
    assert sum(high - low + 1 for low, high in ranges) == 1000
    sparse = spread(-50, 10_000_000, 1000, 100)  # keys far apart: wider ranges
    assert sum(high - low + 1 for low, high in sparse) > 100
    assert sparse[0][0] == -50


def test_rows_in_key_ranges_are_digested_wherever_they_are() -> None:
    rows = [f"({i},'v{i}')".encode() for i in (5, 17, 3, 250, 12, -1)]
    dump = b"INSERT INTO `t` VALUES " + b",".join(rows) + b";\n"
    counter = read([dump], 1, None)
    assert counter.digests["t"].rows == 1  # the head: only the first row
    ranged = RowCounter(1, {"t": [[1, 5], [12, 20]]})
    ranged.feed(dump)
    assert ranged.digests["t"].rows == 4  # 5, 17, 3, 12: the budget does not cut key ranges
    assert ranged.counts["t"] == 6


def test_tool_failures_keep_the_tool_line_and_no_data() -> None:
    from drd.strategies._subprocess import ToolError
    from drd.strategies.mysql import tool_failure

    dump = ToolError("mariadb-dump", 2, "mariadb-dump: Couldn't execute 'SELECT 42': Boom (1064)")
    assert tool_failure(dump, []) == (
        "mariadb-dump exited with status 2: mariadb-dump: Couldn't execute '...': Boom (1064)"
    )
    client = ToolError("mariadb", 1, "ERROR 2013 (HY000) at line 7: Lost connection pw123")
    assert tool_failure(client, ["pw123"]) == (
        "mariadb exited with status 1: ERROR 2013 (HY000) at line 7: Lost connection ***"
    )
    assert "could not be started" in tool_failure(ToolError("mariadb", None, "no such file"), [])
