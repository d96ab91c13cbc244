"""drd.strategies.postgres_toc without a server: the TOC scanner on archives built here byte by
byte in pg_dump's layout (versions 1.12, 1.14, 1.15, 1.16: only pg_dump 15 is installed, its
real archives are read in tests/integration/test_postgres_fidelity.py), fed in pieces of every
size; and the statement helpers (split, retarget, describe)."""

from __future__ import annotations

import pytest

from drd.strategies.postgres_toc import (
    TocError,
    TocScanner,
    TocWatcher,
    describe,
    retarget,
    split_statements,
)

INT_SIZE = 4
OFF_SIZE = 8


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(INT_SIZE, "little")


def _str(value: bytes | None) -> bytes:
    return _int(-1) if value is None else _int(len(value)) + value


def _entry(version: tuple[int, int], dump_id: int, desc: bytes, tag: bytes, defn: bytes,
           owner: bytes = b"") -> bytes:  # fmt: skip
    out = _int(dump_id) + _int(0) + _str(b"0") + _str(b"0") + _str(tag) + _str(desc)
    out += _int(1) + _str(defn) + _str(b"") + _str(b"") + _str(b"") + _str(b"")
    if version >= (1, 14):
        out += _str(b"")  # table access method
    if version >= (1, 16):
        out += _int(0)  # relkind
    out += _str(owner) + _str(b"false") + _str(b"1") + _str(None)
    return out + bytes([3]) + bytes(OFF_SIZE)  # no data


def archive(version: tuple[int, int], entries: list[tuple[bytes, bytes, bytes, bytes]]) -> bytes:
    head = b"PGDMP" + bytes([version[0], version[1], 0, INT_SIZE, OFF_SIZE, 1])
    head += bytes([0]) if version >= (1, 15) else _int(0)
    head += b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    head += _str(b"shop") + _str(b"15.20") + _str(b"15.20")
    body = _int(len(entries)) + b"".join(
        _entry(version, i + 1, desc, tag, defn, owner)
        for i, (desc, tag, defn, owner) in enumerate(entries)
    )
    return head + body + b"\x01\x02 table data that is never parsed" * 100


ENTRIES = [
    (b"ENCODING", b"ENCODING", b"SET client_encoding = 'UTF8';\n", b""),
    (b"STDSTRINGS", b"STDSTRINGS", b"SET standard_conforming_strings = 'on';\n", b""),
    (b"DATABASE", b"shop", b"CREATE DATABASE shop WITH TEMPLATE = template0;\n", b"app"),
    (
        b"DATABASE PROPERTIES",
        b"shop",
        b"ALTER DATABASE shop CONNECTION LIMIT = 7;\n"
        b"ALTER DATABASE shop SET search_path TO 'app', 'public';\n"
        b"ALTER ROLE reader IN DATABASE shop SET statement_timeout TO '5s';\n",
        b"app",
    ),
    (b"TABLE", b"orders", b"CREATE TABLE orders (id int);\n", b"app"),
    (b"COMMENT", b"DATABASE shop", b"COMMENT ON DATABASE shop IS 'the shop; ''main''';\n", b""),
    (b"COMMENT", b"TABLE orders", b"COMMENT ON TABLE orders IS 'x';\n", b""),
    (
        b"ACL",
        b"DATABASE shop",
        b"REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;\n"
        b"GRANT CONNECT ON DATABASE shop TO reader;\n",
        b"app",
    ),
    (b"ACL", b"TABLE orders", b"GRANT SELECT ON TABLE orders TO reader;\n", b"app"),
]


@pytest.mark.parametrize("version", [(1, 12), (1, 14), (1, 15), (1, 16)])
@pytest.mark.parametrize("piece", [1, 3, 64, 1 << 20])
def test_scanner_keeps_the_database_entries_in_pieces_of_any_size(
    version: tuple[int, int], piece: int
) -> None:
    data = archive(version, ENTRIES)
    scanner = TocScanner()
    for i in range(0, len(data), piece):
        scanner.feed(data[i : i + piece])
    found = scanner.finish()
    assert found.version[:2] == version
    assert found.has_database_entry and found.name == b"shop" and found.owner == b"app"
    assert found.encoding == "UTF8" and found.std_strings
    assert len(found.properties) == 1 and b"CONNECTION LIMIT = 7" in found.properties[0]
    assert found.comments == [b"COMMENT ON DATABASE shop IS 'the shop; ''main''';\n"]
    assert len(found.acl) == 1 and b"TO reader" in found.acl[0]  # the table's ACL is not kept


def test_scanner_refuses_what_it_cannot_read() -> None:
    for data, message in (
        (b"PK\x03\x04 a zip file", "no PGDMP header"),
        (archive((1, 17), ENTRIES), "archive format 1.17 is not one drd reads"),
        (archive((1, 11), ENTRIES), "archive format 1.11"),
    ):
        scanner = TocScanner()
        scanner.feed(data)
        with pytest.raises(TocError, match=message):
            scanner.finish()
    truncated = TocScanner()
    truncated.feed(archive((1, 14), ENTRIES)[:200])
    with pytest.raises(TocError, match="ended inside its table of contents"):
        truncated.finish()


async def test_watcher_passes_every_byte_and_stops_at_an_unreadable_head() -> None:
    data = archive((1, 14), ENTRIES)

    async def chunks(blob: bytes):  # type: ignore[no-untyped-def]
        for i in range(0, len(blob), 100):
            yield blob[i : i + 100]

    watcher = TocWatcher(chunks(data))
    assert b"".join([c async for c in watcher]) == data
    assert watcher.scanner.finish().owner == b"app"
    bad = TocWatcher(chunks(b"not an archive" * 20))
    with pytest.raises(TocError):
        async for _ in bad:
            pass


def test_split_statements_respects_quotes() -> None:
    sql = (
        b"COMMENT ON DATABASE \"a;b\" IS 'x; y'';z';\n"
        b"ALTER DATABASE x SET search_path TO 'a', '$user';\n\n"
        b"COMMENT ON DATABASE x IS E'back\\'slash;';"
    )
    assert split_statements(sql) == [
        b"COMMENT ON DATABASE \"a;b\" IS 'x; y'';z'",
        b"ALTER DATABASE x SET search_path TO 'a', '$user'",
        b"COMMENT ON DATABASE x IS E'back\\'slash;'",
    ]
    # standard_conforming_strings off: a backslash escapes the quote in every literal
    assert split_statements(b"COMMENT ON DATABASE x IS 'a\\';b';", std_strings=False) == [
        b"COMMENT ON DATABASE x IS 'a\\';b'"
    ]


def test_retarget_changes_the_database_name_only_where_it_names_the_database() -> None:
    new = b"shop_drd_restoring_0a1b2c3d"
    cases = {
        b"ALTER DATABASE shop SET search_path TO 'DATABASE shop'": (
            b"ALTER DATABASE \"shop_drd_restoring_0a1b2c3d\" SET search_path TO 'DATABASE shop'"
        ),
        b"ALTER ROLE shop IN DATABASE shop SET work_mem TO '8MB'": (
            b"ALTER ROLE shop IN DATABASE \"shop_drd_restoring_0a1b2c3d\" SET work_mem TO '8MB'"
        ),
        b"GRANT CONNECT ON DATABASE shop TO shop": (
            b'GRANT CONNECT ON DATABASE "shop_drd_restoring_0a1b2c3d" TO shop'
        ),
        b"ALTER DATABASE shopping CONNECTION LIMIT = 1": (
            b"ALTER DATABASE shopping CONNECTION LIMIT = 1"
        ),
    }
    for statement, expected in cases.items():
        assert retarget(statement, b"shop", new) == expected
    quoted = b'COMMENT ON DATABASE "Shop ""1""" IS \'x\''
    assert retarget(quoted, b'Shop "1"', b"t") == b"COMMENT ON DATABASE \"t\" IS 'x'"
    # a bare name is folded to lower case, as the server does
    assert retarget(b"ALTER DATABASE Shop OWNER TO a", b"shop", b"t") == (
        b'ALTER DATABASE "t" OWNER TO a'
    )


def test_describe_names_what_is_set_but_never_the_value() -> None:
    secret = b"ALTER DATABASE shop SET app.api_key TO 's3cr3t'"
    assert describe(secret) == "ALTER DATABASE SET app.api_key"
    role = b"ALTER ROLE \"Read Er\" IN DATABASE shop SET statement_timeout TO '5s'"
    assert describe(role) == "ALTER ROLE Read Er IN DATABASE SET statement_timeout"
    assert describe(b"ALTER DATABASE shop CONNECTION LIMIT = 7") == (
        "ALTER DATABASE CONNECTION LIMIT"
    )
    assert describe(b"COMMENT ON DATABASE shop IS 'a secret?'") == "COMMENT ON DATABASE"
    grant = b"GRANT CONNECT ON DATABASE shop TO reader"
    assert describe(grant) == grant.decode()
