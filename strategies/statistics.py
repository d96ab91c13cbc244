"""What statistics about a source look like, whichever kind took them.

A strategy records statistics of the image it dumped (restore_metadata()["statistics"]) and the
restore tests compute the same figures on the restored copy with the same functions, so both
sides go through one code path. Everything here is JSON: it travels inside the sealed manifest.

Query results (for the plan's "matches the source" checks) are stored in a canonical JSON form
(`json_value`) so that a value read from the source at backup time and one read from the
restored copy compare equal exactly when the database would call them equal in text form:
numerics keep their scale ("12.50"), timestamps keep their offset, bytes become hex.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

#: a "matches the source" query may return at most this many rows (they live in the manifest)
CAPTURE_ROW_LIMIT = 1000
#: integers beyond this do not survive JSON parsers that use doubles: kept as text
_MAX_SAFE_INT = (1 << 53) - 1


def json_value(value: Any) -> Any:
    """`value` (from psycopg or sqlite3) in canonical JSON form."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def result_value(rows: Sequence[Sequence[Any]]) -> Any:
    """A query result as one JSON value: the value itself for one row of one column (the usual
    `SELECT count(*) ...`), otherwise the list of rows. ValueError beyond CAPTURE_ROW_LIMIT."""
    if len(rows) > CAPTURE_ROW_LIMIT:
        raise ValueError(
            f"the query returned more than {CAPTURE_ROW_LIMIT} rows; aggregate it "
            "(count, sum, md5(string_agg(...))) so that its result fits in the manifest"
        )
    if len(rows) == 1 and len(rows[0]) == 1:
        return json_value(rows[0][0])
    return [[json_value(v) for v in row] for row in rows]


def digest(parts: Iterable[Any]) -> str:
    """sha256 over the canonical JSON of `parts` (schema fingerprints)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(json_value(part), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong, for the statistics' "error" fields."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:500]
