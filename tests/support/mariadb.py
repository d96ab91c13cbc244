"""Real-MariaDB helpers for tests: throwaway databases, a rich test schema, comparisons.

The server is the local MariaDB 10.11 (127.0.0.1:3306, root, no password; see
/work/shared/notes/test-environment.md). Every database a test creates has a unique name and is
dropped in fixture teardown (with any `<name>_drd_restoring_*` staging database a failed restore
could have left), so tests can run concurrently with other test sessions.

Fixtures (import them into a test module, or load this module as a pytest plugin):
    mariadb_factory    make databases / reserve restore-target names; all dropped afterwards
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import databases
from tests.support.databases import DatabaseFactory

MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
MARIADB_USER = "root"


def _client_env() -> dict[str, str]:
    # A test may set MYSQL_PWD to prove the strategy ignores it: the helpers ignore it too.
    return {k: v for k, v in os.environ.items() if k != "MYSQL_PWD"}


def mariadb(
    sql: str, database: str | None = None, *, raw: bool = False, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `sql` through the mariadb client (batch mode, no column names)."""
    argv = [
        "mariadb",
        "--no-defaults",
        f"--host={MARIADB_HOST}",
        f"--port={MARIADB_PORT}",
        f"--user={MARIADB_USER}",
        "--protocol=TCP",
        "--default-character-set=utf8mb4",
        "--batch",
        "--skip-column-names",
        *(["--raw"] if raw else []),
        *([f"--database={database}"] if database else []),
    ]
    proc = subprocess.run(
        argv, input=sql, capture_output=True, text=True, check=False, env=_client_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mariadb failed: {proc.stderr}\nSQL: {sql[:500]}")
    return proc


def query(sql: str, database: str | None = None) -> list[list[str]]:
    """Rows as raw text fields (use HEX()/JSON in the query for binary or NULL-sensitive data)."""
    out = mariadb(sql, database, raw=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def target_url(database: str) -> str:
    return f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"


def unique_name(prefix: str = "drdm") -> str:
    return databases.unique_name(prefix)


def database_exists(name: str) -> bool:
    rows = query(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA "
        f"WHERE SCHEMA_NAME = CONVERT(X'{name.encode().hex()}' USING utf8mb4)"
    )
    return rows[0][0] == "1"


def databases_like(pattern: str) -> list[str]:
    rows = query(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
        f"WHERE SCHEMA_NAME LIKE CONVERT(X'{pattern.encode().hex()}' USING utf8mb4) ORDER BY 1"
    )
    return [r[0] for r in rows]


def drop_database(name: str) -> None:
    mariadb(f"DROP DATABASE IF EXISTS `{name}`")


# A little of everything mariadb-dump must carry: utf8mb4 text (4-byte characters), BLOBs with
# every byte value, quotes/backslashes/newlines/semicolons and dump-lookalike text in data,
# NULLs, a foreign key, a generated column, an odd table name, views (one on another), a
# trigger, a procedure, a function and an event.
_RICH_SCHEMA = r"""
CREATE TABLE customers (
    id          INT AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(200) NOT NULL,
    city        VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci,
    note        TEXT,
    balance     DECIMAL(12, 2),
    created_at  DATETIME(6) NOT NULL,
    name_len    INT AS (CHAR_LENGTH(name)) VIRTUAL,
    UNIQUE KEY customers_name (name),
    KEY customers_city (city)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci COMMENT='Kunden; clients';
INSERT INTO customers (name, city, note, balance, created_at)
SELECT CONCAT('customer ', seq),
       ELT(1 + seq % 6, 'Zürich', '東京', 'São Paulo', 'Москва', NULL, '🦀 Crabtown'),
       CASE seq % 5
         WHEN 0 THEN NULL
         WHEN 1 THEN 'it''s a \\ backslash; and a "quote"'
         WHEN 2 THEN CONCAT('line one\nline two\r\n\ttabbed ', seq)
         WHEN 3 THEN '\nINSERT INTO `customers` VALUES (1,''x''),(2,''y'');\nDELIMITER ;;\n'
         ELSE 'NULL'
       END,
       ROUND((seq * 37 % 100000) / 7.0, 2),
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL seq * 67123456 MICROSECOND
FROM seq_1_to_@customers@;

CREATE TABLE orders (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    customer_id  INT NOT NULL,
    amount       DECIMAL(12, 2) NOT NULL CHECK (amount >= 0),
    note         VARCHAR(100),
    CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO orders (customer_id, amount, note)
SELECT 1 + seq % @customers@, (seq % 1000) + 0.99,
       ELT(1 + seq % 3, NULL, 'rush 🚚', 'Lieferung nach Zürich')
FROM seq_1_to_@orders@;

CREATE TABLE blobs (
    id       INT PRIMARY KEY,
    payload  BLOB,
    big      MEDIUMBLOB,
    digest   BINARY(16)
) ENGINE=InnoDB;
INSERT INTO blobs
SELECT seq,
       CASE WHEN seq % 4 = 0 THEN NULL
            ELSE UNHEX(CONCAT(MD5(seq), '00275c0a0d1a22', MD5(seq + 1))) END,
       CASE WHEN seq = 1
            THEN (SELECT GROUP_CONCAT(CHAR(s.seq - 1) SEPARATOR '') FROM seq_1_to_256 s)
            WHEN seq = 2 THEN REPEAT(UNHEX('00FF27'), 100000)
            ELSE NULL END,
       UNHEX(MD5(seq))
FROM seq_1_to_@blobs@;

CREATE TABLE `odd ``name`` table` (`weird col` VARCHAR(50), n INT) DEFAULT CHARSET=utf8mb4;
INSERT INTO `odd ``name`` table` VALUES ('Wert ✓', 1), (NULL, 2), ('a`b', 3);

CREATE TABLE empty_table (id INT PRIMARY KEY) ENGINE=InnoDB;

CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(200)) ENGINE=InnoDB;

CREATE VIEW big_spenders AS
SELECT c.id, c.name, SUM(o.amount) AS total
FROM customers c JOIN orders o ON o.customer_id = c.id
GROUP BY c.id, c.name HAVING SUM(o.amount) > 1000;

CREATE VIEW top_spender AS SELECT * FROM big_spenders ORDER BY total DESC LIMIT 1;

DELIMITER ;;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
BEGIN
  INSERT INTO audit (what) VALUES (CONCAT('order ', NEW.id, ' für ', NEW.customer_id));
END;;
CREATE FUNCTION order_count(cid INT) RETURNS INT READS SQL DATA
BEGIN
  DECLARE n INT;
  SELECT COUNT(*) INTO n FROM orders WHERE customer_id = cid;
  RETURN n;
END;;
CREATE PROCEDURE add_customer(IN p_name VARCHAR(200))
BEGIN
  INSERT INTO customers (name, created_at) VALUES (p_name, NOW(6));
END;;
DELIMITER ;
CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE
DO DELETE FROM audit WHERE id < 0;
"""


def populate_rich_database(database: str, rows: int = 5_000) -> dict[str, int]:
    """Build the rich schema in `database` with about `rows` rows; returns rows per table."""
    counts = {"customers": max(rows // 5, 10), "orders": max(rows * 3 // 5, 10), "blobs": 50}
    script = _RICH_SCHEMA
    for key, value in counts.items():
        script = script.replace(f"@{key}@", str(value))
    mariadb(script, database)
    counts["audit"] = 0
    counts["odd `name` table"] = 3
    counts["empty_table"] = 0
    return counts


def dump_text(database: str) -> str:
    """The database as mariadb-dump prints it (one row per INSERT, primary-key order, no
    comments): equal texts mean equal schema, objects and content."""
    argv = [
        "mariadb-dump",
        "--no-defaults",
        f"--host={MARIADB_HOST}",
        f"--port={MARIADB_PORT}",
        f"--user={MARIADB_USER}",
        "--protocol=TCP",
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--skip-comments",
        "--skip-dump-date",
        "--skip-extended-insert",
        "--order-by-primary",
        "--default-character-set=utf8mb4",
        database,
    ]
    proc = subprocess.run(argv, capture_output=True, check=True, env=_client_env())
    return proc.stdout.decode("utf-8")


@dataclass(frozen=True)
class MariaDatabase:
    name: str

    @property
    def url(self) -> str:
        return target_url(self.name)


class MariaDbFactory(DatabaseFactory[MariaDatabase]):
    """MariaDB databases on the test server (tests.support.databases: the shared shape)."""

    def __init__(self) -> None:
        super().__init__(
            prefix="drdm",
            create=lambda name: mariadb(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
            drop=drop_database,
            like=databases_like,
            handle=MariaDatabase,
        )


@pytest.fixture(name="mariadb_factory")
def mariadb_factory_fixture() -> Iterator[MariaDbFactory]:
    """Fixture `mariadb_factory`: make databases; all dropped after the test."""
    factory = MariaDbFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


__all__ = [
    "MariaDatabase",
    "MariaDbFactory",
    "database_exists",
    "databases_like",
    "drop_database",
    "dump_text",
    "mariadb",
    "mariadb_factory_fixture",
    "populate_rich_database",
    "query",
    "target_url",
    "unique_name",
]
