"""The database-level entries of a pg_dump custom-format archive, read as the archive streams by.

pg_dump writes what `--create` restores about the database itself into the archive's table of
contents (TOC), at its head: the DATABASE entry (owner), DATABASE PROPERTIES (`ALTER DATABASE
... CONNECTION LIMIT`, `IS_TEMPLATE`, `ALTER DATABASE ... SET` and `ALTER ROLE ... IN DATABASE
... SET`), and COMMENT, SECURITY LABEL and ACL entries tagged `DATABASE <name>`. pg_restore
without `--create` skips them all, and drd cannot use `--create` (it restores into a staging
database and renames it). So drd reads those entries itself, with `TocScanner`, from the same
bytes it feeds pg_restore, and replays pg_dump's own statements with the database name changed
(`retarget`). Only the head of the stream is parsed; the data blocks after the TOC pass untouched.

The layout read here (pg_backup_archiver.c ReadHead/ReadToc, pg_backup_custom.c): "PGDMP", the
format version (1.12 to 1.16: pg_dump 9.2 to 18), the sizes of integers and offsets, the header
fields, then the entries. An integer is a sign byte and `int_size` little-endian bytes; a string
is an integer length (-1 for NULL) and that many bytes, in the archive's encoding (its ENCODING
entry), so statements are kept as bytes and executed with that client_encoding.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field

MAGIC = b"PGDMP"
#: the archive versions this module reads: (1, 12) is pg_dump 9.2, (1, 16) pg_dump 17 and 18
OLDEST = (1, 12)
NEWEST = (1, 16)
_CUSTOM_FORMAT = 1
#: pg_dump's descriptions of the entries about the database itself
_DATABASE_DESCS = frozenset({"DATABASE", "DATABASE PROPERTIES"})
_TAGGED_DESCS = frozenset({"COMMENT", "SECURITY LABEL", "ACL"})
#: entries that say how the archive's statements are to be read
_SESSION_DESCS = frozenset({"ENCODING", "STDSTRINGS"})
#: the value pg_dump read for a sequence: `SELECT pg_catalog.setval('s.n', 42, true);`
_SEQUENCE_SET = "SEQUENCE SET"
_TABLE_DATA = "TABLE DATA"
#: consumed bytes are dropped from the buffer once this many have piled up
_COMPACT = 1 << 20


class TocError(Exception):
    """The stream is not a custom-format archive this module can read."""


@dataclass(frozen=True)
class TocEntry:
    desc: str
    #: the entry's tag (for the DATABASE entry: the database's name), in the archive's encoding
    tag: bytes
    owner: bytes
    #: the entry's SQL, in the archive's encoding
    defn: bytes
    #: the entry's schema (kept for SEQUENCE SET entries only)
    namespace: bytes = b""


@dataclass
class DatabaseEntries:
    """What the archive says about the database itself (see the module docstring)."""

    version: tuple[int, int, int] = (0, 0, 0)
    #: the dumped database's name, from the DATABASE entry (else the archive header), in the
    #: archive's encoding
    name: bytes = b""
    #: its owner, from the DATABASE entry
    owner: bytes = b""
    #: PostgreSQL's name of the archive's encoding (e.g. UTF8), "" if the archive has none
    encoding: str = ""
    #: standard_conforming_strings as the statements were written
    std_strings: bool = True
    comments: list[bytes] = field(default_factory=list)
    security_labels: list[bytes] = field(default_factory=list)
    #: DATABASE PROPERTIES: connection limit, template flag, settings, per-role settings
    properties: list[bytes] = field(default_factory=list)
    acl: list[bytes] = field(default_factory=list)
    #: whether a DATABASE entry was found (pg_dump 11 and newer always write one)
    has_database_entry: bool = False
    #: SEQUENCE SET entries, (schema, sequence, the setval statement), in the archive's
    #: encoding: the values this backup restores (restore tests compare them with the copy)
    sequences: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    #: TABLE DATA entries: the relations pg_dump dumps rows of, each with its COPY statement
    table_data: list[TableData] = field(default_factory=list)


@dataclass(frozen=True)
class TableData:
    """A TABLE DATA entry: which relation pg_dump takes rows of and the COPY ... FROM stdin
    statement (schema-qualified, generated columns left out) it restores them with."""

    oid: int
    namespace: bytes
    tag: bytes
    copy: bytes


class TocScanner:
    """Parses the head of a custom-format archive fed to it piece by piece (`feed`), keeping the
    database-level entries only. `done` once the whole TOC was read; `error` says why it could
    not be (then nothing more is parsed)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._int_size = 4
        self.found = DatabaseEntries()
        self.done = False
        self.error: str | None = None
        self._parser = self._parse()
        next(self._parser)

    def feed(self, data: bytes) -> None:
        if self.done or self.error is not None:
            return
        self._buf += data
        try:
            self._parser.send(None)
        except StopIteration:
            self.done = True
            self._buf = bytearray()
            return
        except TocError as exc:
            self.error = str(exc)
            self._buf = bytearray()
            return
        if self._pos >= _COMPACT:
            del self._buf[: self._pos]
            self._pos = 0

    def finish(self) -> DatabaseEntries:
        """The entries, once the stream ended; TocError if the TOC was not read completely."""
        if self.error is not None:
            raise TocError(self.error)
        if not self.done:
            raise TocError("the archive ended inside its table of contents")
        return self.found

    # -- the parser: a generator that yields whenever it needs more bytes ---------------------

    def _take(self, n: int) -> Generator[None, None, bytes]:
        while len(self._buf) - self._pos < n:
            yield
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def _skip(self, n: int) -> Generator[None, None, None]:
        while n > 0:
            available = len(self._buf) - self._pos
            if available == 0:
                yield
                continue
            step = min(available, n)
            self._pos += step
            n -= step

    def _byte(self) -> Generator[None, None, int]:
        return (yield from self._take(1))[0]

    def _int(self) -> Generator[None, None, int]:
        raw = yield from self._take(1 + self._int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _str(self, keep: bool = True) -> Generator[None, None, bytes | None]:
        length = yield from self._int()
        if length < 0:
            return None
        if not keep:
            yield from self._skip(length)
            return b""
        return (yield from self._take(length))

    def _raw(self) -> Generator[None, None, bytes]:
        return (yield from self._str()) or b""

    def _parse(self) -> Generator[None, None, None]:
        yield  # primed by __init__: wait for the first bytes
        if (yield from self._take(5)) != MAGIC:
            raise TocError("not a pg_dump custom-format archive (no PGDMP header)")
        version = (
            (yield from self._byte()),
            (yield from self._byte()),
            (yield from self._byte()),
        )
        self.found.version = version
        if not OLDEST <= version[:2] <= NEWEST:
            shown = ".".join(str(v) for v in version[:2])
            raise TocError(
                f"archive format {shown} is not one drd reads "
                f"({OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]})"
            )
        self._int_size = yield from self._byte()
        off_size = yield from self._byte()
        if not 1 <= self._int_size <= 8 or not 1 <= off_size <= 16:
            raise TocError("the archive header is damaged (integer or offset size)")
        if (yield from self._byte()) != _CUSTOM_FORMAT:
            raise TocError("not a custom-format archive")
        if version[:2] >= (1, 15):
            yield from self._byte()  # compression algorithm
        else:
            yield from self._int()  # compression level
        for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            yield from self._int()
        self.found.name = yield from self._raw()
        yield from self._str(keep=False)  # server version
        yield from self._str(keep=False)  # pg_dump version
        count = yield from self._int()
        if count < 0:
            raise TocError("the archive's table of contents is damaged (entry count)")
        for _ in range(count):
            yield from self._entry(version[:2], off_size)

    def _entry(self, version: tuple[int, int], off_size: int) -> Generator[None, None, None]:
        dump_id = yield from self._int()
        if dump_id <= 0:
            raise TocError(f"the archive's table of contents is damaged (entry id {dump_id})")
        yield from self._int()  # has data
        yield from self._str(keep=False)  # table oid
        oid = yield from self._raw()
        tag = yield from self._raw()
        desc = (yield from self._raw()).decode("ascii", "replace")
        sequence = desc == _SEQUENCE_SET
        table_data = desc == _TABLE_DATA
        wanted = (
            sequence
            or desc in _DATABASE_DESCS
            or desc in _SESSION_DESCS
            or (desc in _TAGGED_DESCS and tag.startswith(b"DATABASE "))
        )
        yield from self._int()  # section
        defn = (yield from self._str(keep=wanted)) or b""
        yield from self._str(keep=False)  # drop statement
        copy = (yield from self._str(keep=table_data)) or b""
        namespace = (yield from self._str(keep=sequence or table_data)) or b""
        yield from self._str(keep=False)  # tablespace
        if version >= (1, 14):
            yield from self._str(keep=False)  # table access method
        if version >= (1, 16):
            yield from self._int()  # relkind
        owner = yield from self._raw()
        yield from self._str(keep=False)  # "with oids", always false
        while (yield from self._str(keep=False)) is not None:  # dependencies, NULL-terminated
            pass
        flag = yield from self._byte()  # data offset: a flag byte, then off_size bytes
        if flag not in (1, 2, 3):
            raise TocError(f"the archive's table of contents is damaged (offset flag {flag})")
        yield from self._skip(off_size)
        if wanted:
            self._keep(TocEntry(desc, tag, owner, defn, namespace))
        elif table_data:
            if not oid.isdigit():
                raise TocError("the archive's table of contents is damaged (TABLE DATA oid)")
            self.found.table_data.append(TableData(int(oid), namespace, tag, copy))

    def _keep(self, entry: TocEntry) -> None:
        found = self.found
        if entry.desc == "ENCODING":
            match = re.search(rb"'([^']*)'", entry.defn)
            found.encoding = match.group(1).decode("ascii", "replace") if match else ""
        elif entry.desc == "STDSTRINGS":
            found.std_strings = b"'off'" not in entry.defn
        elif entry.desc == "DATABASE":
            found.has_database_entry = True
            found.name = entry.tag
            found.owner = entry.owner
        elif entry.desc == "DATABASE PROPERTIES":
            found.properties.append(entry.defn)
        elif entry.desc == "COMMENT":
            found.comments.append(entry.defn)
        elif entry.desc == "SECURITY LABEL":
            found.security_labels.append(entry.defn)
        elif entry.desc == "ACL":
            found.acl.append(entry.defn)
        elif entry.desc == _SEQUENCE_SET:
            found.sequences.append((entry.namespace, entry.tag, entry.defn))


class TocWatcher:
    """Passes an archive's chunks through unchanged, feeding them to a TocScanner until it read
    the whole TOC. Raises TocError at once if the archive's head cannot be read, so a restore
    stops before pg_restore loads data whose database-level properties would be lost. A plain
    iterator (like CountingStream): nothing to close when the consumer stops early."""

    def __init__(self, inner: AsyncIterator[bytes]) -> None:
        self._inner = inner
        self.scanner = TocScanner()

    def __aiter__(self) -> TocWatcher:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._inner.__anext__()
        scanner = self.scanner
        if not scanner.done:
            scanner.feed(chunk)
            if scanner.error is not None:
                raise TocError(scanner.error)
        return chunk


# ---------------------------------------------------------------------------------------------
# The statements: split, described and pointed at another database

# ' literals (with '' inside; backslash escapes when standard_conforming_strings is off or for
# E'...'), "identifiers" (with "" inside), and everything else up to the next of those or ';'.
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_$]*")


def split_statements(sql: bytes, *, std_strings: bool = True) -> list[bytes]:
    """`sql` (one TOC entry's definition) cut into statements at the semicolons outside quotes,
    each stripped, empty ones dropped. pg_dump writes these entries without comments or dollar
    quotes."""
    out: list[bytes] = []
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i : i + 1]
        if c == b"'":
            escapes = not std_strings or (i > 0 and sql[i - 1 : i] in (b"E", b"e"))
            i = _end_of_literal(sql, i + 1, escapes)
        elif c == b'"':
            i = _end_of_identifier(sql, i + 1)
        elif c == b";":
            statement = sql[start:i].strip()
            if statement:
                out.append(statement)
            start = i = i + 1
        else:
            i += 1
    rest = sql[start:].strip()
    if rest:
        out.append(rest)
    return out


def _end_of_literal(sql: bytes, i: int, escapes: bool) -> int:
    n = len(sql)
    while i < n:
        c = sql[i : i + 1]
        if escapes and c == b"\\":
            i += 2
            continue
        if c == b"'":
            if sql[i + 1 : i + 2] == b"'":
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _end_of_identifier(sql: bytes, i: int) -> int:
    n = len(sql)
    while i < n:
        if sql[i : i + 1] == b'"':
            if sql[i + 1 : i + 2] == b'"':
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _tokens(statement: bytes, std_strings: bool) -> list[tuple[int, int, bytes]]:
    """(start, end, kind) of the statement's tokens: b"'" literal, b'"' identifier, b"w" word,
    b"." anything else (one byte; whitespace skipped)."""
    out: list[tuple[int, int, bytes]] = []
    i, n = 0, len(statement)
    while i < n:
        c = statement[i : i + 1]
        if c.isspace():
            i += 1
        elif c == b"'":
            escapes = not std_strings or (i > 0 and statement[i - 1 : i] in (b"E", b"e"))
            end = _end_of_literal(statement, i + 1, escapes)
            out.append((i, end, b"'"))
            i = end
        elif c == b'"':
            end = _end_of_identifier(statement, i + 1)
            out.append((i, end, b'"'))
            i = end
        else:
            word = _WORD.match(statement, i)
            if word is not None:
                out.append((i, word.end(), b"w"))
                i = word.end()
            else:
                out.append((i, i + 1, b"."))
                i += 1
    return out


def _identifier_value(token: bytes, kind: bytes) -> bytes:
    if kind == b'"':
        return token[1:-1].replace(b'""', b'"')
    return token.lower()


def quote_ident(name: bytes) -> bytes:
    return b'"' + name.replace(b'"', b'""') + b'"'


def retarget(statement: bytes, source: bytes, target: bytes, *, std_strings: bool = True) -> bytes:
    """`statement` with every `DATABASE <source>` (outside literals) naming `target` instead.
    pg_dump names the database that way in all of these entries (ALTER DATABASE x, ALTER ROLE r
    IN DATABASE x, COMMENT ON DATABASE x, GRANT ... ON DATABASE x, SECURITY LABEL ... ON
    DATABASE x)."""
    tokens = _tokens(statement, std_strings)
    out = bytearray()
    last = 0
    for (w_start, w_end, w_kind), (n_start, n_end, n_kind) in itertools.pairwise(tokens):
        if w_kind != b"w" or statement[w_start:w_end].upper() != b"DATABASE":
            continue
        if n_kind not in (b"w", b'"'):
            continue
        if _identifier_value(statement[n_start:n_end], n_kind) != source:
            continue
        out += statement[last:n_start] + quote_ident(target)
        last = n_end
    out += statement[last:]
    return bytes(out)


def describe(statement: bytes, *, std_strings: bool = True) -> str:
    """What a statement sets, for messages, never its value (a setting may hold a secret):
    `ALTER DATABASE SET work_mem`, `ALTER ROLE app IN DATABASE SET search_path`, `GRANT ...`."""
    tokens = _tokens(statement, std_strings)
    words = [
        (_identifier_value(statement[s:e], k) if k == b'"' else statement[s:e]).decode(
            "utf-8", "replace"
        )
        for s, e, k in tokens
    ]
    upper = [w.upper() for w in words]
    head = " ".join(upper[:2])
    if "SET" in upper and head in ("ALTER DATABASE", "ALTER ROLE"):
        at = upper.index("SET") + 1
        end = at
        while end < len(words) and upper[end] not in ("TO", "="):
            end += 1
        name = "".join(words[at:end]) or "?"  # a dotted name (app.key) is several tokens
        if head == "ALTER ROLE":
            return f"ALTER ROLE {words[2]} IN DATABASE SET {name}"
        return f"ALTER DATABASE SET {name}"
    if head == "ALTER DATABASE" and len(words) > 3:
        return "ALTER DATABASE " + " ".join(upper[3:5])
    if head in ("COMMENT ON", "SECURITY LABEL"):
        return f"{head} DATABASE"
    if upper[:1] in (["GRANT"], ["REVOKE"], ["SET"], ["RESET"]):
        # privileges and role names only: no values
        return statement.decode("utf-8", "replace")
    return " ".join(upper[:3])
