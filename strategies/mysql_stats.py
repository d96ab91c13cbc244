"""MySQL / MariaDB statistics for restore tests, in the shape drd.strategies.statistics defines
for every kind:

- the schema fingerprint over information_schema (tables, columns, indexes, constraints, foreign
  keys, views, routines, triggers, events; no database names): {digest, parts}, taken the same
  way on the source (before and after the dump) and on a restored copy;
- exact row counts per table of a restored copy (`COUNT(*)`, `FOR SYSTEM_TIME ALL` where the
  dump carried the history), keyed by the quoted table name, to compare with the counts the
  dump stream itself had (drd.strategies.mysql_dump); sequences hold no rows, their
  `DO SETVAL` is compared instead;
- the inventory of views, routines, triggers and events: each by name, with its definer and a
  digest of its definition (database names taken out);
- content digests of a restored copy: the same rows a dump recorded, dumped again with the same
  tool and options and digested by the same reader;
- the results of the plan's "matches the source" queries, each in a read-only consistent
  snapshot.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drd.strategies.mysql_client import Client, ClientError, ident, lit
from drd.strategies.statistics import digest, error_text, result_value

# Table types whose data lives in the table (RENAME TABLE moves them); views are recreated.
VIEW = "VIEW"
SEQUENCE = "SEQUENCE"
VERSIONED = "SYSTEM VERSIONED"

_SCHEMA_QUERIES: dict[str, str] = {
    "tables": "SELECT JSON_ARRAY(TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION) "
    "FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "columns": "SELECT JSON_ARRAY(TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, "
    "IS_NULLABLE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, "
    "GENERATION_EXPRESSION) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, ORDINAL_POSITION",
    "indexes": "SELECT JSON_ARRAY(TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, "
    "NON_UNIQUE, SUB_PART, INDEX_TYPE) FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    "constraints": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE) "
    "FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE",
    "foreign_keys": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, REFERENCED_TABLE_NAME, "
    "UPDATE_RULE, DELETE_RULE) FROM information_schema.REFERENTIAL_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = {db} ORDER BY TABLE_NAME, CONSTRAINT_NAME",
    "views": "SELECT JSON_ARRAY(TABLE_NAME, CHECK_OPTION, IS_UPDATABLE, SECURITY_TYPE) "
    "FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "routines": "SELECT JSON_ARRAY(ROUTINE_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, "
    "ROUTINE_DEFINITION, IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE) "
    "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} "
    "ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
    "triggers": "SELECT JSON_ARRAY(TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, "
    "EVENT_MANIPULATION, ACTION_ORDER, ACTION_STATEMENT) FROM information_schema.TRIGGERS "
    "WHERE TRIGGER_SCHEMA = {db} ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME",
    "events": "SELECT JSON_ARRAY(EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, "
    "INTERVAL_FIELD) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db} "
    "ORDER BY EVENT_NAME",
}
# The column holding the table name in each section (to leave excluded tables out).
_TABLE_COLUMN = {
    "tables": 0,
    "columns": 0,
    "indexes": 0,
    "constraints": 0,
    "foreign_keys": 0,
    "views": 0,
    "triggers": 1,
}


@dataclass
class SchemaInfo:
    """The schema of one database as plain rows, per section."""

    sections: dict[str, list[list[Any]]]

    def fingerprint(self) -> dict[str, Any]:
        """{"digest": sha256, "parts": {section: sha256}} (the shape drd.strategies.statistics
        uses for every kind)."""
        parts = {name: digest(self.sections[name]) for name in sorted(self.sections)}
        return {"digest": digest(sorted(parts.items())), "parts": parts}

    def tables(self) -> dict[str, str]:
        """{table name: TABLE_TYPE} (BASE TABLE, VIEW, SEQUENCE, SYSTEM VERSIONED)."""
        return {str(row[0]): str(row[1]) for row in self.sections["tables"]}


async def schema_info(client: Client, database: str, exclude: Sequence[str] = ()) -> SchemaInfo:
    # One client process for all sections: the queries' results are separated by a marker row.
    marker = f"drd-section-{secrets.token_hex(4)}"
    script = []
    for name, query in _SCHEMA_QUERIES.items():
        script.append(f"SELECT JSON_ARRAY({lit(marker)}, {lit(name)});")
        script.append(query.format(db=lit(database)) + ";")
    rows = await client.json_rows("\n".join(script))
    sections: dict[str, list[list[Any]]] = {name: [] for name in _SCHEMA_QUERIES}
    current: str | None = None
    for row in rows:
        if len(row) == 2 and row[0] == marker:
            current = str(row[1])
            continue
        assert current is not None
        sections[current].append(row)
    skip = set(exclude)
    if skip:
        for name, column in _TABLE_COLUMN.items():
            sections[name] = [r for r in sections[name] if r[column] not in skip]
    return SchemaInfo(sections)


def fingerprint_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The schema parts that differ between two fingerprints ([] when equal)."""
    if expected.get("digest") == actual.get("digest"):
        return []
    want, got = expected.get("parts") or {}, actual.get("parts") or {}
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k)) or ["digest"]


def transaction_precise(info: SchemaInfo) -> list[str]:
    """System-versioned tables whose history is kept by transaction id (a bigint ROW START
    column): mariadb-dump's --dump-history cannot dump those."""
    return sorted(
        {
            str(row[0])
            for row in info.sections["columns"]
            if row[9] == "ROW START" and str(row[5]).startswith("bigint")
        }
    )


async def row_counts(
    client: Client, database: str, tables: Sequence[str], history: Sequence[str] = ()
) -> dict[str, int]:
    """Exact COUNT(*) of each table (one client process), keyed by the plain table name; the
    tables in `history` counted with their history (FOR SYSTEM_TIME ALL)."""
    if not tables:
        return {}
    keep = set(history)
    parts = [
        f"SELECT JSON_ARRAY({lit(t)}, (SELECT COUNT(*) FROM {ident(database)}.{ident(t)}"
        f"{' FOR SYSTEM_TIME ALL' if t in keep else ''}));"
        for t in tables
    ]
    return {str(r[0]): int(r[1]) for r in await client.json_rows("\n".join(parts))}


_INVENTORY = (
    "SELECT JSON_ARRAY('view', TABLE_NAME, DEFINER, SECURITY_TYPE, "
    "SHA2(REPLACE(VIEW_DEFINITION, CONCAT('`', TABLE_SCHEMA, '`.'), ''), 256)) "
    "FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db};\n"
    "SELECT JSON_ARRAY(LOWER(ROUTINE_TYPE), ROUTINE_NAME, DEFINER, SECURITY_TYPE, "
    "SHA2(CONCAT_WS('|', ROUTINE_DEFINITION, DTD_IDENTIFIER, IS_DETERMINISTIC, "
    "SQL_DATA_ACCESS, SQL_MODE), 256)) "
    "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db};\n"
    "SELECT JSON_ARRAY('trigger', TRIGGER_NAME, DEFINER, EVENT_OBJECT_TABLE, "
    "SHA2(CONCAT_WS('|', ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER, ACTION_STATEMENT, "
    "SQL_MODE), 256)) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {db};\n"
    "SELECT JSON_ARRAY('event', EVENT_NAME, DEFINER, STATUS, "
    "SHA2(CONCAT_WS('|', EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, INTERVAL_FIELD, "
    "EXECUTE_AT, STARTS, ENDS, ON_COMPLETION, SQL_MODE, TIME_ZONE), 256)) "
    "FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db};"
)


async def inventory(
    client: Client, database: str, exclude: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """{"view `v`": {"definer": ..., "detail": ..., "digest": ...}, "function `f`": ...}: every
    view, routine, trigger and event, its definer and a digest of its definition (views named
    in `exclude` and the triggers of excluded tables left out)."""
    rows = await client.json_rows(_INVENTORY.format(db=lit(database)))
    skip = set(exclude)
    out: dict[str, dict[str, Any]] = {}
    for kind, name, definer, extra, definition in rows:
        if (kind == "view" and name in skip) or (kind == "trigger" and extra in skip):
            continue
        out[f"{kind} {ident(str(name))}"] = {
            "definer": definer,
            "detail": extra,
            "digest": definition,
        }
    return dict(sorted(out.items()))


def inventory_differences(
    expected: Mapping[str, Any], actual: Mapping[str, Any], limit: int = 20
) -> list[str]:
    """What differs between two inventories, object by object ([] when equal)."""
    problems: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want == got:
            continue
        if got is None:
            problems.append(f"{name} is missing")
        elif want is None:
            problems.append(f"{name} is not in the dump")
        else:
            fields = [k for k in ("definer", "detail", "digest") if want.get(k) != got.get(k)]
            shown = ", ".join("definition" if f == "digest" else f for f in fields)
            problems.append(f"{name} differs ({shown})")
    return problems[:limit]


_INTEGER_TYPES = ("tinyint", "smallint", "mediumint", "int", "bigint")
#: key ranges a sampled table's budget is spread over
SAMPLE_RANGES = 10


def integer_keys(info: SchemaInfo) -> dict[str, str]:
    """{table: column} for tables whose primary key is one integer column that comes first in
    the table (the first value of every row the dump writes)."""
    primary: dict[str, list[str]] = {}
    for row in info.sections["indexes"]:
        if row[1] == "PRIMARY":
            primary.setdefault(str(row[0]), []).append(str(row[3]))
    first = {
        str(row[0]): (str(row[1]), str(row[5]).split("(")[0].split()[0].lower())
        for row in info.sections["columns"]
        if row[2] == 1
    }
    out = {}
    for table, columns in primary.items():
        column, kind = first.get(table, ("", ""))
        if columns == [column] and kind in _INTEGER_TYPES:
            out[table] = column
    return out


def spread(low: int, high: int, estimated_rows: int, budget: int) -> list[list[int]]:
    """SAMPLE_RANGES key ranges evenly spread over [low, high], together about `budget` rows
    when the keys are dense (one range, the whole table, when it has no more rows than that)."""
    span = high - low + 1
    if estimated_rows <= budget or span <= budget:
        return [[low, high]]
    width = max(1, (budget * span) // (max(estimated_rows, 1) * SAMPLE_RANGES))
    ranges = []
    for i in range(SAMPLE_RANGES):
        start = low + (i * span) // SAMPLE_RANGES
        ranges.append([start, min(start + width - 1, high)])
    return ranges


async def sample_ranges(
    client: Client, database: str, keys: Mapping[str, str], budget: int, history: Sequence[str]
) -> dict[str, list[list[int]]]:
    """Key ranges of each table in `keys` (table -> column) for content: sample, from its
    smallest and largest key (read from the index) and the server's row estimate."""
    if not keys:
        return {}
    db = ident(database)
    parts = [
        f"SELECT JSON_ARRAY({lit(t)}, MIN({ident(c)}), MAX({ident(c)}), "
        f"(SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
        f"{lit(database)} AND TABLE_NAME = {lit(t)})) FROM {db}.{ident(t)}"
        f"{' FOR SYSTEM_TIME ALL' if t in history else ''};"
        for t, c in keys.items()
    ]
    out = {}
    for table, low, high, estimate in await client.json_rows("\n".join(parts)):
        if low is None or high is None:
            continue  # empty: nothing to sample
        out[str(table)] = spread(int(low), int(high), int(estimate or 0), budget)
    return out


def where_ranges(column: str, ranges: Sequence[Sequence[int]]) -> str:
    """A WHERE clause selecting the rows of `ranges` (for mariadb-dump --where)."""
    return " OR ".join(f"{ident(column)} BETWEEN {low} AND {high}" for low, high in ranges)


async def sequence_values(
    client: Client, database: str, sequences: Sequence[str]
) -> dict[str, list[int]]:
    """The [next value, is_used] a dump of each sequence would write (`DO SETVAL`), keyed by
    the quoted name: how the dump reads it (next_not_cached_value, not used)."""
    if not sequences:
        return {}
    parts = [
        f"SELECT JSON_ARRAY({lit(s)}, (SELECT next_not_cached_value FROM "
        f"{ident(database)}.{ident(s)}));"
        for s in sequences
    ]
    return {ident(str(r[0])): [int(r[1]), 0] for r in await client.json_rows("\n".join(parts))}


def sequence_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want is None and got is not None and name in expected:
            continue  # the dump had no DO SETVAL for it (an older dump tool)
        if want != got:
            problems.append(f"sequence {name}: next value {got}, the dump had {want}")
    return problems


@dataclass
class Statistics:
    row_counts: dict[str, int]  # keyed by the quoted table name, like postgres_stats
    schema: dict[str, Any]
    #: the quoted names of the copy's sequences
    sequences: list[str] = field(default_factory=list)

    @property
    def plain_counts(self) -> dict[str, int]:
        return {name[1:-1].replace("``", "`"): n for name, n in self.row_counts.items()}

    def compare(self, metadata: Mapping[str, Any], *, schema: bool = True) -> list[str]:
        """What differs from the statistics recorded at dump time ([] when all matches).
        `schema`: compare the schema fingerprint too (not in a staging copy whose views and
        routines are not there yet)."""
        recorded = metadata.get("statistics") or {}
        problems = []
        fingerprint = recorded.get("schema")
        if schema and isinstance(fingerprint, dict) and "digest" in fingerprint:
            changed = fingerprint_differences(fingerprint, self.schema)
            if changed:
                problems.append(f"the schema differs in: {', '.join(changed)}")
        counts = recorded.get("row_counts")
        if isinstance(counts, dict) and "error" not in counts:
            skip = set(self.sequences)  # older dumps counted sequences (as 0 rows)
            for name in sorted((set(counts) | set(self.row_counts)) - skip):
                want, got = counts.get(name), self.row_counts.get(name)
                if want != got:
                    problems.append(f"table {name}: {got} rows, the dump had {want}")
        return problems


def history_tables(metadata: Mapping[str, Any] | None, info: SchemaInfo) -> list[str]:
    """The system-versioned tables whose rows the dump counted with their history."""
    if not metadata or not metadata.get("history"):
        return []
    return [name for name, kind in info.tables().items() if kind == VERSIONED]


async def collect_statistics(
    client: Client, database: str, metadata: Mapping[str, Any] | None = None
) -> Statistics:
    """Row counts and schema of `database`, counted the way the dump of `metadata` counted
    (history rows included when it dumped them)."""
    info = await schema_info(client, database)
    kinds = info.tables()
    tables = [name for name, kind in kinds.items() if kind not in (VIEW, SEQUENCE)]
    counts = await row_counts(client, database, tables, history_tables(metadata, info))
    sequences = [ident(name) for name, kind in kinds.items() if kind == SEQUENCE]
    return Statistics({ident(t): n for t, n in counts.items()}, info.fingerprint(), sequences)


async def capture_queries(
    client: Client, database: str, queries: Mapping[str, str]
) -> dict[str, Any]:
    """id -> {"value": ...} or {"error": ...}, each query in a read-only consistent snapshot.

    Values are the client's text form (drd.strategies.statistics.result_value); NULL and the
    string 'NULL' read the same, on both sides alike."""
    out: dict[str, Any] = {}
    for key, sql in queries.items():
        try:
            body = sql.rstrip().rstrip(";")
            script = f"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n{body};\nCOMMIT;"
            rows = await client.rows(script, database)
            out[key] = {"value": result_value(rows)}
        except (ClientError, ValueError) as exc:
            out[key] = {"error": error_text(exc)}
    return out
