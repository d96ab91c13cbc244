"""Reading mariadb-dump / mysqldump output as it streams by: what the dump itself holds, so that
what a restore test compares belongs to the dump's own consistent snapshot.

Per table: the rows of its data statements, the size of its largest statement (a restore
target whose max_allowed_packet is smaller cannot load it) and, when asked, a content digest of
its rows; per sequence: the `DO SETVAL(...)` the dump restores it with. The same reader digests
a dump of the restored copy (drd.strategies.mysql_stats.content_digests), so both sides of the
comparison go through one code path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

_MOD = 1 << 128


@dataclass
class TableDigest:
    """An order-independent digest of some of a table's rows: the sum, modulo 2**128, of a
    128-bit BLAKE2b of each row's text as the dump wrote it (`(1,'a',NULL)`). Duplicate rows
    count twice; the order rows come in does not matter."""

    rows: int = 0
    total: int = 0

    def add(self, row: bytes) -> None:
        self.rows += 1
        value = int.from_bytes(hashlib.blake2b(row, digest_size=16).digest(), "big")
        self.total = (self.total + value) % _MOD

    @property
    def hexdigest(self) -> str:
        return f"{self.total:032x}"

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "digest": self.hexdigest}


@dataclass
class StatementSize:
    table: str = ""
    bytes: int = 0


_SETVAL = re.compile(rb"^DO SETVAL\(`((?:[^`]|``)+)`,\s*(-?\d+),\s*(\d)\s*\)\s*;")
_LEADING_INT = re.compile(rb"\((-?\d+)[,)]")

#: primary-key ranges of a table: [[low, high], ...], both ends included
Ranges = list[list[int]]


def in_ranges(value: int, ranges: Ranges) -> bool:
    return any(low <= value <= high for low, high in ranges)


class RowCounter:
    """Counts (and optionally digests) the rows of mysqldump's data statements,
    `INSERT INTO `t` [(`a`, `b`, ...)] VALUES (..),(..);`, and records `DO SETVAL` lines.

    A data statement starts at the beginning of a line while the client delimiter is `;` (the
    dump switches to `;;` around trigger, routine and event bodies, which may contain INSERTs
    of their own). A column list after the table name (INVISIBLE or generated columns,
    system-versioning history) is skipped; inside the VALUES, top-level parentheses are rows;
    string literals (backslash escapes and doubled quotes) are skipped with regex jumps, so the
    cost is per token, not per byte. Memory: the current line's first bytes, and the current
    row while it is being digested.

    `digest_rows`: None digests nothing, 0 every row, N the first N rows of each table.
    `ranges`: tables whose first column is an integer primary key, sampled by key ranges
    instead: their rows whose key lies in one of the table's ranges are digested, wherever in
    the table they are.
    """

    _LINE_PREFIX = b"INSERT INTO `"
    _SETVAL_PREFIX = b"DO SETVAL(`"
    _DELIMITER = b"DELIMITER "
    _IN_VALUES = re.compile(rb"[()';]")
    _IN_STRING = re.compile(rb"['\\]")
    _IN_COLUMNS = re.compile(rb"[`)]")
    _MAX_LINE = 4096

    def __init__(
        self, digest_rows: int | None = None, ranges: dict[str, Ranges] | None = None
    ) -> None:
        self.counts: dict[str, int] = {}
        #: sequence name -> [next value, is_used] as the dump's DO SETVAL sets them
        self.sequences: dict[str, list[int]] = {}
        self.digests: dict[str, TableDigest] = {}
        self.largest = StatementSize()
        self._digest_rows = digest_rows
        self._ranges = ranges or {}
        self._table_ranges: Ranges | None = None
        self._state = "line_start"
        self._head = bytearray()  # start of the current line (state line_start)
        self._line = bytearray()  # a whole short line (DO SETVAL)
        self._name = bytearray()
        self._table = ""
        self._depth = 0
        self._delimiter = b";"
        self._skip_next = False  # a backslash ended the previous chunk inside a string
        self._quote_pending = False  # a quote ended the previous chunk inside a string
        self._tick_pending = False  # a backtick ended the previous chunk inside a name
        self._offset = 0  # bytes fed before the current chunk
        self._statement_start = 0
        self._row: bytearray | None = None  # the row being digested, before this chunk
        self._row_start = 0  # where it starts in the current chunk (0: before it)
        self._digest: TableDigest | None = None

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        self._row_start = 0
        while pos < n:
            state = self._state
            if state == "line_start":
                pos = self._line_start(data, pos)
            elif state == "skip_line":
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break
                pos = nl + 1
                self._state = "line_start"
            elif state == "delimiter":
                pos = self._delimiter_line(data, pos)
            elif state == "setval":
                pos = self._setval_line(data, pos)
            elif state == "name":
                pos = self._read_name(data, pos)
            elif state == "after_name":
                pos = self._after_name(data, pos)
            elif state == "columns":
                pos = self._columns(data, pos)
            elif state == "column_name":
                pos = self._column_name(data, pos)
            elif state == "values":
                pos = self._values(data, pos)
            else:  # string
                pos = self._string(data, pos)
        if self._row is not None:
            self._row += data[self._row_start :]
        self._offset += n

    # -- lines ---------------------------------------------------------------------------

    def _line_start(self, data: bytes, pos: int) -> int:
        """Collect a line's first bytes (up to the INSERT prefix's length) and decide."""
        want = len(self._LINE_PREFIX)
        stop = min(len(data), pos + want - len(self._head))
        nl = data.find(b"\n", pos, stop)
        end = nl if nl >= 0 else stop
        self._head += data[pos:end]
        if nl < 0 and len(self._head) < want:
            return end  # the chunk ended: decide with the next one
        head = bytes(self._head)
        self._head.clear()
        if head == self._LINE_PREFIX and self._delimiter == b";":
            self._name.clear()
            self._statement_start = self._offset + end - len(head)
            self._state = "name"
            return end
        if head.startswith(self._SETVAL_PREFIX) and self._delimiter == b";":
            self._line = bytearray(head)
            self._state = "setval"
            return end
        if head.startswith(self._DELIMITER):
            if nl >= 0:
                self._delimiter = head[len(self._DELIMITER) :].strip() or b";"
                return nl + 1
            self._head += head[len(self._DELIMITER) :]
            self._state = "delimiter"
            return end
        if nl >= 0:
            return nl + 1
        self._state = "skip_line"
        return end

    def _delimiter_line(self, data: bytes, pos: int) -> int:
        nl = data.find(b"\n", pos)
        self._head += data[pos : len(data) if nl < 0 else nl]
        if len(self._head) > 256:  # not a delimiter anyone uses: keep the current one
            self._head.clear()
            self._state = "skip_line"
            return len(data) if nl < 0 else nl
        if nl < 0:
            return len(data)
        self._delimiter = bytes(self._head).strip() or b";"
        self._head.clear()
        self._state = "line_start"
        return nl + 1

    def _setval_line(self, data: bytes, pos: int) -> int:
        nl = data.find(b"\n", pos)
        self._line += data[pos : len(data) if nl < 0 else nl]
        if len(self._line) > self._MAX_LINE:
            self._line.clear()
            self._state = "skip_line"
            return len(data) if nl < 0 else nl
        if nl < 0:
            return len(data)
        m = _SETVAL.match(bytes(self._line))
        if m is not None:
            name = m.group(1).replace(b"``", b"`").decode("utf-8", "replace")
            self.sequences[name] = [int(m.group(2)), int(m.group(3))]
        self._line.clear()
        self._state = "line_start"
        return nl + 1

    # -- INSERT INTO `name` [(columns)] VALUES ... ----------------------------------------

    def _read_name(self, data: bytes, pos: int) -> int:
        """The backquoted table name (a doubled backtick is a literal one)."""
        n = len(data)
        while pos < n:
            if self._tick_pending:
                self._tick_pending = False
                if data[pos : pos + 1] == b"`":
                    self._name += b"`"
                    pos += 1
                    continue
                self._finish_name()
                return pos
            tick = data.find(b"`", pos)
            if tick < 0:
                self._name += data[pos:]
                return n
            self._name += data[pos:tick]
            if tick + 1 >= n:
                self._tick_pending = True  # a doubled backtick or the end: the next chunk says
                return n
            if data[tick + 1 : tick + 2] == b"`":
                self._name += b"`"
                pos = tick + 2
                continue
            self._finish_name()
            return tick + 1
        return pos

    def _finish_name(self) -> None:
        self._table = self._name.decode("utf-8", "replace")
        self.counts.setdefault(self._table, 0)
        self._digest = None
        self._table_ranges = self._ranges.get(self._table)
        if self._digest_rows is not None:
            self._digest = self.digests.setdefault(self._table, TableDigest())
        self._depth = 0
        self._state = "after_name"

    def _after_name(self, data: bytes, pos: int) -> int:
        """A column list `(`a`, b)` before VALUES, or VALUES itself."""
        n = len(data)
        while pos < n and data[pos] in b" \t\r\n":
            pos += 1
        if pos < n:
            if data[pos] == 0x28:  # "("
                self._state = "columns"
                return pos + 1
            self._state = "values"
        return pos

    def _columns(self, data: bytes, pos: int) -> int:
        m = self._IN_COLUMNS.search(data, pos)
        if m is None:
            return len(data)
        if m.group() == b")":
            self._state = "values"
        else:
            self._state = "column_name"
        return m.end()

    def _column_name(self, data: bytes, pos: int) -> int:
        n = len(data)
        if self._tick_pending:
            self._tick_pending = False
            if data[pos : pos + 1] == b"`":
                return pos + 1  # a doubled backtick: still inside the name
            self._state = "columns"
            return pos
        tick = data.find(b"`", pos)
        if tick < 0:
            return n
        if tick + 1 >= n:
            self._tick_pending = True
            return n
        if data[tick + 1 : tick + 2] == b"`":
            return tick + 2
        self._state = "columns"
        return tick + 1

    def _values(self, data: bytes, pos: int) -> int:
        search = self._IN_VALUES.search
        while True:
            m = search(data, pos)
            if m is None:
                return len(data)
            c = m.group()
            pos = m.end()
            if c == b"'":
                self._state = "string"
                return pos
            if c == b"(":
                if self._depth == 0:
                    self._begin_row(pos - 1)
                self._depth += 1
            elif c == b")":
                self._depth = max(0, self._depth - 1)
                if self._depth == 0:
                    self._end_row(data, pos)
            elif self._depth == 0:  # ';' ends the statement
                size = self._offset + pos - self._statement_start
                if size > self.largest.bytes:
                    self.largest = StatementSize(self._table, size)
                self._state = "skip_line"
                return pos

    def _begin_row(self, at: int) -> None:
        self.counts[self._table] += 1
        digest = self._digest
        if digest is None:
            return
        limit = self._digest_rows
        if limit and digest.rows >= limit and self._table_ranges is None:
            return
        self._row = bytearray()
        self._row_start = at

    def _end_row(self, data: bytes, end: int) -> None:
        row = self._row
        if row is None or self._digest is None:
            return
        row += data[self._row_start : end]
        self._row = None
        ranges = self._table_ranges
        if ranges is not None:
            m = _LEADING_INT.match(row)
            if m is None or not in_ranges(int(m.group(1)), ranges):
                return
        self._digest.add(bytes(row))

    def _string(self, data: bytes, pos: int) -> int:
        n = len(data)
        if self._skip_next:
            self._skip_next = False
            pos += 1
        if self._quote_pending:
            self._quote_pending = False
            if pos < n and data[pos : pos + 1] == b"'":
                pos += 1  # a doubled quote: still inside the string
            else:
                self._state = "values"
                return pos
        search = self._IN_STRING.search
        while pos < n:
            m = search(data, pos)
            if m is None:
                return n
            if m.group() == b"\\":
                if m.end() >= n:
                    self._skip_next = True
                    return n
                pos = m.end() + 1
                continue
            if m.end() >= n:
                self._quote_pending = True
                return n
            if data[m.end() : m.end() + 1] == b"'":
                pos = m.end() + 1
                continue
            self._state = "values"
            return m.end()
        return pos


@dataclass
class ContentPlan:
    """Which rows the content digests cover: `full` (every row), or the first `rows` rows of
    each table in the dump's order."""

    mode: str = "sample"
    rows: int = 1000

    @property
    def digest_rows(self) -> int:
        return 0 if self.mode == "full" else self.rows
