"""Reading mariadb-dump / mysqldump output as it streams by: the rows of every table *in the
dump*, so that the row counts a restore test compares belong to the dump's own snapshot."""

from __future__ import annotations

import re


class RowCounter:
    """Counts the rows of mysqldump's data statements, `INSERT INTO `t` VALUES (..),(..);`.

    A data statement starts at the beginning of a line while the client delimiter is `;` (the
    dump switches to `;;` around trigger, routine and event bodies, which may contain INSERTs
    of their own). Inside the statement, top-level parentheses are rows; string literals
    (backslash escapes and doubled quotes) are skipped with regex jumps, so the cost is per
    token, not per byte. Memory: the current line's first bytes only.
    """

    _LINE_PREFIX = b"INSERT INTO `"
    _DELIMITER = b"DELIMITER "
    _IN_VALUES = re.compile(rb"[()';]")
    _IN_STRING = re.compile(rb"['\\]")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._state = "line_start"
        self._head = bytearray()  # start of the current line (state line_start)
        self._name = bytearray()
        self._table = ""
        self._depth = 0
        self._delimiter = b";"
        self._skip_next = False  # a backslash ended the previous chunk inside a string
        self._quote_pending = False  # a quote ended the previous chunk inside a string
        self._tick_pending = False  # a backtick ended the previous chunk inside the name

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == "line_start":
                pos = self._line_start(data, pos)
            elif state == "skip_line":
                nl = data.find(b"\n", pos)
                if nl < 0:
                    return
                pos = nl + 1
                self._state = "line_start"
            elif state == "delimiter":
                pos = self._delimiter_line(data, pos)
            elif state == "name":
                pos = self._read_name(data, pos)
            elif state == "values":
                pos = self._values(data, pos)
            else:  # string
                pos = self._string(data, pos)

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
            self._state = "name"
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
        self._depth = 0
        self._state = "values"

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
                    self.counts[self._table] += 1
                self._depth += 1
            elif c == b")":
                self._depth = max(0, self._depth - 1)
            elif self._depth == 0:  # ';' ends the statement
                self._state = "skip_line"
                return pos

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
